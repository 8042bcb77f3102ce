//! DownloadStore on real files in temporary directories: round trips, torn journal tails,
//! corrupt headers, re-verification on adopt, refusals to clobber, ENOSPC.

mod common;

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arsnet_proto::control::Pin;
use arsnet_proto::Manifest;
use arsnet_store::dir::Dir;
use arsnet_store::journal::{encode_header, header_len, RECORD_LEN};
use arsnet_store::{BlockFile, DownloadStore, Journal, Store, StoreError, StorePaths};
use common::{content, manifest, segment, SEG, TAG};

/// The test's download directory, held open as the store wants it.
fn held(path: &Path) -> Dir {
    Dir::open(path).unwrap()
}

/// The test job's claim: only files carrying its own tag.
fn ours(tag: &[u8; 16]) -> bool {
    *tag == TAG
}

const NAME: &str = "payload.bin";

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Creates a download and commits `batches` (each written, then committed as one batch).
fn store_with(dir: &Path, m: &Manifest, data: &[u8], batches: &[&[u64]]) -> DownloadStore {
    let mut store = DownloadStore::create(held(dir), m, &TAG, false).unwrap();
    for batch in batches {
        for &s in *batch {
            store.write_segment(s, segment(m, data, s)).unwrap();
        }
        store.commit(batch).unwrap();
    }
    store
}

fn assert_dump_has(dir: &Path, m: &Manifest, data: &[u8], segments: &[u64]) {
    let dump = fs::read(DownloadStore::dump_path(dir, &m.name)).unwrap();
    assert_eq!(dump.len() as u64, m.size);
    for &s in segments {
        assert!(
            common::image_has_segment(m, &dump, s),
            "segment {s} does not verify"
        );
        let (offset, len) = m.segment_range(s);
        let range = offset as usize..(offset + u64::from(len)) as usize;
        assert_eq!(&dump[range.clone()], &data[range], "segment {s}");
    }
}

fn corrupt_reason(result: Result<impl std::fmt::Debug, StoreError>) -> String {
    match result {
        Err(StoreError::JournalCorrupt { reason, path }) => {
            assert!(
                path.to_string_lossy().ends_with(".arsnet-segments"),
                "{path:?}"
            );
            reason
        }
        other => panic!("expected JournalCorrupt, got {other:?}"),
    }
}

#[test]
fn round_trip_for_sizes_on_and_off_the_segment_boundary() {
    for size in [
        3 * SEG as usize,
        4 * SEG as usize + 100,
        1,
        SEG as usize - 1,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = content(size, size as u64);
        let m = manifest(NAME, &data);
        let count = m.segment_count();
        let first: Vec<u64> = (0..count).step_by(2).collect();
        let mut store = store_with(dir.path(), &m, &data, &[&first]);
        // Written but never committed: must not come back as adopted.
        let uncommitted: Vec<u64> = (0..count).filter(|s| s % 2 == 1).collect();
        for &s in &uncommitted {
            store.write_segment(s, segment(&m, &data, s)).unwrap();
        }
        drop(store);

        let (mut store, adopted) =
            DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap();
        assert_eq!(adopted.segments, first, "size {size}");
        assert!(adopted.rejected.is_empty());
        assert_eq!(adopted.ignored_tail_bytes, 0);
        assert_eq!(store.manifest(), &m);
        assert_dump_has(dir.path(), &m, &data, &first);
        assert!(first.iter().all(|&s| store.is_committed(s)));

        for &s in &uncommitted {
            store.write_segment(s, segment(&m, &data, s)).unwrap();
        }
        store.commit(&uncommitted).unwrap();
        let path = store.finalize(false, None).unwrap();
        assert_eq!(path, dir.path().join(NAME));
        assert_eq!(fs::read(&path).unwrap(), data, "size {size}");
        assert_eq!(dir_entries(dir.path()), vec![NAME.to_owned()]);
    }
}

#[test]
fn zero_size_file() {
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(NAME, &[]);
    assert_eq!(m.segment_count(), 0);
    let mut store = DownloadStore::create(held(dir.path()), &m, &TAG, false).unwrap();
    store.commit(&[]).unwrap();
    assert!(matches!(
        store.write_segment(0, &[]),
        Err(StoreError::BadSegment { segment: 0, .. })
    ));
    drop(store);
    let (store, adopted) =
        DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap();
    assert!(adopted.segments.is_empty() && adopted.rejected.is_empty());
    let path = store.finalize(false, None).unwrap();
    assert_eq!(fs::read(&path).unwrap(), Vec::<u8>::new());
    assert_eq!(dir_entries(dir.path()), vec![NAME.to_owned()]);
}

#[test]
fn bad_segments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(2 * SEG as usize + 10, 1);
    let m = manifest(NAME, &data);
    let mut store = DownloadStore::create(held(dir.path()), &m, &TAG, false).unwrap();
    let wrong_len = store.write_segment(2, &data[..100]).unwrap_err();
    assert!(
        wrong_len
            .to_string()
            .contains("100 bytes given, the segment has 10"),
        "{wrong_len}"
    );
    let out_of_range = store.write_segment(3, &data[..10]).unwrap_err();
    assert!(matches!(
        out_of_range,
        StoreError::BadSegment { segment: 3, .. }
    ));
    let unwritten = store.commit(&[1]).unwrap_err();
    assert!(
        matches!(unwritten, StoreError::BadSegment { segment: 1, .. }),
        "{unwritten}"
    );
    // Finalizing an incomplete download names the first missing segment.
    store.write_segment(0, segment(&m, &data, 0)).unwrap();
    store.commit(&[0, 0]).unwrap();
    assert_eq!(store.committed_count(), 1);
    let incomplete = store.finalize(false, None).unwrap_err();
    assert!(
        matches!(incomplete, StoreError::BadSegment { segment: 1, .. }),
        "{incomplete}"
    );
    assert!(!dir.path().join(NAME).exists());
    let (_, adopted) = DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap();
    assert_eq!(adopted.segments, vec![0]);
}

/// A journal with records for segments 0 then 1 (two appends) and its header length.
fn two_record_journal(dir: &Path) -> (Manifest, Vec<u8>, u64) {
    let data = content(3 * SEG as usize, 7);
    let m = manifest(NAME, &data);
    drop(store_with(dir, &m, &data, &[&[0], &[1]]));
    let header = header_len(NAME.len(), m.segment_count());
    let journal = DownloadStore::journal_path(dir, NAME);
    assert_eq!(
        fs::metadata(&journal).unwrap().len(),
        header + 2 * RECORD_LEN as u64
    );
    (m, data, header)
}

/// Adopts, checks the outcome, then checks that the journal was cut back to the good
/// prefix by appending segment 2 and adopting again.
fn check_torn(dir: &Path, data: &[u8], expect: &[u64], ignored: u64, header: u64) {
    let journal = DownloadStore::journal_path(dir, NAME);
    let (mut store, adopted) = DownloadStore::adopt(held(dir), NAME, &ours, None, false).unwrap();
    assert_eq!(adopted.segments, expect);
    assert_eq!(adopted.ignored_tail_bytes, ignored);
    let good = header + (expect.len() * RECORD_LEN) as u64;
    assert_eq!(
        fs::metadata(&journal).unwrap().len(),
        good,
        "tail not truncated"
    );
    let m = store.manifest().clone();
    store.write_segment(2, segment(&m, data, 2)).unwrap();
    store.commit(&[2]).unwrap();
    drop(store);
    let (_, again) = DownloadStore::adopt(held(dir), NAME, &ours, None, false).unwrap();
    let mut want = expect.to_vec();
    want.push(2);
    assert_eq!(again.segments, want);
    assert_eq!(again.ignored_tail_bytes, 0);
}

#[test]
fn torn_tail_truncated_mid_record() {
    for cut in 1..RECORD_LEN as u64 {
        let dir = tempfile::tempdir().unwrap();
        let (_, data, header) = two_record_journal(dir.path());
        let journal = DownloadStore::journal_path(dir.path(), NAME);
        let f = fs::OpenOptions::new().write(true).open(&journal).unwrap();
        f.set_len(header + RECORD_LEN as u64 + cut).unwrap();
        drop(f);
        check_torn(dir.path(), &data, &[0], cut, header);
    }
}

#[test]
fn torn_tail_garbage_appended() {
    for garbage in [
        vec![0u8; 1],
        vec![0xAB; 16],
        content(37, 3),
        b"SEG1\0\0\0\0\0\0\0\0\0\0\0\0".to_vec(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (_, data, header) = two_record_journal(dir.path());
        let journal = DownloadStore::journal_path(dir.path(), NAME);
        let mut bytes = fs::read(&journal).unwrap();
        bytes.extend_from_slice(&garbage);
        fs::write(&journal, &bytes).unwrap();
        check_torn(dir.path(), &data, &[0, 1], garbage.len() as u64, header);
    }
}

#[test]
fn torn_tail_flipped_byte_in_last_record() {
    for pos in 0..RECORD_LEN {
        let dir = tempfile::tempdir().unwrap();
        let (_, data, header) = two_record_journal(dir.path());
        let journal = DownloadStore::journal_path(dir.path(), NAME);
        let mut bytes = fs::read(&journal).unwrap();
        bytes[header as usize + RECORD_LEN + pos] ^= 0x10;
        fs::write(&journal, &bytes).unwrap();
        check_torn(dir.path(), &data, &[0], RECORD_LEN as u64, header);
    }
}

#[test]
fn journal_open_on_a_real_file_reports_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _, header) = two_record_journal(dir.path());
    let path = DownloadStore::journal_path(dir.path(), NAME);
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(bytes.len() - 3);
    fs::write(&path, &bytes).unwrap();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let (journal, contents) = Journal::open_named(file, &path).unwrap();
    assert_eq!(contents.manifest, m);
    assert_eq!(contents.segments, vec![0]);
    assert_eq!(contents.ignored_tail_bytes, RECORD_LEN as u64 - 3);
    assert_eq!(journal.end_offset(), header + RECORD_LEN as u64);
}

/// Rewrites the journal header's CRC after a deliberate edit, so only the edit is wrong.
fn fix_header_crc(bytes: &mut [u8], header: usize) {
    let crc = crc32c::crc32c(&bytes[..header - 4]);
    bytes[header - 4..header].copy_from_slice(&crc.to_be_bytes());
}

#[test]
fn corrupt_header_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (m, _, header) = two_record_journal(dir.path());
    let header = header as usize;
    let path = DownloadStore::journal_path(dir.path(), NAME);
    let pristine = fs::read(&path).unwrap();
    let adopt_with = |bytes: &[u8]| {
        fs::write(&path, bytes).unwrap();
        DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).map(|_| ())
    };

    // Any flipped header byte is refused.
    for pos in 0..header {
        let mut bytes = pristine.clone();
        bytes[pos] ^= 0x01;
        let reason = corrupt_reason(adopt_with(&bytes));
        let expected = match pos {
            0..=7 => "bad magic",
            8..=9 => "unsupported journal version",
            _ => "", // any reason will do
        };
        assert!(reason.contains(expected), "byte {pos}: {reason}");
    }
    let name_end = 12 + NAME.len();
    let mut bytes = pristine.clone();
    bytes[12] ^= 0x01;
    assert!(corrupt_reason(adopt_with(&bytes)).contains("header checksum mismatch"));
    let mut bytes = pristine.clone();
    bytes[header - 40] ^= 0x01; // inside the last digest
    assert!(corrupt_reason(adopt_with(&bytes)).contains("header checksum mismatch"));

    // A root that does not match the digests, with a valid CRC.
    let mut bytes = pristine.clone();
    bytes[name_end + 20] ^= 0xFF;
    fix_header_crc(&mut bytes, header);
    let reason = corrupt_reason(adopt_with(&bytes));
    assert!(reason.contains("root digest does not match"), "{reason}");

    // Truncated inside the header.
    let reason = corrupt_reason(adopt_with(&pristine[..header - 1]));
    assert!(reason.contains("truncated header"), "{reason}");
    let reason = corrupt_reason(adopt_with(&pristine[..5]));
    assert!(reason.contains("too short"), "{reason}");

    // A huge announced layout is refused before any allocation: the digests cannot fit.
    let mut bytes = pristine.clone();
    let count = 1u64 << 22;
    bytes[name_end..name_end + 8].copy_from_slice(&(count * u64::from(SEG)).to_be_bytes());
    bytes[name_end + 12..name_end + 20].copy_from_slice(&count.to_be_bytes());
    let reason = corrupt_reason(adopt_with(&bytes));
    assert!(
        reason.contains("truncated header") && reason.contains("4194304 segments"),
        "{reason}"
    );
    let mut bytes = pristine.clone();
    bytes[name_end + 12..name_end + 20].copy_from_slice(&(count * 2).to_be_bytes());
    let reason = corrupt_reason(adopt_with(&bytes));
    assert!(reason.contains("bad layout"), "{reason}");

    // The good journal is still fine.
    fs::write(&path, &pristine).unwrap();
    let (store, _) = DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap();
    assert_eq!(store.manifest(), &m);
}

#[test]
fn path_like_name_in_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(SEG as usize, 9);
    // "..Ax" is a valid name of the same length as "../x"; the root does not cover the name.
    let m = manifest("..Ax", &data);
    let mut bytes = encode_header(&m, &TAG).unwrap();
    let header = bytes.len();
    bytes[12..16].copy_from_slice(b"../x");
    fix_header_crc(&mut bytes, header);
    let path = dir.path().join("evil.arsnet-segments");
    fs::write(&path, &bytes).unwrap();
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let err = Journal::open_named(file, &path).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StoreError::JournalCorrupt { .. }), "{err:?}");
    assert!(
        text.contains("unsafe file name") && text.contains("../x"),
        "{text}"
    );
    assert!(text.contains("evil.arsnet-segments"), "{text}");
}

#[test]
fn adopt_rejects_segments_whose_bytes_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(3 * SEG as usize + 5, 11);
    let m = manifest(NAME, &data);
    drop(store_with(dir.path(), &m, &data, &[&[0, 1, 2, 3]]));
    let dump_path = DownloadStore::dump_path(dir.path(), NAME);
    let mut dump = fs::read(&dump_path).unwrap();
    dump[SEG as usize + 17] ^= 0x80; // inside segment 1
    dump[3 * SEG as usize + 4] ^= 0x01; // last byte of the short last segment
    fs::write(&dump_path, &dump).unwrap();

    let (mut store, adopted) =
        DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap();
    assert_eq!(adopted.segments, vec![0, 2]);
    assert_eq!(adopted.rejected, vec![1, 3]);
    assert!(!store.is_committed(1));
    // Refetched segments can be written, committed and finalized.
    for s in [1, 3] {
        store.write_segment(s, segment(&m, &data, s)).unwrap();
    }
    store.commit(&[1, 3]).unwrap();
    let path = store.finalize(false, None).unwrap();
    assert_eq!(fs::read(path).unwrap(), data);
}

#[test]
fn adopt_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap_err();
    assert!(matches!(&err, StoreError::NoPartial(p) if p.ends_with("payload.bin.arsnet-segments")));
    let err = DownloadStore::adopt(held(dir.path()), "../x", &ours, None, false).unwrap_err();
    assert!(err.to_string().contains("../x"), "{err}");

    let data = content(SEG as usize, 2);
    let m = manifest(NAME, &data);
    drop(store_with(dir.path(), &m, &data, &[&[0]]));
    fs::write(dir.path().join(NAME), b"someone else's").unwrap();
    let err = DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap_err();
    assert!(matches!(err, StoreError::TargetExists(_)), "{err:?}");
    fs::remove_file(dir.path().join(NAME)).unwrap();

    // A journal whose header names another file is not adopted under this name.
    fs::copy(
        DownloadStore::journal_path(dir.path(), NAME),
        DownloadStore::journal_path(dir.path(), "other"),
    )
    .unwrap();
    fs::copy(
        DownloadStore::dump_path(dir.path(), NAME),
        DownloadStore::dump_path(dir.path(), "other"),
    )
    .unwrap();
    let err = DownloadStore::adopt(held(dir.path()), "other", &ours, None, false).unwrap_err();
    assert!(
        matches!(&err, StoreError::Foreign { reason, .. } if reason.contains("payload.bin")),
        "{err:?}"
    );

    // Journal without dump.
    fs::remove_file(DownloadStore::dump_path(dir.path(), NAME)).unwrap();
    let err = DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("payload.bin.arsnet-dump"), "{err}");
    DownloadStore::discard_partial(&held(dir.path()), NAME, &TAG).unwrap();
    DownloadStore::discard_partial(&held(dir.path()), "other", &TAG).unwrap();
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn create_refuses_existing_partials_and_targets() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(2 * SEG as usize, 5);
    let m = manifest(NAME, &data);
    let dump = DownloadStore::dump_path(dir.path(), NAME);
    let journal = DownloadStore::journal_path(dir.path(), NAME);

    for partial in [&dump, &journal] {
        fs::write(partial, b"x").unwrap();
        match DownloadStore::create(held(dir.path()), &m, &TAG, false) {
            Err(StoreError::PartialExists(p)) => assert_eq!(&p, partial),
            other => panic!("expected PartialExists, got {other:?}"),
        }
        assert_eq!(fs::read(partial).unwrap(), b"x", "partial file was touched");
        fs::remove_file(partial).unwrap();
    }

    let target = dir.path().join(NAME);
    fs::write(&target, b"old").unwrap();
    match DownloadStore::create(held(dir.path()), &m, &TAG, false) {
        Err(StoreError::TargetExists(p)) => assert_eq!(p, target),
        other => panic!("expected TargetExists, got {other:?}"),
    }
    assert_eq!(dir_entries(dir.path()), vec![NAME.to_owned()]);

    let mut bad = m.clone();
    bad.name = "../escape".into();
    let err = DownloadStore::create(held(dir.path()), &bad, &TAG, true).unwrap_err();
    assert!(err.to_string().contains("../escape"), "{err}");
    let mut bad = m.clone();
    bad.name = "fresh".into();
    bad.root[0] ^= 1;
    let err = DownloadStore::create(held(dir.path()), &bad, &TAG, true).unwrap_err();
    assert!(
        err.to_string().contains("root digest does not match"),
        "{err}"
    );
    assert_eq!(dir_entries(dir.path()), vec![NAME.to_owned()]);
}

#[test]
fn finalize_refuses_to_overwrite_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(2 * SEG as usize + 1, 6);
    let m = manifest(NAME, &data);
    let target = dir.path().join(NAME);
    fs::write(&target, b"old").unwrap();
    let store = {
        let mut store = DownloadStore::create(held(dir.path()), &m, &TAG, true).unwrap();
        for s in 0..3 {
            store.write_segment(s, segment(&m, &data, s)).unwrap();
        }
        store.commit(&[0, 1, 2]).unwrap();
        store
    };
    let dump = store.paths().dump.clone();
    let journal = store.paths().journal.clone();
    match store.finalize(false, None) {
        Err(StoreError::TargetExists(p)) => assert_eq!(p, target),
        other => panic!("expected TargetExists, got {other:?}"),
    }
    // Nothing changed: the old file, the dump and the journal are all still there.
    assert_eq!(fs::read(&target).unwrap(), b"old");
    assert_eq!(fs::read(&dump).unwrap(), data);
    assert!(journal.exists());

    let (store, adopted) = DownloadStore::adopt(held(dir.path()), NAME, &ours, None, true).unwrap();
    assert_eq!(adopted.segments, vec![0, 1, 2]);
    assert_eq!(store.finalize(true, None).unwrap(), target);
    assert_eq!(fs::read(&target).unwrap(), data);
    assert_eq!(dir_entries(dir.path()), vec![NAME.to_owned()]);
}

#[test]
fn discard_removes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(SEG as usize, 8);
    let m = manifest(NAME, &data);
    let store = store_with(dir.path(), &m, &data, &[&[0]]);
    assert_eq!(dir_entries(dir.path()).len(), 2);
    store.discard().unwrap();
    assert!(dir_entries(dir.path()).is_empty());
    // Starting again after a discard works.
    drop(DownloadStore::create(held(dir.path()), &m, &TAG, false).unwrap());
}

/// A real file that fails writes with ENOSPC once its disk is "full".
struct FullDisk {
    file: fs::File,
    full: Arc<AtomicBool>,
}

impl BlockFile for FullDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.file, buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            // Like a real short write on a full disk: some bytes land, then ENOSPC.
            let half = &buf[..buf.len() / 2];
            FileExt::write_all_at(&self.file, half, offset)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        FileExt::write_all_at(&self.file, buf, offset)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        BlockFile::set_len(&mut self.file, len)
    }
    fn len(&self) -> io::Result<u64> {
        BlockFile::len(&self.file)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
}

fn full_disk(path: &Path, full: &Arc<AtomicBool>) -> FullDisk {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .unwrap();
    FullDisk {
        file,
        full: Arc::clone(full),
    }
}

#[test]
fn enospc_is_a_clear_error_and_committed_state_survives() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(4 * SEG as usize, 12);
    let m = manifest(NAME, &data);
    let paths = StorePaths::new(dir.path(), NAME);
    let dump_full = Arc::new(AtomicBool::new(false));
    let journal_full = Arc::new(AtomicBool::new(false));
    let mut store = Store::create(
        full_disk(&paths.dump, &dump_full),
        full_disk(&paths.journal, &journal_full),
        &m,
        &TAG,
        &paths,
    )
    .unwrap();
    store.write_segment(0, segment(&m, &data, 0)).unwrap();
    store.commit(&[0]).unwrap();

    // The dump's disk fills up.
    dump_full.store(true, Ordering::SeqCst);
    let err = store.write_segment(1, segment(&m, &data, 1)).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, StoreError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    );
    assert!(text.contains(&paths.dump.display().to_string()), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    dump_full.store(false, Ordering::SeqCst);

    // Then the journal's: the commit fails, names the journal, and later commits refuse.
    store.write_segment(2, segment(&m, &data, 2)).unwrap();
    journal_full.store(true, Ordering::SeqCst);
    let err = store.commit(&[2]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&paths.journal.display().to_string()),
        "{text}"
    );
    assert!(text.contains("No space left on device"), "{text}");
    journal_full.store(false, Ordering::SeqCst);
    store.write_segment(3, segment(&m, &data, 3)).unwrap();
    let err = store.commit(&[3]).unwrap_err();
    assert!(err.to_string().contains("reopen"), "{err}");
    drop(store);

    // What was committed before is still adoptable; the half-written segment is not listed.
    let (_, adopted) = DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap();
    assert_eq!(adopted.segments, vec![0]);
    assert!(adopted.rejected.is_empty());
}

#[test]
fn a_partial_download_has_one_owner_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(3 * SEG as usize + 5, 4);
    let m = manifest(NAME, &data);
    let first = store_with(dir.path(), &m, &data, &[&[0]]);
    // While the first store is open, nobody else may adopt the same files...
    match DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false) {
        Err(StoreError::InUse(path)) => assert!(path.ends_with(format!("{NAME}.arsnet-segments"))),
        other => panic!("expected InUse, got {other:?}"),
    }
    // ...nor remove them.
    assert!(matches!(
        DownloadStore::discard_partial(&held(dir.path()), NAME, &TAG),
        Err(StoreError::InUse(_))
    ));
    assert!(DownloadStore::journal_path(dir.path(), NAME).exists());
    // ...and once it is closed (or its process died), adoption works.
    drop(first);
    let (_second, adopted) =
        DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap();
    assert_eq!(adopted.segments, vec![0]);
}

#[test]
fn a_finalize_interrupted_after_the_link_is_recognised_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(3 * SEG as usize + 7, 9);
    let m = manifest(NAME, &data);
    let all: Vec<u64> = (0..m.segment_count()).collect();
    let store = store_with(dir.path(), &m, &data, &[&all]);
    drop(store);
    // The crash: the dump was linked into place, its old name and the journal not yet gone.
    fs::hard_link(
        DownloadStore::dump_path(dir.path(), NAME),
        dir.path().join(NAME),
    )
    .unwrap();
    // Nothing there, or a different file in its place, is not taken for the download.
    let published = |d: &Path| {
        DownloadStore::verify_published(&held(d), NAME, &Pin::Blake3(m.root), &TAG, None).unwrap()
    };
    let other = tempfile::tempdir().unwrap();
    assert_eq!(published(other.path()), None);
    // (Two links to one inode are not "ours" either until the leftovers are sorted out: the
    // recovery recognises the content, not the link count.)
    let stray = tempfile::tempdir().unwrap();
    fs::write(stray.path().join(NAME), b"something else").unwrap();
    assert_eq!(published(stray.path()), None);
    // Linked under both names (the crash hit between the link and the dump's removal):
    // recognised, and only our leftovers go.
    assert_eq!(published(dir.path()), Some(dir.path().join(NAME)));
    assert_eq!(dir_entries(dir.path()), vec![NAME.to_string()]);
    assert_eq!(fs::read(dir.path().join(NAME)).unwrap(), data);
}

#[test]
fn symlinks_and_foreign_files_in_dir_are_never_used() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let data = content(3 * SEG as usize, 5);
    let m = manifest(NAME, &data);
    drop(store_with(dir.path(), &m, &data, &[&[0]]));
    let dump = DownloadStore::dump_path(dir.path(), NAME);
    let journal = DownloadStore::journal_path(dir.path(), NAME);

    // A symlink swapped in for the dump: refused, the victim untouched.
    let saved = dir.path().join("saved-dump");
    fs::rename(&dump, &saved).unwrap();
    symlink(&victim, &dump).unwrap();
    let err = DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap_err();
    assert!(
        matches!(&err, StoreError::Untrusted { path, .. } if *path == dump),
        "{err:?}"
    );
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");

    // A hard link to another file: refused too.
    fs::remove_file(&dump).unwrap();
    fs::hard_link(&victim, &dump).unwrap();
    let err = DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap_err();
    assert!(err.to_string().contains("hard links"), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    fs::remove_file(&dump).unwrap();
    fs::rename(&saved, &dump).unwrap();

    // Another job's tag: neither adopted nor removed.
    let err =
        DownloadStore::adopt(held(dir.path()), NAME, &|t| *t == [9; 16], None, false).unwrap_err();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err:?}");
    let err = DownloadStore::discard_partial(&held(dir.path()), NAME, &[9; 16]).unwrap_err();
    assert!(matches!(err, StoreError::Foreign { .. }), "{err:?}");
    assert!(journal.exists() && dump.exists());
    // Other content than the job accepted: refused.
    let err =
        DownloadStore::adopt(held(dir.path()), NAME, &ours, Some(&[1; 32]), false).unwrap_err();
    assert!(
        err.to_string().contains("other") || err.to_string().contains("BLAKE3"),
        "{err}"
    );

    // --overwrite never replaces a directory or a symlink at DIR/NAME.
    let (mut store, _) =
        DownloadStore::adopt(held(dir.path()), NAME, &ours, Some(&m.root), true).unwrap();
    for s in 1..m.segment_count() {
        store.write_segment(s, segment(&m, &data, s)).unwrap();
    }
    store.commit(&[1, 2]).unwrap();
    symlink(&victim, dir.path().join(NAME)).unwrap();
    let err = store.finalize(true, None).unwrap_err();
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(fs::symlink_metadata(dir.path().join(NAME))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn finalize_publishes_the_verified_inode_even_if_the_dump_path_was_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(4 * SEG as usize, 21);
    let m = manifest(NAME, &data);
    let all: Vec<u64> = (0..m.segment_count()).collect();
    let store = store_with(dir.path(), &m, &data, &[&all]);
    // Someone moves the dump away and puts a file of their own at its name.
    let dump = DownloadStore::dump_path(dir.path(), NAME);
    fs::rename(&dump, dir.path().join("moved")).unwrap();
    fs::write(&dump, vec![0u8; data.len()]).unwrap();
    let path = store.finalize(false, None).unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        data,
        "the verified bytes are what got published"
    );
    // Their file was not ours to remove: it stays, under its own name.
    assert_eq!(fs::read(&dump).unwrap(), vec![0u8; data.len()]);

    // If the verified inode was deleted outright, it cannot be published: a loud failure,
    // and nothing appears under the final name.
    let dir = tempfile::tempdir().unwrap();
    let store = store_with(dir.path(), &m, &data, &[&all]);
    let dump = DownloadStore::dump_path(dir.path(), NAME);
    fs::remove_file(&dump).unwrap();
    fs::write(&dump, vec![0u8; data.len()]).unwrap();
    let err = store.finalize(false, None).unwrap_err();
    assert!(matches!(err, StoreError::Untrusted { .. }), "{err:?}");
    assert!(!dir.path().join(NAME).exists());
}

#[test]
fn reserved_names_and_oversized_downloads_are_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(SEG as usize, 3);
    for name in [
        "x.arsnet-dump",
        "x.arsnet-segments",
        "y.arsnet-segments.arsnet-untrusted-1",
    ] {
        let m = manifest(name, &data);
        let err = DownloadStore::create(held(dir.path()), &m, &TAG, false).unwrap_err();
        assert!(err.to_string().contains("reserves"), "{name}: {err}");
    }
    // A 1 TiB header on a file system with less room: a clear error naming both sizes.
    let seg = 16 << 20;
    let size = 1u64 << 40;
    let count = size / seg as u64;
    let digests: Vec<[u8; 32]> = (0..count)
        .map(|i| *blake3::hash(&i.to_be_bytes()).as_bytes())
        .collect();
    let huge = Manifest::new("huge.img".into(), size, seg, digests).unwrap();
    let err = DownloadStore::create(held(dir.path()), &huge, &TAG, false).unwrap_err();
    match &err {
        StoreError::NoSpace { needed, free, .. } => {
            assert_eq!(*needed, size);
            assert!(*free < size);
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert!(err.to_string().contains(&size.to_string()), "{err}");
    assert!(dir_entries(dir.path()).is_empty(), "nothing was created");
}

#[test]
fn an_untrusted_journal_is_kept_aside_and_the_download_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = content(3 * SEG as usize, 8);
    let m = manifest(NAME, &data);
    drop(store_with(dir.path(), &m, &data, &[&[0]]));
    let journal = DownloadStore::journal_path(dir.path(), NAME);
    // A crash while the journal was created: its header is torn.
    let f = fs::OpenOptions::new().write(true).open(&journal).unwrap();
    f.set_len(20).unwrap();
    drop(f);
    let err = DownloadStore::adopt(held(dir.path()), NAME, &ours, None, false).unwrap_err();
    assert!(matches!(err, StoreError::JournalCorrupt { .. }), "{err:?}");
    let kept = DownloadStore::set_aside(&held(dir.path()), NAME)
        .unwrap()
        .unwrap();
    assert!(kept.to_string_lossy().contains(".arsnet-untrusted-"));
    assert_eq!(fs::metadata(&kept).unwrap().len(), 20, "kept as it was");
    assert!(!journal.exists() && !DownloadStore::dump_path(dir.path(), NAME).exists());
    // And a fresh download of the same file can begin.
    drop(DownloadStore::create(held(dir.path()), &m, &TAG, false).unwrap());
}
