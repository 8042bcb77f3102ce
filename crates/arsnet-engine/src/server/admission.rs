//! Who gets a connection slot of a virtual server. A port serves a bounded number of
//! connections, and one source address a bounded share of them. A newcomer that finds the
//! port (or its own source) full takes the slot of the connection that has done nothing for
//! longest: one that never said HELLO first, then one with nothing queued, then one whose
//! write to its client has stalled. So idle, half-open and trickle-reading clients cannot
//! lock honest ones out, however many they open. Connections that are transferring are
//! never evicted: when every slot is busy the newcomer is refused and retries later.
//!
//! Connections report their phase through a lock-free [`Activity`] on their hot path; the
//! table itself is locked only to admit and to release.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// What a connection is doing, as far as eviction cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Connected, no HELLO yet.
    Handshake,
    /// Nothing queued: waiting for the client's next REQUEST.
    Idle,
    /// Writing to the client (a write that does not finish means the client is not reading).
    Writing,
    /// Reading the file or waiting for `--rate` tokens: the server's own doing, never a
    /// reason to evict.
    Working,
}

impl Phase {
    const ALL: [Phase; 4] = [
        Phase::Handshake,
        Phase::Idle,
        Phase::Writing,
        Phase::Working,
    ];

    fn code(self) -> u64 {
        self as u64
    }
}

/// A connection's phase and when it began, packed in one atomic so a reader never sees a
/// phase with another phase's start time.
pub(crate) struct Activity {
    origin: Instant,
    /// Phase code in the top 8 bits, milliseconds since `origin` below.
    packed: AtomicU64,
}

const MS_BITS: u32 = 56;
const MS_MASK: u64 = (1 << MS_BITS) - 1;

impl Activity {
    fn new(now: Instant) -> Self {
        Activity {
            origin: now,
            packed: AtomicU64::new(Phase::Handshake.code() << MS_BITS),
        }
    }

    /// Enters `phase` now.
    pub fn set(&self, phase: Phase) {
        self.set_at(phase, Instant::now());
    }

    /// Enters `phase` as of `at` (a phase resumed keeps its original start).
    pub fn set_at(&self, phase: Phase, at: Instant) {
        let ms = u64::try_from(at.saturating_duration_since(self.origin).as_millis())
            .unwrap_or(MS_MASK)
            .min(MS_MASK);
        self.packed
            .store((phase.code() << MS_BITS) | ms, Ordering::Relaxed);
    }

    fn get(&self) -> (Phase, Instant) {
        let packed = self.packed.load(Ordering::Relaxed);
        let phase = Phase::ALL
            .get((packed >> MS_BITS) as usize)
            .copied()
            .unwrap_or(Phase::Working);
        (phase, self.origin + Duration::from_millis(packed & MS_MASK))
    }
}

/// The limits one port enforces (the constants of `arsnet_proto::limits`; tests use others).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub per_port: usize,
    pub per_source: usize,
    pub stalled_write: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        use arsnet_proto::limits::*;
        Limits {
            per_port: SERVER_MAX_CONNECTIONS_PER_PORT,
            per_source: SERVER_MAX_CONNECTIONS_PER_SOURCE,
            stalled_write: SERVER_STALLED_WRITE_EVICTABLE,
        }
    }
}

/// Why a newcomer was turned away; sent to it in an ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("server busy: all {0} connections of this port are transferring; try again later")]
    PortBusy(usize),
    #[error("server busy: your address already has {0} connections transferring from this port")]
    SourceBusy(usize),
}

struct Entry {
    id: u64,
    source: IpAddr,
    activity: Arc<Activity>,
    evict: CancellationToken,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    entries: Vec<Entry>,
}

/// The connection table of one port.
pub(crate) struct Admission {
    limits: Limits,
    table: Mutex<Table>,
}

/// A connection's slot; dropping it frees the slot.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    pub activity: Arc<Activity>,
    /// Cancelled when a newcomer takes this slot.
    pub evicted: CancellationToken,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut table = self.admission.lock();
        if let Some(i) = table.entries.iter().position(|e| e.id == self.id) {
            table.entries.swap_remove(i);
        }
    }
}

/// Addresses that count as one source: an IPv4 address (also when IPv4-mapped), or an
/// IPv6 /64, since one host usually owns a whole /64 and could otherwise pick new addresses.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            table: Mutex::new(Table::default()),
        })
    }

    /// A poisoned lock only means a panic elsewhere; the table is still coherent (every
    /// change is a single push or swap_remove).
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives a slot to a connection from `peer`, evicting the longest-idle connection (of
    /// its own source if that is full, else of the port) when there is no free one. Returns
    /// the ticket and the phase of the connection evicted, if any.
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        now: Instant,
    ) -> Result<(Ticket, Option<Phase>), Refusal> {
        let source = source_of(peer);
        let mut table = self.lock();
        let same_source = table.entries.iter().filter(|e| e.source == source).count();
        let victim = if same_source >= self.limits.per_source {
            let victim = self.victim(&table, now, |e| e.source == source);
            Some(victim.ok_or(Refusal::SourceBusy(same_source))?)
        } else if table.entries.len() >= self.limits.per_port {
            let victim = self.victim(&table, now, |_| true);
            Some(victim.ok_or(Refusal::PortBusy(table.entries.len()))?)
        } else {
            None
        };
        let evicted = victim.map(|i| {
            let entry = table.entries.swap_remove(i);
            entry.evict.cancel();
            entry.activity.get().0
        });
        let id = table.next_id;
        table.next_id += 1;
        let activity = Arc::new(Activity::new(now));
        let evict = CancellationToken::new();
        table.entries.push(Entry {
            id,
            source,
            activity: activity.clone(),
            evict: evict.clone(),
        });
        let ticket = Ticket {
            admission: self.clone(),
            id,
            activity,
            evicted: evict,
        };
        Ok((ticket, evicted))
    }

    /// The entry to evict among those `eligible`: never-greeted first, then idle, then
    /// stalled writers; within each, the one in that state for longest.
    fn victim(
        &self,
        table: &Table,
        now: Instant,
        eligible: impl Fn(&Entry) -> bool,
    ) -> Option<usize> {
        table
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| eligible(e))
            .filter_map(|(i, e)| {
                let (phase, since) = e.activity.get();
                let rank = match phase {
                    Phase::Handshake => 0,
                    Phase::Idle => 1,
                    Phase::Writing
                        if now.saturating_duration_since(since) >= self.limits.stalled_write =>
                    {
                        2
                    }
                    Phase::Writing | Phase::Working => return None,
                };
                Some((rank, since, i))
            })
            .min_by_key(|&(rank, since, _)| (rank, since))
            .map(|(_, _, i)| i)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn limits(per_port: usize, per_source: usize) -> Limits {
        Limits {
            per_port,
            per_source,
            stalled_write: Duration::from_secs(10),
        }
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn free_slots_are_given_without_evicting() {
        let adm = Admission::new(limits(2, 2));
        let t0 = Instant::now();
        let (a, ev) = adm.admit(A, t0).unwrap();
        assert_eq!(ev, None);
        let (_b, ev) = adm.admit(B, t0).unwrap();
        assert_eq!(ev, None);
        assert_eq!(adm.len(), 2);
        drop(a);
        assert_eq!(adm.len(), 1, "a dropped ticket frees its slot");
    }

    #[test]
    fn full_port_evicts_handshake_then_longest_idle_and_never_a_transfer() {
        let adm = Admission::new(limits(3, 3));
        let t0 = Instant::now();
        let (busy, _) = adm.admit(A, t0).unwrap();
        busy.activity.set_at(Phase::Working, t0);
        let (idle_old, _) = adm.admit(B, t0).unwrap();
        idle_old.activity.set_at(Phase::Idle, secs(t0, 1));
        let (idle_new, _) = adm.admit(A, t0).unwrap();
        idle_new.activity.set_at(Phase::Idle, secs(t0, 5));

        let (greeting, ev) = adm.admit(B, secs(t0, 6)).unwrap();
        assert_eq!(ev, Some(Phase::Idle));
        assert!(idle_old.evicted.is_cancelled(), "longest idle goes first");
        assert!(!idle_new.evicted.is_cancelled());

        // A connection that never said HELLO goes before any idle one, however recent.
        let (_, ev) = adm.admit(B, secs(t0, 7)).unwrap();
        assert_eq!(ev, Some(Phase::Handshake));
        assert!(greeting.evicted.is_cancelled());
        assert!(!busy.evicted.is_cancelled(), "a transfer is never evicted");
    }

    #[test]
    fn every_slot_busy_refuses_the_newcomer() {
        let adm = Admission::new(limits(2, 2));
        let t0 = Instant::now();
        let (a, _) = adm.admit(A, t0).unwrap();
        a.activity.set_at(Phase::Working, t0);
        let (b, _) = adm.admit(B, t0).unwrap();
        // Writing, but not stalled for long enough yet.
        b.activity.set_at(Phase::Writing, secs(t0, 1));
        assert_eq!(adm.admit(B, secs(t0, 5)).err(), Some(Refusal::PortBusy(2)));
        // Stalled past the limit: a trickle reader, evictable.
        let (_, ev) = adm.admit(B, secs(t0, 11)).unwrap();
        assert_eq!(ev, Some(Phase::Writing));
        assert!(b.evicted.is_cancelled());
        assert!(!a.evicted.is_cancelled());
    }

    #[test]
    fn a_full_source_evicts_its_own_connections_only() {
        let adm = Admission::new(limits(10, 2));
        let t0 = Instant::now();
        let (other, _) = adm.admit(B, t0).unwrap();
        other.activity.set_at(Phase::Idle, t0);
        let (a1, _) = adm.admit(A, t0).unwrap();
        a1.activity.set_at(Phase::Idle, secs(t0, 2));
        let (a2, _) = adm.admit(A, t0).unwrap();
        a2.activity.set_at(Phase::Working, secs(t0, 2));
        let (_a3, ev) = adm.admit(A, secs(t0, 3)).unwrap();
        assert_eq!(ev, Some(Phase::Idle));
        assert!(a1.evicted.is_cancelled());
        assert!(
            !other.evicted.is_cancelled(),
            "another source's idle slot is not taken"
        );
        // Both of A's slots now busy or fresh: A's next newcomer evicts the fresh one
        // (handshake), and once both transfer, A is refused while B still gets in.
        let (a4, ev) = adm.admit(A, secs(t0, 4)).unwrap();
        assert_eq!(ev, Some(Phase::Handshake));
        a4.activity.set_at(Phase::Working, secs(t0, 4));
        assert_eq!(
            adm.admit(A, secs(t0, 5)).err(),
            Some(Refusal::SourceBusy(2))
        );
        assert!(adm.admit(B, secs(t0, 5)).is_ok());
    }

    #[test]
    fn sources_group_ipv6_by_64_and_unmap_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(source_of(mapped), A);
    }

    #[test]
    fn activity_round_trips_phase_and_time() {
        let t0 = Instant::now();
        let act = Activity::new(t0);
        assert_eq!(act.get(), (Phase::Handshake, t0));
        act.set_at(Phase::Writing, secs(t0, 3));
        assert_eq!(act.get(), (Phase::Writing, secs(t0, 3)));
    }
}
