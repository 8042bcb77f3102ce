//! Who may use the control socket, and making the socket's file system permissions say the
//! same: the daemon's own user and root always; members of `control_group` when configured
//! (socket 0660 and directory 0750, both owned by that group). Peer credentials are checked
//! on every connection before a byte is read, so loose permissions alone never let anyone in.

use std::ffi::{CStr, CString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A resolved `control_group`.
#[derive(Debug, Clone)]
pub struct ControlGroup {
    pub name: String,
    pub gid: u32,
    /// Login names listed as (supplementary) members in the group database.
    members: Vec<String>,
}

fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Looks a group up by name; `None` if it does not exist.
pub fn resolve_group(name: &str) -> Option<ControlGroup> {
    let cname = CString::new(name).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; the buffer outlives every string read
    // from `grp` below.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    let mut members = Vec::new();
    let mut cursor = grp.gr_mem;
    // SAFETY: gr_mem is a NULL-terminated array of C strings inside `buf`.
    unsafe {
        while !cursor.is_null() && !(*cursor).is_null() {
            members.push(CStr::from_ptr(*cursor).to_string_lossy().into_owned());
            cursor = cursor.add(1);
        }
    }
    Some(ControlGroup {
        name: name.to_string(),
        gid: grp.gr_gid,
        members,
    })
}

/// The login name and primary group of `uid`, from the password database.
fn user_of(uid: u32) -> Option<(String, u32)> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in resolve_group.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some((name, pwd.pw_gid))
}

/// Whether a peer with these credentials may use the control socket.
pub fn peer_allowed(uid: u32, gid: u32, group: Option<&ControlGroup>) -> bool {
    if uid == own_uid() || uid == 0 {
        return true;
    }
    let Some(group) = group else { return false };
    if gid == group.gid {
        return true;
    }
    // Supplementary membership is not in the peer credentials: ask the user database.
    match user_of(uid) {
        Some((name, primary)) => primary == group.gid || group.members.contains(&name),
        None => false,
    }
}

/// Refuses a socket directory that someone else could tamper with: it must belong to us
/// (or root) and, if group- or world-writable, carry the sticky bit (like /tmp).
pub fn check_dir_is_safe(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mode = meta.mode();
    if meta.uid() != own_uid() && meta.uid() != 0 {
        return Err(format!(
            "{} belongs to uid {}, not to this user: refusing to put the control socket there",
            dir.display(),
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "{} is writable by others (mode {:o}): refusing to put the control socket there",
            dir.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Gives a path to `group` with `mode` (used for the socket and a directory we created).
pub fn share_with_group(path: &Path, group: &ControlGroup, mode: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, None, Some(group.gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_self_are_always_allowed_others_only_by_group() {
        assert!(peer_allowed(own_uid(), 12345, None));
        assert!(peer_allowed(0, 0, None));
        let stranger = if own_uid() == 4242 { 4243 } else { 4242 };
        assert!(!peer_allowed(stranger, 4242, None));
        let group = ControlGroup {
            name: "g".into(),
            gid: 777,
            members: vec![],
        };
        assert!(
            peer_allowed(stranger, 777, Some(&group)),
            "primary gid matches"
        );
        assert!(!peer_allowed(stranger, 778, Some(&group)));
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_dir_is_safe(dir.path()).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_dir_is_safe(dir.path())
            .unwrap_err()
            .contains("writable by others"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_dir_is_safe(dir.path()).is_ok(), "sticky like /tmp");
    }
}
