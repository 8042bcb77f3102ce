//! One download's partial files in `DIR`, on real files: exclusive creation, adoption by the
//! job that made them, the publishing link, and removal. Every name is resolved through a
//! held [`Dir`] (no symlink is ever followed, only regular files of ours are used), the
//! partial files carry their job's tag (no other job adopts or removes them), and the file
//! that appears under `DIR/NAME` is the very inode that was verified.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use arsnet_proto::control::Pin;
use arsnet_proto::manifest::to_hex;
use arsnet_proto::{Digest, JobTag, Manifest};

use crate::dir::{Dir, Entry};
use crate::error::StoreError;
use crate::journal::Journal;
use crate::store::{
    dump_name, journal_name, Adopted, Store, StorePaths, JOURNAL_SUFFIX, UNTRUSTED_MARK,
};

/// One download's dump and journal in `DIR`, on real files.
#[derive(Debug)]
pub struct DownloadStore {
    dir: Dir,
    name: String,
    paths: StorePaths,
    store: Store<File, File>,
    /// The inodes this store created or adopted: only these are ever renamed or removed.
    dump_id: Entry,
    journal_id: Entry,
}

/// What a scan of `DIR` for this job's partial download found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Nothing,
    /// A journal carrying this job's tag, for the file of this name.
    Partial(String),
}

impl DownloadStore {
    /// `DIR/NAME.arsnet-dump`.
    pub fn dump_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(dump_name(name))
    }

    /// `DIR/NAME.arsnet-segments`.
    pub fn journal_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(journal_name(name))
    }

    /// Starts a fresh download of `manifest` into `dir`, owned by the job tagged `tag`.
    /// Errors: `TargetExists` if `DIR/NAME` exists and `!overwrite` (`Untrusted` if it is
    /// not a file `--overwrite` may replace); `PartialExists` if the dump or journal exists;
    /// `NoSpace` if the file cannot fit. Creates the dump exclusively, fsyncs the directory,
    /// then creates the journal and fsyncs again, so a journal on disk always has its dump.
    /// On failure the files this call created (and only those inodes) are removed.
    pub fn create(
        dir: Dir,
        manifest: &Manifest,
        tag: &JobTag,
        overwrite: bool,
    ) -> Result<Self, StoreError> {
        let name = checked_name(manifest.name.as_bytes(), dir.path())?.to_owned();
        manifest.validate().map_err(|e| {
            StoreError::io(
                "creating a download in",
                dir.path(),
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })?;
        check_target(&dir, &name, overwrite)?;
        for partial in [dump_name(&name), journal_name(&name)] {
            if dir.entry(&partial)?.is_some() {
                return Err(StoreError::PartialExists(dir.join(&partial)));
            }
        }
        let free = dir.free_space()?;
        if free < manifest.size {
            return Err(StoreError::NoSpace {
                dir: dir.path().to_path_buf(),
                name,
                needed: manifest.size,
                free,
            });
        }
        let paths = StorePaths::new(dir.path(), &name);
        // The dump becomes the published file: readable like any download. The journal is
        // the daemon's alone (0600), so no other user can even open it, let alone hold its
        // lock and freeze the download.
        let dump = dir.create_new(&dump_name(&name), 0o644)?;
        let dump_id = Dir::entry_of(&dump, &paths.dump)?;
        let mut journal_id = None;
        let result = dir
            .sync()
            .and_then(|()| dir.create_new(&journal_name(&name), 0o600))
            .and_then(|journal| {
                journal_id = Some(Dir::entry_of(&journal, &paths.journal)?);
                lock_journal(&journal, &paths.journal)?;
                Store::create(dump, journal, manifest, tag, &paths)
            })
            // The journal's directory entry must be durable before anything is committed.
            .and_then(|store| dir.sync().map(|()| store));
        match (result, journal_id) {
            (Ok(store), Some(journal_id)) => Ok(DownloadStore {
                dir,
                name,
                paths,
                store,
                dump_id,
                journal_id,
            }),
            (result, journal_id) => {
                if let Some(id) = journal_id {
                    let _ = dir.remove_if_same(&journal_name(&name), &id);
                }
                let _ = dir.remove_if_same(&dump_name(&name), &dump_id);
                let _ = dir.sync();
                Err(result.err().unwrap_or_else(|| {
                    StoreError::io("creating", &paths.journal, io::Error::other("lost"))
                }))
            }
        }
    }

    /// Continues the partial download `name` in `dir` whose journal carries a tag
    /// `may_adopt` accepts (the job's own, or one no other job holds): the journal's manifest
    /// is authoritative, and every journaled segment is re-verified. `Adopted::tag` says
    /// whose files they were.
    /// `expected_root` (the job's accepted or pinned content) must match the journal's.
    /// Errors: `NoPartial` when the journal does not exist; `JournalCorrupt` when its header
    /// cannot be trusted; `Foreign` when it belongs to another job or content; `Untrusted`
    /// for a symlink or a file not ours; `TargetExists` if `DIR/NAME` exists and
    /// `!overwrite`.
    pub fn adopt(
        dir: Dir,
        name: &str,
        may_adopt: &dyn Fn(&JobTag) -> bool,
        expected_root: Option<&Digest>,
        overwrite: bool,
    ) -> Result<(Self, Adopted), StoreError> {
        let name = checked_name(name.as_bytes(), dir.path())?.to_owned();
        let paths = StorePaths::new(dir.path(), &name);
        check_target(&dir, &name, overwrite)?;
        let Some(journal) = dir.open_file(&journal_name(&name))? else {
            return Err(StoreError::NoPartial(paths.journal));
        };
        lock_journal(&journal, &paths.journal)?;
        let journal_id = Dir::entry_of(&journal, &paths.journal)?;
        let dump = dir.open_file(&dump_name(&name))?.ok_or_else(|| {
            StoreError::io(
                "opening (the journal exists but the dump does not)",
                &paths.dump,
                io::Error::from(io::ErrorKind::NotFound),
            )
        })?;
        let dump_id = Dir::entry_of(&dump, &paths.dump)?;
        let (store, adopted) = Store::open_claimed(dump, journal, &paths, |contents| {
            let foreign = |reason: String| StoreError::Foreign {
                path: paths.journal.clone(),
                reason,
            };
            if !may_adopt(&contents.tag) {
                return Err(foreign("it was made by another job".into()));
            }
            if contents.manifest.name != name {
                return Err(foreign(format!(
                    "it is for {:?}, not {name:?}",
                    contents.manifest.name
                )));
            }
            match expected_root {
                Some(root) if *root != contents.manifest.root => Err(foreign(format!(
                    "it holds content with BLAKE3 {}, this job's content is {}",
                    to_hex(&contents.manifest.root),
                    to_hex(root)
                ))),
                _ => Ok(()),
            }
        })?;
        Ok((
            DownloadStore {
                dir,
                name,
                paths,
                store,
                dump_id,
                journal_id,
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

    /// Reads a segment back from the dump (see [`Store::read_segment`]).
    pub fn read_segment(&self, segment: u64, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        self.store.read_segment(segment, buf)
    }

    /// Durability point for a batch of written segments (see [`Store::commit`]).
    pub fn commit(&mut self, segments: &[u64]) -> Result<(), StoreError> {
        self.store.commit(segments)
    }

    /// Reads the whole dump once more through its descriptor and hands every byte to
    /// `check` (e.g. a SHA-256 pin) before anything is published.
    pub fn scan_dump(&self, mut check: impl FnMut(&[u8])) -> Result<(), StoreError> {
        let mut file = self
            .store
            .dump()
            .try_clone()
            .map_err(|e| StoreError::io("reading", &self.paths.dump, e))?;
        use std::io::Seek;
        file.rewind()
            .map_err(|e| StoreError::io("reading", &self.paths.dump, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| StoreError::io("reading", &self.paths.dump, e))?;
            if n == 0 {
                return Ok(());
            }
            check(&buf[..n]);
        }
    }

    /// All segments committed: fsync the dump and check its length, then give the dump's
    /// inode the name `DIR/NAME` through its open descriptor (so the verified file is the
    /// one published, whatever is at the dump's path now), fsync the directory, remove the
    /// dump's old name and the journal (each only if it still is our inode), fsync again.
    /// The journal stays open, and so locked, until it is gone. Without `overwrite` an
    /// existing `DIR/NAME` is refused (`TargetExists`); with it, only a regular file of ours
    /// is replaced (`Untrusted` otherwise). Returns `DIR/NAME`.
    pub fn finalize(
        mut self,
        overwrite: bool,
        give_to: Option<(u32, u32)>,
    ) -> Result<PathBuf, StoreError> {
        self.store.finish()?;
        let DownloadStore {
            dir,
            name,
            paths: _,
            store,
            dump_id,
            journal_id,
        } = self;
        let target = dir.join(&name);
        let (dump, journal) = store.into_parts();
        if overwrite {
            if let Some(existing) = dir.entry(&name)? {
                check_replaceable(&dir, &existing, &target)?;
                dir.remove_if_same(&name, &existing)?;
            }
        }
        publish(&dir, &dump, &dump_id, &name, &target)?;
        if let Some((uid, gid)) = give_to {
            // Published first, then given away: a failure here leaves a complete file that
            // is merely still ours (and recovery gives it away), never a verified dump that
            // is no longer ours to resume.
            Dir::chown_file(&dump, &target, uid, gid)?;
        }
        dir.sync()?;
        match dir.entry(&name)? {
            Some(found) if found.same_file(&dump_id) => {}
            _ => {
                return Err(StoreError::Untrusted {
                    path: target,
                    reason: "it was replaced right after being published; the verified file \
                             is not what is there now"
                        .into(),
                })
            }
        }
        dir.remove_if_same(&dump_name(&name), &dump_id)?;
        dir.remove_if_same(&journal_name(&name), &journal_id)?;
        dir.sync()?;
        drop(journal);
        drop(dump);
        Ok(target)
    }

    /// For a job that was finishing when the daemon stopped: `Some(DIR/NAME)` when
    /// `DIR/NAME` is a regular file of ours whose BLAKE3 hash is `root` (the job's accepted
    /// content), after removing this job's leftover journal (and a dump that is the same
    /// inode, or listed by that journal). `None` when `DIR/NAME` is absent or other content.
    pub fn verify_published(
        dir: &Dir,
        name: &str,
        expected: &Pin,
        tag: &JobTag,
        give_to: Option<(u32, u32)>,
    ) -> Result<Option<PathBuf>, StoreError> {
        let name = checked_name(name.as_bytes(), dir.path())?.to_owned();
        let target = dir.join(&name);
        let Some(entry) = dir.entry(&name)? else {
            return Ok(None);
        };
        // A crash right after the link leaves the inode under both names (two links), and
        // one before the ownership change leaves it the daemon's: both are still ours.
        let linked_twice = dir
            .entry(&dump_name(&name))?
            .is_some_and(|dump| dump.same_file(&entry));
        let owners = [Some(dir.owner()), give_to.map(|(uid, _)| uid)];
        let uid_ok = owners.contains(&Some(entry.uid));
        let links_ok = entry.nlink == 1 || (entry.nlink == 2 && linked_twice);
        if entry.kind != crate::dir::EntryKind::File || !uid_ok || !links_ok {
            return Ok(None);
        }
        let Some(mut file) = dir.open_published(&name, entry.uid, entry.nlink)? else {
            return Ok(None);
        };
        if !hashes_to(&mut file, expected).map_err(|e| StoreError::io("reading", &target, e))? {
            return Ok(None);
        }
        let published = Dir::entry_of(&file, &target)?;
        if let Some((uid, gid)) = give_to {
            if published.uid != uid {
                Dir::chown_file(&file, &target, uid, gid)?;
            }
        }
        // Leftovers of the interrupted finalize: only this job's, and only by inode.
        if let Some(journal) = dir.open_file(&journal_name(&name)).ok().flatten() {
            let journal_path = dir.join(&journal_name(&name));
            if lock_journal(&journal, &journal_path).is_ok() {
                let ours = Journal::open_named(
                    journal
                        .try_clone()
                        .map_err(|e| StoreError::io("opening", &journal_path, e))?,
                    &journal_path,
                )
                .is_ok_and(|(_, c)| c.tag == *tag);
                if ours {
                    let journal_id = Dir::entry_of(&journal, &journal_path)?;
                    if let Some(dump) = dir.entry(&dump_name(&name))? {
                        if dump.same_file(&published) || dir.check_ours(&dump, &target).is_ok() {
                            dir.remove_if_same(&dump_name(&name), &dump)?;
                        }
                    }
                    dir.remove_if_same(&journal_name(&name), &journal_id)?;
                }
            }
        } else if let Some(dump) = dir.entry(&dump_name(&name))? {
            if dump.same_file(&published) {
                dir.remove_if_same(&dump_name(&name), &dump)?;
            }
        }
        dir.sync()?;
        Ok(Some(target))
    }

    /// Removes the dump and the journal (cancel without keeping the partial download).
    pub fn discard(self) -> Result<(), StoreError> {
        let DownloadStore {
            dir,
            name,
            store,
            dump_id,
            journal_id,
            ..
        } = self;
        // Journal first: a dump without a journal is never adopted. Removed while its lock
        // is still held (the store owns the open journal).
        dir.remove_if_same(&journal_name(&name), &journal_id)?;
        dir.remove_if_same(&dump_name(&name), &dump_id)?;
        dir.sync()?;
        drop(store);
        Ok(())
    }

    /// Removes the partial files of download `name` in `dir` that the job tagged `tag`
    /// made, without adopting them (e.g. cancel of a job that is not running). Files of
    /// another job, or that cannot be shown to be this job's (a corrupt journal), are left
    /// alone and reported as `Foreign`. Missing files are not an error. Refuses (`InUse`)
    /// while another download holds the journal.
    pub fn discard_partial(dir: &Dir, name: &str, tag: &JobTag) -> Result<(), StoreError> {
        let name = checked_name(name.as_bytes(), dir.path())?.to_owned();
        let journal_path = dir.join(&journal_name(&name));
        let Some(journal) = dir.open_file(&journal_name(&name))? else {
            return Ok(());
        };
        lock_journal(&journal, &journal_path)?;
        let journal_id = Dir::entry_of(&journal, &journal_path)?;
        let read = journal
            .try_clone()
            .map_err(|e| StoreError::io("opening", &journal_path, e))?;
        let ours = match Journal::open_named(read, &journal_path) {
            Ok((_, contents)) => contents.tag == *tag,
            Err(_) => false,
        };
        if !ours {
            return Err(StoreError::Foreign {
                path: journal_path,
                reason: "it is not this job's (another job's tag, or unreadable); left alone"
                    .into(),
            });
        }
        dir.remove_if_same(&journal_name(&name), &journal_id)?;
        if let Some(dump) = dir.entry(&dump_name(&name))? {
            if dir.check_ours(&dump, &dir.join(&dump_name(&name))).is_ok() {
                dir.remove_if_same(&dump_name(&name), &dump)?;
            }
        }
        dir.sync()
    }

    /// For a partial download whose journal cannot be trusted (a torn or empty header after
    /// a crash while it was created, a format this build does not read) or that lost its
    /// journal: keeps the journal aside as `NAME.arsnet-segments.arsnet-untrusted-SECS`
    /// and removes the dump (nothing in it was verified, so nothing verified is lost), so
    /// the download can start over. Only regular files of ours are touched. Returns where
    /// the journal was kept, if there was one.
    pub fn set_aside(dir: &Dir, name: &str) -> Result<Option<PathBuf>, StoreError> {
        let name = checked_name(name.as_bytes(), dir.path())?.to_owned();
        let mut kept = None;
        if let Some(journal) = dir.open_file(&journal_name(&name))? {
            let journal_path = dir.join(&journal_name(&name));
            lock_journal(&journal, &journal_path)?;
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = format!("{}{UNTRUSTED_MARK}-{stamp}", journal_name(&name));
            dir.rename(&journal_name(&name), &aside, true)
                .map_err(|e| StoreError::io("keeping aside", &journal_path, e))?;
            kept = Some(dir.join(&aside));
        }
        if let Some(dump) = dir.entry(&dump_name(&name))? {
            let dump_path = dir.join(&dump_name(&name));
            dir.check_ours(&dump, &dump_path)?;
            dir.remove_if_same(&dump_name(&name), &dump)?;
        }
        dir.sync()?;
        Ok(kept)
    }

    /// The name of the partial download in `dir` whose journal carries a tag `may_adopt`
    /// accepts: the one `fetch -r` continues when the job does not know its file name yet.
    /// Journals of other jobs, unreadable ones and anything that is not a regular file of
    /// ours are skipped; of several candidates the last by name is taken.
    pub fn find_partial(
        held: &Dir,
        may_adopt: &dyn Fn(&JobTag) -> bool,
    ) -> Result<Found, StoreError> {
        let mut names: Vec<String> = Vec::new();
        for file_name in held.names()? {
            let Some(name) = file_name.strip_suffix(JOURNAL_SUFFIX) else {
                continue;
            };
            if checked_name(name.as_bytes(), held.path()).is_err() {
                continue;
            }
            let Ok(Some(journal)) = held.open_file(&file_name) else {
                continue;
            };
            let path = held.join(&file_name);
            if let Ok((_, contents)) = Journal::open_named(journal, &path) {
                if may_adopt(&contents.tag) {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names.pop().map_or(Found::Nothing, Found::Partial))
    }
}

/// Publishes the open `dump` as `name`: a link of its inode (atomic, never replacing), or
/// where /proc is missing a rename of its path that is checked and undone if the inode at
/// that path was not ours.
fn publish(
    dir: &Dir,
    dump: &File,
    dump_id: &Entry,
    name: &str,
    target: &Path,
) -> Result<(), StoreError> {
    match dir.link_open_file(dump, name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(StoreError::TargetExists(target.to_path_buf()))
        }
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            let from = dump_name(name);
            dir.rename(&from, name, true).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    StoreError::TargetExists(target.to_path_buf())
                } else {
                    StoreError::io("publishing", target, e)
                }
            })?;
            match dir.entry(name)? {
                Some(found) if found.same_file(dump_id) => Ok(()),
                _ => {
                    let _ = dir.rename(name, &from, true);
                    Err(StoreError::Untrusted {
                        path: dir.join(&from),
                        reason: "the file at the dump's path was swapped for another before \
                                 publishing; the rename was undone"
                            .into(),
                    })
                }
            }
        }
        // The verified inode has no name left (someone deleted the dump's entry): it cannot
        // be linked, and nothing else may be published in its place.
        Err(e)
            if e.kind() == io::ErrorKind::NotFound && Dir::entry_of(dump, target)?.nlink == 0 =>
        {
            Err(StoreError::Untrusted {
                path: dir.join(&dump_name(name)),
                reason: "the verified dump was removed from the directory before it could be \
                         published; resume to fetch it again"
                    .into(),
            })
        }
        Err(e) => Err(StoreError::io("publishing", target, e)),
    }
}

/// `DIR/NAME` may be absent, or (with `overwrite`) a file `--overwrite` may replace.
fn check_target(dir: &Dir, name: &str, overwrite: bool) -> Result<(), StoreError> {
    let target = dir.join(name);
    match dir.entry(name)? {
        None => Ok(()),
        Some(_) if !overwrite => Err(StoreError::TargetExists(target)),
        Some(entry) => check_replaceable(dir, &entry, &target),
    }
}

/// `--overwrite` replaces only a regular file with one link of the caller's (one it could
/// replace itself, sticky directory or not): never a directory, a symlink, a hard link or
/// another user's file.
fn check_replaceable(dir: &Dir, entry: &Entry, target: &Path) -> Result<(), StoreError> {
    if dir.may_replace(entry) {
        return Ok(());
    }
    let what = match dir.check_ours(entry, target) {
        Err(StoreError::Untrusted { reason, .. }) => reason,
        _ => format!("it belongs to uid {}", entry.uid),
    };
    Err(StoreError::Untrusted {
        path: target.to_path_buf(),
        reason: format!(
            "--overwrite only replaces a regular file of the requesting user, and {what}"
        ),
    })
}

/// Refuses names that are not a single plain path component, and names ending in a suffix
/// ArsNet reserves for its own files.
fn checked_name<'a>(raw: &'a [u8], dir: &Path) -> Result<&'a str, StoreError> {
    let invalid = |reason: String| {
        StoreError::io(
            "choosing a file name in",
            dir,
            io::Error::new(io::ErrorKind::InvalidInput, reason),
        )
    };
    arsnet_proto::name::validate_download_name(raw).map_err(|e| invalid(e.to_string()))
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

/// Whether `file`, read to its end, hashes to `expected` (its BLAKE3, or the SHA-256 a job
/// of mirrors alone was pinned to).
fn hashes_to(file: &mut std::fs::File, expected: &Pin) -> std::io::Result<bool> {
    use sha2::Digest as _;
    let mut blake = blake3::Hasher::new();
    let mut sha = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        match expected {
            Pin::Blake3(_) => {
                blake.update(&buf[..n]);
            }
            Pin::Sha256(_) => sha.update(&buf[..n]),
        }
    }
    Ok(match expected {
        Pin::Blake3(root) => blake.finalize().as_bytes() == root,
        Pin::Sha256(digest) => <[u8; 32]>::from(sha.finalize()) == *digest,
    })
}
