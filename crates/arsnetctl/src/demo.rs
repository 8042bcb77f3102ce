//! `arsnetctl demo`: the product's main job in one command. Starts a private daemon (temp
//! socket and state dir) unless one was given, creates a test file, serves it on N virtual
//! servers, fetches it through the daemon with live per-server metrics, stops one server
//! half way to show failover, verifies the result byte for byte and prints a summary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use arsnet_proto::control::{FetchSpec, JobInfo, JobState, Request, Response, ServeSpec};

use crate::commands::{call, follow_job};
use crate::exit::{Exit, Failure};
use crate::render;

fn fail(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Refused, message)
}

/// The demo's private daemon: the `arsnetd` binary beside `arsnetctl` when it was built,
/// else the same daemon library run on a thread of this process (so that
/// `cargo run -p arsnetctl -- demo` works on a fresh clone, where only arsnetctl is built).
enum PrivateDaemon {
    Process(Child),
    InProcess,
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        if let PrivateDaemon::Process(child) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn daemon_binary() -> Option<PathBuf> {
    let beside = std::env::current_exe().ok()?.with_file_name("arsnetd");
    beside.exists().then_some(beside)
}

fn spawn_in_process(socket: &Path, state_dir: &Path) -> Result<(), Failure> {
    let config = arsnetd::Config {
        socket: Some(socket.to_path_buf()),
        state_dir: Some(state_dir.to_path_buf()),
        // The demo prints what happens; the daemon's own log would interleave with it.
        log: Some("warn".into()),
        ..arsnetd::Config::default()
    };
    std::thread::Builder::new()
        .name("arsnetd".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => {
                    if let Err(e) = rt.block_on(arsnetd::run(config)) {
                        eprintln!("demo: arsnetd stopped: {e:#}");
                    }
                }
                Err(e) => eprintln!("demo: cannot start arsnetd's runtime: {e}"),
            }
        })
        .map(|_| ())
        .map_err(|e| fail(format!("cannot start arsnetd: {e}")))
}

async fn start_daemon(root: &Path) -> Result<(PrivateDaemon, PathBuf), Failure> {
    let socket = root.join("arsnetd.sock");
    let state_dir = root.join("state");
    let daemon = match daemon_binary() {
        Some(binary) => {
            let log =
                std::fs::File::create(root.join("arsnetd.log")).map_err(|e| fail(e.to_string()))?;
            let child = Process::new(&binary)
                .arg("--socket")
                .arg(&socket)
                .arg("--state-dir")
                .arg(&state_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| fail(format!("cannot start {}: {e}", binary.display())))?;
            println!(
                "demo: started a private arsnetd (pid {}), log in arsnetd.log",
                child.id()
            );
            PrivateDaemon::Process(child)
        }
        None => {
            spawn_in_process(&socket, &state_dir)?;
            println!("demo: started a private arsnetd inside this process (arsnetd is not built)");
            PrivateDaemon::InProcess
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if call(&socket, Request::Ping).await.is_ok() {
            return Ok((daemon, socket));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(fail(
        "the private arsnetd did not start within 20 s (see its log in the demo dir)",
    ))
}

/// Writes `size` bytes of reproducible pseudo-random data, streaming in 1 MiB blocks.
fn make_test_file(path: &Path, size: u64) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            // xorshift64*: fast and good enough to defeat any accidental compression.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    file.get_ref().sync_all()
}

fn free_ports(n: usize) -> Result<Vec<u16>, Failure> {
    // Hold all listeners until every port is chosen so no port is picked twice.
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("cannot find free ports: {e}")))?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| fail(e.to_string()))
        })
        .collect()
}

pub async fn run(
    socket: Option<PathBuf>,
    size_mib: u64,
    servers: u32,
    rate: Option<u64>,
    keep: bool,
) -> Result<Exit, Failure> {
    if servers < 2 {
        return Err(Failure::new(
            Exit::Usage,
            "the demo needs at least 2 servers to show failover",
        ));
    }
    let root = tempfile::Builder::new()
        .prefix("arsnet-demo-")
        .tempdir()
        .map_err(|e| fail(e.to_string()))?;
    let root_path = root.path().to_path_buf();
    let (private, socket) =
        match socket.or_else(|| std::env::var_os(arsnetd::paths::SOCKET_ENV).map(PathBuf::from)) {
            Some(socket) => (None, socket),
            None => {
                let (daemon, socket) = start_daemon(&root_path).await?;
                (Some(daemon), socket)
            }
        };
    println!("demo: working in {}", root_path.display());

    let size = size_mib * 1024 * 1024;
    let source = root_path.join("source");
    std::fs::create_dir_all(&source).map_err(|e| fail(e.to_string()))?;
    let file = source.join("demo.bin");
    println!("demo: creating a {} test file", render_bytes(size));
    make_test_file(&file, size).map_err(|e| fail(format!("cannot create the test file: {e}")))?;

    // Sized so the transfer lasts long enough (~8 s) to watch failover happen.
    let rate = rate.unwrap_or_else(|| (size / (u64::from(servers) * 8)).max(256 * 1024));
    let ports = free_ports(servers as usize)?;
    let serve = ServeSpec {
        file: file.clone(),
        count: servers,
        ports: ports.clone(),
        bind: "127.0.0.1".into(),
        rate: Some(rate),
        status_interval_secs: 1,
    };
    let group = match call(&socket, Request::Serve(serve)).await? {
        Response::GroupStarted { id } => id,
        other => return Err(fail(format!("unexpected answer: {other:?}"))),
    };
    println!(
        "demo: serve -n {servers} -p {ports:?} --rate {} per server (group {group})",
        render::rate(rate)
    );

    let out = root_path.join("download");
    let fetch = FetchSpec {
        dir: out.clone(),
        sources: ports.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
        resume: false,
        overwrite: false,
        metric_interval_secs: 1,
        pin: None,
    };
    let started = Instant::now();
    let id = match call(&socket, Request::Fetch(fetch)).await? {
        Response::Queued { id, .. } => id,
        other => return Err(fail(format!("unexpected answer: {other:?}"))),
    };
    println!("demo: fetch job {id} started");

    let victim = ports[0];
    let mut final_info: Option<JobInfo> = None;
    let result = follow_job(
        &socket,
        id,
        |info, last| {
            print!("{}", render::job_detail(info));
            if last {
                final_info = Some(info.clone());
            }
        },
        Duration::from_secs(1),
    );
    // Stop one server half way, from a side task, while the job is being followed.
    let socket2 = socket.clone();
    let stopper = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Response::Job(info)) = call(&socket2, Request::Status { id }).await {
                let done = info
                    .size
                    .filter(|&s| s > 0)
                    .map_or(0.0, |s| info.bytes_done as f64 / s as f64);
                if done >= 0.5 || info.state.is_terminal() {
                    if !info.state.is_terminal() {
                        let _ = call(
                            &socket2,
                            Request::StopServer {
                                ports: vec![victim],
                            },
                        )
                        .await;
                        println!("demo: >>> stopped the server on port {victim} at {:.0}% to show failover <<<", done * 100.0);
                    }
                    return;
                }
            }
        }
    });
    let exit = result.await;
    let _ = stopper.await;
    let elapsed = started.elapsed().as_secs_f64();
    let outcome = match exit {
        Err(e) => Err(e),
        Ok(_) => summarise(final_info, &file, &out, size, servers, victim, elapsed),
    };
    // Leave a shared daemon as it was (the demo's group serves a temp file), success or not.
    let _ = call(&socket, Request::RemoveGroup { id: group }).await;
    if private.is_some() {
        let _ = call(&socket, Request::Shutdown).await;
    }
    if keep {
        let kept = root.keep();
        println!("demo: kept {}", kept.display());
    }
    outcome
}

/// Compares the download with the source byte for byte and prints the summary line.
fn summarise(
    info: Option<JobInfo>,
    source: &Path,
    out: &Path,
    size: u64,
    servers: u32,
    victim: u16,
    elapsed: f64,
) -> Result<Exit, Failure> {
    let info = info.ok_or_else(|| fail("no final status received"))?;
    if info.state != JobState::Completed {
        return Err(fail(format!(
            "job ended {}",
            render::state_text(&info.state)
        )));
    }
    let result_path = out.join(info.name.clone().unwrap_or_default());
    let identical = same_content(source, &result_path)
        .map_err(|e| fail(format!("cannot compare {}: {e}", result_path.display())))?;
    let per_server: Vec<String> = info
        .sources
        .iter()
        .map(|s| format!("{}={}", s.address, s.segments))
        .collect();
    println!(
        "demo summary: {} in {:.2} s = {:.1} MB/s from {} servers; segments per server: {}; failover: port {} stopped at ~50%; result {}",
        render_bytes(size),
        elapsed,
        size as f64 / elapsed / 1e6,
        servers,
        per_server.join(", "),
        victim,
        if identical { "byte-identical to the source" } else { "DIFFERENT from the source" },
    );
    if identical {
        Ok(Exit::Ok)
    } else {
        Err(Failure::new(
            Exit::JobFailed,
            "downloaded file differs from the source",
        ))
    }
}

/// Streams both files and compares them, 1 MiB at a time.
fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn render_bytes(n: u64) -> String {
    if n % (1024 * 1024) == 0 {
        format!("{} MiB", n / (1024 * 1024))
    } else {
        render::bytes(n)
    }
}
