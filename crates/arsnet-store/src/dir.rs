//! The download directory as hostile ground. Anyone who can write to `DIR` can plant
//! symlinks, hard links, FIFOs or other users' files at the names ArsNet uses, and swap them
//! between any two system calls. So every file ArsNet touches in `DIR` goes through a [`Dir`]:
//! a directory descriptor opened once, and names resolved relative to it with `openat`,
//! `fstatat`, `linkat`, `renameat2` and `unlinkat`, never following a symlink. A file is only
//! used when it is a regular file with one link, owned by the expected user; new files are
//! created exclusively. Publishing links the very inode that was verified (through its open
//! descriptor) to its final name, so what appears under `DIR/NAME` is never chosen by name.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// Which file an open descriptor is, for holding a request to the very file it was made for:
/// device, inode, and birth time (seconds, nanoseconds; 0, 0 where the file system does not
/// keep one). The birth time is what tells a new file from an old one whose inode number it
/// reused.
pub type FileId = (u64, u64, i64, u32);

/// The [`FileId`] of an open descriptor.
pub fn file_id(fd: &impl AsRawFd) -> io::Result<FileId> {
    // SAFETY: an all-zero `statx` is a valid value to be overwritten by the kernel.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: valid descriptor, empty path with AT_EMPTY_PATH, valid out-pointer.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_INO | libc::STATX_BTIME,
            &mut stx,
        )
    };
    check(rc)?;
    let dev = libc::makedev(stx.stx_dev_major, stx.stx_dev_minor);
    let (sec, nsec) = if stx.stx_mask & libc::STATX_BTIME != 0 {
        (stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec)
    } else {
        (0, 0)
    };
    Ok((dev, stx.stx_ino, sec, nsec))
}

/// What is at a name in the directory (never following a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub uid: u32,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

impl EntryKind {
    fn of(mode: libc::mode_t) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFREG => EntryKind::File,
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink,
            _ => EntryKind::Other,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            EntryKind::File => "a regular file",
            EntryKind::Dir => "a directory",
            EntryKind::Symlink => "a symbolic link",
            EntryKind::Other => "a special file",
        }
    }
}

impl Entry {
    fn from_stat(st: &libc::stat) -> Self {
        Entry {
            kind: EntryKind::of(st.st_mode),
            uid: st.st_uid,
            dev: st.st_dev,
            ino: st.st_ino,
            nlink: st.st_nlink,
        }
    }

    /// Same inode as `other`.
    pub fn same_file(&self, other: &Entry) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// A directory held open; every name is resolved relative to it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
    /// The uid files of ours must belong to (the daemon's effective uid).
    owner: u32,
    /// Whose existing `DIR/NAME` `--overwrite` may replace: the caller's (a file it could
    /// replace itself), which is the daemon's user unless the request came from another.
    replace_owner: u32,
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fstat_fd(fd: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a valid descriptor for the call and `st` a valid out-pointer.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

impl Dir {
    /// Opens `path` (which the user named, so symlinks along it are followed) as a directory.
    pub fn open(path: &Path) -> Result<Dir, StoreError> {
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            StoreError::io(
                "opening directory",
                path,
                io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
            )
        })?;
        // SAFETY: a valid NUL-terminated path; the returned descriptor is checked below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        let fd = check(fd).map_err(|e| StoreError::io("opening directory", path, e))?;
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: geteuid has no preconditions and cannot fail.
        let owner = unsafe { libc::geteuid() };
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
            owner,
            replace_owner: owner,
        })
    }

    /// Opens `path` as [`Dir::open`] does, and refuses it unless it is the directory whose
    /// (device, inode) is `expected` — the one a caller proved it could use when it asked.
    pub fn open_expecting(path: &Path, expected: Option<FileId>) -> Result<Dir, StoreError> {
        let dir = Dir::open(path)?;
        match expected {
            Some(identity) if dir.identity()? != identity => Err(StoreError::Untrusted {
                path: path.to_path_buf(),
                reason: "it is no longer the directory the download was asked for (it was \
                         replaced or moved since)"
                    .into(),
            }),
            _ => Ok(dir),
        }
    }

    /// The [`FileId`] of the held directory.
    pub fn identity(&self) -> Result<FileId, StoreError> {
        file_id(&self.fd).map_err(|e| StoreError::io("checking", &self.path, e))
    }

    /// A second handle on the same directory (a duplicated descriptor).
    pub fn try_clone(&self) -> Result<Dir, StoreError> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| StoreError::io("opening directory", &self.path, e))?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
            owner: self.owner,
            replace_owner: self.replace_owner,
        })
    }

    /// The names in the directory (read through the held descriptor where /proc allows).
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let via_fd = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let entries = std::fs::read_dir(&via_fd)
            .or_else(|_| std::fs::read_dir(&self.path))
            .map_err(|e| StoreError::io("reading", &self.path, e))?;
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }

    /// Gives the open `file` to `uid`:`gid` (a root daemon publishing a caller's download,
    /// so that the caller owns its file).
    pub fn chown_file(file: &File, path: &Path, uid: u32, gid: u32) -> Result<(), StoreError> {
        // SAFETY: fchown on a valid descriptor with plain integer ids.
        check(unsafe { libc::fchown(file.as_raw_fd(), uid, gid) })
            .map(|_| ())
            .map_err(|e| StoreError::io("giving to its owner", path, e))
    }

    /// The directory's path as the user gave it (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `DIR/name`, for messages.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The uid our files must belong to.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Makes `--overwrite` replace only files of `uid` (the caller of the request).
    pub fn set_replace_owner(&mut self, uid: u32) {
        self.replace_owner = uid;
    }

    /// Whether `--overwrite` may replace `entry`: a regular file with one link of the
    /// caller's (or, for the daemon's own requests, of the daemon's user).
    pub fn may_replace(&self, entry: &Entry) -> bool {
        Dir::owned_by(entry, self.replace_owner)
    }

    /// What is at `name`, without following a symlink; `None` when nothing is.
    pub fn entry(&self, name: &str) -> Result<Option<Entry>, StoreError> {
        let path = self.join(name);
        let c = cstr(name).map_err(|e| StoreError::io("checking", &path, e))?;
        // SAFETY: an all-zero `stat` is a valid value to be overwritten by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid dir descriptor, NUL-terminated name and out-pointer.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        match check(rc) {
            Ok(_) => Ok(Some(Entry::from_stat(&st))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("checking", &path, e)),
        }
    }

    /// Refuses anything but a regular file with a single link owned by us: a symlink, a
    /// hard link to some other file, a FIFO or another user's file is never written to.
    pub fn check_ours(&self, entry: &Entry, path: &Path) -> Result<(), StoreError> {
        let reason = if entry.kind != EntryKind::File {
            format!("it is {}, not a regular file", entry.kind.describe())
        } else if entry.uid != self.owner {
            format!("it belongs to uid {}, not to uid {}", entry.uid, self.owner)
        } else if entry.nlink != 1 {
            format!("it has {} hard links", entry.nlink)
        } else {
            return Ok(());
        };
        Err(StoreError::Untrusted {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Whether `entry` is a regular file of `uid` with one link (a published download
    /// belongs to the caller it was made for, which may not be the daemon's user).
    pub fn owned_by(entry: &Entry, uid: u32) -> bool {
        entry.kind == EntryKind::File && entry.uid == uid && entry.nlink == 1
    }

    /// Opens the published file `name` read-only, never through a symlink, when it is a
    /// regular file of `uid` with `nlink` links (checked on the open descriptor).
    pub fn open_published(
        &self,
        name: &str,
        uid: u32,
        nlink: u64,
    ) -> Result<Option<File>, StoreError> {
        let path = self.join(name);
        let c = cstr(name).map_err(|e| StoreError::io("opening", &path, e))?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: valid dir descriptor and NUL-terminated name.
        let rc = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        let fd = match check(rc) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => {
                return Ok(None)
            }
            Err(e) => return Err(StoreError::io("opening", &path, e)),
        };
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let st = fstat_fd(file.as_raw_fd()).map_err(|e| StoreError::io("checking", &path, e))?;
        let found = Entry::from_stat(&st);
        if found.kind != EntryKind::File || found.uid != uid || found.nlink != nlink {
            return Ok(None);
        }
        clear_nonblock(&file).map_err(|e| StoreError::io("opening", &path, e))?;
        Ok(Some(file))
    }

    /// Opens the existing file `name` for reading and writing; `None` when it does not exist.
    /// Never follows a symlink, never blocks on a FIFO, and refuses what [`Dir::check_ours`]
    /// refuses (checked on the open descriptor, so a swap after the check changes nothing).
    pub fn open_file(&self, name: &str) -> Result<Option<File>, StoreError> {
        let path = self.join(name);
        let c = cstr(name).map_err(|e| StoreError::io("opening", &path, e))?;
        let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        // SAFETY: valid dir descriptor and NUL-terminated name.
        let rc = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        let fd = match check(rc) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            // O_NOFOLLOW on a symlink fails with ELOOP: say what it is.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(StoreError::Untrusted {
                    path,
                    reason: "it is a symbolic link".into(),
                })
            }
            Err(e) => return Err(StoreError::io("opening", &path, e)),
        };
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let st = fstat_fd(file.as_raw_fd()).map_err(|e| StoreError::io("checking", &path, e))?;
        self.check_ours(&Entry::from_stat(&st), &path)?;
        clear_nonblock(&file).map_err(|e| StoreError::io("opening", &path, e))?;
        Ok(Some(file))
    }

    /// Creates `name` with `mode` (before the umask), which must not exist (O_EXCL: nothing
    /// planted there is ever reused).
    pub fn create_new(&self, name: &str, mode: u32) -> Result<File, StoreError> {
        let path = self.join(name);
        let c = cstr(name).map_err(|e| StoreError::io("creating", &path, e))?;
        let flags =
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid dir descriptor and NUL-terminated name; mode is a plain integer.
        let rc =
            unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint) };
        let fd = check(rc).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                StoreError::PartialExists(path.clone())
            } else {
                StoreError::io("creating", &path, e)
            }
        })?;
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// The identity of an open file.
    pub fn entry_of(file: &File, path: &Path) -> Result<Entry, StoreError> {
        fstat_fd(file.as_raw_fd())
            .map(|st| Entry::from_stat(&st))
            .map_err(|e| StoreError::io("checking", path, e))
    }

    /// Gives the open `file` the name `name` in this directory, failing with `AlreadyExists`
    /// if the name is taken. The inode linked is the descriptor's, whatever is at its old
    /// name meanwhile. Falls back to `Unsupported` where /proc is not mounted.
    pub fn link_open_file(&self, file: &File, name: &str) -> io::Result<()> {
        let proc_path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let c = cstr(name)?;
        // SAFETY: valid NUL-terminated strings and descriptors for the duration of the call.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc_path.as_ptr(),
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        match check(rc) {
            Ok(_) => Ok(()),
            // No /proc (or it is not ours to use): the caller renames by name and checks.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/self/fd").exists() =>
            {
                Err(io::Error::from(io::ErrorKind::Unsupported))
            }
            Err(e) => Err(e),
        }
    }

    /// Renames `from` to `to` within the directory; with `noreplace`, an existing `to` fails
    /// with `AlreadyExists` atomically.
    pub fn rename(&self, from: &str, to: &str, noreplace: bool) -> io::Result<()> {
        let (f, t) = (cstr(from)?, cstr(to)?);
        let flags = if noreplace { libc::RENAME_NOREPLACE } else { 0 };
        // SAFETY: valid descriptors and NUL-terminated names for the duration of the call.
        let rc = unsafe {
            libc::renameat2(
                self.fd.as_raw_fd(),
                f.as_ptr(),
                self.fd.as_raw_fd(),
                t.as_ptr(),
                flags,
            )
        };
        check(rc).map(|_| ())
    }

    /// Removes `name` if it is `expected` (the same inode); anything else found there (a
    /// file someone put in its place) is left alone. Returns whether it removed something.
    pub fn remove_if_same(&self, name: &str, expected: &Entry) -> Result<bool, StoreError> {
        match self.entry(name)? {
            Some(found) if found.same_file(expected) => self.remove(name).map(|()| true),
            _ => Ok(false),
        }
    }

    /// Removes the name `name` (a file, or a symlink itself); missing is not an error.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.join(name);
        let c = cstr(name).map_err(|e| StoreError::io("removing", &path, e))?;
        // SAFETY: valid dir descriptor and NUL-terminated name.
        let rc = unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) };
        match check(rc) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io("removing", &path, e)),
        }
    }

    /// fsync of the directory, making creations, renames and removals in it durable.
    pub fn sync(&self) -> Result<(), StoreError> {
        // SAFETY: fsync on a valid descriptor.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) })
            .map(|_| ())
            .map_err(|e| StoreError::io("syncing directory", &self.path, e))
    }

    /// Bytes an unprivileged writer may still allocate in the directory's file system.
    pub fn free_space(&self) -> Result<u64, StoreError> {
        // SAFETY: an all-zero `statvfs` is a valid value to be overwritten by the kernel.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and out-pointer.
        check(unsafe { libc::fstatvfs(self.fd.as_raw_fd(), &mut st) })
            .map_err(|e| StoreError::io("checking free space of", &self.path, e))?;
        // The field types differ between platforms (u32 on some 32-bit ones).
        #[allow(clippy::useless_conversion)]
        let (avail, frsize) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
        Ok(avail.saturating_mul(frsize))
    }
}

/// Opened with O_NONBLOCK so a planted FIFO cannot hang the open; regular files do not
/// care, but clear it so nothing later sees a surprising flag.
fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a valid descriptor with integer arguments.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) }).map(|_| ())
}
