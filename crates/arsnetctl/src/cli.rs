//! The command line of `arsnetctl`: every command and flag, with the spec's short flags kept
//! verbatim (`-i -n -f -p` for serve, `-r -i -o -a -p` for fetch).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// arsnetctl — control the ArsNet daemon: serve a file on virtual servers, download a file
/// from many servers at once, and watch, pause, resume or cancel downloads.
///
/// Exit codes: 0 success; 1 request refused or failed; 2 usage error; 3 daemon unreachable;
/// 4 download failed; 5 download cancelled; 6 download paused while waiting on it.
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
    if p < 1024 {
        return Err(format!(
            "port {p} is outside the allowed range 1024..=65535"
        ));
    }
    Ok(p)
}

fn digest_hex(s: &str) -> Result<[u8; 32], String> {
    arsnet_proto::manifest::from_hex(s)
        .ok_or_else(|| format!("{s:?} is not a digest: expected 64 hex digits"))
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
    Serve {
        /// Seconds between server status reports in the daemon log (1..=86400).
        #[arg(short = 'i', value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
        interval: u64,
        /// Number of virtual servers (must equal the number of ports).
        #[arg(short = 'n', value_name = "N")]
        count: u32,
        /// The file to serve.
        #[arg(short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// One port per virtual server, 1024..=65535.
        #[arg(short = 'p', value_name = "PORT", num_args = 1.., required = true, value_parser = port)]
        ports: Vec<u16>,
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
        bind: String,
        /// Bandwidth limit of each virtual server, bytes per second.
        #[arg(long, value_name = "BYTES_PER_SEC")]
        rate: Option<u64>,
    },
    /// List server groups and the status of each port.
    Servers,
    /// Stop virtual servers abruptly: listeners close, connections are cut.
    StopServer {
        #[arg(value_name = "PORT", num_args = 1.., required = true, value_parser = any_port)]
        ports: Vec<u16>,
    },
    /// Bring stopped virtual servers back.
    StartServer {
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
    Fetch {
        /// Resume: adopt and continue a partial download found in DIR.
        #[arg(short = 'r')]
        resume: bool,
        /// Seconds between metric reports (1..=86400).
        #[arg(short = 'i', value_name = "SECS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=86400))]
        interval: u64,
        /// Output directory (created if missing).
        #[arg(short = 'o', value_name = "DIR")]
        dir: PathBuf,
        /// IP address (or host name) of the servers given with -p.
        #[arg(short = 'a', value_name = "IP", requires = "ports")]
        address: Option<String>,
        /// Server ports at the -a address.
        #[arg(short = 'p', value_name = "PORT", num_args = 1.., value_parser = any_port)]
        ports: Vec<u16>,
        /// More servers, each HOST:PORT (may be combined with -a/-p).
        #[arg(long = "source", value_name = "HOST:PORT")]
        sources: Vec<String>,
        /// Wait for the download to end, reporting progress; exit code tells the outcome.
        #[arg(long)]
        wait: bool,
        /// Replace DIR/NAME if it already exists (only a regular file of the daemon's user).
        #[arg(long)]
        overwrite: bool,
        /// Pin the content to this BLAKE3 hash (64 hex digits, as `b3sum` prints it): only
        /// servers announcing it are used, the others are blamed.
        #[arg(long, value_name = "HEX", value_parser = digest_hex, conflicts_with = "sha256")]
        blake3: Option<[u8; 32]>,
        /// Pin the content to this SHA-256 (64 hex digits, as `sha256sum` prints it): the
        /// finished file is checked before it is published under its name.
        #[arg(long, value_name = "HEX", value_parser = digest_hex)]
        sha256: Option<[u8; 32]>,
    },
    /// List download jobs and server groups.
    List,
    /// Show one job in full, per server.
    Status { id: u64 },
    /// Stream pushed updates of one job, or of everything.
    Watch { id: Option<u64> },
    /// Pause a job at a durable point; frees its slot in the queue.
    Pause { id: u64 },
    /// Continue a paused (or failed) job.
    Resume { id: u64 },
    /// Cancel a job and remove its partial files (unless --keep).
    Cancel {
        id: u64,
        /// Keep the partial files, so that `fetch -r` can adopt them later.
        #[arg(long)]
        keep: bool,
    },
    /// Stop the daemon gracefully (jobs resume on its next start).
    Shutdown,
    /// Print a shell completion script, e.g. `arsnetctl completions bash > /etc/bash_completion.d/arsnetctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Demonstrate ArsNet end to end: start a private daemon, serve a test file on several
    /// virtual servers, fetch it, stop one server half way, verify and summarise.
    Demo {
        /// Size of the test file in MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Number of virtual servers.
        #[arg(long, default_value_t = 4)]
        servers: u32,
        /// Per-server bandwidth limit in bytes per second [default: sized so the demo lasts
        /// about 8 seconds].
        #[arg(long)]
        rate: Option<u64>,
        /// Keep the demo's directory (test file, download, daemon state) and print its path.
        #[arg(long)]
        keep: bool,
    },
}
