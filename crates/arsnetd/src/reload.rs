//! SIGHUP: read the configuration again and put in force what can change while the daemon
//! runs. The decision of what may change live is [`effect`], and nowhere else.
//!
//! - A file that cannot be read or is invalid changes nothing: the old configuration stays,
//!   and the log says why.
//! - What needs a restart (the socket, the state dir, who may use the socket, the metrics
//!   listener) is reported and kept as it is.
//! - The rest applies at once: the queue's size (a larger one starts queued jobs now; a smaller
//!   one lets running jobs finish), how many finished jobs are kept, the log filter, and, for
//!   downloads and server groups started from now on, their tuning and segment size.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::config::{Config, Origin};
use crate::logging::Logging;
use crate::state::Daemon;

/// Whether a changed key takes effect while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    Live,
    NeedsRestart,
}

/// The one list of what may change live. A key not named here needs a restart: that is the
/// answer that cannot surprise.
pub(crate) fn effect(key: &str) -> Effect {
    match key {
        "max_active_downloads" | "keep_finished_jobs" | "segment_size" | "log" => Effect::Live,
        download if download.starts_with("download.") => Effect::Live,
        _ => Effect::NeedsRestart,
    }
}

/// One key whose value differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
}

impl Change {
    pub(crate) fn effect(&self) -> Effect {
        effect(&self.key)
    }
}

/// Every key (dotted, as in the file) with its value; an unset key is "(unset)".
fn flatten(config: &Config) -> BTreeMap<String, String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
        for (key, value) in table {
            let key = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => walk(&key, inner, out),
                other => {
                    out.insert(key, other.to_string());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    match toml::Table::try_from(config.displayable()) {
        Ok(table) => walk("", &table, &mut out),
        // Cannot happen for plain data with UTF-8 paths; were it to, every key would look
        // changed (and what needs a restart is still kept), never "unchanged".
        Err(e) => {
            out.insert("(configuration)".into(), format!("(cannot be shown: {e})"));
        }
    }
    out
}

/// What differs from `old` to `new`, key by key, in the file's order of names.
pub(crate) fn changes(old: &Config, new: &Config) -> Vec<Change> {
    let (old, new) = (flatten(old), flatten(new));
    let unset = || "(unset)".to_string();
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| old.get(*key) != new.get(*key))
        .map(|key| Change {
            key: key.clone(),
            old: old.get(key).cloned().unwrap_or_else(unset),
            new: new.get(key).cloned().unwrap_or_else(unset),
        })
        .collect()
}

/// What goes in force: `new`, except that what needs a restart stays as it is in `old`.
pub(crate) fn in_force(old: &Config, new: Config) -> Config {
    Config {
        socket: old.socket.clone(),
        state_dir: old.state_dir.clone(),
        control_group: old.control_group.clone(),
        metrics_listen: old.metrics_listen,
        ..new
    }
}

/// One reload at a time, in the order the SIGHUPs came.
static RELOADS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads the configuration from `origin` again and applies it (see the module's comment).
/// The file is read on a blocking thread: the signal task that called this must stay free
/// to hear SIGTERM whatever the file system does.
pub(crate) async fn reload(daemon: Arc<Daemon>, origin: Origin, logging: Arc<Logging>) {
    let _turn = RELOADS.lock().await;
    crate::service::reloading(&daemon);
    let from = origin.file().map_or_else(
        || "flags and environment".to_string(),
        |p| p.display().to_string(),
    );
    match tokio::task::spawn_blocking(move || origin.load()).await {
        Ok(Err(e)) => error!("reload failed, the configuration in force is kept: {e}"),
        Ok(Ok(new)) => apply(&daemon, &from, new, &logging),
        Err(e) => error!("reload failed, the configuration in force is kept: {e}"),
    }
    crate::service::reloaded(&daemon);
}

fn apply(daemon: &Arc<Daemon>, from: &str, new: Config, logging: &Logging) {
    let old = daemon.config();
    let found = changes(&old, &new);
    if found.is_empty() {
        info!("reload: configuration from {from} unchanged");
        return;
    }
    for change in found.iter().filter(|c| c.effect() == Effect::NeedsRestart) {
        warn!(
            "reload: {} changed from {} to {}, which needs a restart; still using {}",
            change.key, change.old, change.new, change.old
        );
    }
    // Said before the log filter changes: a reload that quiets the log still reports itself.
    for change in found.iter().filter(|c| c.effect() == Effect::Live) {
        info!(
            "reload: {} changed from {} to {}",
            change.key, change.old, change.new
        );
    }
    let new = in_force(&old, new);
    if let Err(e) = logging.apply(&new) {
        error!("reload: cannot change the log filter: {e}");
    }
    daemon.set_config(new);
    // A larger queue starts waiting jobs now.
    crate::jobs::pump(daemon);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        toml::from_str(text).expect("valid test config")
    }

    #[test]
    fn changes_name_each_key_with_old_and_new_values() {
        let old = parse("max_active_downloads = 1\n[download]\nmax_tries = 5");
        let new =
            parse("max_active_downloads = 2\nsocket = \"/tmp/x.sock\"\n[download]\nmax_tries = 7");
        let found = changes(&old, &new);
        let keys: Vec<_> = found.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            ["download.max_tries", "max_active_downloads", "socket"]
        );
        assert_eq!(found[1].old, "1");
        assert_eq!(found[1].new, "2");
        assert_eq!(found[2].old, "(unset)");
        assert_eq!(found[2].new, "\"/tmp/x.sock\"");
        assert!(changes(&old, &old).is_empty());
    }

    #[test]
    fn restart_keys_stay_and_live_keys_change() {
        let old = parse("socket = \"/a.sock\"\nstate_dir = \"/a\"\nmax_active_downloads = 1");
        let new = parse(
            "socket = \"/b.sock\"\nstate_dir = \"/b\"\ncontrol_group = \"g\"\nmetrics_listen = \"127.0.0.1:9477\"\nmax_active_downloads = 4\nlog = \"debug\"",
        );
        let applied = in_force(&old, new.clone());
        assert_eq!(applied.socket, old.socket);
        assert_eq!(applied.state_dir, old.state_dir);
        assert_eq!(applied.control_group, None);
        assert_eq!(applied.metrics_listen, None);
        assert_eq!(applied.max_active_downloads, 4);
        assert_eq!(applied.log.as_deref(), Some("debug"));
        // One owner: what `in_force` keeps is exactly what `effect` says needs a restart.
        for change in changes(&old, &new) {
            let kept = changes(&applied, &new).iter().any(|c| c.key == change.key);
            assert_eq!(kept, change.effect() == Effect::NeedsRestart, "{change:?}");
        }
    }

    #[test]
    fn every_key_of_the_default_configuration_is_classified_on_purpose() {
        // A new key must be added to `effect` (or knowingly left needing a restart): this
        // lists what is live today, so adding one shows up here.
        let all = Config {
            socket: Some("/s".into()),
            state_dir: Some("/d".into()),
            control_group: Some("g".into()),
            segment_size: Some(65536),
            log: Some("info".into()),
            metrics_listen: "127.0.0.1:9477".parse().ok(),
            ..Config::default()
        };
        let restart: Vec<String> = flatten(&all)
            .into_keys()
            .filter(|k| effect(k) == Effect::NeedsRestart)
            .collect();
        assert_eq!(
            restart,
            ["control_group", "metrics_listen", "socket", "state_dir"]
        );
    }
}
