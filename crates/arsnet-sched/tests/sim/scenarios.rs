//! Whole-download scenarios on the simulator: each one scripts servers with given speeds and
//! faults and asserts a property the product promises (speed close to the sum of bandwidths,
//! immediate failover, backoff curve, blame, stall detection, endgame, resume, scale).

use std::collections::BTreeSet;
use std::time::Duration;

use arsnet_sched::{Config, DropReason, FailReason, Phase, ServerState};

use crate::world::{ms, Fault, Net, ServerSpec, World, BAD_FINGERPRINT, KIB, MIB};

const SEGMENT: u64 = 64 * KIB;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Time to move `segments` segments at `bandwidth` bytes/s.
fn transfer_time(segments: u64, bandwidth: u64) -> Duration {
    secs((segments * SEGMENT) as f64 / bandwidth as f64)
}

fn config() -> Config {
    Config {
        stall_timeout: ms(2000),
        handshake_timeout: ms(1000),
        backoff_initial: ms(100),
        backoff_max: ms(1600),
        ..Config::default()
    }
}

#[test]
fn uneven_speeds_share_work_by_bandwidth_and_reach_the_sum() {
    let segments = 480;
    let specs: Vec<ServerSpec> = [1, 2, 4, 8]
        .iter()
        .map(|k| ServerSpec::new(k * MIB, ms(5)))
        .collect();
    let mut w = World::new(config(), segments, specs, Net::default());
    w.run(secs(60.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);

    let per = &w.log.stores_per_server;
    assert!(
        per[3] > 4 * per[0],
        "8x server did {} vs 1x {}",
        per[3],
        per[0]
    );
    for i in 1..per.len() {
        assert!(per[i] > per[i - 1], "faster server did less: {per:?}");
    }
    let ideal = transfer_time(segments, 15 * MIB);
    let took = w.log.completed_at.expect("completed");
    assert!(took >= ideal, "faster than physics: {took:?} < {ideal:?}");
    assert!(
        took <= ideal.mul_f64(1.15),
        "took {took:?}, ideal {ideal:?} (sum of bandwidths)"
    );
}

#[test]
fn dead_server_segments_are_requested_before_anything_new() {
    let segments = 400;
    let mut specs: Vec<ServerSpec> = (0..4).map(|_| ServerSpec::new(2 * MIB, ms(5))).collect();
    specs[2] = specs[2].clone().fault(Fault::Down {
        at: secs(1.0),
        back: None,
    });
    let mut w = World::new(config(), segments, specs, Net::default());
    w.run(secs(60.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);

    let &(died, _, ref lost) = w
        .log
        .lost
        .iter()
        .find(|(_, server, _)| *server == 2)
        .expect("server 2 lost its connection");
    assert_eq!(
        died,
        secs(1.0) + ms(5),
        "reset seen one latency after the crash"
    );
    assert_eq!(lost.len(), 4, "a full pipeline was in flight: {lost:?}");
    // Mid-transfer every other pipeline is full, so the lost segments take the next free
    // slots: the first requests after the crash are exactly them, before any new segment.
    let next: BTreeSet<u64> = w
        .log
        .requests
        .iter()
        .filter(|&&(t, _, _)| t >= died)
        .take(lost.len())
        .map(|&(_, _, s)| s)
        .collect();
    assert_eq!(next, lost.iter().copied().collect());
    for &s in lost {
        let (at, by) = w.first_request(s, died).expect("re-requested");
        assert_ne!(by, 2);
        // Three busy servers free a slot every third of a segment time; four slots come
        // free within two segment times.
        assert!(
            at < died + transfer_time(2, 2 * MIB),
            "segment {s} waited until {at:?}"
        );
        assert_ne!(w.log.stored_by[s as usize], Some(2));
    }
    // It never came back: it kept being retried, and never stored anything after the crash.
    assert!(w.connects_of(2).len() > 1);
    assert!(w
        .log
        .stored_at
        .iter()
        .zip(&w.log.stored_by)
        .all(|(t, by)| *by != Some(2) || t.is_some_and(|t| t < died)));
    assert!(matches!(
        w.sched.server_state(2),
        ServerState::Backoff { .. }
    ));
    // Three servers carry on at their full speed.
    let stored_before = w
        .log
        .stored_at
        .iter()
        .flatten()
        .filter(|&&t| t < died)
        .count() as u64;
    let expected = died + transfer_time(segments - stored_before, 6 * MIB);
    let took = w.log.completed_at.expect("completed");
    assert!(
        took <= expected.mul_f64(1.1),
        "took {took:?}, expected about {expected:?}"
    );
}

#[test]
fn dead_server_segments_go_to_idle_slots_at_the_same_instant() {
    // Server 0 is slow and takes segments 0..4; server 1 gets 4 and 5; server 2 gets nothing.
    // With endgame off, servers 1 and 2 sit idle with free slots when server 0 dies.
    let specs = vec![
        ServerSpec::new(64 * KIB, ms(5)).fault(Fault::Down {
            at: ms(100),
            back: None,
        }),
        ServerSpec::new(4 * MIB, ms(5)),
        ServerSpec::new(4 * MIB, ms(5)),
    ];
    let cfg = Config {
        endgame: false,
        ..config()
    };
    let mut w = World::new(cfg, 6, specs, Net::default());
    w.run(secs(30.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    let &(died, _, ref lost) = w.log.lost.first().expect("server 0 died");
    assert_eq!(lost, &[0, 1, 2, 3]);
    for &s in lost {
        let (at, by) = w.first_request(s, died).expect("re-requested");
        assert_eq!(
            at, died,
            "segment {s} re-requested at {at:?}, died at {died:?}"
        );
        assert_ne!(by, 0);
    }
}

#[test]
fn all_servers_dead_then_back_waits_with_capped_doubling_backoff() {
    let segments = 300;
    let (dead, back) = (secs(1.0), secs(8.0));
    let specs: Vec<ServerSpec> = (0..3)
        .map(|_| {
            ServerSpec::new(2 * MIB, ms(5)).fault(Fault::Down {
                at: dead,
                back: Some(back),
            })
        })
        .collect();
    let cfg = config();
    let mut w = World::new(cfg.clone(), segments, specs, Net::default());
    w.run(secs(60.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    assert!(w.saw_phase(&Phase::Waiting), "phases: {:?}", w.log.phases);
    assert!(w
        .log
        .phases
        .iter()
        .any(|(t, p)| *p == Phase::Waiting && *t > dead && *t < back));

    for server in 0..3 {
        let failures: Vec<Duration> = w
            .log
            .disconnected
            .iter()
            .filter(|&&(t, s, _)| s == server && t > dead)
            .map(|&(t, _, _)| t)
            .collect();
        let connects: Vec<Duration> = w
            .connects_of(server)
            .into_iter()
            .filter(|&t| t > dead)
            .collect();
        assert_eq!(
            connects.len(),
            failures.len(),
            "every failure is followed by one retry"
        );
        let delays: Vec<Duration> = failures
            .iter()
            .zip(&connects)
            .map(|(f, c)| *c - *f)
            .collect();
        let expected: Vec<Duration> = (0..delays.len() as u32).map(|a| cfg.backoff(a)).collect();
        assert_eq!(delays, expected, "server {server}");
        assert_eq!(
            expected[..5],
            [ms(100), ms(200), ms(400), ms(800), ms(1600)]
        );
        assert!(
            delays.iter().filter(|&&d| d == cfg.backoff_max).count() >= 2,
            "cap held"
        );
        let last = *connects.last().expect("reconnected");
        assert!(last >= back && last <= back + cfg.backoff_max + ms(10));
    }
    // Nothing was stored while every server was down.
    assert!(w
        .log
        .stored_at
        .iter()
        .flatten()
        .all(|&t| t <= dead + ms(5) || t >= back));
}

#[test]
fn corrupt_segment_blames_server_and_is_refetched_elsewhere() {
    let specs = vec![
        ServerSpec::new(2 * MIB, ms(5)),
        ServerSpec::new(2 * MIB, ms(5)).fault(Fault::CorruptNth(2)),
        ServerSpec::new(2 * MIB, ms(5)),
    ];
    let mut w = World::new(config(), 120, specs, Net::default());
    w.run(secs(60.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);

    let &(blamed_at, _, bad) = w
        .log
        .unexpected
        .iter()
        .find(|(_, server, _)| *server == 1)
        .expect("corrupt segment reported");
    assert!(w
        .log
        .drops
        .contains(&(blamed_at, 1, DropReason::CorruptSegment)));
    assert_eq!(
        w.sched.server_state(1),
        &ServerState::Blamed(format!("corrupt segment {bad}"))
    );
    assert!(
        w.connects_of(1).iter().all(|&t| t < blamed_at),
        "blamed server contacted again"
    );
    let by = w.log.stored_by[bad as usize].expect("refetched");
    assert_ne!(by, 1);
    assert!(w
        .log
        .requests
        .iter()
        .all(|&(t, s, _)| s != 1 || t < blamed_at));
}

#[test]
fn corrupt_only_server_fails_the_job() {
    let specs = vec![ServerSpec::new(2 * MIB, ms(5)).fault(Fault::CorruptNth(3))];
    let mut w = World::new(config(), 50, specs, Net::default());
    w.run(secs(60.0));
    w.assert_no_violations();
    assert_eq!(w.sched.phase(), Phase::Failed(FailReason::AllBlamed));
    assert_eq!(
        w.connects_of(0).len(),
        1,
        "a blamed server is never retried"
    );
    assert_eq!(w.sched.next_deadline(), None);
    assert!(w.log.stores.iter().all(|&n| n <= 1));
    assert_eq!(w.log.stores.iter().filter(|&&n| n == 1).count(), 3);
}

#[test]
fn mismatching_header_is_blamed_and_the_others_complete() {
    let specs = vec![
        ServerSpec::new(2 * MIB, ms(5)),
        ServerSpec::new(2 * MIB, ms(5)),
        ServerSpec::new(2 * MIB, ms(20)).fingerprint(BAD_FINGERPRINT),
    ];
    let mut w = World::new(config(), 100, specs, Net::default());
    w.run(secs(60.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    // Two of three announced the honest content: the strict majority decides, once the
    // third header is in (at 40 ms), and the minority is blamed for it.
    assert!(
        matches!(w.sched.server_state(2), ServerState::Blamed(r) if r.contains("other content") && r.contains("majority")),
        "{:?}",
        w.sched.server_state(2)
    );
    assert!(w
        .log
        .drops
        .iter()
        .any(|(t, s, r)| *s == 2 && *r == DropReason::HeaderMismatch && *t == ms(40)));
    assert_eq!(w.connects_of(2).len(), 1);
    assert!(w.log.requests.iter().all(|&(_, s, _)| s != 2));
    assert_eq!(
        w.sched.layout().map(|l| l.fingerprint),
        Some(w.layout.fingerprint)
    );
}

#[test]
fn mismatching_header_is_blamed_even_when_first_if_layout_is_known() {
    let specs = vec![
        ServerSpec::new(2 * MIB, ms(1)).fingerprint(BAD_FINGERPRINT),
        ServerSpec::new(2 * MIB, ms(5)),
    ];
    let mut w = World::resumed(config(), 100, &[], specs, Net::default());
    w.run(secs(60.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    assert!(
        matches!(w.sched.server_state(0), ServerState::Blamed(r) if r.contains("other content") && r.contains("job's")),
        "{:?}",
        w.sched.server_state(0)
    );
    assert!(w.log.requests.iter().all(|&(_, s, _)| s != 0));
}

#[test]
fn stalled_server_is_dropped_after_stall_timeout_and_retried_after_backoff() {
    let cfg = Config {
        backoff_initial: ms(500),
        ..config()
    };
    let stall_at = secs(1.0);
    let specs = vec![
        ServerSpec::new(2 * MIB, ms(5)).fault(Fault::Stall { at: stall_at }),
        ServerSpec::new(2 * MIB, ms(5)),
        ServerSpec::new(2 * MIB, ms(5)),
    ];
    let mut w = World::new(cfg.clone(), 400, specs, Net::default());
    w.run_until(stall_at + ms(500));
    let last_data = w.log.last_data[0].expect("server 0 delivered before stalling");
    assert!(last_data <= stall_at + ms(5));
    w.run(secs(60.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);

    let stalled: Vec<Duration> = w
        .log
        .drops
        .iter()
        .filter(|(_, s, r)| *s == 0 && *r == DropReason::Stalled)
        .map(|(t, _, _)| *t)
        .collect();
    assert_eq!(
        stalled,
        [last_data + cfg.stall_timeout],
        "dropped exactly at the deadline"
    );
    let dropped_at = stalled[0];
    let (_, _, lost) = w
        .log
        .lost
        .iter()
        .find(|(t, s, _)| *s == 0 && *t == dropped_at)
        .expect("its segments were returned");
    assert_eq!(lost.len(), 4);
    for &s in lost {
        let (at, by) = w.first_request(s, dropped_at).expect("re-requested");
        assert_ne!(by, 0);
        // Three busy servers free a slot every third of a segment time; four slots come
        // free within two segment times.
        assert!(
            at < dropped_at + transfer_time(2, 2 * MIB),
            "segment {s} waited until {at:?}"
        );
        assert_ne!(w.log.stored_by[s as usize], Some(0));
    }
    let reconnect = w
        .connects_of(0)
        .into_iter()
        .find(|&t| t > dropped_at)
        .expect("retried");
    assert_eq!(reconnect, dropped_at + cfg.backoff_initial);
    let after = (0..w.log.stores.len())
        .filter(|&i| w.log.stored_by[i] == Some(0) && w.log.stored_at[i] > Some(reconnect))
        .count();
    assert!(after > 0, "the recovered server does work again");
}

/// Slow server (1 s a segment) answers first and so holds the first segments; a fast one
/// (10 ms a segment) does the rest.
fn endgame_world(endgame: bool) -> World {
    let specs = vec![
        ServerSpec::new(SEGMENT, ms(5)),
        ServerSpec::new(100 * SEGMENT, ms(10)),
    ];
    let cfg = Config {
        endgame,
        ..config()
    };
    let mut w = World::new(cfg, 200, specs, Net::default());
    w.run(secs(120.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    w
}

#[test]
fn endgame_duplicates_the_slow_servers_segments_and_first_copy_wins() {
    let w = endgame_world(true);
    let fast_alone = transfer_time(200, 100 * SEGMENT) + ms(20);
    let took = w.log.completed_at.expect("completed");
    assert!(
        took <= fast_alone.mul_f64(1.05),
        "took {took:?}; the fast server alone needs {fast_alone:?}"
    );
    // Segments fetched on both servers: stored once, the losing copy cancelled (or reported
    // as a duplicate) unless the job ended with it.
    let on = |server| -> BTreeSet<u64> {
        w.log
            .requests
            .iter()
            .filter(|r| r.1 == server)
            .map(|r| r.2)
            .collect()
    };
    let both: Vec<u64> = on(0).intersection(&on(1)).copied().collect();
    assert!(!both.is_empty(), "the fast server duplicated something");
    for &s in &both {
        let winner = w.log.stored_by[s as usize].expect("stored");
        let loser = 1 - winner;
        let stored_at = w.log.stored_at[s as usize].expect("stored");
        if stored_at < took {
            let cancelled = w
                .log
                .cancels
                .iter()
                .any(|&(_, srv, seg)| srv == loser && seg == s);
            let duplicate = w
                .log
                .duplicates
                .iter()
                .any(|&(_, srv, seg)| srv == loser && seg == s);
            assert!(
                cancelled || duplicate,
                "segment {s}: loser {loser} not cancelled"
            );
        }
    }
    assert!(w.log.cancels.iter().any(|&(_, srv, _)| srv == 0));
}

#[test]
fn without_endgame_the_slow_server_holds_the_job_up() {
    // The same setup with endgame off: the property above is real, not an artefact.
    let w = endgame_world(false);
    let took = w.log.completed_at.expect("completed");
    assert!(took > secs(3.0), "took {took:?}");
    assert!(w.log.cancels.is_empty());
}

#[test]
fn resume_never_requests_done_segments() {
    let segments = 300;
    let done: Vec<u64> = (0..segments)
        .filter(|s| s % 3 == 0 || (100..150).contains(s))
        .collect();
    let specs = vec![
        ServerSpec::new(2 * MIB, ms(5)),
        ServerSpec::new(3 * MIB, ms(7)),
    ];
    let mut w = World::resumed(config(), segments, &done, specs, Net::default());
    assert_eq!(w.sched.segments_done(), done.len() as u64);
    w.run(secs(60.0));
    w.assert_complete();
    w.assert_each_stored_once(&done);
    let done_set: BTreeSet<u64> = done.iter().copied().collect();
    assert!(w.log.requests.iter().all(|r| !done_set.contains(&r.2)));
}

#[test]
fn resume_of_an_empty_or_finished_layout_is_complete_at_once() {
    for (segments, done) in [(0u64, vec![]), (5, vec![0, 1, 2, 3, 4])] {
        let specs = vec![ServerSpec::new(MIB, ms(5))];
        let w = World::resumed(config(), segments, &done, specs, Net::default());
        assert_eq!(w.sched.phase(), Phase::Complete);
        assert!(
            w.log.connects.is_empty(),
            "nothing to fetch, nobody to call"
        );
        assert_eq!(w.sched.next_deadline(), None);
        assert_eq!(w.log.completed_at, Some(Duration::ZERO));
    }
}

#[test]
fn empty_file_from_a_header_completes_on_that_header() {
    let specs = vec![ServerSpec::new(MIB, ms(5)), ServerSpec::new(MIB, ms(9))];
    let mut w = World::new(config(), 0, specs, Net::default());
    w.run(secs(10.0));
    w.assert_complete();
    // Unpinned, the content is decided once both servers answered (the slower at 18 ms).
    assert_eq!(w.log.completed_at, Some(ms(18)));
    assert!(w.log.requests.is_empty());
}

#[test]
fn two_thousand_servers_and_a_hundred_thousand_segments() {
    let segments = 100_000;
    let specs: Vec<ServerSpec> = (0..2000u64)
        .map(|i| ServerSpec::new((1 + i % 7) * 256 * KIB, ms(1 + i % 20)))
        .collect();
    let net = Net {
        progress_chunks: 1,
        ..Net::default()
    };
    let mut w = World::new(config(), segments, specs, net);
    w.run(secs(600.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    let sum: u64 = (0..2000u64).map(|i| (1 + i % 7) * 256 * KIB).sum();
    let took = w.log.completed_at.expect("completed");
    assert!(
        took <= transfer_time(segments, sum).mul_f64(1.15) + ms(100),
        "took {took:?}"
    );
}
