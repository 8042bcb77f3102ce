//! Crash consistency on `CrashFile`s: run random write/commit sequences, cut the power at a
//! random operation (including between the dump's fdatasync and the journal append, and in
//! the middle of a journal write), crash both files, and check the invariant on what
//! survives: every segment the crashed journal lists verifies in the crashed dump, and every
//! segment whose commit returned Ok is listed. A negative control runs the same checker on
//! a store that appends to the journal before syncing the dump, and must be caught.

mod common;

use std::collections::BTreeSet;

use arsnet_proto::Manifest;
use arsnet_store::crash::{CrashFile, PowerCut};
use arsnet_store::{BlockFile, Journal, Store, StoreError, StorePaths};
use common::{content, image_has_segment, manifest, segment, SEG};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

const NAME: &str = "crash.bin";

/// The two operations a download performs on its storage.
trait Model: Sized {
    fn create(dump: CrashFile, journal: CrashFile, m: &Manifest) -> Result<Self, StoreError>;
    fn write(&mut self, segment: u64, data: &[u8]) -> Result<(), StoreError>;
    fn commit(&mut self, segments: &[u64]) -> Result<(), StoreError>;
}

fn paths() -> StorePaths {
    StorePaths::new(std::path::Path::new("/crash"), NAME)
}

/// The real store.
impl Model for Store<CrashFile, CrashFile> {
    fn create(dump: CrashFile, journal: CrashFile, m: &Manifest) -> Result<Self, StoreError> {
        Store::create(dump, journal, m, &[7; 16], &paths())
    }
    fn write(&mut self, segment: u64, data: &[u8]) -> Result<(), StoreError> {
        self.write_segment(segment, data)
    }
    fn commit(&mut self, segments: &[u64]) -> Result<(), StoreError> {
        Store::commit(self, segments)
    }
}

/// A broken store: it appends to the journal *before* making the dump durable.
struct JournalFirst {
    m: Manifest,
    dump: CrashFile,
    journal: Journal<CrashFile>,
}

impl Model for JournalFirst {
    fn create(mut dump: CrashFile, journal: CrashFile, m: &Manifest) -> Result<Self, StoreError> {
        let io = |e| StoreError::Io {
            context: "dump".into(),
            source: e,
        };
        dump.set_len(m.size).map_err(io)?;
        let journal = Journal::create(journal, m, &[7; 16])?;
        Ok(JournalFirst {
            m: m.clone(),
            dump,
            journal,
        })
    }
    fn write(&mut self, segment: u64, data: &[u8]) -> Result<(), StoreError> {
        let (offset, _) = self.m.segment_range(segment);
        self.dump
            .write_all_at(data, offset)
            .map_err(|e| StoreError::Io {
                context: "dump".into(),
                source: e,
            })
    }
    fn commit(&mut self, segments: &[u64]) -> Result<(), StoreError> {
        self.journal.append(segments)?;
        self.dump.sync_data().map_err(|e| StoreError::Io {
            context: "dump".into(),
            source: e,
        })
    }
}

#[derive(Debug, Clone)]
enum Action {
    /// Write segment `n % count`.
    Write(u64),
    /// Commit every written, uncommitted segment (`true`) or only the first half of them.
    Commit(bool),
}

#[derive(Debug, Clone)]
struct Scenario {
    size: u64,
    actions: Vec<Action>,
    /// Mutating operations that succeed before the power is cut.
    budget: u64,
    dump_seed: u64,
    journal_seed: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let action = prop_oneof![
        3 => any::<u64>().prop_map(Action::Write),
        2 => any::<bool>().prop_map(Action::Commit),
    ];
    (
        0u64..=(5 * u64::from(SEG) + 300),
        prop::collection::vec(action, 0..16),
        prop_oneof![4 => 0u64..60, 1 => Just(u64::MAX)],
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(size, actions, budget, dump_seed, journal_seed)| Scenario {
                size,
                actions,
                budget,
                dump_seed,
                journal_seed,
            },
        )
}

/// Runs the scenario on model `M`, crashes, and checks the invariant on the crash images.
fn check<M: Model>(s: &Scenario) -> Result<(), String> {
    let data = content(s.size as usize, s.size ^ s.dump_seed);
    let m = manifest(NAME, &data);
    let count = m.segment_count();
    let power = PowerCut::after(s.budget);
    let dump = CrashFile::new().with_power(power.clone());
    let journal = CrashFile::new().with_power(power);
    let (dump_handle, journal_handle) = (dump.handle(), journal.handle());

    let mut created = false;
    let mut committed = BTreeSet::new();
    'run: {
        let Ok(mut store) = M::create(dump, journal, &m) else {
            break 'run;
        };
        created = true;
        let mut pending: Vec<u64> = Vec::new();
        for action in &s.actions {
            match *action {
                Action::Write(n) if count > 0 => {
                    let seg = n % count;
                    if store.write(seg, segment(&m, &data, seg)).is_err() {
                        break 'run;
                    }
                    if !pending.contains(&seg) {
                        pending.push(seg);
                    }
                }
                Action::Write(_) => {}
                Action::Commit(all) => {
                    let take = if all {
                        pending.len()
                    } else {
                        pending.len() / 2
                    };
                    let batch: Vec<u64> = pending.drain(..take).collect();
                    if store.commit(&batch).is_err() {
                        break 'run;
                    }
                    committed.extend(batch);
                }
            }
        }
    }

    let dump_image = dump_handle.crash(s.dump_seed);
    let journal_image = journal_handle.crash(s.journal_seed);
    let dump_bytes = dump_image.volatile();
    let contents = match Journal::open(journal_image.handle()) {
        Ok((_, contents)) => contents,
        // Before creation finished, the journal may be anything; that is a NoPartial-like
        // state the caller restarts from.
        Err(_) if !created => return Ok(()),
        Err(e) => return Err(format!("journal unreadable although created: {e}")),
    };
    if contents.manifest != m {
        return Err("journal manifest changed".into());
    }
    for &seg in &contents.segments {
        if !image_has_segment(&m, &dump_bytes, seg) {
            return Err(format!(
                "journal lists segment {seg} but the dump does not hold it"
            ));
        }
    }
    for &seg in &committed {
        if !contents.segments.contains(&seg) {
            return Err(format!("segment {seg} was committed but is not listed"));
        }
    }

    // Recovery: adopting the crashed pair finds exactly those segments, rejects none, and
    // can finish the download.
    let (mut store, adopted) =
        Store::open(dump_image, journal_image, &paths()).map_err(|e| format!("adopt: {e}"))?;
    if adopted.segments != contents.segments || !adopted.rejected.is_empty() {
        return Err(format!(
            "adopt disagrees: {adopted:?} vs {:?}",
            contents.segments
        ));
    }
    let missing: Vec<u64> = (0..count).filter(|&seg| !store.is_committed(seg)).collect();
    for &seg in &missing {
        store
            .write_segment(seg, segment(&m, &data, seg))
            .map_err(|e| e.to_string())?;
    }
    store.commit(&missing).map_err(|e| e.to_string())?;
    store.finish().map_err(|e| e.to_string())?;
    let (dump, _) = store.into_parts();
    if dump.volatile() != data {
        return Err("recovered download differs from the original".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn journal_never_lists_a_segment_the_crashed_dump_lacks(s in scenario()) {
        let result = check::<Store<CrashFile, CrashFile>>(&s);
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}

/// The checker is not vacuous: a store that writes the journal before syncing the dump
/// violates the property, and the same search finds it.
#[test]
fn negative_control_journal_before_dump_sync_is_caught() {
    let config = Config {
        cases: 400,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    };
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let result = runner.run(&scenario(), |s| {
        check::<JournalFirst>(&s).map_err(TestCaseError::fail)
    });
    match result {
        Err(TestError::Fail(reason, _)) => {
            assert!(reason.message().contains("does not hold it"), "{reason}");
        }
        other => panic!("the checker missed the broken write order: {other:?}"),
    }
}

/// Deterministic versions of the two crash points named in the design: between the dump's
/// fdatasync and the journal append, and in the middle of the journal write.
#[test]
fn crash_between_dump_sync_and_journal_append_and_during_the_append() {
    let data = content(3 * SEG as usize, 21);
    let m = manifest(NAME, &data);
    let mut outcomes = BTreeSet::new();
    for remaining in [1u64, 2] {
        for seed in 0..64u64 {
            let power = PowerCut::never();
            let dump = CrashFile::new().with_power(power.clone());
            let journal = CrashFile::new().with_power(power.clone());
            let (dump_handle, journal_handle) = (dump.handle(), journal.handle());
            let mut store = Store::create(dump, journal, &m, &[7; 16], &paths()).unwrap();
            store.write_segment(0, segment(&m, &data, 0)).unwrap();
            store.commit(&[0]).unwrap();
            store.write_segment(1, segment(&m, &data, 1)).unwrap();
            store.write_segment(2, segment(&m, &data, 2)).unwrap();
            // remaining = 1: the dump sync succeeds, the journal write is cut (in flight).
            // remaining = 2: the journal write happens, its fsync is cut.
            power.set_remaining(remaining);
            assert!(store.commit(&[1, 2]).is_err());
            assert_eq!(
                journal_handle.durable().len() as u64,
                store.journal().end_offset()
            );

            let dump_image = dump_handle.crash(seed).volatile();
            let (_, contents) = Journal::open(journal_handle.crash(seed)).unwrap();
            assert!(contents.segments.contains(&0), "committed segment lost");
            for &seg in &contents.segments {
                assert!(
                    image_has_segment(&m, &dump_image, seg),
                    "segment {seg}, seed {seed}"
                );
            }
            outcomes.insert((contents.segments.len(), contents.ignored_tail_bytes > 0));
        }
    }
    // The crash model produced a lost append, a complete one, and torn ones.
    assert!(outcomes.contains(&(1, false)), "{outcomes:?}");
    assert!(outcomes.contains(&(3, false)), "{outcomes:?}");
    assert!(outcomes.iter().any(|&(_, torn)| torn), "{outcomes:?}");
}
