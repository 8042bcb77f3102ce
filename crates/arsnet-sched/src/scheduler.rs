//! The scheduler machine: turns network events and the passage of time into actions.
//!
//! Every public method takes `now` from the driver and returns at once; side effects are
//! queued as [`Action`]s and taken with [`Scheduler::poll_action`]. The driver calls
//! [`Scheduler::on_tick`] when [`Scheduler::next_deadline`] is reached. Nothing here can panic
//! on an event sequence: unknown and stale connection ids, out-of-range segments and events
//! after the job ended are ignored or answered with a protocol drop.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use crate::action::{Action, DropReason, SegmentVerdict};
use crate::config::Config;
use crate::ids::{ConnId, ContentVotes, Layout, ServerId};
use crate::segments::SegmentTable;
use crate::servers::{Servers, Slot};
use crate::status::{FailReason, Phase, ServerEnd, ServerState, ServerStats};

/// What [`Scheduler::server_state`] answers for an id outside the server list.
static UNKNOWN_SERVER: ServerState = ServerState::Idle;

/// The content being fetched, known once a header was accepted (or given at resume).
#[derive(Debug)]
struct Job {
    layout: Layout,
    segments: SegmentTable,
}

/// Headers collected while no content is accepted yet and no pin decides: the servers that
/// answered, each kept connected but idle until the strict majority of them is known.
#[derive(Debug)]
struct Election {
    /// When the window closes (set by the first header).
    deadline: Duration,
    votes: Vec<(ServerId, Layout)>,
}

/// Lower-case hex of a digest, as `b3sum` prints it.
/// Why a server's `offered` layout is not the `accepted` one (`whose`: "job's",
/// "majority's"): the sizes when they differ (all an HTTP mirror can differ in), else the
/// content digests.
fn differs(offered: &Layout, accepted: &Layout, whose: &str) -> String {
    if offered.size != accepted.size {
        format!(
            "serves a file of {} bytes, the {whose} is {} bytes",
            offered.size, accepted.size
        )
    } else {
        format!(
            "serves other content (BLAKE3 {}) than the {whose} {}",
            hex(&offered.content),
            hex(&accepted.content)
        )
    }
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a dropped connection's server continues.
enum Fate {
    /// Transient failure: reconnect after the backoff delay.
    Retry(String),
    /// Bad data or wrong content: never contact again.
    Blame(String),
}

/// The download scheduler of one job. See the crate docs for the event/action contract.
#[derive(Debug)]
pub struct Scheduler {
    config: Config,
    servers: Servers,
    job: Option<Job>,
    actions: VecDeque<Action>,
    /// Active servers whose pipeline has free slots: they get segments the moment any become
    /// available, which is what makes failover immediate rather than tick-driven.
    hungry: BTreeSet<ServerId>,
    /// Something became available (Missing or duplicable) since hungry servers were served.
    dispatch_pending: bool,
    complete: bool,
    /// The content a user pinned: only headers announcing it are accepted.
    pin: Option<[u8; 32]>,
    election: Option<Election>,
    /// Set when an election found no strict majority.
    disagreement: Option<Vec<ContentVotes>>,
    /// Servers that cannot name the content (HTTP mirrors, which know only a size): they
    /// never vote, no election waits for them, and they serve once others decided it.
    followers: BTreeSet<ServerId>,
}

impl Scheduler {
    /// A job whose layout is not known yet: the first accepted header sets it. Queues a
    /// `Connect` for every server.
    pub fn new(config: Config, servers: usize, now: Duration) -> Self {
        let mut scheduler = Scheduler {
            config,
            servers: Servers::new(servers),
            job: None,
            actions: VecDeque::new(),
            hungry: BTreeSet::new(),
            dispatch_pending: false,
            complete: false,
            pin: None,
            election: None,
            disagreement: None,
            followers: BTreeSet::new(),
        };
        for server in 0..servers {
            scheduler.connect(server, now);
        }
        scheduler
    }

    /// A job whose layout is known in advance (resume from a journal); `done` are segments
    /// already verified and stored (out-of-range entries are ignored). A job with nothing
    /// left to fetch is Complete at once and emits no action.
    pub fn with_layout(
        config: Config,
        servers: usize,
        layout: Layout,
        done: &[u64],
        now: Duration,
    ) -> Self {
        let segments = SegmentTable::new(layout.segment_count, done, config.copies());
        let mut scheduler = Scheduler {
            config,
            servers: Servers::new(servers),
            job: Some(Job { layout, segments }),
            actions: VecDeque::new(),
            hungry: BTreeSet::new(),
            dispatch_pending: false,
            complete: false,
            pin: None,
            election: None,
            disagreement: None,
            followers: BTreeSet::new(),
        };
        scheduler.settle(now);
        if !scheduler.complete {
            for server in 0..servers {
                scheduler.connect(server, now);
            }
        }
        scheduler
    }

    /// Accept only content whose digest is `content` (a user's pin): headers announcing
    /// anything else blame their server, and no election is held. Call before any header.
    pub fn pin(&mut self, content: [u8; 32]) {
        self.pin = Some(content);
    }

    /// The configuration this scheduler runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- events -------------------------------------------------------------------------

    /// A connection delivered its header. A job whose content is known (resumed, pinned, or
    /// decided) accepts a matching header and blames any other ("serves other content").
    /// Otherwise the header is a vote: once every server answered or failed, or the election
    /// window closed, the content announced by a strict majority of the servers that
    /// answered is accepted and the others are blamed; without a strict majority the job
    /// ends in [`Phase::Disagreement`].
    pub fn on_header(&mut self, now: Duration, conn: ConnId, layout: Layout) {
        if self.complete || self.disagreement.is_some() {
            return;
        }
        let Some(server) = self.servers.lookup(conn) else {
            return;
        };
        if self.job.is_none() {
            match self.pin {
                Some(pin) if layout.content != pin => {
                    let reason = format!(
                        "serves other content (BLAKE3 {}) than the pinned {}",
                        hex(&layout.content),
                        hex(&pin)
                    );
                    self.blame_header(server, now, reason);
                    self.settle(now);
                    return;
                }
                Some(_) => self.accept_layout(layout),
                None => {
                    self.vote(server, now, layout);
                    self.settle(now);
                    return;
                }
            }
        }
        let accepted = self.job.as_ref().map(|j| j.layout);
        if accepted != Some(layout) {
            let reason = match accepted {
                Some(a) if a.content != layout.content || a.size != layout.size => {
                    differs(&layout, &a, "job's")
                }
                _ => "serves the content under another name or segment layout".to_string(),
            };
            self.blame_header(server, now, reason);
        } else if self.servers.conn(server).is_some_and(|c| !c.active) {
            self.servers.activate(server, now);
            self.fill(server, now);
        }
        // A repeated identical header on an active connection changes nothing.
        self.settle(now);
    }

    /// Marks `server` as a follower (see [`Scheduler::on_follower_ready`]). Call before any
    /// header; out-of-range ids are ignored.
    pub fn set_follower(&mut self, server: ServerId) {
        if server < self.servers.len() {
            self.followers.insert(server);
        }
    }

    /// A follower's connection finished its handshake (it answered, and is whole as far
    /// as it can tell). With the content decided it serves at once; before that it waits,
    /// connected and idle, without a silence timer, and is activated the moment the content
    /// is decided. A connection of a server that is not a follower is dropped: only a
    /// header can say what such a server serves.
    pub fn on_follower_ready(&mut self, now: Duration, conn: ConnId) {
        if self.complete || self.disagreement.is_some() {
            return;
        }
        let Some(server) = self.servers.lookup(conn) else {
            return;
        };
        if !self.followers.contains(&server) {
            self.drop_conn(
                server,
                now,
                Some(DropReason::Protocol("announced no content".to_string())),
                Fate::Blame("announced no content (not an ArsNet server?)".to_string()),
            );
            self.settle(now);
            return;
        }
        if self.job.is_some() {
            self.servers.activate(server, now);
            self.fill(server, now);
        } else {
            if let Some(conn) = self.servers.conn_mut(server) {
                // The handshake is over: waiting for others to decide is not silence.
                conn.voted = true;
            }
            self.servers.mark_reached(server);
            self.servers.arm(server, &self.config);
        }
        self.settle(now);
    }

    /// The driver found `server` serving other bytes than the content (a mirror whose
    /// segments disagreed with the others' when the whole file failed its check): it is
    /// blamed with `reason` and never contacted again, whatever its connection is doing
    /// (an attempt queued but not yet carried out is withdrawn).
    pub fn exclude(&mut self, now: Duration, server: ServerId, reason: String) {
        if server >= self.servers.len() {
            return;
        }
        let conn = self.servers.conn(server).map(|c| c.id);
        self.actions.retain(|a| match a {
            Action::Connect { conn: c, .. } => Some(*c) != conn,
            _ => true,
        });
        self.drop_conn(
            server,
            now,
            Some(DropReason::CorruptSegment),
            Fate::Blame(reason),
        );
        self.settle(now);
    }

    /// The driver found that what a connection offers cannot be the decided content (an
    /// HTTP mirror whose size differs from it): the server is blamed with `reason`.
    pub fn on_refused(&mut self, now: Duration, conn: ConnId, reason: String) {
        if self.complete {
            return;
        }
        if let Some(server) = self.servers.lookup(conn) {
            self.blame_header(server, now, reason);
            self.settle(now);
        }
    }

    /// Followers that waited for the content serve once it is decided.
    fn activate_waiting_followers(&mut self, now: Duration) {
        if self.job.is_none() {
            return;
        }
        let waiting: Vec<ServerId> = self
            .followers
            .iter()
            .copied()
            .filter(|&s| self.servers.conn(s).is_some_and(|c| c.voted && !c.active))
            .collect();
        for server in waiting {
            self.servers.activate(server, now);
            self.fill(server, now);
        }
    }

    fn accept_layout(&mut self, layout: Layout) {
        self.job = Some(Job {
            layout,
            segments: SegmentTable::new(layout.segment_count, &[], self.config.copies()),
        });
    }

    fn blame_header(&mut self, server: ServerId, now: Duration, reason: String) {
        self.drop_conn(
            server,
            now,
            Some(DropReason::HeaderMismatch),
            Fate::Blame(reason),
        );
    }

    /// Records `server`'s header as a vote (its connection stays open and idle).
    fn vote(&mut self, server: ServerId, now: Duration, layout: Layout) {
        let window = self.config.election_window;
        let election = self.election.get_or_insert_with(|| Election {
            deadline: now.saturating_add(window),
            votes: Vec::new(),
        });
        election.votes.retain(|(s, _)| *s != server);
        election.votes.push((server, layout));
        if let Some(conn) = self.servers.conn_mut(server) {
            conn.voted = true;
        }
        // It answered: waiting for the election is not failing to reach it.
        self.servers.mark_reached(server);
        self.servers.arm(server, &self.config);
    }

    /// Closes the election when every server answered, or when its window ended.
    fn try_decide(&mut self, now: Duration) {
        let Some(election) = self.election.as_ref() else {
            return;
        };
        if self.job.is_some() || self.disagreement.is_some() || election.votes.is_empty() {
            return;
        }
        // Early only when every server still in the running has voted. A server that could
        // not be reached is waited for until the window closes: taking honest servers down
        // for a moment must not let a liar win by answering alone. One given up will never
        // vote, so the window's end could only count the same votes.
        let everyone_in = (0..self.servers.len()).all(|s| {
            self.followers.contains(&s)
                || election.votes.iter().any(|(v, _)| *v == s)
                || matches!(
                    self.server_state(s),
                    ServerState::Blamed(_) | ServerState::GaveUp { .. }
                )
        });
        if !everyone_in && now < election.deadline {
            return;
        }
        let Some(election) = self.election.take() else {
            return;
        };
        let mut tally: Vec<(Layout, Vec<ServerId>)> = Vec::new();
        for &(server, layout) in &election.votes {
            match tally.iter_mut().find(|(l, _)| *l == layout) {
                Some((_, servers)) => servers.push(server),
                None => tally.push((layout, vec![server])),
            }
        }
        let total = election.votes.len();
        let Some(winner) = tally
            .iter()
            .find(|(_, servers)| servers.len() * 2 > total)
            .map(|(l, _)| *l)
        else {
            let mut votes: Vec<ContentVotes> = tally
                .into_iter()
                .map(|(layout, mut servers)| {
                    servers.sort_unstable();
                    ContentVotes {
                        content: layout.content,
                        size: layout.size,
                        servers,
                    }
                })
                .collect();
            votes.sort_by(|a, b| a.servers.cmp(&b.servers));
            self.disagreement = Some(votes);
            return;
        };
        self.accept_layout(winner);
        for (server, layout) in election.votes {
            // Only a vote whose connection is still the one that voted counts.
            if self.servers.conn(server).is_none() {
                continue;
            }
            if layout == winner {
                self.servers.activate(server, now);
                self.fill(server, now);
            } else {
                let reason = differs(&layout, &winner, "majority's");
                self.blame_header(server, now, reason);
            }
        }
        self.dispatch_pending = true;
    }

    /// The driver found these segments already stored (a partial download it adopted once
    /// the content was decided): they are done, and connections still fetching one of them
    /// are told to cancel it.
    pub fn on_stored_elsewhere(&mut self, now: Duration, segments: &[u64]) {
        if self.complete {
            return;
        }
        let Some(job) = self.job.as_mut() else {
            return;
        };
        let mut cancels = Vec::new();
        for &segment in segments {
            if let Some(others) = job.segments.finish(segment, ServerId::MAX) {
                cancels.extend(others.into_iter().map(|server| (server, segment)));
            }
        }
        for (server, segment) in cancels {
            self.cancel_copy(server, segment);
        }
        self.settle(now);
    }

    /// The driver found these Done segments bad (their source was convicted of lying while
    /// the job ran): they are Missing again and go to the connections still running, which
    /// keep their warm TCP windows. `false` once the job has completed (the driver then
    /// starts a run for them, see [`Scheduler::with_layout`]) or before a layout exists.
    pub fn redo(&mut self, now: Duration, segments: &[u64]) -> bool {
        if self.complete {
            return false;
        }
        let Some(job) = self.job.as_mut() else {
            return false;
        };
        for &segment in segments {
            job.segments.undo(segment);
        }
        self.dispatch_pending = true;
        self.settle(now);
        true
    }

    /// `bytes` arrived on `conn` (handshake frames or segment data): the connection is not
    /// silent. A report of zero bytes is no progress and changes nothing, so a driver that
    /// samples counters may report every connection on every wake-up.
    pub fn on_progress(&mut self, now: Duration, conn: ConnId, bytes: u64) {
        if self.complete || bytes == 0 {
            return;
        }
        let Some(server) = self.servers.lookup(conn) else {
            return;
        };
        if let Some(c) = self.servers.conn_mut(server) {
            // While Connecting, data is a handshake advancing (a digest table arriving frame
            // by frame); once Active, it is a requested segment arriving. Either way the
            // silence clock restarts. (An active connection with nothing requested owes no
            // data; its clock restarts anyway when its pipeline fills.)
            c.last_progress = c.last_progress.max(now);
            if c.active {
                // Segment data: this connection is delivering, which is what lets the
                // silence rule tell a quiet server from a quiet network.
                c.last_data = Some(c.last_data.map_or(now, |at| at.max(now)));
            }
        }
        self.servers.arm(server, &self.config);
    }

    /// `conn`'s handshake starts (`waiting`) or stops waiting for another connection of this
    /// job to assemble the digest table both need. While it waits, its silence is no
    /// handshake timeout; when the wait ends, its handshake clock restarts at `now`.
    pub fn on_table_wait(&mut self, now: Duration, conn: ConnId, waiting: bool) {
        if self.complete {
            return;
        }
        let Some(server) = self.servers.lookup(conn) else {
            return;
        };
        if let Some(c) = self.servers.conn_mut(server) {
            c.waiting_for_table = waiting;
            c.last_progress = c.last_progress.max(now);
        }
        self.servers.arm(server, &self.config);
    }

    /// The driver's storage cannot take more data for now (its queue is full): until
    /// [`Self::on_storage_ready`], the driver reads no connection, so no silence counts as a
    /// stall or a slow handshake, and no connection is dropped as a laggard.
    pub fn on_storage_busy(&mut self, now: Duration) {
        if self.complete || self.servers.storage_busy() {
            return;
        }
        self.servers.set_storage_busy(true, now, &self.config);
    }

    /// The storage takes data again: every connection's silence clock restarts at `now`.
    pub fn on_storage_ready(&mut self, now: Duration) {
        if self.complete || !self.servers.storage_busy() {
            return;
        }
        self.servers.set_storage_busy(false, now, &self.config);
        self.settle(now);
    }

    /// A whole segment arrived on `conn`; `verified` says whether it matched its digest.
    pub fn on_segment(
        &mut self,
        now: Duration,
        conn: ConnId,
        segment: u64,
        verified: bool,
    ) -> SegmentVerdict {
        let Some(server) = self.servers.lookup(conn).filter(|_| !self.complete) else {
            // Finished job or stale connection: nothing changes; tell the driver whether the
            // data is merely redundant.
            return if self.is_done(segment) {
                SegmentVerdict::Duplicate
            } else {
                SegmentVerdict::Unexpected
            };
        };
        if !verified {
            self.drop_conn(
                server,
                now,
                Some(DropReason::CorruptSegment),
                Fate::Blame(format!("corrupt segment {segment}")),
            );
            self.settle(now);
            return SegmentVerdict::Unexpected;
        }
        let slot = self
            .servers
            .conn_mut(server)
            .filter(|c| c.active)
            .and_then(|c| c.take_slot(segment));
        let Some(slot) = slot else {
            let error = format!("unexpected segment {segment}");
            self.drop_conn(
                server,
                now,
                Some(DropReason::Protocol(error.clone())),
                Fate::Retry(error),
            );
            self.settle(now);
            return SegmentVerdict::Unexpected;
        };
        if let Some(c) = self.servers.conn_mut(server) {
            c.last_progress = now;
            c.last_data = Some(now);
        }
        let verdict = self.complete_segment(server, slot, now);
        self.fill(server, now);
        self.settle(now);
        verdict
    }

    /// `conn` answered a CANCEL (or, unasked, gave a segment up): its slot is free.
    pub fn on_cancelled(&mut self, now: Duration, conn: ConnId, segment: u64) {
        if self.complete {
            return;
        }
        let Some(server) = self.servers.lookup(conn) else {
            return;
        };
        let Some(c) = self.servers.conn_mut(server).filter(|c| c.active) else {
            return;
        };
        let Some(slot) = c.take_slot(segment) else {
            return;
        };
        // A CANCELLED is not progress: a server answering every request that way must still
        // trip the stall timer, so the clock is restored after refilling.
        let stall_clock = c.last_progress;
        if !slot.cancelling {
            if let Some(job) = self.job.as_mut() {
                self.dispatch_pending |= job.segments.remove_holder(segment, server);
            }
        }
        self.fill(server, now);
        if !slot.cancelling {
            if let Some(c) = self.servers.conn_mut(server) {
                c.last_progress = stall_clock;
            }
            self.servers.arm(server, &self.config);
        }
        self.settle(now);
    }

    /// The server answered on `conn` without a header (it is busy, say): it speaks the
    /// protocol and is reachable, so it is never given up for this run, only retried.
    pub fn on_answered(&mut self, conn: ConnId) {
        if let Some(server) = self.servers.lookup(conn) {
            self.servers.mark_reached(server);
        }
    }

    /// `conn` ended on its own (refused, reset, EOF, protocol error seen by the driver).
    pub fn on_disconnected(&mut self, now: Duration, conn: ConnId, error: &str) {
        if self.complete {
            return;
        }
        let Some(server) = self.servers.lookup(conn) else {
            return;
        };
        self.drop_conn(server, now, None, Fate::Retry(error.to_string()));
        self.settle(now);
    }

    /// Like [`Scheduler::on_disconnected`], for a source that said when to come back (an
    /// HTTP `Retry-After`): its next attempt waits at least `retry_after`, capped at
    /// `Config::retry_after_max` so that a hostile value cannot park a source forever.
    pub fn on_disconnected_retry_after(
        &mut self,
        now: Duration,
        conn: ConnId,
        error: &str,
        retry_after: Duration,
    ) {
        if self.complete {
            return;
        }
        let Some(server) = self.servers.lookup(conn) else {
            return;
        };
        self.drop_conn(server, now, None, Fate::Retry(error.to_string()));
        let until = now.saturating_add(retry_after.min(self.config.retry_after_max));
        self.servers.defer(server, until);
        self.servers.arm(server, &self.config);
        self.settle(now);
    }

    /// Time passed: reconnect servers whose backoff ended, drop stalled connections and
    /// handshakes that took too long, connections silent while others deliver
    /// ([`DropReason::Silent`], see [`Config::laggard_factor`]) and, in the tail, laggards.
    pub fn on_tick(&mut self, now: Duration) {
        if self.complete {
            return;
        }
        // An election whose window closed decides before any voter's handshake timer can
        // count its answered header as a timeout.
        self.try_decide(now);
        // Only timers due on entry: a timer re-armed at or before `now` (zero timeouts, time at
        // the end of `Duration`) waits for the next tick instead of spinning here.
        let mut due = Vec::new();
        while let Some(server) = self.servers.pop_due(now) {
            due.push(server);
        }
        for server in due {
            self.expire(server, now);
        }
        // Silence before slowness: a connection that is both is reported for what it did.
        self.drop_silent(now);
        self.drop_laggards(now);
        self.settle(now);
    }

    /// How long an active connection owed data may go without a byte while others deliver,
    /// when the silence rule applies now: the laggard limit, `laggard_factor` times the
    /// fastest server's segment time and at least `laggard_floor` (a server that sent
    /// nothing for that long is no nearer finishing its segment than a laggard), once that
    /// time is measured, and never while the storage is busy (the driver reads no
    /// connection then: their silence is ours, not the servers').
    fn silence_limit(&self) -> Option<Duration> {
        if self.job.is_none() || self.servers.storage_busy() {
            return None;
        }
        let best = self.servers.best_segment_time()?;
        Some(
            best.saturating_mul(self.config.laggard_factor)
                .max(self.config.laggard_floor),
        )
    }

    /// Calls `visit(due, server, quiet_since)` for each connection the silence rule drops
    /// (once `due`), earliest first, until `visit` returns false.
    ///
    /// A connection is silent when it has been owed data and heard nothing for longer than
    /// the [silence limit](Self::silence_limit), and another active connection received data
    /// at least half that limit after this one last did. That second clause is what makes
    /// it *relative*: a quiet network, a lone server, or every server stopping at once (their
    /// last bytes a moment apart) drop nobody, and the plain `stall_timeout` applies. It
    /// depends on no clock, only on what was reported, so a deadline reported here is acted
    /// on by any tick at or after it (however late: no spin), and it changes only on events.
    ///
    /// The connection data arrived on last is never silent (nobody delivered after it);
    /// every other one compares against it, so once a candidate (quietest first) fails, all
    /// the later ones do: the walk stops there, and costs O(log n) in `next_deadline`.
    fn each_silent(&self, mut visit: impl FnMut(Duration, ServerId, Duration) -> bool) {
        let Some(limit) = self.silence_limit() else {
            return;
        };
        let Some((loudest, heard)) = self.servers.loudest() else {
            return;
        };
        let half = limit / 2;
        for (since, server) in self.servers.quiet() {
            if server == loudest {
                continue;
            }
            if heard < since.saturating_add(half) {
                break;
            }
            // Strictly longer than the limit, like the laggard rule.
            let due = since
                .saturating_add(limit)
                .saturating_add(Duration::from_nanos(1));
            if !visit(due, server, since) {
                return;
            }
        }
    }

    /// When the first silent connection is due, so that [`Self::next_deadline`] wakes the
    /// driver for it (the rule runs from `on_tick`).
    fn next_silent(&self) -> Option<Duration> {
        let mut first = None;
        self.each_silent(|due, _, _| {
            first = Some(due);
            false
        });
        first
    }

    /// Drops every connection that is silent (see [`Self::each_silent`]) at `now`, so that its
    /// segments go back to Missing and to the connections that deliver, in any phase of the
    /// job: a server stopped behind an open socket would otherwise hold them until the tail
    /// (laggards) or `stall_timeout`. Its server is retried after the backoff like a
    /// stalled one, so a server that wakes up serves again.
    fn drop_silent(&mut self, now: Duration) {
        let mut silent = Vec::new();
        self.each_silent(|due, server, since| {
            if due > now {
                return false;
            }
            silent.push((server, now.saturating_sub(since)));
            true
        });
        for (server, quiet) in silent {
            self.drop_conn(
                server,
                now,
                Some(DropReason::Silent),
                Fate::Retry(format!(
                    "silent: no data for {:.1} s while others deliver",
                    quiet.as_secs_f64()
                )),
            );
        }
    }

    /// In the tail of a job (servers with free slots, nothing left to hand them), a
    /// connection that has been on one segment for `laggard_factor` times the fastest
    /// server's segment time (and at least `laggard_floor`) is dropped, so that its segments
    /// go to the idle, faster ones at once. Progress, however slow, does not save it: this is
    /// what stops a server trickling a byte at a time from holding the last segments forever.
    /// How long a connection may be on one segment before it is a laggard, when the rule
    /// applies now: in the tail (nothing left to hand out, and some server idle), with the
    /// storage keeping up (a server blocked by our own storage is not slow), once a
    /// per-segment time has been measured.
    fn laggard_limit(&self) -> Option<(Duration, Duration)> {
        let job = self.job.as_ref()?;
        if self.hungry.is_empty() || job.segments.any_available() || self.servers.storage_busy() {
            return None;
        }
        let best = self.servers.best_segment_time()?;
        let limit = best
            .saturating_mul(self.config.laggard_factor)
            .max(self.config.laggard_floor);
        Some((best, limit))
    }

    /// When the first laggard would be due, so that [`Self::next_deadline`] wakes the driver
    /// for it (the laggard rule runs from `on_tick`).
    fn next_laggard(&self) -> Option<Duration> {
        let (_, limit) = self.laggard_limit()?;
        (0..self.servers.len())
            .filter(|&s| self.hungry.iter().any(|&h| h != s))
            .filter_map(|s| self.servers.conn(s).filter(|c| c.active)?.busy_since())
            .map(|since| {
                since
                    .saturating_add(limit)
                    .saturating_add(Duration::from_nanos(1))
            })
            .min()
    }

    fn drop_laggards(&mut self, now: Duration) {
        let Some((best, limit)) = self.laggard_limit() else {
            return;
        };
        let laggards: Vec<(ServerId, Duration)> = (0..self.servers.len())
            .filter(|&s| self.hungry.iter().any(|&h| h != s))
            .filter_map(|s| {
                let conn = self.servers.conn(s).filter(|c| c.active)?;
                let busy = conn.busy_for(now)?;
                (busy > limit).then_some((s, busy))
            })
            .collect();
        for (server, busy) in laggards {
            self.drop_conn(
                server,
                now,
                Some(DropReason::TooSlow),
                Fate::Retry(format!(
                    "too slow: {busy:?} on one segment while the fastest server takes {best:?}"
                )),
            );
        }
    }

    /// Operator asked to retry: every server in Backoff reconnects now. Blamed servers stay
    /// blamed; the failure streak is kept, so a further failure keeps growing the delay.
    pub fn retry_now(&mut self, now: Duration) {
        if self.complete {
            return;
        }
        for server in self.servers.in_backoff() {
            self.connect(server, now);
        }
        self.settle(now);
    }

    // ----- outputs and views --------------------------------------------------------------

    /// The next action for the driver, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Earliest time at which [`Self::on_tick`] has work to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.complete || self.disagreement.is_some() {
            return None;
        }
        let election = self.election.as_ref().map(|e| e.deadline);
        [
            self.servers.next_deadline(),
            election,
            self.next_laggard(),
            self.next_silent(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Where the job stands.
    pub fn phase(&self) -> Phase {
        if self.complete {
            Phase::Complete
        } else if let Some(votes) = &self.disagreement {
            Phase::Disagreement(votes.clone())
        } else if self.servers.len() == 0 {
            Phase::Failed(FailReason::NoServers)
        } else if self.servers.blamed() == self.servers.len() {
            Phase::Failed(FailReason::AllBlamed)
        } else if self.out_of_servers() && self.segments_done() == 0 {
            Phase::Failed(FailReason::Unreachable(self.server_ends()))
        } else if self.servers.live() == 0 {
            Phase::Waiting
        } else {
            Phase::Running
        }
    }

    /// No server will be tried again: each is blamed or given up.
    fn out_of_servers(&self) -> bool {
        self.servers.blamed() + self.servers.given_up() == self.servers.len()
    }

    /// How each server ended, for [`FailReason::Unreachable`] (only asked once every server
    /// is blamed or given up).
    fn server_ends(&self) -> Vec<ServerEnd> {
        (0..self.servers.len())
            .map(|s| match self.server_state(s) {
                ServerState::GaveUp {
                    attempts,
                    last_error,
                } => ServerEnd::GaveUp {
                    attempts: *attempts,
                    last_error: last_error.clone(),
                },
                ServerState::Blamed(reason) => ServerEnd::Blamed(reason.clone()),
                // Not reached while out_of_servers() holds; kept total rather than panic.
                other => ServerEnd::Blamed(format!("{other:?}")),
            })
            .collect()
    }

    /// The job's layout, once known.
    pub fn layout(&self) -> Option<Layout> {
        self.job.as_ref().map(|j| j.layout)
    }

    /// Segments done, including those given as done at resume.
    pub fn segments_done(&self) -> u64 {
        self.job.as_ref().map_or(0, |j| j.segments.done_count())
    }

    /// Number of segments, once the layout is known.
    pub fn segment_count(&self) -> Option<u64> {
        self.job.as_ref().map(|j| j.segments.count())
    }

    /// Number of servers of the job.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// State of `server`; an id outside the server list reads as [`ServerState::Idle`].
    pub fn server_state(&self, server: ServerId) -> &ServerState {
        self.servers.state(server).unwrap_or(&UNKNOWN_SERVER)
    }

    /// Counters of `server`; zero for an id outside the server list.
    pub fn server_stats(&self, server: ServerId) -> ServerStats {
        self.servers.stats(server)
    }

    /// Whether `segment` is done (false before the layout is known and out of range).
    pub fn is_done(&self, segment: u64) -> bool {
        self.job
            .as_ref()
            .is_some_and(|j| j.segments.is_done(segment))
    }

    // ----- internals ----------------------------------------------------------------------

    fn connect(&mut self, server: ServerId, now: Duration) {
        if let Some(conn) = self.servers.open(server, now) {
            self.actions.push_back(Action::Connect { server, conn });
            self.servers.arm(server, &self.config);
        }
    }

    /// Handles a due timer of `server`.
    fn expire(&mut self, server: ServerId, now: Duration) {
        let (handshake, stall) = (self.config.handshake_timeout, self.config.stall_timeout);
        let busy = self.servers.storage_busy();
        match self.server_state(server) {
            ServerState::Backoff { until, .. } if *until <= now => self.connect(server, now),
            ServerState::Connecting
                if !busy
                    && self.servers.conn(server).is_some_and(|c| {
                        !c.voted
                            && !c.waiting_for_table
                            && c.last_progress.saturating_add(handshake) <= now
                    }) =>
            {
                self.drop_conn(
                    server,
                    now,
                    Some(DropReason::HandshakeTimeout),
                    Fate::Retry(format!("no header: handshake silent for {handshake:?}")),
                );
            }
            ServerState::Active
                if !busy
                    && self.servers.conn(server).is_some_and(|c| {
                        !c.slots.is_empty() && c.last_progress.saturating_add(stall) <= now
                    }) =>
            {
                self.drop_conn(
                    server,
                    now,
                    Some(DropReason::Stalled),
                    Fate::Retry(format!("stalled: no data for {stall:?}")),
                );
            }
            // Not due after all (time went backwards, or state moved on): re-derive.
            _ => self.servers.arm(server, &self.config),
        }
    }

    /// Tops up `server`'s pipeline: lowest Missing segments first, then (endgame) copies of
    /// the oldest outstanding segments held elsewhere.
    fn fill(&mut self, server: ServerId, now: Duration) {
        let depth = self.config.depth();
        let (Some(job), Some(conn)) = (self.job.as_mut(), self.servers.conn_mut(server)) else {
            return;
        };
        if !conn.active {
            return;
        }
        let was_idle = conn.slots.is_empty();
        while conn.slots.len() < depth {
            // Endgame copies go only to a connection with nothing else in flight (one at a
            // time): a duplicate costs a server's bandwidth, so only idle capacity pays it.
            let idle = conn.slots.is_empty();
            let Some(segment) = job
                .segments
                .take_missing()
                .or_else(|| idle.then(|| job.segments.pick_duplicate(server)).flatten())
            else {
                break;
            };
            self.dispatch_pending |= job.segments.add_holder(segment, server, now);
            conn.slots.push(Slot {
                segment,
                cancelling: false,
                requested_at: now,
            });
            self.actions.push_back(Action::Request {
                conn: conn.id,
                segment,
            });
        }
        if was_idle && !conn.slots.is_empty() {
            // An idle connection owed no data; its stall clock starts with this request.
            conn.last_progress = now;
        }
        if conn.slots.len() < depth {
            self.hungry.insert(server);
        } else {
            self.hungry.remove(&server);
        }
        self.servers.arm(server, &self.config);
    }

    /// A verified copy of `slot.segment` arrived from `server`.
    fn complete_segment(&mut self, server: ServerId, slot: Slot, now: Duration) -> SegmentVerdict {
        let took = self.servers.conn_mut(server).map_or(Duration::ZERO, |c| {
            let took = now.saturating_sub(slot.requested_at.max(c.last_delivery));
            c.last_delivery = now;
            took
        });
        let others = match self.job.as_mut() {
            Some(job) if !slot.cancelling => job.segments.finish(slot.segment, server),
            _ => None,
        };
        let Some(others) = others else {
            return SegmentVerdict::Duplicate;
        };
        self.servers.count_store(server, took);
        for other in others {
            self.cancel_copy(other, slot.segment);
        }
        SegmentVerdict::Store
    }

    /// `segment` is done: `server`'s copy of it is cancelled.
    fn cancel_copy(&mut self, server: ServerId, segment: u64) {
        if let Some(conn) = self.servers.conn_mut(server) {
            if let Some(s) = conn.slot_mut(segment) {
                s.cancelling = true;
                self.actions.push_back(Action::Cancel {
                    conn: conn.id,
                    segment,
                });
            }
        }
    }

    /// Ends `server`'s current connection: its segments go back to the pool, the driver is
    /// told to close it (unless the driver reported the end itself), and the server moves to
    /// Backoff or Blamed.
    fn drop_conn(
        &mut self,
        server: ServerId,
        now: Duration,
        notify: Option<DropReason>,
        fate: Fate,
    ) {
        if let Some(election) = self.election.as_mut() {
            election.votes.retain(|(s, _)| *s != server);
            // With no vote left there is nothing to decide: the next header opens a new
            // window. (Kept, its deadline would be due forever, as nothing can close it.)
            if election.votes.is_empty() {
                self.election = None;
            }
        }
        if let Some(conn) = self.servers.close(server) {
            if let Some(job) = self.job.as_mut() {
                for slot in conn.slots.iter().filter(|s| !s.cancelling) {
                    self.dispatch_pending |= job.segments.remove_holder(slot.segment, server);
                }
            }
            if let Some(reason) = notify {
                self.actions.push_back(Action::Disconnect {
                    conn: conn.id,
                    reason,
                });
            }
        }
        self.hungry.remove(&server);
        match fate {
            Fate::Retry(error) => {
                // Giving up is for a job that can never succeed: none while it holds verified
                // data (it is resumable), and none while another server answered (say, one
                // that keeps stalling: a server that comes back must find the job trying).
                let may_give_up =
                    self.segments_done() == 0 && !self.servers.any_reached_besides(Some(server));
                self.servers
                    .fail(server, now, error, &self.config, may_give_up)
            }
            Fate::Blame(reason) => self.servers.blame(server, reason),
        }
        self.servers.arm(server, &self.config);
    }

    /// Runs after every event: finishes the job if all is done, otherwise hands whatever
    /// became available to servers with free slots.
    fn settle(&mut self, now: Duration) {
        if self.complete {
            return;
        }
        self.try_decide(now);
        self.activate_waiting_followers(now);
        if self.job.as_ref().is_some_and(|j| j.segments.is_complete()) {
            // The driver closes every connection itself; nothing queued still matters.
            self.complete = true;
            self.actions.clear();
            self.hungry.clear();
            self.servers.clear_timers();
            return;
        }
        // Servers given up while the job had nothing try again when giving up no longer
        // holds: a server answered since (the job may succeed), or the job verified data
        // and every other server was blamed since (a resumable job keeps waiting).
        let revive = self.servers.any_reached_besides(None)
            || (self.segments_done() > 0 && self.out_of_servers());
        if self.servers.given_up() > 0 && revive {
            self.servers.revive_given_up(now, &self.config);
        }
        // Each round either stops or handed out a segment that just became duplicable, so
        // the loop ends after at most (holders that can exist) rounds.
        while std::mem::take(&mut self.dispatch_pending) {
            let Some(job) = self.job.as_mut() else {
                return;
            };
            if self.hungry.is_empty() || !job.segments.has_available() {
                return;
            }
            let waiting: Vec<ServerId> = self.hungry.iter().copied().collect();
            for server in waiting {
                if !self
                    .job
                    .as_mut()
                    .is_some_and(|j| j.segments.has_available())
                {
                    break;
                }
                self.fill(server, now);
            }
        }
    }
}
