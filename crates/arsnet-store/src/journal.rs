//! The segment journal `DIR/NAME.arsnet-segments`: a checksummed header holding the
//! manifest, then an append-only list of fixed-size records, one per segment whose bytes are
//! durable in the dump. This module owns the byte format (encode and decode) and the
//! [`Journal`] handle that creates, opens (repairing a torn tail) and appends to it.
//!
//! # Format (version 2)
//!
//! All integers are big-endian. `n` is the name length, `count` the segment count.
//!
//! Header:
//!
//! | offset            | size       | field                                                  |
//! |-------------------|------------|--------------------------------------------------------|
//! | 0                 | 8          | magic, ASCII `ARSNJRN1`                                |
//! | 8                 | 2          | version, `2`                                           |
//! | 10                | 2          | `n`, name length in bytes (1..=255)                    |
//! | 12                | n          | file name, UTF-8, a plain name (`validate_file_name`)  |
//! | 12+n              | 8          | file size in bytes                                     |
//! | 20+n              | 4          | segment size in bytes                                  |
//! | 24+n              | 8          | `count` = ceil(size / segment size), within limits     |
//! | 32+n              | 32         | root digest: the file's BLAKE3 hash (`b3sum`)          |
//! | 64+n              | 16         | owner tag: the job that made these partial files      |
//! | 80+n              | 32 × count | BLAKE3 digest of each segment, in order                |
//! | 80+n+32×count     | 4          | header CRC: CRC-32C of header bytes `0..80+n+32×count` |
//!
//! The header is `H = 84 + n + 32×count` bytes long. The owner tag is a random value the
//! daemon gives each job: partial files are adopted or removed only by the job whose tag they
//! carry (or, for `fetch -r`, when no known job owns the tag). It is followed by records, 16 bytes
//! each, the `k`-th at offset `H + 16×k`:
//!
//! | offset | size | field                                                             |
//! |--------|------|-------------------------------------------------------------------|
//! | 0      | 4    | record magic, ASCII `SEG1`                                        |
//! | 4      | 8    | segment index (< `count`)                                         |
//! | 12     | 4    | CRC-32C of (the 4 big-endian bytes of the header CRC ‖ record bytes 0..12) |
//!
//! Folding the header CRC into each record ties records to their header: a record copied
//! from another journal does not verify.
//!
//! # Reading
//!
//! The header must be complete, carry the right magic and version, a name length of at most
//! 255, a layout accepted by `check_layout` (checked *before* the digest table is allocated,
//! and the table must fit in the file), a matching CRC, a safe name, and a root that matches
//! the digests (`Manifest::validate`); otherwise the journal is
//! [`StoreError::JournalCorrupt`]. Records are then read in order up to the first one that is
//! short, has a bad magic, a bad CRC or an out-of-range index; that record and everything
//! after it is the ignored tail. Opening truncates the file to the good prefix and syncs, so
//! later appends follow the last good record. A segment may be listed more than once;
//! readers deduplicate.
//!
//! # Writing
//!
//! The journal is append-only: creation writes the header and fsyncs; each append writes all
//! its records in one positioned write at the end of the good prefix and then fsyncs. The
//! store appends a segment only after the dump holding its bytes has been fdatasync'ed.

use std::io;
use std::path::{Path, PathBuf};

use arsnet_proto::limits::MAX_NAME_LEN;
use arsnet_proto::manifest::check_layout;
use arsnet_proto::{validate_file_name, Digest, JobTag, Manifest, ManifestError};

use crate::backend::{read_exact_at, BlockFile};
use crate::error::StoreError;
use crate::segset::SegmentSet;

/// Header magic.
pub const JOURNAL_MAGIC: [u8; 8] = *b"ARSNJRN1";
/// The journal format version this build reads and writes. Version 2 added the owner tag and
/// uses the real-BLAKE3 manifest (wire v2); a version 1 journal is not trusted.
pub const JOURNAL_VERSION: u16 = 2;
/// Record magic.
pub const RECORD_MAGIC: [u8; 4] = *b"SEG1";
/// Size of one record in bytes.
pub const RECORD_LEN: usize = 16;

/// Bytes before the name: magic, version, name length.
const PREFIX_LEN: u64 = 12;
/// Bytes between the name and the digest table: size, segment size, count, root, owner tag.
const FIXED_AFTER_NAME: u64 = 8 + 4 + 8 + 32 + 16;
/// Records read per positioned read while parsing.
const RECORDS_PER_READ: usize = 4096;
/// Label used in errors when a journal is opened without a path.
const UNNAMED: &str = "<journal>";

/// Length in bytes of the header for a name of `name_len` bytes and `count` segments
/// (saturating, so absurd inputs give a length no file has).
pub fn header_len(name_len: usize, count: u64) -> u64 {
    (PREFIX_LEN + FIXED_AFTER_NAME + 4)
        .saturating_add(name_len as u64)
        .saturating_add(count.saturating_mul(32))
}

/// Encodes the header for `manifest`, owned by the job tagged `tag`, after validating it.
pub fn encode_header(manifest: &Manifest, tag: &JobTag) -> Result<Vec<u8>, ManifestError> {
    manifest.validate()?;
    let name = manifest.name.as_bytes();
    // validate() bounds the name to MAX_NAME_LEN bytes and the count to MAX_SEGMENTS.
    let name_len = u16::try_from(name.len()).map_err(|_| arsnet_proto::NameError::TooLong)?;
    let len = usize::try_from(header_len(name.len(), manifest.segment_count()))
        .map_err(|_| ManifestError::TooManySegments(manifest.segment_count()))?;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&JOURNAL_MAGIC);
    out.extend_from_slice(&JOURNAL_VERSION.to_be_bytes());
    out.extend_from_slice(&name_len.to_be_bytes());
    out.extend_from_slice(name);
    out.extend_from_slice(&manifest.size.to_be_bytes());
    out.extend_from_slice(&manifest.segment_size.to_be_bytes());
    out.extend_from_slice(&manifest.segment_count().to_be_bytes());
    out.extend_from_slice(&manifest.root);
    out.extend_from_slice(tag);
    for digest in &manifest.digests {
        out.extend_from_slice(digest);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// The CRC stored at the end of an encoded header.
fn stored_header_crc(header: &[u8]) -> u32 {
    let tail = header.len().saturating_sub(4);
    let mut crc = [0u8; 4];
    if let Some(bytes) = header.get(tail..) {
        crc.copy_from_slice(bytes);
    }
    u32::from_be_bytes(crc)
}

fn record_crc(header_crc: u32, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&header_crc.to_be_bytes()), body)
}

/// Encodes the record saying segment `index` is durable, for a journal whose header CRC is
/// `header_crc`.
pub fn encode_record(header_crc: u32, index: u64) -> [u8; RECORD_LEN] {
    let mut record = [0u8; RECORD_LEN];
    record[..4].copy_from_slice(&RECORD_MAGIC);
    record[4..12].copy_from_slice(&index.to_be_bytes());
    let crc = record_crc(header_crc, &record[..12]);
    record[12..].copy_from_slice(&crc.to_be_bytes());
    record
}

/// Decodes one record; `None` when its magic, CRC or index (`< count`) is wrong.
pub fn decode_record(header_crc: u32, record: &[u8; RECORD_LEN], count: u64) -> Option<u64> {
    let (body, crc) = record.split_at(12);
    if body[..4] != RECORD_MAGIC {
        return None;
    }
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(crc);
    if u32::from_be_bytes(crc_bytes) != record_crc(header_crc, body) {
        return None;
    }
    let mut index = [0u8; 8];
    index.copy_from_slice(&body[4..12]);
    let index = u64::from_be_bytes(index);
    (index < count).then_some(index)
}

/// What an opened journal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalContents {
    /// The manifest from the header (validated).
    pub manifest: Manifest,
    /// The job that made these partial files.
    pub tag: JobTag,
    /// Segments listed by the good records, sorted, without duplicates.
    pub segments: Vec<u64>,
    /// Bytes after the last good record that were ignored (and truncated away).
    pub ignored_tail_bytes: u64,
}

/// An open journal, positioned for appends after its last good record.
#[derive(Debug)]
pub struct Journal<F: BlockFile> {
    file: F,
    path: PathBuf,
    header_crc: u32,
    segment_count: u64,
    /// End of the good prefix: where the next append goes.
    end: u64,
    /// Set when an append failed: the file's tail is unknown, so refuse further appends.
    failed: bool,
}

impl<F: BlockFile> Journal<F> {
    /// Starts a journal for `manifest` owned by `tag` in `file`: truncates it, writes the
    /// header, fsyncs.
    pub fn create(file: F, manifest: &Manifest, tag: &JobTag) -> Result<Self, StoreError> {
        Self::create_named(file, manifest, tag, Path::new(UNNAMED))
    }

    /// [`Journal::create`], naming `path` in errors.
    pub fn create_named(
        mut file: F,
        manifest: &Manifest,
        tag: &JobTag,
        path: &Path,
    ) -> Result<Self, StoreError> {
        let io_err = |what: &str, e| StoreError::io(what, path, e);
        let header = encode_header(manifest, tag).map_err(|e| {
            io_err(
                "creating journal",
                io::Error::new(io::ErrorKind::InvalidInput, e),
            )
        })?;
        file.set_len(0)
            .map_err(|e| io_err("truncating journal", e))?;
        file.write_all_at(&header, 0)
            .map_err(|e| io_err("writing journal", e))?;
        file.sync_all().map_err(|e| io_err("syncing journal", e))?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            header_crc: stored_header_crc(&header),
            segment_count: manifest.segment_count(),
            end: header.len() as u64,
            failed: false,
        })
    }

    /// Reads a journal: validates the header, collects the good records, truncates the
    /// ignored tail (and syncs) so that appends continue after the last good record.
    pub fn open(file: F) -> Result<(Self, JournalContents), StoreError> {
        Self::open_named(file, Path::new(UNNAMED))
    }

    /// [`Journal::open`], naming `path` in errors.
    pub fn open_named(mut file: F, path: &Path) -> Result<(Self, JournalContents), StoreError> {
        let file_len = file
            .len()
            .map_err(|e| StoreError::io("reading journal", path, e))?;
        let (manifest, tag, header_crc, header_end) = read_header(&file, file_len, path)?;
        let count = manifest.segment_count();
        let (segments, end) = read_records(&file, file_len, header_end, header_crc, count, path)?;
        let ignored_tail_bytes = file_len - end;
        if ignored_tail_bytes > 0 {
            tracing::warn!(
                journal = %path.display(),
                ignored_tail_bytes,
                "ignoring a torn or corrupt journal tail"
            );
            file.set_len(end)
                .map_err(|e| StoreError::io("truncating journal", path, e))?;
            file.sync_all()
                .map_err(|e| StoreError::io("syncing journal", path, e))?;
        }
        let journal = Journal {
            file,
            path: path.to_path_buf(),
            header_crc,
            segment_count: count,
            end,
            failed: false,
        };
        Ok((
            journal,
            JournalContents {
                manifest,
                tag,
                segments,
                ignored_tail_bytes,
            },
        ))
    }

    /// Records `segments` as durable: one write of all records, then fsync. An empty slice
    /// does nothing. After a failed append the journal refuses further appends (its tail is
    /// unknown); reopen it.
    pub fn append(&mut self, segments: &[u64]) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::io(
                "appending to journal",
                &self.path,
                io::Error::other("an earlier append failed; reopen the journal"),
            ));
        }
        if let Some(&bad) = segments.iter().find(|&&s| s >= self.segment_count) {
            return Err(StoreError::bad_segment(
                bad,
                format!(
                    "out of range (the file has {} segments)",
                    self.segment_count
                ),
            ));
        }
        if segments.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(segments.len().saturating_mul(RECORD_LEN));
        for &segment in segments {
            buf.extend_from_slice(&encode_record(self.header_crc, segment));
        }
        let result = match self.file.write_all_at(&buf, self.end) {
            Err(e) => Err(StoreError::io("appending to journal", &self.path, e)),
            Ok(()) => self
                .file
                .sync_all()
                .map_err(|e| StoreError::io("syncing journal", &self.path, e)),
        };
        match result {
            Ok(()) => {
                self.end += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                // Best effort: drop what may have landed; a reopen ignores it anyway if torn.
                let _ = self.file.set_len(self.end);
                Err(e)
            }
        }
    }

    /// The path used in error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset where the next record goes (the length of the good prefix).
    pub fn end_offset(&self) -> u64 {
        self.end
    }

    /// The backend, e.g. to inspect it in tests.
    pub fn get_ref(&self) -> &F {
        &self.file
    }

    /// Gives the backend back.
    pub fn into_inner(self) -> F {
        self.file
    }
}

/// Reads exactly `len` bytes at `offset` (callers checked `offset + len <= file length`).
fn read_vec<F: BlockFile>(
    file: &F,
    offset: u64,
    len: usize,
    path: &Path,
) -> Result<Vec<u8>, StoreError> {
    let mut buf = vec![0u8; len];
    read_exact_at(file, &mut buf, offset)
        .map_err(|e| StoreError::io("reading journal", path, e))?;
    Ok(buf)
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes.get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(b)
}

fn be_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(bytes.get(..4).unwrap_or(&[0; 4]));
    u32::from_be_bytes(b)
}

fn be_u16(bytes: &[u8]) -> u16 {
    let mut b = [0u8; 2];
    b.copy_from_slice(bytes.get(..2).unwrap_or(&[0; 2]));
    u16::from_be_bytes(b)
}

/// Reads the fixed prefix (magic, version, name length) and checks it. Returns the prefix
/// bytes and the name length.
fn read_prefix<F: BlockFile>(
    file: &F,
    file_len: u64,
    path: &Path,
) -> Result<(Vec<u8>, usize), StoreError> {
    let corrupt = |reason: String| StoreError::corrupt(path, reason);
    if file_len < PREFIX_LEN {
        return Err(corrupt(format!(
            "file is {file_len} bytes, too short for a header"
        )));
    }
    let prefix = read_vec(file, 0, PREFIX_LEN as usize, path)?;
    if prefix.get(..8) != Some(&JOURNAL_MAGIC[..]) {
        return Err(corrupt("bad magic (not an ArsNet segment journal)".into()));
    }
    let version = be_u16(&prefix[8..]);
    if version != JOURNAL_VERSION {
        return Err(corrupt(format!(
            "unsupported journal version {version} (this build reads {JOURNAL_VERSION})"
        )));
    }
    let name_len = usize::from(be_u16(&prefix[10..]));
    if name_len > MAX_NAME_LEN {
        return Err(corrupt(format!(
            "name length {name_len} exceeds {MAX_NAME_LEN}"
        )));
    }
    Ok((prefix, name_len))
}

/// Reads `count` digests from `offset` on, folding them into the running header `crc`.
/// The caller has checked that the table fits in the file. Returns the digests, the CRC and
/// the offset after the table.
fn read_digests<F: BlockFile>(
    file: &F,
    mut offset: u64,
    count: usize,
    mut crc: u32,
    path: &Path,
) -> Result<(Vec<Digest>, u32, u64), StoreError> {
    let mut digests: Vec<Digest> = vec![[0; 32]; count];
    let mut chunk = vec![0u8; RECORDS_PER_READ * 32];
    for group in digests.chunks_mut(RECORDS_PER_READ) {
        let bytes = &mut chunk[..group.len() * 32];
        read_exact_at(file, bytes, offset)
            .map_err(|e| StoreError::io("reading journal", path, e))?;
        crc = crc32c::crc32c_append(crc, bytes);
        for (digest, raw) in group.iter_mut().zip(bytes.chunks_exact(32)) {
            digest.copy_from_slice(raw);
        }
        offset += bytes.len() as u64;
    }
    Ok((digests, crc, offset))
}

/// Parses and validates the header. Returns the manifest, the owner tag, the header CRC, and
/// the offset of the first record.
fn read_header<F: BlockFile>(
    file: &F,
    file_len: u64,
    path: &Path,
) -> Result<(Manifest, JobTag, u32, u64), StoreError> {
    let corrupt = |reason: String| StoreError::corrupt(path, reason);
    let (prefix, name_len) = read_prefix(file, file_len, path)?;
    // Name and fixed fields: at most 255 + 52 bytes, and they must fit in the file.
    let fixed_len = name_len as u64 + FIXED_AFTER_NAME;
    if file_len < PREFIX_LEN + fixed_len {
        return Err(corrupt(format!("truncated header ({file_len} bytes)")));
    }
    let fixed = read_vec(file, PREFIX_LEN, fixed_len as usize, path)?;
    let (name, rest) = fixed.split_at(name_len);
    let size = be_u64(rest);
    let segment_size = be_u32(&rest[8..]);
    let count = be_u64(&rest[12..]);
    let mut root: Digest = [0; 32];
    root.copy_from_slice(&rest[20..52]);
    let mut tag: JobTag = [0; 16];
    tag.copy_from_slice(&rest[52..68]);
    check_layout(size, segment_size, count).map_err(|e| corrupt(format!("bad layout: {e}")))?;

    // The digest table is allocated only once it is known to be within limits and to fit in
    // the file.
    let needed = header_len(name_len, count);
    if needed > file_len {
        return Err(corrupt(format!(
            "truncated header: {count} segments need {needed} bytes, the file has {file_len}"
        )));
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&prefix), &fixed);
    let count = usize::try_from(count).map_err(|_| corrupt("too many segments".into()))?;
    let (digests, crc, offset) = read_digests(file, PREFIX_LEN + fixed_len, count, crc, path)?;
    let stored = be_u32(&read_vec(file, offset, 4, path)?);
    if stored != crc {
        return Err(corrupt(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {crc:#010x})"
        )));
    }
    let name = validate_file_name(name).map_err(|e| corrupt(format!("unsafe file name: {e}")))?;
    let manifest = Manifest {
        name: name.to_owned(),
        size,
        segment_size,
        digests,
        root,
    };
    manifest
        .validate()
        .map_err(|e| corrupt(format!("invalid manifest: {e}")))?;
    Ok((manifest, tag, crc, offset + 4))
}

/// Reads records from `start` up to the first bad one. Returns the listed segments (sorted,
/// deduplicated) and the end of the good prefix.
fn read_records<F: BlockFile>(
    file: &F,
    file_len: u64,
    start: u64,
    header_crc: u32,
    count: u64,
    path: &Path,
) -> Result<(Vec<u64>, u64), StoreError> {
    let mut listed = SegmentSet::new(count);
    let mut pos = start;
    let mut buf = vec![0u8; RECORDS_PER_READ * RECORD_LEN];
    'outer: loop {
        let whole = (file_len - pos) / RECORD_LEN as u64;
        if whole == 0 {
            break;
        }
        let n = whole.min(RECORDS_PER_READ as u64) as usize;
        let bytes = &mut buf[..n * RECORD_LEN];
        read_exact_at(file, bytes, pos).map_err(|e| StoreError::io("reading journal", path, e))?;
        for raw in bytes.chunks_exact(RECORD_LEN) {
            let mut record = [0u8; RECORD_LEN];
            record.copy_from_slice(raw);
            match decode_record(header_crc, &record, count) {
                Some(index) => {
                    listed.insert(index);
                    pos += RECORD_LEN as u64;
                }
                None => break 'outer,
            }
        }
    }
    Ok((listed.to_vec(), pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arsnet_proto::manifest::digest_all;

    fn sample() -> Manifest {
        let data = vec![7u8; 10_000];
        let digests = digest_all(&data, 4096);
        Manifest::new("f.bin".into(), 10_000, 4096, digests).unwrap()
    }

    #[test]
    fn header_layout_matches_the_documented_offsets() {
        let m = sample();
        let h = encode_header(&m, &[0xAB; 16]).unwrap();
        assert_eq!(h.len() as u64, header_len(5, 3));
        assert_eq!(h.len(), 84 + 5 + 32 * 3);
        assert_eq!(&h[..8], b"ARSNJRN1");
        assert_eq!(&h[8..10], &[0, 2]);
        assert_eq!(&h[10..12], &[0, 5]);
        assert_eq!(&h[12..17], b"f.bin");
        assert_eq!(h[17..25], 10_000u64.to_be_bytes());
        assert_eq!(h[25..29], 4096u32.to_be_bytes());
        assert_eq!(h[29..37], 3u64.to_be_bytes());
        assert_eq!(h[37..69], m.root);
        assert_eq!(h[69..85], [0xAB; 16]);
        assert_eq!(h[85..117], m.digests[0]);
        let crc = crc32c::crc32c(&h[..h.len() - 4]);
        assert_eq!(h[h.len() - 4..], crc.to_be_bytes());
    }

    #[test]
    fn records_round_trip_and_reject_damage() {
        let r = encode_record(0xDEAD_BEEF, 2);
        assert_eq!(&r[..4], b"SEG1");
        assert_eq!(r[4..12], 2u64.to_be_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&0xDEAD_BEEFu32.to_be_bytes()), &r[..12]);
        assert_eq!(r[12..], crc.to_be_bytes());
        assert_eq!(decode_record(0xDEAD_BEEF, &r, 3), Some(2));
        assert_eq!(decode_record(0xDEAD_BEEF, &r, 2), None, "out of range");
        assert_eq!(decode_record(0xDEAD_BEEE, &r, 3), None, "other header");
        for i in 0..RECORD_LEN {
            let mut bad = r;
            bad[i] ^= 1;
            assert_eq!(decode_record(0xDEAD_BEEF, &bad, 3), None, "byte {i}");
        }
    }

    #[test]
    fn invalid_manifests_are_not_encoded() {
        let mut m = sample();
        m.name = "a/b".into();
        assert!(encode_header(&m, &[0; 16]).is_err());
        let mut m = sample();
        m.root[0] ^= 1;
        assert!(encode_header(&m, &[0; 16]).is_err());
    }
}
