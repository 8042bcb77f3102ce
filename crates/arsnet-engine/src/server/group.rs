//! A server group: one file, its manifest, and one virtual server per port. Ports can be
//! stopped (listener closed, connections cut, as when the spec's server dies) and started
//! again independently; the file is opened once and never loaded into memory.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arsnet_proto::control::{GroupId, GroupInfo, PortInfo};
use arsnet_proto::limits::SERVER_MAX_CONNECTION_TASKS_PER_PORT;
use arsnet_proto::manifest::choose_segment_size;
use arsnet_proto::wire::{ErrorCode, ServerFrame};
use arsnet_proto::{validate_file_name, Manifest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::{Admission, Limits};
use super::connection::{serve_connection, ConnError};
use super::digests::{build_stamped_manifest, FileStamp};
use super::validate::{validate_ports, ServeError};
use crate::rate::{RateMeter, TokenBucket};
use crate::{human_bytes, human_rate};
use arsnet_store::dir::{file_id, FileId};

/// What `serve` asks for.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub file: PathBuf,
    pub count: u32,
    pub ports: Vec<u16>,
    pub bind: String,
    pub rate: Option<u64>,
    pub status_interval: Duration,
    /// Override of the segment size (tests use small segments); `None` picks by file size.
    pub segment_size: Option<u32>,
    /// Where digests are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// The file the group must serve, when its caller proved it could read that very file:
    /// whatever is found at `file` is refused unless it is this one (checked on the open
    /// descriptor, before anything is hashed or bound).
    pub expect_file: Option<FileId>,
}

/// The served file, shared by every connection of every port of a group.
pub(crate) struct Served {
    pub file: File,
    pub manifest: Manifest,
    /// HEADER + DIGESTS frames, encoded once.
    pub preamble: Vec<u8>,
    /// The open file's stamp (size, mtime, ctime, inode, device) when hashing began: any
    /// change means the digests may no longer hold.
    stamp: FileStamp,
}

impl Served {
    /// True if the open file still is as it was hashed. ctime is what catches an in-place
    /// edit whose size and mtime were put back.
    pub fn unchanged(&self) -> bool {
        match self.file.metadata() {
            Ok(m) => FileStamp::of(&m) == self.stamp,
            Err(_) => false,
        }
    }
}

/// The file a group serves, swapped for a freshly hashed one when it is changed in place,
/// so that new connections get the new content under its own digests.
pub(crate) struct ServedFile {
    current: std::sync::RwLock<Arc<Served>>,
    changed: tokio::sync::Notify,
}

impl ServedFile {
    fn new(served: Served) -> Self {
        ServedFile {
            current: std::sync::RwLock::new(Arc::new(served)),
            changed: Default::default(),
        }
    }

    /// The file as currently hashed.
    pub fn get(&self) -> Arc<Served> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The file for a connection that is about to get its header: `None` if the file
    /// changed in place since it was hashed (its digests must not be sent; a re-hash is
    /// scheduled). A file replaced at its path (renamed over) is not a change: the open
    /// file still matches its digests and goes on being served, as README promises.
    pub fn for_new_connection(&self) -> Option<Arc<Served>> {
        let served = self.get();
        if served.unchanged() {
            Some(served)
        } else {
            self.report_change();
            None
        }
    }

    /// A connection saw the file change under it: schedule a re-hash.
    pub fn report_change(&self) {
        self.changed.notify_one();
    }

    fn replace(&self, served: Served) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(served);
    }
}

/// Counters of one virtual server.
#[derive(Debug, Default)]
pub(crate) struct PortStats {
    pub connections: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub segments_sent: AtomicU64,
    pub rate: AtomicU64,
    /// Connections closed to make room for a newcomer (the port or their source was full).
    pub evicted: AtomicU64,
    /// Newcomers turned away because every slot they could take was transferring.
    pub refused: AtomicU64,
}

enum PortRun {
    Listening {
        token: CancellationToken,
        task: JoinHandle<()>,
    },
    /// `closing` is the accept loop still shutting down: its listener is closed only once
    /// that task has ended, so a restart of the port waits for it before binding again.
    Stopped {
        closing: Option<JoinHandle<()>>,
    },
    Failed(String),
}

struct PortSlot {
    port: u16,
    stats: Arc<PortStats>,
    bucket: Option<Arc<TokenBucket>>,
    run: Mutex<PortRun>,
    /// Bumped (under `run`'s lock) by every stop and start, so a start that waited for the
    /// old listener can tell whether a later command overtook it.
    generation: AtomicU64,
    /// Serialises starts of this port: a second start waits for the first instead of racing
    /// it for the address.
    starting: tokio::sync::Mutex<()>,
}

/// A running group. Dropping it does not stop it: call [`ServerGroup::shutdown`].
pub struct ServerGroup {
    id: GroupId,
    path: PathBuf,
    bind: IpAddr,
    served: Arc<ServedFile>,
    slots: Vec<PortSlot>,
    shutdown: CancellationToken,
    /// The operator-stopped ports as they were when the group was shut down: shutting down
    /// stops every port, which must not be saved as if the operator had stopped them.
    stopped_at_shutdown: Mutex<Option<Vec<u16>>>,
}

/// Opens the served file by its path (a new group, or a restored one) and hashes it.
fn open_served(config: &GroupConfig) -> Result<Served, ServeError> {
    let bad = |reason: String| ServeError::BadFile {
        path: config.file.clone(),
        reason,
    };
    // Checked before opening, since opening a FIFO would block; and again on the open file,
    // which is what is served, in case the path changed in between.
    let meta = std::fs::metadata(&config.file).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let file = File::open(&config.file).map_err(|e| bad(e.to_string()))?;
    if let Some(expected) = config.expect_file {
        let found = file_id(&file).map_err(|e| bad(e.to_string()))?;
        if found != expected {
            return Err(bad(
                "it is not the file the request was made for (it was replaced); serve it again"
                    .into(),
            ));
        }
    }
    hash_served(config, file)
}

/// Hashes the open `file` as the group's served file. The re-hash after an in-place edit
/// comes here with the descriptor the group already serves: it never opens the path again,
/// so whatever was put at the path since (another file, a symlink to a secret) is never
/// served.
fn hash_served(config: &GroupConfig, file: File) -> Result<Served, ServeError> {
    let bad = |reason: String| ServeError::BadFile {
        path: config.file.clone(),
        reason,
    };
    let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let name = config
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| bad("has no file name".into()))?;
    validate_file_name(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let segment_size = config
        .segment_size
        .unwrap_or_else(|| choose_segment_size(meta.len()));
    let (manifest, stamp) = build_stamped_manifest(
        &file,
        &config.file,
        name,
        segment_size,
        config.cache_dir.as_deref(),
    )
    .map_err(|e| bad(e.to_string()))?;
    let mut preamble = Vec::new();
    arsnet_proto::wire::encode_manifest(&manifest, &mut preamble);
    Ok(Served {
        file,
        manifest,
        preamble,
        stamp,
    })
}

fn bind_port(bind: IpAddr, port: u16) -> Result<TcpListener, ServeError> {
    let unavailable = |e: std::io::Error| ServeError::PortUnavailable {
        port,
        reason: e.to_string(),
    };
    let listener = std::net::TcpListener::bind(SocketAddr::new(bind, port)).map_err(unavailable)?;
    listener.set_nonblocking(true).map_err(unavailable)?;
    TcpListener::from_std(listener).map_err(unavailable)
}

impl ServerGroup {
    /// Validates everything, hashes the file (or loads cached digests), binds every port and
    /// starts serving. On any error nothing is left running.
    pub async fn start(id: GroupId, config: GroupConfig) -> Result<Arc<Self>, ServeError> {
        Self::start_inner(id, config, &[], true).await
    }

    /// Restores a group after a daemon restart: ports in `stopped` stay stopped, and a port
    /// that cannot be bound is marked failed instead of failing the whole group.
    pub async fn restore(
        id: GroupId,
        config: GroupConfig,
        stopped: &[u16],
    ) -> Result<Arc<Self>, ServeError> {
        Self::start_inner(id, config, stopped, false).await
    }

    async fn start_inner(
        id: GroupId,
        config: GroupConfig,
        stopped: &[u16],
        strict: bool,
    ) -> Result<Arc<Self>, ServeError> {
        validate_ports(config.count, &config.ports)?;
        let bind: IpAddr = config
            .bind
            .parse()
            .map_err(|_| ServeError::BadBind(config.bind.clone()))?;
        let cfg = config.clone();
        let served = tokio::task::spawn_blocking(move || open_served(&cfg))
            .await
            .map_err(|e| ServeError::Internal(format!("hashing task failed: {e}")))??;
        let served = Arc::new(ServedFile::new(served));

        // Bind everything before serving anything, so that a failure leaves nothing behind.
        let mut listeners = Vec::new();
        for &port in &config.ports {
            if stopped.contains(&port) {
                listeners.push(Ok(None));
                continue;
            }
            match bind_port(bind, port) {
                Ok(l) => listeners.push(Ok(Some(l))),
                Err(e) if strict => return Err(e),
                Err(e) => listeners.push(Err(e.to_string())),
            }
        }

        let shutdown = CancellationToken::new();
        let mut slots = Vec::new();
        for (&port, listener) in config.ports.iter().zip(listeners) {
            let stats = Arc::new(PortStats::default());
            let bucket = config.rate.map(|r| Arc::new(TokenBucket::new(r)));
            let run = match listener {
                Ok(Some(listener)) => {
                    let token = shutdown.child_token();
                    let task =
                        spawn_accept_loop(listener, &served, &stats, &bucket, token.clone(), port);
                    PortRun::Listening { token, task }
                }
                Ok(None) => PortRun::Stopped { closing: None },
                Err(reason) => {
                    warn!(group = id, port, %reason, "virtual server failed to listen");
                    PortRun::Failed(reason)
                }
            };
            slots.push(PortSlot {
                port,
                stats,
                bucket,
                run: Mutex::new(run),
                generation: AtomicU64::new(0),
                starting: tokio::sync::Mutex::new(()),
            });
        }
        let group = Arc::new(ServerGroup {
            id,
            path: config.file.clone(),
            bind,
            served,
            slots,
            shutdown,
            stopped_at_shutdown: Mutex::new(None),
        });
        spawn_status_task(
            Arc::downgrade(&group),
            config.status_interval,
            group.shutdown.clone(),
        );
        spawn_rehash_task(group.served.clone(), config.clone(), group.shutdown.clone());
        info!(
            group = id,
            file = %config.file.display(),
            size = group.served.get().manifest.size,
            segments = group.served.get().manifest.segment_count(),
            ports = ?config.ports,
            "server group started"
        );
        Ok(group)
    }

    pub fn id(&self) -> GroupId {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn ports(&self) -> Vec<u16> {
        self.slots.iter().map(|s| s.port).collect()
    }

    /// Ports currently stopped by the operator (persisted so a restart keeps them stopped).
    pub fn stopped_ports(&self) -> Vec<u16> {
        if let Some(stopped) = lock(&self.stopped_at_shutdown).as_ref() {
            return stopped.clone();
        }
        self.slots
            .iter()
            .filter(|s| matches!(*lock(&s.run), PortRun::Stopped { .. }))
            .map(|s| s.port)
            .collect()
    }

    fn slot(&self, port: u16) -> Result<&PortSlot, ServeError> {
        self.slots
            .iter()
            .find(|s| s.port == port)
            .ok_or(ServeError::UnknownPort(port))
    }

    /// Abruptly stops one virtual server: its listener closes and its connections are cut.
    pub fn stop_port(&self, port: u16) -> Result<(), ServeError> {
        let slot = self.slot(port)?;
        let mut run = lock(&slot.run);
        if let PortRun::Listening { token, .. } = &*run {
            token.cancel();
        }
        let previous = std::mem::replace(&mut *run, PortRun::Stopped { closing: None });
        *run = match previous {
            PortRun::Listening { task, .. } => PortRun::Stopped {
                closing: Some(task),
            },
            PortRun::Stopped { closing } => PortRun::Stopped { closing },
            PortRun::Failed(_) => PortRun::Stopped { closing: None },
        };
        slot.generation.fetch_add(1, Ordering::SeqCst);
        info!(group = self.id, port, "virtual server stopped");
        Ok(())
    }

    /// Brings a stopped (or failed) virtual server back. Waits for a just-stopped listener
    /// to close first, so `stop-server P; start-server P` always works.
    pub async fn start_port(&self, port: u16) -> Result<(), ServeError> {
        let slot = self.slot(port)?;
        let _one_start_at_a_time = slot.starting.lock().await;
        let (closing, generation) = {
            let mut run = lock(&slot.run);
            let closing = match &mut *run {
                PortRun::Listening { .. } => return Ok(()),
                PortRun::Stopped { closing } => closing.take(),
                PortRun::Failed(_) => None,
            };
            (closing, slot.generation.load(Ordering::SeqCst))
        };
        if let Some(task) = closing {
            // The loop ends at once once cancelled; a panic in it still closed the listener.
            let _ = task.await;
        }
        let mut run = lock(&slot.run);
        if matches!(*run, PortRun::Listening { .. })
            || slot.generation.load(Ordering::SeqCst) != generation
        {
            // Another start, or a stop issued after this start, got there first: the last
            // command wins.
            return Ok(());
        }
        if self.shutdown.is_cancelled() {
            return Err(ServeError::Internal(format!(
                "group {} has been shut down",
                self.id
            )));
        }
        let listener = bind_port(self.bind, port)?;
        let token = self.shutdown.child_token();
        let task = spawn_accept_loop(
            listener,
            &self.served,
            &slot.stats,
            &slot.bucket,
            token.clone(),
            port,
        );
        *run = PortRun::Listening { token, task };
        slot.generation.fetch_add(1, Ordering::SeqCst);
        info!(group = self.id, port, "virtual server started");
        Ok(())
    }

    /// Stops every port of the group for good; returns once every listener is closed, so
    /// the ports can be served again at once.
    pub async fn shutdown(&self) {
        {
            let mut snapshot = lock(&self.stopped_at_shutdown);
            if snapshot.is_none() {
                let stopped = self
                    .slots
                    .iter()
                    .filter(|s| matches!(*lock(&s.run), PortRun::Stopped { .. }))
                    .map(|s| s.port)
                    .collect();
                *snapshot = Some(stopped);
            }
        }
        self.shutdown.cancel();
        let mut closing = Vec::new();
        for slot in &self.slots {
            let previous =
                std::mem::replace(&mut *lock(&slot.run), PortRun::Stopped { closing: None });
            slot.generation.fetch_add(1, Ordering::SeqCst);
            match previous {
                PortRun::Listening { task, .. }
                | PortRun::Stopped {
                    closing: Some(task),
                } => closing.push(task),
                _ => {}
            }
        }
        for task in closing {
            let _ = task.await;
        }
    }

    pub fn info(&self) -> GroupInfo {
        GroupInfo {
            id: self.id,
            file: self.path.clone(),
            name: self.served.get().manifest.name.clone(),
            size: self.served.get().manifest.size,
            blake3: self.served.get().manifest.root,
            bind: self.bind.to_string(),
            ports: self.slots.iter().map(port_info).collect(),
        }
    }
}

fn port_info(slot: &PortSlot) -> PortInfo {
    let (state, detail) = match &*lock(&slot.run) {
        PortRun::Listening { .. } => ("listening", String::new()),
        PortRun::Stopped { .. } => ("stopped", String::new()),
        PortRun::Failed(reason) => ("failed", reason.clone()),
    };
    PortInfo {
        port: slot.port,
        state: state.into(),
        detail,
        connections: slot.stats.connections.load(Ordering::Relaxed),
        bytes_sent: slot.stats.bytes_sent.load(Ordering::Relaxed),
        segments_sent: slot.stats.segments_sent.load(Ordering::Relaxed),
        rate_bps: slot.stats.rate.load(Ordering::Relaxed),
    }
}

/// A poisoned lock only means another task panicked while holding it; the state inside
/// (an enum) is still coherent, so keep serving rather than cascade the panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawn_accept_loop(
    listener: TcpListener,
    served: &Arc<ServedFile>,
    stats: &Arc<PortStats>,
    bucket: &Option<Arc<TokenBucket>>,
    token: CancellationToken,
    port: u16,
) -> JoinHandle<()> {
    let served = served.clone();
    let stats = stats.clone();
    let bucket = bucket.clone();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(10);
        // Who holds the port's connection slots; a newcomer may evict an idle one.
        let admission = Admission::new(Limits::default());
        // Taken before accept, and held by a connection's task to its very end (evicted ones
        // included): a hard bound on tasks and buffers even under a flood of connects, past
        // which clients wait in the kernel's backlog.
        let permits = Arc::new(Semaphore::new(SERVER_MAX_CONNECTION_TASKS_PER_PORT));
        loop {
            let accepted = tokio::select! {
                _ = token.cancelled() => break,
                accepted = async {
                    let permit = permits.clone().acquire_owned().await;
                    (listener.accept().await, permit)
                } => accepted,
            };
            let (accepted, Ok(permit)) = accepted else {
                break;
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(10);
                    let ticket = match admission.admit(peer.ip(), Instant::now()) {
                        Ok((ticket, evicted)) => {
                            if let Some(phase) = evicted {
                                stats.evicted.fetch_add(1, Ordering::Relaxed);
                                debug!(port, %peer, ?phase, "slots full: evicted the longest-idle connection");
                            }
                            ticket
                        }
                        Err(refusal) => {
                            // Per-connection logs stay at debug: a flood must not flood the
                            // log too; the status line counts refusals.
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            debug!(port, %peer, %refusal, "connection refused");
                            refuse(&stream, &refusal.to_string());
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let (served, stats, bucket, token) =
                        (served.clone(), stats.clone(), bucket.clone(), token.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        stats.connections.fetch_add(1, Ordering::Relaxed);
                        // The connection itself notices eviction between frames (and says
                        // why); the last branch cuts one stuck in a write.
                        let result = tokio::select! {
                            biased;
                            _ = token.cancelled() => Ok(()),
                            r = serve_connection(stream, &served, &stats, bucket.as_deref(), &ticket) => r,
                            _ = ticket.evicted.cancelled() => Err(ConnError::Evicted),
                        };
                        drop(ticket);
                        stats.connections.fetch_sub(1, Ordering::Relaxed);
                        match result {
                            Ok(()) => tracing::debug!(port, %peer, "connection closed"),
                            Err(e) => tracing::debug!(port, %peer, error = %e, "connection ended"),
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(port, error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    })
}

/// Turns a newcomer away with an ERROR frame saying why. Best effort and never waiting: a
/// fresh socket's send buffer is empty, and a client being refused gets no more of our time.
fn refuse(stream: &TcpStream, message: &str) {
    let mut frame = Vec::new();
    ServerFrame::Error {
        code: ErrorCode::Internal,
        message: message.into(),
    }
    .encode(&mut frame);
    let _ = stream.try_write(&frame);
}

/// Re-hashes the file after a connection reported that it changed in place: waits until its
/// stamp (size, mtime, ctime, inode, device) has held still for a second (a
/// writer may still be at it), then hashes it anew and swaps it in. Downloads of the old
/// content then see a different header and fail clearly instead of ever receiving mixed
/// bytes.
/// Re-hashes what the group serves through the descriptor it already holds (see
/// [`hash_served`]).
fn rehash_open(served: &ServedFile, config: &GroupConfig) -> Result<Served, ServeError> {
    let file = served
        .get()
        .file
        .try_clone()
        .map_err(|e| ServeError::BadFile {
            path: config.file.clone(),
            reason: e.to_string(),
        })?;
    hash_served(config, file)
}

fn spawn_rehash_task(served: Arc<ServedFile>, config: GroupConfig, shutdown: CancellationToken) {
    tokio::spawn(async move {
        // The open file's stamp, not the path's: the group serves its descriptor, whatever is
        // at the path now.
        let fingerprint =
            |served: &ServedFile| served.get().file.metadata().ok().map(|m| FileStamp::of(&m));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = served.changed.notified() => {}
            }
            // Reports that arrived while the last re-hash ran may be about the file it
            // already hashed.
            let current = served.get();
            if current.unchanged() {
                continue;
            }
            drop(current);
            let mut last = fingerprint(&served);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let now = fingerprint(&served);
                if now == last {
                    break;
                }
                last = now;
            }
            let (cfg, held) = (config.clone(), served.clone());
            match tokio::task::spawn_blocking(move || rehash_open(&held, &cfg)).await {
                Ok(Ok(fresh)) => {
                    info!(
                        file = %config.file.display(),
                        size = fresh.manifest.size,
                        "served file changed on disk: re-hashed, new connections get the new content"
                    );
                    served.replace(fresh);
                }
                Ok(Err(e)) => {
                    warn!(file = %config.file.display(), error = %e, "served file changed and cannot be re-hashed")
                }
                Err(e) => warn!(error = %e, "re-hash task failed"),
            }
        }
    });
}

/// Samples each port's rate every second and logs every port's status every
/// `interval` (the spec's `-i`).
fn spawn_status_task(
    group: std::sync::Weak<ServerGroup>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let interval = interval.max(Duration::from_secs(1));
        let mut meters: Vec<RateMeter> = Vec::new();
        let mut last_report = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(group) = group.upgrade() else { break };
            let now = Instant::now();
            meters.resize_with(group.slots.len(), || RateMeter::new(now));
            for (slot, meter) in group.slots.iter().zip(&mut meters) {
                let rate = meter.sample(slot.stats.bytes_sent.load(Ordering::Relaxed), now);
                slot.stats.rate.store(rate, Ordering::Relaxed);
            }
            if now.duration_since(last_report) >= interval {
                last_report = now;
                for slot in &group.slots {
                    let p = port_info(slot);
                    info!(
                        group = group.id,
                        port = p.port,
                        state = %p.state,
                        connections = p.connections,
                        evicted = slot.stats.evicted.load(Ordering::Relaxed),
                        refused = slot.stats.refused.load(Ordering::Relaxed),
                        sent = %human_bytes(p.bytes_sent),
                        segments = p.segments_sent,
                        rate = %human_rate(p.rate_bps),
                        "server status"
                    );
                }
            }
        }
    });
}
