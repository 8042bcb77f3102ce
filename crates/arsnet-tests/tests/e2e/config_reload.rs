//! The daemon's configuration as an operator meets it: precedence (flags > environment >
//! file > defaults, read back through `--check-config`), and SIGHUP, which reads the file
//! again: a live change takes effect on running daemon behaviour, a broken file keeps the
//! old configuration, and a key that needs a restart is reported and not applied.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const LONG: Duration = Duration::from_secs(30);

/// `arsnetd --check-config ARGS` with exactly the environment `env` (nothing inherited that
/// could change the answer); returns the effective configuration it prints.
fn effective(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let mut cmd = Command::new(bin("arsnetd"));
    cmd.arg("--check-config").args(args).env_clear();
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd.output().expect("run arsnetd --check-config");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.parse()
        .unwrap_or_else(|e| panic!("not TOML ({e}): {text}"))
}

fn int(table: &toml::Table, key: &str) -> i64 {
    table[key]
        .as_integer()
        .unwrap_or_else(|| panic!("{key} in {table}"))
}

fn string(table: &toml::Table, key: &str) -> String {
    table[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {table}"))
        .to_string()
}

#[test]
fn precedence_is_flags_then_environment_then_file_then_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("arsnetd.toml");
    std::fs::write(
        &file,
        "socket = \"/file.sock\"\nmax_active_downloads = 2\nlog = \"warn\"\nkeep_finished_jobs = 7\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let defaults = effective(&[], &[]);
    assert_eq!(int(&defaults, "max_active_downloads"), 3);
    assert_eq!(int(&defaults, "keep_finished_jobs"), 100);

    let from_file = effective(&["--config", file], &[]);
    assert_eq!(string(&from_file, "socket"), "/file.sock");
    assert_eq!(int(&from_file, "max_active_downloads"), 2);
    assert_eq!(string(&from_file, "log"), "warn");
    // What the file leaves out keeps its default.
    assert_eq!(
        int(from_file["download"].as_table().unwrap(), "pipeline_depth"),
        4
    );

    let env = [
        ("ARSNET_CONFIG", file),
        ("ARSNET_SOCKET", "/env.sock"),
        ("ARSNET_MAX_ACTIVE_DOWNLOADS", "5"),
        ("RUST_LOG", "debug"),
    ];
    let from_env = effective(&[], &env);
    assert_eq!(string(&from_env, "socket"), "/env.sock");
    assert_eq!(int(&from_env, "max_active_downloads"), 5);
    assert_eq!(string(&from_env, "log"), "debug");
    assert_eq!(
        int(&from_env, "keep_finished_jobs"),
        7,
        "the file named by ARSNET_CONFIG is read"
    );

    let from_flags = effective(
        &[
            "--socket",
            "/flag.sock",
            "--max-active-downloads",
            "6",
            "--log",
            "error",
        ],
        &env,
    );
    assert_eq!(string(&from_flags, "socket"), "/flag.sock");
    assert_eq!(int(&from_flags, "max_active_downloads"), 6);
    assert_eq!(string(&from_flags, "log"), "error");
    assert_eq!(int(&from_flags, "keep_finished_jobs"), 7);
}

#[test]
fn check_config_names_the_bad_key_and_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.toml");
    std::fs::write(
        &file,
        "max_active_downloads = 2\n\n[download]\nstall_timeout = 5\n",
    )
    .unwrap();
    let out = Command::new(bin("arsnetd"))
        .arg("--check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("stall_timeout"), "{error}");
    assert!(error.contains("line 4"), "{error}");
    for (text, named) in [
        ("max_active_downloads = \"two\"\n", "max_active_downloads"),
        (
            "[download]\nstall_timeout_secs = 0\n",
            "download.stall_timeout_secs",
        ),
        ("log = \"arsnet=[\"\n", "log filter"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(bin("arsnetd"))
            .arg("--check-config")
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}: {out:?}");
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(error.contains(named), "{text}: {error}");
    }
}

fn hup(d: &Daemon) {
    let status = Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until the daemon's log holds `needle` `count` times.
fn wait_log(d: &Daemon, needle: &str, count: usize) {
    let deadline = Instant::now() + LONG;
    while d.log().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} (x{count}) in the log:\n{}",
            tail(&d.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn config_with(max_active: usize, extra: &str) -> String {
    format!("max_active_downloads = {max_active}\n{extra}{TEST_CONFIG}")
}

#[test]
fn sighup_applies_live_keys_keeps_the_old_config_on_a_bad_file_and_reports_restart_keys() {
    // Slow servers: 16 MiB from 4 ports of 64 KiB/s take about 64 s, far longer than this
    // test needs, so no job ends (and lets a queued one start) while it checks the queue.
    let slow = slow_setup(16 << 20, 64 * 1024);
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with_config(&tmp.path().join("d"), &config_with(1, ""));
    let config_file = d.root.join("arsnetd.toml");
    let jobs: Vec<u64> = (0..3)
        .map(|i| fetch(&d, &slow.out.join(i.to_string()), &slow.ports, &[]))
        .collect();
    let state = |job| job_state(&d.status(job));
    assert_eq!(state(jobs[1]), "queued", "one download at a time");

    // A live key: the queue grows, and the second job starts without anything else.
    std::fs::write(&config_file, config_with(2, "")).unwrap();
    hup(&d);
    wait_log(&d, "max_active_downloads changed from 1 to 2", 1);
    d.wait_job(jobs[1], LONG, |s| job_state(s) != "queued");
    assert_eq!(state(jobs[2]), "queued", "two at a time, not more");

    // A broken file: the reload fails, says why, and the queue keeps its size of 2.
    std::fs::write(&config_file, "max_active_downloads = [\n").unwrap();
    hup(&d);
    wait_log(&d, "reload failed, the configuration in force is kept", 1);
    assert!(d.log().contains("arsnetd.toml"), "the error names the file");
    assert_eq!(state(jobs[2]), "queued");
    d.ok(&["list"]);

    // A key that needs a restart: reported, not applied (the socket still answers, and the
    // control group in force is still none, so nothing about access changed).
    std::fs::write(&config_file, config_with(2, "control_group = \"root\"\n")).unwrap();
    hup(&d);
    wait_log(
        &d,
        "control_group changed from (unset) to \"root\", which needs a restart",
        1,
    );
    d.ok(&["list"]);
    assert_eq!(state(jobs[2]), "queued");
    for job in jobs {
        d.ok(&["cancel", &job.to_string()]);
    }
    drop(slow);
}

#[test]
fn the_example_config_is_what_check_config_reports_for_no_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.toml");
    let from_example = effective(&["--config", example.to_str().unwrap()], &[]);
    let defaults = effective(&[], &[]);
    assert_eq!(
        from_example, defaults,
        "config.example.toml documents the defaults"
    );
}

/// Waits up to `limit` for `child` to exit; its status, or `None` (then it is killed).
fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_fifo_or_a_device_as_the_config_file_is_refused_and_never_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start_with_config(&tmp.path().join("d"), &config_with(1, ""));
    let config_file = d.root.join("arsnetd.toml");
    // A FIFO nobody writes to: reading it would block forever.
    std::fs::remove_file(&config_file).unwrap();
    let status = Command::new("mkfifo").arg(&config_file).status().unwrap();
    assert!(status.success());
    hup(&d);
    wait_log(&d, "not a regular file", 1);
    assert!(ctl_within(&d, &["list"], Duration::from_secs(30)).is_some_and(|o| o.status.success()));
    // /dev/zero: endless; a size cap is not enough without the type check, and vice versa.
    std::fs::remove_file(&config_file).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config_file).unwrap();
    hup(&d);
    wait_log(&d, "not a regular file", 2);
    assert!(ctl_within(&d, &["list"], Duration::from_secs(30)).is_some_and(|o| o.status.success()));

    // --check-config on the FIFO ends at once with the reason.
    std::fs::remove_file(&config_file).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&config_file)
        .status()
        .unwrap()
        .success());
    let mut check = Command::new(bin("arsnetd"))
        .arg("--check-config")
        .arg("--config")
        .arg(&config_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = exit_within(&mut check, Duration::from_secs(10));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(2),
        "--check-config on a FIFO"
    );
}

#[test]
fn a_log_filter_typo_is_an_error_not_silence() {
    for typo in ["inof", "", "arsnet_engine=loud"] {
        let out = Command::new(bin("arsnetd"))
            .args(["--check-config", "--log", typo])
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{typo:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("log filter"),
            "{out:?}"
        );
    }
    for fine in [
        "info",
        "warn,arsnet_engine=debug",
        "arsnetd",
        "tower::buffer=off",
    ] {
        let out = Command::new(bin("arsnetd"))
            .args(["--check-config", "--log", fine])
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{fine:?}: {out:?}");
    }
}

/// A SIGHUP that reaches the daemon before its handler does not kill it, and one started
/// with SIGHUP blocked by its parent still reloads.
///
/// Deterministic: the child is started with SIGHUP blocked, so the signal sent at once is
/// held pending across exec and meets the daemon's first line, whatever the timing. A
/// daemon that only unblocked it would die of it; one that did not unblock it would never
/// see the second one, sent once it answers.
#[test]
fn a_sighup_at_start_up_does_not_kill_the_daemon() {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("ctl.sock");
    let config = tmp.path().join("arsnetd.toml");
    std::fs::write(&config, "max_active_downloads = 3\n").unwrap();
    let log = tmp.path().join("arsnetd.log");
    let mut cmd = Command::new(bin("arsnetd"));
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: sigemptyset, sigaddset and pthread_sigmask are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGHUP);
            match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
                0 => Ok(()),
                e => Err(std::io::Error::from_raw_os_error(e)),
            }
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-HUP", &pid]).status();
    let ctl = || {
        Command::new(bin("arsnetctl"))
            .arg("--socket")
            .arg(&socket)
            .arg("list")
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + LONG;
    while !ctl().status.success() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("arsnetd died of an early SIGHUP: {status}");
        }
        assert!(Instant::now() < deadline, "never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&config, "max_active_downloads = 4\n").unwrap();
    let _ = Command::new("kill").args(["-HUP", &pid]).status();
    let reloaded = "max_active_downloads changed from 3 to 4";
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    while !read_log().contains(reloaded) {
        assert!(
            Instant::now() < deadline,
            "a SIGHUP blocked by the parent never reached the daemon:\n{}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    assert!(exit_within(&mut child, LONG).is_some_and(|s| s.success()));
}
