//! The dump + journal pair of one download, and the one place the write order lives:
//! segment bytes are pwritten to the dump, a commit fdatasyncs the dump and only then
//! appends the segments to the journal and fsyncs it. So the journal never lists a segment
//! whose bytes are not durable. [`Store`] holds that logic over any [`BlockFile`] pair (so
//! crash tests run it on `CrashFile`s); [`DownloadStore`] puts it on real files in `DIR`
//! and adds the file-system steps (exclusive creation, adoption, the finalizing rename,
//! discard), fsyncing the directory after every change to its entries.

use std::io;
use std::path::{Path, PathBuf};

use arsnet_proto::{JobTag, Manifest};

use crate::backend::{read_exact_at, BlockFile};
use crate::error::StoreError;
use crate::journal::{Journal, JournalContents};
use crate::segset::SegmentSet;

// The names ArsNet gives its own files in DIR, and the rule for a download's name, are
// `arsnet_proto::name`'s: a request is checked against the same rule when it arrives.
pub use arsnet_proto::name::{is_reserved_name, DUMP_SUFFIX, JOURNAL_SUFFIX, UNTRUSTED_MARK};

/// What adopting a partial download found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    /// Segments listed in the journal whose bytes in the dump verify: already downloaded.
    pub segments: Vec<u64>,
    /// Segments listed in the journal whose bytes do not verify: fetch them again.
    pub rejected: Vec<u64>,
    /// Bytes of torn or corrupt journal tail that were ignored and truncated away.
    pub ignored_tail_bytes: u64,
    /// The tag of the job that made the partial files.
    pub tag: JobTag,
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
            dump: dir.join(dump_name(name)),
            journal: dir.join(journal_name(name)),
        }
    }
}

/// `NAME.arsnet-dump`.
pub fn dump_name(name: &str) -> String {
    format!("{name}{DUMP_SUFFIX}")
}

/// `NAME.arsnet-segments`.
pub fn journal_name(name: &str) -> String {
    format!("{name}{JOURNAL_SUFFIX}")
}

/// Suffixes ArsNet gives its own files in `DIR`; a server-chosen name ending in one is
/// refused, so a download can never be published over another's partial files.
pub const RESERVED_SUFFIXES: [&str; 3] = [DUMP_SUFFIX, JOURNAL_SUFFIX, UNTRUSTED_MARK];

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
        tag: &JobTag,
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
        let journal = Journal::create_named(journal, manifest, tag, &paths.journal)?;
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
        Self::open_claimed(dump, journal, paths, |_| Ok(()))
    }

    /// [`Store::open`], letting `claim` refuse the journal's contents (another job's tag,
    /// another file, other content) before the dump is touched.
    pub fn open_claimed(
        mut dump: D,
        journal: J,
        paths: &StorePaths,
        claim: impl FnOnce(&JournalContents) -> Result<(), StoreError>,
    ) -> Result<(Self, Adopted), StoreError> {
        let (journal, contents) = Journal::open_named(journal, &paths.journal)?;
        claim(&contents)?;
        let manifest = contents.manifest;
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
            // An unproven layout (a job of mirrors only) has no digests to check a segment
            // against: its whole file is checked against the user's pin before it is
            // published, which covers what a crash or a writer to the dump could change.
            if manifest.is_unproven() {
                verified.insert(segment);
                continue;
            }
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
            tag: contents.tag,
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

    /// Reads `segment` as it is in the dump into `buf` (resized to the segment's length), if
    /// it is there: written in this run or committed. `Ok(false)` when it is not.
    pub fn read_segment(&self, segment: u64, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        if segment >= self.manifest.segment_count()
            || !(self.committed.contains(segment) || self.written.contains(segment))
        {
            return Ok(false);
        }
        let (offset, len) = self.manifest.segment_range(segment);
        buf.resize(len as usize, 0);
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .dump
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(|e| StoreError::io("reading", &self.dump_path, e))?;
            if n == 0 {
                return Err(StoreError::bad_segment(
                    segment,
                    format!("the dump ends {done} bytes into it"),
                ));
            }
            done += n;
        }
        Ok(true)
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
        // Only a hint (the commit's fdatasync is the barrier), so a refusal changes nothing:
        // without it the commit merely waits longer.
        let _ = self.dump.start_writeback(offset, u64::from(len));
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
