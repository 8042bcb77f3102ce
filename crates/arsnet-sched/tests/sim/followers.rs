//! Followers (HTTP mirrors): servers that know no content identity. They never vote, no
//! election waits for them, they wait connected (without a silence timer) until others
//! decided the content, and then serve like any server: failover, corruption blame and all.

use std::time::Duration;

use arsnet_sched::{Config, ServerState};

use crate::world::{ms, Fault, Net, ServerSpec, World, BAD_FINGERPRINT, KIB, MIB};

const LATENCY: Duration = Duration::from_millis(5);

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
fn mirrors_serve_once_a_server_named_the_content() {
    let specs = vec![
        ServerSpec::new(MIB, LATENCY).handshake(ms(3000), 6),
        ServerSpec::new(4 * MIB, LATENCY).follower(),
        ServerSpec::new(4 * MIB, LATENCY).follower(),
    ];
    let mut w = World::new(config(), 64, specs, Net::default());
    w.run(Duration::from_secs(60));
    w.assert_no_violations();
    w.assert_complete();
    w.assert_each_stored_once(&[]);
    // The mirrors waited through the server's slow handshake (longer than the handshake
    // timeout) without being dropped, then did most of the work.
    assert!(w.log.drops.is_empty(), "{:?}", w.log.drops);
    let by_mirrors = w.log.stores_per_server[1] + w.log.stores_per_server[2];
    assert!(by_mirrors > 32, "mirrors stored {by_mirrors} of 64");
    let first_mirror_request = w
        .log
        .requests
        .iter()
        .find(|(_, s, _)| *s != 0)
        .map(|(t, _, _)| *t)
        .expect("mirrors were asked");
    assert!(
        first_mirror_request >= ms(3000),
        "not before the content was known"
    );
}

#[test]
fn an_election_does_not_wait_for_mirrors() {
    // Two servers agree at once; the mirror is down. Without followers being left out, the
    // election would wait for its window (3 s) on the unreachable mirror.
    let specs = vec![
        ServerSpec::new(MIB, LATENCY),
        ServerSpec::new(MIB, LATENCY),
        ServerSpec::new(MIB, LATENCY).follower().fault(Fault::Down {
            at: Duration::ZERO,
            back: None,
        }),
    ];
    let mut w = World::new(config(), 8, specs, Net::default());
    w.run(Duration::from_secs(30));
    w.assert_complete();
    let first_request = w
        .log
        .requests
        .first()
        .map(|(t, _, _)| *t)
        .expect("requests");
    assert!(first_request < ms(500), "decided at {first_request:?}");
}

#[test]
fn a_mirror_sending_bad_data_is_blamed_and_the_rest_finish() {
    let specs = vec![
        ServerSpec::new(MIB, LATENCY),
        ServerSpec::new(MIB, LATENCY)
            .follower()
            .fault(Fault::CorruptAll),
        ServerSpec::new(MIB, LATENCY).follower(),
    ];
    let mut w = World::new(config(), 32, specs, Net::default());
    w.run(Duration::from_secs(60));
    w.assert_no_violations();
    w.assert_complete();
    assert!(matches!(w.sched.server_state(1), ServerState::Blamed(_)));
    assert_eq!(w.log.stores_per_server[1], 0);
}

#[test]
fn a_mirror_refused_by_the_driver_is_blamed_with_its_reason() {
    let specs = vec![
        ServerSpec::new(MIB, LATENCY),
        ServerSpec::new(MIB, LATENCY).follower(),
    ];
    let mut w = World::new(config(), 16, specs, Net::default());
    w.run_until(ms(100));
    let conn = w.conn_of(1).expect("the mirror is connected");
    w.sched
        .on_refused(w.now, conn, "is 5 bytes, not the content's 16".into());
    w.run(Duration::from_secs(30));
    w.assert_complete();
    match w.sched.server_state(1) {
        ServerState::Blamed(reason) => assert!(reason.contains("not the content's"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_mirrors_and_a_server_of_other_content_with_a_pin_never_store_anything() {
    // The pinned content is announced by nobody: the mirrors must not serve the liar's.
    let specs = vec![
        ServerSpec::new(MIB, LATENCY).fingerprint(BAD_FINGERPRINT),
        ServerSpec::new(64 * KIB, LATENCY).follower(),
    ];
    let mut w = World::pinned(config(), 8, specs, Net::default());
    w.run(Duration::from_secs(10));
    assert!(w.log.stores_per_server.iter().all(|&n| n == 0));
    assert!(w.log.requests.is_empty(), "{:?}", w.log.requests);
    assert!(matches!(w.sched.server_state(0), ServerState::Blamed(_)));
}

#[test]
fn a_server_that_is_no_follower_cannot_skip_its_header() {
    let specs = vec![ServerSpec::new(MIB, LATENCY), ServerSpec::new(MIB, LATENCY)];
    let mut w = World::new(config(), 8, specs, Net::default());
    w.run_until(ms(1));
    if let Some(conn) = w.conn_of(1) {
        w.sched.on_follower_ready(w.now, conn);
        assert!(matches!(w.sched.server_state(1), ServerState::Blamed(_)));
    }
    w.run(Duration::from_secs(30));
    w.assert_complete();
}

#[test]
fn retry_after_keeps_a_source_away_that_long_but_never_longer_than_the_cap() {
    let specs = vec![
        ServerSpec::new(64 * KIB, LATENCY),
        ServerSpec::new(64 * KIB, LATENCY).follower(),
    ];
    let config = Config {
        retry_after_max: Duration::from_secs(20),
        ..config()
    };
    // Long enough (about a minute per 64 segments) not to end while the mirror is away.
    let mut w = World::new(config, 1024, specs, Net::default());
    w.run_until(ms(200));
    let conn = w.conn_of(1).expect("the mirror is connected");
    let at = w.now;
    w.sched
        .on_disconnected_retry_after(at, conn, "HTTP status 503", Duration::from_secs(7));
    w.run_until(at + Duration::from_secs(30));
    let reconnects: Vec<Duration> = w
        .log
        .connects
        .iter()
        .filter(|(t, s)| *s == 1 && *t > at)
        .map(|(t, _)| *t)
        .collect();
    let first = *reconnects.first().expect("it came back");
    assert!(
        first >= at + Duration::from_secs(7),
        "back at {first:?}, asked 7 s after {at:?}"
    );
    assert!(
        first < at + Duration::from_secs(8),
        "not much later either: {first:?}"
    );

    // A hostile Retry-After (a day) is capped.
    let conn = w.conn_of(1).expect("connected again");
    let at = w.now;
    w.sched
        .on_disconnected_retry_after(at, conn, "HTTP status 503", Duration::from_secs(86_400));
    w.run_until(at + Duration::from_secs(25));
    assert!(
        w.log.connects.iter().any(|(t, s)| *s == 1 && *t > at),
        "back within the 20 s cap"
    );
}
