//! The daemon's shared state: the registry of server groups and download jobs behind one
//! mutex (never held across an await), saved on every change, with pushed updates for
//! watchers. Everything above (the queue, the groups, the control handlers, the lifecycle
//! in `daemon.rs`) acts on a [`Daemon`]; nothing here calls up into them.

mod group;
mod job;
mod totals;

pub(crate) use group::GroupEntry;
pub(crate) use job::{JobEntry, Live};
pub(crate) use totals::Totals;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use arsnet_proto::control::{ControlError, ErrorKind, GroupId, JobId, Update};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

use crate::access::ControlGroup;
use crate::config::Config;
use crate::persist::{self, GroupRecord, SaveError, StateFile};

/// Pushed updates a slow watcher may fall behind by before it is told it lagged.
const UPDATE_BACKLOG: usize = 256;

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
    /// The metrics' counters (this daemon's lifetime; not saved).
    pub totals: Totals,
}

/// The daemon: everything the control connections act on.
pub struct Daemon {
    /// Replaced as a whole by a reload (SIGHUP); readers take a snapshot with [`Daemon::config`].
    config: RwLock<Arc<Config>>,
    pub(crate) state_dir: PathBuf,
    inner: Mutex<Inner>,
    pub(crate) updates: broadcast::Sender<Update>,
    pub(crate) shutdown: CancellationToken,
    /// Who besides the daemon's user and root may use the control socket.
    pub(crate) control_group: Option<ControlGroup>,
    pub(crate) tasks: TaskTracker,
    /// What could not be restored at start-up, reported by `list`.
    restore_notes: Mutex<Vec<String>>,
    /// When this daemon started (the metrics' uptime).
    pub(crate) started: Instant,
    /// Start-up told the service manager READY=1 (see `service.rs`).
    pub(crate) ready: std::sync::atomic::AtomicBool,
    /// Turns to read a checksum file (`fetch --checksum-url`), at most
    /// `CHECKSUM_FETCHES_AT_ONCE` at a time.
    pub(crate) checksum_turns: tokio::sync::Semaphore,
}

impl Daemon {
    pub(crate) fn new(
        config: Config,
        state_dir: PathBuf,
        control_group: Option<ControlGroup>,
    ) -> Arc<Self> {
        let (updates, _) = broadcast::channel(UPDATE_BACKLOG);
        Arc::new(Daemon {
            config: RwLock::new(Arc::new(config)),
            state_dir,
            inner: Mutex::new(Inner {
                next_job_id: 1,
                next_group_id: 1,
                jobs: BTreeMap::new(),
                groups: BTreeMap::new(),
                unrestored_groups: Vec::new(),
                totals: Totals::default(),
            }),
            updates,
            shutdown: CancellationToken::new(),
            control_group,
            tasks: TaskTracker::new(),
            restore_notes: Mutex::new(Vec::new()),
            started: Instant::now(),
            ready: std::sync::atomic::AtomicBool::new(false),
            checksum_turns: tokio::sync::Semaphore::new(
                arsnet_proto::limits::CHECKSUM_FETCHES_AT_ONCE,
            ),
        })
    }

    /// The configuration in force now (a reload may replace it a moment later).
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a reloaded configuration in force; see `reload.rs` for what may change.
    pub(crate) fn set_config(&self, config: Config) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

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
            jobs: inner.jobs.iter().map(|(&id, j)| j.record(id)).collect(),
            groups: inner
                .groups
                .iter()
                .map(|(&id, g)| g.record(id))
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

    /// What could not be restored at start-up.
    pub(crate) fn restore_notes(&self) -> Vec<String> {
        self.restore_notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
