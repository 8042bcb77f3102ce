//! The engine-core behaviours: serve, fetch, failover, resume after kill -9, integrity,
//! and the bad inputs that must be refused with nothing started or written.

use std::path::Path;
use std::time::Duration;

use crate::faulty::{Fault, FaultyServer};
use crate::util::*;

const LONG: Duration = Duration::from_secs(120);

fn completed(s: &serde_json::Value) -> bool {
    job_state(s) == "completed"
}

fn terminal(s: &serde_json::Value) -> bool {
    matches!(job_state(s).as_str(), "completed" | "failed" | "cancelled")
}

/// Serve `size` bytes on 4 servers and fetch them with `fetch --wait`.
fn download_roundtrip(size: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("payload.bin");
    let data = write_file(&file, size, size as u64 + 7);
    let ports = free_ports(4);
    serve(&servers, &file, &ports, &[]);
    let out = tmp.path().join("out");
    let owned = fetch_args(&out, &ports, &["--wait"]);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let stdout = client.ok(&args);
    assert!(
        stdout.contains("completed"),
        "final report shows completion: {stdout}"
    );
    assert_same(&out.join("payload.bin"), &data);
    // Only the final file remains: no dump, no journal.
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("payload.bin")]);
}

#[test]
fn download_empty_file() {
    download_roundtrip(0);
}

#[test]
fn download_one_byte() {
    download_roundtrip(1);
}

#[test]
fn download_size_not_multiple_of_segment() {
    download_roundtrip(65536 * 37 + 12345);
}

#[test]
fn download_large_file_uses_every_server() {
    let size = 100 * 1024 * 1024 + 4321;
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("big.bin");
    let data = write_file(&file, size, 99);
    let ports = free_ports(4);
    serve(&servers, &file, &ports, &[]);
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &ports, &[]);
    let status = client.wait_job(job, LONG, terminal);
    assert!(completed(&status), "{status}");
    assert_same(&out.join("big.bin"), &data);
    let segments: Vec<u64> = status["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["segments"].as_u64().unwrap())
        .collect();
    assert_eq!(
        segments.iter().sum::<u64>(),
        status["segments_total"].as_u64().unwrap()
    );
    assert!(
        segments.iter().all(|&n| n > 0),
        "every server contributed: {segments:?}"
    );
}

#[test]
fn stop_server_mid_transfer_fails_over() {
    // 4 ports of 512 KiB/s: about 6 s, so the stop at a quarter lands seconds before the end.
    let s = slow_setup(12 * 1024 * 1024, 512 * 1024);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    s.client.wait_job(job, LONG, |st| progress(st) >= 0.25);
    let victim = s.ports[1].to_string();
    s.servers.ok(&["stop-server", &victim]);
    // The stopped server no longer listens (its listener may take a moment to close).
    wait_not_listening(s.ports[1], Duration::from_secs(30));
    let status = s.client.wait_job(job, LONG, terminal);
    assert!(completed(&status), "{status}");
    assert_same(&s.out.join("slow.bin"), &s.data);
    let victim_source = &status["sources"][1];
    assert!(
        victim_source["failures"].as_u64().unwrap() >= 1,
        "{victim_source}"
    );
    // The other servers took over the victim's share.
    let others: u64 = [0, 2, 3]
        .iter()
        .map(|&i| status["sources"][i]["segments"].as_u64().unwrap())
        .sum();
    assert!(others > status["segments_total"].as_u64().unwrap() * 3 / 4 - 1);
}

#[test]
fn all_servers_stopped_then_started_completes() {
    // 4 ports of 256 KiB/s: about 6 s, so the job is still running when they all stop.
    let s = slow_setup(6 * 1024 * 1024, 256 * 1024);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    s.client.wait_job(job, LONG, |st| progress(st) >= 0.2);
    let ps = ports_args(&s.ports);
    let mut stop = vec!["stop-server"];
    stop.extend(ps.iter().map(String::as_str));
    s.servers.ok(&stop);
    let waiting = s
        .client
        .wait_job(job, LONG, |st| job_state(st) == "waiting");
    let kept = waiting["bytes_done"].as_u64().unwrap();
    assert!(kept > 0, "keeps what it has while waiting");
    assert!(
        !s.out.join("slow.bin").exists(),
        "no final file while incomplete"
    );
    let mut start = vec!["start-server"];
    start.extend(ps.iter().map(String::as_str));
    s.servers.ok(&start);
    let status = s.client.wait_job(job, LONG, terminal);
    assert!(completed(&status), "{status}");
    assert_same(&s.out.join("slow.bin"), &s.data);
}

#[test]
fn kill9_client_daemon_then_fetch_r_resumes() {
    // 4 ports of 512 KiB/s: about 8 s, so the kill at 40% lands seconds before the end.
    let mut s = slow_setup(16 * 1024 * 1024, 512 * 1024);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    s.client.wait_job(job, LONG, |st| progress(st) >= 0.4);
    s.client.kill9();
    let dump = s.out.join("slow.bin.arsnet-dump");
    let journal = s.out.join("slow.bin.arsnet-segments");
    assert!(
        dump.exists() && journal.exists(),
        "partial files survive kill -9"
    );
    // A fresh daemon on a fresh state dir: only the dump + journal carry the progress. They
    // are an orphan to it, and an orphan never chooses the content: the servers' majority
    // does, and the orphan is continued because it is that content.
    let client2 = Daemon::start(&s.tmp.path().join("cli2"));
    let job2 = fetch(&client2, &s.out, &s.ports, &["-r"]);
    let status = client2.wait_job(job2, LONG, terminal);
    assert!(completed(&status), "{status}");
    assert_same(&s.out.join("slow.bin"), &s.data);
    assert!(!dump.exists() && !journal.exists());
    let total = status["segments_total"].as_u64().unwrap();
    let adopted = status["adopted_segments"].as_u64().unwrap();
    assert!(adopted >= total * 3 / 10, "adopted {adopted} of {total}");
    assert!(client2.log().contains("adopted segments from the journal"));
    // Everything the servers sent, across both runs, is the file plus at most what was in
    // flight or awaiting its durability point at the kill (4 servers' pipelines, what the
    // client's queues and a commit batch hold: HELD_UNTIL_DURABLE) plus endgame duplicates
    // (16). Far less than the 40% adopted: a resume that fetched those again exceeds it.
    let groups = s.servers.json(&["servers"])["groups"].clone();
    let sent: u64 = groups[0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["segments_sent"].as_u64().unwrap())
        .sum();
    assert!(
        sent <= total + 4 * PIPELINE_DEPTH + HELD_UNTIL_DURABLE + 16,
        "servers sent {sent} segments for a {total}-segment file"
    );
}

#[test]
fn serve_refuses_bad_input_and_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("srv"));
    let file = tmp.path().join("f.bin");
    write_file(&file, 1000, 1);
    let f = file.to_str().unwrap();
    let [a, b] = free_ports(2)[..] else {
        unreachable!()
    };
    let (a_s, b_s) = (a.to_string(), b.to_string());
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let dir = tmp.path().to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["-n", "2", "-f", f, "-p", &a_s, "80"], "1024..=65535"),
        (vec!["-n", "3", "-f", f, "-p", &a_s, &b_s], "-n says 3"),
        (vec!["-n", "2", "-f", f, "-p", &a_s, &a_s], "listed twice"),
        (vec!["-n", "2", "-f", f, "-p", &a_s, &busy_port], &busy_port),
        (
            vec!["-n", "1", "-f", "/nonexistent/file", "-p", &a_s],
            "No such file",
        ),
        (vec!["-n", "1", "-f", dir, "-p", &a_s], "not a regular file"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["serve", "-i", "1"];
        full.extend(args.iter().copied());
        let out = d.ctl(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{full:?} should fail");
        assert!(
            stderr.contains(needle),
            "{full:?}: error {stderr:?} should mention {needle:?}"
        );
        assert!(
            !is_listening(a) && !is_listening(b),
            "{full:?} left a port listening"
        );
    }
    d.assert_no_groups("no group was started");
}

#[test]
fn existing_target_is_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("data.bin");
    let data = write_file(&file, 300_000, 5);
    let ports = free_ports(2);
    serve(&servers, &file, &ports, &[]);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("data.bin"), b"precious").unwrap();
    let job = fetch(&client, &out, &ports, &[]);
    let status = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&status), "failed", "{status}");
    assert!(status.to_string().contains("already exists"), "{status}");
    assert_eq!(std::fs::read(out.join("data.bin")).unwrap(), b"precious");
    // With --overwrite it is replaced.
    let job = fetch(&client, &out, &ports, &["--overwrite"]);
    assert!(completed(&client.wait_job(job, LONG, terminal)));
    assert_same(&out.join("data.bin"), &data);
}

#[test]
fn fetch_wait_exit_code_reports_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Daemon::start(&tmp.path().join("cli"));
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // A faulty server that is the only source and corrupts segment 0: the job must fail
    // (every server blamed), and --wait must say so with a non-zero exit code.
    let data = test_data(200_000, 3);
    let bad = FaultyServer::start(data, "x.bin", 65536, Fault::CorruptSegment(0));
    let port = bad.port.to_string();
    let out_s = out.to_str().unwrap();
    let result = client.ctl(&[
        "fetch",
        "--wait",
        "-o",
        out_s,
        "-a",
        "127.0.0.1",
        "-p",
        &port,
    ]);
    assert_eq!(
        result.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(String::from_utf8_lossy(&result.stderr).contains("failed"));
    assert!(!out.join("x.bin").exists(), "no final file from bad data");
}

#[test]
fn corrupt_segment_blames_server_and_file_is_still_correct() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Daemon::start(&tmp.path().join("cli"));
    let data = test_data(2 * 1024 * 1024 + 99, 8);
    let liar = FaultyServer::start(data.clone(), "file.bin", 65536, Fault::CorruptAll);
    let slow = Fault::Slow(Duration::from_millis(5));
    let honest1 = FaultyServer::start(data.clone(), "file.bin", 65536, slow.clone());
    let honest2 = FaultyServer::start(data.clone(), "file.bin", 65536, slow);
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &[liar.port, honest1.port, honest2.port], &[]);
    let status = client.wait_job(job, LONG, terminal);
    assert!(completed(&status), "{status}");
    assert_same(&out.join("file.bin"), &data);
    let liar_status = &status["sources"][0];
    assert_eq!(liar_status["state"], "blamed", "{status}");
    assert_eq!(
        liar_status["segments"], 0,
        "no segment of the liar was accepted"
    );
    assert!(
        liar_status["detail"].as_str().unwrap().contains("corrupt"),
        "{liar_status}"
    );
    assert!(client.log().contains("segment failed verification"));
}

#[test]
fn hostile_file_name_is_refused_and_nothing_written_outside_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Daemon::start(&tmp.path().join("cli"));
    let data = test_data(100_000, 9);
    let evil = FaultyServer::start(data, "x", 65536, Fault::Name("../x".into()));
    let out = tmp.path().join("a").join("out");
    let job = fetch(&client, &out, &[evil.port], &[]);
    // The header is refused at every attempt: the job keeps waiting and never writes.
    let status = client.wait_job(job, LONG, |s| {
        terminal(s) || s.to_string().contains("unsafe file name")
    });
    assert_ne!(job_state(&status), "completed");
    assert!(status.to_string().contains("unsafe file name"), "{status}");
    assert!(!tmp.path().join("a").join("x").exists());
    assert!(!tmp.path().join("a").join("x.arsnet-dump").exists());
    let written: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.count())
        .into_iter()
        .collect();
    assert!(
        written.iter().all(|&n| n == 0),
        "nothing written in DIR either"
    );
    client.ok(&["cancel", &job.to_string()]);
}

#[test]
fn server_with_different_content_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Daemon::start(&tmp.path().join("cli"));
    let data = test_data(4 * 1024 * 1024, 10);
    let other = test_data(4 * 1024 * 1024, 20);
    // The honest servers answer first (and slowly), so their content is the reference when
    // the impostor's header arrives.
    let slow = Fault::Slow(Duration::from_millis(10));
    let good1 = FaultyServer::start(data.clone(), "same.bin", 65536, slow.clone());
    let good2 = FaultyServer::start(data.clone(), "same.bin", 65536, slow);
    let late = Fault::LateHeader(Duration::from_millis(150));
    let impostor = FaultyServer::start(other, "same.bin", 65536, late);
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &[good1.port, good2.port, impostor.port], &[]);
    let status = client.wait_job(job, LONG, terminal);
    assert!(completed(&status), "{status}");
    assert_same(&out.join("same.bin"), &data);
    let impostor_status = &status["sources"][2];
    assert_eq!(impostor_status["state"], "blamed", "{status}");
    assert!(
        impostor_status["detail"]
            .as_str()
            .unwrap()
            .contains("other content"),
        "{impostor_status}"
    );
}

#[test]
fn ctl_without_daemon_fails_with_documented_code() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin("arsnetctl"))
        .arg("--socket")
        .arg(tmp.path().join("nope.sock"))
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("arsnetd is not running"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(!Path::new(&tmp.path().join("nope.sock")).exists());
}

#[test]
fn server_answers_protocol_violations_with_an_error_frame() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("srv"));
    let file = tmp.path().join("f.bin");
    write_file(&file, 100_000, 2);
    let ports = free_ports(1);
    serve(&d, &file, &ports, &[]);
    // Wrong protocol version in HELLO.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ports[0])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[0x01, 0, 0, 0, 8, b'A', b'R', b'S', b'N', 0, 99, 0, 0])
        .unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&0x85), "ERROR frame: {reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("unsupported protocol version 99"));
    // A valid HELLO, then a request for a segment that does not exist.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ports[0])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&hello_frame()).unwrap();
    let mut bad = vec![0x02, 0, 0, 0, 8];
    bad.extend_from_slice(&1000u64.to_be_bytes());
    s.write_all(&bad).unwrap();
    assert_closed_with(&mut s, "segment 1000 out of range");
    // An unknown frame type after HELLO.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", ports[0])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&hello_frame()).unwrap();
    s.write_all(&[0x7f, 0, 0, 0, 0]).unwrap();
    assert_closed_with(&mut s, "unknown frame type");
}

#[test]
fn serve_refuses_an_unreadable_file() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // Root reads everything, so the serving daemon runs as nobody for this one.
    let d = Daemon::start_as_nobody(&tmp.path().join("srv"));
    let file = tmp.path().join("secret.bin");
    write_file(&file, 10_000, 3);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ports = free_ports(1);
    let port = ports[0].to_string();
    let out = d.ctl(&[
        "serve",
        "-i",
        "1",
        "-n",
        "1",
        "-f",
        file.to_str().unwrap(),
        "-p",
        &port,
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("secret.bin") && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert!(!is_listening(ports[0]));
    d.assert_no_groups("no group");
}

/// A small tmpfs mounted for one test, unmounted when dropped (even on panic).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(path.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn full_disk_fails_clearly_and_resumes_after_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("big.bin");
    let data = write_file(&file, 6 * 1024 * 1024, 21);
    let ports = free_ports(2);
    // 2 ports of 512 KiB/s: about 6 s, so the disk fills while the download runs.
    serve(&servers, &file, &ports, &["--rate", "512K"]);

    // A file that cannot fit is refused before anything is written, naming both sizes.
    let tiny = tmp.path().join("tiny-disk");
    let _tiny_disk = Tmpfs::mount(&tiny, "2m");
    let job = fetch(&client, &tiny, &ports, &[]);
    let status = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&status), "failed", "{status}");
    let text = status.to_string();
    assert!(text.contains("6291456") && text.contains("free"), "{text}");
    assert_eq!(
        std::fs::read_dir(&tiny).unwrap().count(),
        0,
        "nothing created"
    );

    // A disk that fills up while the download runs: a clear ENOSPC, durable work kept.
    let out = tmp.path().join("small-disk");
    let disk = Tmpfs::mount(&out, "8m");
    let job = fetch(&client, &out, &ports, &[]);
    client.wait_job(job, LONG, |st| progress(st) > 0.2);
    let _ = std::fs::write(out.join("filler"), vec![1u8; 8 << 20]);
    let status = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&status), "failed", "{status}");
    let text = status.to_string();
    assert!(
        text.contains("No space left on device") && text.contains("big.bin.arsnet-dump"),
        "{text}"
    );
    assert!(!out.join("big.bin").exists());
    assert!(
        out.join("big.bin.arsnet-segments").exists(),
        "what was durable is kept"
    );
    // Space freed: resuming the same job completes it, keeping the durable segments.
    std::fs::remove_file(out.join("filler")).unwrap();
    disk.resize("16m");
    client.ok(&["resume", &job.to_string()]);
    let status = client.wait_job(job, LONG, terminal);
    assert!(completed(&status), "{status}");
    assert!(status["adopted_segments"].as_u64().unwrap() > 0, "{status}");
    assert_same(&out.join("big.bin"), &data);
}

#[test]
fn a_file_changed_while_served_is_never_delivered_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("moving.bin");
    write_file(&file, 4 * 1024 * 1024, 31);
    let ports = free_ports(2);
    // 2 ports of 384 KiB/s: about 5 s, so the file changes while both connections serve.
    serve(&servers, &file, &ports, &["--rate", "384K"]);
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &ports, &[]);
    client.wait_job(job, LONG, |s| progress(s) > 0.1);
    // The file is rewritten in place while being served.
    let new_data = write_file(&file, 4 * 1024 * 1024, 32);
    // First the servers refuse to send bytes their digests no longer describe...
    client.wait_job(job, LONG, |s| s.to_string().contains("changed on disk"));
    // Both connections were serving when the file changed: each one's next segment finds
    // it changed and is refused, and that is logged (maybe a moment after the client hears).
    wait_until("the server logged refusing stale digests", LONG, || {
        servers.log().contains("refusing to serve stale digests")
    });
    // ...then they re-hash, and the download of the old content fails clearly.
    let st = client.wait_job(job, LONG, terminal);
    assert_eq!(job_state(&st), "failed", "{st}");
    // Each server named, with why: it now serves other content than the job's.
    let reason = st["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("every source was ruled out") && reason.contains("serves other content"),
        "{st}"
    );
    for port in &ports {
        assert!(reason.contains(&format!("127.0.0.1:{port} (")), "{st}");
    }
    assert!(servers.log().contains("re-hashed"));
    assert!(
        !out.join("moving.bin").exists(),
        "no file from mixed content"
    );
    // A new download gets the new content, whole.
    let out2 = tmp.path().join("out2");
    let job2 = fetch(&client, &out2, &ports, &[]);
    assert!(completed(&client.wait_job(job2, LONG, terminal)));
    assert_same(&out2.join("moving.bin"), &new_data);
}

#[test]
fn stalled_server_is_dropped_and_its_segments_move() {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("s.bin");
    let data = write_file(&file, 1024 * 1024, 41);
    let staller = FaultyServer::start(data.clone(), "s.bin", 65536, Fault::Stall);
    // The honest server exists but is stopped until the stall has been detected.
    let honest = free_ports(1);
    serve(&servers, &file, &honest, &[]);
    servers.ok(&["stop-server", &honest[0].to_string()]);
    let out = tmp.path().join("out");
    let job = fetch(&client, &out, &[staller.port, honest[0]], &[]);
    // The test config's stall timeout is 5 s: the staller is dropped and retried.
    let st = client.wait_job(job, LONG, |s| {
        s["sources"][0]["failures"].as_u64().unwrap_or(0) >= 1
    });
    assert_ne!(job_state(&st), "completed");
    assert!(client.log().contains("Stalled"), "dropped as stalled");
    servers.ok(&["start-server", &honest[0].to_string()]);
    let st = client.wait_job(job, LONG, terminal);
    assert!(completed(&st), "{st}");
    assert_same(&out.join("s.bin"), &data);
    assert_eq!(
        st["sources"][0]["segments"], 0,
        "nothing came from the staller"
    );
}

#[test]
fn a_crash_between_rename_and_journal_removal_is_recovered_on_restart() {
    // 4 ports of 512 KiB/s: about 6 s, so the pause at 30% lands seconds before the end.
    let mut s = slow_setup(12 * 1024 * 1024, 512 * 1024);
    let job = fetch(&s.client, &s.out, &s.ports, &[]);
    s.client.wait_job(job, LONG, |st| progress(st) > 0.3);
    s.client.ok(&["pause", &job.to_string()]);
    s.client.wait_job(job, LONG, |st| job_state(st) == "paused");
    let journal = s.out.join("slow.bin.arsnet-segments");
    let saved = std::fs::read(&journal).unwrap();
    s.client.ok(&["resume", &job.to_string()]);
    assert!(completed(&s.client.wait_job(job, LONG, terminal)));
    // Recreate what kill -9 right after the final rename leaves behind: the file, its
    // journal, and a job table that still says "running".
    s.client.kill9();
    std::fs::write(&journal, &saved).unwrap();
    let state_path = s.client.state_dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["jobs"][0]["state"] = serde_json::json!("Running");
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    s.client.restart();
    let st = s.client.wait_job(job, LONG, terminal);
    assert!(completed(&st), "{st}");
    assert!(s.client.log().contains("already finished and verified"));
    assert!(!journal.exists(), "the stale journal is gone");
    assert_same(&s.out.join("slow.bin"), &s.data);
}

#[test]
fn concurrent_start_server_calls_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("srv"));
    let file = tmp.path().join("f.bin");
    write_file(&file, 10_000, 5);
    let ports = free_ports(1);
    serve(&d, &file, &ports, &[]);
    let port = ports[0].to_string();
    for _ in 0..5 {
        d.ok(&["stop-server", &port]);
        let starters: Vec<_> = (0..6)
            .map(|_| {
                std::process::Command::new(bin("arsnetctl"))
                    .arg("--socket")
                    .arg(&d.socket)
                    .args(["start-server", &port])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in starters {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(is_listening(ports[0]));
    }
}
