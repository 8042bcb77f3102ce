//! The download queue: `fetch`, `pause`, `resume`, `cancel`, `status`, `list`; at most
//! `max_active_downloads` jobs run at once and the rest wait in order. Each running job is a
//! task driving `arsnet_engine::download::run_download`, forwarding its progress to watchers
//! every metric interval and on every state change. Every transition is persisted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arsnet_engine::download::{run_download, ContentHook, DownloadSpec, JobCommand, Outcome};
use arsnet_proto::control::{
    ControlError, ErrorKind, FetchSpec, JobId, JobInfo, JobState, Pin, Update,
};
use arsnet_store::dir::Dir;
use arsnet_store::DownloadStore;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::caller::DirGrant;
use crate::daemon::{Daemon, Inner};
use crate::persist::JobRecord;
use arsnet_proto::{Digest, JobTag};

/// Why a running job is being stopped. Later requests may only raise it (run < shutdown <
/// pause < cancel): a paused job stays paused through a daemon restart, and a cancel is never
/// undone by a pause that was still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Intent {
    Run,
    Shutdown,
    Pause,
    Cancel { keep: bool },
}

impl Live {
    fn raise(&mut self, intent: Intent, command: JobCommand) {
        if matches!(intent, Intent::Cancel { .. }) || intent > self.intent {
            self.intent = intent;
        }
        // A full channel already holds a stop command; the intent decides the final state.
        let _ = self.commands.try_send(command);
    }
}

struct Live {
    commands: mpsc::Sender<JobCommand>,
    info: watch::Receiver<JobInfo>,
    intent: Intent,
}

pub(crate) struct JobEntry {
    pub spec: FetchSpec,
    pub state: JobState,
    pub name: Option<String>,
    info: JobInfo,
    live: Option<Live>,
    /// Adopt the partial files when started next (any start after the first).
    pub(crate) resume_next: bool,
    /// Was running when the daemon stopped: starts before jobs that were merely queued.
    restored_running: bool,
    /// This job's tag: its partial files carry it, so no other job adopts or removes them.
    pub(crate) tag: JobTag,
    /// The content this job accepted (its BLAKE3), once a server's header was accepted:
    /// no restart, `fetch -r` or new server list switches the job to other content.
    pub(crate) content: Option<Digest>,
    /// What the caller proved about the directory, when it is not the daemon's user.
    pub(crate) grant: Option<DirGrant>,
}

impl JobEntry {
    /// Whether the job may still continue its partial files (so no other job may take
    /// them): anything not completed or cancelled.
    fn owns_partial_files(&self) -> bool {
        !matches!(self.state, JobState::Completed | JobState::Cancelled)
    }

    /// The state written to disk: a job stopped by daemon shutdown is still "running" so
    /// that the next start continues it.
    pub fn persisted_state(&self) -> JobState {
        match self.live.as_ref().map(|l| l.intent) {
            // Saved as soon as asked, so a crash while the job stops keeps the decision.
            Some(Intent::Pause) => JobState::Paused,
            Some(Intent::Cancel { .. }) => JobState::Cancelled,
            Some(Intent::Run | Intent::Shutdown) => JobState::Running,
            None => self.state.clone(),
        }
    }

    fn snapshot(&self) -> JobInfo {
        match &self.live {
            Some(live) => live.info.borrow().clone(),
            None => JobInfo {
                state: self.state.clone(),
                ..self.info.clone()
            },
        }
    }
}

fn empty_info(id: JobId, spec: &FetchSpec, state: JobState) -> JobInfo {
    JobInfo {
        id,
        state,
        dir: spec.dir.clone(),
        name: None,
        size: None,
        segments_total: None,
        segments_done: 0,
        bytes_done: 0,
        adopted_segments: 0,
        rate_bps: 0,
        elapsed_ms: 0,
        sources: Vec::new(),
        content: None,
        owner_tag: None,
    }
}

fn bad(message: impl Into<String>) -> ControlError {
    ControlError::new(ErrorKind::BadRequest, message)
}

fn not_found(id: JobId) -> ControlError {
    ControlError::new(ErrorKind::NotFound, format!("no job with id {id}"))
}

fn validate_fetch(spec: &FetchSpec) -> Result<(), ControlError> {
    if spec.sources.is_empty() {
        return Err(bad("at least one server is needed"));
    }
    let max_sources = arsnet_proto::limits::MAX_SOURCES_PER_JOB;
    if spec.sources.len() > max_sources {
        return Err(bad(format!(
            "{} servers given; a job takes at most {max_sources}",
            spec.sources.len()
        )));
    }
    let max = crate::groups::MAX_INTERVAL_SECS;
    if !(1..=max).contains(&spec.metric_interval_secs) {
        return Err(bad(format!("-i must be 1..={max} seconds")));
    }
    if !spec.dir.is_absolute() {
        return Err(bad(format!(
            "output directory {} must be an absolute path",
            spec.dir.display()
        )));
    }
    let mut seen = HashSet::new();
    for source in &spec.sources {
        let port = source.rsplit_once(':').and_then(|(host, port)| {
            (!host.is_empty()).then_some(())?;
            port.parse::<u16>().ok().filter(|&p| p != 0)
        });
        if port.is_none() {
            return Err(bad(format!(
                "server address {source:?} is not HOST:PORT with a port 1..=65535"
            )));
        }
        if !seen.insert(source) {
            return Err(bad(format!("server {source} is listed twice")));
        }
    }
    Ok(())
}

fn same_download(a: &FetchSpec, b: &FetchSpec) -> bool {
    let set = |s: &FetchSpec| s.sources.iter().cloned().collect::<HashSet<_>>();
    a.dir == b.dir && set(a) == set(b)
}

/// `fetch`: enqueue, or attach to the same download already in the queue (with `-r`).
pub(crate) fn fetch(
    daemon: &Arc<Daemon>,
    spec: FetchSpec,
    grant: Option<DirGrant>,
) -> Result<(JobId, bool), ControlError> {
    validate_fetch(&spec)?;
    let id = {
        let mut inner = daemon.lock();
        let existing = inner
            .jobs
            .iter()
            // With -r a failed job counts too: it still owns its partial files, so `fetch -r`
            // continues it rather than starting a second job on the same files.
            .find(|(_, j)| {
                let failed = matches!(j.state, JobState::Failed(_));
                let open = !j.state.is_terminal() || (spec.resume && failed);
                open && same_download(&j.spec, &spec)
            })
            .map(|(&id, _)| id);
        if let Some(existing) = existing {
            if spec.resume {
                if let Some(entry) = inner.jobs.get(&existing) {
                    check_same_content(existing, entry, spec.pin)?;
                }
                let mut saved = Ok(());
                // Attaching to a job that is paused or failed means: continue it.
                if let Some(entry) = inner.jobs.get_mut(&existing) {
                    if entry.live.is_none()
                        && matches!(entry.state, JobState::Paused | JobState::Failed(_))
                    {
                        // The options that do not define the download come from this call
                        // (e.g. `fetch -r --overwrite` after "already exists") — but only
                        // when it is the job's own user asking: nobody else may make another
                        // user's job replace files.
                        let own_user = entry.grant.map(|g| g.uid) == grant.map(|g| g.uid);
                        if own_user {
                            entry.spec.overwrite = spec.overwrite;
                            // A job that never accepted a content (e.g. its servers disagreed)
                            // may be told which one with its first pin.
                            if entry.spec.pin.is_none() && entry.content.is_none() {
                                entry.spec.pin = spec.pin;
                            }
                            entry.spec.metric_interval_secs = spec.metric_interval_secs;
                        }
                        entry.state = JobState::Queued;
                        entry.resume_next = true;
                        saved = daemon.persist(&inner);
                    }
                }
                drop(inner);
                pump(daemon);
                saved?;
                return Ok((existing, true));
            }
            return Err(ControlError::new(
                ErrorKind::Conflict,
                format!(
                    "job {existing} already downloads from these servers into {}; use `arsnetctl status {existing}` (or fetch -r to attach to it)",
                    spec.dir.display()
                ),
            ));
        }
        prune_finished(&mut inner, daemon.config.keep_finished_jobs);
        let id = inner.next_job_id;
        inner.next_job_id += 1;
        let entry = JobEntry {
            info: empty_info(id, &spec, JobState::Queued),
            resume_next: spec.resume,
            spec,
            state: JobState::Queued,
            name: None,
            live: None,
            restored_running: false,
            tag: new_tag(),
            content: None,
            grant,
        };
        let snapshot = entry.snapshot();
        inner.jobs.insert(id, entry);
        if let Err(e) = daemon.persist(&inner) {
            // Answered with an error, so it must not run either.
            inner.jobs.remove(&id);
            return Err(e.into());
        }
        daemon.broadcast(Update::Job(snapshot));
        id
    };
    info!(job = id, "download queued");
    pump(daemon);
    Ok((id, false))
}

/// Records a job's file name and content in the job table, saved, before the engine writes
/// anything: a crash at any later point restarts into a job that knows its own files.
fn content_hook(daemon: &Arc<Daemon>, id: JobId) -> ContentHook {
    let daemon = Arc::downgrade(daemon);
    ContentHook(Arc::new(move |name: &str, content: &Digest| {
        let daemon = daemon.upgrade().ok_or("the daemon is stopping")?;
        let mut inner = daemon.lock();
        if let Some(entry) = inner.jobs.get_mut(&id) {
            entry.name = Some(name.to_string());
            entry.content = Some(*content);
        }
        daemon.persist(&inner).map_err(|e| e.to_string())
    }))
}

/// `fetch -r` may attach to a job only for the content that job is about: a pin that
/// contradicts the job's own pin, or the content it already accepted, is refused rather than
/// switching the job (its partial files are of that content).
fn check_same_content(id: JobId, entry: &JobEntry, pin: Option<Pin>) -> Result<(), ControlError> {
    let Some(pin) = pin else {
        return Ok(());
    };
    let contradicts = match (pin, entry.spec.pin, entry.content) {
        (pin, Some(own), _) if pin != own => true,
        (Pin::Blake3(digest), _, Some(content)) => digest != content,
        _ => false,
    };
    if contradicts {
        return Err(ControlError::new(
            ErrorKind::Conflict,
            format!(
                "job {id} downloads other content than this pin{}; cancel it, or fetch into another directory",
                entry
                    .content
                    .map(|c| format!(" (its BLAKE3 is {})", arsnet_proto::manifest::to_hex(&c)))
                    .unwrap_or_default()
            ),
        ));
    }
    Ok(())
}

/// Starts queued jobs while there is a free slot: jobs that were running before a restart
/// first, then in order of arrival.
pub(crate) fn pump(daemon: &Arc<Daemon>) {
    let mut inner = daemon.lock();
    // Checked under the lock: shutdown takes it too, so no job can start after it.
    if daemon.is_shutting_down() {
        return;
    }
    let active = inner.jobs.values().filter(|j| j.live.is_some()).count();
    let free = daemon.config.max_active_downloads.saturating_sub(active);
    let mut queued: Vec<(bool, JobId)> = inner
        .jobs
        .iter()
        .filter(|(_, j)| j.state == JobState::Queued && j.live.is_none())
        .map(|(&id, j)| (!j.restored_running, id))
        .collect();
    queued.sort();
    for (_, id) in queued.into_iter().take(free) {
        start(daemon, &mut inner, id);
    }
    daemon.persist_or_log(&inner);
}

fn start(daemon: &Arc<Daemon>, inner: &mut Inner, id: JobId) {
    // Partial files of every other job that may still continue them are never adopted.
    let foreign_tags: Vec<JobTag> = inner
        .jobs
        .iter()
        .filter(|(&other, j)| other != id && j.owns_partial_files())
        .map(|(_, j)| j.tag)
        .collect();
    let Some(entry) = inner.jobs.get_mut(&id) else {
        return;
    };
    let spec = DownloadSpec {
        id,
        dir: entry.spec.dir.clone(),
        sources: entry.spec.sources.clone(),
        resume: entry.resume_next,
        name: entry.name.clone(),
        overwrite: entry.spec.overwrite,
        tag: entry.tag,
        foreign_tags,
        dir_identity: entry.grant.map(|g| g.dir_identity),
        give_to: entry.grant.and_then(|g| g.give_to),
        caller_uid: entry.grant.map(|g| g.uid),
        on_content: Some(content_hook(daemon, id)),
        pin: entry.spec.pin,
        content: entry.content,
        config: daemon
            .config
            .download_config(entry.spec.metric_interval_secs),
    };
    entry.resume_next = true;
    entry.restored_running = false;
    entry.state = JobState::Running;
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let initial = JobInfo {
        state: JobState::Running,
        ..entry.info.clone()
    };
    let (info_tx, info_rx) = watch::channel(initial);
    entry.live = Some(Live {
        commands: cmd_tx,
        info: info_rx.clone(),
        intent: Intent::Run,
    });
    let interval = Duration::from_secs(
        entry
            .spec
            .metric_interval_secs
            .clamp(1, crate::groups::MAX_INTERVAL_SECS),
    );
    let daemon = daemon.clone();
    info!(job = id, resume = spec.resume, "download starting");
    let d = daemon.clone();
    daemon.tasks.spawn(async move {
        let run = run_download(spec, info_tx, cmd_rx);
        tokio::pin!(run);
        let forward = forward_updates(&d, id, info_rx, interval);
        tokio::pin!(forward);
        let outcome = tokio::select! {
            biased;
            outcome = &mut run => outcome,
            _ = &mut forward => run.await,
        };
        finish(&d, id, outcome);
    });
}

/// Pushes a job's progress to watchers every `interval` and at once on a state change;
/// records the file name as soon as it is known (so a restart adopts the right files).
async fn forward_updates(
    daemon: &Daemon,
    id: JobId,
    mut info: watch::Receiver<JobInfo>,
    interval: Duration,
) {
    let mut last_state: Option<JobState> = None;
    let mut last_sent = Instant::now();
    let mut named = false;
    while info.changed().await.is_ok() {
        let snapshot = info.borrow_and_update().clone();
        let adopted_tag = snapshot
            .owner_tag
            .filter(|&t| daemon.lock().jobs.get(&id).is_some_and(|e| e.tag != t));
        if let Some(tag) = adopted_tag {
            // The job continued an orphaned partial download: it owns those files now, so
            // that its cancel removes them and no other job takes them.
            let mut inner = daemon.lock();
            if let Some(entry) = inner.jobs.get_mut(&id) {
                entry.tag = tag;
            }
            daemon.persist_or_log(&inner);
        }
        if !named {
            if let (Some(name), Some(content)) = (&snapshot.name, snapshot.content) {
                // Saved as soon as known: a restart adopts the right files, and only for
                // this content.
                named = true;
                let mut inner = daemon.lock();
                if let Some(entry) = inner.jobs.get_mut(&id) {
                    entry.name = Some(name.clone());
                    entry.content = Some(content);
                }
                daemon.persist_or_log(&inner);
            }
        }
        let changed = last_state.as_ref() != Some(&snapshot.state);
        if changed || last_sent.elapsed() >= interval {
            if changed && last_state.is_some() {
                info!(
                    job = id,
                    state = snapshot.state.label(),
                    "job state changed"
                );
            }
            last_state = Some(snapshot.state.clone());
            last_sent = Instant::now();
            daemon.broadcast(Update::Job(snapshot));
        }
    }
}

fn finish(daemon: &Arc<Daemon>, id: JobId, outcome: Outcome) {
    let snapshot = {
        let mut inner = daemon.lock();
        let Some(entry) = inner.jobs.get_mut(&id) else {
            return;
        };
        let live = entry.live.take();
        let intent = live.as_ref().map_or(Intent::Run, |l| l.intent);
        if let Some(live) = &live {
            entry.info = live.info.borrow().clone();
            if entry.name.is_none() {
                entry.name = entry.info.name.clone();
            }
            if entry.content.is_none() {
                entry.content = entry.info.content;
            }
        }
        entry.state = match (outcome, intent) {
            (Outcome::Completed(_), _) => JobState::Completed,
            // A cancel wins over a failure while stopping: the user asked for it.
            (
                Outcome::Stopped | Outcome::Cancelled | Outcome::Failed(_),
                Intent::Cancel { keep },
            ) => {
                if !keep {
                    // The job may have stopped for an earlier pause before the cancel
                    // arrived: make sure the partial files go, journal first.
                    remove_partial(id, entry);
                }
                JobState::Cancelled
            }
            (Outcome::Failed(reason), _) => JobState::Failed(reason),
            (Outcome::Cancelled, _) => JobState::Cancelled,
            (Outcome::Stopped, Intent::Shutdown) => {
                entry.restored_running = true;
                JobState::Running
            }
            (Outcome::Stopped, _) => JobState::Paused,
        };
        info!(job = id, state = entry.state.label(), "job ended");
        let snapshot = entry.snapshot();
        daemon.persist_or_log(&inner);
        snapshot
    };
    daemon.broadcast(Update::Job(snapshot));
    pump(daemon);
}

pub(crate) fn pause(daemon: &Arc<Daemon>, id: JobId) -> Result<(), ControlError> {
    let mut inner = daemon.lock();
    let entry = inner.jobs.get_mut(&id).ok_or_else(|| not_found(id))?;
    if let Some(live) = &mut entry.live {
        live.raise(Intent::Pause, JobCommand::Stop);
        return Ok(daemon.persist(&inner)?);
    }
    match entry.state {
        JobState::Queued => entry.state = JobState::Paused,
        ref s => {
            return Err(bad(format!(
                "job {id} is {} and cannot be paused",
                s.label()
            )))
        }
    }
    let snapshot = entry.snapshot();
    let saved = daemon.persist(&inner);
    drop(inner);
    daemon.broadcast(Update::Job(snapshot));
    Ok(saved?)
}

pub(crate) fn resume(daemon: &Arc<Daemon>, id: JobId) -> Result<(), ControlError> {
    let saved = {
        let mut inner = daemon.lock();
        let entry = inner.jobs.get_mut(&id).ok_or_else(|| not_found(id))?;
        match (&entry.state, &entry.live) {
            (JobState::Paused | JobState::Failed(_), None) => {
                entry.state = JobState::Queued;
                entry.resume_next = true;
            }
            (s, _) => {
                return Err(bad(format!(
                    "job {id} is {} and cannot be resumed",
                    s.label()
                )))
            }
        }
        let snapshot = entry.snapshot();
        let saved = daemon.persist(&inner);
        daemon.broadcast(Update::Job(snapshot));
        saved
    };
    pump(daemon);
    Ok(saved?)
}

pub(crate) fn cancel(daemon: &Arc<Daemon>, id: JobId, keep: bool) -> Result<(), ControlError> {
    let mut inner = daemon.lock();
    let entry = inner.jobs.get_mut(&id).ok_or_else(|| not_found(id))?;
    if let Some(live) = &mut entry.live {
        live.raise(Intent::Cancel { keep }, JobCommand::Cancel { keep });
        return Ok(daemon.persist(&inner)?);
    }
    if matches!(entry.state, JobState::Completed | JobState::Cancelled) {
        return Err(bad(format!(
            "job {id} is {} and cannot be cancelled",
            entry.state.label()
        )));
    }
    if !keep && entry.resume_next {
        remove_partial(id, entry);
    }
    entry.state = JobState::Cancelled;
    let snapshot = entry.snapshot();
    let saved = daemon.persist(&inner);
    drop(inner);
    daemon.broadcast(Update::Job(snapshot));
    Ok(saved?)
}

/// Removes a job's partial files (journal first, so a crash half way leaves nothing that
/// looks adoptable). A job that never learned its file name created none.
fn remove_partial(id: JobId, entry: &JobEntry) {
    let Some(name) = entry.name.as_deref() else {
        return;
    };
    let identity = entry.grant.map(|g| g.dir_identity);
    let removed = Dir::open_expecting(&entry.spec.dir, identity)
        .and_then(|dir| DownloadStore::discard_partial(&dir, name, &entry.tag));
    if let Err(e) = removed {
        warn!(job = id, error = %e, "could not remove partial files");
    }
}

/// Forgets the oldest finished jobs beyond `keep`, so the job table (and every `list`)
/// stays bounded for daemons that run for years of cron fetches.
fn prune_finished(inner: &mut Inner, keep: usize) {
    let finished: Vec<JobId> = inner
        .jobs
        .iter()
        .filter(|(_, j)| j.state.is_terminal() && j.live.is_none())
        .map(|(&id, _)| id)
        .collect();
    for id in finished.iter().take(finished.len().saturating_sub(keep)) {
        inner.jobs.remove(id);
    }
}

pub(crate) fn status(daemon: &Daemon, id: JobId) -> Result<JobInfo, ControlError> {
    daemon
        .lock()
        .jobs
        .get(&id)
        .map(JobEntry::snapshot)
        .ok_or_else(|| not_found(id))
}

pub(crate) fn infos(daemon: &Daemon) -> Vec<JobInfo> {
    daemon
        .lock()
        .jobs
        .values()
        .map(JobEntry::snapshot)
        .collect()
}

/// Daemon shutdown: every running job stops at a durable point and stays "running" on disk.
pub(crate) fn stop_all_for_shutdown(daemon: &Daemon) {
    let mut inner = daemon.lock();
    for live in inner.jobs.values_mut().filter_map(|j| j.live.as_mut()) {
        live.raise(Intent::Shutdown, JobCommand::Stop);
    }
}

/// Rebuilds the queue from the state file and starts what should run.
pub(crate) fn restore_jobs(daemon: &Arc<Daemon>, records: Vec<JobRecord>) {
    {
        let mut inner = daemon.lock();
        for record in records {
            let was_running = matches!(record.state, JobState::Running | JobState::Waiting);
            let started_before = record.resume
                || was_running
                || matches!(record.state, JobState::Paused | JobState::Failed(_))
                || record.spec.resume;
            let state = if was_running {
                JobState::Queued
            } else {
                record.state
            };
            let mut info = empty_info(record.id, &record.spec, state.clone());
            info.name = record.name.clone();
            info.content = record.content;
            inner.jobs.insert(
                record.id,
                JobEntry {
                    spec: record.spec,
                    state,
                    name: record.name,
                    info,
                    live: None,
                    resume_next: started_before,
                    restored_running: was_running,
                    // A record from before tags existed owns no tagged files (its journal is
                    // of an older format and is set aside on resume).
                    tag: record.tag.unwrap_or_else(new_tag),
                    content: record.content,
                    grant: record.grant,
                },
            );
        }
        let counts = inner.jobs.len();
        info!(jobs = counts, "job table restored");
    }
    pump(daemon);
}

/// A fresh random job tag (from the kernel's CSPRNG): unguessable, so a file planted by
/// someone else cannot claim to be this job's without reading its journal, and unique, so no
/// two jobs ever claim the same partial files.
pub(crate) fn new_tag() -> JobTag {
    let mut tag: JobTag = [0; 16];
    let mut filled = 0;
    while filled < tag.len() {
        // SAFETY: the pointer and length describe the unfilled part of `tag`.
        let n =
            unsafe { libc::getrandom(tag[filled..].as_mut_ptr().cast(), tag.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // No CSPRNG (ancient kernel): fall back on time and pid, still unique per job.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            return (nanos ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
        }
    }
    tag
}
