//! The command line of `arsnetctl`: every command and flag, with the spec's short flags kept
//! verbatim (`-i -n -f -p` for serve, `-r -i -o -a -p` for fetch).

use std::path::PathBuf;

use arsnet_proto::limits::INTERVAL_SECS;
use clap::{Parser, Subcommand};

/// arsnetctl — control the ArsNet daemon: serve a file on virtual servers, download a file
/// from many servers at once, and watch, pause, resume or cancel downloads.
///
/// Exit codes: 0 success; 1 request refused or failed; 2 usage error; 3 daemon unreachable
/// or connection lost; 4 download failed; 5 download cancelled; 6 download paused while
/// waiting on it; 7 --timeout passed (the job continues); 130 interrupted by Ctrl-C (the job
/// continues). A closed stdout (`arsnetctl watch | head -1`) ends the command killed by
/// SIGPIPE (141 in a shell), as coreutils end.
#[derive(Debug, Parser)]
#[command(name = "arsnetctl", version)]
pub struct Cli {
    /// Control socket of arsnetd [default: $ARSNET_SOCKET, else
    /// $XDG_RUNTIME_DIR/arsnet/arsnetd.sock (/run/user/UID/arsnet/arsnetd.sock without that
    /// variable), or /run/arsnet/arsnetd.sock as root].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Machine-readable output: one JSON object, or JSON lines for streams.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

fn port(s: &str) -> Result<u16, String> {
    let p: u16 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a port number"))?;
    // The daemon checks the whole request again; this only reports a typo before anything
    // is sent, in the same words.
    arsnet_proto::request::check_ports(1, &[p]).map_err(|e| e.to_string())?;
    Ok(p)
}

fn digest_hex(s: &str) -> Result<[u8; 32], String> {
    arsnet_proto::manifest::from_hex(s)
        .ok_or_else(|| format!("{s:?} is not a digest: expected 64 hex digits"))
}

fn rate(s: &str) -> Result<u64, String> {
    arsnet_proto::units::parse_rate(s).map_err(|e| e.to_string())
}

/// A `--timeout`: a duration, and not zero (which would give up before the first answer,
/// and is more likely a typo than a wish).
fn timeout(s: &str) -> Result<std::time::Duration, String> {
    match arsnet_proto::units::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(format!("{s:?} is no time to wait: give at least 1s")),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn any_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} is not a port number (1..=65535)")),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve FILE on N virtual servers, one TCP port each (the spec's Server.py). Prints the
    /// group id once every port listens.
    Serve(ServeArgs),
    /// List server groups and the status of each port.
    Servers,
    /// Stop virtual servers abruptly: listeners close, connections are cut.
    StopServer {
        /// Ports of the virtual servers to stop (see `servers`). Stopping a stopped one
        /// succeeds.
        #[arg(value_name = "PORT", num_args = 1.., required = true, value_parser = any_port)]
        ports: Vec<u16>,
    },
    /// Bring stopped virtual servers back.
    StartServer {
        /// Ports of the virtual servers to start again. Starting a listening one succeeds.
        #[arg(value_name = "PORT", num_args = 1.., required = true, value_parser = any_port)]
        ports: Vec<u16>,
    },
    /// Stop every port of a server group and forget it.
    Unserve {
        /// The group id printed by `serve` (see `servers`).
        id: u64,
    },
    /// Download the file served at IP on PORTs into DIR (the spec's Client.py). Prints the job
    /// id; with --wait, reports progress every -i seconds and exits 0 only when DIR/NAME is
    /// complete and verified.
    Fetch(FetchArgs),
    /// List download jobs and server groups.
    List,
    /// Show one job in full, per server.
    Status {
        /// The job id printed by `fetch` (see `list`).
        id: u64,
    },
    /// Follow one job until it ends (exit code as for `fetch --wait`), or stream every
    /// update of the daemon until Ctrl-C. At a terminal progress is drawn as live bars
    /// (without colour when NO_COLOR is set); otherwise as plain lines.
    Watch(WatchArgs),
    /// Pause a job at a durable point; frees its slot in the queue. Answers once the job has
    /// stopped (pausing a paused job succeeds).
    Pause {
        /// The job id printed by `fetch` (see `list`).
        id: u64,
    },
    /// Continue a paused (or failed) job (resuming a queued or running job succeeds).
    Resume {
        /// The job id printed by `fetch` (see `list`).
        id: u64,
    },
    /// Cancel a job and remove its partial files (unless --keep). Answers once they are
    /// gone (cancelling a cancelled job succeeds).
    Cancel {
        /// The job id printed by `fetch` (see `list`).
        id: u64,
        /// Keep the partial files, so that `fetch -r` can adopt them later.
        #[arg(long)]
        keep: bool,
    },
    /// Print the daemon's metrics in the Prometheus text format (0.0.4): per job, per job
    /// and source, per virtual server, and daemon-wide counters. For a Prometheus server to
    /// scrape, set `metrics_listen` in arsnetd's config (GET /metrics); this command is the
    /// same text, e.g. for node_exporter's textfile collector or a quick look. With --json:
    /// {"metrics": TEXT}.
    Metrics,
    /// Stop the daemon gracefully (jobs resume on its next start).
    Shutdown,
    /// Print the manual page (roff), e.g. `arsnetctl man | man -l -`, or
    /// `arsnetctl man > /usr/local/share/man/man1/arsnetctl.1`; with --dir, write a page for
    /// every command too (arsnetctl-fetch.1, arsnetctl-watch.1, ...).
    Man {
        /// Write arsnetctl.1 and one arsnetctl-COMMAND.1 per command into this directory
        /// (e.g. /usr/local/share/man/man1) instead of printing the top page; prints the
        /// paths written.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish), e.g.
    /// `arsnetctl completions bash > /etc/bash_completion.d/arsnetctl`.
    Completions {
        /// The shell to write the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `serve`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Seconds between server status reports in the daemon log (1..=86400).
    #[arg(short = 'i', value_name = "SECS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(INTERVAL_SECS))]
    pub interval: u64,
    /// Number of virtual servers (must equal the number of ports).
    #[arg(short = 'n', value_name = "N")]
    pub count: u32,
    /// The file to serve.
    #[arg(short = 'f', value_name = "FILE")]
    pub file: PathBuf,
    /// One port per virtual server, 1024..=65535.
    #[arg(short = 'p', value_name = "PORT", num_args = 1.., required = true, value_parser = port)]
    pub ports: Vec<u16>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    pub bind: String,
    /// Bandwidth limit of each virtual server, per second: bytes, or with a unit as curl,
    /// wget and aria2 read it — 512K, 5M, 1G (binary: KiB/MiB/GiB), 5MiB, 5MB (decimal),
    /// 40Mbit (bits).
    #[arg(long, value_name = "RATE", value_parser = rate, allow_hyphen_values = true)]
    pub rate: Option<u64>,
    /// Also answer plain HTTP/1.1 on every port (GET/HEAD of / or /NAME, with Range; ETag is
    /// the file's BLAKE3), so that curl, a browser, aria2 or an ArsNet fetch's `--source
    /// http://HOST:PORT/NAME` can pull from the group.
    #[arg(long)]
    pub http: bool,
}

/// `fetch`'s arguments.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Resume: adopt and continue a partial download found in DIR.
    #[arg(short = 'r')]
    pub resume: bool,
    /// Seconds between metric reports (1..=86400).
    #[arg(short = 'i', value_name = "SECS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(INTERVAL_SECS))]
    pub interval: u64,
    /// Output directory (created if missing).
    #[arg(short = 'o', value_name = "DIR")]
    pub dir: PathBuf,
    /// IP address (or host name) of the servers given with -p.
    #[arg(short = 'a', value_name = "IP", requires = "ports")]
    pub address: Option<String>,
    /// Server ports at the -a address.
    #[arg(short = 'p', value_name = "PORT", num_args = 1.., value_parser = any_port)]
    pub ports: Vec<u16>,
    /// More sources (may be combined with -a/-p): an ArsNet server as HOST:PORT, or an
    /// HTTP(S) mirror as the file's URL (http://host/path/file). Beside an ArsNet server,
    /// mirrors serve the content it announces, verified segment by segment; mirrors alone
    /// need --blake3, --sha256 or --checksum-url (the whole file is checked before it is
    /// published) or --no-verify, and the file takes the first URL's name. Credentials in a
    /// URL are never shown.
    #[arg(long = "source", value_name = "HOST:PORT|URL")]
    pub sources: Vec<String>,
    /// A CA certificate (PEM file) that HTTPS mirrors may chain to, besides the system's
    /// roots (e.g. a private CA); may be repeated.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_certs: Vec<std::path::PathBuf>,
    /// Requests kept in flight at once on each HTTP(S) mirror, each on its own connection
    /// (1..=16; long fat links need more than one TCP window) [default: the daemon's
    /// `[download] mirror_connections`, 2].
    #[arg(long, value_name = "N")]
    pub connections_per_source: Option<u32>,
    /// Wait for the download to end, reporting progress every -i seconds (at a terminal:
    /// live bars per server and in total; else plain lines); the exit code tells the outcome.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: stop waiting after this long (90s, 5m, 2h; exit code 7). The job
    /// continues in the daemon.
    #[arg(
        long,
        value_name = "DURATION",
        requires = "wait",
        value_parser = timeout,
        allow_hyphen_values = true
    )]
    pub timeout: Option<std::time::Duration>,
    /// Replace DIR/NAME if it already exists (only a regular file of the daemon's user).
    #[arg(long)]
    pub overwrite: bool,
    /// Pin the content to this BLAKE3 hash (64 hex digits, as `b3sum` prints it): only
    /// servers announcing it are used, the others are blamed (mirrors alone: the finished
    /// file is checked against it before it is published).
    #[arg(long, value_name = "HEX", value_parser = digest_hex, conflicts_with = "sha256")]
    pub blake3: Option<[u8; 32]>,
    /// Pin the content to this SHA-256 (64 hex digits, as `sha256sum` prints it): the
    /// finished file is checked before it is published under its name.
    #[arg(long, value_name = "HEX", value_parser = digest_hex)]
    pub sha256: Option<[u8; 32]>,
    /// With HTTP mirrors alone and no pin: publish what the mirrors send, unchecked
    /// (`status` and --json then say "not verified"). Without it such a job is refused.
    #[arg(long, conflicts_with_all = ["blake3", "sha256", "checksum_url"])]
    pub no_verify: bool,
    /// Pin the content to its line in this checksum file (sha256sum or b3sum format, such
    /// as a mirror's SHA256SUMS; the line for the first mirror URL's file name). The daemon
    /// reads it once, when the request arrives.
    #[arg(long, value_name = "URL", conflicts_with_all = ["blake3", "sha256"])]
    pub checksum_url: Option<String>,
    /// Print nothing but errors (on stderr); the exit code still tells the outcome. Not
    /// with --json.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `watch`'s arguments.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The job to follow until it ends; without it, every update of the daemon.
    pub id: Option<u64>,
    /// Seconds between progress reports of the followed job (1..=86400), whatever `-i` the
    /// job was fetched with (figures the daemon pushed longer ago are asked for afresh).
    #[arg(short = 'i', value_name = "SECS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(INTERVAL_SECS))]
    pub interval: u64,
    /// Stop watching after this long (90s, 5m, 2h; exit code 7). The job continues.
    #[arg(long, value_name = "DURATION", value_parser = timeout, allow_hyphen_values = true)]
    pub timeout: Option<std::time::Duration>,
    /// Print nothing but errors (on stderr); the exit code still tells the outcome. Not
    /// with --json.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::exit::Exit;

    /// The codes listed after "Exit codes:" in `text`, up to the first blank line.
    fn listed_codes(text: &str) -> Vec<u8> {
        let start = text.find("Exit codes:").expect("an exit code list") + "Exit codes:".len();
        let list = text[start..].split("\n\n").next().unwrap();
        list.split(';')
            .filter_map(|item| item.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// `arsnetctl --help` lists exactly the exit codes of `exit.rs`, and the SIGPIPE end.
    #[test]
    fn help_lists_every_exit_code() {
        let help = super::Cli::command().render_long_help().to_string();
        let codes: Vec<u8> = Exit::ALL.iter().map(|&e| e as u8).collect();
        assert_eq!(listed_codes(&help), codes, "{help}");
        assert!(help.contains("SIGPIPE"), "{help}");
    }

    /// README's exit table has the same codes (and the SIGPIPE row).
    #[test]
    fn readme_lists_every_exit_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let table = readme
            .split("### Exit codes (`arsnetctl`)")
            .nth(1)
            .expect("the exit table");
        let rows: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .collect();
        let codes: Vec<u8> = rows
            .iter()
            .filter_map(|row| {
                row.trim_start_matches('|')
                    .split('|')
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect();
        let expected: Vec<u8> = Exit::ALL.iter().map(|&e| e as u8).collect();
        assert_eq!(codes, expected, "{table}");
        assert!(rows.iter().any(|r| r.contains("SIGPIPE")), "{table}");
    }

    /// `--help` describes every flag and argument of every command.
    #[test]
    fn every_argument_has_help() {
        let mut missing = Vec::new();
        let root = super::Cli::command();
        let mut commands = vec![(String::from("arsnetctl"), root.clone())];
        commands.extend(
            root.get_subcommands()
                .map(|c| (format!("arsnetctl {}", c.get_name()), c.clone())),
        );
        for (name, command) in &commands {
            if command.get_about().is_none() {
                missing.push(format!("{name} (the command itself)"));
            }
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !matches!(id, "help" | "version") {
                    missing.push(format!("{name} {id}"));
                }
            }
        }
        assert!(missing.is_empty(), "without help text: {missing:?}");
    }
}
