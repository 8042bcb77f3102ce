//! A server group: one file, its manifest, and one virtual server per port. Ports can be
//! stopped (listener closed, connections cut, as when the spec's server dies) and started
//! again independently; the file is opened once and never loaded into memory.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arsnet_proto::control::{GroupId, GroupInfo, PortInfo, PortState};
use arsnet_proto::limits::SERVER_MAX_CONNECTION_TASKS_PER_PORT;
use arsnet_proto::wire::{ErrorCode, ServerFrame};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::admission::{Admission, Limits, Ticket};
use super::config::GroupConfig;
use super::connection::{serve_connection, ConnError};
use super::served::{open_served, spawn_rehash_task, PortStats, ServedFile};
use super::validate::{validate_ports, ServeError};
use crate::rate::{RateMeter, TokenBucket};
use arsnet_proto::units::{human_bytes, human_rate};

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
    /// The ports also answer HTTP (`serve --http`).
    http: bool,
    /// The operator-stopped ports as they were when the group was shut down: shutting down
    /// stops every port, which must not be saved as if the operator had stopped them.
    stopped_at_shutdown: Mutex<Option<Vec<u16>>>,
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

/// Binds every port not in `stopped`, before anything is served, so that a failure leaves
/// nothing behind. With `strict`, a port that cannot be bound fails the whole group;
/// otherwise (a restore) it is recorded as failed. `Ok(None)`: left stopped.
#[allow(clippy::type_complexity)]
fn bind_all(
    bind: IpAddr,
    ports: &[u16],
    stopped: &[u16],
    strict: bool,
) -> Result<Vec<Result<Option<TcpListener>, String>>, ServeError> {
    let mut listeners = Vec::new();
    for &port in ports {
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
    Ok(listeners)
}

/// One port of a new group: serving if it has a listener, else stopped or failed.
fn port_slot(
    id: GroupId,
    port: u16,
    listener: Result<Option<TcpListener>, String>,
    config: &GroupConfig,
    served: &Arc<ServedFile>,
    shutdown: &CancellationToken,
) -> PortSlot {
    let stats = Arc::new(PortStats::default());
    let bucket = config.rate.map(|r| Arc::new(TokenBucket::new(r)));
    let run = match listener {
        Ok(Some(listener)) => {
            let token = shutdown.child_token();
            let task = spawn_accept_loop(
                listener,
                served,
                &stats,
                &bucket,
                token.clone(),
                port,
                config.http,
            );
            PortRun::Listening { token, task }
        }
        Ok(None) => PortRun::Stopped { closing: None },
        Err(reason) => {
            warn!(group = id, port, %reason, "virtual server failed to listen");
            PortRun::Failed(reason)
        }
    };
    PortSlot {
        port,
        stats,
        bucket,
        run: Mutex::new(run),
        generation: AtomicU64::new(0),
        starting: tokio::sync::Mutex::new(()),
    }
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

        let listeners = bind_all(bind, &config.ports, stopped, strict)?;
        let shutdown = CancellationToken::new();
        let slots = config
            .ports
            .iter()
            .zip(listeners)
            .map(|(&port, listener)| port_slot(id, port, listener, &config, &served, &shutdown))
            .collect();
        let group = Arc::new(ServerGroup {
            id,
            path: config.file.clone(),
            bind,
            served,
            slots,
            shutdown,
            http: config.http,
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
            self.http,
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
        PortRun::Listening { .. } => (PortState::Listening, String::new()),
        PortRun::Stopped { .. } => (PortState::Stopped, String::new()),
        PortRun::Failed(reason) => (PortState::Failed, reason.clone()),
    };
    PortInfo {
        port: slot.port,
        state,
        detail,
        connections: slot.stats.connections.load(Ordering::Relaxed),
        bytes_sent: slot.stats.bytes_sent.load(Ordering::Relaxed),
        segments_sent: slot.stats.segments_sent.load(Ordering::Relaxed),
        // The meter decays over a few seconds: a port that no longer listens sends nothing.
        rate_bps: match state {
            PortState::Listening => slot.stats.rate.load(Ordering::Relaxed),
            PortState::Stopped | PortState::Failed => 0,
        },
    }
}

/// A poisoned lock only means another task panicked while holding it; the state inside
/// (an enum) is still coherent, so keep serving rather than cascade the panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every connection of one port shares.
#[derive(Clone)]
struct PortCtx {
    served: Arc<ServedFile>,
    stats: Arc<PortStats>,
    bucket: Option<Arc<TokenBucket>>,
    token: CancellationToken,
    port: u16,
    http: bool,
}

fn spawn_accept_loop(
    listener: TcpListener,
    served: &Arc<ServedFile>,
    stats: &Arc<PortStats>,
    bucket: &Option<Arc<TokenBucket>>,
    token: CancellationToken,
    port: u16,
    http: bool,
) -> JoinHandle<()> {
    let ctx = PortCtx {
        served: served.clone(),
        stats: stats.clone(),
        bucket: bucket.clone(),
        token,
        port,
        http,
    };
    tokio::spawn(accept_loop(listener, ctx))
}

/// Accept backoff after a failed accept (out of descriptors and the like): doubles from
/// the first to the last value instead of spinning.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

async fn accept_loop(listener: TcpListener, ctx: PortCtx) {
    let mut backoff = ACCEPT_BACKOFF.0;
    // Who holds the port's connection slots; a newcomer may evict an idle one.
    let admission = Admission::new(Limits::default());
    // Taken before accept, and held by a connection's task to its very end (evicted ones
    // included): a hard bound on tasks and buffers even under a flood of connects, past
    // which clients wait in the kernel's backlog.
    let permits = Arc::new(Semaphore::new(SERVER_MAX_CONNECTION_TASKS_PER_PORT));
    loop {
        let accepted = tokio::select! {
            _ = ctx.token.cancelled() => break,
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
                backoff = ACCEPT_BACKOFF.0;
                if let Some(ticket) = admit(&admission, &stream, peer, &ctx) {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection_task(stream, peer, permit, ticket, ctx.clone()));
                }
            }
            Err(e) => {
                warn!(port = ctx.port, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
}

/// A slot for the newcomer from `peer` (evicting an idle connection if needed), or `None`
/// once it was refused.
fn admit(
    admission: &Arc<Admission>,
    stream: &TcpStream,
    peer: SocketAddr,
    ctx: &PortCtx,
) -> Option<Ticket> {
    let port = ctx.port;
    match admission.admit(peer.ip(), Instant::now()) {
        Ok((ticket, evicted)) => {
            if let Some(phase) = evicted {
                ctx.stats.evicted.fetch_add(1, Ordering::Relaxed);
                debug!(port, %peer, ?phase, "slots full: evicted the longest-idle connection");
            }
            Some(ticket)
        }
        Err(refusal) => {
            // Per-connection logs stay at debug: a flood must not flood the log too; the
            // status line counts refusals.
            ctx.stats.refused.fetch_add(1, Ordering::Relaxed);
            debug!(port, %peer, %refusal, "connection refused");
            refuse(stream, &refusal.to_string());
            None
        }
    }
}

/// Serves one connection to its end, holding its task permit and slot until then.
async fn connection_task(
    stream: TcpStream,
    peer: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
    ticket: Ticket,
    ctx: PortCtx,
) {
    let _permit = permit;
    let (port, stats) = (ctx.port, &ctx.stats);
    stats.connections.fetch_add(1, Ordering::Relaxed);
    // The connection itself notices eviction between frames (and says why); the last branch
    // cuts one stuck in a write.
    let result = tokio::select! {
        biased;
        _ = ctx.token.cancelled() => Ok(()),
        r = serve_either(stream, &ctx, &ticket) => r,
        _ = ticket.evicted.cancelled() => Err(ConnError::Evicted),
    };
    drop(ticket);
    stats.connections.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => debug!(port, %peer, "connection closed"),
        Err(e) => debug!(port, %peer, error = %e, "connection ended"),
    }
}

/// Serves an ArsNet client, or with `--http` an HTTP one, told apart by the first byte.
async fn serve_either(stream: TcpStream, ctx: &PortCtx, ticket: &Ticket) -> Result<(), ConnError> {
    if ctx.http {
        let mut first = [0u8; 1];
        let peeked = tokio::time::timeout(
            arsnet_proto::limits::SERVER_HELLO_TIMEOUT,
            stream.peek(&mut first),
        )
        .await;
        if let Ok(Ok(1)) = peeked {
            if super::http::is_http(first[0]) {
                let port = super::http::HttpPort {
                    served: ctx.served.clone(),
                    stats: ctx.stats.clone(),
                    bucket: ctx.bucket.clone(),
                };
                return super::http::serve(stream, port, ticket.activity.clone())
                    .await
                    .map_err(|e| ConnError::Refused(format!("HTTP: {e}")));
            }
        }
    }
    serve_connection(
        stream,
        &ctx.served,
        &ctx.stats,
        ctx.bucket.as_deref(),
        ticket,
    )
    .await
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
                        state = p.state.label(),
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
