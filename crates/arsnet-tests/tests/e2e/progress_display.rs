//! The live display of `fetch --wait` at a real terminal: `arsnetctl` runs in a tmux pane
//! (a real pseudo-terminal of a known size), the screen is read with `capture-pane`, and the
//! raw bytes the program wrote with `pipe-pane`. Piped runs keep plain lines; `--quiet` and
//! `NO_COLOR` do what they say.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

const LONG: Duration = Duration::from_secs(90);

/// A tmux server of our own (its own socket), killed with its panes when dropped.
struct Tmux {
    socket: PathBuf,
    root: PathBuf,
}

impl Tmux {
    /// Runs `sh -c SCRIPT` in a detached 120×30 pane; the script's exit code lands in
    /// `rc` and the raw output in `raw`.
    fn run(root: &Path, script: &str) -> Tmux {
        let t = Tmux {
            socket: root.join("tmux.sock"),
            root: root.to_path_buf(),
        };
        let raw = root.join("raw");
        std::fs::write(&raw, b"").unwrap();
        // Wait until pipe-pane is attached before the command starts (the "go" file), so
        // that the raw record is whole; keep the pane afterwards for the final screen.
        let go = root.join("go");
        let full = format!(
            "while [ ! -e {go} ]; do sleep 0.05; done; {script}; echo $? > {rc}; sleep 600",
            go = go.display(),
            rc = root.join("rc").display(),
        );
        let ok = t
            .tmux(&[
                "new-session",
                "-d",
                "-x",
                "120",
                "-y",
                "30",
                "-s",
                "t",
                &full,
            ])
            .status
            .success();
        assert!(ok, "tmux new-session");
        let pipe = format!("cat >> {}", raw.display());
        assert!(t
            .tmux(&["pipe-pane", "-t", "t", "-o", &pipe])
            .status
            .success());
        std::fs::write(&go, b"").unwrap();
        t
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux (apt-get install tmux)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Polls the screen until `pred` holds; panics with the last screen after `LONG`.
    fn wait_screen(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LONG;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} on screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The script's exit code, once it has ended.
    fn exit_code(&self) -> i32 {
        let deadline = Instant::now() + LONG;
        loop {
            if let Ok(rc) = std::fs::read_to_string(self.root.join("rc")) {
                if let Ok(rc) = rc.trim().parse() {
                    return rc;
                }
            }
            assert!(Instant::now() < deadline, "did not end:\n{}", self.screen());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn raw(&self) -> Vec<u8> {
        std::fs::read(self.root.join("raw")).unwrap_or_default()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// `arsnetctl --socket S fetch ARGS...` as a shell command line.
fn fetch_line(d: &Daemon, env: &str, args: &[String]) -> String {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "{env} '{}' --socket '{}' {}",
        bin("arsnetctl").display(),
        d.socket.display(),
        quoted.join(" ")
    )
}

/// Whether `bytes` hold an SGR (colour) escape, `ESC [ digits/; m`.
fn has_sgr(bytes: &[u8]) -> bool {
    bytes.windows(2).enumerate().any(|(i, w)| {
        w == b"\x1b["
            && bytes[i + 2..]
                .iter()
                .find(|b| !(b.is_ascii_digit() || **b == b';'))
                == Some(&b'm')
    })
}

#[test]
fn a_terminal_shows_live_bars_per_server_and_in_total() {
    // 4 servers at 256 KiB/s, 6 MiB: about 6 s, long enough to see it running.
    let s = slow_setup(6 << 20, 256 * 1024);
    let mut args = fetch_args(&s.out, &s.ports, &["--wait"]);
    // A dead source, which must show a dash, not a rate.
    args.push("--source".into());
    let dead = dead_ports(1);
    args.push(format!("127.0.0.1:{}", dead.ports[0]));
    let t = Tmux::run(s.tmp.path(), &fetch_line(&s.client, "", &args));
    let running = t.wait_screen("a running bar with a rate and an ETA", |screen| {
        screen.contains("job 1 running") && screen.lines().any(|l| l.contains("B/s  ETA "))
    });
    for port in &s.ports {
        assert!(
            running.contains(&format!("127.0.0.1:{port}")),
            "a line per server:\n{running}"
        );
    }
    assert!(running.contains('█'), "a bar:\n{running}");
    assert!(
        running.contains(" / 6.29 MB"),
        "bytes done / size:\n{running}"
    );
    let dead = running
        .lines()
        .find(|l| l.contains("backoff") || l.contains("connecting"))
        .unwrap_or_else(|| panic!("the dead source's line:\n{running}"));
    assert!(
        !dead.contains("B/s") && dead.contains(" - "),
        "no rate for a dead source: {dead}"
    );
    assert!(
        running.lines().all(|l| l.chars().count() <= 120),
        "fits the width:\n{running}"
    );
    assert_eq!(t.exit_code(), 0, "{}", t.screen());
    let done = t.screen();
    assert!(done.contains("job 1 completed"), "{done}");
    assert!(done.contains("done in"), "the finished total:\n{done}");
    assert!(
        done.contains(&format!("saved {}", s.out.join("slow.bin").display())),
        "{done}"
    );
    assert!(has_sgr(&t.raw()), "colour at a terminal without NO_COLOR");
    assert_same(&s.out.join("slow.bin"), &s.data);
}

#[test]
fn no_color_draws_bars_without_colour() {
    let s = slow_setup(2 << 20, 512 * 1024);
    let args = fetch_args(&s.out, &s.ports, &["--wait"]);
    let t = Tmux::run(s.tmp.path(), &fetch_line(&s.client, "NO_COLOR=1", &args));
    assert_eq!(t.exit_code(), 0, "{}", t.screen());
    let screen = t.screen();
    assert!(
        screen.contains('█') && screen.contains("saved "),
        "{screen}"
    );
    let raw = t.raw();
    assert!(
        raw.windows(2).any(|w| w == b"\x1b["),
        "the bars are redrawn in place (cursor movement)"
    );
    assert!(!has_sgr(&raw), "no colour escape with NO_COLOR");
}

#[test]
fn ctrl_c_clears_the_bars_before_its_hint() {
    let s = slow_setup(16 << 20, 128 * 1024);
    let args = fetch_args(&s.out, &s.ports, &["--wait"]);
    let t = Tmux::run(s.tmp.path(), &fetch_line(&s.client, "", &args));
    t.wait_screen("the bars", |screen| screen.contains("ETA "));
    assert!(t.tmux(&["send-keys", "-t", "t", "C-c"]).status.success());
    assert_eq!(t.exit_code(), 130);
    let screen = t.screen();
    assert!(screen.contains("job 1 continues"), "{screen}");
    assert!(
        !screen.contains("job 1 running") && !screen.contains('█'),
        "the bars are gone:\n{screen}"
    );
}

/// The time now as `date -u` writes it, in the form of the plain lines' stamps.
fn utc_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The stamp at the start of `line` (`2026-12-02T15:04:05Z` and a space), if it has one.
pub(crate) fn stamp_of(line: &str) -> Option<&str> {
    let stamp = line.get(..20)?;
    let shape = stamp.bytes().enumerate().all(|(i, b)| match i {
        4 | 7 => b == b'-',
        10 => b == b'T',
        13 | 16 => b == b':',
        19 => b == b'Z',
        _ => b.is_ascii_digit(),
    });
    (shape && line[20..].starts_with(' ')).then_some(stamp)
}

#[test]
fn a_pipe_gets_plain_lines_and_quiet_gets_nothing() {
    let s = slow_setup(1 << 20, 1 << 20);
    let args = fetch_args(&s.out, &s.ports, &["--wait"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let before = utc_now();
    let piped = ctl_within(&s.client, &refs, LONG).expect("ended");
    let after = utc_now();
    assert!(piped.status.success(), "{piped:?}");
    let text = String::from_utf8_lossy(&piped.stdout);
    assert!(text.contains("job 1 ") && text.contains("saved "), "{text}");
    assert!(
        !piped.stdout.contains(&0x1b),
        "no escape bytes in a pipe: {text:?}"
    );
    // The job id first and the `saved` line last; every progress line between them starts
    // with the UTC time it was printed at (the stamps sort as the times do).
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "1", "{text}");
    assert!(lines[lines.len() - 1].starts_with("saved "), "{text}");
    let progress = &lines[1..lines.len() - 1];
    assert!(progress.iter().any(|l| l.contains(" job 1 ")), "{text}");
    for line in progress {
        let stamp = stamp_of(line).unwrap_or_else(|| panic!("no UTC stamp: {line:?}\n{text}"));
        assert!(
            before.as_str() <= stamp && stamp <= after.as_str(),
            "{stamp} is not between {before} and {after}"
        );
    }

    // --quiet: nothing on stdout, exit 0 on success.
    let other = s.tmp.path().join("quiet");
    let args = fetch_args(&other, &s.ports, &["--wait", "-q"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let quiet = ctl_within(&s.client, &refs, LONG).expect("ended");
    assert!(quiet.status.success(), "{quiet:?}");
    assert!(
        quiet.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&quiet.stdout)
    );
    assert_same(&other.join("slow.bin"), &s.data);

    // ... and non-zero on failure, the reason on stderr only.
    let dead = dead_ports(1);
    let args = fetch_args(
        &s.tmp.path().join("dead"),
        &dead.ports,
        &["--wait", "--quiet"],
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let failed = ctl_within(&s.client, &refs, LONG).expect("a dead source is given up");
    assert_eq!(failed.status.code(), Some(4), "{failed:?}");
    assert!(failed.stdout.is_empty());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("failed"));

    // --quiet at a terminal too.
    let args = fetch_args(&s.tmp.path().join("tty"), &s.ports, &["--wait", "-q"]);
    let t = Tmux::run(s.tmp.path(), &fetch_line(&s.client, "", &args));
    assert_eq!(t.exit_code(), 0, "{}", t.screen());
    assert!(
        t.raw().is_empty(),
        "{:?}",
        String::from_utf8_lossy(&t.raw())
    );
}

#[test]
fn term_dumb_gets_plain_lines() {
    let s = slow_setup(1 << 20, 1 << 20);
    let args = fetch_args(&s.out, &s.ports, &["--wait"]);
    let t = Tmux::run(s.tmp.path(), &fetch_line(&s.client, "TERM=dumb", &args));
    assert_eq!(t.exit_code(), 0, "{}", t.screen());
    let raw = t.raw();
    assert!(!raw.contains(&0x1b), "{:?}", String::from_utf8_lossy(&raw));
    let screen = t.screen();
    assert!(
        screen.contains("SERVER") && screen.contains("saved "),
        "{screen}"
    );
}

#[test]
fn a_source_that_is_not_transferring_shows_a_dash_for_its_rate() {
    // 4 live servers, and a port where nothing listens: the dead source is in backoff (or
    // connecting) all along, and its rate is "-", never "0 B/s", in the plain reports of
    // `fetch --wait` and in `status`.
    let s = slow_setup(2 << 20, 512 * 1024);
    let held = dead_ports(1);
    let dead = held.ports[0];
    let mut args = fetch_args(&s.out, &s.ports, &["--wait"]);
    args.extend(["--source".into(), format!("127.0.0.1:{dead}")]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let piped = ctl_within(&s.client, &refs, LONG).expect("ended");
    let text = String::from_utf8_lossy(&piped.stdout);
    assert!(piped.status.success(), "{piped:?}");
    let dead_address = format!("127.0.0.1:{dead} ");
    let rows: Vec<&str> = text.lines().filter(|l| l.contains(&dead_address)).collect();
    assert!(!rows.is_empty(), "the dead source has a row:\n{text}");
    for row in &rows {
        assert!(
            !row.contains("B/s") && row.contains(" - "),
            "no rate for a dead source: {row}"
        );
    }
    let status = s.client.ok(&["status", "1"]);
    let row = status
        .lines()
        .find(|l| l.contains(&dead_address))
        .unwrap_or_else(|| panic!("the dead source in status:\n{status}"));
    assert!(!row.contains("B/s") && row.contains(" - "), "{row}");
}
