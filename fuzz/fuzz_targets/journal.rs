//! Arbitrary bytes as a segment journal (`arsnet_store::journal`), opened with
//! `Journal::open` over an in-memory `BlockFile`. Each input is tried twice:
//!
//! - raw: the input itself is the journal file (header parsing and its rejections);
//! - structured: a valid header built from the first input bytes (segment size, count, name,
//!   tag, digests; optionally one header byte damaged), followed by records driven by the rest
//!   of the input (valid records, out-of-range or damaged records, raw garbage), so the record
//!   parser and tail repair are reached without the fuzzer having to forge CRCs and a BLAKE3 root.
//!
//! Properties, whenever `open` succeeds: it never panics; the segments are sorted, deduplicated
//! and all below `manifest.segment_count()`; open only truncates (the file is then a prefix of
//! the input, `end_offset` long, `ignored_tail_bytes` shorter); reopening the truncated bytes
//! gives the same contents with no ignored tail; an append after open is seen by a reopen. In
//! structured mode with an intact header, open must succeed and keep exactly the records before
//! the first one that is known to be bad (at least them, if the first bad-looking one is raw
//! garbage that may happen to form a valid record).
#![no_main]

use std::io;

use arsnet_proto::limits::MIN_SEGMENT_SIZE;
use arsnet_proto::Manifest;
use arsnet_store::journal::{encode_header, encode_record, RECORD_LEN};
use arsnet_store::{BlockFile, Journal, JournalContents};
use libfuzzer_sys::fuzz_target;

/// Largest length the in-memory file grows to (open only ever shrinks it).
const MAX_MEM_LEN: u64 = 1 << 26;

/// A `Vec<u8>` as a `BlockFile`; counts writes so the target can check that open never writes.
#[derive(Debug, Default)]
struct MemFile {
    bytes: Vec<u8>,
    writes: u64,
}

impl MemFile {
    fn new(bytes: Vec<u8>) -> Self {
        MemFile { bytes, writes: 0 }
    }
}

impl BlockFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Some(src) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.bytes.get(o..))
        else {
            return Ok(0);
        };
        let n = src.len().min(buf.len());
        buf[..n].copy_from_slice(&src[..n]);
        Ok(n)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writes += 1;
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= MAX_MEM_LEN)
            .ok_or_else(|| io::Error::from(io::ErrorKind::FileTooLarge))?;
        if end as usize > self.bytes.len() {
            self.bytes.resize(end as usize, 0);
        }
        self.bytes[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len > MAX_MEM_LEN {
            return Err(io::ErrorKind::FileTooLarge.into());
        }
        self.bytes.resize(len as usize, 0);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn sync_all(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens `bytes` and checks the properties that hold for any input. Returns the contents and
/// the end of the good prefix when it opened.
fn check(bytes: &[u8]) -> Option<(JournalContents, u64)> {
    let (journal, contents) = Journal::open(MemFile::new(bytes.to_vec())).ok()?;
    let end = journal.end_offset();
    let count = contents.manifest.segment_count();

    assert!(
        contents.segments.iter().all(|&s| s < count),
        "segment out of range (count {count}): {:?}",
        contents.segments
    );
    assert!(
        contents.segments.windows(2).all(|w| w[0] < w[1]),
        "segments not sorted and deduplicated: {:?}",
        contents.segments
    );
    assert_eq!(end + contents.ignored_tail_bytes, bytes.len() as u64);

    let file = journal.into_inner();
    assert_eq!(file.writes, 0, "open wrote to the journal");
    assert_eq!(
        file.bytes.len() as u64,
        end,
        "open did not truncate to the good prefix"
    );
    assert_eq!(
        &file.bytes[..],
        &bytes[..end as usize],
        "open changed the good prefix"
    );

    // Reopen the (possibly truncated) file: same contents, nothing left to ignore.
    let (mut journal, again) = Journal::open(file).expect("reopen of a journal that opened");
    let expected = JournalContents {
        ignored_tail_bytes: 0,
        ..contents.clone()
    };
    assert_eq!(again, expected, "reopen gave different contents");
    assert_eq!(journal.end_offset(), end);

    // An append lands after the last good record and is seen by the next open.
    if count > 0 {
        let segment = bytes.first().map_or(0, |&b| u64::from(b)) % count;
        journal
            .append(&[segment])
            .expect("append to an opened journal");
        let (_, after) = Journal::open(journal.into_inner()).expect("reopen after append");
        let mut want = contents.segments.clone();
        if let Err(at) = want.binary_search(&segment) {
            want.insert(at, segment);
        }
        assert_eq!(
            after.segments, want,
            "append of {segment} not seen by reopen"
        );
        assert_eq!(after.ignored_tail_bytes, 0);
    }
    Some((contents, end))
}

/// A cursor over the input that yields zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let head = self.bytes(8);
        b[..head.len()].copy_from_slice(head);
        u64::from_be_bytes(b)
    }
}

/// What the structured journal is expected to decode to (only meaningful when the header was
/// left intact).
struct Expected {
    /// Segments of the valid records before the first non-valid one, in file order.
    prefix: Vec<u64>,
    /// Header length plus the bytes of those records.
    prefix_end: u64,
    /// Whether the first non-valid piece is certainly invalid (out of range, damaged), as
    /// opposed to raw bytes that might form a valid record, or absent.
    stop_is_certain: bool,
    /// Whether every piece was a valid record.
    all_valid: bool,
}

fn structured(data: &[u8]) {
    let mut input = Input(data);
    let flags = input.byte();
    let segment_size = MIN_SEGMENT_SIZE << (input.byte() % 13);
    let count = u64::from(input.byte() % 33);
    let size = if count == 0 {
        0
    } else {
        (count - 1) * u64::from(segment_size) + 1 + input.u64() % u64::from(segment_size)
    };
    let name_len = usize::from(input.byte() % 24) + 1;
    let name = String::from_utf8(input.bytes(name_len).to_vec()).unwrap_or_default();
    let mut tag = [0u8; 16];
    let raw_tag = input.bytes(16);
    tag[..raw_tag.len()].copy_from_slice(raw_tag);
    let digests: Vec<_> = (0..count)
        .map(|i| {
            let mut d = [input.byte(); 32];
            d[..8].copy_from_slice(&i.to_be_bytes());
            d
        })
        .collect();
    let manifest = match Manifest::new(name, size, segment_size, digests.clone()) {
        Ok(m) => m,
        // The name the input chose is not a plain name: use a fixed one.
        Err(_) => Manifest::new("fuzz.bin".into(), size, segment_size, digests)
            .expect("a manifest within the layout limits"),
    };
    let mut journal = encode_header(&manifest, &tag).expect("a validated manifest encodes");
    let header_len = journal.len() as u64;
    let header_crc = u32::from_be_bytes(journal[journal.len() - 4..].try_into().unwrap());

    let header_damaged = flags & 1 != 0;
    if header_damaged {
        let at = usize::from(input.byte()) << 8 | usize::from(input.byte());
        let at = at % journal.len();
        journal[at] ^= input.byte() | 1;
    }

    let mut expected = Expected {
        prefix: Vec::new(),
        prefix_end: header_len,
        stop_is_certain: false,
        all_valid: true,
    };
    let mut stopped = false;
    while !input.is_empty() {
        let op = input.byte();
        // Some(true): a valid record; Some(false): a certainly invalid one; None: raw bytes.
        let (piece, valid): (Vec<u8>, Option<bool>) = match op >> 6 {
            0 | 1 => {
                let index = u64::from(op & 0x7f) % (count + 1);
                (
                    encode_record(header_crc, index).to_vec(),
                    Some(index < count),
                )
            }
            2 => {
                let index = input.u64();
                let mut record = encode_record(header_crc, index);
                let damage = op & 0x20 != 0;
                if damage {
                    record[usize::from(op & 0x0f)] ^= input.byte() | 1;
                }
                (record.to_vec(), Some(!damage && index < count))
            }
            _ => (input.bytes(usize::from(op & 0x3f)).to_vec(), None),
        };
        if !stopped {
            match valid {
                Some(true) => {
                    expected
                        .prefix
                        .push(u64::from_be_bytes(piece[4..12].try_into().unwrap()));
                    expected.prefix_end += RECORD_LEN as u64;
                }
                Some(false) => {
                    stopped = true;
                    expected.stop_is_certain = true;
                }
                None => stopped = true,
            }
        }
        expected.all_valid &= valid == Some(true);
        journal.extend_from_slice(&piece);
    }

    let opened = check(&journal);
    if header_damaged {
        return;
    }
    let (contents, end) = opened.expect("a journal with an intact header opens");
    assert_eq!(contents.manifest, manifest);
    assert_eq!(contents.tag, tag);
    let mut want = expected.prefix.clone();
    want.sort_unstable();
    want.dedup();
    if expected.stop_is_certain || expected.all_valid {
        assert_eq!(contents.segments, want, "segments of the good records");
        assert_eq!(end, expected.prefix_end, "end of the good records");
    } else {
        assert!(
            want.iter()
                .all(|s| contents.segments.binary_search(s).is_ok()),
            "a good record was dropped: want {want:?}, got {:?}",
            contents.segments
        );
        assert!(end >= expected.prefix_end, "the good prefix was cut short");
    }
    if expected.all_valid {
        assert_eq!(contents.ignored_tail_bytes, 0);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = check(data);
    structured(data);
});
