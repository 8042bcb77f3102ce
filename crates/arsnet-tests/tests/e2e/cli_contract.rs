//! The command line as shell users and cron jobs rely on it: every `--json` document fits
//! the one schema (docs/json-schema.json), a closed stdout ends a command like coreutils,
//! waits are bounded and say how to go on, requests answer once they are true, and what a
//! finished job reached survives restarts.

use std::io::{BufRead, BufReader};
use std::os::fd::FromRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

const LONG: Duration = Duration::from_secs(60);

pub(crate) fn schema() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/json-schema.json");
    let text = std::fs::read_to_string(path).expect("docs/json-schema.json");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema")
}

/// Asserts that every line of `stdout` is a document of the schema; returns them.
pub(crate) fn conforming(
    validator: &jsonschema::Validator,
    what: &str,
    stdout: &[u8],
) -> Vec<Value> {
    let text = String::from_utf8_lossy(stdout);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "{what}: no output");
    lines
        .iter()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {line}"));
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| e.to_string())
                .collect();
            assert!(
                errors.is_empty(),
                "{what}: {line}\n does not fit the schema: {errors:?}"
            );
            value
        })
        .collect()
}

fn json_ctl(d: &Daemon, args: &[&str]) -> std::process::Output {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    ctl_within(d, &full, LONG).expect("arsnetctl ended")
}

#[test]
fn every_json_document_fits_the_one_schema() {
    let v = schema();
    let s = slow_setup(512 * 1024, 256 * 1024);
    let file = s.tmp.path().join("slow.bin");
    let srv = &s.servers;
    let served = json_ctl(srv, &["servers"]);
    let groups = conforming(&v, "servers", &served.stdout);
    assert_eq!(groups[0]["groups"][0]["ports"][0]["state"], "listening");
    let port = s.ports[0].to_string();
    for args in [
        ["stop-server", port.as_str()],
        ["stop-server", port.as_str()],
    ] {
        conforming(&v, "stop-server", &json_ctl(srv, &args).stdout);
    }
    conforming(
        &v,
        "start-server",
        &json_ctl(srv, &["start-server", &port]).stdout,
    );
    let other = free_ports(1)[0].to_string();
    let n = "1";
    let serve_out = json_ctl(
        srv,
        &[
            "serve",
            "-n",
            n,
            "-f",
            file.to_str().unwrap(),
            "-p",
            &other,
            "--bind",
            "127.0.0.1",
        ],
    );
    conforming(&v, "serve", &serve_out.stdout);

    let args = fetch_args(&s.out, &s.ports, &["--wait", "-i", "1"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let waited = json_ctl(&s.client, &refs);
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let events = conforming(&v, "fetch --wait", &waited.stdout);
    assert!(
        events[0]["job_id"].is_u64(),
        "the job id first: {:?}",
        events[0]
    );
    assert_eq!(events.last().unwrap()["event"], "end");
    assert_eq!(events.last().unwrap()["job"]["state"], "completed");
    let st = conforming(&v, "status", &json_ctl(&s.client, &["status", "1"]).stdout);
    assert_eq!(st[0]["state"], "completed");
    assert_eq!(st[0]["reason"], Value::Null);
    conforming(&v, "list", &json_ctl(&s.client, &["list"]).stdout);
    conforming(&v, "watch ID", &json_ctl(&s.client, &["watch", "1"]).stdout);
    for request in ["pause", "resume", "cancel"] {
        // On a completed job: a refusal, as a JSON error document.
        let out = json_ctl(&s.client, &[request, "1"]);
        let docs = conforming(&v, request, &out.stdout);
        assert_eq!(
            out.status.success(),
            docs[0].get("error").is_none(),
            "{request}"
        );
    }
    // A stream that ends by its timeout: events, then the error document.
    let watched = json_ctl(&s.client, &["watch", "--timeout", "1s"]);
    assert_eq!(watched.status.code(), Some(7));
    let events = conforming(&v, "watch", &watched.stdout);
    assert!(events
        .iter()
        .any(|e| e["event"] == "groups" || e["event"] == "job"));
    let group = groups[0]["groups"][0]["id"].to_string();
    conforming(&v, "unserve", &json_ctl(srv, &["unserve", &group]).stdout);
    let missing = json_ctl(&s.client, &["status", "999"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = conforming(&v, "an error", &missing.stdout);
    assert!(err[0]["error"]["message"].as_str().unwrap().contains("999"));
}

/// Runs `arsnetctl ARGS` with stdout in a pipe, reads one line and closes the pipe.
fn first_line_then_close(d: &Daemon, args: &[&str]) -> std::process::ExitStatus {
    let mut child = Command::new(bin("arsnetctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run arsnetctl");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).expect("a first line");
    assert!(!line.is_empty(), "{args:?} printed a line");
    drop(reader);
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} did not end after its stdout closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_closed_stdout_ends_streaming_commands_like_coreutils() {
    let s = slow_setup(16 << 20, 256 * 1024);
    let args = fetch_args(&s.out, &s.ports, &["--wait", "-i", "1"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    for command in [
        refs.clone(),
        vec!["watch"],
        vec!["watch", "1"],
        vec!["--json", "watch"],
    ] {
        let status = first_line_then_close(&s.client, &command);
        assert_eq!(
            status.signal(),
            Some(libc::SIGPIPE),
            "{command:?}: {status:?}"
        );
    }
    // The download itself carried on.
    assert_eq!(job_state(&s.client.status(1)), "running");
}

/// A stdout whose reader is already gone: the first write meets EPIPE.
fn closed_stdout() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors we then own; the read end is closed at once.
    let write_end = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        libc::close(fds[0]);
        std::os::fd::OwnedFd::from_raw_fd(fds[1])
    };
    Stdio::from(write_end)
}

#[test]
fn help_to_a_stdout_already_closed_ends_by_sigpipe_too() {
    for args in [&["--help"][..], &["fetch", "--help"], &["--json", "--help"]] {
        let out = Command::new(bin("arsnetctl"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(closed_stdout())
            .stderr(Stdio::piped())
            .output()
            .expect("run arsnetctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?} {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // The daemon's printing flags answer with their exit code, never a panic (101).
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["--check-config"][..],
        &["--man"],
        &["--completions", "bash"],
    ] {
        let out = Command::new(bin("arsnetd"))
            .args(args)
            .arg("--state-dir")
            .arg(tmp.path())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(closed_stdout())
            .stderr(Stdio::piped())
            .output()
            .expect("run arsnetd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// Spawns `arsnetctl --socket SOCKET --json ARGS` (stdout and stderr piped) and returns once
/// it printed its first document: the daemon has answered its subscription, so whatever the
/// test does next happens during the wait, however slowly the command started. The reader
/// must be drained (see [`finish`]) for the command to end.
fn subscribed(
    socket: &std::path::Path,
    args: &[&str],
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(bin("arsnetctl"))
        .arg("--socket")
        .arg(socket)
        .arg("--json")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run arsnetctl");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).expect("a first line");
    assert!(!line.is_empty(), "{args:?} printed a first document");
    (child, reader)
}

/// Reads the rest of a [`subscribed`] command's stdout, then its exit status and stderr.
fn finish(
    child: std::process::Child,
    mut reader: BufReader<std::process::ChildStdout>,
) -> std::process::Output {
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut rest).unwrap();
    let mut out = child.wait_with_output().unwrap();
    out.stdout = rest;
    out
}

#[test]
fn waits_are_bounded_and_say_how_to_go_on() {
    let s = slow_setup(8 << 20, 128 * 1024);
    let args = fetch_args(&s.out, &s.ports, &["--wait", "--timeout", "2s"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ctl_within(&s.client, &refs, LONG).expect("--timeout ended the wait");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("job 1 continues") && stderr.contains("cancel 1"),
        "{stderr}"
    );
    assert_eq!(job_state(&s.client.status(1)), "running", "the job goes on");
    let watched = ctl_within(&s.client, &["watch", "--timeout", "1s"], LONG).expect("ended");
    assert_eq!(watched.status.code(), Some(7));

    // Ctrl-C while watching: exit 130, with the same hint.
    let (child, reader) = subscribed(&s.client.socket, &["watch", "1"]);
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = finish(child, reader);
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("job 1 continues"), "{stderr}");
}

#[test]
fn a_daemon_that_stops_during_a_wait_leaves_a_hint() {
    let mut s = slow_setup(8 << 20, 128 * 1024);
    let job = fetch(&s.client, &s.out, &s.ports, &[]).to_string();
    let (waiter, reader) = subscribed(&s.client.socket, &["watch", &job]);
    s.client.ok(&["shutdown"]);
    let out = finish(waiter, reader);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let id = 1;
    // Pasted as they are, the commands reach this daemon, not the default one.
    let ctl = format!("arsnetctl --socket {}", s.client.socket.display());
    for hint in [
        "continues when arsnetd runs again".to_string(),
        format!("`{ctl} status {id}`"),
        format!("`{ctl} resume {id}` resumes it"),
        format!("`{ctl} cancel {id}` stops it"),
    ] {
        assert!(stderr.contains(&hint), "{hint:?} in {stderr}");
    }
    s.client.wait_exit(LONG);
}

#[test]
fn requests_answer_once_true_and_share_one_idempotency_rule() {
    let s = slow_setup(8 << 20, 128 * 1024);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    let id = job.to_string();
    s.client
        .wait_job(job, LONG, |st| st["segments_done"].as_u64() > Some(0));
    let paused = s.client.ok(&["pause", &id]);
    assert_eq!(paused.trim(), format!("job {id} paused"));
    // Right after the answer, not eventually.
    assert_eq!(job_state(&s.client.status(job)), "paused");
    assert_eq!(
        s.client.ok(&["pause", &id]).trim(),
        format!("job {id} paused")
    );
    s.client.ok(&["resume", &id]);
    assert!(
        s.client.ctl(&["resume", &id]).status.success(),
        "resuming a running job"
    );
    s.client
        .wait_job(job, LONG, |st| job_state(st) == "running");
    s.client.ok(&["cancel", &id]);
    let leftovers: Vec<_> = std::fs::read_dir(&s.out).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "the partial files are gone when cancel answers"
    );
    assert!(
        s.client.ctl(&["cancel", &id]).status.success(),
        "cancelling a cancelled job"
    );
    let port = s.ports[0].to_string();
    s.servers.ok(&["stop-server", &port]);
    s.servers.ok(&["stop-server", &port]);
    s.servers.ok(&["start-server", &port]);
    s.servers.ok(&["start-server", &port]);
}

#[test]
fn what_a_finished_job_reached_survives_a_restart() {
    let mut s = slow_setup(1 << 20, 1 << 20);
    let args = fetch_args(&s.out, &s.ports, &["--wait"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = s.client.ok(&refs);
    let path = s.out.join("slow.bin");
    let saved = format!("saved {}", path.display());
    assert!(out.lines().last().unwrap().starts_with(&saved), "{out}");
    assert!(
        out.contains("verified: every segment against BLAKE3"),
        "{out}"
    );
    let before = s.client.status(1);
    s.client.restart();
    let after = s.client.status(1);
    for field in [
        "state",
        "size",
        "bytes_done",
        "segments_done",
        "segments_total",
        "blake3",
        "path",
        "elapsed_ms",
    ] {
        assert_eq!(
            after[field], before[field],
            "{field} after a restart: {after}"
        );
    }
    assert_eq!(after["bytes_done"], 1 << 20);
    assert!(
        after["rate_bps"].as_u64().unwrap() > 0,
        "the average rate: {after}"
    );
}

/// A job paused halfway and resumed: its last run adopted the segments the first one
/// fetched. Its average rate is of what that run fetched over how long it ran — never the
/// adopted half counted as if fetched in the second run's time — and survives a restart.
#[test]
fn a_resumed_jobs_average_rate_is_of_what_its_last_run_fetched() {
    let size = 8 << 20;
    // 4 ports of 256 KiB/s: about 8 s, so the pause at half-way lands well before the end.
    let mut s = slow_setup(size, 256 << 10);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    s.client.wait_job(job, LONG, |st| progress(st) >= 0.5);
    let id = job.to_string();
    s.client.ok(&["pause", &id]);
    s.client.ok(&["resume", &id]);
    let done = s
        .client
        .wait_job(job, LONG, |st| st["state"] == "completed");
    assert_same(&s.out.join("slow.bin"), &s.data);
    let n = |field: &str| done[field].as_u64().unwrap();
    assert!(n("adopted_segments") > 0, "{done}");
    let adopted_bytes = n("adopted_segments") * (size as u64 / n("segments_total"));
    let fetched = size as u64 - adopted_bytes;
    // rate × time is what the run moved (1 ms of rounding per byte per second aside).
    let moved = n("rate_bps") * n("elapsed_ms") / 1000;
    assert!(n("rate_bps") > 0, "{done}");
    assert!(
        moved <= fetched + n("rate_bps") / 1000 + 1,
        "rate {} B/s over {} ms is {moved} B, but the run fetched {fetched} B: {done}",
        n("rate_bps"),
        n("elapsed_ms")
    );
    s.client.restart();
    let after = s.client.status(job);
    assert_eq!(after["rate_bps"], done["rate_bps"], "{after}");
}

#[test]
fn human_sized_rates_and_a_progress_report_on_a_fixed_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("d"));
    let file = tmp.path().join("f.bin");
    write_file(&file, 1 << 20, 7);
    let ports = free_ports(3);
    serve(&d, &file, &ports[..1], &["--rate", "5M"]);
    serve(&d, &file, &ports[1..2], &["--rate", "40Mbit"]);
    serve(&d, &file, &ports[2..], &["--rate", "1K"]);
    let groups = d.json(&["servers"])["groups"].clone();
    assert_eq!(groups.as_array().unwrap().len(), 3, "{groups}");
    let bad = d.ctl(&[
        "serve",
        "-n",
        "1",
        "-f",
        file.to_str().unwrap(),
        "-p",
        "7001",
        "--rate",
        "5X",
    ]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a unit nobody knows is a usage error"
    );
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a rate"));

    // A job whose figures hardly move (its only source sends 1 KiB/s, so no 64 KiB segment
    // completes) is still reported every -i seconds, not only when something changes.
    let out = tmp.path().join("out");
    let args = fetch_args(&out, &ports[2..], &["--wait", "-i", "1", "--timeout", "6s"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let waited = ctl_within(&d, &refs, LONG).expect("bounded");
    assert_eq!(waited.status.code(), Some(7));
    let reports = String::from_utf8_lossy(&waited.stdout)
        .lines()
        // After each line's UTC stamp (`2026-12-02T15:04:05Z `).
        .filter(|l| l.get(21..).is_some_and(|rest| rest.starts_with("job 1 ")))
        .count();
    // Six seconds (about six reports) leave room for a slow start on a loaded machine.
    assert!(reports >= 3, "reports in 6 s with -i 1: {reports}");
}

#[test]
fn odd_inputs_and_failed_ends_keep_to_the_schema_and_the_exit_table() {
    let v = schema();
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("d"));
    // A usage error with --json is an error document, exit 2.
    let usage = json_ctl(&d, &["status", "not-a-number"]);
    assert_eq!(usage.status.code(), Some(2));
    let docs = conforming(&v, "a usage error", &usage.stdout);
    assert_eq!(docs[0]["error"]["exit"], 2);
    // The JSON error names what is missing, as the text one does on its second line.
    let missing = json_ctl(&d, &["fetch", "-o", "/tmp", "-a", "127.0.0.1"]);
    assert_eq!(missing.status.code(), Some(2));
    let docs = conforming(&v, "a missing argument", &missing.stdout);
    let message = docs[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("-p <PORT>"), "{message}");
    // A negative rate or timeout gets the value's own message, not clap's "unexpected
    // argument"; a zero timeout is a usage error, not a wait that ends at once.
    for (args, said) in [
        (
            &[
                "serve",
                "-n",
                "1",
                "-f",
                "/etc/hostname",
                "-p",
                "40000",
                "--rate",
                "-1",
            ][..],
            "is not a rate",
        ),
        (&["watch", "--timeout", "-1"][..], "-1"),
        (&["watch", "--timeout", "0s"][..], "no time to wait"),
    ] {
        let out = d.ctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(said) && !stderr.contains("unexpected argument"),
            "{args:?}: {stderr}"
        );
    }
    // A timeout too long for the clock is no timeout, not a panic.
    let out = ctl_within(
        &d,
        &["watch", "--timeout", "9223372036854775807s"],
        Duration::from_secs(3),
    );
    assert!(out.is_none(), "still watching (not crashed): {out:?}");
    // A job that fails ends its stream with an "end" event carrying exit 4, then the error.
    let dead = dead_ports(1);
    let args = fetch_args(&tmp.path().join("out"), &dead.ports, &["--wait"]);
    let mut refs: Vec<&str> = args.iter().map(String::as_str).collect();
    refs.insert(0, "--json");
    let failed = ctl_within(&d, &refs, LONG).expect("a dead source is given up");
    assert_eq!(failed.status.code(), Some(4));
    let docs = conforming(&v, "a failed fetch --wait", &failed.stdout);
    let end = docs
        .iter()
        .find(|d| d["event"] == "end")
        .expect("an end event");
    assert_eq!(end["exit"], 4);
    assert_eq!(end["job"]["state"], "failed");
    assert!(docs.last().unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("failed"));
}

#[test]
fn a_non_utf8_argument_or_a_closed_stderr_is_no_panic() {
    use std::os::unix::ffi::OsStrExt;
    let v = schema();
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("none.sock");
    let bad = std::ffi::OsStr::from_bytes(b"\xff");
    let run = |json: bool| {
        let mut command = Command::new(bin("arsnetctl"));
        command.arg("--socket").arg(&socket);
        if json {
            command.arg("--json");
        }
        command.arg("status").arg(bad).output().unwrap()
    };
    // A usage error (exit 2) naming the cause, in text and as a JSON error document.
    let out = run(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid UTF-8"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let out = run(true);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let docs = conforming(&v, "a non-UTF-8 argument", &out.stdout);
    assert_eq!(docs[0]["error"]["exit"], 2);

    // A path that is not UTF-8 (the control protocol carries paths as text) is a usage
    // error before anything is created or sent: not "daemon unreachable" (3), and no
    // directory left behind.
    let d = Daemon::start(&tmp.path().join("d"));
    let out_dir = tmp.path().join(std::ffi::OsStr::from_bytes(b"out-\xff"));
    let out = Command::new(bin("arsnetctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["fetch", "-a", "127.0.0.1", "-p", "40000", "-o"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");
    assert!(!out_dir.exists(), "nothing created");

    // A closed stderr loses the message, not the exit code: 3 (no daemon), never 101.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(bin("arsnetctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["status", "1"])
        .stdout(Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "{status:?}");
}

#[test]
fn json_answers_on_a_running_job_and_shutdown_fit_the_schema() {
    let v = schema();
    let mut s = slow_setup(8 << 20, 128 * 1024);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    let id = job.to_string();
    s.client
        .wait_job(job, LONG, |st| st["segments_done"].as_u64() > Some(0));
    for (request, state) in [
        ("pause", "paused"),
        ("resume", "running"),
        ("cancel", "cancelled"),
    ] {
        if request == "cancel" {
            s.client
                .wait_job(job, LONG, |st| job_state(st) == "running");
        }
        let out = json_ctl(&s.client, &[request, &id]);
        assert!(out.status.success(), "{request}: {out:?}");
        let docs = conforming(&v, request, &out.stdout);
        assert_eq!(docs[0]["ok"], true, "{request}: {:?}", docs[0]);
        assert_eq!(docs[0]["job"]["state"], state, "{request}: {:?}", docs[0]);
    }
    // Neither a manual page nor a completion script pretends to be JSON.
    for args in [vec!["man"], vec!["completions", "bash"]] {
        let out = json_ctl(&s.client, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let docs = conforming(&v, args[0], &out.stdout);
        assert_eq!(docs[0]["error"]["exit"], 2);
    }
    let out = json_ctl(&s.client, &["shutdown"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(conforming(&v, "shutdown", &out.stdout)[0]["ok"], true);
    s.client.wait_exit(LONG);
}

#[test]
fn watch_id_ends_with_the_jobs_exit_code() {
    // 4 sources at 128 KiB/s each: 2 MiB take about 4 s, time to attach a watcher.
    let s = slow_setup(2 << 20, 128 * 1024);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    s.client
        .wait_job(job, LONG, |st| job_state(st) == "running");
    let out = ctl_within(&s.client, &["watch", &job.to_string()], LONG).expect("watch ended");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(job_state(&s.client.status(job)), "completed");

    // Cancelled from another process while watched: exit 5.
    let other = s.tmp.path().join("again");
    let job = fetch(&s.client, &other, &s.ports, &[]);
    s.client
        .wait_job(job, LONG, |st| job_state(st) == "running");
    let mut watcher = Command::new(bin("arsnetctl"))
        .arg("--socket")
        .arg(&s.client.socket)
        .args(["watch", &job.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    s.client.ok(&["cancel", &job.to_string()]);
    let deadline = Instant::now() + LONG;
    let status = loop {
        if let Some(status) = watcher.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = watcher.kill();
            panic!("watch {job} did not end after the job was cancelled");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(5), "{status:?}");
}

/// How a fake daemon answers a `watch`: these updates, then the connection is closed (or
/// kept open without a word more).
struct WatchScript {
    updates: Vec<arsnet_proto::control::Response>,
    close: bool,
}

/// A daemon in this test's process, at `dir/ctl.sock`, speaking just enough of the control
/// protocol: `fetch` answers `fetch_answer` (none: never answers), the n-th `watch` follows
/// `watches[n]` (past the end: never answers), `status` answers the job running. Returns
/// the socket and how many requests of each kind arrived (fetch, watch).
fn fake_daemon(
    dir: &std::path::Path,
    fetch_answer: Option<arsnet_proto::control::Response>,
    watches: Vec<WatchScript>,
) -> (
    std::path::PathBuf,
    std::sync::Arc<[std::sync::atomic::AtomicUsize; 2]>,
) {
    use arsnet_proto::control::{decode_client_message, encode_frame, JobState, Request, Response};
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let socket = dir.join("ctl.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let seen = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let watches = Arc::new(Mutex::new(watches.into_iter()));
    let counts = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (seen, watches, fetch_answer) =
                (counts.clone(), watches.clone(), fetch_answer.clone());
            std::thread::spawn(move || loop {
                let mut len = [0u8; 4];
                if conn.read_exact(&mut len).is_err() {
                    return;
                }
                let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
                if conn.read_exact(&mut payload).is_err() {
                    return;
                }
                let (answers, close) = match decode_client_message(&payload) {
                    Ok(Request::Fetch(_)) => {
                        seen[0].fetch_add(1, Ordering::SeqCst);
                        (fetch_answer.clone().into_iter().collect(), false)
                    }
                    Ok(Request::Watch { .. }) => {
                        seen[1].fetch_add(1, Ordering::SeqCst);
                        match watches.lock().unwrap().next() {
                            Some(script) => (script.updates, script.close),
                            None => (vec![], false),
                        }
                    }
                    Ok(Request::Status { id }) => {
                        (vec![Response::Job(fake_job(id, JobState::Running))], false)
                    }
                    _ => (vec![], false),
                };
                for answer in answers {
                    if conn.write_all(&encode_frame(&answer).unwrap()).is_err() {
                        return;
                    }
                }
                if close {
                    return;
                }
            });
        }
    });
    (socket, seen)
}

/// `arsnetctl --socket SOCKET ARGS`, stdin closed: the fake-daemon tests' command.
fn ctl_at(socket: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("arsnetctl"));
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs `arsnetctl --socket SOCKET ARGS`, stderr piped, stdout to nowhere.
fn spawn_ctl(socket: &std::path::Path, args: &[&str]) -> std::process::Child {
    ctl_at(socket, args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run arsnetctl")
}

/// Waits until `count` reaches `n` (the request is at the fake daemon, unanswered).
fn wait_count(count: &std::sync::atomic::AtomicUsize, n: usize, what: &str) {
    let deadline = Instant::now() + LONG;
    while count.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "no {what} arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGINT to `child`, then its exit status and stderr.
fn interrupt(child: std::process::Child) -> (std::process::ExitStatus, String) {
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctrl_c_before_the_daemon_answers_still_gets_the_hint() {
    use arsnet_proto::control::Response;
    // `watch 5`: Ctrl-C while the daemon has not answered the subscription yet.
    let tmp = tempfile::tempdir().unwrap();
    let (socket, seen) = fake_daemon(tmp.path(), None, vec![]);
    let child = spawn_ctl(&socket, &["watch", "5"]);
    wait_count(&seen[1], 1, "watch request");
    let (status, stderr) = interrupt(child);
    assert_eq!(status.code(), Some(130), "{status:?}: {stderr}");
    assert!(
        stderr.contains("job 5 continues") && stderr.contains("cancel 5"),
        "{stderr}"
    );

    // `fetch --wait`: the job was queued, Ctrl-C comes while subscribing to it.
    let tmp = tempfile::tempdir().unwrap();
    let queued = Response::Queued {
        id: 5,
        attached: false,
    };
    let (socket, seen) = fake_daemon(tmp.path(), Some(queued), vec![]);
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap();
    let fetch = ["fetch", "--wait", "-o", out, "-a", "127.0.0.1", "-p", "9"];
    let child = spawn_ctl(&socket, &fetch);
    wait_count(&seen[1], 1, "watch request");
    let (status, stderr) = interrupt(child);
    assert_eq!(status.code(), Some(130), "{status:?}: {stderr}");
    assert!(stderr.contains("job 5 continues"), "{stderr}");

    // ... and before the daemon even answered the fetch: no job id to name yet.
    let tmp = tempfile::tempdir().unwrap();
    let (socket, seen) = fake_daemon(tmp.path(), None, vec![]);
    let child = spawn_ctl(&socket, &fetch);
    wait_count(&seen[0], 1, "fetch request");
    let (status, stderr) = interrupt(child);
    assert_eq!(status.code(), Some(130), "{status:?}: {stderr}");
    assert!(
        stderr.contains("before arsnetd answered")
            && stderr.contains(&format!("`arsnetctl --socket {} list`", socket.display())),
        "{stderr}"
    );
}

#[test]
fn a_lost_connection_is_subscribed_again_once_then_leaves_the_hint() {
    use arsnet_proto::control::{JobState, Response, Update};
    let job = |state| Response::Update(Update::Job(fake_job(5, state)));
    // The connection drops after the first update; the second subscription sees the end.
    let tmp = tempfile::tempdir().unwrap();
    let watches = vec![
        WatchScript {
            updates: vec![job(JobState::Running)],
            close: true,
        },
        WatchScript {
            updates: vec![job(JobState::Completed)],
            close: false,
        },
    ];
    let (socket, seen) = fake_daemon(tmp.path(), None, watches);
    let out = ctl_within_socket(&socket, &["watch", "5"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(seen[1].load(std::sync::atomic::Ordering::SeqCst), 2);

    // Lost again on the second subscription: exit 3, with the hint.
    let tmp = tempfile::tempdir().unwrap();
    let watches = vec![
        WatchScript {
            updates: vec![job(JobState::Running)],
            close: true,
        },
        WatchScript {
            updates: vec![],
            close: true,
        },
    ];
    let (socket, _) = fake_daemon(tmp.path(), None, watches);
    let out = ctl_within_socket(&socket, &["watch", "5"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("continues when arsnetd runs again") && stderr.contains("status 5"),
        "{stderr}"
    );
}

/// `arsnetctl --socket SOCKET ARGS` to its end (bounded by `LONG`).
fn ctl_within_socket(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut child = ctl_at(socket, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run arsnetctl");
    let deadline = Instant::now() + LONG;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("arsnetctl {args:?} did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn watch_without_an_id_leaves_a_hint_when_the_daemon_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&tmp.path().join("d"));
    let shown = tmp.path().join("watch.out");
    let child = Command::new(bin("arsnetctl"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("watch")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&shown).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LONG;
    while std::fs::metadata(&shown).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "watch showed nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Killed: the socket file stays, nothing listens at it, the reconnect is refused.
    d.kill9();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("every job is saved and continues when arsnetd runs again")
            && stderr.contains(&format!("`arsnetctl --socket {} list`", d.socket.display())),
        "{stderr}"
    );
}

#[test]
fn watch_reports_at_its_own_interval_not_the_jobs() {
    // The job pushes its updates every 30 s; `watch -i 1` still shows new figures each
    // second or so (4 sources at 128 KiB/s: 8 MiB last about 16 s).
    let s = slow_setup(8 << 20, 128 * 1024);
    let job = fetch(&s.client, &s.out, &s.ports, &["-i", "30"]);
    s.client
        .wait_job(job, LONG, |st| job_state(st) == "running");
    let id = job.to_string();
    let args = ["--json", "watch", "-i", "1", "--timeout", "5s", &id];
    let out = ctl_within(&s.client, &args, LONG).expect("bounded by its timeout");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let docs = conforming(&schema(), "watch -i 1", &out.stdout);
    let mut seen: Vec<u64> = docs
        .iter()
        .filter(|d| d["event"] == "job")
        .filter_map(|d| d["job"]["bytes_done"].as_u64())
        .collect();
    seen.dedup();
    assert!(
        seen.len() >= 2,
        "new figures in 5 s with -i 1 on a job of -i 30: {seen:?}"
    );
}

#[test]
fn every_command_has_a_manual_page_naming_its_options() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    let out = Command::new(bin("arsnetctl"))
        .args(["man", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout);
    let top = std::fs::read_to_string(dir.join("arsnetctl.1")).expect("arsnetctl.1");
    assert!(top.contains("arsnetctl"), "{top}");
    let commands = [
        "serve",
        "servers",
        "stop-server",
        "start-server",
        "unserve",
        "fetch",
        "list",
        "status",
        "watch",
        "pause",
        "resume",
        "cancel",
        "metrics",
        "shutdown",
        "man",
        "completions",
    ];
    for command in commands {
        let path = dir.join(format!("arsnetctl-{command}.1"));
        assert!(
            listed.contains(path.to_str().unwrap()),
            "{} is listed: {listed}",
            path.display()
        );
        let page =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Every long option `--help` shows is in the page (roff writes `-` as `\-`).
        let help = Command::new(bin("arsnetctl"))
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        // The lines that introduce an option: `  -i <SECS>`, `      --wait`, `  -q, --quiet`.
        let options: Vec<&str> = help
            .lines()
            .filter(|l| l.trim_start().starts_with('-'))
            .filter_map(|l| {
                l.split(|c: char| c.is_whitespace() || c == ',')
                    .find(|w| w.starts_with("--") && w.len() > 2)
            })
            .collect();
        if command == "fetch" {
            assert!(options.contains(&"--wait"), "{help}");
        }
        for option in options {
            let roff = option.replace('-', "\\-");
            assert!(page.contains(&roff), "{} names {option}", path.display());
        }
    }
}

/// The nightly `fetch -r --wait` of the README's cron example, on the night after the file
/// arrived: the download is found already published and verified, and its `saved` line and
/// figures say how big it is (they said "(?)" and 0 bytes).
#[test]
fn fetch_r_of_a_file_already_saved_names_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("nightly.bin");
    let data = write_file(&file, 1 << 20, 5);
    let ports = free_ports(2);
    serve(&servers, &file, &ports, &[]);
    let out = tmp.path().join("out");
    let args = fetch_args(&out, &ports, &["-r", "--wait"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for night in ["first", "second"] {
        let done = ctl_within(&client, &args, LONG).expect("fetch -r --wait ends");
        let stdout = String::from_utf8_lossy(&done.stdout);
        assert_eq!(done.status.code(), Some(0), "{night} night: {stdout}");
        let saved = stdout
            .lines()
            .rfind(|l| l.contains("saved "))
            .unwrap_or_else(|| panic!("{night} night: no saved line in {stdout}"));
        assert!(
            !saved.contains("(?)") && saved.contains("verified"),
            "{night} night: {saved}"
        );
    }
    assert_same(&out.join("nightly.bin"), &data);
    let second = client.status(2);
    assert_eq!(second["size"], 1 << 20, "{second}");
    assert_eq!(second["bytes_done"], 1 << 20, "{second}");
}
