//! A fetch that can never succeed ends: `fetch --wait` against sources where nothing
//! listens (or whose name does not resolve, or that answers something other than ArsNet) fails after `download.max_tries` attempts each,
//! exit code 4, naming every source and its last error; a dead source beside a live one is
//! given up quietly and the download completes. The time limits are upper bounds only, so
//! that a regression fails (the old behaviour waited forever) instead of hanging the suite.

use std::time::Duration;

use crate::util::*;

/// Comfortably more than the tries need (3 refusals about 0.3 s apart, and a name lookup
/// bounded by the 5 s connect timeout per try).
const BOUND: Duration = Duration::from_secs(60);

/// The tests' usual quick backoff, with 3 tries instead of the default 5.
const CONFIG: &str = r#"
segment_size = 65536
[download]
stall_timeout_secs = 5
connect_timeout_secs = 5
backoff_initial_ms = 100
backoff_max_secs = 1
max_tries = 3
commit_interval_ms = 100
"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn fetch_wait_with_nothing_listening_fails_naming_every_source() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Daemon::start_with_config(&tmp.path().join("cli"), CONFIG);
    let dead = dead_ports(2);
    let ports = &dead.ports;
    let out = tmp.path().join("out");
    let mut args = fetch_args(&out, ports, &["--wait"]);
    // A name that never resolves (.invalid is reserved for that).
    args.extend(["--source".into(), "arsnet-test.invalid:8080".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(done) = ctl_within(&client, &args, BOUND) else {
        panic!(
            "fetch --wait was still waiting after {BOUND:?}; log tail:\n{}",
            tail(&client.log(), 30)
        );
    };
    let stderr = text(&done.stderr);
    assert_eq!(done.status.code(), Some(4), "job failed: {stderr}");
    for port in ports {
        assert!(
            stderr.contains(&format!("127.0.0.1:{port} (connect failed")),
            "{port} named with its error: {stderr}"
        );
    }
    assert!(
        stderr.contains("arsnet-test.invalid:8080 ("),
        "the unresolvable name is named: {stderr}"
    );
    assert!(
        stderr.contains("after 3 attempts each") && stderr.contains("download.max_tries"),
        "says how often it tried and what to change: {stderr}"
    );
    // The job's own record says the same, and each source why it was given up.
    let status = client.status(1);
    assert_eq!(job_state(&status), "failed", "{status}");
    let sources = status["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 3, "{status}");
    for source in sources {
        let detail = source["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with("gave up after 3 attempts: "), "{source}");
        assert_eq!(source["rate_bps"], 0, "{source}");
    }
    // Nothing was written: no source ever said what the file is.
    let written = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0);
}

#[test]
fn a_dead_source_beside_a_live_one_does_not_stop_the_download() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start_with_config(&tmp.path().join("cli"), CONFIG);
    let file = tmp.path().join("payload.bin");
    let data = write_file(&file, 65536 * 20 + 123, 42);
    let live = free_ports(1)[0];
    let held = dead_ports(1);
    let dead = held.ports[0];
    serve(&servers, &file, &[live], &[]);
    let out = tmp.path().join("out");
    let args = fetch_args(&out, &[live, dead], &["--wait"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(done) = ctl_within(&client, &args, BOUND) else {
        panic!(
            "fetch --wait did not end within {BOUND:?}; log tail:\n{}",
            tail(&client.log(), 30)
        );
    };
    assert_eq!(
        done.status.code(),
        Some(0),
        "completed: {}{}",
        text(&done.stdout),
        text(&done.stderr)
    );
    assert_same(&out.join("payload.bin"), &data);
    let status = client.status(1);
    let sources = status["sources"].as_array().expect("sources");
    let dead_row = sources
        .iter()
        .find(|s| s["address"] == format!("127.0.0.1:{dead}"))
        .unwrap_or_else(|| panic!("dead source listed: {status}"));
    // A source answered, so the dead one was never given up (it would have been used had
    // it come back): it is listed with what it did, and no rate.
    assert!(
        !dead_row["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("gave up"),
        "{dead_row}"
    );
    assert_eq!(dead_row["segments"], 0, "{dead_row}");
    assert_eq!(dead_row["rate_bps"], 0, "{dead_row}");
}

#[test]
fn a_job_that_heard_from_its_source_is_not_given_up_after_a_restart() {
    // The source answered (the content was accepted and saved), then went away before any
    // segment was verified. Across a daemon restart the job must keep waiting for it, not
    // fail as if nobody had ever answered.
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let mut client = Daemon::start_with_config(&tmp.path().join("cli"), CONFIG);
    let file = tmp.path().join("slow.bin");
    write_file(&file, 1 << 20, 9);
    let ports = free_ports(1);
    serve(&servers, &file, &ports, &["--rate", "1K"]);
    let job = fetch(&client, &tmp.path().join("out"), &ports, &[]);
    client.wait_job(job, BOUND, |s| s["blake3"].is_string());
    servers.ok(&["stop-server", &ports[0].to_string()]);
    client.restart();
    // Well past 3 tries at 100 ms..1 s of backoff.
    std::thread::sleep(Duration::from_secs(6));
    let st = client.status(job);
    assert_eq!(job_state(&st), "waiting", "{st}");
}

/// A TCP listener that answers every connection with `junk` and closes it: something that
/// listens at the address, but not an ArsNet server. Returns its port and a count of the
/// connections it answered.
fn junk_server(junk: &'static [u8]) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    answer_server(junk, false)
}

/// [`junk_server`]; with `read_request`, it first reads the request's head (up to the blank
/// line), as an HTTP server does: an answer written before the request would be a protocol
/// error of its own, not the status it carries.
fn answer_server(
    answer: &'static [u8],
    read_request: bool,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = std::sync::Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while read_request && !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                match conn.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            // Counted before the answer, which the client must read before it gives up.
            count.fetch_add(1, Ordering::SeqCst);
            // The client may have hung up already; only the answer matters.
            let _ = conn.write_all(answer);
        }
    });
    (port, answered)
}

#[test]
fn a_source_that_answers_junk_is_given_up_and_named() {
    for junk in [
        &b"HTTP/1.0 400 junk\r\n\r\n"[..],
        // A frame's length and less than it announced, then the end of the connection.
        &[0x00, 0x00, 0x00, 0x10, 0xde, 0xad, 0xbe, 0xef, 0x01][..],
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let client = Daemon::start_with_config(&tmp.path().join("cli"), CONFIG);
        let (port, answered) = junk_server(junk);
        let out = tmp.path().join("out");
        let args = fetch_args(&out, &[port], &["--wait"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let Some(done) = ctl_within(&client, &args, BOUND) else {
            panic!(
                "fetch --wait from a junk server ({junk:?}) was still waiting after {BOUND:?}; log tail:\n{}",
                tail(&client.log(), 30)
            );
        };
        let stderr = text(&done.stderr);
        assert_eq!(done.status.code(), Some(4), "job failed: {stderr}");
        assert!(stderr.contains("job 1 failed: "), "the failure: {stderr}");
        assert!(
            stderr.contains(&format!("127.0.0.1:{port} (")),
            "the source is named with its error: {stderr}"
        );
        assert!(
            stderr.contains("after 3 attempts each") && stderr.contains("download.max_tries"),
            "after the configured tries: {stderr}"
        );
        // It was tried as often as configured, each time answered (and never believed).
        let tries = answered.load(std::sync::atomic::Ordering::SeqCst);
        assert!(tries >= 3, "answered {tries} connections");
        let status = client.status(1);
        assert_eq!(job_state(&status), "failed", "{status}");
        let written = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
        assert_eq!(written, 0, "nothing written from junk");
    }
}

/// A mirror that answers every request with an error status (404, 403, 500) is a source
/// that never sent a valid header: given up after the tries, named with its status, so that
/// a cron job's `fetch --wait` ends. (It was counted as "answered" and retried forever.)
#[test]
fn a_mirror_answering_only_errors_is_given_up_and_named() {
    for (answer, status) in [
        (
            &b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..],
            "404",
        ),
        (
            &b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"[..],
            "500",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let client = Daemon::start_with_config(&tmp.path().join("cli"), CONFIG);
        let (port, answered) = answer_server(answer, true);
        let out = tmp.path().join("out");
        let url = format!("http://127.0.0.1:{port}/x.img");
        let out_arg = out.to_string_lossy().into_owned();
        let args = ["fetch", "--wait", "--no-verify", "-o", &out_arg, "--source", &url];
        let Some(done) = ctl_within(&client, &args, BOUND) else {
            panic!(
                "fetch --wait from a mirror answering {status} was still waiting after {BOUND:?}; log tail:\n{}",
                tail(&client.log(), 30)
            );
        };
        let stderr = text(&done.stderr);
        assert_eq!(done.status.code(), Some(4), "job failed: {stderr}");
        assert!(
            stderr.contains(&url) && stderr.contains(status),
            "the mirror is named with its status: {stderr}"
        );
        assert!(stderr.contains("after 3 attempts each"), "{stderr}");
        let tries = answered.load(std::sync::atomic::Ordering::SeqCst);
        assert!(tries >= 3, "answered {tries} requests");
    }
}

/// Every source ruled out (here: a pin no server's content matches): the failure names
/// each source with why, so that a cron mail says what to fix (it said only "every server
/// sent bad data or a mismatching header").
#[test]
fn a_job_whose_every_source_is_ruled_out_names_each_with_why() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start_with_config(&tmp.path().join("cli"), CONFIG);
    let file = tmp.path().join("x.bin");
    write_file(&file, 256 << 10, 9);
    let ports = free_ports(2);
    serve(&servers, &file, &ports, &[]);
    let other = blake3::hash(b"some other file").to_hex().to_string();
    let out = tmp.path().join("out");
    let args = fetch_args(&out, &ports, &["--wait", "--blake3", &other]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Generous: only a hang (the old behaviour of other cases) must fail this.
    let bound = Duration::from_secs(180);
    let done = ctl_within(&client, &args, bound).expect("a job of ruled-out sources ends");
    let stderr = text(&done.stderr);
    assert_eq!(done.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("every source was ruled out"), "{stderr}");
    for port in &ports {
        assert!(
            stderr.contains(&format!("127.0.0.1:{port} (")),
            "{port} named with why: {stderr}"
        );
    }
}
