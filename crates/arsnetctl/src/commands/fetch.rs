//! `arsnetctl fetch`: the sources are parsed here (a typo is a usage error before anything
//! is sent), the output directory is created and opened with the caller's rights and passed
//! to the daemon, which downloads only into a directory this user could write to.

use std::os::fd::AsFd;
use std::path::Path;

use arsnet_proto::control::{FetchSpec, Pin, Request, Response};
use arsnet_proto::SourceAddr;

use super::call::{absolute, call_with_handles, unexpected};
use super::follow::{wait_for_job, Follow, Interrupt};
use crate::cli::FetchArgs;
use crate::exit::{Exit, Failure};

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Every source: `-a IP -p PORT...` and `--source HOST:PORT`, parsed.
fn sources(args: &FetchArgs) -> Result<Vec<SourceAddr>, Failure> {
    let mut all: Vec<String> = match &args.address {
        Some(a) => args.ports.iter().map(|p| join_host_port(a, *p)).collect(),
        None if !args.ports.is_empty() => {
            return Err(Failure::new(
                Exit::Usage,
                "-p needs -a IP (or use --source HOST:PORT)",
            ))
        }
        None => Vec::new(),
    };
    all.extend(args.sources.iter().cloned());
    if all.is_empty() {
        return Err(Failure::new(
            Exit::Usage,
            "no servers: give -a IP -p PORT... and/or --source HOST:PORT",
        ));
    }
    all.iter()
        .map(|s| s.parse::<SourceAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::new(Exit::Usage, e.to_string()))
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

/// `--ca-cert FILE`s, read here (the daemon may not be able to read the caller's files, and
/// must not be made to read any file it can for them).
fn read_ca_certs(files: &[std::path::PathBuf]) -> Result<Vec<String>, Failure> {
    use std::io::Read;
    let limit = arsnet_proto::limits::MAX_CA_CERT_BYTES as u64;
    files
        .iter()
        .map(|path| {
            let fail =
                |e: String| Failure::new(Exit::Usage, format!("--ca-cert {}: {e}", path.display()));
            let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
            let mut text = String::new();
            file.take(limit + 1)
                .read_to_string(&mut text)
                .map_err(|e| fail(e.to_string()))?;
            if text.len() as u64 > limit {
                return Err(fail(format!("larger than {limit} bytes")));
            }
            Ok(text)
        })
        .collect()
}

/// Ctrl-C before the daemon answered the request: the job may or may not have been queued.
fn interrupted_before_the_answer() -> Failure {
    Failure::new(
        Exit::Interrupted,
        format!("stopped (interrupted) before arsnetd answered; if the download was queued it continues in the daemon: `{ctl} list` shows it, `{ctl} cancel ID` stops it", ctl = crate::again::ctl()),
    )
}

pub async fn fetch(socket: &Path, json: bool, args: FetchArgs) -> Result<Exit, Failure> {
    super::follow::check_quiet(json, args.quiet)?;
    let spec = FetchSpec {
        dir: absolute(&args.dir)?,
        sources: sources(&args)?,
        resume: args.resume,
        overwrite: args.overwrite,
        metric_interval_secs: args.interval.max(1),
        pin: match (args.blake3, args.sha256) {
            (Some(digest), _) => Some(Pin::Blake3(digest)),
            (None, Some(digest)) => Some(Pin::Sha256(digest)),
            (None, None) => None,
        },
        ca_certs: read_ca_certs(&args.ca_certs)?,
        connections_per_source: args.connections_per_source,
        no_verify: args.no_verify,
        checksum_url: args
            .checksum_url
            .as_deref()
            .map(str::parse::<SourceAddr>)
            .transpose()
            .map_err(|e| Failure::new(Exit::Usage, format!("--checksum-url: {e}")))?,
    };
    // The same check the daemon makes, so that a request that cannot be right is a usage
    // error here (exit 2) and never reaches the daemon.
    spec.validate()
        .map_err(|e| Failure::new(Exit::Usage, e.to_string()))?;
    let opened = open_output_dir(&spec.dir)?;
    // With --wait, Ctrl-C is caught before the request is sent: from then on it ends the
    // command with a hint, never by the default "killed by SIGINT".
    let mut interrupt = args.wait.then(Interrupt::catch).transpose()?;
    let request = Request::Fetch(spec);
    let fds = [opened.as_fd()];
    let answer = call_with_handles(socket, request, &fds);
    let answer = match &mut interrupt {
        Some(interrupt) => tokio::select! {
            answer = answer => answer?,
            _ = interrupt.recv() => return Err(interrupted_before_the_answer()),
        },
        None => answer.await?,
    };
    let (id, attached) = match answer {
        Response::Queued { id, attached } => (id, attached),
        other => return unexpected(other),
    };
    if json {
        crate::json::print(serde_json::json!({ "job_id": id, "attached": attached }));
    } else if !args.quiet {
        crate::out::line(&id.to_string());
        if attached {
            crate::out::err_line(&format!(
                "arsnetctl: attached to job {id}, which already downloads this"
            ));
        }
    }
    if let Some(mut interrupt) = interrupt {
        let follow = Follow {
            json,
            every: std::time::Duration::from_secs(args.interval.max(1)),
            timeout: args.timeout,
        };
        wait_for_job(
            socket,
            id,
            follow,
            args.quiet,
            args.sha256.is_some() && args.blake3.is_none(),
            &mut interrupt,
        )
        .await
    } else {
        Ok(Exit::Ok)
    }
}
