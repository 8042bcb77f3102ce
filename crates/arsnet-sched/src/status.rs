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
    /// Never answered: `attempts` connections in a row failed before any header (see
    /// `Config::max_tries`). Not its fault, unlike [`ServerState::Blamed`]; it is simply
    /// not tried again while other servers carry the job (or, should every server end up
    /// here before any segment verified, the job fails with [`FailReason::Unreachable`]).
    GaveUp {
        /// Attempts made, all failed.
        attempts: u32,
        /// The last attempt's failure.
        last_error: String,
    },
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
    /// Nothing can finish the job.
    Failed(FailReason),
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

/// The text of [`FailReason::AllBlamed`].
pub const ALL_BLAMED: &str = "every server sent bad data or a mismatching header";
/// The text of [`FailReason::NoServers`].
pub const NO_SERVERS: &str = "no servers to download from";

/// Why a job failed ([`Phase::Failed`]). Structured, so that the driver can name the servers
/// its own way (it knows their addresses); `Display` gives a text with server indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The job was created without servers.
    NoServers,
    /// Every server sent bad data or a mismatching header.
    AllBlamed,
    /// No verified segment yet, and no server left to try: each gave up after
    /// `Config::max_tries` attempts without an answer, or was blamed. One entry per server,
    /// in server order.
    Unreachable(Vec<ServerEnd>),
}

/// How a server ended in a job that failed with [`FailReason::Unreachable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEnd {
    /// It never answered (see [`ServerState::GaveUp`]).
    GaveUp {
        /// Attempts made, all failed.
        attempts: u32,
        /// The last attempt's failure.
        last_error: String,
    },
    /// It answered, but was blamed (see [`ServerState::Blamed`]).
    Blamed(String),
}

impl std::fmt::Display for FailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailReason::NoServers => f.write_str(NO_SERVERS),
            FailReason::AllBlamed => f.write_str(ALL_BLAMED),
            FailReason::Unreachable(ends) => {
                f.write_str("no server could be reached:")?;
                for (server, end) in ends.iter().enumerate() {
                    let sep = if server == 0 { " " } else { "; " };
                    write!(f, "{sep}server {server} ({end})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::fmt::Display for ServerEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerEnd::GaveUp {
                attempts,
                last_error,
            } => write!(f, "gave up after {attempts} attempts: {last_error}"),
            ServerEnd::Blamed(reason) => write!(f, "blamed: {reason}"),
        }
    }
}
