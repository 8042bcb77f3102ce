//! The download job driver: owns the pure scheduler, turns its actions into connections,
//! requests and cancels, feeds it what the connections report, hands verified segments to
//! the writer and publishes a live `JobInfo` snapshot. All decisions live in
//! `arsnet-sched`; this loop only moves events and bytes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arsnet_proto::control::{JobId, JobInfo, JobState, Pin, SourceInfo};
use arsnet_proto::manifest::to_hex;
use arsnet_proto::{Digest, JobTag, Manifest};
use arsnet_sched::{
    Action, Config as SchedConfig, ConnId, ContentVotes, Layout, Phase, Scheduler, SegmentVerdict,
    ServerState,
};
use arsnet_store::dir::Dir;
use arsnet_store::{Adopted, DownloadStore, Found, StoreError};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::buffers::BufferPool;
use super::connection::{spawn_connection, ConnCommand, ConnContext, ConnEvent, ConnHandle};
use super::writer::{spawn_writer, WriteMsg, WriteReport, WriterConfig};
use crate::rate::RateMeter;
use crate::{human_bytes, human_rate};

/// Tuning of a download job (defaults suit loopback and LAN alike).
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    pub pipeline_depth: usize,
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Segments written between two durability points (fdatasync + journal fsync).
    pub commit_batch: usize,
    /// Longest time a written segment waits before it is made durable.
    pub commit_interval: Duration,
    /// How often the job logs its per-server metrics (the spec's client `-i`).
    pub metric_interval: Duration,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            pipeline_depth: 4,
            stall_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            commit_batch: 32,
            commit_interval: Duration::from_millis(500),
            metric_interval: Duration::from_secs(1),
        }
    }
}

/// Called with the file name and accepted content (BLAKE3) before the job writes anything
/// in DIR, and must have saved them when it returns: so that after any crash the job knows
/// which files and which content are its own. An error fails the job before any write.
#[derive(Clone)]
pub struct ContentHook(pub Arc<RecordContent>);

/// The function behind a [`ContentHook`]: file name, content BLAKE3 → saved, or why not.
pub type RecordContent = dyn Fn(&str, &Digest) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for ContentHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentHook")
    }
}

/// What to download, where.
#[derive(Debug, Clone)]
pub struct DownloadSpec {
    pub id: JobId,
    pub dir: PathBuf,
    /// "host:port" of every server.
    pub sources: Vec<String>,
    /// Adopt a partial download found in `dir`.
    pub resume: bool,
    /// The file name, when known from an earlier run (picks the partial to adopt).
    pub name: Option<String>,
    /// Replace an existing `dir/NAME`.
    pub overwrite: bool,
    /// The (device, inode) `dir` must be: the directory the caller proved it may write to
    /// when it asked (`None`: the caller is the daemon's own user, and `dir` is created if
    /// missing).
    pub dir_identity: Option<arsnet_store::dir::FileId>,
    /// Who the finished file is given to, `(uid, gid)`, when that is not the daemon's user.
    pub give_to: Option<(u32, u32)>,
    /// The requesting user when it is not the daemon's: `--overwrite` replaces only its files.
    pub caller_uid: Option<u32>,
    /// Saves the accepted name and content before anything is written (see [`ContentHook`]).
    pub on_content: Option<ContentHook>,
    /// This job's tag: its partial files carry it, and only they are adopted or removed.
    pub tag: JobTag,
    /// Tags of the daemon's other jobs that still own their partial files (open or failed):
    /// never adopted. A journal with any other tag is an orphan (its job was cancelled with
    /// --keep, or is unknown to this daemon), which `fetch -r` may continue.
    pub foreign_tags: Vec<JobTag>,
    /// The content the user pinned.
    pub pin: Option<Pin>,
    /// The content this job accepted in an earlier run (its BLAKE3): nothing else is taken.
    pub content: Option<Digest>,
    pub config: DownloadConfig,
}

impl DownloadSpec {
    /// Whether partial files carrying `tag` may be adopted by this job: its own, or an
    /// orphan's when the job already knows which content it wants (pinned or accepted
    /// before) — the adoption then checks the journal holds that content. An orphan never
    /// chooses the content: anyone who can write DIR could have left it there.
    fn may_adopt(&self, tag: &JobTag) -> bool {
        *tag == self.tag || (!self.foreign_tags.contains(tag) && self.required_content().is_some())
    }

    /// The BLAKE3 the content must have, from the job's history or the user's pin.
    fn required_content(&self) -> Option<Digest> {
        self.content.or(match self.pin {
            Some(Pin::Blake3(digest)) => Some(digest),
            _ => None,
        })
    }
}

/// Operator commands to a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobCommand {
    /// Stop at a durable point, keeping the partial files (pause, daemon shutdown).
    Stop,
    /// Stop and remove the partial files unless `keep`.
    Cancel { keep: bool },
}

/// How a job run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed(PathBuf),
    Failed(String),
    Stopped,
    Cancelled,
}

/// Per-server bookkeeping for metrics (the scheduler keeps the scheduling state).
struct Source {
    address: String,
    /// Bytes received on connections that have ended.
    bytes_closed: u64,
    /// Bytes of the connection that is open now.
    bytes_open: u64,
    meter: RateMeter,
    last_error: String,
}

struct Job {
    spec: DownloadSpec,
    /// The download directory, held open for the job's life: every file is reached through
    /// it.
    dir: Dir,
    started: Instant,
    sched: Scheduler,
    conns: HashMap<ConnId, ConnHandle>,
    sources: Vec<Source>,
    ctx: ConnContext,
    manifest: Option<Arc<Manifest>>,
    writer: Option<mpsc::Sender<WriteMsg>>,
    reports: Option<mpsc::UnboundedReceiver<WriteReport>>,
    adopted: u64,
    /// The tag carried by the partial files this job holds (its own, or an orphan's it
    /// adopted), once it holds any.
    owner_tag: Option<JobTag>,
    bytes_done: u64,
    durable: u64,
    finishing: bool,
    /// Until when the writer's backpressure excuses silent connections from stall detection.
    disk_busy_until: Option<Instant>,
    info: watch::Sender<JobInfo>,
}

fn sched_config(c: &DownloadConfig) -> SchedConfig {
    SchedConfig {
        pipeline_depth: c.pipeline_depth,
        stall_timeout: c.stall_timeout,
        // The connection times out each handshake step itself (a huge digest table may
        // legitimately take long); the scheduler's limit is only a backstop.
        handshake_timeout: Duration::from_secs(3600),
        backoff_initial: c.backoff_initial,
        backoff_max: c.backoff_max,
        ..SchedConfig::default()
    }
}

fn layout_of(manifest: &Manifest) -> Layout {
    Layout {
        segment_count: manifest.segment_count(),
        fingerprint: manifest.identity(),
        content: manifest.root,
    }
}

/// Runs one download until it completes, fails, or is stopped by `commands`. Progress is
/// published on `info` after every change of state and every tick.
pub async fn run_download(
    spec: DownloadSpec,
    info: watch::Sender<JobInfo>,
    mut commands: mpsc::Receiver<JobCommand>,
) -> Outcome {
    let dir = match open_dir(&spec).await {
        Ok(dir) => dir,
        Err(reason) => {
            let mut failed = info.borrow().clone();
            failed.state = JobState::Failed(reason.clone());
            info.send_replace(failed);
            return Outcome::Failed(reason);
        }
    };
    let started = Instant::now();
    // Small bounds: every queued event may hold a segment buffer, and a full channel is what
    // pushes back on the sockets when the disk is slower than the network.
    let (events_tx, mut events_rx) = mpsc::channel(8);
    let ctx = ConnContext {
        connect_timeout: spec.config.connect_timeout,
        events: events_tx,
        manifests: Default::default(),
        buffers: BufferPool::new(spec.sources.len() * 2 + 16),
    };
    let sources = spec
        .sources
        .iter()
        .map(|a| Source {
            address: a.clone(),
            bytes_closed: 0,
            bytes_open: 0,
            meter: RateMeter::new(started),
            last_error: String::new(),
        })
        .collect();
    let config = sched_config(&spec.config);
    let servers = spec.sources.len();
    let mut sched = Scheduler::new(config.clone(), servers, Duration::ZERO);
    if let Some(content) = spec.required_content() {
        sched.pin(content);
    }
    let mut job = Job {
        sched,
        dir,
        spec,
        started,
        conns: HashMap::new(),
        sources,
        ctx,
        manifest: None,
        writer: None,
        reports: None,
        adopted: 0,
        owner_tag: None,
        bytes_done: 0,
        durable: 0,
        finishing: false,
        disk_busy_until: None,
        info,
    };
    let adopted = if job.spec.resume {
        job.adopt_partial(config).await
    } else {
        Ok(None)
    };
    let outcome = match adopted {
        Err(reason) => Outcome::Failed(reason),
        Ok(Some(finished)) => Outcome::Completed(finished),
        Ok(None) => job.run(&mut events_rx, &mut commands).await,
    };
    // A stopped job's final state (paused, or still running across a daemon restart) is
    // the owner's decision, not the engine's: publish no state for it.
    job.publish(match &outcome {
        Outcome::Completed(_) => Some(JobState::Completed),
        Outcome::Failed(reason) => Some(JobState::Failed(reason.clone())),
        Outcome::Stopped => None,
        Outcome::Cancelled => Some(JobState::Cancelled),
    });
    outcome
}

impl Job {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Adopts this job's partial download in DIR, if any. `Ok(Some(path))` means it had in
    /// fact finished (a crash hit between publishing and recording "completed"). A journal
    /// that cannot be trusted is kept aside and the download starts over.
    /// Takes over what an adoption found: whose files they are, and the segments (and bytes)
    /// already durable.
    fn count_adopted(&mut self, adopted: &Adopted, manifest: &Manifest) {
        self.owner_tag = Some(adopted.tag);
        self.adopted = adopted.segments.len() as u64;
        self.durable = self.adopted;
        self.bytes_done = adopted
            .segments
            .iter()
            .map(|&s| u64::from(manifest.segment_range(s).1))
            .sum();
    }

    /// Another handle on the job's directory, for a store call on the blocking pool.
    fn held_dir(&self) -> Result<Dir, String> {
        self.dir.try_clone().map_err(|e| e.to_string())
    }

    async fn adopt_partial(&mut self, config: SchedConfig) -> Result<Option<PathBuf>, String> {
        let dir = self.spec.dir.clone();
        let tag = self.spec.tag;
        let content = self.spec.required_content();
        let known = self.spec.name.clone();
        let give_to = self.spec.give_to;
        if let (Some(name), Some(root)) = (known.clone(), self.spec.content) {
            let d = self.held_dir()?;
            let finished =
                blocking(move || DownloadStore::verify_published(&d, &name, &root, &tag, give_to))
                    .await?
                    .map_err(|e| format!("cannot resume: {e}"))?;
            if let Some(path) = finished {
                info!(job = self.spec.id, path = %path.display(), "found the download already finished and verified");
                return Ok(Some(path));
            }
        }
        let name = match known {
            Some(name) => name,
            None => {
                let (d, spec) = (self.held_dir()?, self.spec.clone());
                match blocking(move || DownloadStore::find_partial(&d, &|t| spec.may_adopt(t)))
                    .await?
                    .map_err(|e| format!("cannot resume: {e}"))?
                {
                    Found::Partial(name) => name,
                    Found::Nothing => {
                        info!(job = self.spec.id, dir = %dir.display(), "no partial download of this job to resume; starting fresh");
                        return Ok(None);
                    }
                }
            }
        };
        let overwrite = self.spec.overwrite;
        let (d, n, spec) = (self.held_dir()?, name.clone(), self.spec.clone());
        let adopted = blocking(move || {
            DownloadStore::adopt(d, &n, &|t| spec.may_adopt(t), content.as_ref(), overwrite)
        })
        .await?;
        let (store, adopted) = match adopted {
            Ok(adopted) => adopted,
            Err(StoreError::NoPartial(_) | StoreError::JournalCorrupt { .. }) => {
                // A crash while the partial files were being created (no journal yet, or a
                // torn header): nothing verified exists, so keep the journal as evidence and
                // start over.
                let (d, n) = (self.held_dir()?, name.clone());
                let kept = blocking(move || DownloadStore::set_aside(&d, &n))
                    .await?
                    .map_err(|e| format!("cannot resume: {e}"))?;
                match kept {
                    Some(path) => {
                        warn!(job = self.spec.id, kept = %path.display(), "the journal could not be trusted; kept it aside and starting over")
                    }
                    None => info!(job = self.spec.id, "no journal to resume; starting over"),
                }
                return Ok(None);
            }
            Err(e) => return Err(format!("cannot resume: {e}")),
        };
        let manifest = Arc::new(store.manifest().clone());
        info!(
            job = self.spec.id,
            file = %manifest.name,
            adopted = adopted.segments.len(),
            rejected = adopted.rejected.len(),
            ignored_tail_bytes = adopted.ignored_tail_bytes,
            total = manifest.segment_count(),
            "adopted segments from the journal"
        );
        if !adopted.rejected.is_empty() {
            warn!(job = self.spec.id, segments = ?adopted.rejected, "journaled segments failed re-verification and will be fetched again");
        }
        if adopted.tag != self.spec.tag {
            info!(
                job = self.spec.id,
                "continuing partial files no other job owns; this job owns them now"
            );
        }
        self.count_adopted(&adopted, &manifest);
        self.sched = Scheduler::with_layout(
            config,
            self.spec.sources.len(),
            layout_of(&manifest),
            &adopted.segments,
            Duration::ZERO,
        );
        self.start_writer(store);
        self.set_manifest(manifest);
        Ok(None)
    }

    /// Records the accepted manifest and shares it with connections (one digest table).
    fn set_manifest(&mut self, manifest: Arc<Manifest>) {
        let manifest = self.ctx.manifests.insert(manifest);
        self.manifest = Some(manifest);
    }

    fn start_writer(&mut self, store: DownloadStore) {
        let (tx, rx) = spawn_writer(
            store,
            WriterConfig {
                commit_batch: self.spec.config.commit_batch,
                commit_interval: self.spec.config.commit_interval,
                buffers: self.ctx.buffers.clone(),
            },
        );
        self.writer = Some(tx);
        self.reports = Some(rx);
    }

    async fn run(
        &mut self,
        events: &mut mpsc::Receiver<ConnEvent>,
        commands: &mut mpsc::Receiver<JobCommand>,
    ) -> Outcome {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_log = Instant::now();
        let mut commands_open = true;
        loop {
            if let Err(reason) = self.execute_actions() {
                return self.abort(reason).await;
            }
            if let Err(reason) = self.open_store_once_decided().await {
                return self.abort(reason).await;
            }
            match self.sched.phase() {
                Phase::Complete if !self.finishing => {
                    if let Err(reason) = self.finish().await {
                        return self.abort(reason).await;
                    }
                }
                Phase::Failed(reason) => return self.abort(reason).await,
                Phase::Disagreement(votes) => {
                    let reason = disagreement(&votes, &self.sources);
                    return self.abort(reason).await;
                }
                _ => {}
            }
            tokio::select! {
                Some(event) = events.recv() => {
                    if let Err(reason) = self.on_event(event).await {
                        return self.abort(reason).await;
                    }
                }
                report = recv_report(&mut self.reports) => match report {
                    Some(WriteReport::Durable(n)) => self.durable += n,
                    Some(WriteReport::Finished(path)) => {
                        info!(job = self.spec.id, path = %path.display(), secs = self.started.elapsed().as_secs_f32(), "download complete and verified");
                        return Outcome::Completed(path);
                    }
                    Some(WriteReport::Failed(reason)) => {
                        self.reports = None;
                        self.writer = None;
                        return self.abort(format!("storage error: {reason}")).await;
                    }
                    Some(WriteReport::Closed) | None => {
                        self.reports = None;
                        self.writer = None;
                        return self.abort("storage writer stopped unexpectedly".into()).await;
                    }
                },
                // Once finalizing, the file is about to appear: let it, rather than report a
                // pause or cancel of a download that in fact completed.
                command = commands.recv(), if commands_open && !self.finishing => match command {
                    Some(JobCommand::Stop) => return self.stop(false, Outcome::Stopped).await,
                    Some(JobCommand::Cancel { keep }) => return self.stop(!keep, Outcome::Cancelled).await,
                    None => commands_open = false,
                },
                _ = tick.tick() => {
                    self.sample_progress();
                    let now = self.now();
                    self.sched.on_tick(now);
                    self.publish(None);
                    if last_log.elapsed() >= self.spec.config.metric_interval {
                        last_log = Instant::now();
                        self.log_metrics();
                    }
                }
            }
        }
    }

    fn execute_actions(&mut self) -> Result<(), String> {
        while let Some(action) = self.sched.poll_action() {
            match action {
                Action::Connect { server, conn } => {
                    let Some(source) = self.sources.get(server) else {
                        continue;
                    };
                    let handle =
                        spawn_connection(server, conn, source.address.clone(), self.ctx.clone());
                    self.conns.insert(conn, handle);
                }
                Action::Request { conn, segment } => self.send(conn, ConnCommand::Request(segment)),
                Action::Cancel { conn, segment } => self.send(conn, ConnCommand::Cancel(segment)),
                Action::Disconnect { conn, reason } => {
                    if let Some(handle) = self.conns.remove(&conn) {
                        let reason = format!("{reason:?}");
                        warn!(job = self.spec.id, server = %self.sources[handle.server].address, %reason, "dropping connection");
                        self.close_conn(handle, reason);
                    }
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, conn: ConnId, command: ConnCommand) {
        if let Some(handle) = self.conns.get(&conn) {
            // A closed channel means the connection is ending; its Closed event follows.
            let _ = handle.commands.send(command);
        }
    }

    fn close_conn(&mut self, handle: ConnHandle, error: String) {
        if let Some(source) = self.sources.get_mut(handle.server) {
            source.bytes_closed += handle.received.load(Ordering::Relaxed);
            source.bytes_open = 0;
            source.last_error = error;
        }
        // Dropping the handle aborts the task.
    }

    async fn on_event(&mut self, event: ConnEvent) -> Result<(), String> {
        let now = self.now();
        match event {
            ConnEvent::Header { conn, manifest } => {
                // A header from a connection already dropped (e.g. handshake timeout) must
                // not decide anything, least of all what the store is created for.
                if !self.conns.contains_key(&conn) {
                    return Ok(());
                }
                let layout = layout_of(&manifest);
                if let Some(handle) = self.conns.get_mut(&conn) {
                    // Kept until the content is decided: the store is created from the
                    // manifest of a server that serves the winning content.
                    handle.manifest = Some(manifest);
                }
                self.sched.on_header(now, conn, layout);
            }
            ConnEvent::Segment {
                conn,
                segment,
                data,
                verified,
            } => {
                let server = self.conns.get(&conn).map(|h| h.server);
                if !verified {
                    if let Some(server) = server {
                        warn!(job = self.spec.id, server = %self.sources[server].address, segment, "segment failed verification; blaming server");
                    }
                }
                if let SegmentVerdict::Store = self.sched.on_segment(now, conn, segment, verified) {
                    self.bytes_done += data.len() as u64;
                    let Some(writer) = self.writer.as_ref() else {
                        return Err(self.writer_failure().await);
                    };
                    let waited = Instant::now();
                    let sent = writer.send(WriteMsg::Segment { segment, data }).await;
                    if waited.elapsed() > Duration::from_millis(100) {
                        // The disk, not the servers, held things up: connections that sent
                        // nothing meanwhile were blocked by us, not stalled.
                        self.disk_busy_until =
                            Some(Instant::now() + self.spec.config.stall_timeout);
                    }
                    if sent.is_err() {
                        self.writer = None;
                        return Err(self.writer_failure().await);
                    }
                } else {
                    self.ctx.buffers.give(data);
                }
            }
            ConnEvent::Cancelled { conn, segment } => self.sched.on_cancelled(now, conn, segment),
            ConnEvent::Closed { conn, error } => {
                if let Some(handle) = self.conns.remove(&conn) {
                    info!(job = self.spec.id, server = %self.sources[handle.server].address, %error, "connection lost");
                    self.close_conn(handle, error.clone());
                    self.sched.on_disconnected(now, conn, &error);
                }
            }
        }
        Ok(())
    }

    /// Why the writer stopped (it always reports before it goes), as the job's failure.
    async fn writer_failure(&mut self) -> String {
        let Some(reports) = self.reports.as_mut() else {
            return "storage writer stopped unexpectedly".into();
        };
        while let Some(report) = reports.recv().await {
            match report {
                WriteReport::Durable(n) => self.durable += n,
                WriteReport::Failed(reason) => return format!("storage error: {reason}"),
                WriteReport::Closed | WriteReport::Finished(_) => break,
            }
        }
        "storage writer stopped unexpectedly".into()
    }

    /// `fetch -r` found partial files it could not take before the content was known (an
    /// orphan's): now that a pin or the servers' majority decided it, continue them if they
    /// are that very download, else say how to proceed.
    async fn adopt_after_election(
        &mut self,
        manifest: &Arc<Manifest>,
        found: PathBuf,
    ) -> Result<(), String> {
        let refuse = || {
            format!(
                "a partial download exists ({}) of other content than the servers agree on; \
                 remove it, or pin its content with --blake3 HEX",
                found.display()
            )
        };
        if let Some(hook) = &self.spec.on_content {
            (hook.0)(&manifest.name, &manifest.root)
                .map_err(|e| format!("cannot record the download before writing it: {e}"))?;
        }
        let (d, spec, m) = (self.held_dir()?, self.spec.clone(), manifest.clone());
        let overwrite = self.spec.overwrite;
        let orphan_or_own = move |t: &JobTag| *t == spec.tag || !spec.foreign_tags.contains(t);
        let adopted = blocking(move || {
            DownloadStore::adopt(d, &m.name, &orphan_or_own, Some(&m.root), overwrite)
        })
        .await?;
        let (store, adopted) = match adopted {
            Ok(found) if found.0.manifest().identity() == manifest.identity() => found,
            Ok(_) | Err(StoreError::Foreign { .. }) => return Err(refuse()),
            Err(e) => return Err(format!("cannot resume: {e}")),
        };
        info!(
            job = self.spec.id,
            adopted = adopted.segments.len(),
            "adopted segments from the journal of a partial download of the agreed content"
        );
        self.count_adopted(&adopted, manifest);
        let now = self.now();
        self.sched.on_stored_elsewhere(now, &adopted.segments);
        self.start_writer(store);
        self.set_manifest(manifest.clone());
        Ok(())
    }

    /// Once the scheduler accepted a content (pin, or majority), creates the store from the
    /// manifest of a connection that serves it.
    async fn open_store_once_decided(&mut self) -> Result<(), String> {
        if self.manifest.is_some() {
            return Ok(());
        }
        let Some(layout) = self.sched.layout() else {
            return Ok(());
        };
        let manifest = self
            .conns
            .values()
            .filter_map(|h| h.manifest.as_ref())
            .find(|m| layout_of(m) == layout)
            .cloned();
        match manifest {
            Some(manifest) => self.open_store(&manifest).await,
            // Every server of the winning content dropped since: the next one to send its
            // header brings the manifest.
            None => Ok(()),
        }
    }

    /// First accepted header of a fresh download: record what it is, refuse to clobber, then
    /// create the store.
    async fn open_store(&mut self, manifest: &Arc<Manifest>) -> Result<(), String> {
        if let Some(hook) = &self.spec.on_content {
            (hook.0)(&manifest.name, &manifest.root)
                .map_err(|e| format!("cannot record the download before writing it: {e}"))?;
        }
        let dir = self.held_dir()?;
        let m = manifest.clone();
        let overwrite = self.spec.overwrite;
        let tag = self.spec.tag;
        let created = blocking(move || DownloadStore::create(dir, &m, &tag, overwrite)).await?;
        let store = match created {
            Ok(store) => store,
            Err(StoreError::PartialExists(path)) if self.spec.resume => {
                return self.adopt_after_election(manifest, path).await;
            }
            Err(StoreError::TargetExists(path)) => {
                return Err(format!(
                    "{} already exists; pass --overwrite to replace it",
                    path.display()
                ))
            }
            Err(StoreError::PartialExists(path)) => {
                return Err(format!(
                    "a partial download exists ({}) that is not this job's; to continue it, \
                     `fetch -r --blake3 HEX` with the content's BLAKE3 (as b3sum prints it), \
                     or remove it",
                    path.display()
                ))
            }
            Err(e) => return Err(e.to_string()),
        };
        info!(job = self.spec.id, file = %manifest.name, size = manifest.size, segments = manifest.segment_count(), "download started");
        self.owner_tag = Some(tag);
        self.start_writer(store);
        self.set_manifest(manifest.clone());
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), String> {
        self.finishing = true;
        self.close_all("download complete");
        let writer = self.writer.as_ref().ok_or("no storage to finalize")?;
        writer
            .send(WriteMsg::Finish {
                overwrite: self.spec.overwrite,
                give_to: self.spec.give_to,
                sha256: match self.spec.pin {
                    Some(Pin::Sha256(digest)) => Some(digest),
                    _ => None,
                },
            })
            .await
            .map_err(|_| "storage writer stopped before finalizing".to_string())
    }

    fn close_all(&mut self, reason: &str) {
        let handles: Vec<_> = self.conns.drain().map(|(_, h)| h).collect();
        for handle in handles {
            self.close_conn(handle, reason.to_string());
        }
    }

    /// Ends the job with `reason`, leaving the partial files at a durable point.
    async fn abort(&mut self, reason: String) -> Outcome {
        warn!(job = self.spec.id, %reason, "download failed");
        self.close_all("job failed");
        self.close_writer(false).await;
        Outcome::Failed(reason)
    }

    async fn stop(&mut self, discard: bool, outcome: Outcome) -> Outcome {
        self.close_all("job stopped");
        if let Some(reason) = self.close_writer(discard).await {
            return Outcome::Failed(reason);
        }
        if discard {
            // Nothing was created yet, or the writer removed it.
            info!(job = self.spec.id, "partial files removed");
        }
        info!(
            job = self.spec.id,
            durable = self.durable,
            "job stopped at a durable point"
        );
        outcome
    }

    /// Asks the writer to commit and close; waits for it. Returns a storage error, if any.
    async fn close_writer(&mut self, discard: bool) -> Option<String> {
        let writer = self.writer.take()?;
        let mut reports = self.reports.take()?;
        if writer.send(WriteMsg::Close { discard }).await.is_err() {
            // Already stopped: drain its last report below.
        }
        drop(writer);
        while let Some(report) = reports.recv().await {
            match report {
                WriteReport::Durable(n) => self.durable += n,
                WriteReport::Failed(reason) => return Some(reason),
                WriteReport::Closed | WriteReport::Finished(_) => return None,
            }
        }
        None
    }

    fn sample_progress(&mut self) {
        let now = self.now();
        let instant = Instant::now();
        let disk_busy = self.disk_busy_until.is_some_and(|t| t > instant);
        for (&conn, handle) in self.conns.iter_mut() {
            let total = handle.received.load(Ordering::Relaxed);
            let delta = total.saturating_sub(handle.sampled);
            handle.sampled = total;
            if let Some(source) = self.sources.get_mut(handle.server) {
                source.bytes_open = total;
            }
            if delta > 0 || disk_busy {
                self.sched.on_progress(now, conn, delta);
            }
        }
        for source in &mut self.sources {
            source
                .meter
                .sample(source.bytes_closed + source.bytes_open, instant);
        }
    }

    fn snapshot(&self, state: Option<JobState>) -> JobInfo {
        let state = state.unwrap_or_else(|| match self.sched.phase() {
            Phase::Waiting => JobState::Waiting,
            Phase::Failed(reason) => JobState::Failed(reason),
            _ => JobState::Running,
        });
        let sources = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let stats = self.sched.server_stats(i);
                let (label, detail) = match self.sched.server_state(i) {
                    ServerState::Idle => ("idle", String::new()),
                    ServerState::Connecting => ("connecting", String::new()),
                    ServerState::Active => ("active", String::new()),
                    ServerState::Backoff {
                        until, last_error, ..
                    } => {
                        let wait = until.saturating_sub(self.now());
                        (
                            "backoff",
                            format!("retry in {:.1}s: {last_error}", wait.as_secs_f32()),
                        )
                    }
                    ServerState::Blamed(reason) => ("blamed", reason.clone()),
                };
                SourceInfo {
                    address: s.address.clone(),
                    state: label.into(),
                    detail: if detail.is_empty() {
                        s.last_error.clone()
                    } else {
                        detail
                    },
                    rate_bps: s.meter.rate(),
                    bytes: s.bytes_closed + s.bytes_open,
                    segments: stats.segments_done,
                    failures: stats.failures,
                }
            })
            .collect();
        JobInfo {
            id: self.spec.id,
            state,
            dir: self.spec.dir.clone(),
            name: self.manifest.as_ref().map(|m| m.name.clone()),
            size: self.manifest.as_ref().map(|m| m.size),
            segments_total: self.sched.segment_count(),
            segments_done: self.sched.segments_done(),
            bytes_done: self.bytes_done,
            adopted_segments: self.adopted,
            rate_bps: self.sources.iter().map(|s| s.meter.rate()).sum(),
            elapsed_ms: self.started.elapsed().as_millis() as u64,
            sources,
            content: self.manifest.as_ref().map(|m| m.root),
            owner_tag: self.owner_tag,
        }
    }

    fn publish(&self, state: Option<JobState>) {
        self.info.send_replace(self.snapshot(state));
    }

    fn log_metrics(&self) {
        let info = self.snapshot(None);
        for s in &info.sources {
            info!(
                job = info.id,
                server = %s.address,
                state = %s.state,
                rate = %human_rate(s.rate_bps),
                bytes = %human_bytes(s.bytes),
                segments = s.segments,
                "source metrics"
            );
        }
        info!(
            job = info.id,
            done = info.segments_done,
            total = info.segments_total.unwrap_or(0),
            rate = %human_rate(info.rate_bps),
            "job progress"
        );
    }
}

async fn recv_report(
    reports: &mut Option<mpsc::UnboundedReceiver<WriteReport>>,
) -> Option<WriteReport> {
    match reports {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("storage task failed: {e}"))
}

/// The failure of an election without a strict majority: which servers serve which content,
/// and how to choose.
fn disagreement(votes: &[ContentVotes], sources: &[Source]) -> String {
    let groups: Vec<String> = votes
        .iter()
        .map(|v| {
            let servers: Vec<&str> = v
                .servers
                .iter()
                .filter_map(|&s| sources.get(s).map(|s| s.address.as_str()))
                .collect();
            format!("BLAKE3 {} from {}", to_hex(&v.content), servers.join(", "))
        })
        .collect();
    format!(
        "the servers disagree about the content and none has a strict majority: {}; pin the \
         one you mean with --blake3 HEX (as b3sum prints it)",
        groups.join("; ")
    )
}

/// Opens the download directory once for the whole job: created first when the caller is the
/// daemon's own user, and otherwise required to be the very directory the caller showed it
/// may write to.
async fn open_dir(spec: &DownloadSpec) -> Result<Dir, String> {
    let (path, identity, caller_uid) = (spec.dir.clone(), spec.dir_identity, spec.caller_uid);
    blocking(move || {
        if identity.is_none() {
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        }
        let mut dir = Dir::open_expecting(&path, identity).map_err(|e| e.to_string())?;
        if let Some(uid) = caller_uid {
            dir.set_replace_owner(uid);
        }
        Ok(dir)
    })
    .await?
}
