//! The names the scheduler and its driver share: which server, which connection attempt, and
//! which content. They live apart from the machine so the driver can hold them in its own
//! tables without depending on any scheduler internals.

/// Index of a server in the job's server list (`0..servers`).
pub type ServerId = usize;

/// One connection attempt. Unique for the scheduler's whole life, so an event that arrives
/// for a connection the scheduler has already given up on can be recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Identity of the content: how many segments it has and a fingerprint the driver computes
/// (name + root digest). Two servers serve the same file exactly when their layouts are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// Number of segments; segments are numbered `0..segment_count`.
    pub segment_count: u64,
    /// Driver-computed digest of the content identity.
    pub fingerprint: [u8; 32],
}
