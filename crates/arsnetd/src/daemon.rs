//! The daemon's shared state and lifecycle: the registry of server groups and download jobs
//! behind one mutex (never held across an await), persistence on every change, pushed
//! updates for watchers, and the start-up / graceful-shutdown sequence.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arsnet_proto::control::{ControlError, ErrorKind, GroupId, JobId, Update};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::groups::GroupEntry;
use crate::jobs::JobEntry;
use crate::persist::{self, GroupRecord, JobRecord, Loaded, SaveError, StateFile};

/// How long a graceful stop waits for jobs to reach a durable point.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// A request whose change could not be saved failed, whatever else it did: the caller
/// must not believe it would survive a restart.
impl From<SaveError> for ControlError {
    fn from(e: SaveError) -> Self {
        ControlError::new(ErrorKind::Internal, e.to_string())
    }
}

pub(crate) struct Inner {
    pub next_job_id: JobId,
    pub next_group_id: GroupId,
    pub jobs: BTreeMap<JobId, JobEntry>,
    pub groups: BTreeMap<GroupId, GroupEntry>,
    /// Groups that could not be restored at start (e.g. their file is gone): persisted
    /// unchanged so a user's configuration is never silently dropped.
    pub unrestored_groups: Vec<GroupRecord>,
}

/// The daemon: everything the control connections act on.
pub struct Daemon {
    pub(crate) config: Config,
    pub(crate) state_dir: PathBuf,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) updates: broadcast::Sender<Update>,
    pub(crate) shutdown: CancellationToken,
    /// Who besides the daemon's user and root may use the control socket.
    pub(crate) control_group: Option<crate::control::ControlGroup>,
    pub(crate) tasks: TaskTracker,
    /// What could not be restored at start-up, reported by `list`.
    pub(crate) restore_notes: Mutex<Vec<String>>,
}

impl Daemon {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the job table and groups to disk. Called after every change; a request whose
    /// change this could not save must be answered with the error (see [`SaveError`]'s
    /// conversion to a `ControlError`). Every save writes everything, so the next one that
    /// succeeds also saves what an earlier failed one could not.
    pub(crate) fn persist(&self, inner: &Inner) -> Result<(), SaveError> {
        let state = StateFile {
            version: StateFile::default().version,
            next_job_id: inner.next_job_id,
            next_group_id: inner.next_group_id,
            jobs: inner
                .jobs
                .iter()
                .map(|(&id, j)| JobRecord {
                    id,
                    spec: j.spec.clone(),
                    state: j.persisted_state(),
                    name: j.name.clone(),
                    resume: j.resume_next,
                    tag: Some(j.tag),
                    content: j.content,
                    grant: j.grant,
                })
                .collect(),
            groups: inner
                .groups
                .iter()
                .map(|(&id, g)| GroupRecord {
                    id,
                    spec: g.spec.clone(),
                    stopped_ports: g.group.stopped_ports(),
                    file_identity: g.file_identity,
                })
                .chain(inner.unrestored_groups.iter().cloned())
                .collect(),
        };
        persist::save(&self.state_dir, &state)
    }

    /// For changes nobody is waiting on (a job finishing, a queued job starting): there is
    /// no one to answer, so say it loudly; the next change tries again.
    pub(crate) fn persist_or_log(&self, inner: &Inner) {
        if let Err(e) = self.persist(inner) {
            error!(
                error = %e,
                "DAEMON STATE NOT SAVED: a restart now would lose this change; retrying on the next change"
            );
        }
    }

    pub(crate) fn broadcast(&self, update: Update) {
        // No receivers is fine: nobody is watching.
        let _ = self.updates.send(update);
    }

    /// Records (and logs) something that could not be restored; `list` shows it.
    pub(crate) fn note_restore_problem(&self, note: String) {
        error!("{note}");
        self.restore_notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(note);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = config
        .log
        .as_deref()
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain text.
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the daemon until SIGTERM, SIGINT or a `shutdown` request.
pub async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;
    init_logging(&config);
    let state_dir = config.state_dir();
    // Created private (0700): job tables, digests and the lock are the daemon's business.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&state_dir)
        .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
    let _lock = crate::lock::lock_state_dir(&state_dir)?;
    // Before the socket exists: state that cannot be read stops the daemon right here.
    let loaded = persist::load(&state_dir)?;
    let socket = config.socket_path();
    let control_group = match config.control_group.as_deref() {
        Some(name) => Some(
            crate::control::resolve_group(name)
                .map_err(|e| anyhow::anyhow!(e))?
                .ok_or_else(|| anyhow::anyhow!("control_group {name:?} does not exist"))?,
        ),
        None => None,
    };
    let listener = crate::control::bind_socket(&socket, control_group.as_ref())?;
    let bound = file_id(&socket);

    let (updates, _) = broadcast::channel(256);
    let daemon = Arc::new(Daemon {
        config,
        state_dir: state_dir.clone(),
        inner: Mutex::new(Inner {
            next_job_id: 1,
            next_group_id: 1,
            jobs: BTreeMap::new(),
            groups: BTreeMap::new(),
            unrestored_groups: Vec::new(),
        }),
        updates,
        shutdown: CancellationToken::new(),
        control_group,
        tasks: TaskTracker::new(),
        restore_notes: Mutex::new(Vec::new()),
    });
    restore(&daemon, loaded).await;
    info!(socket = %socket.display(), state_dir = %state_dir.display(), pid = std::process::id(), "arsnetd ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let signals = spawn_signal_handler(daemon.clone());
    crate::control::serve(daemon.clone(), listener).await;

    // Graceful stop: every job to a durable point, state saved, groups closed.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    info!("shutting down: stopping jobs at a durable point");
    crate::jobs::stop_all_for_shutdown(&daemon);
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
        let saved = daemon.persist(&inner);
        (
            inner
                .groups
                .values()
                .map(|g| g.group.clone())
                .collect::<Vec<_>>(),
            saved,
        )
    };
    for group in groups {
        group.shutdown().await;
    }
    // Only our own socket: whatever replaced it while we ran is not ours to delete.
    if bound.is_some() && file_id(&socket) == bound {
        let _ = std::fs::remove_file(&socket);
    }
    signals.abort();
    // The last state could not be saved: exit non-zero so that a supervisor notices.
    saved.context("final save at shutdown")?;
    info!("arsnetd stopped");
    Ok(())
}

/// Device and inode of what is at `path` now (not following a symlink).
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

fn spawn_signal_handler(daemon: Arc<Daemon>) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM received"); break; }
                _ = int.recv() => { info!("SIGINT received"); break; }
                _ = hup.recv() => info!("SIGHUP received: ignored (configuration is read at start only)"),
            }
        }
        daemon.shutdown.cancel();
    })
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
