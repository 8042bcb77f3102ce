//! The daemon's lifecycle, at the top of the crate: start-up (state dir, lock, saved state,
//! control socket, restore), serving until a signal or a `shutdown` request, and the
//! graceful stop (jobs to a durable point, state saved, groups closed, socket removed).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::access::{resolve_group, ControlGroup};
use crate::config::{Config, Origin};
use crate::logging::Logging;
use crate::persist::{self, Loaded};
use crate::state::Daemon;

/// How long a graceful stop waits for jobs to reach a durable point.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

fn control_group(config: &Config) -> anyhow::Result<Option<ControlGroup>> {
    let Some(name) = config.control_group.as_deref() else {
        return Ok(None);
    };
    resolve_group(name)
        .map_err(|e| anyhow::anyhow!(e))?
        .ok_or_else(|| anyhow::anyhow!("control_group {name:?} does not exist"))
        .map(Some)
}

/// Runs the daemon until SIGTERM, SIGINT or a `shutdown` request. `config` was loaded from
/// `origin`, which SIGHUP reads again.
pub async fn run(config: Config, origin: Origin) -> anyhow::Result<()> {
    let logging = crate::logging::init(&config);
    let state_dir = config.state_dir();
    // Created private (0700): job tables, digests and the lock are the daemon's business.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    private_state_dir(&state_dir);
    let _lock = crate::lock::lock_state_dir(&state_dir)?;
    // Before the socket exists: state that cannot be read stops the daemon right here.
    let loaded = persist::load(&state_dir)?;
    let socket = config.socket_path();
    let group = control_group(&config)?;
    // Before the control socket: an address that cannot be bound stops the daemon at once.
    let metrics = bind_metrics(&config).await?;
    // A socket the service manager passed is its to keep: used as is, never removed.
    let (listener, bound) = match crate::control::inherited_socket()? {
        Some(listener) => {
            info!("using the control socket passed by the service manager");
            (listener, None)
        }
        None => {
            let listener = crate::control::bind_socket(&socket, group.as_ref())?;
            (listener, file_id(&socket))
        }
    };
    let daemon = Daemon::new(config, state_dir.clone(), group);
    // Before READY=1: from then on a SIGHUP means "reload", never the default "terminate".
    let signals = spawn_signal_handler(daemon.clone(), origin, logging)?;
    restore(&daemon, loaded).await;
    info!(socket = %socket.display(), state_dir = %state_dir.display(), pid = std::process::id(), "arsnetd ready");
    crate::service::ready(&daemon);
    let heartbeat = crate::service::spawn_heartbeat(&daemon);
    let metrics = metrics.map(|l| crate::metrics::http::spawn(daemon.clone(), l));
    crate::control::serve(daemon.clone(), listener).await;
    heartbeat.abort();
    if let Some(task) = metrics {
        task.abort();
    }
    let saved = stop(&daemon).await;
    // Listened to until here: a second SIGTERM during the stop exits at once.
    signals.close();
    // Only our own socket: whatever replaced it while we ran is not ours to delete.
    if bound.is_some() && file_id(&socket) == bound {
        let _ = std::fs::remove_file(&socket);
    }
    // The last state could not be saved: exit non-zero so that a supervisor notices.
    saved.context("final save at shutdown")?;
    info!("arsnetd stopped");
    Ok(())
}

/// The metrics listener, when `metrics_listen` asks for one.
async fn bind_metrics(config: &Config) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = config.metrics_listen else {
        return Ok(None);
    };
    crate::metrics::http::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr} (metrics_listen)"))
        .map(Some)
}

/// Graceful stop: every job to a durable point, state saved, groups closed.
async fn stop(daemon: &Arc<Daemon>) -> Result<(), persist::SaveError> {
    crate::service::stopping();
    info!("shutting down: stopping jobs at a durable point");
    crate::jobs::stop_all_for_shutdown(daemon);
    daemon.tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, daemon.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            "some jobs did not stop within {}s",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    let (groups, saved) = {
        let inner = daemon.lock();
        let groups: Vec<_> = inner.groups.values().map(|g| g.group.clone()).collect();
        (groups, daemon.persist(&inner))
    };
    for group in groups {
        group.shutdown().await;
    }
    saved
}

/// A state dir that already existed may be open to others; it holds the job table (mirror
/// URLs with their credentials), so it is closed to 0700 (said in the log when it was not).
fn private_state_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            Ok(()) => warn!(dir = %dir.display(), "state dir was mode {mode:o}; made it 0700"),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "state dir is mode {mode:o} and could not be made 0700")
            }
        }
    }
}

/// Device and inode of what is at `path` now (not following a symlink).
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The signal listener; [`SignalTask::close`] stops it.
struct SignalTask {
    handle: signal_hook_tokio::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl SignalTask {
    fn close(self) {
        self.handle.close();
        self.task.abort();
    }
}

/// SIGTERM and SIGINT stop the daemon gracefully; SIGHUP reloads the configuration.
fn spawn_signal_handler(
    daemon: Arc<Daemon>,
    origin: Origin,
    logging: Logging,
) -> anyhow::Result<SignalTask> {
    use futures_util::StreamExt;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .context("cannot install signal handlers")?;
    let handle = signals.handle();
    let logging = Arc::new(logging);
    let task = tokio::spawn(async move {
        let mut stopping = false;
        while let Some(signal) = signals.next().await {
            let name = match signal {
                SIGHUP => "SIGHUP",
                SIGTERM => "SIGTERM",
                _ => "SIGINT",
            };
            if signal == SIGHUP {
                info!("SIGHUP received: reloading the configuration");
                // Its own task: reading the file must never keep this loop from SIGTERM.
                tokio::spawn(crate::reload::reload(
                    daemon.clone(),
                    origin.clone(),
                    logging.clone(),
                ));
            } else if stopping {
                // Everything durable is on disk at every commit; a second signal is an
                // operator who will not wait for the graceful stop.
                warn!("{name} received again during the graceful stop: exiting now");
                std::process::exit(1);
            } else {
                info!("{name} received: stopping gracefully (send it again to exit at once)");
                stopping = true;
                daemon.shutdown.cancel();
            }
        }
    });
    Ok(SignalTask { handle, task })
}

/// Brings groups and jobs back from what [`persist::load`] found.
async fn restore(daemon: &Arc<Daemon>, loaded: Loaded) {
    let state = match loaded {
        Loaded::Fresh => return,
        Loaded::State(state) => state,
        Loaded::Corrupt { reason, kept_at } => {
            let note = format!(
                "saved state was unreadable ({reason}); kept it at {} and started empty",
                kept_at.display()
            );
            daemon.note_restore_problem(note);
            return;
        }
    };
    {
        let mut inner = daemon.lock();
        inner.next_job_id = state.next_job_id;
        inner.next_group_id = state.next_group_id;
    }
    crate::groups::restore_groups(daemon, state.groups).await;
    crate::jobs::restore_jobs(daemon, state.jobs);
    let inner = daemon.lock();
    daemon.persist_or_log(&inner);
}
