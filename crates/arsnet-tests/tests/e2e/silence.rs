//! A server that goes quiet behind an open connection (its process stopped with SIGSTOP:
//! the kernel keeps the TCP connection up, nothing more arrives) loses its segments to the
//! servers that still deliver once it has been silent for the silence limit — long before
//! the stall timeout, and without waiting for the tail of the job. The job completes
//! byte-identical, and the log says the connection was dropped as silent.

use std::time::Duration;

use crate::util::*;

/// The client never drops a connection as *stalled* within this test: only the relative
/// silence rule (2 s here: the floor, as 8 × a 64 KiB segment at 256 KB/s is 2 s) can.
fn client_config() -> String {
    let config = TEST_CONFIG.replace("stall_timeout_secs = 5", "stall_timeout_secs = 120");
    assert!(config.contains("stall_timeout_secs = 120"), "{config}");
    config
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

#[test]
fn a_server_stopped_behind_an_open_connection_loses_its_segments_to_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f.bin");
    let data = write_file(&file, 4 << 20, 77);
    let quiet = Daemon::start(&tmp.path().join("quiet"));
    let steady = Daemon::start(&tmp.path().join("steady"));
    let client = Daemon::start_with_config(&tmp.path().join("cli"), &client_config());
    let ports = free_ports(2);
    serve(&quiet, &file, &ports[..1], &["--rate", "262144"]);
    serve(&steady, &file, &ports[1..], &["--rate", "262144"]);
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &ports, &[]);
    // Both deliver first, so the quiet one was an active source when it stopped.
    client.wait_job(job, Duration::from_secs(60), |s| {
        s["sources"].as_array().is_some_and(|all| {
            all.len() == 2 && all.iter().all(|src| src["segments"].as_u64() >= Some(2))
        })
    });
    signal(quiet.pid(), libc::SIGSTOP);
    let done = client.wait_job(job, Duration::from_secs(120), |s| {
        matches!(job_state(s).as_str(), "completed" | "failed" | "cancelled")
    });
    signal(quiet.pid(), libc::SIGCONT);
    assert_eq!(job_state(&done), "completed", "{done}");
    assert_same(&out.join("f.bin"), &data);
    let address = format!("127.0.0.1:{}", ports[0]);
    let log = client.log();
    assert!(
        log.lines()
            .any(|l| l.contains("reason=Silent") && l.contains(&address)),
        "the stopped server is dropped as silent while the other delivers:\n{}",
        tail(&log, 40)
    );
}

/// Slowness is not silence: a server sending 40 KB/s beside one 25 times faster
/// delivers bytes every fraction of a second, and the client counts them as they arrive,
/// so it is never dropped as silent (it may be as a laggard in the tail: that is the other
/// rule). With progress counted per 128 KiB read (3 s apart at this rate), it was.
#[test]
fn a_slow_steady_server_beside_a_fast_one_is_not_silent() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f.bin");
    let data = write_file(&file, 6 << 20, 78);
    // Segments of 1 MiB, so that the slow server is on one for 26 s: many 128 KiB reads.
    let servers = TEST_CONFIG.replace("segment_size = 65536", "segment_size = 1048576");
    let slow = Daemon::start_with_config(&tmp.path().join("slow"), &servers);
    let fast = Daemon::start_with_config(&tmp.path().join("fast"), &servers);
    let client = Daemon::start_with_config(&tmp.path().join("cli"), &client_config());
    let ports = free_ports(2);
    serve(&slow, &file, &ports[..1], &["--rate", "40000"]);
    serve(&fast, &file, &ports[1..], &["--rate", "1000000"]);
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &ports, &[]);
    let done = client.wait_job(job, Duration::from_secs(120), |s| {
        matches!(job_state(s).as_str(), "completed" | "failed" | "cancelled")
    });
    assert_eq!(job_state(&done), "completed", "{done}");
    assert_same(&out.join("f.bin"), &data);
    let address = format!("127.0.0.1:{}", ports[0]);
    let log = client.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("reason=Silent") && l.contains(&address)),
        "a slow but steady server is not silent:\n{}",
        tail(&log, 40)
    );
}
