//! The control plane: the queue, pause/resume/cancel, restart after kill -9 and SIGTERM,
//! corrupt state, the socket's owner-only access, hostile frames, one daemon per state dir,
//! pushed updates.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::*;

const LONG: Duration = Duration::from_secs(120);

fn terminal(s: &Value) -> bool {
    matches!(job_state(s).as_str(), "completed" | "failed" | "cancelled")
}

fn jobs(d: &Daemon) -> Vec<Value> {
    d.json(&["list"])["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A rate-limited group of 2 servers serving `files` files of `size` bytes each.
fn slow_files(
    root: &std::path::Path,
    servers: &Daemon,
    files: usize,
    size: usize,
    rate: u64,
) -> Vec<(Vec<u16>, Vec<u8>, String)> {
    slow_files_sized(root, servers, &vec![size; files], rate)
}

/// The same, a file of each of `sizes`.
fn slow_files_sized(
    root: &std::path::Path,
    servers: &Daemon,
    sizes: &[usize],
    rate: u64,
) -> Vec<(Vec<u16>, Vec<u8>, String)> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let name = format!("f{i}.bin");
            let path = root.join(&name);
            let data = write_file(&path, size, 100 + i as u64);
            let ports = free_ports(2);
            serve(servers, &path, &ports, &["--rate", &rate.to_string()]);
            (ports, data, name)
        })
        .collect()
}

#[test]
fn queue_runs_at_most_max_active_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let config = format!("max_active_downloads = 2\n{TEST_CONFIG}");
    let client = Daemon::start_with_config(&tmp.path().join("cli"), &config);
    // 512 KiB from 2 ports of 128 KiB/s each: about 2 s a job (it was a fraction of a
    // second), so that two running at once is certainly seen by the polling below, however
    // loaded the machine.
    let files = slow_files(tmp.path(), &servers, 5, 512 * 1024, 128 * 1024);
    let out = tmp.path().join("out");
    let ids: Vec<u64> = files
        .iter()
        .map(|(ports, _, _)| fetch(&client, &out, ports, &[]))
        .collect();
    let deadline = Instant::now() + LONG;
    let mut max_running = 0;
    loop {
        let list = jobs(&client);
        let states: Vec<String> = list.iter().map(job_state).collect();
        let running = states
            .iter()
            .filter(|s| *s == "running" || *s == "waiting")
            .count();
        max_running = max_running.max(running);
        assert!(running <= 2, "more than 2 running: {states:?}");
        // Jobs start in order: a queued job is never ahead of a started one.
        let first_queued = states
            .iter()
            .position(|s| s == "queued")
            .unwrap_or(states.len());
        assert!(
            states[first_queued..].iter().all(|s| s == "queued"),
            "out of order: {states:?}"
        );
        if states.iter().all(|s| s == "completed") {
            break;
        }
        assert!(states.iter().all(|s| s != "failed"), "{list:?}");
        assert!(
            Instant::now() < deadline,
            "queue did not finish: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(max_running, 2, "the slots were used");
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    for (_, data, name) in &files {
        assert_same(&out.join(name), data);
    }
}

#[test]
fn pause_resume_cancel_and_keep() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    // 3 MiB from 2 ports of 256 KiB/s each: about 6 s a file, so that a pause or cancel at
    // 10% lands seconds before the end (each port's first burst is only 64 KiB).
    let files = slow_files(tmp.path(), &servers, 3, 3 * 1024 * 1024, 256 * 1024);
    let out = tmp.path().join("out");

    // Pause at a durable point, then resume: completes byte-identical.
    let (ports, data, name) = &files[0];
    let job = fetch(&client, &out, ports, &[]).to_string();
    client.wait_job(1, LONG, |s| progress(s) > 0.1);
    client.ok(&["pause", &job]);
    let paused = client.wait_job(1, LONG, |s| job_state(s) == "paused");
    let journal = out.join(format!("{name}.arsnet-segments"));
    assert!(journal.exists(), "partial files kept while paused");
    assert!(paused["segments_done"].as_u64().unwrap() > 0);
    // One rule for every request: asking for the state a job is in succeeds.
    let again = client.ok(&["pause", &job]);
    assert_eq!(
        again.trim(),
        format!("job {job} paused"),
        "pausing a paused job"
    );
    client.ok(&["resume", &job]);
    let done = client.wait_job(1, LONG, terminal);
    assert_eq!(job_state(&done), "completed", "{done}");
    assert!(
        done["adopted_segments"].as_u64().unwrap() > 0,
        "resumed from the journal: {done}"
    );
    assert_same(&out.join(name), data);
    let err = client.ctl(&["resume", &job]);
    assert!(
        !err.status.success(),
        "resuming a completed job is an error"
    );
    assert!(String::from_utf8_lossy(&err.stderr).contains("completed"));

    // Cancel removes the partial files...
    let (ports, _, name) = &files[1];
    let job = fetch(&client, &out, ports, &[]);
    client.wait_job(job, LONG, |s| progress(s) > 0.1);
    client.ok(&["cancel", &job.to_string()]);
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "cancelled");
    assert!(!out.join(format!("{name}.arsnet-dump")).exists());
    assert!(!out.join(format!("{name}.arsnet-segments")).exists());

    // ...unless --keep, and then fetch -r adopts them.
    let (ports, data, name) = &files[2];
    let job = fetch(&client, &out, ports, &[]);
    client.wait_job(job, LONG, |s| progress(s) > 0.1);
    client.ok(&["cancel", "--keep", &job.to_string()]);
    client.wait_job(job, LONG, terminal);
    assert!(out.join(format!("{name}.arsnet-segments")).exists());
    let again = fetch(&client, &out, ports, &["-r"]);
    let st = client.wait_job(again, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert!(st["adopted_segments"].as_u64().unwrap() > 0);
    assert_same(&out.join(name), data);

    // Unknown ids are clear errors.
    let err = client.ctl(&["status", "999"]);
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("no job with id 999"));
}

#[test]
fn second_fetch_of_same_download_is_refused_and_r_attaches() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    // 1 MiB from 2 ports of 128 KiB/s each: about 4 s, so the first job is still running
    // when the duplicate fetch and the attaching one arrive, right after it.
    let files = slow_files(tmp.path(), &servers, 1, 1024 * 1024, 128 * 1024);
    let (ports, data, name) = &files[0];
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, ports, &[]);
    let owned = fetch_args(&out, ports, &[]);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let dup = client.ctl(&args);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains(&format!("job {job}")));
    let attached = fetch(&client, &out, ports, &["-r"]);
    assert_eq!(attached, job);
    assert_eq!(
        job_state(&client.wait_job(job, LONG, terminal)),
        "completed"
    );
    assert_same(&out.join(name), data);
}

#[test]
fn kill9_restores_running_queued_paused_and_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let config = format!("max_active_downloads = 1\n{TEST_CONFIG}");
    let mut client = Daemon::start_with_config(&tmp.path().join("cli"), &config);
    // The running one: 8 MiB from 2 ports of 512 KiB/s each, about 8 s, so the kill at
    // half-way lands seconds before the end, and half the file is far more than the slack
    // of the bound on what the servers sent (a resume that fetched it again would exceed
    // the bound). The queued and the paused ones only need to exist: 1 MiB each.
    let sizes = [8 << 20, 1 << 20, 1 << 20];
    let files = slow_files_sized(tmp.path(), &servers, &sizes, 512 * 1024);
    let out = tmp.path().join("out");
    let running = fetch(&client, &out, &files[0].0, &[]);
    let queued = fetch(&client, &out, &files[1].0, &[]);
    let paused = fetch(&client, &out, &files[2].0, &[]);
    client.ok(&["pause", &paused.to_string()]);
    // The client daemon also hosts a group with one port stopped.
    let own_file = tmp.path().join("own.bin");
    write_file(&own_file, 100_000, 77);
    let own_ports = free_ports(2);
    serve(&client, &own_file, &own_ports, &[]);
    client.ok(&["stop-server", &own_ports[1].to_string()]);
    client.wait_job(running, LONG, |s| progress(s) > 0.5);

    client.kill9();
    assert!(!is_listening(own_ports[0]));
    client.restart();

    let states = |c: &Daemon| -> Vec<String> { jobs(c).iter().map(job_state).collect() };
    let now = states(&client);
    assert!(now[0] == "running" || now[0] == "waiting", "{now:?}");
    assert_eq!(now[1], "queued");
    assert_eq!(now[2], "paused");
    let groups = client.json(&["servers"])["groups"].clone();
    assert_eq!(groups[0]["ports"][0]["state"], "listening", "{groups}");
    assert_eq!(groups[0]["ports"][1]["state"], "stopped", "{groups}");
    assert!(is_listening(own_ports[0]) && !is_listening(own_ports[1]));

    let st = client.wait_job(running, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert!(st["adopted_segments"].as_u64().unwrap() > 0);
    assert_same(&out.join(&files[0].2), &files[0].1);
    // No verified segment fetched twice beyond what was in flight at the kill (2 ports'
    // pipelines), what the client held short of its durability point, and a little slack.
    let total = st["segments_total"].as_u64().unwrap();
    let sent: u64 = servers.json(&["servers"])["groups"].clone()[0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["segments_sent"].as_u64().unwrap())
        .sum();
    assert!(
        sent <= total + 2 * PIPELINE_DEPTH + HELD_UNTIL_DURABLE + 2,
        "sent {sent} for {total} segments"
    );
    // The queued one runs next; the paused one stays paused.
    assert_eq!(
        job_state(&client.wait_job(queued, LONG, terminal)),
        "completed"
    );
    assert_eq!(job_state(&client.status(paused)), "paused");
}

#[test]
fn sigterm_stops_gracefully_and_the_job_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let mut client = Daemon::start(&tmp.path().join("cli"));
    // 3 MiB from 2 ports of 256 KiB/s each: about 6 s, so the SIGTERM at 20% lands seconds
    // before the end.
    let files = slow_files(tmp.path(), &servers, 1, 3 * 1024 * 1024, 256 * 1024);
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &files[0].0, &[]);
    client.wait_job(job, LONG, |s| progress(s) > 0.2);
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(client.pid() as i32, libc::SIGTERM) };
    assert_eq!(client.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!client.socket.exists(), "socket removed on a clean stop");
    client.restart();
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "completed", "{st}");
    assert!(st["adopted_segments"].as_u64().unwrap() > 0);
    assert_same(&out.join(&files[0].2), &files[0].1);
}

#[test]
fn corrupt_state_file_is_reported_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&tmp.path().join("d"));
    d.kill9();
    std::fs::write(
        d.state_dir.join("state.json"),
        b"{\"version\": 1, \"jobs\": [tru",
    )
    .unwrap();
    d.restart();
    let list = d.json(&["list"]);
    let note = list["notes"][0].as_str().unwrap_or_default().to_string();
    assert!(
        note.contains("unreadable") && note.contains("state.json.corrupt-"),
        "{list}"
    );
    let kept: Vec<_> = std::fs::read_dir(&d.state_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        })
        .collect();
    assert_eq!(kept.len(), 1, "the bad file is kept aside");
    assert!(d.ok(&["list"]).contains("WARNING"));
}

#[test]
fn second_daemon_on_same_state_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("d"));
    let out = std::process::Command::new(bin("arsnetd"))
        .arg("--socket")
        .arg(tmp.path().join("other.sock"))
        .arg("--state-dir")
        .arg(&d.state_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("already running (pid {})", d.pid())),
        "{stderr}"
    );
    // Same socket, other state dir: also refused, and the first daemon is unharmed.
    let out = std::process::Command::new(bin("arsnetd"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(tmp.path().join("other-state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    d.ok(&["list"]);
}

#[test]
fn socket_is_private_and_other_users_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("d"));
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Open the socket to everyone (and its directories to traversal; a writable one would
    // make the client refuse it), then connect as nobody: the uid check must still refuse.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    for dir in [tmp.path(), d.root.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ctl = tmp.path().join("arsnetctl");
    std::fs::copy(bin("arsnetctl"), &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = command_as(Some(65534), &ctl)
        .arg("--socket")
        .arg(&d.socket)
        .arg("list")
        .output()
        .expect("setpriv (util-linux) is installed");
    assert!(!out.status.success(), "another uid must be refused");
    assert!(d
        .log()
        .contains("refused control connection from another user"));
    d.ok(&["list"]);
}

#[test]
fn hostile_frames_close_only_that_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("d"));
    let before = rss_kib(d.pid());
    // A 4 GiB length prefix.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_closed_with(&mut s, "exceeds");
    // Random bytes.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let junk = test_data(4096, 42);
    s.write_all(&(junk.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&junk).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_closed_with(&mut s, "malformed control frame");
    // A frame that claims 1000 bytes and stalls: the connection is eventually closed
    // without blocking anyone else.
    let mut stalled = UnixStream::connect(&d.socket).unwrap();
    stalled.write_all(&1000u32.to_be_bytes()).unwrap();
    stalled.write_all(&[1, 2, 3]).unwrap();
    d.ok(&["list"]);
    let after = rss_kib(d.pid());
    assert!(
        after < before + 64 * 1024,
        "memory jumped from {before} to {after} KiB"
    );
    drop(stalled);
}

#[test]
fn watch_receives_pushed_updates() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    // 2 MiB from 2 ports of 256 KiB/s each: about 4 s, many updates' worth.
    let files = slow_files(tmp.path(), &servers, 1, 2 * 1024 * 1024, 256 * 1024);
    let out = tmp.path().join("out");
    let mut watcher = std::process::Command::new(bin("arsnetctl"))
        .arg("--socket")
        .arg(&client.socket)
        .args(["--json", "watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The watcher's lines, read on a thread so that a watcher that stops talking fails the
    // test at a deadline instead of hanging it.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + LONG;
    let next_line = |what: &str| -> String {
        let left = deadline.saturating_duration_since(Instant::now());
        lines
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("no {what} from the watcher ({e})"))
    };
    // Its first line: the subscription is answered, so the whole job is seen from here.
    next_line("first line");
    let job = fetch(&client, &out, &files[0].0, &[]);
    let mut job_updates: Vec<Value> = Vec::new();
    loop {
        let line = next_line("update with the job completed");
        let Ok(update) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if update["event"] != "job" || update["job"]["id"] != job {
            continue;
        }
        let done = job_state(&update["job"]) == "completed";
        job_updates.push(update["job"].clone());
        if done {
            break;
        }
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert!(
        job_updates.len() >= 3,
        "progress was pushed: {} updates",
        job_updates.len()
    );
    let progress: Vec<u64> = job_updates
        .iter()
        .map(|j| j["bytes_done"].as_u64().unwrap())
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert_eq!(job_state(&client.status(job)), "completed");
}

#[test]
fn cancel_after_pause_removes_files_and_r_resumes_a_paused_job() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    // 3 MiB from 2 ports of 256 KiB/s each: about 6 s a file (see
    // pause_resume_cancel_and_keep).
    let files = slow_files(tmp.path(), &servers, 2, 3 * 1024 * 1024, 256 * 1024);
    let out = tmp.path().join("out");

    // pause, then cancel right away: the cancel wins and the partial files go.
    let (ports, _, name) = &files[0];
    let job = fetch(&client, &out, ports, &[]);
    client.wait_job(job, LONG, |s| progress(s) > 0.1);
    client.ok(&["pause", &job.to_string()]);
    client.ok(&["cancel", &job.to_string()]);
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "cancelled", "{st}");
    assert!(!out.join(format!("{name}.arsnet-segments")).exists());
    assert!(!out.join(format!("{name}.arsnet-dump")).exists());

    // fetch -r of a paused job attaches to it and continues it.
    let (ports, data, name) = &files[1];
    let job = fetch(&client, &out, ports, &[]);
    client.wait_job(job, LONG, |s| progress(s) > 0.1);
    client.ok(&["pause", &job.to_string()]);
    client.wait_job(job, LONG, |s| job_state(s) == "paused");
    let owned = fetch_args(&out, ports, &["-r", "--wait"]);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let waited = client.ctl(&args);
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&waited.stdout).lines().next(),
        Some(job.to_string().as_str())
    );
    assert_same(&out.join(name), data);
}

#[test]
fn unserve_removes_a_group_for_good() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&tmp.path().join("d"));
    let file = tmp.path().join("f.bin");
    write_file(&file, 10_000, 1);
    let ports = free_ports(2);
    let group = serve(&d, &file, &ports, &[]);
    assert!(is_listening(ports[0]));
    d.ok(&["unserve", &group.to_string()]);
    assert!(!is_listening(ports[0]) && !is_listening(ports[1]));
    d.assert_no_groups("no group");
    let again = d.ctl(&["unserve", &group.to_string()]);
    assert_eq!(again.status.code(), Some(1));
    d.restart();
    d.assert_no_groups("not restored after restart");
}

#[test]
fn restore_marks_taken_ports_failed_and_keeps_groups_it_cannot_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&tmp.path().join("d"));
    let kept = tmp.path().join("kept.bin");
    let gone = tmp.path().join("gone.bin");
    write_file(&kept, 50_000, 1);
    write_file(&gone, 50_000, 2);
    let ports = free_ports(3);
    serve(&d, &kept, &ports[..2], &[]);
    let lost_group = serve(&d, &gone, &ports[2..], &[]);
    d.kill9();
    // While the daemon is down, another program takes one port and the other file goes.
    let squatter = std::net::TcpListener::bind(("0.0.0.0", ports[1])).unwrap();
    std::fs::remove_file(&gone).unwrap();
    d.restart();

    let groups = d.json(&["servers"])["groups"].clone();
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["ports"][0]["state"], "listening");
    assert_eq!(groups[0]["ports"][1]["state"], "failed");
    assert!(
        groups[0]["ports"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("in use"),
        "{groups}"
    );
    let notes = d.json(&["list"])["notes"].to_string();
    assert!(
        notes.contains("gone.bin") && notes.contains("could not be restored"),
        "{notes}"
    );

    // The lost group is not dropped: after another restart (file back) it serves again.
    drop(squatter);
    write_file(&gone, 50_000, 2);
    d.restart();
    let groups = d.json(&["servers"])["groups"].clone();
    assert_eq!(groups.as_array().unwrap().len(), 2, "{groups}");
    assert!(is_listening(ports[1]) && is_listening(ports[2]));
    d.ok(&["unserve", &lost_group.to_string()]);
    assert!(!is_listening(ports[2]));
}

/// Sends one control request on a raw connection and reads the one response frame.
fn raw_call(stream: &mut UnixStream, request: arsnet_proto::control::Request) -> Vec<u8> {
    use arsnet_proto::control::{encode_frame, ClientMessage};
    let msg = ClientMessage {
        version: arsnet_proto::limits::CONTROL_VERSION,
        request,
    };
    stream.write_all(&encode_frame(&msg).unwrap()).unwrap();
    read_raw_frame(stream).expect("a response")
}

fn read_raw_frame(stream: &mut UnixStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).ok()?;
    Some(payload)
}

#[test]
fn a_stuck_watcher_never_blocks_the_daemon_and_is_told_it_lagged() {
    use arsnet_proto::control::{decode_payload, encode_frame, ClientMessage, Request, Response};
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("d"));
    let file = tmp.path().join("f.bin");
    write_file(&file, 10_000, 1);
    let ports = free_ports(1);
    serve(&d, &file, &ports, &[]);
    // A watcher that subscribes and then does not read at all.
    let mut watcher = UnixStream::connect(&d.socket).unwrap();
    let msg = ClientMessage {
        version: arsnet_proto::limits::CONTROL_VERSION,
        request: Request::Watch { id: None },
    };
    watcher.write_all(&encode_frame(&msg).unwrap()).unwrap();
    // Thousands of group updates while it sleeps: every request still gets its answer.
    let mut ctl = UnixStream::connect(&d.socket).unwrap();
    ctl.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    for i in 0..3000 {
        let request = if i % 2 == 0 {
            Request::StopServer {
                ports: ports.clone(),
            }
        } else {
            Request::StartServer {
                ports: ports.clone(),
            }
        };
        let reply: Response = decode_payload(&raw_call(&mut ctl, request)).unwrap();
        assert_eq!(reply, Response::Done);
    }
    assert!(
        // Generous for a loaded machine, and still below CONTROL_WATCH_WRITE_STALL (300 s),
        // after which a stuck watcher is dropped: a daemon that blocked on the watcher
        // until then would fail this.
        started.elapsed() < Duration::from_secs(240),
        "the daemon kept answering"
    );
    // Now read the watcher: somewhere in its stream it was told it skipped updates.
    watcher
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut lagged = 0;
    while let Some(frame) = read_raw_frame(&mut watcher) {
        if let Ok(Response::Lagged { skipped }) = decode_payload::<Response>(&frame) {
            lagged += skipped;
            break;
        }
    }
    assert!(lagged > 0, "the slow watcher was told it lagged");
}

#[test]
fn many_clients_at_once_while_one_stalls_mid_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("d"));
    let mut stalled = UnixStream::connect(&d.socket).unwrap();
    stalled.write_all(&[0, 0, 1]).unwrap();
    let children: Vec<_> = (0..24)
        .map(|_| {
            std::process::Command::new(bin("arsnetctl"))
                .arg("--socket")
                .arg(&d.socket)
                .args(["--json", "list"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["jobs"].is_array());
    }
    // The stalled frame is given up on (10 s) and its connection closed with an error.
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_closed_with(&mut stalled, "stalled");
}

#[test]
fn control_group_members_get_in_and_others_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // nobody's primary group on Debian is nogroup (65534).
    let config = format!("control_group = \"nogroup\"\n{TEST_CONFIG}");
    let d = Daemon::start_with_config(&tmp.path().join("d"), &config);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 65534);
    let as_user = |uid: u32, gid: u32| {
        std::process::Command::new("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups")
            .arg(bin("arsnetctl"))
            .arg("--socket")
            .arg(&d.socket)
            .args(["--json", "list"])
            .output()
            .expect("setpriv")
    };
    let member = as_user(65534, 65534);
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    // Same uid trick with a group the socket does not belong to: the file system says no.
    let outsider = as_user(4242, 4242);
    assert!(!outsider.status.success());
    // A missing group is a clear start-up error, not silently ignored.
    let out = std::process::Command::new(bin("arsnetd"))
        .arg("--socket")
        .arg(tmp.path().join("x.sock"))
        .arg("--state-dir")
        .arg(tmp.path().join("x-state"))
        .arg("--config")
        .arg({
            let p = tmp.path().join("bad.toml");
            std::fs::write(&p, "control_group = \"no-such-group-arsnet\"\n").unwrap();
            p
        })
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn a_socket_directory_others_can_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let open_dir = tmp.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = std::process::Command::new(bin("arsnetd"))
        .arg("--socket")
        .arg(open_dir.join("ctl.sock"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("writable by others"), "{stderr}");
    assert!(!open_dir.join("ctl.sock").exists());
}

#[test]
fn a_state_file_of_an_earlier_release_keeps_every_job_and_group() {
    // Earlier releases saved sources as typed and accepted spellings that new requests
    // refuse (an unbracketed IPv6 address, a `+` before the port, any host text). Such a
    // state file must not lose the job table: the jobs come back, the odd sources with them.
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(&tmp.path().join("d"));
    let file = tmp.path().join("f.bin");
    write_file(&file, 100_000, 3);
    let ports = free_ports(1);
    serve(&d, &file, &ports, &[]);
    let job = fetch(&d, &tmp.path().join("out"), &ports, &["--wait"]);
    d.kill9();
    let state_path = d.state_dir.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["jobs"][0]["spec"]["sources"] =
        serde_json::json!(["::1:6101", "127.0.0.1:+6102", "a b:5"]);
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    d.restart();
    let list = d.json(&["list"]);
    assert_eq!(list["notes"], serde_json::json!([]), "{list}");
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["groups"].as_array().unwrap().len(), 1, "{list}");
    let st = d.status(job);
    assert_eq!(job_state(&st), "completed", "{st}");
    let sources: Vec<&str> = st["sources"].as_array().map_or(vec![], |s| {
        s.iter().filter_map(|s| s["address"].as_str()).collect()
    });
    assert!(
        sources.is_empty() || sources.contains(&"[::1]:6101"),
        "{st}"
    );
    // A new request must still spell its sources strictly.
    let strict = d.ctl(&[
        "fetch",
        "-o",
        tmp.path().join("o2").to_str().unwrap(),
        "--source",
        "::1:6101",
    ]);
    assert_eq!(strict.status.code(), Some(2), "{strict:?}");
}
