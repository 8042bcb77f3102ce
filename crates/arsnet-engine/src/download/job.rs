//! The download job driver: owns the pure scheduler, turns its actions into connections,
//! requests and cancels, feeds it what the sources report, hands verified segments to the
//! writer and publishes a [`Progress`] snapshot. All decisions live in `arsnet-sched`; this
//! loop only moves events and bytes, and wakes when the scheduler's next deadline is due.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arsnet_proto::control::{Pin, RunFigures};
use arsnet_proto::manifest::digest_segment;
use arsnet_proto::{JobTag, Manifest};
use arsnet_sched::{
    Action, Config as SchedConfig, ConnId, ContentVotes, FailReason, Layout, Phase, Scheduler,
    SegmentVerdict, ServerEnd,
};
use arsnet_store::dir::Dir;
use arsnet_store::{Adopted, DownloadStore};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::buffers::BufferPool;
use super::cross_check::{self, CrossCheck};
use super::end_check::Mismatch;
use super::end_check::RunningCheck;
use super::error::{ContentVote, DownloadError, Outcome, SourceFailure};
use super::http_client;
use super::identity::{layout_of, Claim, Manifests};
use super::progress::{log_metrics, sources_info, Activity, Meter, Progress};
use super::repair::{self, Referees};
use super::source::{self, SourceCommand, SourceContext, SourceError, SourceEvent, SourceHandle};
use super::spec::{DownloadSpec, JobCommand};
use super::storage::{self, Opened, Resumed};
use super::writer::{spawn_writer, Finish, WriteMsg, WriteReport, WriterConfig};

/// How often the snapshot is refreshed for watchers. A UI cadence: no scheduling decision
/// waits for it (those wake at the scheduler's own deadline).
const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

/// Events queued from connections at most. Small: every queued event may hold a segment
/// buffer, and a full channel is what pushes back on the sockets when the disk is slower
/// than the network.
const EVENT_QUEUE: usize = 8;

struct Job {
    spec: DownloadSpec,
    /// The download directory, held open for the job's life: every file is reached through
    /// it.
    dir: Dir,
    started: Instant,
    sched: Scheduler,
    conns: HashMap<ConnId, SourceHandle>,
    meters: Vec<Meter>,
    ctx: SourceContext,
    manifest: Option<Arc<Manifest>>,
    writer: Option<mpsc::Sender<WriteMsg>>,
    reports: Option<mpsc::UnboundedReceiver<WriteReport>>,
    /// Segments adopted from the journal, and their bytes.
    adopted: u64,
    adopted_bytes: u64,
    /// The tag carried by the partial files this job holds (its own, or an orphan's it
    /// adopted), once it holds any.
    owner_tag: Option<JobTag>,
    bytes_done: u64,
    /// The size of the file a resume found already published and verified (no manifest is
    /// read then): what the job's figures show for it.
    found_finished: Option<u64>,
    /// Set when `fetch -r` found the decided content already saved under its name.
    already_saved: Option<PathBuf>,
    durable: u64,
    finishing: bool,
    activity: Activity,
    progress: watch::Sender<Progress>,
    /// Which source delivered each segment stored in this run (see `repair`).
    provenance: HashMap<u64, usize>,
    /// Repair rounds run so far, and the sources they convicted (never asked again).
    repairs: u32,
    excluded: std::collections::BTreeMap<usize, String>,
    /// Samples of mirrors' segments checked against other mirrors while the job runs, and
    /// the segments of mirrors they convicted, fetched again before the file is finished.
    cross_check: CrossCheck,
    tainted: BTreeSet<u64>,
    /// Segments made Missing again while the job runs, not yet told to the writer (it must
    /// hear of them before any of them is written again: see `advance`).
    redo_pending: Vec<u64>,
    /// Publishes the decided content's manifest to the connections (mirrors wait for it).
    accepted: watch::Sender<Option<Arc<Manifest>>>,
}

/// A scheduler for `spec`: the user's pin, and which sources are mirrors (followers), set
/// in one place for a fresh job and a resumed one alike.
fn scheduler_for(spec: &DownloadSpec, known: Option<(Layout, &[u64])>, now: Duration) -> Scheduler {
    let config = sched_config(spec);
    let servers = spec.sources.len();
    let mut sched = match known {
        Some((layout, done)) => Scheduler::with_layout(config, servers, layout, done, now),
        None => Scheduler::new(config, servers, now),
    };
    if let Some(content) = spec.required_content() {
        sched.pin(content);
    }
    // Mirrors follow the content ArsNet servers announce; alone, they vote with their size
    // (see `Job::on_unproven_claim`).
    for (server, source) in spec.sources.iter().enumerate() {
        if source.is_mirror() && !spec.mirrors_only() {
            sched.set_follower(server);
        }
    }
    sched
}

fn sched_config(spec: &DownloadSpec) -> SchedConfig {
    let c = &spec.config;
    SchedConfig {
        pipeline_depth: c.pipeline_depth,
        stall_timeout: c.stall_timeout,
        laggard_floor: c.silence_timeout,
        // The longest a source may stay silent before its header: it covers the TCP
        // connect and every handshake frame (a long digest table reports progress frame by
        // frame, so only silence times it out).
        handshake_timeout: c.connect_timeout,
        backoff_initial: c.backoff_initial,
        backoff_max: c.backoff_max,
        // A job that accepted a content in an earlier run heard from a source then: it is
        // not one that can never succeed, so this run gives nobody up either.
        max_tries: if spec.content.is_some() {
            0
        } else {
            c.max_tries
        },
        ..SchedConfig::default()
    }
}

/// Runs one download until it completes, fails, or is stopped by `commands`. Progress is
/// published on `progress` after every change and every [`PUBLISH_INTERVAL`]; the job's
/// state is the caller's to decide.
pub async fn run_download(
    spec: DownloadSpec,
    progress: watch::Sender<Progress>,
    mut commands: mpsc::Receiver<JobCommand>,
) -> Outcome {
    let dir = match storage::open_dir(&spec).await {
        Ok(dir) => dir,
        Err(reason) => return Outcome::Failed(reason),
    };
    let http = match http_client::build(&spec.ca_certs, spec.config.connect_timeout) {
        Ok(client) => client,
        Err(reason) => return Outcome::Failed(reason),
    };
    let (events_tx, mut events_rx) = mpsc::channel(EVENT_QUEUE);
    let mut job = Job::new(spec, dir, events_tx, progress, http);
    let outcome = match job.resume().await {
        Err(reason) => Outcome::Failed(reason),
        Ok(Some(finished)) => Outcome::Completed(finished),
        Ok(None) => job.run(&mut events_rx, &mut commands).await,
    };
    job.publish();
    outcome
}

impl Job {
    fn new(
        spec: DownloadSpec,
        dir: Dir,
        events: mpsc::Sender<SourceEvent>,
        progress: watch::Sender<Progress>,
        http: reqwest::Client,
    ) -> Self {
        let started = Instant::now();
        let cross_check_every = spec.config.cross_check_every;
        let (accepted, accepted_rx) = watch::channel(None);
        let ctx = SourceContext {
            events,
            manifests: Manifests::default(),
            buffers: BufferPool::new(spec.sources.len() * 2 + 16),
            accepted: accepted_rx,
            http,
            mirror_connections: spec.config.mirror_connections.max(1),
        };
        let meters = spec
            .sources
            .iter()
            .map(|a| Meter::new(a.to_string(), started))
            .collect();
        let sched = scheduler_for(&spec, None, Duration::ZERO);
        Job {
            sched,
            dir,
            spec,
            started,
            conns: HashMap::new(),
            meters,
            ctx,
            manifest: None,
            writer: None,
            reports: None,
            adopted: 0,
            adopted_bytes: 0,
            owner_tag: None,
            bytes_done: 0,
            found_finished: None,
            already_saved: None,
            durable: 0,
            finishing: false,
            activity: Activity::Starting,
            progress,
            accepted,
            provenance: HashMap::new(),
            repairs: 0,
            excluded: std::collections::BTreeMap::new(),
            cross_check: CrossCheck::new(cross_check_every),
            tainted: BTreeSet::new(),
            redo_pending: Vec::new(),
        }
    }

    /// The scheduler's clock: time since the job started.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Adopts this job's partial download in DIR when asked to resume. `Ok(Some(path))`
    /// means it had in fact finished.
    async fn resume(&mut self) -> Result<Option<PathBuf>, DownloadError> {
        if !self.spec.resume {
            return Ok(None);
        }
        match storage::resume(&self.spec, &self.dir).await? {
            Resumed::Finished(path) => {
                // Shown only: the file was verified through its descriptor already.
                if let Ok(meta) = std::fs::symlink_metadata(&path) {
                    self.found_finished = Some(meta.len());
                    self.bytes_done = meta.len();
                    // Nothing was fetched by this run: its average rate is of nothing.
                    self.adopted_bytes = meta.len();
                }
                Ok(Some(path))
            }
            Resumed::Fresh => Ok(None),
            Resumed::Adopted(store, mut adopted) => {
                let manifest = Arc::new(store.manifest().clone());
                self.count_adopted(&mut adopted, &manifest);
                self.sched = scheduler_for(
                    &self.spec,
                    Some((layout_of(&manifest), &adopted.segments)),
                    self.now(),
                );
                self.start_writer(*store);
                self.set_manifest(manifest);
                Ok(None)
            }
        }
    }

    /// Takes over what an adoption found: whose files they are, and the segments (and bytes)
    /// already durable. A job of mirrors alone without a pin (`--no-verify`) keeps none of
    /// them: nothing could show that the dump still holds what the mirrors sent (anyone who
    /// can write DIR may have swapped it since), so everything is fetched again.
    fn count_adopted(&mut self, adopted: &mut Adopted, manifest: &Manifest) {
        if manifest.is_unproven() && self.spec.end_check().is_none() && !adopted.segments.is_empty()
        {
            info!(
                job = self.spec.id,
                segments = adopted.segments.len(),
                "--no-verify: the journal's segments cannot be checked; fetching them again"
            );
            adopted.segments.clear();
        }
        self.owner_tag = Some(adopted.tag);
        self.adopted = adopted.segments.len() as u64;
        self.durable = self.adopted;
        self.bytes_done = adopted
            .segments
            .iter()
            .map(|&s| u64::from(manifest.segment_range(s).1))
            .sum();
        self.adopted_bytes = self.bytes_done;
    }

    /// Records the accepted manifest and shares it with connections (one digest table).
    /// Mirrors whose file cannot be this content are refused with the reason.
    fn set_manifest(&mut self, manifest: Arc<Manifest>) {
        let manifest = self.ctx.manifests.insert(manifest);
        let now = self.now();
        let refused: Vec<(ConnId, String)> = self
            .conns
            .iter()
            .filter_map(|(&conn, h)| Some((conn, h.claim.as_ref()?.contradicts(&manifest)?)))
            .collect();
        for (conn, reason) in refused {
            self.sched.on_refused(now, conn, reason);
        }
        self.accepted.send_replace(Some(manifest.clone()));
        self.manifest = Some(manifest);
    }

    fn start_writer(&mut self, store: DownloadStore) {
        let running_check = self
            .spec
            .end_check()
            .map(|pin| RunningCheck::new(pin, store.manifest()));
        let (tx, rx) = spawn_writer(
            store,
            WriterConfig {
                commit_batch: self.spec.config.commit_batch,
                commit_interval: self.spec.config.commit_interval,
                buffers: self.ctx.buffers.clone(),
                running_check,
            },
        );
        self.writer = Some(tx);
        self.reports = Some(rx);
    }

    async fn run(
        &mut self,
        events: &mut mpsc::Receiver<SourceEvent>,
        commands: &mut mpsc::Receiver<JobCommand>,
    ) -> Outcome {
        let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_log = Instant::now();
        let mut commands_open = true;
        self.activity = Activity::Transferring;
        loop {
            if let Err(reason) = self.advance().await {
                return self.abort(reason).await;
            }
            if let Some(path) = self.already_saved.take() {
                self.close_all("the file is already saved");
                return Outcome::Completed(path);
            }
            let deadline = self
                .sched
                .next_deadline()
                .map(|d| tokio::time::Instant::from_std(self.started) + d);
            let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                Some(event) = events.recv() => {
                    if let Err(reason) = self.on_event(event).await {
                        return self.abort(reason).await;
                    }
                }
                Some(finding) = self.cross_check.next(), if self.cross_check.busy() => {
                    self.on_cross_check(finding);
                }
                report = recv_report(&mut self.reports) => {
                    if let Some(outcome) = self.on_report(report).await {
                        return outcome;
                    }
                }
                // Once finalizing, the file is about to appear: let it, rather than report a
                // pause or cancel of a download that in fact completed.
                command = commands.recv(), if commands_open && !self.finishing => match command {
                    Some(JobCommand::Stop) => return self.stop(false, Outcome::Stopped).await,
                    Some(JobCommand::Cancel { keep }) => return self.stop(!keep, Outcome::Cancelled).await,
                    None => commands_open = false,
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    // Progress first: a connection that moved bytes since the last sample is
                    // not silent, whatever its deadline said.
                    self.sample_progress();
                    self.sched.on_tick(self.now());
                }
                _ = publish.tick() => {
                    self.sample_progress();
                    self.publish();
                    if last_log.elapsed() >= self.spec.config.metric_interval {
                        last_log = Instant::now();
                        log_metrics(self.spec.id, &self.snapshot());
                    }
                }
            }
        }
    }

    /// Carries out what the scheduler decided, creates the store once the content is
    /// decided, and acts on the job's phase.
    async fn advance(&mut self) -> Result<(), DownloadError> {
        // Before the requests that fetch them again go out, so the writer hears of a redo
        // before it can see any of those segments' new bytes.
        if !self.redo_pending.is_empty() {
            let segments = std::mem::take(&mut self.redo_pending);
            if let Some(writer) = self.writer.as_ref() {
                writer
                    .send(WriteMsg::Redo(segments))
                    .await
                    .map_err(|_| DownloadError::WriterStopped)?;
            }
        }
        self.execute_actions();
        self.open_store_once_decided().await?;
        if self.already_saved.is_some() {
            // Nothing to write or finish: the run loop ends the job with the saved file.
            return Ok(());
        }
        match self.sched.phase() {
            // Without an end check a sample still running is the only one that may yet
            // convict a mirror: finish once it has spoken. With one, the end check (and
            // repair) decides, and the samples are dropped with the connections.
            Phase::Complete
                if !self.finishing
                    && self.cross_check.busy()
                    && self.spec.end_check().is_none() =>
            {
                Ok(())
            }
            Phase::Complete if !self.finishing && !self.tainted.is_empty() => {
                let manifest = self.manifest.clone().ok_or(DownloadError::NoStorage)?;
                let again: Vec<u64> = std::mem::take(&mut self.tainted).into_iter().collect();
                self.close_all("fetching a blamed mirror's segments again");
                self.refetch(&manifest, &again);
                Ok(())
            }
            Phase::Complete if !self.finishing => self.finish().await,
            Phase::Failed(reason) => Err(self.failure(reason)),
            Phase::Disagreement(votes) => Err(self.disagreement(&votes)),
            _ => Ok(()),
        }
    }

    /// What the writer said; `Some` ends the job.
    async fn on_report(&mut self, report: Option<WriteReport>) -> Option<Outcome> {
        match report {
            Some(WriteReport::Durable(n)) => {
                self.durable += n;
                None
            }
            Some(WriteReport::CheckFailed(mismatch)) => match self.repair(*mismatch).await {
                Ok(()) => None,
                Err(reason) => Some(self.abort(reason).await),
            },
            Some(WriteReport::Finished(path)) => {
                let checked = match (
                    self.manifest.as_ref().is_some_and(|m| m.is_unproven()),
                    self.spec.end_check(),
                ) {
                    (true, None) => "NOT verified (--no-verify)",
                    _ => "verified",
                };
                info!(job = self.spec.id, path = %path.display(), secs = self.started.elapsed().as_secs_f32(), checked, "download complete");
                Some(Outcome::Completed(path))
            }
            Some(WriteReport::Failed(reason)) => {
                self.reports = None;
                self.writer = None;
                Some(self.abort(DownloadError::Storage(reason)).await)
            }
            Some(WriteReport::Closed) | None => {
                self.reports = None;
                self.writer = None;
                Some(self.abort(DownloadError::WriterStopped).await)
            }
        }
    }

    fn execute_actions(&mut self) {
        while let Some(action) = self.sched.poll_action() {
            match action {
                Action::Connect { server, conn } => {
                    let Some(addr) = self.spec.sources.get(server) else {
                        continue;
                    };
                    let handle = source::spawn(server, conn, addr, &self.ctx);
                    self.conns.insert(conn, handle);
                    // A new attempt: the last connection's note no longer describes it.
                    if let Some(meter) = self.meters.get_mut(server) {
                        meter.last_error.clear();
                    }
                }
                Action::Request { conn, segment } => {
                    self.send(conn, SourceCommand::Request(segment))
                }
                Action::Cancel { conn, segment } => self.send(conn, SourceCommand::Cancel(segment)),
                Action::Disconnect { conn, reason } => {
                    if let Some(handle) = self.conns.remove(&conn) {
                        let reason = format!("{reason:?}");
                        warn!(job = self.spec.id, server = %self.meters[handle.server].address, %reason, "dropping connection");
                        self.close_conn(handle, reason);
                    }
                }
            }
        }
    }

    fn send(&mut self, conn: ConnId, command: SourceCommand) {
        if let Some(handle) = self.conns.get(&conn) {
            // A closed channel means the connection is ending; its Closed event follows.
            let _ = handle.commands.send(command);
        }
    }

    fn close_conn(&mut self, handle: SourceHandle, error: String) {
        if let Some(meter) = self.meters.get_mut(handle.server) {
            meter.bytes_closed += handle.counters.payload.load(Ordering::Relaxed);
            meter.bytes_open = 0;
            meter.last_error = error;
        }
        // Dropping the handle aborts the task.
    }

    async fn on_event(&mut self, event: SourceEvent) -> Result<(), DownloadError> {
        let now = self.now();
        match event {
            SourceEvent::Ready { conn, claim } => {
                // A claim from a connection already dropped (e.g. handshake timeout) must
                // not decide anything, least of all what the store is created for.
                let Some(handle) = self.conns.get_mut(&conn) else {
                    return Ok(());
                };
                // Kept until the content is decided: the store is created from the
                // manifest of a source that serves the winning content.
                handle.claim = Some(claim.clone());
                match claim.layout() {
                    Some(layout) => self.sched.on_header(now, conn, layout),
                    None => self.on_unproven_claim(now, conn, &claim),
                }
            }
            SourceEvent::Segment {
                conn,
                segment,
                data,
                verified,
            } => self.on_segment(conn, segment, data, verified).await?,
            SourceEvent::Cancelled { conn, segment } => self.sched.on_cancelled(now, conn, segment),
            SourceEvent::TableWait { conn, waiting } => {
                self.sched.on_table_wait(now, conn, waiting)
            }
            SourceEvent::Closed { conn, error } => {
                if let Some(handle) = self.conns.remove(&conn) {
                    // "Busy" (code 5) comes from a server that works but is full: retried
                    // with backoff like any lost connection, never given up.
                    if let SourceError::Server {
                        code: arsnet_proto::wire::ErrorCode::Internal,
                        ..
                    } = &error
                    {
                        self.sched.on_answered(conn);
                    }
                    // An HTTP error status is no valid header: a mirror answering 404, 403
                    // or 500 to every try is given up after `max_tries` like one that never
                    // answers (a job holding verified data keeps retrying it), and waits at
                    // least as long as its `Retry-After` asks between tries.
                    let retry_after = match &error {
                        SourceError::HttpStatus { retry_after, .. } => {
                            retry_after.map(Duration::from_secs)
                        }
                        _ => None,
                    };
                    let blames = error.blames_source();
                    let error = error.to_string();
                    info!(job = self.spec.id, server = %self.meters[handle.server].address, %error, "connection lost");
                    self.close_conn(handle, error.clone());
                    match retry_after {
                        None if blames => self.sched.on_refused(now, conn, error),
                        Some(delay) => self
                            .sched
                            .on_disconnected_retry_after(now, conn, &error, delay),
                        None => self.sched.on_disconnected(now, conn, &error),
                    }
                }
            }
        }
        Ok(())
    }

    /// A source that claims no identity of its own (a mirror) finished its handshake. In a
    /// job with sources that do, it follows the decided content, if its file can be it; in a
    /// job of such sources alone its claim's size is its vote ([`Claim::size_vote`]).
    fn on_unproven_claim(&mut self, now: Duration, conn: ConnId, claim: &Claim) {
        if let Some(reason) = self.manifest.as_ref().and_then(|m| claim.contradicts(m)) {
            self.sched.on_refused(now, conn, reason);
            return;
        }
        if !self.spec.mirrors_only() {
            self.sched.on_follower_ready(now, conn);
            return;
        }
        match claim.size_vote(self.spec.mirror_file_name(), self.spec.pin) {
            Ok(Some(manifest)) => {
                let layout = layout_of(&manifest);
                if let Some(handle) = self.conns.get_mut(&conn) {
                    // Kept like a server's manifest: the store is created from the winner's.
                    handle.claim = Some(Claim::Manifest(manifest));
                }
                self.sched.on_header(now, conn, layout);
            }
            Ok(None) => self.sched.on_follower_ready(now, conn),
            Err(reason) => self.sched.on_refused(now, conn, reason),
        }
    }

    async fn on_segment(
        &mut self,
        conn: ConnId,
        segment: u64,
        data: Vec<u8>,
        verified: bool,
    ) -> Result<(), DownloadError> {
        if !verified {
            if let Some(handle) = self.conns.get(&conn) {
                warn!(job = self.spec.id, server = %self.meters[handle.server].address, segment, "segment failed verification; blaming server");
            }
        }
        let now = self.now();
        if self.sched.on_segment(now, conn, segment, verified) != SegmentVerdict::Store {
            self.ctx.buffers.give(data);
            return Ok(());
        }
        self.bytes_done += data.len() as u64;
        if let Some(handle) = self.conns.get(&conn) {
            let server = handle.server;
            self.provenance.insert(segment, server);
            self.sample(server, segment, &data);
        }
        let Some(writer) = self.writer.clone() else {
            return Err(self.writer_failure().await);
        };
        let sent = match writer.try_send(WriteMsg::Segment { segment, data }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) => {
                // The disk is behind: until it takes this segment the job reads no
                // connection, and the scheduler must not take that silence for a stall.
                self.sched.on_storage_busy(self.now());
                let sent = writer.send(msg).await.map_err(|_| ());
                self.sched.on_storage_ready(self.now());
                sent
            }
            Err(TrySendError::Closed(_)) => Err(()),
        };
        if sent.is_err() {
            self.writer = None;
            return Err(self.writer_failure().await);
        }
        Ok(())
    }

    /// Why the writer stopped (it always reports before it goes), as the job's failure.
    async fn writer_failure(&mut self) -> DownloadError {
        let Some(reports) = self.reports.as_mut() else {
            return DownloadError::WriterStopped;
        };
        while let Some(report) = reports.recv().await {
            match report {
                WriteReport::Durable(n) => self.durable += n,
                WriteReport::Failed(reason) => return DownloadError::Storage(reason),
                WriteReport::Closed | WriteReport::Finished(_) | WriteReport::CheckFailed(_) => {
                    break
                }
            }
        }
        DownloadError::WriterStopped
    }

    /// Once the scheduler accepted a content (pin, or majority), creates the store from the
    /// manifest of a connection that serves it.
    async fn open_store_once_decided(&mut self) -> Result<(), DownloadError> {
        if self.manifest.is_some() {
            return Ok(());
        }
        let Some(layout) = self.sched.layout() else {
            return Ok(());
        };
        let manifest = self
            .conns
            .values()
            .filter_map(|h| h.claim.as_ref())
            .filter(|c| c.layout() == Some(layout))
            .find_map(|c| c.manifest())
            .cloned();
        // Every source of the winning content dropped since: the next one to finish its
        // handshake brings the manifest.
        let Some(manifest) = manifest else {
            return Ok(());
        };
        let store = match storage::open_store(&self.spec, &self.dir, &manifest).await? {
            Opened::Created(store) => {
                self.owner_tag = Some(self.spec.tag);
                store
            }
            Opened::Adopted(store, mut adopted) => {
                self.count_adopted(&mut adopted, &manifest);
                let now = self.now();
                self.sched.on_stored_elsewhere(now, &adopted.segments);
                store
            }
            Opened::AlreadySaved(path) => {
                // Every segment is there, and nothing was fetched by this run.
                let all: Vec<u64> = (0..manifest.segment_count()).collect();
                let now = self.now();
                self.sched.on_stored_elsewhere(now, &all);
                self.found_finished = Some(manifest.size);
                self.bytes_done = manifest.size;
                self.adopted_bytes = manifest.size;
                self.set_manifest(manifest);
                self.already_saved = Some(path);
                return Ok(());
            }
        };
        self.start_writer(*store);
        self.set_manifest(manifest);
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), DownloadError> {
        self.finishing = true;
        self.activity = Activity::Finishing;
        self.cross_check.stop();
        self.close_all("download complete");
        let writer = self.writer.as_ref().ok_or(DownloadError::NoStorage)?;
        let finish = Finish {
            overwrite: self.spec.overwrite,
            give_to: self.spec.give_to,
            check: self.spec.end_check(),
        };
        writer
            .send(WriteMsg::Finish(finish))
            .await
            .map_err(|_| DownloadError::WriterStoppedBeforeFinalizing)
    }

    /// The finished dump is not the pinned content: find the mirrors that sent the bad
    /// bytes (see `repair`), blame them, and fetch what they sent again from the others; the
    /// job then finishes (and is checked) once more. `Err` when that cannot be done.
    async fn repair(&mut self, mismatch: Mismatch) -> Result<(), DownloadError> {
        let fail = |repair: String| DownloadError::NotThePinned {
            algorithm: mismatch.algorithm,
            got: mismatch.got,
            pinned: mismatch.pinned,
            repair,
        };
        let manifest = self.manifest.clone().ok_or(DownloadError::NoStorage)?;
        if !manifest.is_unproven() {
            // Every segment was proven against an ArsNet server's digests: the content
            // itself is not the pinned one, and no source is to blame.
            return Err(fail("its segments match the servers' digests: the servers serve other content than pinned".into()));
        }
        // Still Finishing while referees are asked: the job is verifying its file. Rounds
        // that clear every suspect sample more, in case a mirror lies only now and then.
        let referees = self.referees(&manifest);
        let verdict = loop {
            if self.repairs >= repair::MAX_ROUNDS {
                return Err(fail(format!(
                    "after {} rounds of sampling, every mirror's segments match the others': the \
                     mirrors serve this file, and it is not the pinned one",
                    self.repairs
                )));
            }
            let verdict =
                repair::find_culprits(&mismatch, &self.provenance, self.repairs, &referees).await;
            self.repairs += 1;
            if !verdict.refetch.is_empty() {
                break verdict;
            }
            if let Some(why) = verdict.undecided {
                return Err(fail(why));
            }
        };
        for (server, reason) in &verdict.culprits {
            warn!(job = self.spec.id, server = %self.meters[*server].address, %reason, "whole-file check failed: mirror blamed, its segments fetched again");
        }
        self.excluded.extend(verdict.culprits);
        self.refetch(&manifest, &verdict.refetch);
        Ok(())
    }

    /// Starts a cross-check of `segment` as `server` delivered it, if one is due: only in a
    /// job of mirrors alone (elsewhere a digest table proved it) with a mirror to ask.
    fn sample(&mut self, server: usize, segment: u64, data: &[u8]) {
        let Some(manifest) = self.manifest.clone().filter(|m| m.is_unproven()) else {
            return;
        };
        let others =
            (0..self.spec.sources.len()).any(|s| s != server && !self.excluded.contains_key(&s));
        if !others || !self.cross_check.wants(server) {
            return;
        }
        let digest = digest_segment(manifest.size, manifest.segment_size, segment, data);
        let referees = self.referees(&manifest);
        tracing::debug!(job = self.spec.id, server = %self.spec.sources[server], segment, "cross-check: sampling a delivered segment");
        self.cross_check.start(referees, server, segment, digest);
    }

    /// What a cross-check found: a convicted source is excluded at once, and what it
    /// delivered is fetched again once the rest is in.
    fn on_cross_check(&mut self, finding: cross_check::Finding) {
        let sources = &self.spec.sources;
        tracing::debug!(job = self.spec.id, server = %sources[finding.source], segment = finding.segment, ruling = ?finding.ruling, "cross-check: ruled");
        let Some((server, reason)) = cross_check::culprit(&finding, |i| sources[i].to_string())
        else {
            if !matches!(finding.ruling, repair::Ruling::Agreed) {
                warn!(job = self.spec.id, server = %sources[finding.source], segment = finding.segment, ruling = ?finding.ruling, "cross-check could not settle a segment");
            }
            return;
        };
        if self.excluded.contains_key(&server) {
            return;
        }
        warn!(job = self.spec.id, server = %sources[server], %reason, "mirror blamed while downloading; its segments will be fetched again");
        let now = self.now();
        self.sched.exclude(now, server, reason.clone());
        self.excluded.insert(server, reason);
        let theirs: Vec<u64> = self
            .provenance
            .iter()
            .filter(|&(_, &s)| s == server)
            .map(|(&segment, _)| segment)
            .collect();
        // At once, on the connections that run (their TCP windows are open): waiting for
        // the rest and then reconnecting left the other links idle twice over.
        if self.sched.redo(now, &theirs) {
            self.forget_delivered(&theirs);
            self.redo_pending.extend(theirs);
        } else {
            self.tainted.extend(theirs);
        }
    }

    /// `segments` are to be fetched again: who delivered them, and their bytes, no longer
    /// count.
    fn forget_delivered(&mut self, segments: &[u64]) {
        let Some(manifest) = self.manifest.clone() else {
            return;
        };
        for segment in segments {
            self.provenance.remove(segment);
            self.bytes_done = self
                .bytes_done
                .saturating_sub(u64::from(manifest.segment_range(*segment).1));
        }
    }

    /// Who may be asked for a segment again: every source not excluded, fastest first. In
    /// a job's first second no rate is measured yet; then the bytes each source has sent so
    /// far tell the fast links from the slow ones. That matters: a referee's request is a
    /// new TCP connection, and on a slow link with a deep queue it leaves slow start only
    /// after seconds, so a first sample asked of the slowest link first took 5 s to rule.
    fn referees(&self, manifest: &Arc<Manifest>) -> Referees {
        let mut received = vec![0u64; self.spec.sources.len()];
        for (server, meter) in self.meters.iter().enumerate() {
            received[server] = meter.bytes_closed;
        }
        for handle in self.conns.values() {
            if let Some(r) = received.get_mut(handle.server) {
                *r += handle.counters.payload.load(Ordering::Relaxed);
            }
        }
        let mut order: Vec<usize> = (0..self.spec.sources.len()).collect();
        order.sort_by_key(|&s| {
            let rate = self.meters.get(s).map_or(0, |m| m.rate.rate());
            std::cmp::Reverse((rate, received[s]))
        });
        Referees {
            client: self.ctx.http.clone(),
            sources: self.spec.sources.clone().into(),
            order,
            ask_timeout: self.spec.config.stall_timeout,
            excluded: self.excluded.keys().copied().collect(),
            manifest: manifest.clone(),
            buffers: self.ctx.buffers.clone(),
        }
    }

    /// Runs the job again for `segments` only, without the excluded sources.
    fn refetch(&mut self, manifest: &Manifest, segments: &[u64]) {
        let again: BTreeSet<u64> = segments.iter().copied().collect();
        let done: Vec<u64> = (0..manifest.segment_count())
            .filter(|s| !again.contains(s))
            .collect();
        let now = self.now();
        self.sched = scheduler_for(&self.spec, Some((layout_of(manifest), &done)), now);
        for (&server, reason) in &self.excluded {
            self.sched.exclude(now, server, reason.clone());
        }
        let again: Vec<u64> = again.into_iter().collect();
        self.forget_delivered(&again);
        self.finishing = false;
        self.activity = Activity::Transferring;
    }

    fn close_all(&mut self, reason: &str) {
        let handles: Vec<_> = self.conns.drain().map(|(_, h)| h).collect();
        for handle in handles {
            // A connection that never got ready (a retry still connecting when the job
            // ended) says nothing new of its source: the reason its last attempt failed
            // stays what `status` shows, not "download complete".
            let kept = self
                .meters
                .get(handle.server)
                .filter(|m| handle.claim.is_none() && !m.last_error.is_empty())
                .map(|m| m.last_error.clone());
            self.close_conn(handle, kept.unwrap_or_else(|| reason.to_string()));
        }
    }

    /// Ends the job with `reason`, leaving the partial files at a durable point.
    async fn abort(&mut self, reason: DownloadError) -> Outcome {
        warn!(job = self.spec.id, %reason, "download failed");
        self.close_all("job failed");
        self.close_writer(false).await;
        Outcome::Failed(reason)
    }

    async fn stop(&mut self, discard: bool, outcome: Outcome) -> Outcome {
        self.close_all("job stopped");
        if let Some(reason) = self.close_writer(discard).await {
            return Outcome::Failed(DownloadError::Storage(reason));
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
    async fn close_writer(&mut self, discard: bool) -> Option<super::writer::WriteError> {
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
                WriteReport::Closed | WriteReport::Finished(_) | WriteReport::CheckFailed(_) => {
                    return None
                }
            }
        }
        None
    }

    /// Feeds the bytes each connection received since the last sample to the scheduler
    /// (zero is no progress, and the scheduler knows it), and updates the rate meters.
    fn sample_progress(&mut self) {
        let now = self.now();
        for (&conn, handle) in self.conns.iter_mut() {
            let total = handle.counters.total();
            let delta = total.saturating_sub(handle.sampled);
            handle.sampled = total;
            if let Some(meter) = self.meters.get_mut(handle.server) {
                meter.bytes_open = handle.counters.payload.load(Ordering::Relaxed);
            }
            self.sched.on_progress(now, conn, delta);
        }
        let instant = Instant::now();
        for meter in &mut self.meters {
            let bytes = meter.bytes();
            meter.rate.sample(bytes, instant);
        }
    }

    /// What the job is doing, as facts: the daemon decides the job's state from them.
    fn snapshot(&self) -> Progress {
        let activity = match (self.activity, self.sched.phase()) {
            (Activity::Transferring, Phase::Waiting) => Activity::Waiting,
            (activity, _) => activity,
        };
        let sources = sources_info(&self.sched, &self.meters, self.now());
        Progress {
            activity,
            name: self.manifest.as_ref().map(|m| m.name.clone()),
            figures: RunFigures {
                size: self
                    .manifest
                    .as_ref()
                    .map(|m| m.size)
                    .or(self.found_finished),
                segments_total: self.sched.segment_count(),
                segments_done: self.sched.segments_done(),
                bytes_done: self.bytes_done,
                adopted_segments: self.adopted,
                fetched_bytes: self.bytes_done.saturating_sub(self.adopted_bytes),
                elapsed_ms: self.started.elapsed().as_millis() as u64,
            },
            rate_bps: sources.iter().map(|s| s.rate_bps).sum(),
            sources,
            content: self.manifest.as_ref().and_then(|m| self.shown_content(m)),
            owner_tag: self.owner_tag,
        }
    }

    /// The BLAKE3 to show for the content: the manifest's root, or for an unproven layout
    /// (mirrors only) the user's BLAKE3 pin, checked at the end; none with a SHA-256 pin or
    /// `--no-verify` (the layout's root is no file's hash).
    fn shown_content(&self, manifest: &Manifest) -> Option<arsnet_proto::Digest> {
        match (manifest.is_unproven(), self.spec.pin) {
            (false, _) => Some(manifest.root),
            (true, Some(Pin::Blake3(pin))) => Some(pin),
            (true, _) => None,
        }
    }

    fn publish(&self) {
        self.progress.send_replace(self.snapshot());
    }

    /// The scheduler's reason, with each source named as the user named it.
    fn failure(&self, reason: FailReason) -> DownloadError {
        match reason {
            FailReason::Unreachable(ends) => {
                let address = |i: usize| self.meters.get(i).map(|m| m.address.clone());
                let attempts = ends
                    .iter()
                    .filter_map(|e| match e {
                        ServerEnd::GaveUp { attempts, .. } => Some(*attempts),
                        ServerEnd::Blamed(_) => None,
                    })
                    .max()
                    .unwrap_or(self.spec.config.max_tries);
                let sources = ends
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, end)| {
                        let error = match end {
                            ServerEnd::GaveUp { last_error, .. } => last_error,
                            ServerEnd::Blamed(reason) => format!("blamed: {reason}"),
                        };
                        Some(SourceFailure {
                            address: address(i)?,
                            error,
                        })
                    })
                    .collect();
                DownloadError::Unreachable { attempts, sources }
            }
            // Each source with why it was ruled out, so that a cron mail says what to fix.
            FailReason::AllBlamed => DownloadError::AllBlamed(
                self.meters
                    .iter()
                    .enumerate()
                    .map(|(i, m)| SourceFailure {
                        address: m.address.clone(),
                        error: match self.sched.server_state(i) {
                            arsnet_sched::ServerState::Blamed(reason) => reason.clone(),
                            other => format!("{other:?}"),
                        },
                    })
                    .collect(),
            ),
            other => DownloadError::AllSourcesFailed(other),
        }
    }

    /// The failure of an election without a strict majority: which sources serve which
    /// content.
    fn disagreement(&self, votes: &[ContentVotes]) -> DownloadError {
        let votes = votes
            .iter()
            .map(|v| ContentVote {
                content: (!self.spec.mirrors_only()).then_some(v.content),
                size: v.size,
                sources: v
                    .servers
                    .iter()
                    .filter_map(|&s| self.meters.get(s).map(|m| m.address.clone()))
                    .collect(),
            })
            .collect();
        DownloadError::Disagreement(votes)
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
