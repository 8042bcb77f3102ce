//! Giving up (`Config::max_tries`): a job none of whose servers ever answered ends, after a
//! bounded number of attempts per server with the usual backoff between them, naming each
//! server's last error; a server that answered once, and every server of a job that holds
//! verified data, keeps being retried (the job is resumable), and `max_tries = 0` never gives
//! up. Virtual time makes "forever" an hour and the backoff exact.

use std::time::Duration;

use arsnet_sched::{Config, FailReason, Phase, ServerEnd, ServerState};

use crate::world::{ms, Fault, Net, ServerSpec, World, BAD_FINGERPRINT, KIB};

const TRIES: u32 = 4;
const LATENCY: Duration = Duration::from_millis(5);
const HOUR: Duration = Duration::from_secs(3600);

fn config() -> Config {
    Config {
        stall_timeout: ms(2000),
        handshake_timeout: ms(1000),
        backoff_initial: ms(100),
        backoff_max: ms(1600),
        max_tries: TRIES,
        ..Config::default()
    }
}

/// A server where nothing listens, from the start of the job.
fn dead() -> ServerSpec {
    ServerSpec::new(KIB, LATENCY).fault(Fault::Down {
        at: Duration::ZERO,
        back: None,
    })
}

/// A healthy server; at 64 KiB/s each 64 KiB segment takes a second, so a job of a few
/// segments outlasts the dead servers' tries.
fn slow() -> ServerSpec {
    ServerSpec::new(64 * KIB, LATENCY)
}

fn failed(w: &World) -> bool {
    w.log
        .phases
        .iter()
        .any(|(_, p)| matches!(p, Phase::Failed(_)))
}

/// When each of `server`'s connections failed: reported by the driver, or dropped by the
/// scheduler (the first one, cut silently by the fault at time 0, times out).
fn failures_of(w: &World, server: usize) -> Vec<Duration> {
    let reported = w.log.disconnected.iter().map(|(t, s, _)| (*t, *s));
    let dropped = w.log.drops.iter().map(|(t, s, _)| (*t, *s));
    let mut times: Vec<Duration> = reported
        .chain(dropped)
        .filter(|(_, s)| *s == server)
        .map(|(t, _)| t)
        .collect();
    times.sort();
    times
}

#[test]
fn nothing_listening_fails_after_exactly_max_tries_each_with_backoff_between() {
    let cfg = config();
    // Unpinned, as a plain `fetch` is: the election must not keep the job alive either.
    let mut w = World::new(cfg.clone(), 20, vec![dead(), dead()], Net::default());
    w.run(HOUR);
    w.assert_no_violations();
    let gave_up = ServerEnd::GaveUp {
        attempts: TRIES,
        last_error: "connection refused".into(),
    };
    assert_eq!(
        w.sched.phase(),
        Phase::Failed(FailReason::Unreachable(vec![gave_up.clone(), gave_up])),
        "at {:?}",
        w.now
    );
    for server in 0..2 {
        let connects = w.connects_of(server);
        let failures = failures_of(&w, server);
        assert_eq!(
            connects.len(),
            TRIES as usize,
            "server {server}: {connects:?}"
        );
        assert_eq!(
            failures.len(),
            TRIES as usize,
            "server {server}: {failures:?}"
        );
        // Each retry waits out the doubling backoff after the failure before it.
        for (i, pair) in connects.windows(2).enumerate() {
            assert_eq!(pair[1], failures[i] + cfg.backoff(i as u32), "retry {i}");
        }
        assert_eq!(
            w.sched.server_state(server),
            &ServerState::GaveUp {
                attempts: TRIES,
                last_error: "connection refused".into()
            }
        );
    }
    // It ends with the last failure, and nothing is left to wake up for.
    assert_eq!(Some(w.now), w.log.disconnected.last().map(|d| d.0));
    assert_eq!(w.sched.next_deadline(), None);
    let text = w.sched.phase();
    let Phase::Failed(reason) = text else {
        unreachable!("checked above")
    };
    assert_eq!(
        reason.to_string(),
        "no server could be reached: server 0 (gave up after 4 attempts: connection refused); \
         server 1 (gave up after 4 attempts: connection refused)"
    );
}

#[test]
fn a_server_that_never_sends_a_header_is_given_up_too() {
    // It accepts the connection and stays silent (it does not speak ArsNet): every attempt
    // times out in the handshake, and those count like refusals.
    let silent = ServerSpec::new(KIB, LATENCY).handshake(Duration::from_secs(60), 1);
    let mut w = World::pinned(config(), 20, vec![silent], Net::default());
    w.run(HOUR);
    w.assert_no_violations();
    assert_eq!(
        w.sched.phase(),
        Phase::Failed(FailReason::Unreachable(vec![ServerEnd::GaveUp {
            attempts: TRIES,
            last_error: "no header: handshake silent for 1s".into(),
        }]))
    );
    assert_eq!(w.connects_of(0).len(), TRIES as usize);
}

#[test]
fn one_reachable_server_completes_while_the_dead_ones_keep_being_tried() {
    // A server answered, so this is not a job that can never succeed: the dead ones are not
    // given up (one that comes back must find the job trying) and the job completes.
    let mut w = World::new(config(), 6, vec![dead(), slow(), dead()], Net::default());
    w.run(HOUR);
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    assert!(!failed(&w), "phases: {:?}", w.log.phases);
    for server in [0, 2] {
        assert!(
            !matches!(w.sched.server_state(server), ServerState::GaveUp { .. }),
            "{:?}",
            w.sched.server_state(server)
        );
        assert!(
            w.connects_of(server).len() > TRIES as usize,
            "still tried past max_tries"
        );
    }
}

#[test]
fn a_server_given_up_before_another_answered_is_tried_again() {
    // Server 1 never answers and uses up its tries while server 0 is still sending its
    // long handshake (a big digest table, with progress all along); then server 0 answers:
    // the job may succeed after all, so server 1, given up, is tried again.
    let late = slow().handshake(Duration::from_secs(4), 40);
    let mut w = World::new(config(), 6, vec![late, dead()], Net::default());
    let mut given_up_at = None;
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(4) && given_up_at.is_none() {
        t += ms(10);
        w.run(t);
        if matches!(w.sched.server_state(1), ServerState::GaveUp { .. }) {
            given_up_at = Some(t);
        }
    }
    assert!(
        given_up_at.is_some(),
        "server 1 was given up first: {:?} {:?}",
        w.connects_of(0),
        w.connects_of(1)
    );
    assert!(!failed(&w), "server 0 had a try left: {:?}", w.log.phases);
    w.run(HOUR);
    w.assert_no_violations();
    w.assert_complete();
    assert!(
        w.connects_of(1).len() > TRIES as usize,
        "server 1 tried again once server 0 answered"
    );
}

#[test]
fn a_job_with_verified_data_keeps_retrying_when_every_server_dies() {
    // Both die for good after a few segments verified: the job is resumable, so it waits.
    let down = |spec: ServerSpec| {
        spec.fault(Fault::Down {
            at: Duration::from_millis(2500),
            back: None,
        })
    };
    let mut w = World::new(
        config(),
        50,
        vec![down(slow()), down(slow())],
        Net::default(),
    );
    w.run(HOUR);
    w.assert_no_violations();
    assert!(w.sched.segments_done() > 0, "data verified before the end");
    assert!(!failed(&w), "phases: {:?}", w.log.phases);
    assert_eq!(w.sched.phase(), Phase::Waiting);
    for server in 0..2 {
        // An hour of retries at the 1.6 s cap: far more than max_tries.
        assert!(w.connects_of(server).len() > 1000, "server {server}");
        assert!(matches!(
            w.sched.server_state(server),
            ServerState::Backoff { .. }
        ));
    }
    assert!(w.sched.next_deadline().is_some());
}

#[test]
fn a_resumed_job_whose_servers_are_all_down_keeps_retrying() {
    // Segments adopted from the journal are verified data: never given up.
    let mut w = World::resumed(
        config(),
        20,
        &[0, 1, 2],
        vec![dead(), dead()],
        Net::default(),
    );
    w.run(HOUR);
    w.assert_no_violations();
    assert!(!failed(&w), "phases: {:?}", w.log.phases);
    assert_eq!(w.sched.phase(), Phase::Waiting);
    assert!(w.connects_of(0).len() > 1000);
}

#[test]
fn max_tries_zero_never_gives_up() {
    let cfg = Config {
        max_tries: 0,
        ..config()
    };
    let mut w = World::new(cfg, 20, vec![dead(), dead()], Net::default());
    w.run(HOUR);
    w.assert_no_violations();
    assert!(!failed(&w), "phases: {:?}", w.log.phases);
    assert_eq!(w.sched.phase(), Phase::Waiting);
    for server in 0..2 {
        assert!(w.connects_of(server).len() > 1000);
        assert!(matches!(
            w.sched.server_state(server),
            ServerState::Backoff { .. }
        ));
    }
}

#[test]
fn a_server_that_answered_once_is_not_given_up() {
    // Server 0 sends its header, then dies before any segment: the job has no data, but
    // server 0 is reachable, so it is retried for as long as it takes. Unpinned, the header
    // was only a vote awaiting the election; pinned, it was accepted. Server 1 never answers,
    // and is not given up either while server 0 may still come back.
    for pinned in [false, true] {
        let answers_then_dies = slow().fault(Fault::Down {
            at: ms(20),
            back: None,
        });
        let specs = vec![answers_then_dies, dead()];
        let mut w = if pinned {
            World::pinned(config(), 20, specs, Net::default())
        } else {
            World::new(config(), 20, specs, Net::default())
        };
        w.run(HOUR);
        w.assert_no_violations();
        assert_eq!(w.sched.segments_done(), 0, "pinned {pinned}");
        assert!(!failed(&w), "pinned {pinned}: {:?}", w.log.phases);
        assert_eq!(w.sched.phase(), Phase::Waiting, "pinned {pinned}");
        assert!(w.connects_of(0).len() > 1000, "pinned {pinned}");
        assert!(matches!(
            w.sched.server_state(0),
            ServerState::Backoff { .. }
        ));
        assert!(
            !matches!(w.sched.server_state(1), ServerState::GaveUp { .. }),
            "pinned {pinned}"
        );
    }
}

#[test]
fn blamed_and_given_up_servers_fail_a_job_without_data_naming_both() {
    // Pinned: the liar is blamed for its header; the other never answers.
    let liar = ServerSpec::new(KIB, LATENCY).fingerprint(BAD_FINGERPRINT);
    let mut w = World::pinned(config(), 20, vec![liar, dead()], Net::default());
    w.run(HOUR);
    w.assert_no_violations();
    let Phase::Failed(FailReason::Unreachable(ends)) = w.sched.phase() else {
        panic!("{:?}", w.sched.phase());
    };
    assert!(
        matches!(&ends[0], ServerEnd::Blamed(r) if r.contains("serves other content")),
        "{ends:?}"
    );
    assert_eq!(
        ends[1],
        ServerEnd::GaveUp {
            attempts: TRIES,
            last_error: "connection refused".into()
        }
    );
}

#[test]
fn given_up_servers_come_back_when_the_job_has_data_and_nobody_else() {
    // The dead servers give up in the first second, before the slow server's first segment;
    // its fourth segment is corrupt, so it is blamed with three verified. The job is now
    // resumable: rather than wait with no server to try, the given-up ones are retried.
    let mut w = World::pinned(
        config(),
        20,
        vec![dead(), slow().fault(Fault::CorruptNth(3)), dead()],
        Net::default(),
    );
    w.run(HOUR);
    w.assert_no_violations();
    assert_eq!(w.sched.segments_done(), 3);
    assert!(matches!(w.sched.server_state(1), ServerState::Blamed(_)));
    assert!(!failed(&w), "phases: {:?}", w.log.phases);
    assert_eq!(w.sched.phase(), Phase::Waiting);
    for server in [0, 2] {
        assert!(w.connects_of(server).len() > 1000, "server {server}");
        assert!(matches!(
            w.sched.server_state(server),
            ServerState::Backoff { .. }
        ));
    }
}
