//! Daemon configuration: command-line flags and the TOML config file
//! (`config.example.toml` documents every option). Flags win over the file, the file wins
//! over defaults. Unknown keys are an error, so a typo never silently does nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arsnet_engine::download::DownloadConfig;
use clap::Parser;
use serde::Deserialize;

/// arsnetd — the ArsNet daemon: serves files on virtual servers and runs a queue of
/// multi-server downloads, controlled by `arsnetctl` over a local socket.
///
/// Runs in the foreground (for systemd, launchd or a terminal). SIGTERM or SIGINT stop it
/// gracefully: downloads are brought to a durable point and resume on the next start.
/// SIGHUP is ignored (logged): the configuration is read once at start.
#[derive(Debug, Parser)]
#[command(name = "arsnetd", version)]
pub struct Args {
    /// TOML configuration file (see config.example.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Control socket path [default: $ARSNET_SOCKET, else $XDG_RUNTIME_DIR/arsnet/arsnetd.sock
    /// (/run/user/UID/arsnet/arsnetd.sock without that variable), or /run/arsnet/arsnetd.sock
    /// as root].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Directory for the job table, server groups and digest cache [default:
    /// $STATE_DIRECTORY, else ~/.local/state/arsnet, or /var/lib/arsnet as root].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How many downloads run at once; the rest wait in order.
    #[arg(long, value_name = "N")]
    pub max_active_downloads: Option<usize>,
    /// Log filter, e.g. "info" or "arsnet_engine=debug" [default: $RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

/// The `[download]` table: tuning of every download job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadSection {
    pub pipeline_depth: usize,
    pub stall_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_secs: u64,
    pub commit_batch: usize,
    pub commit_interval_ms: u64,
}

impl Default for DownloadSection {
    fn default() -> Self {
        let d = DownloadConfig::default();
        DownloadSection {
            pipeline_depth: d.pipeline_depth,
            stall_timeout_secs: d.stall_timeout.as_secs(),
            connect_timeout_secs: d.connect_timeout.as_secs(),
            backoff_initial_ms: d.backoff_initial.as_millis() as u64,
            backoff_max_secs: d.backoff_max.as_secs(),
            commit_batch: d.commit_batch,
            commit_interval_ms: d.commit_interval.as_millis() as u64,
        }
    }
}

/// The whole configuration, after merging file and flags.
#[derive(Debug, Clone, Deserialize)]
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
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
        if self.download.commit_batch == 0 {
            return Err(ConfigError::Invalid(
                "download.commit_batch must be at least 1".into(),
            ));
        }
        let d = &self.download;
        for (name, value, max) in [
            ("download.stall_timeout_secs", d.stall_timeout_secs, 3600),
            ("download.connect_timeout_secs", d.connect_timeout_secs, 600),
            ("download.backoff_initial_ms", d.backoff_initial_ms, 600_000),
            ("download.backoff_max_secs", d.backoff_max_secs, 3600),
            ("download.commit_interval_ms", d.commit_interval_ms, 60_000),
            ("download.commit_batch", d.commit_batch as u64, 4096),
        ] {
            if value > max {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at most {max}"
                )));
            }
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
            .unwrap_or_else(crate::paths::default_socket)
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
            connect_timeout: Duration::from_secs(d.connect_timeout_secs.max(1)),
            backoff_initial: Duration::from_millis(d.backoff_initial_ms.max(10)),
            backoff_max: Duration::from_secs(d.backoff_max_secs.max(1)),
            commit_batch: d.commit_batch,
            commit_interval: Duration::from_millis(d.commit_interval_ms.max(1)),
            metric_interval: Duration::from_secs(
                metric_interval_secs.clamp(1, crate::groups::MAX_INTERVAL_SECS),
            ),
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
}
