//! One function per `arsnetctl` command: build the request, call the daemon, print the
//! answer (human text, or JSON with `--json`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arsnet_proto::control::{
    FetchSpec, JobId, JobInfo, JobState, Pin, Request, Response, ServeSpec, Update,
};
use arsnetd::client::Client;
use serde::Serialize;
use std::os::fd::AsFd;

use crate::cli::{Cli, Command};
use crate::exit::{Exit, Failure};
use crate::render;

pub async fn run(cli: Cli) -> Result<Exit, Failure> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(arsnetd::paths::default_socket);
    let json = cli.json;
    match cli.command {
        Command::Serve {
            interval,
            count,
            file,
            ports,
            bind,
            rate,
        } => {
            let spec = ServeSpec {
                file: absolute(&file)?,
                count,
                ports,
                bind,
                rate,
                status_interval_secs: interval,
            };
            // Opened here, with this user's rights: the daemon serves what we could read.
            let opened = std::fs::File::open(&spec.file).map_err(|e| {
                Failure::new(
                    Exit::Refused,
                    format!("cannot read {}: {e}", spec.file.display()),
                )
            })?;
            let request = Request::Serve(spec);
            let id = match call_with_fds(&socket, request, &[opened.as_fd()]).await? {
                Response::GroupStarted { id } => id,
                other => return unexpected(other),
            };
            // The content's BLAKE3, which clients can pin with `fetch --blake3`: on stderr,
            // so that stdout stays the bare group id scripts read.
            let blake3 = match call(&socket, Request::Servers).await? {
                Response::Servers(groups) => groups
                    .iter()
                    .find(|g| g.id == id)
                    .map(|g| arsnet_proto::manifest::to_hex(&g.blake3)),
                _ => None,
            };
            if let (Some(hex), false) = (&blake3, json) {
                eprintln!("group {id} serves content BLAKE3 {hex}");
            }
            print_value(
                json,
                &serde_json::json!({ "group": id, "blake3": blake3 }),
                &id.to_string(),
            )
        }
        Command::Servers => match call(&socket, Request::Servers).await? {
            Response::Servers(groups) => {
                print_value(json, &groups, render::groups_table(&groups).trim_end())
            }
            other => unexpected(other),
        },
        Command::StopServer { ports } => {
            done(json, call(&socket, Request::StopServer { ports }).await?)
        }
        Command::StartServer { ports } => {
            done(json, call(&socket, Request::StartServer { ports }).await?)
        }
        Command::Unserve { id } => done(json, call(&socket, Request::RemoveGroup { id }).await?),
        Command::Fetch {
            resume,
            interval,
            dir,
            address,
            ports,
            sources,
            wait,
            overwrite,
            blake3,
            sha256,
        } => {
            let mut all: Vec<String> = match &address {
                Some(a) => ports.iter().map(|p| join_host_port(a, *p)).collect(),
                None if !ports.is_empty() => {
                    return Err(Failure::new(
                        Exit::Usage,
                        "-p needs -a IP (or use --source HOST:PORT)",
                    ))
                }
                None => Vec::new(),
            };
            all.extend(sources);
            if all.is_empty() {
                return Err(Failure::new(
                    Exit::Usage,
                    "no servers: give -a IP -p PORT... and/or --source HOST:PORT",
                ));
            }
            let spec = FetchSpec {
                dir: absolute(&dir)?,
                sources: all,
                resume,
                overwrite,
                metric_interval_secs: interval.max(1),
                pin: match (blake3, sha256) {
                    (Some(digest), _) => Some(Pin::Blake3(digest)),
                    (None, Some(digest)) => Some(Pin::Sha256(digest)),
                    (None, None) => None,
                },
            };
            // Created and opened here, with this user's rights: the daemon downloads only
            // into a directory we could write to.
            let opened = open_output_dir(&spec.dir)?;
            let request = Request::Fetch(spec);
            let (id, attached) = match call_with_fds(&socket, request, &[opened.as_fd()]).await? {
                Response::Queued { id, attached } => (id, attached),
                other => return unexpected(other),
            };
            if json {
                println!("{}", serde_json::json!({ "job": id, "attached": attached }));
            } else {
                println!("{id}");
                if attached {
                    eprintln!("arsnetctl: attached to job {id}, which already downloads this");
                }
            }
            if wait {
                wait_for_job(&socket, id, json, interval).await
            } else {
                Ok(Exit::Ok)
            }
        }
        Command::List => match call(&socket, Request::List).await? {
            Response::List {
                jobs,
                groups,
                notes,
            } => {
                let mut text = format!(
                    "{}\n{}",
                    render::jobs_table(&jobs),
                    render::groups_table(&groups)
                );
                for note in &notes {
                    text.push_str(&format!("\nWARNING: {note}"));
                }
                let value = serde_json::json!({ "jobs": jobs, "groups": groups, "notes": notes });
                print_value(json, &value, text.trim_end())
            }
            other => unexpected(other),
        },
        Command::Status { id } => match call(&socket, Request::Status { id }).await? {
            Response::Job(info) => print_value(json, &info, render::job_detail(&info).trim_end()),
            other => unexpected(other),
        },
        Command::Watch { id } => watch(&socket, id, json).await,
        Command::Pause { id } => done(json, call(&socket, Request::Pause { id }).await?),
        Command::Resume { id } => done(json, call(&socket, Request::Resume { id }).await?),
        Command::Cancel { id, keep } => {
            done(json, call(&socket, Request::Cancel { id, keep }).await?)
        }
        Command::Shutdown => done(json, call(&socket, Request::Shutdown).await?),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "arsnetctl", &mut std::io::stdout());
            Ok(Exit::Ok)
        }
        Command::Demo {
            size_mib,
            servers,
            rate,
            keep,
        } => crate::demo::run(cli.socket, size_mib, servers, rate, keep).await,
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path)
        .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", path.display())))
}

pub async fn call(socket: &Path, request: Request) -> Result<Response, Failure> {
    let mut client = Client::connect(socket).await?;
    Ok(client.call(request).await?)
}

/// [`call`], passing descriptors this process opened (see `arsnetd::caller`).
async fn call_with_fds(
    socket: &Path,
    request: Request,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<Response, Failure> {
    let mut client = Client::connect(socket).await?;
    client.send_with_fds(request, fds).await?;
    Ok(client.recv().await?)
}

/// Creates the output directory if needed and opens it, as the calling user.
fn open_output_dir(dir: &Path) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| {
        Failure::new(
            Exit::Refused,
            format!("cannot use {} as the output directory: {e}", dir.display()),
        )
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(fail)
}

fn print_value<T: Serialize>(json: bool, value: &T, text: &str) -> Result<Exit, Failure> {
    if json {
        let line =
            serde_json::to_string(value).map_err(|e| Failure::new(Exit::Refused, e.to_string()))?;
        println!("{line}");
    } else {
        println!("{text}");
    }
    Ok(Exit::Ok)
}

fn done(json: bool, response: Response) -> Result<Exit, Failure> {
    match response {
        Response::Done => print_value(json, &serde_json::json!({ "ok": true }), "ok"),
        other => unexpected(other),
    }
}

fn unexpected(response: Response) -> Result<Exit, Failure> {
    Err(Failure::new(
        Exit::Refused,
        format!("unexpected answer from arsnetd: {response:?}"),
    ))
}

/// The exit code a finished job maps to.
pub fn job_exit(state: &JobState) -> Option<Exit> {
    match state {
        JobState::Completed => Some(Exit::Ok),
        JobState::Failed(_) => Some(Exit::JobFailed),
        JobState::Cancelled => Some(Exit::JobCancelled),
        JobState::Paused => Some(Exit::JobPaused),
        _ => None,
    }
}

/// Follows one job's pushed updates until it ends; prints a report at most every
/// `interval` seconds (and always the last one).
pub async fn wait_for_job(
    socket: &Path,
    id: JobId,
    json: bool,
    interval: u64,
) -> Result<Exit, Failure> {
    follow_job(
        socket,
        id,
        |info, last| {
            if json {
                if let Ok(line) = serde_json::to_string(info) {
                    println!("{line}");
                }
            } else if last || info.state != JobState::Running || info.segments_done > 0 {
                print!("{}", render::job_detail(info));
            }
        },
        Duration::from_secs(interval.max(1)),
    )
    .await
}

/// Subscribes to a job and calls `report` for each update (throttled to `every`, except the
/// final one). Returns the exit code of the job's final state.
pub async fn follow_job(
    socket: &Path,
    id: JobId,
    mut report: impl FnMut(&JobInfo, bool),
    every: Duration,
) -> Result<Exit, Failure> {
    let mut client = Client::connect(socket).await?;
    client.send(Request::Watch { id: Some(id) }).await?;
    let mut last_print: Option<Instant> = None;
    loop {
        match client.recv().await? {
            Response::Update(Update::Job(info)) => {
                if let Some(exit) = job_exit(&info.state) {
                    report(&info, true);
                    match &info.state {
                        JobState::Failed(reason) => {
                            return Err(Failure::new(exit, format!("job {id} failed: {reason}")))
                        }
                        JobState::Cancelled => {
                            return Err(Failure::new(exit, format!("job {id} was cancelled")))
                        }
                        JobState::Paused => {
                            return Err(Failure::new(exit, format!("job {id} was paused")))
                        }
                        _ => return Ok(exit),
                    }
                }
                if last_print.is_none_or(|t| t.elapsed() >= every) {
                    last_print = Some(Instant::now());
                    report(&info, false);
                }
            }
            Response::Lagged { .. } | Response::Update(_) => {}
            other => return unexpected(other),
        }
    }
}

async fn watch(socket: &Path, id: Option<JobId>, json: bool) -> Result<Exit, Failure> {
    let mut client = Client::connect(socket).await?;
    client.send(Request::Watch { id }).await?;
    loop {
        let response = client.recv().await?;
        if json {
            if let Ok(line) = serde_json::to_string(&response) {
                println!("{line}");
            }
            continue;
        }
        match response {
            Response::Update(Update::Job(info)) => print!("{}", render::job_detail(&info)),
            Response::Update(Update::Groups(groups)) => print!("{}", render::groups_table(&groups)),
            Response::Lagged { skipped } => {
                println!("(skipped {skipped} updates: this terminal reads too slowly)")
            }
            other => return unexpected(other),
        }
    }
}
