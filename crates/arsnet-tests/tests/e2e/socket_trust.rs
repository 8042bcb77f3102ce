//! Both ends of the control socket check each other, and daemon state is never lost: a fake
//! daemon planted by another uid, an unreadable state file, a state change that cannot be
//! saved, `--socket` pointing at a regular file.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arsnet_proto::control::{encode_frame, JobInfo, JobState, Response, RunFigures, Update};

use crate::util::*;

const NOBODY: u32 = 65534;

/// Environment variables that turn this test binary into a fake daemon (see
/// `fake_daemon_child_process`): the socket to listen on, where to report, the replies.
const FAKE_SOCKET_ENV: &str = "ARSNET_TEST_FAKE_DAEMON_SOCKET";
const FAKE_REPORT_ENV: &str = "ARSNET_TEST_FAKE_DAEMON_REPORT";
const FAKE_REPLIES_ENV: &str = "ARSNET_TEST_FAKE_DAEMON_REPLIES";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Not a test: the body of the fake daemon, run as another uid by re-executing this test
/// binary (a process of its own is needed, since the client sees the uid that called
/// listen()). Does nothing in a normal test run. Connection `i` is sent reply `i` (or the
/// last one) at once, then everything it sends is counted until it closes; each connection
/// is reported as `conn I read N` in the report file.
#[test]
fn fake_daemon_child_process() {
    let (Some(socket), Some(report), Some(replies)) = (
        std::env::var_os(FAKE_SOCKET_ENV),
        std::env::var_os(FAKE_REPORT_ENV),
        std::env::var_os(FAKE_REPLIES_ENV),
    ) else {
        return;
    };
    let replies: Vec<Vec<u8>> = replies.to_str().unwrap().split(',').map(unhex).collect();
    let append = |line: String| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&report)
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    };
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // Open to everyone, as a planted socket would be.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    append("ready\n".into());
    for (i, conn) in listener.incoming().enumerate() {
        let mut conn = conn.unwrap();
        let reply = replies.get(i).or(replies.last()).unwrap();
        // A client that hung up already makes this fail; only what it sent matters.
        let _ = conn.write_all(reply);
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut total = 0usize;
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        append(format!("conn {i} read {total}\n"));
    }
}

/// A fake daemon running as `uid`, listening at `socket`; killed when dropped.
struct FakeDaemon {
    child: Child,
    report: PathBuf,
}

impl FakeDaemon {
    /// `dir` (the socket's directory) must be writable by `uid`; the report goes there.
    fn start(uid: u32, socket: &Path, replies: &[Response]) -> FakeDaemon {
        let report = socket.with_file_name("fake-report.txt");
        let replies: Vec<String> = replies
            .iter()
            .map(|r| hex(&encode_frame(r).unwrap()))
            .collect();
        let child = command_as(Some(uid), std::env::current_exe().unwrap())
            .args([
                "--exact",
                "socket_trust::fake_daemon_child_process",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(FAKE_SOCKET_ENV, socket)
            .env(FAKE_REPORT_ENV, &report)
            .env(FAKE_REPLIES_ENV, replies.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("setpriv (util-linux) is installed");
        let mut fake = FakeDaemon { child, report };
        fake.wait_for(|r| r.lines().any(|l| l == "ready"), "to listen");
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(socket).unwrap());
        assert_eq!(owner, uid, "the fake's socket belongs to uid {uid}");
        fake
    }

    fn report(&self) -> String {
        std::fs::read_to_string(&self.report).unwrap_or_default()
    }

    fn wait_for(&mut self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let report = self.report();
            if pred(&report) {
                return report;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("fake daemon exited ({status}) before {what}: {report:?}");
            }
            assert!(
                Instant::now() < deadline,
                "fake daemon did not get {what}: {report:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every connection the fake accepted was closed; returns the byte counts.
    fn bytes_read_per_connection(&mut self) -> Vec<usize> {
        let report = self.wait_for(|r| r.contains("conn 0 read"), "a connection");
        report
            .lines()
            .filter_map(|l| l.rsplit_once(" read ").map(|(_, n)| n.parse().unwrap()))
            .collect()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory that belongs to `uid` (mode 0755) under a traversable `parent`.
fn dir_owned_by(parent: &Path, name: &str, uid: u32) -> PathBuf {
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn completed_job() -> JobInfo {
    JobInfo {
        figures: RunFigures {
            size: Some(1),
            segments_total: Some(1),
            segments_done: 1,
            bytes_done: 1,
            fetched_bytes: 1,
            ..RunFigures::default()
        },
        ..fake_job(1, JobState::Completed)
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_daemon_of_another_uid_is_refused_before_a_byte_is_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = dir_owned_by(tmp.path(), "planted", NOBODY);
    let socket = dir.join("arsnetd.sock");
    let mut fake = FakeDaemon::start(
        NOBODY,
        &socket,
        &[Response::List {
            jobs: vec![completed_job()],
            groups: vec![],
            notes: vec![],
        }],
    );
    let out = Command::new(bin("arsnetctl"))
        .arg("--socket")
        .arg(&socket)
        .arg("list")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert!(
        !out.status.success(),
        "a daemon of uid {NOBODY} was trusted: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("uid 65534") && stderr.contains(socket.to_str().unwrap()),
        "the error names the uid found and the socket: {stderr}"
    );
    assert_eq!(
        fake.bytes_read_per_connection(),
        vec![0],
        "the fake daemon got no byte"
    );
}

#[test]
fn a_fake_daemon_at_the_tmp_fallback_path_cannot_fake_a_completed_download() {
    // A user without a runtime dir (cron, ssh without a session) falls back to
    // $TMPDIR/arsnet-UID/, where another user may have planted a socket first.
    let user = 4242;
    assert!(!Path::new("/run/user/4242").exists());
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let planted = dir_owned_by(&tmpdir, &format!("arsnet-{user}"), NOBODY);
    // Like /tmp.
    std::fs::set_permissions(&tmpdir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let socket = planted.join("arsnetd.sock");
    let mut fake = FakeDaemon::start(
        NOBODY,
        &socket,
        &[
            Response::Queued {
                id: 1,
                attached: false,
            },
            Response::Update(Update::Job(completed_job())),
        ],
    );
    let out = command_as(Some(user), bin("arsnetctl"))
        .args([
            "fetch",
            "--wait",
            "-o",
            "/tmp",
            "-a",
            "127.0.0.1",
            "-p",
            "9",
        ])
        .env("TMPDIR", &tmpdir)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("ARSNET_SOCKET")
        .env("HOME", tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = stderr_of(&out);
    assert!(
        !out.status.success(),
        "fetch --wait believed a fake daemon: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("uid 65534") && stderr.contains(socket.to_str().unwrap()),
        "{stderr}"
    );
    assert_eq!(fake.bytes_read_per_connection(), vec![0]);
}

#[test]
fn a_socket_directory_others_could_tamper_with_is_refused_by_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&tmp.path().join("d"));
    d.ok(&["list"]);
    // The socket is the real daemon's (right uid); only its directory is wrong.
    for mode in [0o777, 0o775, 0o1777] {
        std::fs::set_permissions(&d.root, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = d.ctl(&["list"]);
        let stderr = stderr_of(&out);
        assert!(!out.status.success(), "mode {mode:o} trusted");
        assert!(
            stderr.contains("writable") && stderr.contains(d.root.to_str().unwrap()),
            "mode {mode:o}: {stderr}"
        );
    }
    std::fs::set_permissions(&d.root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A directory of another user: it could swap the socket.
    std::os::unix::fs::chown(&d.root, Some(4242), None).unwrap();
    let out = d.ctl(&["list"]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("uid 4242"), "{stderr}");
    std::os::unix::fs::chown(&d.root, Some(0), None).unwrap();
    d.ok(&["list"]);
}

/// Runs arsnetd (through `setpriv` when `as_uid` is given) and expects it to refuse to
/// start: returns its exit code and stderr. Panics if it comes up instead.
fn daemon_refuses(root: &Path, socket: &Path, as_uid: Option<u32>) -> (Option<i32>, String) {
    let config = root.join("arsnetd.toml");
    std::fs::write(&config, TEST_CONFIG).unwrap();
    let log_path = root.join("refused.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = command_as(as_uid, bin("arsnetd"));
    let mut child = cmd
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), std::fs::read_to_string(&log_path).unwrap());
        }
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("arsnetd ready") || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("arsnetd started instead of refusing:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unreadable_state_makes_the_daemon_refuse_to_start_and_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    // 1. EISDIR: state.json is a directory (root cannot read that either).
    let root = tmp.path().join("isdir");
    std::fs::create_dir_all(root.join("state/state.json")).unwrap();
    std::fs::write(root.join("state/state.json/inside"), b"keep me").unwrap();
    let (code, stderr) = daemon_refuses(&root, &root.join("ctl.sock"), None);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(root.join("state/state.json").to_str().unwrap()),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(root.join("state/state.json/inside")).unwrap(),
        b"keep me"
    );
    assert!(!root.join("ctl.sock").exists(), "no socket left behind");

    // 2. EACCES: a daemon running as nobody, with a state file it may not read.
    let root = dir_owned_by(tmp.path(), "eacces", NOBODY);
    let state_dir = dir_owned_by(&root, "state", NOBODY);
    let state = state_dir.join("state.json");
    let saved = br#"{"version":1,"next_job_id":42,"next_group_id":7,"jobs":[],"groups":[]}"#;
    std::fs::write(&state, saved).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, stderr) = daemon_refuses(&root, &root.join("ctl.sock"), Some(NOBODY));
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(state.to_str().unwrap()) && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        saved,
        "state kept as it was"
    );
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn unparseable_state_is_kept_aside_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("d");
    std::fs::create_dir_all(root.join("state")).unwrap();
    let garbage = b"{ \"version\": 1, this is not json";
    std::fs::write(root.join("state/state.json"), garbage).unwrap();
    let d = Daemon::start(&root);
    let list = d.json(&["list"]);
    let notes = list["notes"].to_string();
    let kept: Vec<PathBuf> = std::fs::read_dir(&d.state_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("state.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read(&kept[0]).unwrap(), garbage);
    assert!(notes.contains(kept[0].to_str().unwrap()), "{notes}");
    // The daemon works and saves anew.
    let dead = dead_ports(1);
    let job = fetch(&d, &tmp.path().join("out"), &dead.ports, &[]);
    assert_eq!(job, 1);
    let saved = std::fs::read_to_string(d.state_dir.join("state.json")).unwrap();
    assert!(saved.contains("\"next_job_id\": 2"), "{saved}");
}

#[test]
fn a_change_that_cannot_be_saved_is_reported_as_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_as_nobody(&tmp.path().join("d"));
    let out_dir = dir_owned_by(tmp.path(), "out", NOBODY);
    // A source that accepts and never answers: the job stays running (where one nobody
    // listens at would be given up after a few quick tries, before the pause below), so it
    // can be paused later.
    let silent = silent_source();
    let job = fetch(&d, &out_dir, &[silent.local_addr().unwrap().port()], &[]);
    // The daemon (nobody) may no longer create its temp file next to state.json.
    std::fs::set_permissions(&d.state_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let state = d.state_dir.join("state.json");
    let before = std::fs::read(&state).unwrap();

    let args = fetch_args(&out_dir, &free_ports(1), &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.ctl(&args);
    let stderr = stderr_of(&out);
    assert!(
        !out.status.success(),
        "unsaved fetch reported done: {stderr}"
    );
    assert!(
        stderr.contains(state.to_str().unwrap()) && stderr.contains("Permission denied"),
        "{stderr}"
    );
    let jobs = d.json(&["list"])["jobs"].as_array().unwrap().len();
    assert_eq!(jobs, 1, "the refused fetch left no job behind");

    let file = tmp.path().join("served.bin");
    write_file(&file, 10_000, 1);
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
        "--bind",
        "127.0.0.1",
    ]);
    let stderr = stderr_of(&out);
    assert!(
        !out.status.success(),
        "unsaved serve reported done: {stderr}"
    );
    assert!(stderr.contains(state.to_str().unwrap()), "{stderr}");
    assert!(!is_listening(ports[0]), "the refused group does not serve");
    d.assert_no_groups("the refused group is gone");

    let out = d.ctl(&["pause", &job.to_string()]);
    let stderr = stderr_of(&out);
    assert!(!out.status.success(), "unsaved pause reported done");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    // The job still stops (a background save that fails is logged, and retried later).
    d.wait_job(job, Duration::from_secs(30), |s| job_state(s) == "paused");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        before,
        "nothing was written"
    );

    // Once the directory is writable again, the next change saves everything.
    std::fs::set_permissions(&d.state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    d.ok(&["resume", &job.to_string()]);
    d.restart();
    let status = d.status(job);
    assert_ne!(job_state(&status), "paused", "{status}");
    assert_eq!(d.json(&["list"])["jobs"].as_array().unwrap().len(), 1);
    drop(silent);
}

#[test]
fn socket_path_at_something_else_than_a_socket_is_kept_and_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("d");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    let precious = root.join("notes.txt");
    let content = b"precious data, not a socket\n";
    std::fs::write(&precious, content).unwrap();

    let (code, stderr) = daemon_refuses(&root, &precious, None);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(precious.to_str().unwrap()) && stderr.contains("not a socket"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&precious).unwrap(), content);

    let link = root.join("link.sock");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let (code, stderr) = daemon_refuses(&root, &link, None);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&precious).unwrap(), content);

    let dir = root.join("dir.sock");
    std::fs::create_dir(&dir).unwrap();
    let (code, stderr) = daemon_refuses(&root, &dir, None);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert!(dir.is_dir());

    // A stale socket (nobody listening) is still replaced.
    let stale = root.join("ctl.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let d = Daemon::start(&root);
    d.ok(&["list"]);
}
