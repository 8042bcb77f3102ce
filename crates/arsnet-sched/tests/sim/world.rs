//! A deterministic simulator of a download on virtual time: N servers with their own
//! bandwidth, one-way latency and scripted faults, connected to one `Scheduler`. It executes
//! the scheduler's actions the way a real network and server would (requests queue behind
//! each other on a server's single transmitter, CANCEL only removes segments not yet started,
//! a cut connection still delivers what it sent before the cut) and records everything the
//! tests assert on. It also checks the driver contract on every action: no action for a
//! connection the scheduler already knows is gone, no request before the header, no request
//! for a segment already done.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use arsnet_sched::{
    Action, Config, ConnId, DropReason, Layout, Phase, Scheduler, SegmentVerdict, ServerId,
};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A scripted misbehaviour of one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// At `at` the server cuts its connection and refuses new ones until `back` (forever when
    /// `None`).
    Down {
        at: Duration,
        back: Option<Duration>,
    },
    /// At `at` the current connection goes silent but stays open. Later connections are fine.
    Stall { at: Duration },
    /// The n-th segment this server sends (0-based, counted over the whole job) is corrupt.
    CorruptNth(u64),
    /// Every segment it sends is corrupt.
    CorruptAll,
}

#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// Bytes per second of the server's transmitter.
    pub bandwidth: u64,
    /// One-way latency.
    pub latency: Duration,
    /// Fingerprint the server announces in its header.
    pub fingerprint: [u8; 32],
    pub faults: Vec<Fault>,
    /// Time the server takes to send its handshake (a digest table) after the connect.
    pub handshake: Duration,
    /// Progress reports spread over the handshake (the header itself is the last; 1 means
    /// the whole handshake is silent until the header).
    pub handshake_chunks: u64,
    /// An HTTP mirror: it knows no content identity, so the driver reports its handshake
    /// with `on_follower_ready` instead of a header.
    pub follower: bool,
}

pub const GOOD_FINGERPRINT: [u8; 32] = [7; 32];
pub const BAD_FINGERPRINT: [u8; 32] = [9; 32];

impl ServerSpec {
    pub fn new(bandwidth: u64, latency: Duration) -> Self {
        ServerSpec {
            bandwidth,
            latency,
            fingerprint: GOOD_FINGERPRINT,
            faults: Vec::new(),
            handshake: Duration::ZERO,
            handshake_chunks: 1,
            follower: false,
        }
    }

    /// A mirror (see [`ServerSpec::follower`]).
    pub fn follower(mut self) -> Self {
        self.follower = true;
        self
    }

    /// A handshake of `duration`, reported as `chunks` steps of progress.
    pub fn handshake(mut self, duration: Duration, chunks: u64) -> Self {
        self.handshake = duration;
        self.handshake_chunks = chunks.max(1);
        self
    }

    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }

    pub fn fingerprint(mut self, fingerprint: [u8; 32]) -> Self {
        self.fingerprint = fingerprint;
        self
    }

    fn corrupts(&self, nth: u64) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f, Fault::CorruptAll) || *f == Fault::CorruptNth(nth))
    }
}

/// Knobs of the simulated network.
#[derive(Clone, Debug)]
pub struct Net {
    pub segment_bytes: u64,
    /// PROGRESS reports per segment (the last one coincides with the segment itself, so 1
    /// means no separate progress events).
    pub progress_chunks: u64,
}

impl Default for Net {
    fn default() -> Self {
        Net {
            segment_bytes: 64 * KIB,
            progress_chunks: 4,
        }
    }
}

#[derive(Clone, Debug)]
enum Ev {
    // Client side (arrivals at the scheduler); `sent_at` is when the server sent it.
    Header {
        conn: ConnId,
        sent_at: Duration,
    },
    Refused {
        conn: ConnId,
    },
    Reset {
        conn: ConnId,
    },
    Progress {
        conn: ConnId,
        sent_at: Duration,
        bytes: u64,
    },
    Segment {
        conn: ConnId,
        sent_at: Duration,
        segment: u64,
        verified: bool,
    },
    Cancelled {
        conn: ConnId,
        sent_at: Duration,
        segment: u64,
    },
    // Server side.
    Request {
        server: ServerId,
        conn: ConnId,
        segment: u64,
    },
    Cancel {
        server: ServerId,
        conn: ConnId,
        segment: u64,
    },
    TxDone {
        server: ServerId,
        conn: ConnId,
    },
    Down {
        server: ServerId,
    },
    Up {
        server: ServerId,
    },
    Stall {
        server: ServerId,
    },
    // Driver side: its storage pushes back from `StorageBusy` to `StorageReady`.
    StorageBusy,
    StorageReady,
}

struct Scheduled {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The server's end of its current connection.
struct ServerConn {
    id: ConnId,
    queue: VecDeque<u64>,
    sending: Option<u64>,
}

#[derive(Default)]
struct SimServer {
    down: bool,
    conn: Option<ServerConn>,
    sent: u64,
}

/// The client's (driver's) view of a connection, used to check the contract.
struct ClientConn {
    server: ServerId,
    header: bool,
    closed: bool,
    outstanding: BTreeSet<u64>,
}

/// Everything that happened, for assertions.
#[derive(Default, Debug)]
pub struct Log {
    /// Store verdicts per segment.
    pub stores: Vec<u32>,
    pub stored_by: Vec<Option<ServerId>>,
    pub stored_at: Vec<Option<Duration>>,
    pub stores_per_server: Vec<u64>,
    pub requests: Vec<(Duration, ServerId, u64)>,
    pub cancels: Vec<(Duration, ServerId, u64)>,
    pub connects: Vec<(Duration, ServerId)>,
    /// Disconnect actions.
    pub drops: Vec<(Duration, ServerId, DropReason)>,
    /// `on_disconnected` deliveries.
    pub disconnected: Vec<(Duration, ServerId, String)>,
    /// Segments outstanding on a connection when the scheduler dropped it or learnt it died.
    pub lost: Vec<(Duration, ServerId, Vec<u64>)>,
    /// Last time each server delivered anything (progress or segment).
    pub last_data: Vec<Option<Duration>>,
    pub duplicates: Vec<(Duration, ServerId, u64)>,
    pub unexpected: Vec<(Duration, ServerId, u64)>,
    pub phases: Vec<(Duration, Phase)>,
    pub violations: Vec<String>,
    pub completed_at: Option<Duration>,
}

pub struct World {
    pub sched: Scheduler,
    pub now: Duration,
    pub layout: Layout,
    pub log: Log,
    net: Net,
    specs: Vec<ServerSpec>,
    servers: Vec<SimServer>,
    clients: HashMap<ConnId, ClientConn>,
    /// Server-side time after which a connection sent nothing more (stall or crash).
    cuts: HashMap<ConnId, Duration>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    /// While the storage is busy, the driver reads nothing: arrivals wait here.
    held: Option<Vec<Ev>>,
    /// Whether the driver tells the scheduler about busy storage (a negative control turns
    /// it off).
    pub announce_storage: bool,
}

impl World {
    /// A fresh job: the scheduler learns the layout from the first header.
    pub fn new(config: Config, segments: u64, specs: Vec<ServerSpec>, net: Net) -> Self {
        let sched = Scheduler::new(config, specs.len(), Duration::ZERO);
        Self::with_scheduler(sched, segments, specs, net)
    }

    /// A fresh job pinned to the honest content: no election, other content is blamed.
    pub fn pinned(config: Config, segments: u64, specs: Vec<ServerSpec>, net: Net) -> Self {
        let mut sched = Scheduler::new(config, specs.len(), Duration::ZERO);
        sched.pin(GOOD_FINGERPRINT);
        Self::with_scheduler(sched, segments, specs, net)
    }

    /// A resumed job: the layout is known and `done` segments are already stored.
    pub fn resumed(
        config: Config,
        segments: u64,
        done: &[u64],
        specs: Vec<ServerSpec>,
        net: Net,
    ) -> Self {
        let layout = Layout {
            segment_count: segments,
            size: 0,
            fingerprint: GOOD_FINGERPRINT,
            content: GOOD_FINGERPRINT,
        };
        let sched = Scheduler::with_layout(config, specs.len(), layout, done, Duration::ZERO);
        Self::with_scheduler(sched, segments, specs, net)
    }

    fn with_scheduler(
        mut sched: Scheduler,
        segments: u64,
        specs: Vec<ServerSpec>,
        net: Net,
    ) -> Self {
        for (server, spec) in specs.iter().enumerate() {
            if spec.follower {
                sched.set_follower(server);
            }
        }
        let n = specs.len();
        let len = usize::try_from(segments).expect("test sizes fit");
        let mut world = World {
            sched,
            now: Duration::ZERO,
            layout: Layout {
                segment_count: segments,
                size: 0,
                fingerprint: GOOD_FINGERPRINT,
                content: GOOD_FINGERPRINT,
            },
            log: Log {
                stores: vec![0; len],
                stored_by: vec![None; len],
                stored_at: vec![None; len],
                stores_per_server: vec![0; n],
                last_data: vec![None; n],
                ..Log::default()
            },
            net,
            servers: (0..n).map(|_| SimServer::default()).collect(),
            specs,
            clients: HashMap::new(),
            cuts: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            held: None,
            announce_storage: true,
        };
        for server in 0..n {
            for fault in world.specs[server].faults.clone() {
                match fault {
                    Fault::Down { at, back } => {
                        world.schedule(at, Ev::Down { server });
                        if let Some(back) = back {
                            world.schedule(back, Ev::Up { server });
                        }
                    }
                    Fault::Stall { at } => world.schedule(at, Ev::Stall { server }),
                    Fault::CorruptNth(_) | Fault::CorruptAll => {}
                }
            }
        }
        world.after_step();
        world
    }

    /// The driver's storage is busy from `from` to `until`: meanwhile it reads no
    /// connection (events wait, as behind a full channel), then catches up at once.
    pub fn storage_busy(&mut self, from: Duration, until: Duration) {
        self.schedule(from, Ev::StorageBusy);
        self.schedule(until, Ev::StorageReady);
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn latency(&self, server: ServerId) -> Duration {
        self.specs[server].latency
    }

    /// Runs until the job completes or fails, nothing is left to happen, or virtual time
    /// would pass `limit`.
    pub fn run(&mut self, limit: Duration) {
        let mut steps: u64 = 0;
        loop {
            match self.sched.phase() {
                Phase::Complete | Phase::Failed(_) | Phase::Disagreement(_) => return,
                Phase::Running | Phase::Waiting => {}
            }
            steps += 1;
            if steps > 20_000_000 {
                self.log.violations.push("simulation did not settle".into());
                return;
            }
            let event_at = self.queue.peek().map(|Reverse(s)| s.at);
            let deadline = self.sched.next_deadline();
            let (at, tick) = match (event_at, deadline) {
                (None, None) => return,
                (Some(e), Some(d)) if d <= e => (d, true),
                (Some(e), _) => (e, false),
                (None, Some(d)) => (d, true),
            };
            if at > limit {
                return;
            }
            self.now = self.now.max(at);
            if tick {
                self.sched.on_tick(self.now);
                if self.sched.next_deadline().is_some_and(|d| d <= self.now) {
                    self.log
                        .violations
                        .push(format!("deadline {:?} still due after on_tick", deadline));
                    return;
                }
            } else if let Some(Reverse(scheduled)) = self.queue.pop() {
                self.handle(scheduled.ev);
            }
            self.after_step();
        }
    }

    /// Runs until virtual time `until` (events at exactly `until` included) even if the job
    /// is waiting; stops early on completion/failure.
    /// The newest connection of `server` the world has not seen closed, if any (the newest:
    /// a test that told the scheduler of a disconnect itself leaves the old one behind here,
    /// and map order must not pick it).
    pub fn conn_of(&mut self, server: ServerId) -> Option<ConnId> {
        self.clients
            .iter()
            .filter(|(_, c)| c.server == server && !c.closed)
            .map(|(&id, _)| id)
            .max_by_key(|id| id.0)
    }

    pub fn run_until(&mut self, until: Duration) {
        self.run(until);
    }

    fn after_step(&mut self) {
        while let Some(action) = self.sched.poll_action() {
            self.execute(action);
        }
        let phase = self.sched.phase();
        if self.log.phases.last().map(|(_, p)| p) != Some(&phase) {
            if phase == Phase::Complete {
                self.log.completed_at = Some(self.now);
            }
            self.log.phases.push((self.now, phase));
        }
    }

    /// The client side of `conn` if the driver may still report events for it.
    fn open_client(&mut self, conn: ConnId, what: &str) -> Option<ServerId> {
        match self.clients.get(&conn) {
            None => {
                self.log
                    .violations
                    .push(format!("{what} for unknown connection {conn:?}"));
                None
            }
            Some(c) if c.closed => {
                self.log.violations.push(format!(
                    "{what} for connection {conn:?} already disconnected"
                ));
                None
            }
            Some(c) => Some(c.server),
        }
    }

    fn close_client(&mut self, conn: ConnId, server: ServerId) {
        if let Some(client) = self.clients.get_mut(&conn) {
            client.closed = true;
            let lost: Vec<u64> = std::mem::take(&mut client.outstanding)
                .into_iter()
                .collect();
            self.log.lost.push((self.now, server, lost));
        }
    }

    fn execute(&mut self, action: Action) {
        let now = self.now;
        match action {
            Action::Connect { server, conn } => {
                if self.clients.contains_key(&conn) {
                    self.log
                        .violations
                        .push(format!("connection id {conn:?} reused"));
                    return;
                }
                if server >= self.specs.len() {
                    self.log
                        .violations
                        .push(format!("connect to unknown server {server}"));
                    return;
                }
                self.clients.insert(
                    conn,
                    ClientConn {
                        server,
                        header: false,
                        closed: false,
                        outstanding: BTreeSet::new(),
                    },
                );
                self.log.connects.push((now, server));
                let l = self.latency(server);
                if self.servers[server].down {
                    self.schedule(now + 2 * l, Ev::Refused { conn });
                } else {
                    self.servers[server].conn = Some(ServerConn {
                        id: conn,
                        queue: VecDeque::new(),
                        sending: None,
                    });
                    let spec = &self.specs[server];
                    let (handshake, chunks) = (spec.handshake, spec.handshake_chunks);
                    for i in 1..chunks {
                        let sent_at = now + l + handshake * (i as u32) / (chunks as u32);
                        self.schedule(
                            sent_at + l,
                            Ev::Progress {
                                conn,
                                sent_at,
                                bytes: 4096,
                            },
                        );
                    }
                    self.schedule(
                        now + 2 * l + handshake,
                        Ev::Header {
                            conn,
                            sent_at: now + l + handshake,
                        },
                    );
                }
            }
            Action::Request { conn, segment } => {
                let Some(server) = self.open_client(conn, "Request") else {
                    return;
                };
                let client = self.clients.get_mut(&conn).expect("checked");
                if !client.header {
                    self.log
                        .violations
                        .push(format!("Request on {conn:?} before its header"));
                }
                client.outstanding.insert(segment);
                if self.sched.is_done(segment) {
                    self.log
                        .violations
                        .push(format!("Request for segment {segment} already done"));
                }
                self.log.requests.push((now, server, segment));
                let l = self.latency(server);
                self.schedule(
                    now + l,
                    Ev::Request {
                        server,
                        conn,
                        segment,
                    },
                );
            }
            Action::Cancel { conn, segment } => {
                let Some(server) = self.open_client(conn, "Cancel") else {
                    return;
                };
                self.log.cancels.push((now, server, segment));
                let l = self.latency(server);
                self.schedule(
                    now + l,
                    Ev::Cancel {
                        server,
                        conn,
                        segment,
                    },
                );
            }
            Action::Disconnect { conn, reason } => {
                let Some(server) = self.open_client(conn, "Disconnect") else {
                    return;
                };
                self.log.drops.push((now, server, reason));
                self.close_client(conn, server);
                let sim = &mut self.servers[server];
                if sim.conn.as_ref().is_some_and(|c| c.id == conn) {
                    sim.conn = None;
                }
            }
        }
    }

    /// Whether a client-side event of `conn` reaches the scheduler: the driver still tracks
    /// the connection, and the server had not cut it when it sent the event.
    fn deliverable(&self, conn: ConnId, sent_at: Duration) -> Option<ServerId> {
        let client = self.clients.get(&conn).filter(|c| !c.closed)?;
        let cut = self.cuts.get(&conn).copied();
        if cut.is_some_and(|cut| sent_at >= cut) {
            return None;
        }
        Some(client.server)
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        let arrival = matches!(
            ev,
            Ev::Header { .. }
                | Ev::Refused { .. }
                | Ev::Reset { .. }
                | Ev::Progress { .. }
                | Ev::Segment { .. }
                | Ev::Cancelled { .. }
        );
        if arrival {
            if let Some(held) = self.held.as_mut() {
                held.push(ev);
                return;
            }
        }
        match ev {
            Ev::StorageBusy => {
                self.held.get_or_insert_with(Vec::new);
                if self.announce_storage {
                    self.sched.on_storage_busy(now);
                }
            }
            Ev::StorageReady => {
                if self.announce_storage {
                    self.sched.on_storage_ready(now);
                }
                for ev in self.held.take().unwrap_or_default() {
                    self.handle(ev);
                }
            }
            Ev::Header { conn, sent_at } => {
                let Some(server) = self.deliverable(conn, sent_at) else {
                    return;
                };
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.header = true;
                }
                if self.specs[server].follower {
                    self.sched.on_follower_ready(now, conn);
                    return;
                }
                let layout = Layout {
                    segment_count: self.layout.segment_count,
                    size: 0,
                    fingerprint: self.specs[server].fingerprint,
                    content: self.specs[server].fingerprint,
                };
                self.sched.on_header(now, conn, layout);
            }
            Ev::Refused { conn } | Ev::Reset { conn } => {
                let refused = matches!(ev, Ev::Refused { .. });
                let Some(server) = self.deliverable(conn, Duration::ZERO) else {
                    return;
                };
                let error = if refused {
                    "connection refused"
                } else {
                    "connection reset"
                };
                self.close_client(conn, server);
                self.log.disconnected.push((now, server, error.to_string()));
                self.sched.on_disconnected(now, conn, error);
            }
            Ev::Progress {
                conn,
                sent_at,
                bytes,
            } => {
                let Some(server) = self.deliverable(conn, sent_at) else {
                    return;
                };
                self.log.last_data[server] = Some(now);
                self.sched.on_progress(now, conn, bytes);
            }
            Ev::Segment {
                conn,
                sent_at,
                segment,
                verified,
            } => {
                let Some(server) = self.deliverable(conn, sent_at) else {
                    return;
                };
                self.log.last_data[server] = Some(now);
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.outstanding.remove(&segment);
                }
                let verdict = self.sched.on_segment(now, conn, segment, verified);
                match verdict {
                    SegmentVerdict::Store => {
                        if !verified {
                            self.log
                                .violations
                                .push(format!("corrupt segment {segment} stored"));
                        }
                        let i = usize::try_from(segment).expect("test sizes fit");
                        self.log.stores[i] += 1;
                        self.log.stored_by[i] = Some(server);
                        self.log.stored_at[i] = Some(now);
                        self.log.stores_per_server[server] += 1;
                    }
                    SegmentVerdict::Duplicate => self.log.duplicates.push((now, server, segment)),
                    SegmentVerdict::Unexpected => self.log.unexpected.push((now, server, segment)),
                }
            }
            Ev::Cancelled {
                conn,
                sent_at,
                segment,
            } => {
                if self.deliverable(conn, sent_at).is_none() {
                    return;
                }
                if let Some(c) = self.clients.get_mut(&conn) {
                    c.outstanding.remove(&segment);
                }
                self.sched.on_cancelled(now, conn, segment);
            }
            Ev::Request {
                server,
                conn,
                segment,
            } => {
                if let Some(c) = self.serving(server, conn) {
                    c.queue.push_back(segment);
                    self.start_sending(server);
                }
            }
            Ev::Cancel {
                server,
                conn,
                segment,
            } => {
                let l = self.latency(server);
                if let Some(c) = self.serving(server, conn) {
                    if let Some(pos) = c.queue.iter().position(|&s| s == segment) {
                        c.queue.remove(pos);
                        self.schedule(
                            now + l,
                            Ev::Cancelled {
                                conn,
                                sent_at: now,
                                segment,
                            },
                        );
                    }
                    // Already being sent (or sent): the segment itself answers the CANCEL.
                }
            }
            Ev::TxDone { server, conn } => {
                if let Some(c) = self.serving(server, conn) {
                    c.sending = None;
                    self.start_sending(server);
                }
            }
            Ev::Down { server } => {
                self.servers[server].down = true;
                if let Some(c) = self.servers[server].conn.take() {
                    // A stalled connection stays cut from its stall on.
                    self.cuts.entry(c.id).or_insert(now);
                    let l = self.latency(server);
                    self.schedule(now + l, Ev::Reset { conn: c.id });
                }
            }
            Ev::Up { server } => self.servers[server].down = false,
            Ev::Stall { server } => {
                if let Some(c) = &self.servers[server].conn {
                    self.cuts.insert(c.id, now);
                }
            }
        }
    }

    /// The server's end of `conn`, if it is the live, un-cut connection of that server.
    fn serving(&mut self, server: ServerId, conn: ConnId) -> Option<&mut ServerConn> {
        if self.cuts.contains_key(&conn) {
            return None;
        }
        self.servers[server].conn.as_mut().filter(|c| c.id == conn)
    }

    /// Starts transmitting the next queued segment if the server's transmitter is free.
    fn start_sending(&mut self, server: ServerId) {
        let now = self.now;
        let l = self.latency(server);
        let bytes = self.net.segment_bytes;
        let chunks = self.net.progress_chunks.max(1);
        let bandwidth = self.specs[server].bandwidth.max(1);
        let sim = &mut self.servers[server];
        let Some(conn) = sim.conn.as_mut() else {
            return;
        };
        if conn.sending.is_some() {
            return;
        }
        let Some(segment) = conn.queue.pop_front() else {
            return;
        };
        conn.sending = Some(segment);
        let id = conn.id;
        let nth = sim.sent;
        sim.sent += 1;
        let verified = !self.specs[server].corrupts(nth);
        let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(bandwidth);
        let duration = Duration::from_nanos(u64::try_from(nanos).expect("fits"));
        for i in 1..chunks {
            let sent_at = now
                + duration * u32::try_from(i).expect("fits") / u32::try_from(chunks).expect("fits");
            self.schedule(
                sent_at + l,
                Ev::Progress {
                    conn: id,
                    sent_at,
                    bytes: bytes / chunks,
                },
            );
        }
        let done = now + duration;
        self.schedule(
            done + l,
            Ev::Segment {
                conn: id,
                sent_at: done,
                segment,
                verified,
            },
        );
        self.schedule(done, Ev::TxDone { server, conn: id });
    }

    // ----- assertion helpers ----------------------------------------------------------------

    /// Every segment not in `already_done` was stored exactly once, and those were never stored.
    pub fn assert_each_stored_once(&self, already_done: &[u64]) {
        let skip: BTreeSet<u64> = already_done.iter().copied().collect();
        for (segment, &n) in self.log.stores.iter().enumerate() {
            let expected = u32::from(!skip.contains(&(segment as u64)));
            assert_eq!(n, expected, "segment {segment} stored {n} times");
        }
    }

    pub fn assert_no_violations(&self) {
        assert!(
            self.log.violations.is_empty(),
            "contract violations: {:?}",
            self.log.violations
        );
    }

    pub fn assert_complete(&self) {
        assert_eq!(self.sched.phase(), Phase::Complete, "at {:?}", self.now);
        assert_eq!(self.sched.segments_done(), self.layout.segment_count);
        self.assert_no_violations();
    }

    /// Time of the first Request for `segment` at or after `from`.
    pub fn first_request(&self, segment: u64, from: Duration) -> Option<(Duration, ServerId)> {
        self.log
            .requests
            .iter()
            .find(|&&(t, _, s)| s == segment && t >= from)
            .map(|&(t, server, _)| (t, server))
    }

    pub fn connects_of(&self, server: ServerId) -> Vec<Duration> {
        self.log
            .connects
            .iter()
            .filter(|&&(_, s)| s == server)
            .map(|&(t, _)| t)
            .collect()
    }

    pub fn saw_phase(&self, phase: &Phase) -> bool {
        self.log.phases.iter().any(|(_, p)| p == phase)
    }
}
