//! The silence rule: a connection owed data that hears nothing for the laggard limit
//! (`laggard_factor` × the fastest segment time, at least `laggard_floor`) while other
//! connections deliver is dropped at once, in any phase of the job, instead of holding its
//! segments until the tail or `stall_timeout`. It is relative: a lone server, every server
//! stopping together, busy storage or a trickle never trip it. These worlds run with the
//! default 15 s `stall_timeout` (the benchmark's), so that stall and silence are far apart.

use std::time::Duration;

use arsnet_sched::{
    Action, Config, ConnId, DropReason, Layout, Scheduler, SegmentVerdict, ServerState,
};

use crate::world::{ms, Fault, Net, ServerSpec, World, KIB, MIB};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn config() -> Config {
    Config {
        handshake_timeout: ms(1000),
        backoff_initial: ms(100),
        backoff_max: ms(1600),
        ..Config::default()
    }
}

fn drops_of(w: &World, reason: &DropReason) -> Vec<(Duration, usize)> {
    w.log
        .drops
        .iter()
        .filter(|(_, _, r)| r == reason)
        .map(|&(t, s, _)| (t, s))
        .collect()
}

fn assert_none_silent(w: &World) {
    let silent = drops_of(w, &DropReason::Silent);
    assert!(
        silent.is_empty(),
        "silent drops {silent:?} among {:?}",
        w.log.drops
    );
}

/// Four equal servers (2 MiB/s, 64 KiB segments: about 31 ms a segment, so the silence limit
/// is the 2 s floor); the ones in `silent` stop sending at `at` with their sockets open, as
/// a SIGSTOPped process does.
fn stopped_world(segments: u64, silent: &[usize], at: Duration) -> World {
    let specs = (0..4)
        .map(|i| {
            let spec = ServerSpec::new(2 * MIB, ms(5));
            if silent.contains(&i) {
                spec.fault(Fault::Stall { at })
            } else {
                spec
            }
        })
        .collect();
    World::new(config(), segments, specs, Net::default())
}

#[test]
fn a_server_stopped_half_way_loses_its_segments_after_the_silence_limit() {
    // 2000 segments take about 16 s on 8 MiB/s; server 2 stops at 8 s. Without the rule its
    // four segments would wait for the tail (about 18 s) or the 15 s stall timeout.
    let stop = secs(8.0);
    let mut w = stopped_world(2000, &[2], stop);
    w.run_until(stop + ms(500));
    let last = w.log.last_data[2].expect("server 2 delivered before it stopped");
    assert!(last <= stop + ms(5), "{last:?}");
    w.run(secs(120.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);

    let floor = config().laggard_floor;
    let silent = drops_of(&w, &DropReason::Silent);
    assert_eq!(
        silent.len(),
        1,
        "one silence drop, of server 2: {:?}",
        w.log.drops
    );
    let (dropped_at, server) = silent[0];
    assert_eq!(server, 2);
    // Due strictly after the limit of silence; the driver woke for it (next_deadline).
    assert_eq!(dropped_at, last + floor + Duration::from_nanos(1));
    assert!(
        drops_of(&w, &DropReason::Stalled).is_empty(),
        "{:?}",
        w.log.drops
    );
    assert!(
        drops_of(&w, &DropReason::TooSlow).is_empty(),
        "{:?}",
        w.log.drops
    );
    let (_, _, lost) = w
        .log
        .lost
        .iter()
        .find(|(t, s, _)| *s == 2 && *t == dropped_at)
        .expect("its segments were returned");
    assert_eq!(lost.len(), 4, "a full pipeline was in flight: {lost:?}");
    for &s in lost {
        let (at, by) = w.first_request(s, dropped_at).expect("re-requested");
        assert_ne!(by, 2);
        // Busy servers free a slot every third of a segment time: within two segment times.
        assert!(
            at < dropped_at + ms(65),
            "segment {s} re-requested at {at:?}"
        );
    }
    // Retried like a stall, and the server (which woke up) serves again.
    let reconnect = w
        .connects_of(2)
        .into_iter()
        .find(|&t| t > dropped_at)
        .expect("retried");
    assert_eq!(reconnect, dropped_at + config().backoff_initial);
    assert!(
        (0..w.log.stores.len())
            .any(|i| w.log.stored_by[i] == Some(2) && w.log.stored_at[i] > Some(reconnect)),
        "the server that woke up does work again"
    );
    assert!(matches!(w.sched.server_state(2), ServerState::Active));
    // Three servers carried the rest: about 4 MiB of the stopped pipeline's worth of delay,
    // not the tail's or the stall's.
    let took = w.log.completed_at.expect("completed");
    assert!(took < secs(17.5), "took {took:?}");
}

#[test]
fn a_lone_server_that_stops_is_dropped_only_after_the_stall_timeout() {
    // Nobody else delivers: its silence may be the network's, so the plain stall timeout
    // decides (no flapping of a single-source job).
    let stop = secs(1.0);
    let spec = ServerSpec::new(2 * MIB, ms(5)).fault(Fault::Stall { at: stop });
    let mut w = World::new(config(), 200, vec![spec], Net::default());
    w.run(secs(60.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    assert_none_silent(&w);
    let stalled = drops_of(&w, &DropReason::Stalled);
    assert_eq!(stalled.len(), 1, "{:?}", w.log.drops);
    // Its last bytes arrived within a segment time of the stop.
    assert!(
        stalled[0].0 >= stop + config().stall_timeout - ms(40),
        "{:?}",
        stalled
    );
}

#[test]
fn servers_all_stopping_at_once_are_not_silent_to_each_other() {
    // Their last bytes arrive a few milliseconds apart: none delivered after another went
    // quiet, so the network (or our side) is the likelier culprit and only the stall
    // timeout applies.
    let stop = secs(1.0);
    let mut w = stopped_world(600, &[0, 1, 2, 3], stop);
    w.run(secs(60.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    assert_none_silent(&w);
    let stalled = drops_of(&w, &DropReason::Stalled);
    assert_eq!(stalled.len(), 4, "{:?}", w.log.drops);
    assert!(stalled
        .iter()
        .all(|&(t, _)| t >= stop + config().stall_timeout - ms(40)));
}

#[test]
fn a_trickling_server_is_not_silent() {
    // Server 3 sends 16 KiB/s: a 64 KiB segment takes 4 s, twice the silence limit, but a
    // progress report arrives every 250 ms. Slow is not silent; only in the tail may the
    // laggard rule take its segments.
    let mut specs: Vec<ServerSpec> = (0..3).map(|_| ServerSpec::new(2 * MIB, ms(5))).collect();
    specs.push(ServerSpec::new(16 * KIB, ms(5)));
    let net = Net {
        progress_chunks: 16,
        ..Net::default()
    };
    let mut w = World::new(config(), 600, specs, net);
    w.run(secs(120.0));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    assert_none_silent(&w);
    assert!(w.log.stores_per_server[3] >= 1, "it did deliver");
    // The tail begins once every segment was handed out.
    let tail = (0..600)
        .filter_map(|s| w.first_request(s, Duration::ZERO).map(|(t, _)| t))
        .max()
        .expect("requested");
    assert!(tail > secs(5.0), "the job is long enough: tail at {tail:?}");
    for &(t, server, ref reason) in &w.log.drops {
        assert!(
            server != 3 || (t >= tail && *reason == DropReason::TooSlow),
            "trickler dropped at {t:?} ({reason:?}), tail at {tail:?}"
        );
    }
}

// ----- scripted: exact deadlines ----------------------------------------------------------

fn layout() -> Layout {
    Layout {
        segment_count: 100,
        size: 0,
        fingerprint: [1; 32],
        content: [1; 32],
    }
}

fn drain(s: &mut Scheduler) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

/// Two servers, pipeline depth 1, far from the tail (100 segments): both deliver their first
/// segment 100 ms after the header (the fastest segment time, so the silence limit is the 2
/// s floor) and are given the next one at 101 ms. Server 0 then goes quiet.
fn two_servers() -> (Scheduler, Vec<ConnId>) {
    let config = Config {
        pipeline_depth: 1,
        ..Config::default()
    };
    started(config, 2, layout())
}

/// `servers` connected with headers at 1 ms; servers 0 and 1 deliver segments 0 and 1 at
/// 101 ms (the fastest segment time, 100 ms) and are given their next work.
fn started(config: Config, servers: usize, layout: Layout) -> (Scheduler, Vec<ConnId>) {
    let mut s = Scheduler::with_layout(config, servers, layout, &[], Duration::ZERO);
    let conns: Vec<ConnId> = drain(&mut s)
        .into_iter()
        .filter_map(|a| match a {
            Action::Connect { conn, .. } => Some(conn),
            _ => None,
        })
        .collect();
    for &c in &conns {
        s.on_header(ms(1), c, layout);
    }
    drain(&mut s);
    assert_eq!(
        s.on_segment(ms(101), conns[0], 0, true),
        SegmentVerdict::Store
    );
    assert_eq!(
        s.on_segment(ms(101), conns[1], 1, true),
        SegmentVerdict::Store
    );
    drain(&mut s);
    (s, conns)
}

/// When server 0, quiet since 101 ms, is due: 2 s of silence, and strictly more.
const DUE: Duration = Duration::from_nanos(2_101_000_001);

#[test]
fn next_deadline_wakes_the_driver_for_a_silence_and_an_earlier_tick_does_nothing() {
    let (mut s, conns) = two_servers();
    let stall = ms(101) + Config::default().stall_timeout;
    assert_eq!(s.next_deadline(), Some(stall), "nobody delivered since");
    // Server 1 delivers; until it has done so half the limit after server 0 went quiet, that
    // is no evidence that server 0 (rather than the network) is silent.
    for t in (200..=1100).step_by(100) {
        s.on_progress(ms(t), conns[1], 4096);
    }
    assert_eq!(s.next_deadline(), Some(stall));
    s.on_progress(ms(1200), conns[1], 4096);
    assert_eq!(s.next_deadline(), Some(DUE));
    for t in (1300..=2100).step_by(100) {
        s.on_progress(ms(t), conns[1], 4096);
    }
    // Ticks before the deadline (the last one a nanosecond early) change nothing.
    s.on_tick(ms(2000));
    s.on_tick(DUE - Duration::from_nanos(1));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.next_deadline(), Some(DUE));
    s.on_tick(DUE);
    assert_eq!(
        drain(&mut s),
        [Action::Disconnect {
            conn: conns[0],
            reason: DropReason::Silent
        }]
    );
    // No spin: the next deadline is server 0's reconnect, not the one just acted on.
    let next = s.next_deadline().expect("a reconnect is due");
    assert!(next > DUE, "{next:?}");
    match s.server_state(0) {
        ServerState::Backoff { last_error, .. } => {
            assert_eq!(last_error, "silent: no data for 2.0 s while others deliver")
        }
        other => panic!("server 0 is {other:?}"),
    }
    // Its segment (2) is the next one the delivering connection takes.
    assert_eq!(
        s.on_segment(ms(2200), conns[1], 3, true),
        SegmentVerdict::Store
    );
    assert_eq!(
        drain(&mut s),
        [Action::Request {
            conn: conns[1],
            segment: 2
        }]
    );
}

#[test]
fn a_tick_late_for_a_silence_still_acts_on_it() {
    // The deadline reported is acted on by any tick at or after it, however late.
    let (mut s, conns) = two_servers();
    for t in (200..=1500).step_by(100) {
        s.on_progress(ms(t), conns[1], 4096);
    }
    assert_eq!(s.next_deadline(), Some(DUE));
    s.on_tick(ms(5000));
    assert_eq!(
        drain(&mut s),
        [Action::Disconnect {
            conn: conns[0],
            reason: DropReason::Silent
        }]
    );
}

#[test]
fn busy_storage_suspends_the_silence_rule() {
    // Our own disk holds the connections: the server is not at fault, however long.
    let (mut s, conns) = two_servers();
    for t in (200..=1500).step_by(100) {
        s.on_progress(ms(t), conns[1], 4096);
    }
    s.on_storage_busy(ms(1500));
    assert_eq!(s.next_deadline(), None, "no silence deadline while busy");
    for t in (1600..=10_000).step_by(100) {
        s.on_progress(ms(t), conns[1], 4096);
        s.on_tick(ms(t));
    }
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.server_state(0), &ServerState::Active);
    // Ready: server 0's clock restarts now, and the rule needs a whole limit again.
    s.on_storage_ready(ms(10_000));
    for t in (10_100..=12_000).step_by(100) {
        s.on_progress(ms(t), conns[1], 4096);
        s.on_tick(ms(t));
    }
    assert!(drain(&mut s).is_empty());
    assert_eq!(
        s.next_deadline(),
        Some(ms(12_000) + Duration::from_nanos(1))
    );
    s.on_tick(ms(12_001));
    assert_eq!(
        drain(&mut s),
        [Action::Disconnect {
            conn: conns[0],
            reason: DropReason::Silent
        }]
    );
}

#[test]
fn a_trickle_of_bytes_mid_job_is_not_silence() {
    // A byte every 1.5 s (never 2 s without one) while server 1 delivers at full speed: far
    // from the tail, slow is nobody's business but the stall timeout's.
    let (mut s, conns) = two_servers();
    let mut segment = 3;
    // 16 s: past the stall timeout, far from the tail (80 of 100 segments).
    for step in 1..=160u64 {
        let now = ms(101 + step * 100);
        s.on_progress(now, conns[1], 4096);
        if step % 15 == 0 {
            s.on_progress(now, conns[0], 1);
        }
        if step % 2 == 0 {
            // Server 1 finishes a segment every 200 ms and is given the next.
            assert_eq!(
                s.on_segment(now, conns[1], segment, true),
                SegmentVerdict::Store
            );
            segment += 1;
        }
        if s.next_deadline().is_some_and(|d| d <= now) {
            s.on_tick(now);
        }
        for action in drain(&mut s) {
            assert!(
                !matches!(action, Action::Disconnect { .. }),
                "at {now:?}: {action:?}"
            );
        }
    }
    assert_eq!(s.server_state(0), &ServerState::Active);
}

#[test]
fn a_refill_after_idling_restarts_the_silence_clock() {
    // An idle connection owes no data: the silence clock of work it is given after idling
    // starts with that work, not with the last byte it received. (No endgame, so that the
    // idle connection stays idle.)
    let config = Config {
        pipeline_depth: 1,
        endgame: false,
        ..Config::default()
    };
    let small = Layout {
        segment_count: 4,
        ..layout()
    };
    // Server 0 delivers 0 and takes 3; server 1 delivers 1 and idles (nothing is left).
    let (mut s, conns) = started(config, 3, small);
    // Servers 0 and 2 keep sending; at 5 s server 2's connection resets, and its segment 2
    // goes to idle server 1.
    for t in (200..=5000).step_by(100) {
        s.on_progress(ms(t), conns[0], 4096);
        s.on_progress(ms(t), conns[2], 4096);
    }
    s.on_disconnected(ms(5000), conns[2], "connection reset");
    assert_eq!(
        drain(&mut s),
        [Action::Request {
            conn: conns[1],
            segment: 2
        }]
    );
    // Server 1 was quiet since 101 ms but owed nothing until 5 s: not silent now, and due
    // only a whole limit after the request.
    s.on_tick(ms(5000));
    assert!(drain(&mut s).is_empty());
    for t in (5100..=7000).step_by(100) {
        s.on_progress(ms(t), conns[0], 4096);
    }
    let drops = |actions: Vec<Action>| -> Vec<Action> {
        actions
            .into_iter()
            .filter(|a| matches!(a, Action::Disconnect { .. }))
            .collect()
    };
    // (The tick also reconnects server 2, whose backoff ended at 5.5 s.)
    s.on_tick(ms(7000));
    assert!(drops(drain(&mut s)).is_empty());
    assert_eq!(s.next_deadline(), Some(ms(7000) + Duration::from_nanos(1)));
    s.on_tick(ms(7000) + Duration::from_nanos(1));
    assert_eq!(
        drops(drain(&mut s)),
        [Action::Disconnect {
            conn: conns[1],
            reason: DropReason::Silent
        }]
    );
}
