//! The journal parser against hostile bytes: random files and random mutations of a valid
//! journal must never panic, and must never yield a segment the valid journal did not list.
//! Deterministic sweeps check that damage at any byte of the records keeps exactly the
//! records before it.

mod common;

use arsnet_proto::Manifest;
use arsnet_store::crash::CrashFile;
use arsnet_store::journal::{header_len, JOURNAL_MAGIC, RECORD_LEN};
use arsnet_store::{BlockFile, Journal, JournalContents, StoreError};
use common::{content, manifest, SEG};
use proptest::prelude::*;

/// A valid journal for a file of `size` bytes listing `appends` (batch by batch).
fn valid_journal(size: u64, appends: &[Vec<u64>]) -> (Manifest, Vec<u8>) {
    let m = manifest("fuzz.bin", &content(size as usize, size));
    let file = CrashFile::new();
    let handle = file.handle();
    let mut journal = Journal::create(file, &m, &[7; 16]).unwrap();
    for batch in appends {
        let batch: Vec<u64> = batch.iter().map(|s| s % m.segment_count().max(1)).collect();
        if m.segment_count() > 0 {
            journal.append(&batch).unwrap();
        }
    }
    (m, handle.volatile())
}

fn open(bytes: Vec<u8>) -> (Result<JournalContents, StoreError>, CrashFile) {
    let file = CrashFile::from_bytes(bytes);
    let handle = file.handle();
    let before = BlockFile::len(&handle).unwrap();
    let result = Journal::open(file).map(|(journal, contents)| {
        // The tail was cut off: the file now ends at the good prefix, where appends go.
        let after = BlockFile::len(&handle).unwrap();
        assert_eq!(journal.end_offset(), after);
        assert_eq!(after + contents.ignored_tail_bytes, before);
        contents
    });
    (result, handle)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { pos: usize, mask: u8 },
    Truncate { pos: usize },
    Append(Vec<u8>),
    Overwrite { pos: usize, bytes: Vec<u8> },
    Insert { pos: usize, bytes: Vec<u8> },
    DuplicateTail { len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(pos, mask)| Mutation::Flip { pos, mask }),
        any::<usize>().prop_map(|pos| Mutation::Truncate { pos }),
        prop::collection::vec(any::<u8>(), 1..40).prop_map(Mutation::Append),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(pos, bytes)| Mutation::Overwrite { pos, bytes }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(pos, bytes)| Mutation::Insert { pos, bytes }),
        (1usize..64).prop_map(|len| Mutation::DuplicateTail { len }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len().max(1);
    match mutation {
        Mutation::Flip { pos, mask } => {
            if let Some(b) = bytes.get_mut(pos % len) {
                *b ^= mask;
            }
        }
        Mutation::Truncate { pos } => bytes.truncate(pos % len),
        Mutation::Append(extra) => bytes.extend_from_slice(extra),
        Mutation::Overwrite { pos, bytes: new } => {
            for (i, b) in new.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(pos % len + i) {
                    *slot = *b;
                }
            }
        }
        Mutation::Insert { pos, bytes: new } => {
            let at = (pos % len).min(bytes.len());
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::DuplicateTail { len: n } => {
            let start = bytes.len().saturating_sub(*n);
            let tail = bytes[start..].to_vec();
            bytes.extend_from_slice(&tail);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = open(bytes);
    }

    #[test]
    fn random_bytes_after_a_valid_prefix_never_panic(
        name_len in 0u16..300,
        rest in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut bytes = JOURNAL_MAGIC.to_vec();
        bytes.extend_from_slice(&1u16.to_be_bytes());
        bytes.extend_from_slice(&name_len.to_be_bytes());
        bytes.extend_from_slice(&rest);
        let (result, _) = open(bytes);
        prop_assert!(result.is_err());
    }

    #[test]
    fn mutated_journals_never_invent_segments(
        size in 0u64..(6 * u64::from(SEG)),
        appends in prop::collection::vec(prop::collection::vec(any::<u64>(), 1..4), 0..6),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let (m, pristine) = valid_journal(size, &appends);
        let (valid, _) = open(pristine.clone());
        let valid = valid.unwrap();
        prop_assert_eq!(valid.ignored_tail_bytes, 0);
        let mut bytes = pristine;
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        let (result, handle) = open(bytes);
        if let Ok(contents) = result {
            prop_assert_eq!(&contents.manifest, &m);
            for seg in &contents.segments {
                prop_assert!(valid.segments.contains(seg), "invented segment {}", seg);
            }
            // Appends after the repair land right after the good prefix and read back.
            if m.segment_count() > 0 {
                let (mut journal, _) = Journal::open(handle.handle()).unwrap();
                journal.append(&[0]).unwrap();
                let (_, again) = Journal::open(handle).unwrap();
                prop_assert!(again.segments.contains(&0));
                prop_assert_eq!(again.ignored_tail_bytes, 0);
            }
        }
    }
}

/// Damage anywhere in the records keeps exactly the records before the damaged one.
#[test]
fn damage_at_every_record_byte_keeps_the_prefix() {
    let appends: Vec<Vec<u64>> = vec![vec![4], vec![0, 2], vec![1], vec![3]];
    let order = [4u64, 0, 2, 1, 3];
    let (m, pristine) = valid_journal(5 * u64::from(SEG), &appends);
    let header = header_len("fuzz.bin".len(), m.segment_count()) as usize;
    assert_eq!(pristine.len(), header + order.len() * RECORD_LEN);
    for pos in header..pristine.len() {
        let record = (pos - header) / RECORD_LEN;
        let mut expect: Vec<u64> = order[..record].to_vec();
        expect.sort_unstable();

        let mut flipped = pristine.clone();
        flipped[pos] ^= 0x04;
        let (contents, handle) = open(flipped.clone());
        let contents = contents.unwrap();
        assert_eq!(contents.segments, expect, "flip at {pos}");
        assert_eq!(
            contents.ignored_tail_bytes as usize,
            pristine.len() - header - record * RECORD_LEN
        );
        assert_eq!(handle.volatile(), flipped[..header + record * RECORD_LEN]);

        let (contents, _) = open(pristine[..pos].to_vec());
        assert_eq!(contents.unwrap().segments, expect, "truncated at {pos}");
    }
    // Every header byte matters.
    for pos in 0..header {
        let mut flipped = pristine.clone();
        flipped[pos] ^= 0x04;
        let (result, _) = open(flipped);
        assert!(
            matches!(result, Err(StoreError::JournalCorrupt { .. })),
            "header byte {pos}"
        );
    }
}

/// A record copied from another journal (different header) is not accepted.
#[test]
fn records_are_bound_to_their_header() {
    let (_, a) = valid_journal(2 * u64::from(SEG), &[vec![1]]);
    let (_, b) = valid_journal(2 * u64::from(SEG) + 1, &[]);
    let mut spliced = b.clone();
    spliced.extend_from_slice(&a[a.len() - RECORD_LEN..]);
    let (contents, _) = open(spliced);
    let contents = contents.unwrap();
    assert!(contents.segments.is_empty());
    assert_eq!(contents.ignored_tail_bytes, RECORD_LEN as u64);
}
