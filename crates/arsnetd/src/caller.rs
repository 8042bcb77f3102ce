//! Who is asking, and what they may make the daemon touch. A request runs with no more rights
//! than its caller: when the caller is not the daemon's own user (root, or a member of
//! `control_group`), the paths it names are honoured only if it opened them itself and sent
//! the descriptors (so the kernel checked *its* rights), they are the very inodes at those
//! paths, and, for a download directory, the caller may write to it. The one owner of these
//! decisions; `groups` and `jobs` only ask.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use arsnet_proto::control::{ControlError, ErrorKind};

use arsnet_store::dir::{file_id, FileId};

use arsnet_client::paths::own_uid;

/// The peer of a control connection, from SO_PEERCRED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// What a caller other than the daemon's user proved about its download directory: which
/// directory it is (checked again when the job runs), and who gets the finished file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirGrant {
    pub dir_identity: FileId,
    /// `(uid, gid)` the published file is given to, when the daemon can (it runs as root).
    pub give_to: Option<(u32, u32)>,
    /// The caller: the only one who may change how the job treats existing files.
    pub uid: u32,
}

fn refused(message: String) -> ControlError {
    ControlError::new(ErrorKind::BadRequest, message)
}

fn identity_of_fd(fd: &OwnedFd) -> Option<(u64, u64, std::fs::Metadata)> {
    let file = std::fs::File::from(fd.try_clone().ok()?);
    let meta = file.metadata().ok()?;
    Some((meta.dev(), meta.ino(), meta))
}

impl Caller {
    /// The daemon's own user: it acts with exactly its rights already.
    pub fn is_daemon_user(&self) -> bool {
        self.uid == own_uid()
    }

    /// The caller's groups: its primary group and, from /proc, its supplementary ones.
    fn groups(&self) -> Vec<u32> {
        let mut groups = vec![self.gid];
        let status = self
            .pid
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok());
        if let Some(status) = status {
            if let Some(line) = status.lines().find(|l| l.starts_with("Groups:")) {
                groups.extend(
                    line["Groups:".len()..]
                        .split_whitespace()
                        .filter_map(|g| g.parse::<u32>().ok()),
                );
            }
        }
        groups
    }

    /// The one descriptor a request about `path` must carry when the caller is not the
    /// daemon's user, and that it is the inode at `path` now. `None` for the daemon's user.
    fn passed<'a>(
        &self,
        path: &Path,
        fds: &'a [OwnedFd],
        what: &str,
    ) -> Result<Option<(&'a OwnedFd, std::fs::Metadata)>, ControlError> {
        // The daemon's own user has exactly the daemon's rights: nothing to prove, and its
        // groups and jobs follow the path (a file re-created in place is served again).
        if self.is_daemon_user() {
            return Ok(None);
        }
        let [fd] = fds else {
            return Err(refused(format!(
                "uid {} must open the {what} {} itself and pass it with the request (arsnetctl \
                 does); got {} descriptors",
                self.uid,
                path.display(),
                fds.len()
            )));
        };
        let (dev, ino, meta) = identity_of_fd(fd)
            .ok_or_else(|| refused(format!("cannot inspect the passed {what}")))?;
        let at_path =
            std::fs::metadata(path).map_err(|e| refused(format!("{}: {e}", path.display())))?;
        if (at_path.dev(), at_path.ino()) != (dev, ino) {
            return Err(refused(format!(
                "the {what} passed is not the one at {} (it was replaced?)",
                path.display()
            )));
        }
        Ok(Some((fd, meta)))
    }

    /// `serve -f FILE`: the caller opened FILE itself. Returns the served file's identity
    /// (device, inode) to hold the group to, or `None` for the daemon's own user.
    pub fn check_file(&self, path: &Path, fds: &[OwnedFd]) -> Result<Option<FileId>, ControlError> {
        let Some((fd, meta)) = self.passed(path, fds, "file")? else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Err(refused(format!("{} is not a regular file", path.display())));
        }
        // An O_PATH descriptor proves nothing about reading: require a readable one.
        // SAFETY: fcntl F_GETFL on a valid descriptor.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 || flags & libc::O_PATH != 0 || flags & libc::O_ACCMODE == libc::O_WRONLY {
            return Err(refused(format!(
                "the descriptor passed for {} was not opened for reading",
                path.display()
            )));
        }
        file_id(fd)
            .map(Some)
            .map_err(|e| refused(format!("cannot inspect the passed file: {e}")))
    }

    /// `fetch -o DIR`: the caller opened DIR itself and may write to it: by its mode bits, and
    /// when the daemon is root also by the kernel asked as the caller (an ACL denying it). Returns the
    /// grant the job is held to, or `None` for the daemon's own user.
    pub fn check_dir(
        &self,
        path: &Path,
        fds: &[OwnedFd],
    ) -> Result<Option<DirGrant>, ControlError> {
        let Some((fd, meta)) = self.passed(path, fds, "directory")? else {
            return Ok(None);
        };
        // An O_PATH descriptor is obtained without any permission on the directory itself.
        // SAFETY: fcntl F_GETFL on a valid descriptor.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 || flags & libc::O_PATH != 0 {
            return Err(refused(format!(
                "the descriptor passed for {} must be opened for reading, not O_PATH",
                path.display()
            )));
        }
        if !meta.is_dir() {
            return Err(refused(format!("{} is not a directory", path.display())));
        }
        // Both must agree: the mode bits, and — for a root daemon, which can take the caller's
        // credentials — the kernel asked as the caller, which also sees an ACL that denies it.
        // (An ACL granting more than the mode bits is not honoured: the conservative side.)
        let may_write = self.may_write(&meta) && self.kernel_may_write(fd).unwrap_or(true);
        if !may_write {
            return Err(refused(format!(
                "uid {} may not write to {} (mode {:o}, owner {}:{}), so the daemon will not \
                 either",
                self.uid,
                path.display(),
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            )));
        }
        let give_to = (own_uid() == 0 && self.uid != 0).then_some((self.uid, self.gid));
        let dir_identity = file_id(fd)
            .map_err(|e| refused(format!("cannot inspect the passed directory: {e}")))?;
        Ok(Some(DirGrant {
            dir_identity,
            give_to,
            uid: self.uid,
        }))
    }

    /// Whether the kernel lets the caller write into and search the directory `fd`, asked on
    /// a thread of its own that takes the caller's file-system uid, gid and groups (Linux
    /// credentials are per thread at the system-call level; the thread ends right after).
    /// `None` when this daemon cannot take them (it is not root) or the check itself failed.
    fn kernel_may_write(&self, fd: &OwnedFd) -> Option<bool> {
        if own_uid() != 0 {
            return None;
        }
        let fd = fd.try_clone().ok()?;
        let (uid, gid, groups) = (self.uid, self.gid, self.groups());
        std::thread::spawn(move || {
            let gids: Vec<libc::gid_t> = groups.iter().map(|&g| g as libc::gid_t).collect();
            // SAFETY: raw system calls (not glibc's process-wide wrappers) changing only this
            // thread's credentials; every argument is a plain integer or a valid slice.
            unsafe {
                if libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) != 0 {
                    return None;
                }
                libc::syscall(libc::SYS_setfsgid, gid);
                libc::syscall(libc::SYS_setfsuid, uid);
                // setfsuid reports the previous id: check the switch took.
                if libc::syscall(libc::SYS_setfsuid, uid) as u32 != uid {
                    return None;
                }
            }
            let dot = c".";
            // SAFETY: valid descriptor and NUL-terminated path; AT_EACCESS makes the check use
            // the thread's (file-system) credentials set above.
            let rc = unsafe {
                libc::faccessat(
                    fd.as_raw_fd(),
                    dot.as_ptr(),
                    libc::W_OK | libc::X_OK,
                    libc::AT_EACCESS,
                )
            };
            Some(rc == 0)
        })
        .join()
        .ok()
        .flatten()
    }

    fn may_write(&self, meta: &std::fs::Metadata) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = meta.mode();
        let (write, search) = if meta.uid() == self.uid {
            (0o200, 0o100)
        } else if self.groups().contains(&meta.gid()) {
            (0o020, 0o010)
        } else {
            (0o002, 0o001)
        };
        mode & write != 0 && mode & search != 0
    }
}
