//! Property test: whatever the fault script — servers crashing with or without coming back,
//! stalling, sending corrupt segments, announcing other content — as long as one honest
//! server never dies for good, the job completes, every segment is stored exactly once, and
//! the scheduler never addresses a connection it already knows is gone.

use std::time::Duration;

use arsnet_sched::{Action, Config, ConnId, Layout, Phase, Scheduler, ServerState};
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
                        // The content is known (resume) or pinned, so a server announcing
                        // other content is always the one blamed.
                        if mismatch {
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
                        election_window: ms(500),
                        // Unlimited: the honest server may be down for longer than a few
                        // tries at first, and this property is about it being waited for.
                        // Giving up is a property of its own (scenarios' `giving_up`).
                        max_tries: 0,
                        ..Config::default()
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
        completes(&case)?;
    }

    /// The same with the default 15 s stall timeout: servers that stop while others deliver
    /// are caught by the silence rule long before their stall, and nothing else changes
    /// (the simulator also checks that no deadline is left due after a tick).
    #[test]
    fn any_fault_script_completes_when_silence_catches_the_stalls(mut case in case()) {
        case.config.stall_timeout = Config::default().stall_timeout;
        completes(&case)?;
    }
}

fn completes(case: &Case) -> Result<(), TestCaseError> {
    let mut w = if case.known_layout {
        World::resumed(
            case.config.clone(),
            case.segments,
            &[],
            case.servers.clone(),
            case.net.clone(),
        )
    } else {
        World::pinned(
            case.config.clone(),
            case.segments,
            case.servers.clone(),
            case.net.clone(),
        )
    };
    w.run(Duration::from_secs(600));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    for i in honest_index(case) {
        prop_assert!(
            !matches!(w.sched.server_state(i), ServerState::Blamed(_)),
            "honest server {} blamed: {:?}",
            i,
            w.sched.server_state(i)
        );
    }
    Ok(())
}

/// One server of an election: the content it announces (0..3), or `None` if it never
/// answers (refused), and when its answer arrives.
fn voter() -> impl Strategy<Value = (Option<u8>, u64)> {
    (prop::option::weighted(0.85, 0u8..3), 0u64..4000)
}

fn layout_of(content: u8) -> Layout {
    Layout {
        segment_count: 10,
        size: 0,
        fingerprint: [content; 32],
        content: [content; 32],
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() * 4, ..ProptestConfig::default() })]

    /// Without a pin, the content is decided by a strict majority of the servers that
    /// answered within the window (never by who answered first); without one the job fails
    /// naming every content and its servers; minority servers are blamed, never used.
    #[test]
    fn election_follows_the_strict_majority_of_those_who_answered(voters in prop::collection::vec(voter(), 1..9)) {
        let window = ms(2000);
        let config = Config { election_window: window, ..Config::default() };
        let mut sched = Scheduler::new(config, voters.len(), Duration::ZERO);
        let mut conns: Vec<ConnId> = Vec::new();
        while let Some(action) = sched.poll_action() {
            if let Action::Connect { conn, .. } = action {
                conns.push(conn);
            }
        }
        prop_assert_eq!(conns.len(), voters.len());
        let mut order: Vec<usize> = (0..voters.len()).collect();
        order.sort_by_key(|&i| voters[i].1);
        let first_answer = order.iter().find(|&&i| voters[i].0.is_some()).map(|&i| voters[i].1);
        let mut counted: Vec<(usize, u8)> = Vec::new();
        for &i in &order {
            let at = ms(voters[i].1);
            sched.on_tick(at);
            let decided = sched.layout().is_some() || matches!(sched.phase(), Phase::Disagreement(_));
            match voters[i].0 {
                Some(content) => {
                    sched.on_header(at, conns[i], layout_of(content));
                    let in_window = first_answer.is_some_and(|f| voters[i].1 < f + 2000);
                    if !decided && in_window {
                        counted.push((i, content));
                    }
                }
                None => sched.on_disconnected(at, conns[i], "refused"),
            }
            while sched.poll_action().is_some() {}
        }
        sched.on_tick(ms(10_000));
        if counted.is_empty() {
            prop_assert!(sched.layout().is_none());
            return Ok(());
        }
        let total = counted.len();
        let majority = (0..3u8).find(|c| counted.iter().filter(|(_, v)| v == c).count() * 2 > total);
        match majority {
            Some(winner) => {
                prop_assert_eq!(sched.layout().map(|l| l.content), Some([winner; 32]));
                for &(i, content) in &counted {
                    let state = sched.server_state(i).clone();
                    if content == winner {
                        prop_assert!(matches!(state, ServerState::Active), "{} {:?}", i, state);
                    } else {
                        prop_assert!(matches!(&state, ServerState::Blamed(r) if r.contains("other content")), "{} {:?}", i, state);
                    }
                }
            }
            None => match sched.phase() {
                Phase::Disagreement(votes) => {
                    let named: usize = votes.iter().map(|v| v.servers.len()).sum();
                    prop_assert_eq!(named, total);
                    prop_assert!(votes.len() >= 2);
                }
                other => prop_assert!(false, "expected a disagreement, got {:?}", other),
            },
        }
    }
}
