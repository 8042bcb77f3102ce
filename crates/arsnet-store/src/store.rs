//! The dump + journal pair of one download, and the one place the write order lives:
//! segment bytes are pwritten to the dump, a commit fdatasyncs the dump and only then
//! appends the segments to the journal and fsyncs it. So the journal never lists a segment
//! whose bytes are not durable. [`Store`] holds that logic over any [`BlockFile`] pair (so
//! crash tests run it on `CrashFile`s); [`DownloadStore`] puts it on real files in `DIR`
//! and adds the file-system steps (exclusive creation, adoption, the finalizing rename,
//! discard), fsyncing the directory after every change to its entries.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use arsnet_proto::{validate_file_name, Manifest};

use crate::backend::{read_exact_at, BlockFile};
use crate::error::StoreError;
use crate::journal::Journal;
use crate::segset::SegmentSet;

/// Suffix of the dump file: `DIR/NAME.arsnet-dump`.
pub const DUMP_SUFFIX: &str = ".arsnet-dump";
/// Suffix of the journal file: `DIR/NAME.arsnet-segments`.
pub const JOURNAL_SUFFIX: &str = ".arsnet-segments";

/// What adopting a partial download found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// Segments listed in the journal whose bytes in the dump verify: already downloaded.
    pub segments: Vec<u64>,
    /// Segments listed in the journal whose bytes do not verify: fetch them again.
    pub rejected: Vec<u64>,
    /// Bytes of torn or corrupt journal tail that were ignored and truncated away.
    pub ignored_tail_bytes: u64,
}

/// The paths of a dump/journal pair, used in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePaths {
    pub dump: PathBuf,
    pub journal: PathBuf,
}

impl StorePaths {
    /// The paths of download `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        StorePaths {
            dump: DownloadStore::dump_path(dir, name),
            journal: DownloadStore::journal_path(dir, name),
        }
    }
}

/// The write-order logic of a download over any pair of backends: `D` for the dump, `J`
/// for the journal.
#[derive(Debug)]
pub struct Store<D: BlockFile, J: BlockFile> {
    manifest: Manifest,
    dump: D,
    dump_path: PathBuf,
    journal: Journal<J>,
    /// Segments the journal lists (and, after adoption, that verified).
    committed: SegmentSet,
    /// Segments written since they were last committed.
    written: SegmentSet,
    /// Set when a durability step failed: after a failed fdatasync the kernel may have
    /// dropped dirty pages, so nothing written before can be trusted without re-verifying.
    failed: bool,
}

impl<D: BlockFile, J: BlockFile> Store<D, J> {
    /// Starts a fresh download: sizes the dump to `manifest.size` and writes a new journal.
    pub fn create(
        mut dump: D,
        journal: J,
        manifest: &Manifest,
        paths: &StorePaths,
    ) -> Result<Self, StoreError> {
        manifest.validate().map_err(|e| {
            StoreError::io(
                "creating",
                &paths.dump,
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })?;
        dump.set_len(manifest.size)
            .map_err(|e| StoreError::io("sizing", &paths.dump, e))?;
        let journal = Journal::create_named(journal, manifest, &paths.journal)?;
        let committed = SegmentSet::new(manifest.segment_count());
        Ok(Self::assemble(
            manifest.clone(),
            dump,
            paths,
            journal,
            committed,
        ))
    }

    /// Continues a download: reads the journal (whose manifest is authoritative), sizes the
    /// dump, and re-verifies every listed segment against the dump's bytes.
    pub fn open(dump: D, journal: J, paths: &StorePaths) -> Result<(Self, Adopted), StoreError> {
        Self::open_expecting(dump, journal, paths, None)
    }

    /// [`Store::open`], refusing (before touching the dump) a journal whose manifest names
    /// another file than `expected_name`.
    fn open_expecting(
        mut dump: D,
        journal: J,
        paths: &StorePaths,
        expected_name: Option<&str>,
    ) -> Result<(Self, Adopted), StoreError> {
        let (journal, contents) = Journal::open_named(journal, &paths.journal)?;
        let manifest = contents.manifest;
        if let Some(expected) = expected_name {
            if manifest.name != expected {
                return Err(StoreError::corrupt(
                    &paths.journal,
                    format!("journal is for {:?}, not {expected:?}", manifest.name),
                ));
            }
        }
        let dump_len = dump
            .len()
            .map_err(|e| StoreError::io("reading", &paths.dump, e))?;
        if dump_len != manifest.size {
            dump.set_len(manifest.size)
                .map_err(|e| StoreError::io("sizing", &paths.dump, e))?;
        }
        let mut verified = SegmentSet::new(manifest.segment_count());
        let mut rejected = Vec::new();
        // A validated manifest bounds the segment size to MAX_SEGMENT_SIZE.
        let mut buf = vec![
            0u8;
            if manifest.size == 0 {
                0
            } else {
                manifest.segment_size as usize
            }
        ];
        for &segment in &contents.segments {
            let (offset, len) = manifest.segment_range(segment);
            let bytes = &mut buf[..len as usize];
            read_exact_at(&dump, bytes, offset)
                .map_err(|e| StoreError::io("reading", &paths.dump, e))?;
            if manifest.verify_segment(segment, bytes) {
                verified.insert(segment);
            } else {
                rejected.push(segment);
            }
        }
        if !rejected.is_empty() {
            tracing::warn!(
                dump = %paths.dump.display(),
                rejected = rejected.len(),
                "journaled segments failed re-verification and will be fetched again"
            );
        }
        let adopted = Adopted {
            segments: verified.to_vec(),
            rejected,
            ignored_tail_bytes: contents.ignored_tail_bytes,
        };
        Ok((
            Self::assemble(manifest, dump, paths, journal, verified),
            adopted,
        ))
    }

    fn assemble(
        manifest: Manifest,
        dump: D,
        paths: &StorePaths,
        journal: Journal<J>,
        committed: SegmentSet,
    ) -> Self {
        let count = manifest.segment_count();
        Store {
            manifest,
            dump,
            dump_path: paths.dump.clone(),
            journal,
            committed,
            written: SegmentSet::new(count),
            failed: false,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// True when `segment` is committed (durable and journaled).
    pub fn is_committed(&self, segment: u64) -> bool {
        self.committed.contains(segment)
    }

    /// Number of committed segments.
    pub fn committed_count(&self) -> u64 {
        self.committed.len()
    }

    /// Writes a verified segment at its final offset. `data` must be exactly the segment.
    /// The caller has checked it against the manifest's digest.
    pub fn write_segment(&mut self, segment: u64, data: &[u8]) -> Result<(), StoreError> {
        let count = self.manifest.segment_count();
        if segment >= count {
            return Err(StoreError::bad_segment(
                segment,
                format!("out of range (the file has {count} segments)"),
            ));
        }
        let (offset, len) = self.manifest.segment_range(segment);
        if data.len() as u64 != u64::from(len) {
            return Err(StoreError::bad_segment(
                segment,
                format!("{} bytes given, the segment has {len}", data.len()),
            ));
        }
        self.dump
            .write_all_at(data, offset)
            .map_err(|e| StoreError::io("writing", &self.dump_path, e))?;
        self.written.insert(segment);
        Ok(())
    }

    /// Makes a batch of written segments durable: fdatasync(dump), then one journal append
    /// of those not yet committed, then fsync(journal). Every segment must have been written
    /// (with [`Store::write_segment`]) since it was last committed, or be committed already.
    /// After an error the store refuses further commits: adopt the download again, which
    /// re-verifies.
    pub fn commit(&mut self, segments: &[u64]) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::io(
                "committing to",
                &self.dump_path,
                io::Error::other("an earlier commit failed; reopen the download"),
            ));
        }
        let mut fresh = Vec::with_capacity(segments.len());
        for &segment in segments {
            if self.written.contains(segment) {
                fresh.push(segment);
            } else if !self.committed.contains(segment) {
                return Err(StoreError::bad_segment(
                    segment,
                    "committed without being written",
                ));
            }
        }
        fresh.sort_unstable();
        fresh.dedup();
        if fresh.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.dump.sync_data() {
            self.failed = true;
            return Err(StoreError::io("syncing", &self.dump_path, e));
        }
        let new: Vec<u64> = fresh
            .iter()
            .copied()
            .filter(|&s| !self.committed.contains(s))
            .collect();
        if let Err(e) = self.journal.append(&new) {
            self.failed = true;
            return Err(e);
        }
        for segment in fresh {
            self.written.remove(segment);
            self.committed.insert(segment);
        }
        Ok(())
    }

    /// Checks that every segment is committed, fsyncs the dump and checks its length.
    pub fn finish(&mut self) -> Result<(), StoreError> {
        if let Some(missing) = self.committed.first_missing() {
            return Err(StoreError::bad_segment(
                missing,
                format!(
                    "not committed ({} of {} segments are); cannot finalize",
                    self.committed.len(),
                    self.manifest.segment_count()
                ),
            ));
        }
        self.dump
            .sync_all()
            .map_err(|e| StoreError::io("syncing", &self.dump_path, e))?;
        let len = self
            .dump
            .len()
            .map_err(|e| StoreError::io("reading", &self.dump_path, e))?;
        if len != self.manifest.size {
            return Err(StoreError::io(
                "finalizing",
                &self.dump_path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("dump is {len} bytes, expected {}", self.manifest.size),
                ),
            ));
        }
        Ok(())
    }

    /// The dump backend.
    pub fn dump(&self) -> &D {
        &self.dump
    }

    /// The journal.
    pub fn journal(&self) -> &Journal<J> {
        &self.journal
    }

    /// Gives both backends back (dump, journal).
    pub fn into_parts(self) -> (D, J) {
        (self.dump, self.journal.into_inner())
    }
}

/// One download's dump and journal in `DIR`, on real files.
#[derive(Debug)]
pub struct DownloadStore {
    dir: PathBuf,
    paths: StorePaths,
    store: Store<File, File>,
}

impl DownloadStore {
    /// `DIR/NAME.arsnet-dump`.
    pub fn dump_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}{DUMP_SUFFIX}"))
    }

    /// `DIR/NAME.arsnet-segments`.
    pub fn journal_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}{JOURNAL_SUFFIX}"))
    }

    /// Starts a fresh download of `manifest` into `dir`. Errors: `TargetExists` if
    /// `DIR/NAME` exists and `!overwrite`; `PartialExists` if the dump or journal exists.
    /// Creates the dump (sized to the file), fsyncs the directory, then creates the journal
    /// and fsyncs the directory again, so a journal on disk always has its dump. On failure
    /// the files this call created are removed.
    pub fn create(dir: &Path, manifest: &Manifest, overwrite: bool) -> Result<Self, StoreError> {
        let name = checked_name(manifest.name.as_bytes(), dir)?;
        manifest.validate().map_err(|e| {
            StoreError::io(
                "creating a download in",
                dir,
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })?;
        let paths = StorePaths::new(dir, name);
        let target = dir.join(name);
        if !overwrite && exists(&target)? {
            return Err(StoreError::TargetExists(target));
        }
        for partial in [&paths.dump, &paths.journal] {
            if exists(partial)? {
                return Err(StoreError::PartialExists(partial.clone()));
            }
        }
        let dump = create_new(&paths.dump)?;
        let mut journal_created = false;
        let result = sync_dir(dir)
            .and_then(|()| create_new(&paths.journal))
            .and_then(|journal| {
                journal_created = true;
                lock_journal(&journal, &paths.journal)?;
                Store::create(dump, journal, manifest, &paths)
            })
            // The journal's directory entry must be durable before anything is committed.
            .and_then(|store| sync_dir(dir).map(|()| store));
        match result {
            Ok(store) => Ok(DownloadStore {
                dir: dir.to_path_buf(),
                paths,
                store,
            }),
            Err(e) => {
                // Remove only what this call created (create_new guarantees it was ours).
                if journal_created {
                    let _ = std::fs::remove_file(&paths.journal);
                }
                let _ = std::fs::remove_file(&paths.dump);
                let _ = sync_dir(dir);
                Err(e)
            }
        }
    }

    /// Continues the partial download `name` in `dir` (see API.md): the journal's manifest
    /// is authoritative, the dump must exist, and every journaled segment is re-verified.
    /// Errors: `NoPartial` when the journal does not exist; `JournalCorrupt`; `TargetExists`
    /// if `DIR/NAME` exists and `!overwrite`.
    pub fn adopt(dir: &Path, name: &str, overwrite: bool) -> Result<(Self, Adopted), StoreError> {
        let name = checked_name(name.as_bytes(), dir)?;
        let paths = StorePaths::new(dir, name);
        let target = dir.join(name);
        if !overwrite && exists(&target)? {
            return Err(StoreError::TargetExists(target));
        }
        let journal = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.journal)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoPartial(paths.journal));
            }
            Err(e) => return Err(StoreError::io("opening", &paths.journal, e)),
        };
        lock_journal(&journal, &paths.journal)?;
        let dump = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.dump)
            .map_err(|e| {
                let what = if e.kind() == io::ErrorKind::NotFound {
                    "opening (the journal exists but the dump does not, e.g. after an interrupted \
                 finalize or discard; discard the partial download)"
                } else {
                    "opening"
                };
                StoreError::io(what, &paths.dump, e)
            })?;
        let (store, adopted) = Store::open_expecting(dump, journal, &paths, Some(name))?;
        Ok((
            DownloadStore {
                dir: dir.to_path_buf(),
                paths,
                store,
            },
            adopted,
        ))
    }

    pub fn manifest(&self) -> &Manifest {
        self.store.manifest()
    }

    /// True when `segment` is committed (durable and journaled).
    pub fn is_committed(&self, segment: u64) -> bool {
        self.store.is_committed(segment)
    }

    /// Number of committed segments.
    pub fn committed_count(&self) -> u64 {
        self.store.committed_count()
    }

    /// The dump and journal paths.
    pub fn paths(&self) -> &StorePaths {
        &self.paths
    }

    /// pwrite of a verified segment at its final offset (`data.len()` must equal the
    /// segment's length).
    pub fn write_segment(&mut self, segment: u64, data: &[u8]) -> Result<(), StoreError> {
        self.store.write_segment(segment, data)
    }

    /// Durability point for a batch of written segments (see [`Store::commit`]).
    pub fn commit(&mut self, segments: &[u64]) -> Result<(), StoreError> {
        self.store.commit(segments)
    }

    /// All segments committed: fsync the dump, check its length, rename it to `DIR/NAME`
    /// (refusing with `TargetExists`, nothing changed, if that exists and `!overwrite`),
    /// fsync the directory, remove the journal, fsync the directory. Returns `DIR/NAME`.
    pub fn finalize(mut self, overwrite: bool) -> Result<PathBuf, StoreError> {
        self.store.finish()?;
        let target = self.dir.join(&self.manifest().name);
        let (dump, journal) = self.store.into_parts();
        drop(dump);
        drop(journal);
        rename(&self.paths.dump, &target, overwrite)?;
        sync_dir(&self.dir)?;
        remove_if_exists(&self.paths.journal)?;
        sync_dir(&self.dir)?;
        Ok(target)
    }

    /// Completes a finalize that a crash interrupted between the rename and the journal's
    /// removal: the journal exists, the dump does not, and `DIR/NAME` does. If every segment
    /// of `DIR/NAME` verifies against the journal's manifest, the stale journal is removed
    /// and `Some(DIR/NAME)` returned. `None` means this is not that situation (or the file
    /// does not verify, and is left alone).
    pub fn recover_finalized(dir: &Path, name: &str) -> Result<Option<PathBuf>, StoreError> {
        let name = checked_name(name.as_bytes(), dir)?;
        let paths = StorePaths::new(dir, name);
        let target = dir.join(name);
        if exists(&paths.dump)? || !exists(&paths.journal)? || !exists(&target)? {
            return Ok(None);
        }
        let journal_file = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.journal)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("opening", &paths.journal, e)),
        };
        lock_journal(&journal_file, &paths.journal)?;
        let (_journal, contents) = Journal::open_named(journal_file, &paths.journal)?;
        let manifest = contents.manifest;
        let file = File::open(&target).map_err(|e| StoreError::io("opening", &target, e))?;
        let len = file
            .len()
            .map_err(|e| StoreError::io("reading", &target, e))?;
        if len != manifest.size {
            return Ok(None);
        }
        let mut buf = vec![0u8; manifest.segment_size as usize];
        for segment in 0..manifest.segment_count() {
            let (offset, length) = manifest.segment_range(segment);
            let buf = &mut buf[..length as usize];
            read_exact_at(&file, buf, offset).map_err(|e| StoreError::io("reading", &target, e))?;
            if !manifest.verify_segment(segment, buf) {
                return Ok(None);
            }
        }
        remove_if_exists(&paths.journal)?;
        sync_dir(dir)?;
        Ok(Some(target))
    }

    /// Removes the dump and the journal (cancel without keeping the partial download).
    pub fn discard(self) -> Result<(), StoreError> {
        let DownloadStore { dir, paths, store } = self;
        drop(store);
        remove_partial(&dir, &paths)
    }

    /// Removes the partial files of download `name` in `dir` without opening them (e.g. when
    /// the journal is corrupt). Missing files are not an error.
    /// Refuses (`InUse`) while another download holds the partial files open.
    pub fn discard_partial(dir: &Path, name: &str) -> Result<(), StoreError> {
        let name = checked_name(name.as_bytes(), dir)?;
        let paths = StorePaths::new(dir, name);
        // Hold the journal's lock while removing, so a running download's files are never
        // pulled from under it.
        let _lock = match OpenOptions::new().read(true).open(&paths.journal) {
            Ok(journal) => {
                lock_journal(&journal, &paths.journal)?;
                Some(journal)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::io("opening", &paths.journal, e)),
        };
        remove_partial(dir, &paths)
    }
}

/// Journal first: a dump without a journal is never adopted.
fn remove_partial(dir: &Path, paths: &StorePaths) -> Result<(), StoreError> {
    remove_if_exists(&paths.journal)?;
    remove_if_exists(&paths.dump)?;
    sync_dir(dir)
}

/// Refuses names that are not a single plain path component.
fn checked_name<'a>(raw: &'a [u8], dir: &Path) -> Result<&'a str, StoreError> {
    validate_file_name(raw).map_err(|e| {
        StoreError::io(
            "choosing a file name in",
            dir,
            io::Error::new(io::ErrorKind::InvalidInput, e),
        )
    })
}

/// Whether anything (even a dangling symlink) is at `path`.
fn exists(path: &Path) -> Result<bool, StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("checking", path, e)),
    }
}

fn create_new(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                StoreError::PartialExists(path.to_path_buf())
            } else {
                StoreError::io("creating", path, e)
            }
        })
}

/// Takes an exclusive, non-blocking `flock` on the journal for as long as the file stays
/// open, so two downloads (two jobs, or two daemons) can never write the same partial files.
/// The kernel releases it when the holder exits, even by `kill -9`.
fn lock_journal(journal: &File, path: &Path) -> Result<(), StoreError> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a valid descriptor owned by `journal` for the duration of the call.
    let rc = unsafe { libc::flock(journal.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(StoreError::InUse(path.to_path_buf()))
    } else {
        Err(StoreError::io("locking", path, err))
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("removing", path, e)),
    }
}

/// fsync of a directory, making creations, renames and removals in it durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("syncing directory", dir, e))
}

/// Renames `from` to `to`. Without `overwrite` an existing `to` is refused atomically
/// (renameat2 RENAME_NOREPLACE where the file system supports it).
fn rename(from: &Path, to: &Path, overwrite: bool) -> Result<(), StoreError> {
    let io_err = |e| StoreError::io(&format!("renaming {} to", from.display()), to, e);
    if overwrite {
        return std::fs::rename(from, to).map_err(io_err);
    }
    match rename_noreplace(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(StoreError::TargetExists(to.to_path_buf()))
        }
        Err(e) if is_unsupported(&e) => {
            // Fallback for file systems without RENAME_NOREPLACE: check, then rename.
            if exists(to)? {
                return Err(StoreError::TargetExists(to.to_path_buf()));
            }
            std::fs::rename(from, to).map_err(io_err)
        }
        Err(e) => Err(io_err(e)),
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

#[cfg(target_os = "linux")]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call; AT_FDCWD
    // makes relative paths resolve like std::fs::rename does.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(_from: &Path, _to: &Path) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}
