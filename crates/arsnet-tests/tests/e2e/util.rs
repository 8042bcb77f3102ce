//! Test harness: builds and locates the real binaries, runs daemons on temp sockets and
//! state dirs, runs `arsnetctl` commands, makes test files and finds free loopback ports.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Directory holding the built binaries (target/<profile>), after making sure they are
/// up to date: `cargo test` only builds binaries of the package under test, so build them.
/// They are built as `cargo test --workspace` builds everything else (the whole workspace,
/// test targets included, so dev-dependencies' features are unified the same way): after
/// that command or `.ci/run`'s build step, this finds nothing left to compile, where a
/// narrower `-p arsnetd -p arsnetctl` resolves other features and rebuilds half the tree.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test-binary>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_string();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
        if profile != "debug" {
            cmd.args(["--profile", &profile]);
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build for the binaries");
        assert!(status.success(), "building arsnetd/arsnetctl failed");
        dir
    })
}

pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A command running `program` as `uid` (its own group, no supplementary ones) through
/// `setpriv`, or as this process when `uid` is `None`.
pub fn command_as(uid: Option<u32>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A running `arsnetd` with its own socket and state dir, killed when dropped.
pub struct Daemon {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    config: Option<PathBuf>,
    child: Option<Child>,
    /// Run the daemon as this uid (via setpriv), to test what another user may not do.
    as_uid: Option<u32>,
    /// The daemon's log filter (`RUST_LOG`).
    log_filter: &'static str,
}

/// Daemon config used by tests: small segments so that small files have many, quick
/// backoff and stall detection so that failover tests do not wait long.
pub const TEST_CONFIG: &str = r#"
segment_size = 65536
[download]
pipeline_depth = 4
stall_timeout_secs = 5
connect_timeout_secs = 5
backoff_initial_ms = 100
backoff_max_secs = 1
commit_batch = 8
commit_interval_ms = 100
"#;

/// TEST_CONFIG's `pipeline_depth`: segments a connection may have requested and not yet
/// received.
pub const PIPELINE_DEPTH: u64 = 4;

/// Segments a client may hold between their arrival and their durability point, so that a
/// kill -9 loses them and a resumed job fetches them again: the job's event queue
/// (arsnet-engine download/job.rs EVENT_QUEUE, 8) and the writer's queue (download/writer.rs
/// WRITER_QUEUE, 8), each entry of which may be a segment, plus a commit batch of written
/// segments not yet durable (TEST_CONFIG's `commit_batch`, 8). On a loaded machine the
/// queues do fill (the disk is the slow side), so a bound on what the servers sent in all
/// must allow for them.
pub const HELD_UNTIL_DURABLE: u64 = 8 + 8 + 8;

impl Daemon {
    /// Starts a daemon under `root` (socket, state dir and log inside it).
    pub fn start(root: &Path) -> Daemon {
        Self::start_with_config(root, TEST_CONFIG)
    }

    pub fn start_with_config(root: &Path, config: &str) -> Daemon {
        std::fs::create_dir_all(root).unwrap();
        Self::launch(root, config, None)
    }

    fn launch(root: &Path, config: &str, as_uid: Option<u32>) -> Daemon {
        Self::launch_logging(root, config, as_uid, "info")
    }

    fn launch_logging(
        root: &Path,
        config: &str,
        as_uid: Option<u32>,
        log_filter: &'static str,
    ) -> Daemon {
        let config_path = root.join("arsnetd.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut daemon = Daemon {
            root: root.to_path_buf(),
            socket: root.join("ctl.sock"),
            state_dir: root.join("state"),
            config: Some(config_path),
            child: None,
            as_uid,
            log_filter,
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join("arsnetd.log"))
            .unwrap();
        let mut cmd = command_as(self.as_uid, bin("arsnetd"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir);
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        let child = cmd
            .env("RUST_LOG", self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn arsnetd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.ctl(&["list"]).status.success() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("arsnetd exited early with {status}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("arsnetd did not come up; log:\n{}", self.log());
    }

    /// Like [`Daemon::start`], logging at debug level (to check what even debug logs say).
    pub fn start_debug(root: &Path) -> Daemon {
        std::fs::create_dir_all(root).unwrap();
        Self::launch_logging(root, TEST_CONFIG, None, "debug")
    }

    /// Starts a daemon that runs as the unprivileged uid 65534 (nobody). Its root dir is
    /// given to nobody (and its parent made traversable) so that it can create its socket
    /// and state there.
    pub fn start_as_nobody(root: &Path) -> Daemon {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(root).unwrap();
        std::os::unix::fs::chown(root, Some(65534), Some(65534)).unwrap();
        for dir in [root, root.parent().unwrap()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self::launch(root, TEST_CONFIG, Some(65534))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("arsnetd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Runs `arsnetctl --socket S ARGS...`, as the daemon's uid when it runs as another
    /// user (a client trusts only a daemon of its own uid, root or the system service).
    pub fn ctl(&self, args: &[&str]) -> Output {
        let mut cmd = command_as(self.as_uid, bin("arsnetctl"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run arsnetctl")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "arsnetctl {args:?} failed ({}): {}{}\ndaemon log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command with `--json` that must succeed; parses its single JSON object.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let text = self.ok(&full);
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}"))
    }

    /// Asserts that the daemon serves no group at all.
    pub fn assert_no_groups(&self, why: &str) {
        assert_eq!(
            self.json(&["servers"])["groups"],
            serde_json::json!([]),
            "{why}"
        );
    }

    pub fn status(&self, job: u64) -> Value {
        self.json(&["status", &job.to_string()])
    }

    /// Polls the job until `pred` holds; panics (with the log) after `timeout`.
    pub fn wait_job(&self, job: u64, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(job);
            if pred(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "job {job} did not reach the expected state: {status}\nlog tail:\n{}",
                tail(&self.log(), 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again on the same socket and state dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("arsnetd did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn job_state(status: &Value) -> String {
    match &status["state"] {
        Value::String(s) => s.to_lowercase(),
        Value::Object(map) => map
            .keys()
            .next()
            .cloned()
            .unwrap_or_default()
            .to_lowercase(),
        other => other.to_string(),
    }
}

pub fn progress(status: &Value) -> f64 {
    let done = status["bytes_done"].as_f64().unwrap_or(0.0);
    match status["size"].as_f64() {
        Some(size) if size > 0.0 => done / size,
        _ => 0.0,
    }
}

/// Free loopback ports (held until all are chosen, so none repeats).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Deterministic pseudo-random content, so a mismatch is reproducible.
pub fn test_data(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    out
}

pub fn write_file(path: &Path, size: usize, seed: u64) -> Vec<u8> {
    let data = test_data(size, seed);
    std::fs::write(path, &data).unwrap();
    data
}

/// Asserts the file equals `expected` without printing megabytes on failure.
pub fn assert_same(path: &Path, expected: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(got.len(), expected.len(), "size of {}", path.display());
    assert!(got == expected, "content of {} differs", path.display());
}

pub fn ports_args(ports: &[u16]) -> Vec<String> {
    ports.iter().map(|p| p.to_string()).collect()
}

/// `serve -i 1 -n N -f FILE -p PORTS... --bind 127.0.0.1 [EXTRA...]`; returns the group id.
pub fn serve(d: &Daemon, file: &Path, ports: &[u16], extra: &[&str]) -> u64 {
    let n = ports.len().to_string();
    let ps = ports_args(ports);
    let mut args = vec![
        "serve",
        "-i",
        "1",
        "-n",
        &n,
        "-f",
        file.to_str().unwrap(),
        "-p",
    ];
    args.extend(ps.iter().map(String::as_str));
    args.extend_from_slice(&["--bind", "127.0.0.1"]);
    args.extend_from_slice(extra);
    d.ok(&args).trim().parse().expect("group id")
}

/// The arguments of `fetch FLAGS... -o DIR -a 127.0.0.1 -p PORTS...`.
pub fn fetch_args(dir: &Path, ports: &[u16], flags: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["fetch".into()];
    args.extend(flags.iter().map(|f| f.to_string()));
    args.extend([
        "-o".into(),
        dir.to_string_lossy().into_owned(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
    ]);
    args.extend(ports_args(ports));
    args
}

/// `fetch FLAGS... -o DIR -a 127.0.0.1 -p PORTS...`; returns the job id.
pub fn fetch(d: &Daemon, dir: &Path, ports: &[u16], flags: &[&str]) -> u64 {
    let args = fetch_args(dir, ports, flags);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    d.ok(&refs)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .expect("job id")
}

/// Reads until the peer closes and asserts that what it sent mentions `needle`.
pub fn assert_closed_with(reader: &mut impl std::io::Read, needle: &str) {
    let mut reply = Vec::new();
    let _ = reader.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains(needle), "expected {needle:?} in {text:?}");
}

pub fn is_listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Runs `arsnetctl --socket S ARGS...` but gives up after `timeout`: the child is killed and
/// `None` returned, so a test of something that hangs fails instead of hanging. Output goes
/// to files in the daemon's root (not pipes, which a chatty `--wait` could fill).
pub fn ctl_within(d: &Daemon, args: &[&str], timeout: Duration) -> Option<Output> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (out_path, err_path) = (
        d.root.join(format!("ctl-{n}.stdout")),
        d.root.join(format!("ctl-{n}.stderr")),
    );
    let mut child = Command::new(bin("arsnetctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("run arsnetctl");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for arsnetctl") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Some(Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    })
}

/// A TCP connection to `127.0.0.1:port` from the loopback address `source` (any of
/// 127.0.0.0/8 works on Linux), so that a test can play several client machines. The
/// connect gives up after `timeout` (Linux applies SO_SNDTIMEO to connect). `rcvbuf` sets a
/// receive buffer before connecting (a small one makes a client that stops reading stall
/// the server's writes quickly).
pub fn connect_from(
    source: std::net::Ipv4Addr,
    port: u16,
    timeout: Duration,
    rcvbuf: Option<usize>,
) -> std::io::Result<std::net::TcpStream> {
    use std::os::fd::FromRawFd;
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: plain socket calls on a descriptor owned by `stream` from the moment it
    // exists (so it is closed on every error path), with correctly sized arguments.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        ))?;
        if let Some(size) = rcvbuf {
            let size = size as libc::c_int;
            check(libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ))?;
        }
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let from = sockaddr(source, 0);
        check(libc::bind(
            fd,
            (&from as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        let to = sockaddr(std::net::Ipv4Addr::LOCALHOST, port);
        check(libc::connect(
            fd,
            (&to as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        Ok(stream)
    }
}

/// The wire HELLO frame of the protocol version this build speaks.
pub fn hello_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    arsnet_proto::wire::ClientFrame::Hello {
        version: arsnet_proto::limits::WIRE_VERSION,
    }
    .encode(&mut frame);
    frame
}

/// A client daemon, and a server daemon serving `slow.bin` (`size` bytes) on 4 ports each
/// limited to `rate_per_server` bytes/s: what failover, pause and crash tests need.
pub struct Slow {
    pub tmp: tempfile::TempDir,
    pub servers: Daemon,
    pub client: Daemon,
    pub ports: Vec<u16>,
    pub data: Vec<u8>,
    pub out: std::path::PathBuf,
}

pub fn slow_setup(size: usize, rate_per_server: u64) -> Slow {
    let tmp = tempfile::tempdir().unwrap();
    let servers = Daemon::start(&tmp.path().join("srv"));
    let client = Daemon::start(&tmp.path().join("cli"));
    let file = tmp.path().join("slow.bin");
    let data = write_file(&file, size, 1234);
    let ports = free_ports(4);
    let rate = rate_per_server.to_string();
    serve(&servers, &file, &ports, &["--rate", &rate]);
    let out = tmp.path().join("out");
    Slow {
        tmp,
        servers,
        client,
        ports,
        data,
        out,
    }
}

/// A job as a fake daemon reports it.
pub fn fake_job(id: u64, state: arsnet_proto::control::JobState) -> arsnet_proto::control::JobInfo {
    arsnet_proto::control::JobInfo {
        id,
        state,
        dir: "/tmp".into(),
        name: Some("file.bin".into()),
        figures: arsnet_proto::control::RunFigures {
            size: Some(1 << 20),
            segments_total: Some(16),
            elapsed_ms: 1,
            ..Default::default()
        },
        rate_bps: 0,
        sources: vec![],
        content: None,
        verification: Default::default(),
        owner_tag: None,
    }
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `timeout`. For
/// conditions that come true a little after the action that causes them (a port closing,
/// a line reaching a log), which a loaded machine may delay by seconds.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until nothing accepts connections on `port` any more (after a stop-server).
pub fn wait_not_listening(port: u16, timeout: Duration) {
    wait_until(&format!("port {port} stopped listening"), timeout, || {
        !is_listening(port)
    });
}

/// Loopback ports where nothing listens, and nothing can start listening while this
/// lives: each is held by a TCP socket that is bound but never listens (and has no
/// SO_REUSEADDR, so no other socket can bind the port). A connect to one is refused at
/// once, as to a port nobody uses, but no test running in parallel can take it over, as it
/// could a port from [`free_ports`] once that returned.
pub struct DeadPorts {
    pub ports: Vec<u16>,
    _held: Vec<std::os::fd::OwnedFd>,
}

pub fn dead_ports(n: usize) -> DeadPorts {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..n {
        // SAFETY: plain socket calls on a descriptor owned by `fd` from the moment it exists
        // (so it is closed on every path), with correctly sized arguments.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(raw);
            let mut addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
                },
                sin_zero: [0; 8],
            };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(raw, (&addr as *const libc::sockaddr_in).cast(), len);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let rc = libc::getsockname(raw, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len);
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ports.push(u16::from_be(addr.sin_port));
            held.push(fd);
        }
    }
    DeadPorts { ports, _held: held }
}

/// A source that accepts connections and never says a word (the kernel completes the
/// handshakes into the listen backlog; nobody reads or writes): a job fetching only from it
/// stays running, neither failing at once nor finishing, for as long as this lives.
pub fn silent_source() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}
