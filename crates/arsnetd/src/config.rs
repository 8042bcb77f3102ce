//! Daemon configuration: command-line flags, environment variables and the TOML config file
//! (`config.example.toml` documents every option). Precedence: flags, then environment
//! (`ARSNET_CONFIG`, `ARSNET_SOCKET`, `ARSNET_STATE_DIR`, `ARSNET_MAX_ACTIVE_DOWNLOADS`,
//! `RUST_LOG`), then the file, then defaults. Unknown keys are an error, so a typo never
//! silently does nothing. SIGHUP reads the file again (see `reload.rs`); flags and
//! environment given at start keep winning over it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arsnet_engine::download::DownloadConfig;
use clap::Parser;
use serde::{Deserialize, Serialize};

/// arsnetd — the ArsNet daemon: serves files on virtual servers and runs a queue of
/// multi-server downloads, controlled by `arsnetctl` over a local socket.
///
/// Runs in the foreground (for systemd, launchd or a terminal). SIGTERM or SIGINT stop it
/// gracefully: downloads are brought to a durable point and resume on the next start.
/// SIGHUP reloads the config file: what can change live does (queue size, download tuning,
/// log filter...), the rest is reported as needing a restart; a bad file keeps the old
/// configuration. Precedence: flags > environment > config file > defaults.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "arsnetd", version)]
pub struct Args {
    /// TOML configuration file (see config.example.toml); SIGHUP reads it again.
    #[arg(long, value_name = "FILE", env = "ARSNET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Control socket path [default: $ARSNET_SOCKET, else $XDG_RUNTIME_DIR/arsnet/arsnetd.sock
    /// (/run/user/UID/arsnet/arsnetd.sock without that variable), or /run/arsnet/arsnetd.sock
    /// as root]. Overrides the file's `socket`.
    #[arg(long, value_name = "PATH", env = "ARSNET_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Directory for the job table, server groups and digest cache [default:
    /// $STATE_DIRECTORY, else ~/.local/state/arsnet, or /var/lib/arsnet as root].
    /// Overrides the file's `state_dir`.
    #[arg(long, value_name = "DIR", env = "ARSNET_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How many downloads run at once; the rest wait in order. Overrides the file's
    /// `max_active_downloads`.
    #[arg(long, value_name = "N", env = "ARSNET_MAX_ACTIVE_DOWNLOADS")]
    pub max_active_downloads: Option<usize>,
    /// Log filter, e.g. "info" or "arsnet_engine=debug". Overrides the file's `log`
    /// [default: info].
    #[arg(long, value_name = "FILTER", env = "RUST_LOG")]
    pub log: Option<String>,
    /// Check the configuration (flags, environment and the file, if any) and exit: 0 and
    /// the effective configuration as TOML on stdout when it is valid, 2 with the error
    /// otherwise. Nothing is started.
    #[arg(long)]
    pub check_config: bool,
    /// Print the manual page (roff) and exit, e.g. `arsnetd --man | man -l -`.
    #[arg(long)]
    pub man: bool,
    /// Print a completion script for SHELL and exit, e.g. `arsnetd --completions bash >
    /// ~/.local/share/bash-completion/completions/arsnetd`.
    #[arg(long, value_name = "SHELL")]
    pub completions: Option<clap_complete::Shell>,
}

/// The `[download]` table: tuning of every download job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadSection {
    pub pipeline_depth: usize,
    pub stall_timeout_secs: u64,
    /// How long a connection may be silent while other sources deliver (see
    /// `DownloadConfig::silence_timeout`).
    pub silence_timeout_ms: u64,
    pub connect_timeout_secs: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_secs: u64,
    /// Attempts a source that never answered gets while its job has verified nothing (see
    /// `DownloadConfig::max_tries`); 0 = unlimited.
    pub max_tries: u32,
    pub commit_batch: usize,
    pub commit_interval_ms: u64,
    /// Requests in flight per HTTP mirror connection (each its own TCP connection).
    pub mirror_connections: usize,
    /// In a job of mirrors alone, each mirror's first segment and then one in this many is
    /// fetched again from other mirrors and compared; 0 turns it off.
    pub cross_check_every: u64,
}

impl Default for DownloadSection {
    fn default() -> Self {
        let d = DownloadConfig::default();
        DownloadSection {
            pipeline_depth: d.pipeline_depth,
            stall_timeout_secs: d.stall_timeout.as_secs(),
            silence_timeout_ms: d.silence_timeout.as_millis() as u64,
            connect_timeout_secs: d.connect_timeout.as_secs(),
            backoff_initial_ms: d.backoff_initial.as_millis() as u64,
            backoff_max_secs: d.backoff_max.as_secs(),
            max_tries: d.max_tries,
            commit_batch: d.commit_batch,
            commit_interval_ms: d.commit_interval.as_millis() as u64,
            mirror_connections: d.mirror_connections,
            cross_check_every: d.cross_check_every,
        }
    }
}

/// The whole configuration, after merging file and flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub max_active_downloads: usize,
    /// Finished (completed, failed, cancelled) jobs kept in the job table; older ones are
    /// forgotten when new jobs arrive.
    pub keep_finished_jobs: usize,
    /// A group whose members may also use the control socket (besides the daemon's user
    /// and root).
    pub control_group: Option<String>,
    /// Segment size override for served files, in bytes (default: 1 MiB, grown for huge files).
    pub segment_size: Option<u32>,
    pub log: Option<String>,
    /// Where to serve Prometheus metrics over HTTP (`GET /metrics`); none by default.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub download: DownloadSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: None,
            state_dir: None,
            max_active_downloads: 3,
            keep_finished_jobs: 100,
            control_group: None,
            segment_size: None,
            log: None,
            metrics_listen: None,
            download: DownloadSection::default(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A config file larger than this is refused: it is a few kilobytes, and a reload must not
/// be made to read `/dev/zero`.
pub const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Reads a config file that must be a regular file of at most [`MAX_CONFIG_FILE`] bytes.
/// Opened non-blocking, so that a FIFO put in its place fails at once instead of hanging
/// the start or a reload.
fn read_config_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    if meta.len() > MAX_CONFIG_FILE {
        return Err(invalid(format!(
            "{} bytes, more than the {MAX_CONFIG_FILE} a config file may have",
            meta.len()
        )));
    }
    let mut text = String::new();
    // The cap holds even if the file grows after the check.
    file.take(MAX_CONFIG_FILE + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_FILE {
        return Err(invalid(format!("more than {MAX_CONFIG_FILE} bytes")));
    }
    Ok(text)
}

/// A log filter must parse, and each directive must be a level or `TARGET=LEVEL` (or a bare
/// target of ours, or a path with `::`): EnvFilter takes any bare word as a target name, so a
/// typo like "inof" would silently turn every log line off.
fn check_log_filter(filter: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let bad = |why: String| ConfigError::Invalid(format!("log filter {filter:?}: {why}"));
    tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| bad(e.to_string()))?;
    if filter.trim().is_empty() {
        return Err(bad("empty".into()));
    }
    for directive in filter.split(',').map(str::trim) {
        let bare = !directive.contains('=') && !directive.contains('[');
        let known = LEVELS.contains(&directive.to_ascii_lowercase().as_str())
            || directive.starts_with("arsnet")
            || directive.contains("::");
        if bare && !known {
            return Err(bad(format!(
                "{directive:?} is neither a level ({}) nor TARGET=LEVEL",
                LEVELS.join(", ")
            )));
        }
    }
    Ok(())
}

/// Where the configuration came from: the flags and environment read at start, kept so
/// that SIGHUP can read the file again and put them on top once more.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    args: Args,
}

impl Origin {
    pub fn new(args: Args) -> Self {
        Origin { args }
    }

    /// Reads the configuration again: the file as it is now, flags and environment on top.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(&self.args)
    }

    /// The config file, if there is one (for messages).
    pub fn file(&self) -> Option<&Path> {
        self.args.config.as_deref()
    }
}

impl Config {
    /// Loads the file named by `--config` (if any) and applies the flags on top.
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        if let Some(socket) = &args.socket {
            config.socket = Some(socket.clone());
        }
        if let Some(dir) = &args.state_dir {
            config.state_dir = Some(dir.clone());
        }
        if let Some(n) = args.max_active_downloads {
            config.max_active_downloads = n;
        }
        if let Some(log) = &args.log {
            config.log = Some(log.clone());
        }
        config.check()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = read_config_text(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// The same configuration with every path made UTF-8 (lossily, for showing and
    /// comparing only): TOML cannot hold other bytes, and a flag can name such a path.
    pub fn displayable(&self) -> Config {
        let lossy = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
        };
        Config {
            socket: lossy(&self.socket),
            state_dir: lossy(&self.state_dir),
            ..self.clone()
        }
    }

    /// The effective configuration as TOML, in the config file's own syntax.
    pub fn to_toml(&self) -> String {
        // Plain data with UTF-8 paths: serializing it cannot fail; say so if it does.
        toml::to_string(&self.displayable())
            .unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"))
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.max_active_downloads == 0 {
            return Err(ConfigError::Invalid(
                "max_active_downloads must be at least 1".into(),
            ));
        }
        if self.download.pipeline_depth == 0 || self.download.pipeline_depth > 32 {
            return Err(ConfigError::Invalid(
                "download.pipeline_depth must be 1..=32".into(),
            ));
        }
        if self.download.mirror_connections == 0 {
            return Err(ConfigError::Invalid(
                "download.mirror_connections must be at least 1".into(),
            ));
        }
        let d = &self.download;
        // Zero would mean "time out at once" (or, for the backoff, reconnect in a busy loop).
        for (name, value) in [
            ("download.stall_timeout_secs", d.stall_timeout_secs),
            ("download.silence_timeout_ms", d.silence_timeout_ms),
            ("download.connect_timeout_secs", d.connect_timeout_secs),
            ("download.backoff_initial_ms", d.backoff_initial_ms),
            ("download.backoff_max_secs", d.backoff_max_secs),
            ("download.commit_interval_ms", d.commit_interval_ms),
            ("download.commit_batch", d.commit_batch as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if let Some(filter) = &self.log {
            check_log_filter(filter)?;
        }
        for (name, value, max) in [
            ("download.stall_timeout_secs", d.stall_timeout_secs, 3600),
            (
                "download.silence_timeout_ms",
                d.silence_timeout_ms,
                3_600_000,
            ),
            ("download.connect_timeout_secs", d.connect_timeout_secs, 600),
            ("download.backoff_initial_ms", d.backoff_initial_ms, 600_000),
            ("download.backoff_max_secs", d.backoff_max_secs, 3600),
            ("download.max_tries", u64::from(d.max_tries), 1000),
            ("download.commit_interval_ms", d.commit_interval_ms, 60_000),
            ("download.commit_batch", d.commit_batch as u64, 4096),
            (
                "download.mirror_connections",
                d.mirror_connections as u64,
                u64::from(arsnet_proto::limits::MAX_CONNECTIONS_PER_SOURCE),
            ),
        ] {
            if value > max {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at most {max}"
                )));
            }
        }
        // Port 0 would listen somewhere nobody can be told about.
        if self.metrics_listen.is_some_and(|a| a.port() == 0) {
            return Err(ConfigError::Invalid(
                "metrics_listen needs a port (e.g. \"127.0.0.1:9477\")".into(),
            ));
        }
        if let Some(size) = self.segment_size {
            use arsnet_proto::limits::{MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE};
            // Power-of-two segments are whole BLAKE3 subtrees, which is what lets the segment
            // digests combine into the file's real BLAKE3 hash.
            if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) || !size.is_power_of_two() {
                return Err(ConfigError::Invalid(format!(
                    "segment_size must be a power of two in {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}"
                )));
            }
        }
        Ok(())
    }

    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(arsnet_client::paths::default_socket)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(crate::paths::default_state_dir)
    }

    /// The download tuning with the client's `-i` applied.
    pub fn download_config(&self, metric_interval_secs: u64) -> DownloadConfig {
        let d = &self.download;
        DownloadConfig {
            pipeline_depth: d.pipeline_depth,
            stall_timeout: Duration::from_secs(d.stall_timeout_secs.max(1)),
            silence_timeout: Duration::from_millis(d.silence_timeout_ms.max(1)),
            connect_timeout: Duration::from_secs(d.connect_timeout_secs.max(1)),
            backoff_initial: Duration::from_millis(d.backoff_initial_ms.max(10)),
            backoff_max: Duration::from_secs(d.backoff_max_secs.max(1)),
            max_tries: d.max_tries,
            commit_batch: d.commit_batch,
            commit_interval: Duration::from_millis(d.commit_interval_ms.max(1)),
            metric_interval: arsnet_proto::request::interval(metric_interval_secs),
            mirror_connections: d.mirror_connections,
            cross_check_every: d.cross_check_every,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_typos_are_errors() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config.example.toml");
        let config = Config::from_file(Path::new(example)).expect("config.example.toml parses");
        config.check().unwrap();
        let bad: Result<Config, _> = toml::from_str("max_active_downloadz = 3");
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("max_active_downloadz"));
        let zero: Config = toml::from_str("max_active_downloads = 0").unwrap();
        assert!(zero.check().is_err());
    }

    #[test]
    fn max_tries_defaults_to_five_allows_zero_and_is_bounded() {
        let default = Config::default();
        assert_eq!(default.download.max_tries, 5);
        assert_eq!(default.download_config(1).max_tries, 5);
        let unlimited: Config = toml::from_str("[download]\nmax_tries = 0").unwrap();
        unlimited.check().unwrap();
        assert_eq!(unlimited.download_config(1).max_tries, 0);
        let most: Config = toml::from_str("[download]\nmax_tries = 1000").unwrap();
        most.check().unwrap();
        let too_many: Config = toml::from_str("[download]\nmax_tries = 1001").unwrap();
        let error = too_many.check().unwrap_err().to_string();
        assert!(
            error.contains("download.max_tries must be at most 1000"),
            "{error}"
        );
    }
}
