//! Property test: whatever the fault script — servers crashing with or without coming back,
//! stalling, sending corrupt segments, announcing other content — as long as one honest
//! server never dies for good, the job completes, every segment is stored exactly once, and
//! the scheduler never addresses a connection it already knows is gone.

use std::time::Duration;

use arsnet_sched::{Config, ServerState};
use proptest::prelude::*;

use crate::world::{ms, Fault, Net, ServerSpec, World, BAD_FINGERPRINT, KIB};

#[derive(Clone, Debug)]
struct Case {
    segments: u64,
    config: Config,
    known_layout: bool,
    net: Net,
    servers: Vec<ServerSpec>,
}

fn transient_fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0u64..2500, 1u64..3000).prop_map(|(at, down)| Fault::Down {
            at: ms(at),
            back: Some(ms(at + down)),
        }),
        (0u64..2500).prop_map(|at| Fault::Stall { at: ms(at) }),
    ]
}

fn any_fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        2 => transient_fault(),
        1 => (0u64..2500).prop_map(|at| Fault::Down { at: ms(at), back: None }),
        2 => (0u64..40).prop_map(Fault::CorruptNth),
        1 => Just(Fault::CorruptAll),
    ]
}

fn link() -> impl Strategy<Value = (u64, Duration)> {
    (64 * KIB..4096 * KIB, 1u64..40).prop_map(|(bandwidth, latency)| (bandwidth, ms(latency)))
}

fn honest() -> impl Strategy<Value = ServerSpec> {
    (link(), prop::collection::vec(transient_fault(), 0..3)).prop_map(|((bw, lat), faults)| {
        faults
            .into_iter()
            .fold(ServerSpec::new(bw, lat), ServerSpec::fault)
    })
}

fn other() -> impl Strategy<Value = (ServerSpec, bool)> {
    (
        link(),
        prop::collection::vec(any_fault(), 0..3),
        prop::bool::weighted(0.2),
    )
        .prop_map(|((bw, lat), faults, mismatch)| {
            let spec = faults
                .into_iter()
                .fold(ServerSpec::new(bw, lat), ServerSpec::fault);
            (spec, mismatch)
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        0u64..150,
        1usize..7,
        any::<bool>(),
        1usize..4,
        any::<bool>(),
        1u64..4,
        honest(),
        prop::collection::vec(other(), 0..5),
        any::<prop::sample::Index>(),
    )
        .prop_map(
            |(segments, depth, endgame, max_copies, known_layout, chunks, honest, others, slot)| {
                let mut servers: Vec<ServerSpec> = others
                    .into_iter()
                    .map(|(spec, mismatch)| {
                        // Without a known layout the first header wins, so a wrong one could
                        // legitimately blame the honest server; only test mismatches on resume.
                        if mismatch && known_layout {
                            spec.fingerprint(BAD_FINGERPRINT)
                        } else {
                            spec
                        }
                    })
                    .collect();
                let at = slot.index(servers.len() + 1);
                servers.insert(at, honest);
                Case {
                    segments,
                    config: Config {
                        pipeline_depth: depth,
                        stall_timeout: ms(1000),
                        handshake_timeout: ms(1000),
                        backoff_initial: ms(50),
                        backoff_max: ms(800),
                        endgame,
                        max_copies,
                    },
                    known_layout,
                    net: Net {
                        segment_bytes: 32 * KIB,
                        progress_chunks: chunks,
                    },
                    servers,
                }
            },
        )
}

fn honest_index(case: &Case) -> Vec<usize> {
    case.servers
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.fingerprint != BAD_FINGERPRINT
                && s.faults
                    .iter()
                    .all(|f| matches!(f, Fault::Stall { .. } | Fault::Down { back: Some(_), .. }))
        })
        .map(|(i, _)| i)
        .collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

proptest! {
    // 64 cases keep the debug test run short; PROPTEST_CASES=5000 digs deeper.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_fault_script_with_one_honest_server_completes(case in case()) {
        let mut w = if case.known_layout {
            World::resumed(case.config.clone(), case.segments, &[], case.servers.clone(), case.net.clone())
        } else {
            World::new(case.config.clone(), case.segments, case.servers.clone(), case.net.clone())
        };
        w.run(Duration::from_secs(600));
        w.assert_complete();
        w.assert_each_stored_once(&[]);
        for i in honest_index(&case) {
            prop_assert!(
                !matches!(w.sched.server_state(i), ServerState::Blamed(_)),
                "honest server {} blamed: {:?}", i, w.sched.server_state(i)
            );
        }
    }
}
