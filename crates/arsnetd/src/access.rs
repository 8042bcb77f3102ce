//! Who may use the control socket, and making the socket's file system permissions say the
//! same: the daemon's own user and root always; members of `control_group` when configured
//! (socket 0660 and directory 0750, both owned by that group). Peer credentials are checked
//! on every connection before a byte is read, so loose permissions alone never let anyone in.

use std::ffi::{CStr, CString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// A resolved `control_group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlGroup {
    pub name: String,
    pub gid: u32,
    /// Login names listed as (supplementary) members in the group database.
    members: Vec<String>,
}

pub(crate) use arsnet_client::paths::own_uid;

/// Largest buffer tried for one group or user record (big LDAP groups need megabytes).
const MAX_NSS_BUFFER: usize = 64 * 1024 * 1024;

/// Calls a `get*_r` NSS function, growing its buffer on ERANGE. Returns the buffer (which
/// the filled record points into) or the errno.
fn with_nss_buffer(
    mut call: impl FnMut(&mut Vec<libc::c_char>) -> libc::c_int,
) -> Result<Vec<libc::c_char>, i32> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    loop {
        match call(&mut buf) {
            0 => return Ok(buf),
            libc::ERANGE if buf.len() < MAX_NSS_BUFFER => {
                let bigger = buf.len() * 2;
                buf.resize(bigger, 0);
            }
            errno => return Err(errno),
        }
    }
}

/// Looks a group up by name: `Ok(None)` if it does not exist, `Err` if the lookup failed.
pub fn resolve_group(name: &str) -> Result<Option<ControlGroup>, String> {
    let cname = CString::new(name).map_err(|_| format!("group name {name:?} contains NUL"))?;
    // SAFETY: an all-zero `group` is a valid value to be overwritten by getgrnam_r.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let _buf = with_nss_buffer(|buf| {
        // SAFETY: all pointers are valid for the call.
        unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        }
    })
    .map_err(|errno| {
        format!(
            "looking up group {name:?}: {}",
            std::io::Error::from_raw_os_error(errno)
        )
    })?;
    if result.is_null() {
        return Ok(None);
    }
    let mut members = Vec::new();
    let mut cursor = grp.gr_mem;
    // SAFETY: gr_mem is a NULL-terminated array of C strings inside `_buf`, which is alive.
    unsafe {
        while !cursor.is_null() && !(*cursor).is_null() {
            members.push(CStr::from_ptr(*cursor).to_string_lossy().into_owned());
            cursor = cursor.add(1);
        }
    }
    Ok(Some(ControlGroup {
        name: name.to_string(),
        gid: grp.gr_gid,
        members,
    }))
}

/// The login name and primary group of `uid`, from the password database.
fn user_of(uid: u32) -> Option<(String, u32)> {
    // SAFETY: an all-zero `passwd` is a valid value to be overwritten by getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let _buf = with_nss_buffer(|buf| {
        // SAFETY: as in resolve_group.
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) }
    })
    .ok()?;
    if result.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `_buf`, which is alive, and is NUL-terminated.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some((name, pwd.pw_gid))
}

/// Whether a peer with these credentials may use the control socket. The group is looked
/// up afresh on every call, so adding or removing a member takes effect without a restart;
/// call it off the async threads, as NSS lookups may block.
pub fn peer_allowed(uid: u32, gid: u32, group_name: Option<&str>) -> bool {
    if uid == own_uid() || uid == 0 {
        return true;
    }
    match group_name.and_then(|name| resolve_group(name).ok().flatten()) {
        Some(group) => member_of(uid, gid, &group),
        None => false,
    }
}

/// Primary group (from the credentials or the user database) or a listed member.
fn member_of(uid: u32, gid: u32, group: &ControlGroup) -> bool {
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
/// (or root) and be writable by no one else. Not even with the sticky bit (like /tmp):
/// clients refuse such a directory, so a daemon there could never be talked to.
pub fn check_dir_is_safe(dir: &Path) -> Result<(), String> {
    // Not following a symlink: whoever owns it could re-point it later.
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "{} is a symbolic link: refusing to put the control socket there",
            dir.display()
        ));
    }
    let mode = meta.mode();
    if meta.uid() != own_uid() && meta.uid() != 0 {
        return Err(format!(
            "{} belongs to uid {}, not to this user: refusing to put the control socket there",
            dir.display(),
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
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
    share_with_group_by(path, group, mode, |path, gid| {
        std::os::unix::fs::chown(path, None, Some(gid))
    })
}

/// `share_with_group` with the chown given: it is only called when the path's group is not
/// already `group`. Under the system unit /run/arsnet already is group arsnet, and a chown
/// there would be one more system call the unit's filter has to allow.
fn share_with_group_by(
    path: &Path,
    group: &ControlGroup,
    mode: u32,
    chown: impl FnOnce(&Path, u32) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if std::fs::metadata(path)?.gid() != group.gid {
        chown(path, group.gid)?;
    }
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
        assert!(!peer_allowed(stranger, 4242, Some("no-such-group-arsnet")));
        let group = ControlGroup {
            name: "g".into(),
            gid: 777,
            members: vec![],
        };
        assert!(member_of(stranger, 777, &group), "primary gid matches");
        assert!(!member_of(stranger, 778, &group));
        assert_eq!(resolve_group("no-such-group-arsnet"), Ok(None));
    }

    #[test]
    fn a_path_already_of_the_group_is_not_chowned() {
        let dir = tempfile::tempdir().unwrap();
        let gid = std::fs::metadata(dir.path()).unwrap().gid();
        let group = |gid| ControlGroup {
            name: "g".into(),
            gid,
            members: vec![],
        };
        // As under a system call filter without @chown: any chown fails.
        let refused = |_: &Path, _: u32| Err(std::io::Error::from_raw_os_error(libc::EPERM));
        share_with_group_by(dir.path(), &group(gid), 0o750, refused).expect("no chown needed");
        let mode = std::fs::metadata(dir.path()).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o750, "the mode is still set");
        let other = gid.wrapping_add(1);
        let mut asked = None;
        share_with_group_by(dir.path(), &group(other), 0o750, |_, gid| {
            asked = Some(gid);
            Ok(())
        })
        .unwrap();
        assert_eq!(asked, Some(other), "another group is still given the path");
        let err = share_with_group_by(dir.path(), &group(other), 0o750, refused).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
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
        assert!(
            check_dir_is_safe(dir.path()).is_err(),
            "sticky like /tmp: clients would refuse it"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(
            check_dir_is_safe(dir.path()).is_ok(),
            "control_group's mode"
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/", &link).unwrap();
        assert!(check_dir_is_safe(&link)
            .unwrap_err()
            .contains("symbolic link"));
    }
}
