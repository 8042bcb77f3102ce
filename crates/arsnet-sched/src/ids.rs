//! The names the scheduler and its driver share: which server, which connection attempt, and
//! which content. They live apart from the machine so the driver can hold them in its own
//! tables without depending on any scheduler internals.

/// Index of a server in the job's server list (`0..servers`).
pub type ServerId = usize;

/// One connection attempt. Unique for the scheduler's whole life, so an event that arrives
/// for a connection the scheduler has already given up on can be recognised as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Identity of the content: how many segments it has, a fingerprint the driver computes
/// (name, size, segment size and root) and the content digest itself (the file's hash, which
/// a user may pin). Two servers serve the same download exactly when their layouts are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Layout {
    /// Number of segments; segments are numbered `0..segment_count`.
    pub segment_count: u64,
    /// The file's size in bytes: when two layouts differ in it, that is the reason given.
    pub size: u64,
    /// Driver-computed digest of the whole download identity.
    pub fingerprint: [u8; 32],
    /// The content's digest (what a pin names).
    pub content: [u8; 32],
}

/// The servers that announced one content during an election that had no strict majority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentVotes {
    /// The content digest they announced.
    pub content: [u8; 32],
    /// The size of the file they announced.
    pub size: u64,
    /// Who announced it, in server order.
    pub servers: Vec<ServerId>,
}
