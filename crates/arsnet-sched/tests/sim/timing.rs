//! Who owns time: the scheduler decides every deadline from what the driver reports. A
//! handshake that keeps reporting progress is not timed out however long it takes; busy
//! storage (the driver not reading) is not a stall; only reported bytes count as progress.
//! Each scenario has a negative control that shows the same world fails without the rule.

use std::time::Duration;

use arsnet_sched::{Action, Config, DropReason, Layout, Phase, Scheduler, ServerState};

use crate::world::{ms, Net, ServerSpec, World, MIB};

fn config() -> Config {
    Config {
        stall_timeout: ms(2000),
        handshake_timeout: ms(1000),
        backoff_initial: ms(100),
        backoff_max: ms(1600),
        ..Config::default()
    }
}

fn handshake_timeouts(w: &World) -> usize {
    w.log
        .drops
        .iter()
        .filter(|(_, _, r)| *r == DropReason::HandshakeTimeout)
        .count()
}

fn stalls(w: &World) -> usize {
    w.log
        .drops
        .iter()
        .filter(|(_, _, r)| *r == DropReason::Stalled)
        .count()
}

#[test]
fn a_long_handshake_that_keeps_progressing_is_not_timed_out() {
    // Ten times the handshake timeout, but a progress report every 200 ms.
    let spec = ServerSpec::new(4 * MIB, ms(5)).handshake(ms(10_000), 50);
    let mut w = World::pinned(config(), 20, vec![spec], Net::default());
    w.run(Duration::from_secs(60));
    w.assert_complete();
    assert_eq!(handshake_timeouts(&w), 0, "drops: {:?}", w.log.drops);
    assert_eq!(w.connects_of(0).len(), 1, "one connection did it all");
}

#[test]
fn a_silent_handshake_of_the_same_length_is_timed_out() {
    // Negative control: the same handshake without progress reports.
    let spec = ServerSpec::new(4 * MIB, ms(5)).handshake(ms(10_000), 1);
    let mut w = World::pinned(config(), 20, vec![spec], Net::default());
    w.run(Duration::from_secs(5));
    assert!(handshake_timeouts(&w) >= 1, "drops: {:?}", w.log.drops);
    let (at, _, _) = w.log.drops[0];
    assert_eq!(
        at,
        config().handshake_timeout,
        "timed out after exactly the silence"
    );
    w.assert_no_violations();
}

/// One server whose disk-side is blocked for 5 stall timeouts in the middle of the job.
fn slow_disk_world(announce: bool) -> World {
    let spec = ServerSpec::new(MIB, ms(5));
    let mut w = World::pinned(config(), 64, vec![spec], Net::default());
    w.announce_storage = announce;
    w.storage_busy(ms(500), ms(10_500));
    w
}

#[test]
fn busy_storage_is_not_a_stall() {
    let mut w = slow_disk_world(true);
    w.run(Duration::from_secs(60));
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    assert_eq!(stalls(&w), 0, "drops: {:?}", w.log.drops);
    assert_eq!(w.connects_of(0).len(), 1);
}

#[test]
fn unannounced_busy_storage_looks_like_a_stall() {
    // Negative control: the same held-up driver that does not tell the scheduler.
    let mut w = slow_disk_world(false);
    w.run(Duration::from_secs(60));
    assert!(stalls(&w) >= 1, "drops: {:?}", w.log.drops);
    w.assert_no_violations();
}

fn layout() -> Layout {
    Layout {
        segment_count: 10,
        size: 0,
        fingerprint: [1; 32],
        content: [1; 32],
    }
}

fn drain(s: &mut Scheduler) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn connect_ids(actions: &[Action]) -> Vec<arsnet_sched::ConnId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Connect { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}

#[test]
fn zero_byte_progress_does_not_reset_the_stall_clock() {
    let config = config();
    let mut s = Scheduler::new(config.clone(), 1, Duration::ZERO);
    s.pin([1; 32]);
    let conns = connect_ids(&drain(&mut s));
    s.on_header(ms(10), conns[0], layout());
    drain(&mut s);
    let stall_at = ms(10) + config.stall_timeout;
    assert_eq!(s.next_deadline(), Some(stall_at));
    // A driver sampling counters reports every connection, moved or not.
    s.on_progress(ms(1500), conns[0], 0);
    assert_eq!(
        s.next_deadline(),
        Some(stall_at),
        "zero bytes moved nothing"
    );
    s.on_progress(ms(1500), conns[0], 1);
    assert_eq!(s.next_deadline(), Some(ms(1500) + config.stall_timeout));
}

#[test]
fn handshake_progress_moves_the_handshake_deadline() {
    let config = config();
    let mut s = Scheduler::new(config.clone(), 1, Duration::ZERO);
    let conns = connect_ids(&drain(&mut s));
    assert_eq!(s.next_deadline(), Some(config.handshake_timeout));
    s.on_progress(ms(900), conns[0], 4096);
    assert_eq!(s.next_deadline(), Some(ms(900) + config.handshake_timeout));
    s.on_tick(config.handshake_timeout);
    assert!(drain(&mut s).is_empty(), "not silent long enough");
    s.on_tick(ms(900) + config.handshake_timeout);
    assert!(matches!(
        drain(&mut s).as_slice(),
        [Action::Disconnect {
            reason: DropReason::HandshakeTimeout,
            ..
        }]
    ));
}

#[test]
fn a_voter_waiting_for_the_election_is_not_timed_out() {
    // The election window (3 s) outlasts the handshake timeout (1 s): a server that answered
    // must not be dropped for waiting on the others.
    let config = config();
    let mut s = Scheduler::new(config.clone(), 2, Duration::ZERO);
    let conns = connect_ids(&drain(&mut s));
    s.on_header(ms(100), conns[0], layout());
    for t in (200..=3100).step_by(100) {
        s.on_tick(ms(t));
    }
    let drops: Vec<Action> = drain(&mut s)
        .into_iter()
        .filter(|a| matches!(a, Action::Disconnect { conn, .. } if *conn == conns[0]))
        .collect();
    assert!(drops.is_empty(), "{drops:?}");
    // Server 1 never answered (timed out); the window closes and the lone voter wins.
    assert_eq!(s.server_state(0), &ServerState::Active);
    assert_eq!(s.layout(), Some(layout()));
}

#[test]
fn storage_ready_restarts_every_silence_clock() {
    let config = config();
    let mut s = Scheduler::new(config.clone(), 1, Duration::ZERO);
    s.pin([1; 32]);
    let conns = connect_ids(&drain(&mut s));
    s.on_header(ms(10), conns[0], layout());
    drain(&mut s);
    s.on_storage_busy(ms(100));
    assert_eq!(s.next_deadline(), None, "no silence timer while busy");
    s.on_tick(ms(60_000));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.phase(), Phase::Running);
    s.on_storage_ready(ms(60_000));
    assert_eq!(s.next_deadline(), Some(ms(60_000) + config.stall_timeout));
    s.on_tick(ms(60_000) + config.stall_timeout);
    assert!(matches!(
        drain(&mut s).as_slice(),
        [Action::Disconnect {
            reason: DropReason::Stalled,
            ..
        }]
    ));
}
