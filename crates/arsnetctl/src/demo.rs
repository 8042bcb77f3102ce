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

/// A daemon started for the demo; shut down (or killed) when dropped.
struct PrivateDaemon {
    child: Child,
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon_binary() -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot locate arsnetctl: {e}")))?;
    let beside = exe.with_file_name("arsnetd");
    if beside.exists() {
        return Ok(beside);
    }
    Ok(PathBuf::from("arsnetd"))
}

async fn start_daemon(root: &Path) -> Result<(PrivateDaemon, PathBuf), Failure> {
    let socket = root.join("arsnetd.sock");
    let binary = daemon_binary()?;
    let log = std::fs::File::create(root.join("arsnetd.log")).map_err(|e| fail(e.to_string()))?;
    let child = Process::new(&binary)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(root.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot start {} ({e}); build it with `cargo build --release -p arsnetd`",
                binary.display()
            ))
        })?;
    let daemon = PrivateDaemon { child };
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

fn hash_file(path: &Path) -> std::io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize())
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
    exit?;

    let info = final_info.ok_or_else(|| fail("no final status received"))?;
    let name = info.name.clone().unwrap_or_default();
    let result_path = out.join(&name);
    let (a, b) = (hash_file(&file), hash_file(&result_path));
    let verified = matches!((&a, &b), (Ok(a), Ok(b)) if a == b);
    let per_server: Vec<String> = info
        .sources
        .iter()
        .map(|s| format!("{}={}", s.address, s.segments))
        .collect();
    println!(
        "demo summary: {} in {:.2} s = {:.1} MB/s from {} servers; segments per server: {}; failover: port {} stopped at ~50%; result {} (blake3 {})",
        render_bytes(size),
        elapsed,
        size as f64 / elapsed / 1e6,
        servers,
        per_server.join(", "),
        victim,
        if verified { "byte-identical" } else { "MISMATCH" },
        b.as_ref().map_or("?".into(), |h| h.to_hex()[..16].to_string()),
    );
    if let Some(state) = Some(&info.state).filter(|s| **s != JobState::Completed) {
        return Err(fail(format!("job ended {}", render::state_text(state))));
    }
    // Leave a shared daemon as it was: the demo's group serves a temp file.
    let _ = call(&socket, Request::RemoveGroup { id: group }).await;
    if private.is_some() {
        let _ = call(&socket, Request::Shutdown).await;
    }
    if keep {
        let kept = root.keep();
        println!("demo: kept {}", kept.display());
    }
    if verified {
        Ok(Exit::Ok)
    } else {
        Err(Failure::new(
            Exit::JobFailed,
            "downloaded file differs from the source",
        ))
    }
}

fn render_bytes(n: u64) -> String {
    if n % (1024 * 1024) == 0 {
        format!("{} MiB", n / (1024 * 1024))
    } else {
        render::bytes(n)
    }
}
