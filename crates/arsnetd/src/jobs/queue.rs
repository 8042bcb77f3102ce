//! Running the queue: at most `max_active_downloads` jobs run at once, the rest wait in
//! order (jobs that were running before a restart first). Each running job is a task
//! driving `arsnet_engine::download::run_download`, whose progress is forwarded to watchers
//! and whose end the lifecycle turns into the job's state. Every transition is saved.

use std::sync::Arc;
use std::time::Instant;

use arsnet_engine::download::{
    run_download, ContentHook, DownloadSpec, Outcome, Progress, RecordError,
};
use arsnet_proto::control::{JobId, JobState, Update};
use arsnet_proto::{Digest, JobTag};
use tokio::sync::{mpsc, watch};
use tracing::info;

use super::effects;
use crate::lifecycle::Ended;
use crate::state::{Daemon, Inner, Live};

/// Starts queued jobs while there is a free slot.
pub(crate) fn pump(daemon: &Arc<Daemon>) {
    let mut inner = daemon.lock();
    // Checked under the lock: shutdown takes it too, so no job can start after it.
    if daemon.is_shutting_down() {
        return;
    }
    let active = inner
        .jobs
        .values()
        .filter(|j| j.lifecycle.is_live())
        .count();
    let free = daemon.config().max_active_downloads.saturating_sub(active);
    let mut queued: Vec<(u8, JobId)> = inner
        .jobs
        .iter()
        .filter_map(|(&id, j)| j.lifecycle.queue_rank().map(|rank| (rank, id)))
        .collect();
    queued.sort();
    for (_, id) in queued.into_iter().take(free) {
        start(daemon, &mut inner, id);
    }
    daemon.persist_or_log(&inner);
}

/// What the engine needs to run job `id` now.
fn download_spec(daemon: &Arc<Daemon>, inner: &mut Inner, id: JobId) -> Option<DownloadSpec> {
    // Partial files of every other job that may still continue them are never adopted.
    let foreign_tags: Vec<JobTag> = inner
        .jobs
        .iter()
        .filter(|(&other, j)| other != id && j.lifecycle.owns_partial_files())
        .map(|(_, j)| j.tag)
        .collect();
    let entry = inner.jobs.get_mut(&id)?;
    let resume = entry.lifecycle.start();
    Some(DownloadSpec {
        id,
        dir: entry.spec.dir.clone(),
        sources: entry.spec.sources.clone(),
        resume,
        name: entry.name.clone(),
        overwrite: entry.spec.overwrite,
        tag: entry.tag,
        foreign_tags,
        dir_identity: entry.grant.map(|g| g.dir_identity),
        give_to: entry.grant.and_then(|g| g.give_to),
        caller_uid: entry.grant.map(|g| g.uid),
        on_content: Some(content_hook(daemon, id)),
        pin: entry.spec.pin,
        ca_certs: entry.spec.ca_certs.clone(),
        content: entry.content,
        config: {
            let mut config = daemon
                .config()
                .download_config(entry.spec.metric_interval_secs);
            if let Some(n) = entry.spec.connections_per_source {
                config.mirror_connections = n as usize;
            }
            config
        },
    })
}

fn start(daemon: &Arc<Daemon>, inner: &mut Inner, id: JobId) {
    let Some(spec) = download_spec(daemon, inner, id) else {
        return;
    };
    let Some(entry) = inner.jobs.get_mut(&id) else {
        return;
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let (progress_tx, progress_rx) = watch::channel(Progress::default());
    entry.live = Some(Live {
        commands: cmd_tx,
        progress: progress_rx.clone(),
    });
    // A new run's source counters start at zero.
    entry.accounted_bytes = 0;
    let interval = arsnet_proto::request::interval(entry.spec.metric_interval_secs);
    info!(job = id, resume = spec.resume, "download starting");
    let d = daemon.clone();
    daemon.tasks.spawn(async move {
        let run = run_download(spec, progress_tx, cmd_rx);
        tokio::pin!(run);
        let forward = forward_updates(&d, id, progress_rx, interval);
        tokio::pin!(forward);
        let outcome = tokio::select! {
            biased;
            outcome = &mut run => outcome,
            _ = &mut forward => run.await,
        };
        finish(&d, id, outcome);
    });
}

/// Records a job's file name and content in the job table, saved, before the engine writes
/// anything: a crash at any later point restarts into a job that knows its own files.
fn content_hook(daemon: &Arc<Daemon>, id: JobId) -> ContentHook {
    let daemon = Arc::downgrade(daemon);
    ContentHook(Arc::new(move |name: &str, content: &Digest| {
        let daemon = daemon
            .upgrade()
            .ok_or_else(|| RecordError::new("the daemon is stopping"))?;
        let mut inner = daemon.lock();
        if let Some(entry) = inner.jobs.get_mut(&id) {
            entry.name = Some(name.to_string());
            entry.content = Some(*content);
        }
        daemon.persist(&inner).map_err(RecordError::new)
    }))
}

/// Takes over what a running job learned and the job table does not know yet: the tag of
/// partial files it adopted (an orphan's: it owns them now, so that its cancel removes them
/// and no other job takes them), and its file name and content (also saved by the content
/// hook before the first write; an adopted download may not call it).
fn follow_engine(daemon: &Daemon, id: JobId, engine: &Progress) {
    let mut inner = daemon.lock();
    let Inner { jobs, totals, .. } = &mut *inner;
    let Some(entry) = jobs.get_mut(&id) else {
        return;
    };
    totals.downloaded_bytes = totals
        .downloaded_bytes
        .saturating_add(entry.account(engine));
    let mut learned = false;
    if let Some(tag) = engine.owner_tag.filter(|&t| t != entry.tag) {
        entry.tag = tag;
        learned = true;
    }
    if let (None, Some(name), Some(content)) = (&entry.name, &engine.name, engine.content) {
        entry.name = Some(name.clone());
        entry.content = Some(content);
        learned = true;
    }
    if learned {
        daemon.persist_or_log(&inner);
    }
}

/// Pushes a job's progress to watchers every `interval` and at once on a state change.
async fn forward_updates(
    daemon: &Daemon,
    id: JobId,
    mut progress: watch::Receiver<Progress>,
    interval: std::time::Duration,
) {
    let mut last_state: Option<JobState> = None;
    let mut last_sent = Instant::now();
    while progress.changed().await.is_ok() {
        let engine = progress.borrow_and_update().clone();
        follow_engine(daemon, id, &engine);
        let Some(snapshot) = daemon.lock().jobs.get(&id).map(|e| e.snapshot(id)) else {
            return;
        };
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

fn ended(outcome: Outcome) -> Ended {
    match outcome {
        Outcome::Completed(_) => Ended::Completed,
        Outcome::Failed(reason) => Ended::Failed(reason.to_string()),
        Outcome::Stopped => Ended::Stopped,
        Outcome::Cancelled => Ended::Cancelled,
    }
}

fn finish(daemon: &Arc<Daemon>, id: JobId, outcome: Outcome) {
    let snapshot = {
        let mut inner = daemon.lock();
        let Inner { jobs, totals, .. } = &mut *inner;
        let Some(entry) = jobs.get_mut(&id) else {
            return;
        };
        if let Some(live) = entry.live.take() {
            entry.progress = live.progress.borrow().clone();
            entry.name = entry.name.take().or_else(|| entry.progress.name.clone());
            entry.content = entry.content.or(entry.progress.content);
        }
        // The run's last bytes may not have been forwarded yet: account them before it is
        // gone for good (a finished job may be pruned from the table later).
        let last = entry.progress.clone();
        totals.downloaded_bytes = totals.downloaded_bytes.saturating_add(entry.account(&last));
        let effect = entry.lifecycle.ended(ended(outcome));
        if entry.lifecycle.is_finished() {
            totals.job_finished(&entry.lifecycle.persisted());
        }
        effects::apply(id, entry, effect);
        let snapshot = entry.snapshot(id);
        info!(job = id, state = snapshot.state.label(), "job ended");
        daemon.persist_or_log(&inner);
        snapshot
    };
    daemon.broadcast(Update::Job(snapshot));
    pump(daemon);
}
