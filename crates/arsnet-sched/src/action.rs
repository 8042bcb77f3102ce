//! What the scheduler asks its driver to do, and what it says about a delivered segment.
//! These are the machine's only outputs; keeping them in one place makes the driver's
//! `match` the complete list of side effects the scheduler can cause.

use crate::ids::{ConnId, ServerId};

/// A side effect the driver must carry out, taken with `Scheduler::poll_action`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to `server`; every later event about it carries `conn`.
    Connect {
        /// The server to dial.
        server: ServerId,
        /// The id the driver must use for this attempt's events.
        conn: ConnId,
    },
    /// Send a REQUEST for `segment` on `conn`.
    Request {
        /// An open, header-accepted connection.
        conn: ConnId,
        /// The segment to fetch.
        segment: u64,
    },
    /// Send a CANCEL for `segment` on `conn`; the server answers CANCELLED or still sends the
    /// segment, and the driver reports either one.
    Cancel {
        /// The connection that holds the segment.
        conn: ConnId,
        /// The segment another connection already delivered.
        segment: u64,
    },
    /// Close `conn`. The scheduler has already taken its segments back; the driver must not
    /// report any further event for it.
    Disconnect {
        /// The connection to close.
        conn: ConnId,
        /// Why, for logs and metrics.
        reason: DropReason,
    },
}

/// Why the scheduler closes a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Segments were in flight but nothing arrived for `stall_timeout`.
    Stalled,
    /// In the job's tail, far slower on its segment than the fastest server (see
    /// `Config::laggard_factor`).
    TooSlow,
    /// Segments were in flight but not a byte arrived for `laggard_factor` times the fastest
    /// server's segment time (at least `laggard_floor`) while other connections kept
    /// delivering: the server went quiet (a stopped process behind an open socket), at any
    /// phase of the job. Retried like a stall.
    Silent,
    /// Connecting, and silent for `handshake_timeout` before the header.
    HandshakeTimeout,
    /// The header names different content than the job's layout (server is blamed).
    HeaderMismatch,
    /// A segment failed verification (server is blamed).
    CorruptSegment,
    /// The server broke the protocol (e.g. sent a segment nobody asked it for).
    Protocol(String),
}

/// What the driver must do with a segment it reported through
/// `Scheduler::on_segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentVerdict {
    /// First verified copy: write it (and journal it).
    Store,
    /// Already stored from another connection: discard it.
    Duplicate,
    /// Not asked for, corrupt, or from a connection the scheduler no longer tracks: discard.
    Unexpected,
}
