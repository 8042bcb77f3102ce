//! The demo's story, stage by stage: a daemon, a served test file, a fetch followed live
//! while one server is stopped half way, and a byte-for-byte verdict.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arsnet_proto::control::{
    FetchSpec, GroupId, JobId, JobInfo, JobState, Request, Response, ServeSpec,
};
use arsnet_proto::SourceAddr;
use arsnetctl::commands::call::call;
use arsnetctl::commands::follow::{follow_job, Follow};
use arsnetctl::exit::{Exit, Failure};
use arsnetctl::render;

use crate::args::Args;
use crate::files::{free_ports, make_test_file, same_content};

fn fail(message: impl Into<String>) -> Failure {
    Failure::new(Exit::Refused, message)
}

fn render_bytes(n: u64) -> String {
    if n % (1024 * 1024) == 0 {
        format!("{} MiB", n / (1024 * 1024))
    } else {
        render::bytes(n)
    }
}

/// What the demo set up: where, and what is served.
struct Stage {
    socket: PathBuf,
    file: PathBuf,
    size: u64,
    servers: u32,
    ports: Vec<u16>,
    group: GroupId,
}

pub async fn run(args: Args) -> Result<Exit, Failure> {
    let root = tempfile::Builder::new()
        .prefix("arsnet-demo-")
        .tempdir()
        .map_err(|e| fail(e.to_string()))?;
    let private = args.socket.is_none();
    let socket = match args.socket.clone() {
        Some(socket) => socket,
        None => crate::daemon::start(root.path()).await?,
    };
    arsnetctl::out::line(&format!("demo: working in {}", root.path().display()));
    let stage = serve_test_file(&args, root.path(), socket).await?;
    let outcome = fetch_with_failover(&stage, &root.path().join("download")).await;
    // Leave a shared daemon as it was (the demo's group serves a temp file), success or not.
    let _ = call(&stage.socket, Request::RemoveGroup { id: stage.group }).await;
    if private {
        let _ = call(&stage.socket, Request::Shutdown).await;
    }
    if args.keep {
        arsnetctl::out::line(&format!("demo: kept {}", root.keep().display()));
    }
    outcome
}

/// Creates the test file and serves it on `args.servers` rate-limited loopback ports.
async fn serve_test_file(args: &Args, root: &Path, socket: PathBuf) -> Result<Stage, Failure> {
    let size = args.size_mib * 1024 * 1024;
    let source = root.join("source");
    std::fs::create_dir_all(&source).map_err(|e| fail(e.to_string()))?;
    let file = source.join("demo.bin");
    arsnetctl::out::line(&format!(
        "demo: creating a {} test file",
        render_bytes(size)
    ));
    make_test_file(&file, size).map_err(|e| fail(format!("cannot create the test file: {e}")))?;
    let servers = args.servers;
    // Sized so the transfer lasts long enough (~8 s) to watch failover happen.
    let rate = args
        .rate
        .unwrap_or_else(|| (size / (u64::from(servers) * 8)).max(256 * 1024));
    let ports =
        free_ports(servers as usize).map_err(|e| fail(format!("cannot find free ports: {e}")))?;
    let serve = ServeSpec {
        file: file.clone(),
        count: servers,
        ports: ports.clone(),
        bind: "127.0.0.1".into(),
        rate: Some(rate),
        status_interval_secs: 1,
        http: false,
    };
    let group = match call(&socket, Request::Serve(serve)).await? {
        Response::GroupStarted { id } => id,
        other => return Err(fail(format!("unexpected answer: {other:?}"))),
    };
    arsnetctl::out::line(&format!(
        "demo: serve -n {servers} -p {ports:?} --rate {} per server (group {group})",
        render::rate(rate)
    ));
    Ok(Stage {
        socket,
        file,
        size,
        servers,
        ports,
        group,
    })
}

/// Fetches the served file, following it live, with the first server stopped half way.
async fn fetch_with_failover(stage: &Stage, out: &Path) -> Result<Exit, Failure> {
    let fetch = FetchSpec {
        dir: out.to_path_buf(),
        sources: stage
            .ports
            .iter()
            .map(|&port| SourceAddr::ArsNet {
                host: "127.0.0.1".into(),
                port,
            })
            .collect(),
        resume: false,
        overwrite: false,
        metric_interval_secs: 1,
        pin: None,
        ca_certs: Vec::new(),
        connections_per_source: None,
        no_verify: false,
        checksum_url: None,
    };
    let started = Instant::now();
    let id = match call(&stage.socket, Request::Fetch(fetch)).await? {
        Response::Queued { id, .. } => id,
        other => return Err(fail(format!("unexpected answer: {other:?}"))),
    };
    arsnetctl::out::line(&format!("demo: fetch job {id} started"));
    let victim = stage.ports[0];
    let stopper = tokio::spawn(stop_half_way(stage.socket.clone(), id, victim));
    let mut final_info: Option<JobInfo> = None;
    let followed = follow_job(
        &stage.socket,
        id,
        |info, last| {
            arsnetctl::out::text(&render::job_detail(info));
            if last {
                final_info = Some(info.clone());
            }
        },
        Follow {
            json: false,
            every: Duration::from_secs(1),
            timeout: None,
        },
    )
    .await;
    let _ = stopper.await;
    let elapsed = started.elapsed().as_secs_f64();
    followed?;
    summarise(final_info, stage, out, victim, elapsed)
}

/// Stops the server on `victim` once half the file is in (unless the job ended first).
async fn stop_half_way(socket: PathBuf, id: JobId, victim: u16) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(Response::Job(info)) = call(&socket, Request::Status { id }).await else {
            continue;
        };
        let done = info
            .figures
            .size
            .filter(|&s| s > 0)
            .map_or(0.0, |s| info.figures.bytes_done as f64 / s as f64);
        if info.state.is_terminal() {
            return;
        }
        if done >= 0.5 {
            let ports = vec![victim];
            let _ = call(&socket, Request::StopServer { ports }).await;
            arsnetctl::out::line(&format!(
                "demo: >>> stopped the server on port {victim} at {:.0}% to show failover <<<",
                done * 100.0
            ));
            return;
        }
    }
}

/// Compares the download with the source byte for byte and prints the summary line.
fn summarise(
    info: Option<JobInfo>,
    stage: &Stage,
    out: &Path,
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
    let identical = same_content(&stage.file, &result_path)
        .map_err(|e| fail(format!("cannot compare {}: {e}", result_path.display())))?;
    let per_server: Vec<String> = info
        .sources
        .iter()
        .map(|s| format!("{}={}", s.address, s.segments))
        .collect();
    arsnetctl::out::line(&format!(
        "demo summary: {} in {elapsed:.2} s = {:.1} MB/s from {} servers; segments per server: {}; failover: port {victim} stopped at ~50%; result {}",
        render_bytes(stage.size),
        stage.size as f64 / elapsed / 1e6,
        stage.servers,
        per_server.join(", "),
        if identical { "byte-identical to the source" } else { "DIFFERENT from the source" },
    ));
    if identical {
        Ok(Exit::Ok)
    } else {
        Err(Failure::new(
            Exit::JobFailed,
            "downloaded file differs from the source",
        ))
    }
}
