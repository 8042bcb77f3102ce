//! The file a group serves: its descriptor, manifest and pre-encoded preamble, the check
//! that it is still as hashed, and the re-hash after an in-place edit. Shared by the group
//! (which creates it) and every connection (which reads it); it knows neither.

use std::fs::File;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arsnet_proto::limits::SERVER_REHASH_SETTLE;
use arsnet_proto::manifest::choose_segment_size;
use arsnet_proto::{validate_file_name, Manifest};
use arsnet_store::dir::file_id;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::config::GroupConfig;
use super::digests::{build_stamped_manifest, FileStamp};
use super::validate::ServeError;

/// The served file, shared by every connection of every port of a group.
pub(crate) struct Served {
    pub file: File,
    pub manifest: Manifest,
    /// HEADER + DIGESTS frames, encoded once.
    pub preamble: Vec<u8>,
    /// The open file's stamp (size, mtime, ctime, inode, device) when hashing began: any
    /// change means the digests may no longer hold.
    stamp: FileStamp,
}

impl Served {
    /// Reads from `offset` until `buf` is full or the file ends (a file truncated under us
    /// gives fewer bytes, which callers treat as a changed file); the count read.
    pub fn read_at_most(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut filled = 0;
        while filled < buf.len() {
            match self
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    /// True if the open file still is as it was hashed. ctime is what catches an in-place
    /// edit whose size and mtime were put back.
    pub fn unchanged(&self) -> bool {
        match self.file.metadata() {
            Ok(m) => FileStamp::of(&m) == self.stamp,
            Err(_) => false,
        }
    }
}

/// The file a group serves, swapped for a freshly hashed one when it is changed in place,
/// so that new connections get the new content under its own digests.
pub(crate) struct ServedFile {
    current: std::sync::RwLock<Arc<Served>>,
    changed: tokio::sync::Notify,
}

impl ServedFile {
    pub(crate) fn new(served: Served) -> Self {
        ServedFile {
            current: std::sync::RwLock::new(Arc::new(served)),
            changed: Default::default(),
        }
    }

    /// The file as currently hashed.
    pub fn get(&self) -> Arc<Served> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The file for a connection that is about to get its header: `None` if the file
    /// changed in place since it was hashed (its digests must not be sent; a re-hash is
    /// scheduled). A file replaced at its path (renamed over) is not a change: the open
    /// file still matches its digests and goes on being served, as README promises.
    pub fn for_new_connection(&self) -> Option<Arc<Served>> {
        let served = self.get();
        if served.unchanged() {
            Some(served)
        } else {
            self.report_change();
            None
        }
    }

    /// A connection saw the file change under it: schedule a re-hash.
    pub fn report_change(&self) {
        self.changed.notify_one();
    }

    fn replace(&self, served: Served) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(served);
    }
}

/// Counters of one virtual server.
#[derive(Debug, Default)]
pub(crate) struct PortStats {
    pub connections: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub segments_sent: AtomicU64,
    pub rate: AtomicU64,
    /// Connections closed to make room for a newcomer (the port or their source was full).
    pub evicted: AtomicU64,
    /// Newcomers turned away because every slot they could take was transferring.
    pub refused: AtomicU64,
}

/// Opens the served file by its path (a new group, or a restored one) and hashes it.
pub(crate) fn open_served(config: &GroupConfig) -> Result<Served, ServeError> {
    let bad = |reason: String| ServeError::BadFile {
        path: config.file.clone(),
        reason,
    };
    // Checked before opening, since opening a FIFO would block; and again on the open file,
    // which is what is served, in case the path changed in between.
    let meta = std::fs::metadata(&config.file).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let file = File::open(&config.file).map_err(|e| bad(e.to_string()))?;
    if let Some(expected) = config.expect_file {
        let found = file_id(&file).map_err(|e| bad(e.to_string()))?;
        if found != expected {
            return Err(bad(
                "it is not the file the request was made for (it was replaced); serve it again"
                    .into(),
            ));
        }
    }
    hash_served(config, file)
}

/// Hashes the open `file` as the group's served file. The re-hash after an in-place edit
/// comes here with the descriptor the group already serves: it never opens the path again,
/// so whatever was put at the path since (another file, a symlink to a secret) is never
/// served.
fn hash_served(config: &GroupConfig, file: File) -> Result<Served, ServeError> {
    let bad = |reason: String| ServeError::BadFile {
        path: config.file.clone(),
        reason,
    };
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let name = config
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| bad("has no file name".into()))?;
    validate_file_name(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let segment_size = config
        .segment_size
        .unwrap_or_else(|| choose_segment_size(meta.len()));
    let (manifest, stamp) = build_stamped_manifest(
        &file,
        &config.file,
        name,
        segment_size,
        config.cache_dir.as_deref(),
    )
    .map_err(|e| bad(e.to_string()))?;
    let mut preamble = Vec::new();
    arsnet_proto::wire::encode_manifest(&manifest, &mut preamble);
    Ok(Served {
        file,
        manifest,
        preamble,
        stamp,
    })
}

/// Re-hashes what the group serves through the descriptor it already holds (see
/// [`hash_served`]).
fn rehash_open(served: &ServedFile, config: &GroupConfig) -> Result<Served, ServeError> {
    let file = served
        .get()
        .file
        .try_clone()
        .map_err(|e| ServeError::BadFile {
            path: config.file.clone(),
            reason: e.to_string(),
        })?;
    hash_served(config, file)
}

/// Re-hashes the file after a connection reported that it changed in place: waits until its
/// stamp (size, mtime, ctime, inode, device) has held still for
/// [`SERVER_REHASH_SETTLE`] (a writer may still be at it), then hashes it anew and swaps it
/// in. Downloads of the old content then see a different header and fail clearly instead of
/// ever receiving mixed bytes.
pub(crate) fn spawn_rehash_task(
    served: Arc<ServedFile>,
    config: GroupConfig,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        // The open file's stamp, not the path's: the group serves its descriptor, whatever is
        // at the path now.
        let fingerprint =
            |served: &ServedFile| served.get().file.metadata().ok().map(|m| FileStamp::of(&m));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = served.changed.notified() => {}
            }
            // Reports that arrived while the last re-hash ran may be about the file it
            // already hashed.
            let current = served.get();
            if current.unchanged() {
                continue;
            }
            drop(current);
            let mut last = fingerprint(&served);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(SERVER_REHASH_SETTLE) => {}
                }
                let now = fingerprint(&served);
                if now == last {
                    break;
                }
                last = now;
            }
            let (cfg, held) = (config.clone(), served.clone());
            match tokio::task::spawn_blocking(move || rehash_open(&held, &cfg)).await {
                Ok(Ok(fresh)) => {
                    info!(
                        file = %config.file.display(),
                        size = fresh.manifest.size,
                        "served file changed on disk: re-hashed, new connections get the new content"
                    );
                    served.replace(fresh);
                }
                Ok(Err(e)) => {
                    warn!(file = %config.file.display(), error = %e, "served file changed and cannot be re-hashed")
                }
                Err(e) => warn!(error = %e, "re-hash task failed"),
            }
        }
    });
}
