//! The download queue's requests: `fetch`, `pause`, `resume`, `cancel`, `status`, `list`.
//! Each request asks the job's [`Lifecycle`](crate::lifecycle::Lifecycle) and carries out
//! what it decided; running the queue is [`queue`]'s.

mod effects;
mod queue;
mod tag;

use std::collections::HashSet;
use std::sync::Arc;

use arsnet_proto::control::{
    ControlError, ErrorKind, FetchSpec, JobId, JobInfo, Pin, Update, Verification,
};
use arsnet_proto::limits::{CHECKSUM_FETCHES_AT_ONCE, CHECKSUM_TURN_WAIT};
use tracing::info;

use crate::caller::DirGrant;
use crate::lifecycle::Refused;
use crate::persist::JobRecord;
use crate::state::{Daemon, Inner, JobEntry};
pub(crate) use queue::pump;

fn bad(message: impl Into<String>) -> ControlError {
    ControlError::new(ErrorKind::BadRequest, message)
}

fn not_found(id: JobId) -> ControlError {
    ControlError::new(ErrorKind::NotFound, format!("no job with id {id}"))
}

fn refused(id: JobId, e: Refused) -> ControlError {
    bad(format!(
        "job {id} is {} and cannot be {}",
        e.state.label(),
        e.verb
    ))
}

fn same_download(a: &FetchSpec, b: &FetchSpec) -> bool {
    let set = |s: &FetchSpec| s.sources.iter().cloned().collect::<HashSet<_>>();
    a.dir == b.dir && set(a) == set(b)
}

/// The job already in the queue that `spec` would download again, if any. With -r a failed
/// job counts too: it still owns its partial files, so `fetch -r` continues it rather than
/// starting a second job on the same files.
fn existing_job(inner: &Inner, spec: &FetchSpec) -> Option<JobId> {
    inner
        .jobs
        .iter()
        .find(|(_, j)| {
            let state = j.lifecycle.persisted();
            let failed = matches!(state, arsnet_proto::control::JobState::Failed(_));
            let open = !state.is_terminal() || (spec.resume && failed);
            open && same_download(&j.spec, spec)
        })
        .map(|(&id, _)| id)
}

/// A `fetch --checksum-url`: reads the checksum file now and pins the job to its line for
/// the file's name, so that the job (and any restart) holds a pin and never reads it again.
/// A file that cannot be read, or lists no line for the name, refuses the request.
pub(crate) async fn resolve_checksum(
    daemon: &Arc<Daemon>,
    mut spec: FetchSpec,
) -> Result<FetchSpec, ControlError> {
    spec.validate().map_err(|e| bad(e.to_string()))?;
    let (Some(url), None) = (&spec.checksum_url, spec.pin) else {
        return Ok(spec);
    };
    let name = spec
        .mirror_file_name()
        .ok_or_else(|| bad("--checksum-url needs a mirror URL to name the line to use"))?;
    let connect_timeout = daemon.config().download_config(1).connect_timeout;
    let turn = tokio::time::timeout(CHECKSUM_TURN_WAIT, daemon.checksum_turns.acquire()).await;
    let Ok(Ok(_turn)) = turn else {
        return Err(ControlError::new(
            ErrorKind::Conflict,
            format!(
                "--checksum-url {url}: {CHECKSUM_FETCHES_AT_ONCE} checksum files are being read \
                 already; try again"
            ),
        ));
    };
    let pin =
        arsnet_engine::download::checksum_url::resolve(url, &name, &spec.ca_certs, connect_timeout)
            .await
            .map_err(|e| bad(format!("--checksum-url {url}: {e}")))?;
    spec.pin = Some(pin);
    Ok(spec)
}

/// `fetch`: enqueue, or attach to the same download already in the queue (with `-r`).
pub(crate) fn fetch(
    daemon: &Arc<Daemon>,
    spec: FetchSpec,
    grant: Option<DirGrant>,
) -> Result<(JobId, bool), ControlError> {
    spec.validate().map_err(|e| bad(e.to_string()))?;
    let mut inner = daemon.lock();
    if let Some(existing) = existing_job(&inner, &spec) {
        if !spec.resume {
            return Err(ControlError::new(
                ErrorKind::Conflict,
                format!(
                    "job {existing} already downloads from these servers into {}; use `arsnetctl status {existing}` (or fetch -r to attach to it)",
                    spec.dir.display()
                ),
            ));
        }
        let saved = attach(daemon, &mut inner, existing, spec, grant);
        drop(inner);
        pump(daemon);
        return saved.map(|()| (existing, true));
    }
    prune_finished(&mut inner, daemon.config().keep_finished_jobs);
    let id = inner.next_job_id;
    inner.next_job_id += 1;
    let entry = JobEntry::new(spec, tag::new_tag(), grant);
    let snapshot = entry.snapshot(id);
    inner.jobs.insert(id, entry);
    if let Err(e) = daemon.persist(&inner) {
        // Answered with an error, so it must not run either.
        inner.jobs.remove(&id);
        return Err(e.into());
    }
    drop(inner);
    daemon.broadcast(Update::Job(snapshot));
    info!(job = id, "download queued");
    pump(daemon);
    Ok((id, false))
}

/// `fetch -r` of a download already in the queue: continue it if it is paused or failed.
fn attach(
    daemon: &Daemon,
    inner: &mut Inner,
    id: JobId,
    spec: FetchSpec,
    grant: Option<DirGrant>,
) -> Result<(), ControlError> {
    let Some(entry) = inner.jobs.get_mut(&id) else {
        return Ok(());
    };
    // Only the job's own user may change what the job does (e.g. `fetch -r --overwrite`
    // after "already exists"): nobody else may make another user's job replace files.
    let own = entry.grant.map(|g| g.uid) == grant.map(|g| g.uid);
    // A job that never accepted a content (e.g. its servers disagreed) may be told which
    // one with its first pin — but only while no run is under way: a run that is starting
    // reads its pin once, and would publish without checking one added now.
    let takes_pin = own
        && spec.pin.is_some()
        && entry.spec.pin.is_none()
        && entry.content.is_none()
        && !entry.lifecycle.is_live();
    check_same_content(id, entry, spec.pin, takes_pin)?;
    // What the job was, to put back if the change cannot be saved: a change answered with
    // an error must not run either (a pin held only in memory is gone after a restart).
    let before = (entry.lifecycle.clone(), entry.spec.clone());
    let restarted = entry.lifecycle.resume() == Ok(true);
    if !restarted && !takes_pin {
        // Queued or running already, and nothing to add: attaching changes nothing.
        return Ok(());
    }
    if own {
        entry.spec.overwrite = spec.overwrite;
        if takes_pin {
            entry.spec.pin = spec.pin;
        }
        entry.spec.metric_interval_secs = spec.metric_interval_secs;
    }
    if let Err(e) = daemon.persist(inner) {
        if let Some(entry) = inner.jobs.get_mut(&id) {
            (entry.lifecycle, entry.spec) = before;
        }
        return Err(e.into());
    }
    Ok(())
}

/// `fetch -r` may attach to a job only for the content that job is about: a pin that
/// contradicts the job's own pin, or the content it already accepted, is refused rather than
/// switching the job (its partial files are of that content).
fn check_same_content(
    id: JobId,
    entry: &JobEntry,
    pin: Option<Pin>,
    takes_pin: bool,
) -> Result<(), ControlError> {
    let Some(pin) = pin else {
        return Ok(());
    };
    // Proven content is its BLAKE3; a job of mirrors alone holds only its layout's root,
    // which is no file's hash and proves nothing.
    let proven = (entry.spec.verification() == Verification::Segments)
        .then_some(entry.content)
        .flatten();
    let same = entry.spec.pin == Some(pin) || matches!(pin, Pin::Blake3(d) if proven == Some(d));
    if same || takes_pin {
        return Ok(());
    }
    // Any other pin would not be enforced by the run already under way (or would silently
    // replace the one it was started with): refused, never dropped.
    let known = proven
        .map(|c| format!(" (its BLAKE3 is {})", arsnet_proto::manifest::to_hex(&c)))
        .unwrap_or_default();
    let what = match (entry.spec.pin, proven) {
        (None, None) => "was started without this pin, and fetch -r cannot add a check to it",
        _ => "downloads other content than this pin",
    };
    Err(ControlError::new(
        ErrorKind::Conflict,
        format!("job {id} {what}{known}; cancel it, or fetch into another directory"),
    ))
}

/// Runs `request` on job `id`'s lifecycle and entry, saves, and announces the new state.
fn operate(
    daemon: &Arc<Daemon>,
    id: JobId,
    request: impl FnOnce(JobId, &mut JobEntry) -> Result<(), ControlError>,
) -> Result<(), ControlError> {
    let mut inner = daemon.lock();
    let Inner { jobs, totals, .. } = &mut *inner;
    let entry = jobs.get_mut(&id).ok_or_else(|| not_found(id))?;
    let was_finished = entry.lifecycle.is_finished();
    request(id, entry)?;
    // A job that was not running ends here (a cancel of a queued or paused job); one that
    // runs is counted when its engine ends.
    if !was_finished && entry.lifecycle.is_finished() {
        totals.job_finished(&entry.lifecycle.persisted());
    }
    let snapshot = entry.snapshot(id);
    let saved = daemon.persist(&inner);
    drop(inner);
    daemon.broadcast(Update::Job(snapshot));
    Ok(saved?)
}

pub(crate) fn pause(daemon: &Arc<Daemon>, id: JobId) -> Result<(), ControlError> {
    operate(daemon, id, |id, entry| {
        let effect = entry.lifecycle.pause().map_err(|e| refused(id, e))?;
        effects::apply(id, entry, effect);
        Ok(())
    })
}

pub(crate) fn resume(daemon: &Arc<Daemon>, id: JobId) -> Result<(), ControlError> {
    let result = operate(daemon, id, |id, entry| {
        entry
            .lifecycle
            .resume()
            .map(|_| ())
            .map_err(|e| refused(id, e))
    });
    pump(daemon);
    result
}

pub(crate) fn cancel(daemon: &Arc<Daemon>, id: JobId, keep: bool) -> Result<(), ControlError> {
    operate(daemon, id, |id, entry| {
        let effect = entry.lifecycle.cancel(keep).map_err(|e| refused(id, e))?;
        effects::apply(id, entry, effect);
        Ok(())
    })
}

/// Forgets the oldest finished jobs beyond `keep`, so the job table (and every `list`)
/// stays bounded for daemons that run for years of cron fetches.
fn prune_finished(inner: &mut Inner, keep: usize) {
    let finished: Vec<JobId> = inner
        .jobs
        .iter()
        .filter(|(_, j)| j.lifecycle.is_finished())
        .map(|(&id, _)| id)
        .collect();
    for id in finished.iter().take(finished.len().saturating_sub(keep)) {
        inner.jobs.remove(id);
    }
}

/// Whether an engine task still runs job `id`.
pub(crate) fn is_running(daemon: &Daemon, id: JobId) -> bool {
    daemon
        .lock()
        .jobs
        .get(&id)
        .is_some_and(|j| j.lifecycle.is_live())
}

pub(crate) fn status(daemon: &Daemon, id: JobId) -> Result<JobInfo, ControlError> {
    daemon
        .lock()
        .jobs
        .get(&id)
        .map(|j| j.snapshot(id))
        .ok_or_else(|| not_found(id))
}

pub(crate) fn infos(daemon: &Daemon) -> Vec<JobInfo> {
    daemon
        .lock()
        .jobs
        .iter()
        .map(|(&id, j)| j.snapshot(id))
        .collect()
}

/// Daemon shutdown: every running job stops at a durable point and stays "running" on disk.
pub(crate) fn stop_all_for_shutdown(daemon: &Daemon) {
    let mut inner = daemon.lock();
    for (&id, entry) in inner.jobs.iter_mut() {
        let effect = entry.lifecycle.shutdown();
        effects::apply(id, entry, effect);
    }
}

/// Rebuilds the queue from the state file and starts what should run.
pub(crate) fn restore_jobs(daemon: &Arc<Daemon>, records: Vec<JobRecord>) {
    {
        let mut inner = daemon.lock();
        for record in records {
            let id = record.id;
            inner
                .jobs
                .insert(id, JobEntry::restored(record, tag::new_tag));
        }
        info!(jobs = inner.jobs.len(), "job table restored");
    }
    pump(daemon);
}
