//! Scripted event sequences against the public API, no simulator: the corners a network
//! never produces on purpose but a buggy driver or hostile server might (stale and unknown
//! ids, segments nobody asked for, events after the end, absurd layouts and times), plus the
//! exact timer behaviour.

use std::time::Duration;

use arsnet_sched::{
    Action, Config, ConnId, DropReason, FailReason, Layout, Phase, Scheduler, SegmentVerdict,
    ServerState, ServerStats, ALL_BLAMED, NO_SERVERS,
};

use crate::world::ms;

const T0: Duration = Duration::ZERO;

fn layout(segments: u64) -> Layout {
    Layout {
        segment_count: segments,
        size: 0,
        fingerprint: [1; 32],
        content: [1; 32],
    }
}

fn drain(s: &mut Scheduler) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn connects(actions: &[Action]) -> Vec<ConnId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Connect { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}

fn requests(actions: &[Action]) -> Vec<(ConnId, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { conn, segment } => Some((*conn, *segment)),
            _ => None,
        })
        .collect()
}

/// A scheduler of `servers` servers, all with accepted headers of a `segments` layout.
fn running(config: Config, servers: usize, segments: u64) -> (Scheduler, Vec<ConnId>, Vec<Action>) {
    let mut s = Scheduler::new(config, servers, T0);
    let conns = connects(&drain(&mut s));
    for &c in &conns {
        s.on_header(ms(1), c, layout(segments));
    }
    let actions = drain(&mut s);
    (s, conns, actions)
}

#[test]
fn connects_every_server_with_distinct_ids() {
    let mut s = Scheduler::new(Config::default(), 3, T0);
    let actions = drain(&mut s);
    assert_eq!(actions.len(), 3);
    let conns = connects(&actions);
    assert_eq!(conns.len(), 3);
    assert!(conns[0] != conns[1] && conns[1] != conns[2] && conns[0] != conns[2]);
    assert_eq!(s.phase(), Phase::Running);
    assert_eq!(s.layout(), None);
    assert_eq!(s.segment_count(), None);
    assert_eq!(s.server_state(1), &ServerState::Connecting);
    assert_eq!(s.next_deadline(), Some(Config::default().handshake_timeout));
}

#[test]
fn first_header_sets_layout_and_fills_the_pipeline_in_order() {
    let (s, conns, actions) = running(Config::default(), 2, 10);
    assert_eq!(s.layout(), Some(layout(10)));
    assert_eq!(
        requests(&actions),
        [
            (conns[0], 0),
            (conns[0], 1),
            (conns[0], 2),
            (conns[0], 3),
            (conns[1], 4),
            (conns[1], 5),
            (conns[1], 6),
            (conns[1], 7)
        ]
    );
    assert_eq!(s.server_state(0), &ServerState::Active);
    assert_eq!(s.server_stats(0).in_flight, 4);
}

#[test]
fn stale_and_unknown_connection_ids_are_ignored() {
    let (mut s, conns, _) = running(Config::default(), 2, 10);
    s.on_disconnected(ms(5), conns[0], "reset");
    // Its four segments went to... nobody yet: server 1's pipeline is full.
    assert!(drain(&mut s).is_empty());
    let state = s.server_state(0).clone();
    assert!(matches!(state, ServerState::Backoff { attempt: 1, .. }));
    for stale in [conns[0], ConnId(999_999)] {
        s.on_header(ms(6), stale, layout(10));
        s.on_progress(ms(6), stale, 100);
        assert_eq!(
            s.on_segment(ms(6), stale, 0, true),
            SegmentVerdict::Unexpected
        );
        assert_eq!(
            s.on_segment(ms(6), stale, 0, false),
            SegmentVerdict::Unexpected
        );
        s.on_cancelled(ms(6), stale, 1);
        s.on_disconnected(ms(6), stale, "again");
        assert!(
            drain(&mut s).is_empty(),
            "stale id {stale:?} caused actions"
        );
        assert_eq!(s.server_state(0), &state);
    }
    assert_eq!(s.server_stats(0).failures, 1);
    // Server 1 finishing a segment picks up the lowest returned one.
    assert_eq!(
        s.on_segment(ms(7), conns[1], 4, true),
        SegmentVerdict::Store
    );
    assert_eq!(requests(&drain(&mut s)), [(conns[1], 0)]);
}

#[test]
fn unrequested_or_out_of_range_segment_is_a_protocol_drop() {
    for bogus in [9, 1000, u64::MAX] {
        let (mut s, conns, _) = running(Config::default(), 2, 10);
        assert_eq!(
            s.on_segment(ms(2), conns[0], 3, true),
            SegmentVerdict::Store
        );
        drain(&mut s);
        assert_eq!(
            s.on_segment(ms(3), conns[0], bogus, true),
            SegmentVerdict::Unexpected
        );
        let actions = drain(&mut s);
        assert_eq!(
            actions,
            [Action::Disconnect {
                conn: conns[0],
                reason: DropReason::Protocol(format!("unexpected segment {bogus}"))
            }]
        );
        assert!(matches!(s.server_state(0), ServerState::Backoff { .. }));
        assert!(!s.is_done(bogus));
    }
}

#[test]
fn events_after_completion_change_nothing() {
    let (mut s, conns, _) = running(Config::default(), 2, 3);
    // Server 0 holds 0..3, server 1 duplicates (endgame) the oldest of them.
    assert_eq!(
        s.on_segment(ms(2), conns[0], 0, true),
        SegmentVerdict::Store
    );
    assert_eq!(
        s.on_segment(ms(3), conns[0], 1, true),
        SegmentVerdict::Store
    );
    drain(&mut s);
    assert_eq!(
        s.on_segment(ms(4), conns[0], 2, true),
        SegmentVerdict::Store
    );
    assert_eq!(s.phase(), Phase::Complete);
    assert!(
        drain(&mut s).is_empty(),
        "no cancel for copies once complete"
    );
    assert_eq!(s.next_deadline(), None);
    assert_eq!(
        s.on_segment(ms(5), conns[1], 2, true),
        SegmentVerdict::Duplicate
    );
    assert_eq!(
        s.on_segment(ms(5), conns[1], 7, true),
        SegmentVerdict::Unexpected
    );
    assert_eq!(
        s.on_segment(ms(5), conns[1], 1, false),
        SegmentVerdict::Duplicate
    );
    s.on_disconnected(ms(6), conns[1], "bye");
    s.on_tick(Duration::from_secs(3600));
    s.retry_now(Duration::from_secs(3600));
    s.on_header(ms(7), conns[1], layout(99));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.phase(), Phase::Complete);
    assert_eq!(s.segments_done(), 3);
}

#[test]
fn handshake_timeout_drops_and_reconnects_after_backoff() {
    let config = Config::default();
    let mut s = Scheduler::new(config.clone(), 1, T0);
    let first = connects(&drain(&mut s))[0];
    s.on_tick(config.handshake_timeout - ms(1));
    assert!(drain(&mut s).is_empty(), "not yet");
    s.on_tick(config.handshake_timeout);
    assert_eq!(
        drain(&mut s),
        [Action::Disconnect {
            conn: first,
            reason: DropReason::HandshakeTimeout
        }]
    );
    let until = config.handshake_timeout + config.backoff_initial;
    assert!(matches!(
        s.server_state(0),
        ServerState::Backoff { until: u, attempt: 1, .. } if *u == until
    ));
    assert_eq!(s.phase(), Phase::Waiting);
    assert_eq!(s.next_deadline(), Some(until));
    s.on_tick(until);
    let again = connects(&drain(&mut s));
    assert_eq!(again.len(), 1);
    assert_ne!(again[0], first);
    assert_eq!(s.phase(), Phase::Running);
}

#[test]
fn a_handshake_waiting_for_a_siblings_table_is_not_silent_until_the_wait_ends() {
    let config = Config::default();
    let mut s = Scheduler::new(config.clone(), 1, T0);
    let conn = connects(&drain(&mut s))[0];
    s.on_table_wait(ms(5), conn, true);
    assert_eq!(s.next_deadline(), None, "no timer while it waits");
    s.on_tick(config.handshake_timeout * 10);
    assert!(drain(&mut s).is_empty(), "waiting is not silence");
    assert_eq!(s.server_state(0), &ServerState::Connecting);
    // The turn came (the sibling finished or died): silence counts again, from now.
    let resumed = config.handshake_timeout * 10;
    s.on_table_wait(resumed, conn, false);
    assert_eq!(s.next_deadline(), Some(resumed + config.handshake_timeout));
    s.on_tick(resumed + config.handshake_timeout - ms(1));
    assert!(drain(&mut s).is_empty(), "not yet");
    s.on_tick(resumed + config.handshake_timeout);
    assert_eq!(
        drain(&mut s),
        [Action::Disconnect {
            conn,
            reason: DropReason::HandshakeTimeout
        }]
    );
}

#[test]
fn backoff_doubles_and_resets_only_after_a_delivered_segment() {
    let config = Config::default();
    let mut s = Scheduler::new(config.clone(), 1, T0);
    let mut conn = connects(&drain(&mut s))[0];
    let mut now = T0;
    let mut delays = Vec::new();
    for _ in 0..3 {
        s.on_disconnected(now, conn, "refused");
        let until = s.next_deadline().expect("backoff timer");
        delays.push(until - now);
        now = until;
        s.on_tick(now);
        conn = connects(&drain(&mut s))[0];
    }
    assert_eq!(delays, [ms(500), ms(1000), ms(2000)]);
    // A header alone does not end the streak: a server that closes right after every
    // header keeps backing off instead of being redialled every 500 ms forever.
    s.on_header(now, conn, layout(5));
    drain(&mut s);
    s.on_disconnected(now, conn, "reset");
    assert_eq!(s.next_deadline(), Some(now + ms(4000)));
    now += ms(4000);
    s.on_tick(now);
    conn = connects(&drain(&mut s))[0];
    // A delivered segment does.
    s.on_header(now, conn, layout(5));
    let asked = requests(&drain(&mut s));
    assert_eq!(
        s.on_segment(now, conn, asked[0].1, true),
        SegmentVerdict::Store
    );
    s.on_disconnected(now, conn, "reset");
    assert_eq!(s.next_deadline(), Some(now + config.backoff_initial));
    assert_eq!(s.server_stats(0).failures, 5);
}

#[test]
fn retry_now_reconnects_servers_in_backoff_but_not_blamed_ones() {
    let (mut s, conns, _) = running(Config::default(), 3, 20);
    s.on_disconnected(ms(2), conns[0], "reset");
    assert_eq!(
        s.on_segment(ms(2), conns[1], 4, false),
        SegmentVerdict::Unexpected
    );
    drain(&mut s);
    s.retry_now(ms(3));
    let actions = drain(&mut s);
    assert!(
        matches!(actions.as_slice(), [Action::Connect { server: 0, .. }]),
        "{actions:?}"
    );
    assert_eq!(
        s.server_state(1),
        &ServerState::Blamed("corrupt segment 4".into())
    );
    assert_eq!(s.server_state(0), &ServerState::Connecting);
}

#[test]
fn phases_waiting_and_failed() {
    let (mut s, conns, _) = running(Config::default(), 2, 20);
    s.on_disconnected(ms(2), conns[0], "reset");
    assert_eq!(s.phase(), Phase::Running);
    s.on_segment(ms(2), conns[1], 4, false);
    assert_eq!(s.phase(), Phase::Waiting);
    s.on_tick(s.next_deadline().expect("reconnect timer"));
    let conn = connects(&drain(&mut s))[0];
    s.on_header(Duration::from_secs(1), conn, layout(21));
    assert_eq!(s.phase(), Phase::Failed(FailReason::AllBlamed));
    assert_eq!(FailReason::AllBlamed.to_string(), ALL_BLAMED);
    assert_eq!(s.next_deadline(), None);

    let none = Scheduler::new(Config::default(), 0, T0);
    assert_eq!(none.phase(), Phase::Failed(FailReason::NoServers));
    assert_eq!(FailReason::NoServers.to_string(), NO_SERVERS);
    let finished = Scheduler::with_layout(Config::default(), 0, layout(2), &[0, 1], T0);
    assert_eq!(finished.phase(), Phase::Complete);
}

#[test]
fn queries_outside_the_server_list_are_safe() {
    let s = Scheduler::new(Config::default(), 2, T0);
    assert_eq!(s.server_state(2), &ServerState::Idle);
    assert_eq!(s.server_state(usize::MAX), &ServerState::Idle);
    assert_eq!(s.server_stats(7), ServerStats::default());
    assert!(!s.is_done(0));
    assert_eq!(s.server_count(), 2);
}

#[test]
fn unsolicited_cancel_returns_the_segment_but_is_not_progress() {
    let config = Config {
        pipeline_depth: 1,
        ..Config::default()
    };
    let (mut s, conns, _) = running(config.clone(), 1, 5);
    // The server keeps refusing segment 0: it is re-requested, but the stall clock that
    // started with the first request keeps running.
    for i in 0..5 {
        s.on_cancelled(ms(10 + i), conns[0], 0);
        assert_eq!(requests(&drain(&mut s)), [(conns[0], 0)]);
    }
    assert_eq!(s.next_deadline(), Some(ms(1) + config.stall_timeout));
    s.on_tick(ms(1) + config.stall_timeout);
    assert_eq!(
        drain(&mut s),
        [Action::Disconnect {
            conn: conns[0],
            reason: DropReason::Stalled
        }]
    );
}

#[test]
fn cancelled_copy_frees_its_slot_without_returning_the_segment() {
    let (mut s, conns, _) = running(Config::default(), 2, 5);
    // Server 0 holds 0..4, server 1 holds 4. Only once server 1 is idle does it copy the
    // oldest outstanding segment (0).
    assert_eq!(
        s.on_segment(ms(2), conns[1], 4, true),
        SegmentVerdict::Store
    );
    assert_eq!(requests(&drain(&mut s)), [(conns[1], 0)]);
    assert_eq!(
        s.on_segment(ms(3), conns[1], 0, true),
        SegmentVerdict::Store
    );
    let actions = drain(&mut s);
    assert_eq!(
        actions[0],
        Action::Cancel {
            conn: conns[0],
            segment: 0
        }
    );
    // Idle again: server 1 copies the next oldest, segment 1.
    assert_eq!(requests(&actions), [(conns[1], 1)]);
    assert_eq!(
        s.server_stats(0).in_flight,
        4,
        "slot busy until the server answers"
    );
    s.on_cancelled(ms(4), conns[0], 0);
    // Server 0 still has work in flight, so it takes no copy; segment 0 stays done.
    assert!(requests(&drain(&mut s)).is_empty());
    assert!(s.is_done(0));
    assert_eq!(s.server_stats(0).in_flight, 3);
    // Server 0 delivers 1 first; server 1's copy is then a duplicate, never stored twice.
    assert_eq!(
        s.on_segment(ms(5), conns[0], 1, true),
        SegmentVerdict::Store
    );
    drain(&mut s);
    assert_eq!(
        s.on_segment(ms(6), conns[1], 1, true),
        SegmentVerdict::Duplicate
    );
    assert_eq!(s.server_stats(0).segments_done, 1);
    assert_eq!(s.server_stats(1).segments_done, 2);
}

#[test]
fn endgame_respects_max_copies() {
    let (s, _, actions) = running(Config::default(), 3, 1);
    let reqs = requests(&actions);
    assert_eq!(reqs.len(), 2, "one original plus one copy: {reqs:?}");
    assert!(reqs.iter().all(|&(_, seg)| seg == 0));
    assert_eq!(s.server_stats(2).in_flight, 0);

    let (_, _, actions) = running(
        Config {
            max_copies: 3,
            ..Config::default()
        },
        4,
        1,
    );
    assert_eq!(requests(&actions).len(), 3);
    let (_, _, actions) = running(
        Config {
            endgame: false,
            ..Config::default()
        },
        3,
        1,
    );
    assert_eq!(requests(&actions).len(), 1);
}

#[test]
fn repeated_header_is_ignored_and_a_changed_one_blamed() {
    let (mut s, conns, _) = running(Config::default(), 2, 10);
    s.on_header(ms(2), conns[0], layout(10));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.server_stats(0).in_flight, 4);
    s.on_header(ms(3), conns[0], layout(11));
    assert_eq!(
        drain(&mut s),
        [Action::Disconnect {
            conn: conns[0],
            reason: DropReason::HeaderMismatch
        }]
    );
    assert_eq!(
        s.server_state(0),
        &ServerState::Blamed("serves the content under another name or segment layout".into())
    );
}

#[test]
fn segment_before_header_is_a_protocol_drop_and_corrupt_one_blames() {
    let mut s = Scheduler::new(Config::default(), 2, T0);
    let conns = connects(&drain(&mut s));
    assert_eq!(
        s.on_segment(ms(1), conns[0], 0, true),
        SegmentVerdict::Unexpected
    );
    assert!(matches!(s.server_state(0), ServerState::Backoff { .. }));
    assert_eq!(
        s.on_segment(ms(1), conns[1], 0, false),
        SegmentVerdict::Unexpected
    );
    assert_eq!(
        s.server_state(1),
        &ServerState::Blamed("corrupt segment 0".into())
    );
}

#[test]
fn huge_layouts_are_cheap() {
    // A hostile header announcing 2^64-1 segments allocates nothing up front.
    let (mut s, conns, actions) = running(Config::default(), 1, u64::MAX);
    assert_eq!(requests(&actions).len(), 4);
    assert_eq!(
        s.on_segment(ms(2), conns[0], 2, true),
        SegmentVerdict::Store
    );
    assert_eq!(requests(&drain(&mut s)), [(conns[0], 4)]);

    // Resume of 4 Mi segments with only the last three missing.
    let count = 4 * 1024 * 1024;
    let done: Vec<u64> = (0..count - 3).collect();
    let mut s = Scheduler::with_layout(Config::default(), 1, layout(count), &done, T0);
    let conn = connects(&drain(&mut s))[0];
    s.on_header(ms(1), conn, layout(count));
    let segs: Vec<u64> = requests(&drain(&mut s)).iter().map(|r| r.1).collect();
    assert_eq!(segs, [count - 3, count - 2, count - 1]);
    for (i, seg) in segs.into_iter().enumerate() {
        assert_eq!(
            s.on_segment(ms(2 + i as u64), conn, seg, true),
            SegmentVerdict::Store
        );
    }
    assert_eq!(s.phase(), Phase::Complete);
}

#[test]
fn time_at_the_end_of_duration_does_not_overflow() {
    let end = Duration::MAX;
    let mut s = Scheduler::new(Config::default(), 2, end);
    let conns = connects(&drain(&mut s));
    assert_eq!(s.next_deadline(), Some(end));
    s.on_header(end, conns[0], layout(3));
    s.on_disconnected(end, conns[1], "refused");
    s.on_progress(end, conns[0], 1);
    s.on_tick(end);
    s.retry_now(end);
    // Time going backwards is tolerated too.
    s.on_tick(T0);
    s.on_segment(T0, conns[0], 0, true);
    drain(&mut s);
    assert!(matches!(s.phase(), Phase::Running | Phase::Waiting));
}

#[test]
fn tricklers_holding_the_last_segment_lose_it_to_idle_servers() {
    tricklers_lose_the_last_segment(false);
}

#[test]
fn tricklers_lose_it_with_a_driver_that_ticks_only_when_the_deadline_is_due() {
    // The real driver calls on_tick only when next_deadline() is reached: the laggard rule
    // must put its own deadline there, or it never runs.
    tricklers_lose_the_last_segment(true);
}

fn tricklers_lose_the_last_segment(tick_only_when_due: bool) {
    // Two servers hold both copies of the last segment and send a byte now and then (never
    // stalling by the clock), while two others sit idle: the tricklers must lose it.
    let config = Config {
        pipeline_depth: 1,
        max_copies: 2,
        ..Config::default()
    };
    let mut s = Scheduler::with_layout(config, 4, layout(2), &[], T0);
    let conns = connects(&drain(&mut s));
    s.on_header(T0, conns[0], layout(2));
    s.on_header(T0, conns[1], layout(2));
    assert_eq!(requests(&drain(&mut s)), [(conns[0], 0), (conns[1], 1)]);
    // Server 1 is quick with its first segment, then takes a copy of segment 0.
    assert_eq!(
        s.on_segment(ms(10), conns[1], 1, true),
        SegmentVerdict::Store
    );
    assert_eq!(requests(&drain(&mut s)), [(conns[1], 0)]);
    // The other two arrive: nothing is left for them to take.
    s.on_header(ms(20), conns[2], layout(2));
    s.on_header(ms(20), conns[3], layout(2));
    assert!(requests(&drain(&mut s)).is_empty());
    let mut moved_at = None;
    let mut dropped = Vec::new();
    for step in 1..=600u64 {
        let now = ms(20 + step * 100);
        s.on_progress(now, conns[0], 1);
        s.on_progress(now, conns[1], 1);
        if !tick_only_when_due || s.next_deadline().is_some_and(|d| d <= now) {
            s.on_tick(now);
        }
        for action in drain(&mut s) {
            match action {
                Action::Request { conn, segment: 0 } if conn == conns[2] || conn == conns[3] => {
                    moved_at.get_or_insert(now);
                }
                Action::Disconnect { conn, reason } => dropped.push((conn, reason)),
                _ => {}
            }
        }
    }
    let moved_at = moved_at.expect("segment 0 never left the tricklers");
    // Not before the floor (2 s of work on one segment), and soon after it.
    assert!(
        moved_at >= ms(2000) && moved_at <= ms(2500),
        "moved at {moved_at:?}"
    );
    assert!(
        dropped.contains(&(conns[0], DropReason::TooSlow)),
        "{dropped:?}"
    );
    assert!(
        dropped.contains(&(conns[1], DropReason::TooSlow)),
        "{dropped:?}"
    );
    // Retried later like any failure, not blamed: slow is not dishonest.
    assert!(!matches!(s.server_state(0), ServerState::Blamed(_)));
    assert!(s.server_stats(0).failures >= 1);
}

#[test]
fn a_busy_server_is_retried_never_given_up() {
    // It answers every attempt with ERROR "busy" (the driver reports it as answered): it
    // works and is full, so it is retried with backoff however often that happens.
    let config = Config {
        max_tries: 2,
        ..Config::default()
    };
    let mut s = Scheduler::new(config, 1, T0);
    let mut now = T0;
    for _ in 0..6 {
        let conns = connects(&drain(&mut s));
        assert_eq!(conns.len(), 1, "reconnected: {:?}", s.server_state(0));
        s.on_answered(conns[0]);
        s.on_disconnected(now, conns[0], "server error: server busy");
        now = s.next_deadline().expect("a retry is due");
        s.on_tick(now);
    }
    assert!(!matches!(s.phase(), Phase::Failed(_)), "{:?}", s.phase());
    assert!(!matches!(s.server_state(0), ServerState::GaveUp { .. }));
}

#[test]
fn a_minority_of_another_size_is_blamed_with_both_sizes() {
    // HTTP mirrors of a job of mirrors alone differ in nothing but their size.
    let sized = |size: u64| Layout { size, ..layout(4) };
    let mut s = Scheduler::new(Config::default(), 3, T0);
    let conns = connects(&drain(&mut s));
    s.on_header(ms(1), conns[0], sized(4 << 20));
    s.on_header(
        ms(2),
        conns[1],
        Layout {
            fingerprint: [2; 32],
            ..sized(5 << 20)
        },
    );
    s.on_header(ms(3), conns[2], sized(4 << 20));
    assert_eq!(s.layout(), Some(sized(4 << 20)));
    assert!(
        matches!(s.server_state(1), ServerState::Blamed(r) if r == "serves a file of 5242880 bytes, the majority's is 4194304 bytes"),
        "{:?}",
        s.server_state(1)
    );
}

#[test]
fn an_excluded_server_is_blamed_and_never_dialled_again() {
    // A repair run: two segments to fetch again, and the server that delivered them bad is
    // excluded before its queued attempt is carried out.
    let mut s = Scheduler::with_layout(Config::default(), 3, layout(4), &[0, 1], T0);
    s.exclude(T0, 1, "its segment 2 differs from two others".into());
    let dialled: Vec<usize> = drain(&mut s)
        .iter()
        .filter_map(|a| match a {
            Action::Connect { server, .. } => Some(*server),
            _ => None,
        })
        .collect();
    assert_eq!(dialled, vec![0, 2]);
    assert!(matches!(s.server_state(1), ServerState::Blamed(r) if r.contains("differs")));
    // It is never tried again, however long the job runs.
    s.on_tick(Duration::from_secs(3600));
    assert!(!drain(&mut s)
        .iter()
        .any(|a| matches!(a, Action::Connect { server: 1, .. })));
}

#[test]
fn segments_redone_while_running_go_to_the_connections_that_run() {
    // Two servers, 10 segments; server 0 holds 0..4, server 1 holds 4..8.
    let (mut s, conns, _) = running(Config::default(), 2, 10);
    for segment in 4..8 {
        assert_eq!(
            s.on_segment(ms(2), conns[1], segment, true),
            SegmentVerdict::Store
        );
    }
    drain(&mut s);
    assert_eq!(s.segments_done(), 4);
    // Server 1 is found out: it is excluded and what it delivered is Missing again.
    s.exclude(ms(3), 1, "its segment 5 differs from two others".into());
    assert!(s.redo(ms(3), &[4, 5, 6, 7]));
    assert_eq!(s.segments_done(), 0);
    assert!((4..8).all(|segment| !s.is_done(segment)));
    // Server 0's connection, still up, gets them back first (lowest Missing first) as its
    // pipeline frees: it delivers 0 and is asked for 4.
    assert_eq!(
        s.on_segment(ms(4), conns[0], 0, true),
        SegmentVerdict::Store
    );
    assert_eq!(requests(&drain(&mut s)), [(conns[0], 4)]);
    for (t, segment) in [1u64, 2, 3, 4].into_iter().enumerate() {
        s.on_segment(ms(5 + t as u64), conns[0], segment, true);
    }
    let asked: Vec<u64> = requests(&drain(&mut s))
        .iter()
        .map(|&(_, seg)| seg)
        .collect();
    assert_eq!(asked, [5, 6, 7, 8]);
    assert_eq!(s.phase(), Phase::Running);
}

#[test]
fn a_redo_after_completion_is_refused_and_changes_nothing() {
    let (mut s, conns, _) = running(Config::default(), 1, 2);
    s.on_segment(ms(2), conns[0], 0, true);
    s.on_segment(ms(3), conns[0], 1, true);
    assert_eq!(s.phase(), Phase::Complete);
    assert!(!s.redo(ms(4), &[0]));
    assert_eq!(s.phase(), Phase::Complete);
    assert_eq!(s.segments_done(), 2);
    // Before any layout there is nothing to redo either.
    let mut fresh = Scheduler::new(Config::default(), 1, T0);
    assert!(!fresh.redo(T0, &[0]));
}
