//! One download job as the daemon holds it: what was asked (the spec), its lifecycle, what
//! it learned (file name, content, tag), and, while it runs, the handles on its engine task.

use arsnet_engine::download::{JobCommand, Progress};
use arsnet_proto::control::{
    FetchSpec, JobId, JobInfo, Pin, RunFigures, SourceInfo, SourceState, Verification,
};
use arsnet_proto::{Digest, JobTag};
use tokio::sync::{mpsc, watch};

use crate::caller::DirGrant;
use crate::lifecycle::Lifecycle;
use crate::persist::{Figures, JobRecord};

/// The handles on a running job's engine task.
pub(crate) struct Live {
    pub commands: mpsc::Sender<JobCommand>,
    pub progress: watch::Receiver<Progress>,
}

pub(crate) struct JobEntry {
    pub spec: FetchSpec,
    pub lifecycle: Lifecycle,
    /// The file name, once a source told it: picks the partial files to adopt on restore.
    pub name: Option<String>,
    /// The figures of the last run (what `status` shows while the job does not run).
    pub progress: Progress,
    pub live: Option<Live>,
    /// This job's tag: its partial files carry it, so no other job adopts or removes them.
    pub tag: JobTag,
    /// The content this job accepted (its BLAKE3), once a server's header was accepted:
    /// no restart, `fetch -r` or new server list switches the job to other content.
    pub content: Option<Digest>,
    /// What the caller proved about the directory, when it is not the daemon's user.
    pub grant: Option<DirGrant>,
    /// Source bytes of the current run already added to the daemon's totals (the engine's
    /// per-source counters start at zero with each run).
    pub accounted_bytes: u64,
}

impl JobEntry {
    /// A job just asked for.
    pub fn new(spec: FetchSpec, tag: JobTag, grant: Option<DirGrant>) -> Self {
        JobEntry {
            progress: Progress::default(),
            lifecycle: Lifecycle::queued(spec.resume),
            spec,
            name: None,
            live: None,
            tag,
            content: None,
            grant,
            accounted_bytes: 0,
        }
    }

    /// A job read back from the state file. `new_tag` gives a record from before tags
    /// existed one (it owns no tagged files: its journal is of an older format and is set
    /// aside on resume).
    pub fn restored(record: JobRecord, new_tag: impl FnOnce() -> JobTag) -> Self {
        let ran_before = record.resume || record.spec.resume;
        let progress = Progress {
            name: record.name.clone(),
            content: shown_content(&record.spec, record.content),
            figures: record.figures.map(RunFigures::from).unwrap_or_default(),
            ..Progress::default()
        };
        JobEntry {
            lifecycle: Lifecycle::restored(record.state, ran_before),
            spec: record.spec,
            name: record.name,
            progress,
            live: None,
            tag: record.tag.unwrap_or_else(new_tag),
            content: record.content,
            grant: record.grant,
            accounted_bytes: 0,
        }
    }

    /// What is saved of the job.
    pub fn record(&self, id: JobId) -> JobRecord {
        JobRecord {
            id,
            spec: self.spec.clone(),
            state: self.lifecycle.persisted(),
            name: self.name.clone(),
            resume: self.lifecycle.resumes(),
            tag: Some(self.tag),
            content: self.content,
            grant: self.grant,
            figures: Some(self.figures()),
        }
    }

    fn figures(&self) -> Figures {
        let figures = match &self.live {
            Some(live) => live.progress.borrow().figures,
            None => self.progress.figures,
        };
        Figures::from(figures)
    }

    /// The engine's latest figures: live while it runs, else those of the last run.
    pub fn latest_progress(&self) -> Progress {
        match &self.live {
            Some(live) => live.progress.borrow().clone(),
            None => self.progress.clone(),
        }
    }

    /// The source bytes `engine` shows beyond what was accounted already: what the daemon's
    /// downloaded-bytes counter must grow by. Never negative, so the counter never drops.
    pub fn account(&mut self, engine: &Progress) -> u64 {
        let received: u64 = engine.sources.iter().map(|s| s.bytes).sum();
        let new = received.saturating_sub(self.accounted_bytes);
        self.accounted_bytes = self.accounted_bytes.max(received);
        new
    }

    /// The job's state now, without building the rest of its snapshot.
    pub fn state(&self) -> arsnet_proto::control::JobState {
        let activity = match &self.live {
            Some(live) => live.progress.borrow().activity,
            None => self.progress.activity,
        };
        self.lifecycle.state(activity)
    }

    /// What `status`, `list` and watchers see now.
    pub fn snapshot(&self, id: JobId) -> JobInfo {
        let p = self.latest_progress();
        JobInfo {
            id,
            state: self.lifecycle.state(p.activity),
            dir: self.spec.dir.clone(),
            name: p.name.or_else(|| self.name.clone()),
            figures: p.figures,
            // While it runs, the rate now; after, the average of its last run: what that run
            // fetched (not what it adopted from an earlier one) over how long it ran.
            rate_bps: match &self.live {
                Some(_) => p.rate_bps,
                None => average_rate(p.figures.fetched_bytes, p.figures.elapsed_ms),
            },
            // A source's live state means nothing once the job stopped.
            sources: if self.live.is_some() {
                p.sources
            } else {
                idle(p.sources)
            },
            content: shown_content(&self.spec, p.content.or(self.content)),
            verification: self.spec.verification(),
            owner_tag: p.owner_tag,
        }
    }
}

/// The BLAKE3 `status` shows for a job's file. Only ArsNet servers prove one (the digest
/// table's root): a job of mirrors alone saved its layout's root, which is no file's hash
/// (and is what a restored record holds), so it shows the user's BLAKE3 pin, if any.
fn shown_content(spec: &FetchSpec, content: Option<Digest>) -> Option<Digest> {
    match (spec.verification(), spec.pin) {
        (Verification::Segments, _) => content,
        (_, Some(Pin::Blake3(pin))) => Some(pin),
        (_, _) => None,
    }
}

fn average_rate(bytes: u64, elapsed_ms: u64) -> u64 {
    if elapsed_ms == 0 {
        return 0;
    }
    (u128::from(bytes) * 1000 / u128::from(elapsed_ms)).min(u128::from(u64::MAX)) as u64
}

/// A stopped job's sources: their totals and any blame stay; a live state (connecting,
/// active, backoff) and a rate mean nothing once nothing runs.
fn idle(sources: Vec<SourceInfo>) -> Vec<SourceInfo> {
    sources
        .into_iter()
        .map(|s| SourceInfo {
            state: match s.state {
                SourceState::Blamed => SourceState::Blamed,
                _ => SourceState::Idle,
            },
            rate_bps: 0,
            ..s
        })
        .collect()
}
