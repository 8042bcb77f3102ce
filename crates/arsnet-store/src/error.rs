//! The one error type of the store. Every I/O failure carries a context naming the file and
//! the operation ("writing /x/f.arsnet-dump: No space left on device (os error 28)"), so that
//! the engine can show it to the user as is.

use std::io;
use std::path::{Path, PathBuf};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error (including ENOSPC) on the named file; `context` says what was being done
    /// to which path.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The final file `DIR/NAME` already exists and overwriting was not allowed.
    #[error("{} already exists (allow overwriting to replace it)", .0.display())]
    TargetExists(PathBuf),
    /// A partial download (dump or journal) already exists: adopt or discard it first.
    #[error("partial download file {} already exists (resume or discard it)", .0.display())]
    PartialExists(PathBuf),
    /// Another download (in this or another process) holds the partial download's journal.
    #[error("partial download {} is in use by another download", .0.display())]
    InUse(PathBuf),
    /// There is no partial download to adopt: the journal does not exist.
    #[error("no partial download: {} does not exist", .0.display())]
    NoPartial(PathBuf),
    /// The journal's header is unreadable or inconsistent; nothing in it can be trusted.
    #[error("journal {} is corrupt: {reason}", .path.display())]
    JournalCorrupt { path: PathBuf, reason: String },
    /// A file in the download directory is not one ArsNet may use: a symlink, a directory, a
    /// hard link, another user's file, or a file that was swapped for another.
    #[error("refusing {}: {reason}", .path.display())]
    Untrusted { path: PathBuf, reason: String },
    /// The partial files belong to another download (another job's tag, or other content).
    #[error("partial download {} belongs to another download: {reason}", .path.display())]
    Foreign { path: PathBuf, reason: String },
    /// The download cannot fit in the directory's file system.
    #[error("{name} needs {needed} bytes but {} has only {free} bytes free", .dir.display())]
    NoSpace {
        dir: PathBuf,
        name: String,
        needed: u64,
        free: u64,
    },
    /// The caller passed a segment that does not fit the manifest or the store's state.
    #[error("segment {segment}: {reason}")]
    BadSegment { segment: u64, reason: String },
}

impl StoreError {
    /// An I/O error while doing `what` to `path`.
    pub(crate) fn io(what: &str, path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            context: format!("{what} {}", path.display()),
            source,
        }
    }

    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        StoreError::JournalCorrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_segment(segment: u64, reason: impl Into<String>) -> Self {
        StoreError::BadSegment {
            segment,
            reason: reason.into(),
        }
    }
}
