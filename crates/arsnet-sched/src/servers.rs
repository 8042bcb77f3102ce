//! Per-server bookkeeping: each server's state, its one current connection and that
//! connection's pipeline slots, the live-connection index used to spot stale ids, the
//! timer index behind `next_deadline`, and the two indices the silence rule reads (who is
//! owed data and quiet since when, who heard data last). State changes go through this
//! module so that the counters the job phase is computed from, the timers and the indices
//! can never drift from the states.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::config::Config;
use crate::ids::{ConnId, ServerId};
use crate::status::{ServerState, ServerStats};

/// One pipeline slot of a connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub(crate) segment: u64,
    /// Another copy already won; a CANCEL was sent and the slot waits for its answer.
    pub(crate) cancelling: bool,
    /// When the REQUEST was issued.
    pub(crate) requested_at: Duration,
}

/// The current connection attempt of a server.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) id: ConnId,
    /// Header accepted.
    pub(crate) active: bool,
    /// Header delivered as a vote, awaiting the election: the handshake is over, so its
    /// silence timer no longer runs (the election window decides when it ends).
    pub(crate) voted: bool,
    /// Its handshake waits while another connection of the job assembles the digest table
    /// it needs: that is not silence of this server (the assembling connection is bounded
    /// by the protocol's minimum digest rate), so no handshake timer runs meanwhile.
    pub(crate) waiting_for_table: bool,
    pub(crate) slots: Vec<Slot>,
    /// Last time data arrived (handshake bytes included), or the pipeline went from empty
    /// to busy; the clock of the handshake and stall deadlines and of the silence rule.
    pub(crate) last_progress: Duration,
    /// Last time data arrived while the connection was Active; `None` before any. Unlike
    /// `last_progress` it never moves without bytes (a refill, an activation, the storage
    /// catching up), so it says whether the connection is *delivering*: the silence rule
    /// drops a quiet connection only while another one is.
    pub(crate) last_data: Option<Duration>,
    /// When the connection last delivered a whole segment (or was accepted): how long it is
    /// taking for its current one, measured against the job's fastest (see `laggards`).
    pub(crate) last_delivery: Duration,
}

impl Conn {
    /// How long the connection has been working on its current segment: since its last
    /// delivery or its oldest live request, whichever is later. `None` with nothing to do.
    pub(crate) fn busy_for(&self, now: Duration) -> Option<Duration> {
        Some(now.saturating_sub(self.busy_since()?))
    }

    /// Since when the connection has been working on its current segment (see
    /// [`Conn::busy_for`]).
    pub(crate) fn busy_since(&self) -> Option<Duration> {
        let oldest = self
            .slots
            .iter()
            .filter(|s| !s.cancelling)
            .map(|s| s.requested_at)
            .min()?;
        Some(oldest.max(self.last_delivery))
    }
}

impl Conn {
    /// Removes and returns the slot holding `segment`.
    pub(crate) fn take_slot(&mut self, segment: u64) -> Option<Slot> {
        let index = self.slots.iter().position(|s| s.segment == segment)?;
        Some(self.slots.remove(index))
    }

    pub(crate) fn slot_mut(&mut self, segment: u64) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.segment == segment)
    }
}

#[derive(Debug)]
struct Server {
    state: ServerState,
    conn: Option<Conn>,
    /// Consecutive failures since the last delivered segment; drives the backoff curve.
    attempt: u32,
    /// It delivered a header once (a vote or an accepted one): it is reachable, and is never
    /// given up for this run.
    reached: bool,
    /// Failed attempts before it was reached, the count `Config::max_tries` bounds.
    tries: u32,
    segments_done: u64,
    failures: u64,
    /// Smoothed time this server takes per segment (first copies only), once measured; its
    /// entry in `Servers::segment_times`.
    segment_time: Option<Duration>,
    /// The entry this server has in the timer index, if any.
    timer: Option<Duration>,
    /// Its entry in `Servers::quiet`, if any.
    quiet: Option<Duration>,
    /// Its entry in `Servers::heard`, if any.
    heard: Option<Duration>,
}

/// All servers of a job.
#[derive(Debug)]
pub(crate) struct Servers {
    list: Vec<Server>,
    by_conn: HashMap<ConnId, ServerId>,
    timers: BTreeSet<(Duration, ServerId)>,
    /// Active connections owed data (segments in flight), by their silence clock
    /// (`Conn::last_progress`): the silence rule's candidates, quietest first. Kept as an
    /// index so that `next_deadline` stays cheap with thousands of servers.
    quiet: BTreeSet<(Duration, ServerId)>,
    /// Active connections that received data, by when they last did (`Conn::last_data`):
    /// whether anybody is delivering, without a scan.
    heard: BTreeSet<(Duration, ServerId)>,
    /// Every measured `Server::segment_time`, fastest first.
    segment_times: BTreeSet<(Duration, ServerId)>,
    next_conn: u64,
    /// Servers that are Active or Connecting.
    live: usize,
    blamed: usize,
    /// Servers in `GaveUp`.
    given_up: usize,
    /// The driver's storage is pushing back: it is not reading any connection, so their
    /// silence says nothing about the servers and no silence timer runs.
    storage_busy: bool,
}

fn is_live(state: &ServerState) -> bool {
    matches!(state, ServerState::Active | ServerState::Connecting)
}

impl Servers {
    pub(crate) fn new(count: usize) -> Self {
        Servers {
            list: (0..count)
                .map(|_| Server {
                    state: ServerState::Idle,
                    conn: None,
                    attempt: 0,
                    reached: false,
                    tries: 0,
                    segment_time: None,
                    segments_done: 0,
                    failures: 0,
                    timer: None,
                    quiet: None,
                    heard: None,
                })
                .collect(),
            by_conn: HashMap::new(),
            timers: BTreeSet::new(),
            quiet: BTreeSet::new(),
            heard: BTreeSet::new(),
            segment_times: BTreeSet::new(),
            next_conn: 1,
            live: 0,
            blamed: 0,
            given_up: 0,
            storage_busy: false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn live(&self) -> usize {
        self.live
    }

    pub(crate) fn blamed(&self) -> usize {
        self.blamed
    }

    pub(crate) fn given_up(&self) -> usize {
        self.given_up
    }

    /// Whether a server other than `except` answered once and is not blamed: then the job
    /// is not one that can never succeed, and no server is given up.
    pub(crate) fn any_reached_besides(&self, except: Option<ServerId>) -> bool {
        self.list.iter().enumerate().any(|(id, s)| {
            Some(id) != except
                && s.reached
                && !matches!(s.state, ServerState::Blamed(_) | ServerState::GaveUp { .. })
        })
    }

    pub(crate) fn state(&self, server: ServerId) -> Option<&ServerState> {
        self.list.get(server).map(|s| &s.state)
    }

    pub(crate) fn stats(&self, server: ServerId) -> ServerStats {
        self.list
            .get(server)
            .map_or_else(ServerStats::default, |s| ServerStats {
                segments_done: s.segments_done,
                failures: s.failures,
                in_flight: s.conn.as_ref().map_or(0, |c| c.slots.len()),
            })
    }

    /// The server whose *current* connection is `conn`; `None` for stale or unknown ids.
    pub(crate) fn lookup(&self, conn: ConnId) -> Option<ServerId> {
        self.by_conn.get(&conn).copied()
    }

    pub(crate) fn conn(&self, server: ServerId) -> Option<&Conn> {
        self.list.get(server)?.conn.as_ref()
    }

    pub(crate) fn conn_mut(&mut self, server: ServerId) -> Option<&mut Conn> {
        self.list.get_mut(server)?.conn.as_mut()
    }

    fn set_state(&mut self, server: ServerId, state: ServerState) {
        let Some(entry) = self.list.get_mut(server) else {
            return;
        };
        let old = std::mem::replace(&mut entry.state, state);
        let (was_live, now_live) = (is_live(&old), is_live(&entry.state));
        let was_blamed = matches!(old, ServerState::Blamed(_));
        let now_blamed = matches!(entry.state, ServerState::Blamed(_));
        let was_given_up = matches!(old, ServerState::GaveUp { .. });
        let now_given_up = matches!(entry.state, ServerState::GaveUp { .. });
        if was_given_up != now_given_up {
            self.given_up = if now_given_up {
                self.given_up + 1
            } else {
                self.given_up.saturating_sub(1)
            };
        }
        if was_live != now_live {
            self.live = if now_live {
                self.live + 1
            } else {
                self.live.saturating_sub(1)
            };
        }
        if was_blamed != now_blamed {
            self.blamed = if now_blamed {
                self.blamed + 1
            } else {
                self.blamed.saturating_sub(1)
            };
        }
        self.index(server);
    }

    /// Starts a new connection attempt for `server` (which must have none), returning its id.
    pub(crate) fn open(&mut self, server: ServerId, now: Duration) -> Option<ConnId> {
        let entry = self.list.get_mut(server)?;
        let terminal = matches!(
            entry.state,
            ServerState::Blamed(_) | ServerState::GaveUp { .. }
        );
        if entry.conn.is_some() || terminal {
            return None;
        }
        let id = ConnId(self.next_conn);
        self.next_conn = self.next_conn.saturating_add(1);
        entry.conn = Some(Conn {
            id,
            active: false,
            voted: false,
            waiting_for_table: false,
            slots: Vec::new(),
            last_progress: now,
            last_data: None,
            last_delivery: now,
        });
        self.by_conn.insert(id, server);
        self.set_state(server, ServerState::Connecting);
        Some(id)
    }

    /// The header was accepted: the server is Active. Its failure streak goes on until it
    /// delivers a segment: a server that closes right after every header keeps backing off.
    pub(crate) fn activate(&mut self, server: ServerId, now: Duration) {
        let Some(entry) = self.list.get_mut(server) else {
            return;
        };
        let Some(conn) = entry.conn.as_mut() else {
            return;
        };
        conn.active = true;
        conn.last_progress = now;
        conn.last_delivery = now;
        self.mark_reached(server);
        self.set_state(server, ServerState::Active);
    }

    /// The server delivered a header (accepted, or a vote awaiting the election): whatever
    /// happens to its connections later, it is reachable.
    pub(crate) fn mark_reached(&mut self, server: ServerId) {
        if let Some(entry) = self.list.get_mut(server) {
            entry.reached = true;
            entry.tries = 0;
        }
    }

    /// Detaches the server's connection (its id becomes stale) and hands it to the caller,
    /// who must release the segments it held.
    pub(crate) fn close(&mut self, server: ServerId) -> Option<Conn> {
        let conn = self.list.get_mut(server)?.conn.take()?;
        self.by_conn.remove(&conn.id);
        self.index(server);
        Some(conn)
    }

    /// Records a failure: Backoff until `now + backoff(attempt)`, then attempt += 1. A server
    /// never reached that has used up `max_tries` is given up instead, when `may_give_up`
    /// (the job holds no verified segment: one that does waits for its servers).
    pub(crate) fn fail(
        &mut self,
        server: ServerId,
        now: Duration,
        error: String,
        config: &Config,
        may_give_up: bool,
    ) {
        let Some(entry) = self.list.get_mut(server) else {
            return;
        };
        let delay = config.backoff(entry.attempt);
        entry.attempt = entry.attempt.saturating_add(1);
        entry.failures = entry.failures.saturating_add(1);
        if !entry.reached {
            entry.tries = entry.tries.saturating_add(1);
        }
        let state = if !entry.reached && may_give_up && config.out_of_tries(entry.tries) {
            ServerState::GaveUp {
                attempts: entry.tries,
                last_error: error,
            }
        } else {
            ServerState::Backoff {
                until: now.saturating_add(delay),
                attempt: entry.attempt,
                last_error: error,
            }
        };
        self.set_state(server, state);
    }

    /// A server in backoff tries again no earlier than `until`.
    pub(crate) fn defer(&mut self, server: ServerId, until: Duration) {
        if let Some(entry) = self.list.get_mut(server) {
            if let ServerState::Backoff { until: due, .. } = &mut entry.state {
                *due = (*due).max(until);
            }
        }
    }

    /// Servers given up go back to retrying (Backoff, their delay continuing the curve): the
    /// job holds verified data but has no other server left, and a resumable job waits for
    /// its servers rather than fail.
    pub(crate) fn revive_given_up(&mut self, now: Duration, config: &Config) {
        for server in 0..self.list.len() {
            let Some(entry) = self.list.get_mut(server) else {
                continue;
            };
            let ServerState::GaveUp { last_error, .. } = &entry.state else {
                continue;
            };
            let state = ServerState::Backoff {
                until: now.saturating_add(config.backoff(entry.attempt)),
                attempt: entry.attempt,
                last_error: last_error.clone(),
            };
            self.set_state(server, state);
            self.arm(server, config);
        }
    }

    /// Drops the server for the rest of the job.
    pub(crate) fn blame(&mut self, server: ServerId, reason: String) {
        let Some(entry) = self.list.get_mut(server) else {
            return;
        };
        entry.failures = entry.failures.saturating_add(1);
        self.set_state(server, ServerState::Blamed(reason));
    }

    /// The server delivered a verified segment first, after working on it for `took`:
    /// counted, its speed estimate updated, and its failure streak ends.
    pub(crate) fn count_store(&mut self, server: ServerId, took: Duration) {
        if let Some(entry) = self.list.get_mut(server) {
            entry.segments_done = entry.segments_done.saturating_add(1);
            entry.attempt = 0;
            // Exponential average, 1/4 weight for the new sample.
            let time = match entry.segment_time {
                Some(avg) => (avg * 3 + took) / 4,
                None => took,
            };
            reindex(
                &mut self.segment_times,
                &mut entry.segment_time,
                Some(time),
                server,
            );
        }
    }

    /// The fastest per-segment time any server has shown so far. An index lookup, not a
    /// scan, so that a deadline computed from it stays cheap with thousands of servers.
    pub(crate) fn best_segment_time(&self) -> Option<Duration> {
        self.segment_times.first().map(|&(time, _)| time)
    }

    /// Servers waiting out a backoff (for "retry now").
    pub(crate) fn in_backoff(&self) -> Vec<ServerId> {
        (0..self.list.len())
            .filter(|&s| matches!(self.state(s), Some(ServerState::Backoff { .. })))
            .collect()
    }

    /// Re-derives the server's timer from its state: reconnect time in Backoff, handshake
    /// deadline (silence since the last handshake byte) while Connecting, neither voted nor
    /// waiting for a sibling's digest table,
    /// stall deadline while Active with segments in flight. No silence timer runs while the
    /// storage is busy.
    pub(crate) fn arm(&mut self, server: ServerId, config: &Config) {
        // Every change to a connection's clocks or slots is followed by `arm`: the silence
        // indices are re-derived here, like the timer.
        self.index(server);
        let busy = self.storage_busy;
        let Some(entry) = self.list.get_mut(server) else {
            return;
        };
        let due = match (&entry.state, &entry.conn) {
            (ServerState::Backoff { until, .. }, _) => Some(*until),
            (ServerState::Connecting, Some(conn))
                if !conn.voted && !conn.waiting_for_table && !busy =>
            {
                Some(conn.last_progress.saturating_add(config.handshake_timeout))
            }
            (ServerState::Active, Some(conn)) if !conn.slots.is_empty() && !busy => {
                Some(conn.last_progress.saturating_add(config.stall_timeout))
            }
            _ => None,
        };
        if due == entry.timer {
            return;
        }
        if let Some(old) = entry.timer {
            self.timers.remove(&(old, server));
        }
        if let Some(at) = due {
            self.timers.insert((at, server));
        }
        entry.timer = due;
    }

    /// Re-derives the server's entries in the silence indices from its connection: in
    /// `quiet` while Active with segments in flight, in `heard` while Active once data
    /// arrived.
    fn index(&mut self, server: ServerId) {
        let Some(entry) = self.list.get_mut(server) else {
            return;
        };
        let active = matches!(entry.state, ServerState::Active);
        let conn = entry.conn.as_ref().filter(|c| active && c.active);
        let quiet = conn
            .filter(|c| !c.slots.is_empty())
            .map(|c| c.last_progress);
        let heard = conn.and_then(|c| c.last_data);
        reindex(&mut self.quiet, &mut entry.quiet, quiet, server);
        reindex(&mut self.heard, &mut entry.heard, heard, server);
    }

    /// Active connections owed data, quietest first: when each was last heard from (or
    /// given work while idle), and its server.
    pub(crate) fn quiet(&self) -> impl Iterator<Item = (Duration, ServerId)> + '_ {
        self.quiet.iter().copied()
    }

    /// The active connection data arrived on most recently: its server, and when.
    pub(crate) fn loudest(&self) -> Option<(ServerId, Duration)> {
        self.heard.last().map(|&(at, server)| (server, at))
    }

    /// Whether the storage is busy (see [`Servers::set_storage_busy`]).
    pub(crate) fn storage_busy(&self) -> bool {
        self.storage_busy
    }

    /// The storage started (`busy`) or stopped pushing back. When it stops, every
    /// connection's clocks restart at `now`: the silence while the driver did not read was
    /// the driver's, not the server's. Every timer is re-derived.
    pub(crate) fn set_storage_busy(&mut self, busy: bool, now: Duration, config: &Config) {
        self.storage_busy = busy;
        if !busy {
            for conn in self.list.iter_mut().filter_map(|s| s.conn.as_mut()) {
                conn.last_progress = conn.last_progress.max(now);
                if conn.active {
                    conn.last_delivery = conn.last_delivery.max(now);
                }
            }
        }
        for server in 0..self.list.len() {
            self.arm(server, config);
        }
    }

    /// Removes and returns a server whose timer is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Duration) -> Option<ServerId> {
        let &(at, server) = self.timers.first()?;
        if at > now {
            return None;
        }
        self.timers.remove(&(at, server));
        if let Some(entry) = self.list.get_mut(server) {
            entry.timer = None;
        }
        Some(server)
    }

    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Forgets every timer and silence index entry (the job is over).
    pub(crate) fn clear_timers(&mut self) {
        self.timers.clear();
        self.quiet.clear();
        self.heard.clear();
        for entry in &mut self.list {
            entry.timer = None;
            entry.quiet = None;
            entry.heard = None;
        }
    }
}

/// Moves `server`'s entry in `index` from `*current` to `new`.
fn reindex(
    index: &mut BTreeSet<(Duration, ServerId)>,
    current: &mut Option<Duration>,
    new: Option<Duration>,
    server: ServerId,
) {
    if *current == new {
        return;
    }
    if let Some(old) = current.take() {
        index.remove(&(old, server));
    }
    if let Some(at) = new {
        index.insert((at, server));
    }
    *current = new;
}

#[cfg(test)]
mod tests {
    use super::*;

    type Entries = Vec<(Duration, ServerId)>;

    /// The `quiet` and `heard` indices, in order.
    fn indexed(servers: &Servers) -> (Entries, Entries) {
        (
            servers.quiet.iter().copied().collect(),
            servers.heard.iter().copied().collect(),
        )
    }

    #[test]
    fn silence_indices_follow_the_connection() {
        let config = Config::default();
        let ms = Duration::from_millis;
        let mut servers = Servers::new(2);
        servers.open(0, ms(0));
        servers.arm(0, &config);
        assert_eq!(indexed(&servers), (vec![], vec![]), "connecting: neither");
        servers.activate(0, ms(10));
        servers.arm(0, &config);
        assert_eq!(indexed(&servers), (vec![], vec![]), "idle, nothing heard");
        let conn = servers.conn_mut(0).expect("open");
        conn.slots.push(Slot {
            segment: 0,
            cancelling: false,
            requested_at: ms(10),
        });
        servers.arm(0, &config);
        assert_eq!(indexed(&servers), (vec![(ms(10), 0)], vec![]), "owed data");
        let conn = servers.conn_mut(0).expect("open");
        conn.last_progress = ms(20);
        conn.last_data = Some(ms(20));
        servers.arm(0, &config);
        assert_eq!(indexed(&servers), (vec![(ms(20), 0)], vec![(ms(20), 0)]));
        assert_eq!(servers.loudest(), Some((0, ms(20))));
        // Busy storage stops the timers, not the bookkeeping (the rule checks it itself).
        servers.set_storage_busy(true, ms(30), &config);
        assert_eq!(indexed(&servers), (vec![(ms(20), 0)], vec![(ms(20), 0)]));
        servers.set_storage_busy(false, ms(40), &config);
        assert_eq!(indexed(&servers), (vec![(ms(40), 0)], vec![(ms(20), 0)]));
        servers.conn_mut(0).expect("open").slots.clear();
        servers.arm(0, &config);
        assert_eq!(indexed(&servers), (vec![], vec![(ms(20), 0)]), "idle again");
        servers.close(0);
        servers.fail(0, ms(50), "gone".into(), &config, false);
        servers.arm(0, &config);
        assert_eq!(indexed(&servers), (vec![], vec![]), "closed: neither");
        assert_eq!(servers.loudest(), None);
    }

    #[test]
    fn the_fastest_segment_time_follows_every_update() {
        let ms = Duration::from_millis;
        let mut servers = Servers::new(2);
        assert_eq!(servers.best_segment_time(), None);
        servers.count_store(0, ms(100));
        servers.count_store(1, ms(200));
        assert_eq!(servers.best_segment_time(), Some(ms(100)));
        // Server 0 slows down (average 3/4 old + 1/4 new): 100 -> 300 -> 450.
        servers.count_store(0, ms(900));
        servers.count_store(0, ms(900));
        assert_eq!(servers.best_segment_time(), Some(ms(200)));
        assert_eq!(servers.segment_times.len(), 2, "one entry per server");
    }
}
