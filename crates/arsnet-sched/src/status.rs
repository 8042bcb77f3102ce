//! What the driver (and an operator looking at metrics) can observe about a job and its
//! servers. Read-only views: nothing here changes the machine.

use std::time::Duration;

/// Where one server stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Not tried yet.
    Idle,
    /// `Connect` issued, no header yet.
    Connecting,
    /// Header accepted, requests flowing.
    Active,
    /// Failed; reconnects once `until` is reached.
    Backoff {
        /// Time (driver epoch) of the next connection attempt.
        until: Duration,
        /// Consecutive failures so far (1 after the first); reset by an accepted header.
        attempt: u32,
        /// The failure that put the server here.
        last_error: String,
    },
    /// Dropped for the rest of the job (bad header or bad segment).
    Blamed(String),
}

/// Where the whole job stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// At least one server is connecting or active.
    Running,
    /// No server is active or connecting; some wait out their backoff.
    Waiting,
    /// Every segment is done.
    Complete,
    /// Nothing can finish the job (every server blamed, or there are no servers).
    Failed(String),
    /// Unpinned servers announced different contents and none had a strict majority of the
    /// servers that answered within the election window: nothing can be trusted.
    Disagreement(Vec<crate::ids::ContentVotes>),
}

/// Per-server counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Segments this server delivered first (`Store` verdicts).
    pub segments_done: u64,
    /// Connections of this server that ended in failure (drops, refusals, timeouts, blame).
    pub failures: u64,
    /// Slots its current connection occupies, including copies being cancelled.
    pub in_flight: usize,
}
