//! The daemon as a service: systemd's notify protocol (READY only once the socket listens,
//! STATUS lines, the watchdog, STOPPING), a control socket passed by the service manager
//! (socket activation), and `--check-config`. Real processes; the service manager's side is
//! played by the test with the real wire formats (a datagram socket, inherited descriptors).

use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const LONG: Duration = Duration::from_secs(30);

/// Runs arsnetd through `sh`, so that `$$` (the pid arsnetd keeps after `exec`) can be put
/// in the variables that must name it.
fn arsnetd_via_sh(env_with_pid: &str, args: &[String]) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{env_with_pid} exec \"$0\" \"$@\""))
        .arg(bin("arsnetd"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn recv_until(sock: &UnixDatagram, needle: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + LONG;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let found = message.lines().any(|l| l.starts_with(needle));
                seen.push(message);
                if found {
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    false
}

#[test]
fn ready_status_watchdog_and_stopping_reach_the_service_manager() {
    let tmp = tempfile::tempdir().unwrap();
    let notify_path = tmp.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let socket = tmp.path().join("ctl.sock");
    let args = vec![
        "--socket".to_string(),
        socket.display().to_string(),
        "--state-dir".to_string(),
        tmp.path().join("state").display().to_string(),
    ];
    let mut child = arsnetd_via_sh("WATCHDOG_PID=$$", &args)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    assert!(
        recv_until(&notify, "READY=1", &mut seen),
        "no READY=1: {seen:?}"
    );
    // READY means clients can connect right now.
    let ctl = |args: &[&str]| {
        Command::new(bin("arsnetctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(
        ctl(&["list"]).status.success(),
        "ready before the socket listened"
    );
    let ready = seen.last().unwrap();
    assert!(
        ready.contains("STATUS=0 downloads running, 0 queued, 0 paused, 0 server groups"),
        "{ready}"
    );
    let mut pings = Vec::new();
    for _ in 0..2 {
        assert!(
            recv_until(&notify, "WATCHDOG=1", &mut pings),
            "no watchdog: {pings:?}"
        );
    }
    // A reload is framed by RELOADING=1 (with the monotonic time systemd's notify-reload
    // wants) and READY=1.
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut reload = Vec::new();
    assert!(
        recv_until(&notify, "RELOADING=1", &mut reload),
        "no RELOADING=1: {reload:?}"
    );
    assert!(
        reload.last().unwrap().contains("MONOTONIC_USEC="),
        "{reload:?}"
    );
    assert!(
        recv_until(&notify, "READY=1", &mut reload),
        "no READY=1 after the reload: {reload:?}"
    );
    assert!(
        ctl(&["list"]).status.success(),
        "still serving after SIGHUP"
    );
    assert!(ctl(&["shutdown"]).status.success());
    let mut last = Vec::new();
    assert!(
        recv_until(&notify, "STOPPING=1", &mut last),
        "no STOPPING=1: {last:?}"
    );
    let _ = child.wait();
}

#[test]
fn a_socket_passed_by_the_service_manager_is_used_and_left_to_it() {
    // As systemd passes one socket unit's descriptor: no names needed.
    socket_activation_serves("activated.sock", &[], None);
}

#[test]
fn of_several_passed_sockets_the_one_named_control_is_used() {
    // The control socket is not the first descriptor: LISTEN_FDNAMES says which it is. A
    // daemon taking descriptor 3 would serve the decoy, never the control socket.
    socket_activation_serves("control.sock", &["decoy.sock"], Some("decoy:control"));
}

/// Passes the listeners named `before` (from descriptor 3 on) and then `control` to arsnetd,
/// with `LISTEN_FDNAMES` if given, and checks that `control` is served, that arsnetd binds
/// no socket of its own, and that it leaves the passed socket in place.
fn socket_activation_serves(control: &str, before: &[&str], names: Option<&str>) {
    let tmp = tempfile::tempdir().unwrap();
    let passed = tmp.path().join(control);
    let mut listeners: Vec<UnixListener> = before
        .iter()
        .map(|name| UnixListener::bind(tmp.path().join(name)).unwrap())
        .collect();
    listeners.push(UnixListener::bind(&passed).unwrap());
    let unused = tmp.path().join("not-used.sock");
    let args = vec![
        "--socket".to_string(),
        unused.display().to_string(),
        "--state-dir".to_string(),
        tmp.path().join("state").display().to_string(),
    ];
    let fds: Vec<i32> = listeners
        .iter()
        .map(std::os::fd::AsRawFd::as_raw_fd)
        .collect();
    let names = names
        .map(|n| format!(" LISTEN_FDNAMES={n}"))
        .unwrap_or_default();
    let env = format!("LISTEN_PID=$$ LISTEN_FDS={}{names}", fds.len());
    let mut cmd = arsnetd_via_sh(&env, &args);
    // SAFETY: fcntl and dup2 are async-signal-safe, and the child only uses them before exec:
    // every listener is first copied above the target range (close-on-exec), so that no
    // dup2 overwrites one not yet moved, then put at 3, 4, ... (dup2 clears close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0; 8];
            for (i, &fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if high[i] == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in high[..fds.len()].iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let ctl = |args: &[&str]| {
        Command::new(bin("arsnetctl"))
            .arg("--socket")
            .arg(&passed)
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + LONG;
    while !ctl(&["list"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "the passed socket is never served"
        );
        assert!(child.try_wait().unwrap().is_none(), "arsnetd ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!unused.exists(), "no socket of its own was bound");
    assert!(ctl(&["shutdown"]).status.success());
    let _ = child.wait();
    assert!(
        passed.exists(),
        "the service manager's socket is left in place"
    );
}

#[test]
fn check_config_validates_and_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, TEST_CONFIG).unwrap();
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "max_active_downlaods = 3\n").unwrap();
    let state = tmp.path().join("state");
    let run = |config: &std::path::Path| {
        Command::new(bin("arsnetd"))
            .args(["--check-config", "--config"])
            .arg(config)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap()
    };
    let ok = run(&good);
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stderr).contains("configuration OK"));
    let refused = run(&bad);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("max_active_downlaods"));
    assert!(!state.exists(), "--check-config created nothing");
}

#[test]
fn manual_pages_and_completions_generate() {
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(bin(program)).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let ctl = run("arsnetctl", &["man"]);
    assert!(
        ctl.starts_with(".ie") || ctl.contains(".TH arsnetctl"),
        "{}",
        &ctl[..200.min(ctl.len())]
    );
    for word in ["fetch", "watch", "completions"] {
        assert!(ctl.contains(word), "arsnetctl.1 lists {word}");
    }
    let daemon = run("arsnetd", &["--man"]);
    assert!(
        daemon.contains(".TH arsnetd"),
        "{}",
        &daemon[..200.min(daemon.len())]
    );
    assert!(
        daemon.contains("check\\-config"),
        "arsnetd.1 documents --check-config"
    );
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let script = run("arsnetctl", &["completions", shell]);
        assert!(script.contains("arsnetctl"), "{shell} completion");
        let script = run("arsnetd", &["--completions", shell]);
        assert!(
            script.contains("arsnetd") && script.contains("check-config"),
            "{shell} completion of arsnetd"
        );
    }
}

/// The first lines arsnetd logs into `log` until it is ready, with `journal` naming that
/// file as the journal's stream (as systemd's `$JOURNAL_STREAM` does) or not.
fn startup_log(dir: &std::path::Path, journal: bool) -> String {
    use std::os::unix::fs::MetadataExt;
    let log_path = dir.join(if journal { "journal.log" } else { "plain.log" });
    let log = std::fs::File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let socket = dir.join(if journal { "j.sock" } else { "p.sock" });
    let mut cmd = Command::new(bin("arsnetd"));
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join(if journal { "j-state" } else { "p-state" }))
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + LONG;
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("arsnetd ready")
    {
        assert!(Instant::now() < deadline, "arsnetd never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&log_path).unwrap()
}

#[test]
fn logs_carry_no_colour_off_a_terminal_and_no_timestamp_into_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = startup_log(tmp.path(), false);
    let journal = startup_log(tmp.path(), true);
    for log in [&plain, &journal] {
        assert!(!log.contains('\x1b'), "ANSI escapes in a log file: {log:?}");
    }
    let stamped = |log: &str| log.lines().all(|l| l.starts_with("20") && l.contains('T'));
    assert!(stamped(&plain), "a plain log is timestamped: {plain}");
    // Into the journal: no timestamp (journald adds its own), and the syslog priority of
    // the line's level first (error 3, warn 4, info 6, debug 7), which journald takes as
    // the entry's priority, in place of the level's name.
    assert!(
        journal.lines().all(|l| {
            let rest = ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .find_map(|p| l.strip_prefix(p));
            rest.is_some_and(|r| r.starts_with("arsnetd") && !r.contains(" INFO "))
        }),
        "journal lines are <priority>target: message: {journal}"
    );
    assert!(
        journal.contains("<6>arsnetd::daemon: arsnetd ready"),
        "{journal}"
    );
}
