//! The segment table: for every segment, whether it is Missing, InFlight (and on which
//! servers' connections) or Done, with the two queries the scheduler asks on every request
//! answered without walking the whole table:
//!
//! - *lowest Missing segment*: segments are handed out in order through a cursor; everything
//!   below the cursor that became Missing again (its connection died) sits in a small ordered
//!   set. The cursor skips already-done segments (resume) a word at a time, so handing out all
//!   of 4 million segments costs O(n / 64) scanning in total, not O(n) per request.
//! - *oldest duplicable in-flight segment* (endgame): an ordered index keyed by the earliest
//!   request time of segments that have fewer holders than the copy limit.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::bitset::Bitset;
use crate::ids::ServerId;

/// One connection (named by its server: a server has at most one) fetching a segment.
#[derive(Clone, Copy, Debug)]
struct Holder {
    server: ServerId,
    requested_at: Duration,
}

/// The holders of one in-flight segment. Small: at most `max_copies` entries.
#[derive(Clone, Debug, Default)]
struct Flight {
    holders: Vec<Holder>,
}

impl Flight {
    fn holds(&self, server: ServerId) -> bool {
        self.holders.iter().any(|h| h.server == server)
    }

    fn oldest_request(&self) -> Option<Duration> {
        self.holders.iter().map(|h| h.requested_at).min()
    }
}

/// The state of every segment of one job.
#[derive(Debug)]
pub(crate) struct SegmentTable {
    count: u64,
    done: Bitset,
    done_count: u64,
    /// Every segment at or above the cursor has never been handed out (it may be done from a
    /// resume). Below it, a segment that is neither done nor in flight is in `returned`.
    cursor: u64,
    returned: BTreeSet<u64>,
    flights: HashMap<u64, Flight>,
    /// `(oldest request time, segment)` of in-flight segments with `1..max_copies` holders.
    duplicable: BTreeSet<(Duration, u64)>,
    max_copies: usize,
}

impl SegmentTable {
    /// A table of `count` segments where `done` (out-of-range and repeated entries ignored)
    /// are already finished. `max_copies` of 1 disables duplication.
    pub(crate) fn new(count: u64, done: &[u64], max_copies: usize) -> Self {
        let mut table = SegmentTable {
            count,
            done: Bitset::default(),
            done_count: 0,
            cursor: 0,
            returned: BTreeSet::new(),
            flights: HashMap::new(),
            duplicable: BTreeSet::new(),
            max_copies: max_copies.max(1),
        };
        for &segment in done {
            if segment < count && table.done.set(segment) {
                table.done_count += 1;
            }
        }
        table
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn done_count(&self) -> u64 {
        self.done_count
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.done_count >= self.count
    }

    pub(crate) fn is_done(&self, segment: u64) -> bool {
        segment < self.count && self.done.get(segment)
    }

    /// Lowest never-handed-out segment that is not done, moving the cursor over done ones.
    fn peek_fresh(&mut self) -> Option<u64> {
        self.cursor = self.done.next_clear(self.cursor);
        (self.cursor < self.count).then_some(self.cursor)
    }

    pub(crate) fn has_missing(&mut self) -> bool {
        !self.returned.is_empty() || self.peek_fresh().is_some()
    }

    /// Whether an idle connection could get anything at all (a Missing segment, or a
    /// duplicable one — possibly its own, which the caller's pick then skips).
    pub(crate) fn has_available(&mut self) -> bool {
        !self.duplicable.is_empty() || self.has_missing()
    }

    /// [`Self::has_available`] without moving the cursor along (for read-only questions).
    pub(crate) fn any_available(&self) -> bool {
        !self.duplicable.is_empty()
            || !self.returned.is_empty()
            || self.done.next_clear(self.cursor) < self.count
    }

    /// Removes and returns the lowest-numbered Missing segment. The caller must make it
    /// InFlight with [`Self::add_holder`].
    pub(crate) fn take_missing(&mut self) -> Option<u64> {
        // Returned segments are all below the cursor, hence below any fresh one.
        if let Some(segment) = self.returned.pop_first() {
            return Some(segment);
        }
        let segment = self.peek_fresh()?;
        self.cursor = segment + 1;
        Some(segment)
    }

    /// The in-flight segment with the oldest request that `server` does not already hold and
    /// that has room for another copy. Skips at most the few segments `server` holds.
    pub(crate) fn pick_duplicate(&self, server: ServerId) -> Option<u64> {
        self.duplicable
            .iter()
            .map(|&(_, segment)| segment)
            .find(|segment| {
                self.flights
                    .get(segment)
                    .is_some_and(|flight| !flight.holds(server))
            })
    }

    fn duplicable_key(&self, flight: &Flight) -> Option<Duration> {
        if flight.holders.is_empty() || flight.holders.len() >= self.max_copies {
            None
        } else {
            flight.oldest_request()
        }
    }

    /// Moves `segment` between positions of the duplicable index; true when it just became
    /// duplicable (so idle connections may now have work).
    fn rekey(&mut self, segment: u64, old: Option<Duration>, new: Option<Duration>) -> bool {
        if old == new {
            return false;
        }
        if let Some(at) = old {
            self.duplicable.remove(&(at, segment));
        }
        if let Some(at) = new {
            self.duplicable.insert((at, segment));
        }
        old.is_none() && new.is_some()
    }

    /// Records that `server`'s connection requested `segment` at `now`. Returns true when the
    /// segment just became duplicable.
    pub(crate) fn add_holder(&mut self, segment: u64, server: ServerId, now: Duration) -> bool {
        let mut flight = self.flights.remove(&segment).unwrap_or_default();
        let old = self.duplicable_key(&flight);
        if !flight.holds(server) {
            flight.holders.push(Holder {
                server,
                requested_at: now,
            });
        }
        let new = self.duplicable_key(&flight);
        self.flights.insert(segment, flight);
        self.rekey(segment, old, new)
    }

    /// `server` no longer fetches `segment` (its connection died or it answered CANCELLED
    /// unasked). Returns true when that made the segment available to others: Missing again,
    /// or newly duplicable.
    pub(crate) fn remove_holder(&mut self, segment: u64, server: ServerId) -> bool {
        let Some(mut flight) = self.flights.remove(&segment) else {
            return false;
        };
        let old = self.duplicable_key(&flight);
        flight.holders.retain(|h| h.server != server);
        if flight.holders.is_empty() {
            self.rekey(segment, old, None);
            // At or above the cursor it is Missing by construction; below it must be listed.
            if !self.is_done(segment) && segment < self.cursor {
                self.returned.insert(segment);
            }
            return true;
        }
        let new = self.duplicable_key(&flight);
        self.flights.insert(segment, flight);
        self.rekey(segment, old, new)
    }

    /// Marks `segment` Done because `by` delivered it first. Returns the other servers still
    /// fetching it (to be cancelled), or `None` if it was already done or is out of range.
    pub(crate) fn finish(&mut self, segment: u64, by: ServerId) -> Option<Vec<ServerId>> {
        if segment >= self.count || !self.done.set(segment) {
            return None;
        }
        self.done_count += 1;
        self.returned.remove(&segment);
        let Some(flight) = self.flights.remove(&segment) else {
            return Some(Vec::new());
        };
        let old = self.duplicable_key(&flight);
        self.rekey(segment, old, None);
        Some(
            flight
                .holders
                .iter()
                .map(|h| h.server)
                .filter(|&server| server != by)
                .collect(),
        )
    }

    /// Makes a Done `segment` Missing again (what was delivered turned out to be bad).
    /// Returns whether it was Done.
    pub(crate) fn undo(&mut self, segment: u64) -> bool {
        if segment >= self.count || !self.done.clear(segment) {
            return false;
        }
        self.done_count -= 1;
        // Below the cursor a Missing segment must be in `returned`; at or above it (done by
        // a resume, never handed out) the cursor finds it.
        if segment < self.cursor {
            self.returned.insert(segment);
        }
        true
    }

    /// Number of connections fetching `segment` (tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn holders(&self, segment: u64) -> usize {
        self.flights.get(&segment).map_or(0, |f| f.holders.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::ZERO;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn hands_out_lowest_missing_first_including_returned() {
        let mut t = SegmentTable::new(10, &[], 1);
        for expected in 0..4 {
            let s = t.take_missing();
            assert_eq!(s, Some(expected));
            t.add_holder(expected, 0, T0);
        }
        // Segment 1 comes back: it is now the lowest Missing, ahead of fresh segment 4.
        assert!(t.remove_holder(1, 0));
        assert_eq!(t.take_missing(), Some(1));
        t.add_holder(1, 1, T0);
        assert_eq!(t.take_missing(), Some(4));
    }

    #[test]
    fn resumed_segments_are_skipped_and_counted() {
        let mut t = SegmentTable::new(8, &[0, 1, 3, 3, 99, 7], 1);
        assert_eq!(
            t.done_count(),
            4,
            "duplicates and out-of-range entries ignored"
        );
        let mut handed = Vec::new();
        while let Some(s) = t.take_missing() {
            t.add_holder(s, 0, T0);
            handed.push(s);
        }
        assert_eq!(handed, [2, 4, 5, 6]);
        for s in handed {
            assert_eq!(t.finish(s, 0), Some(Vec::new()));
        }
        assert!(t.is_complete());
        assert_eq!(t.finish(2, 0), None, "finishing twice is refused");
        assert_eq!(t.finish(100, 0), None, "out of range is refused");
    }

    #[test]
    fn four_million_segments_resume_is_cheap() {
        let count = 4 * 1024 * 1024;
        let done: Vec<u64> = (0..count - 1).collect();
        let mut t = SegmentTable::new(count, &done, 2);
        assert_eq!(t.take_missing(), Some(count - 1));
        assert_eq!(t.take_missing(), None);
        assert!(!t.has_missing());
    }

    #[test]
    fn duplicates_are_oldest_first_and_respect_copy_limit() {
        let mut t = SegmentTable::new(3, &[], 2);
        for (s, at) in [(0, ms(30)), (1, ms(10)), (2, ms(20))] {
            assert_eq!(t.take_missing(), Some(s));
            assert!(t.add_holder(s, 0, at), "a first holder makes it duplicable");
        }
        // Oldest request first; never a segment the asker already holds.
        assert_eq!(t.pick_duplicate(1), Some(1));
        assert_eq!(t.pick_duplicate(0), None);
        assert!(!t.add_holder(1, 1, ms(40)));
        assert_eq!(t.holders(1), 2);
        assert_eq!(
            t.pick_duplicate(1),
            Some(2),
            "segment 1 is at the copy limit"
        );
        // One copy goes away: duplicable again, now dated by its remaining (newer) request.
        assert!(t.remove_holder(1, 0));
        assert_eq!(t.pick_duplicate(2), Some(2));
        assert_eq!(t.pick_duplicate(0), Some(1));
        // The winner finishing reports the other holder for cancellation.
        assert!(!t.add_holder(2, 1, ms(50)));
        assert_eq!(t.finish(2, 1), Some(vec![0]));
        assert!(t.is_done(2));
        assert_eq!(t.pick_duplicate(1), Some(0));
    }

    #[test]
    fn no_duplicates_when_limit_is_one() {
        let mut t = SegmentTable::new(2, &[], 1);
        let s = t.take_missing();
        assert_eq!(s, Some(0));
        assert!(!t.add_holder(0, 0, T0));
        assert_eq!(t.pick_duplicate(1), None);
        assert!(!t.has_available() || t.has_missing());
    }

    #[test]
    fn removing_an_unknown_holder_changes_nothing() {
        let mut t = SegmentTable::new(2, &[], 2);
        assert!(!t.remove_holder(0, 3));
        assert!(!t.remove_holder(7, 3));
        assert_eq!(t.take_missing(), Some(0));
    }
}
