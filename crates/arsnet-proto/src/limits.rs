//! Every hard bound of the protocols in one place, so that a reviewer can check that no
//! length read from a peer is ever trusted beyond these numbers.

/// Magic number opening the wire hello and header: ASCII "ARSN".
pub const WIRE_MAGIC: u32 = 0x4152_534E;
/// The wire protocol version this build speaks. Version 2: the root is the file's real BLAKE3
/// hash and segment digests are BLAKE3 chaining values (version 1 used a private root).
pub const WIRE_VERSION: u16 = 2;

/// Smallest segment size a header may announce (bytes). Segment sizes are powers of two.
pub const MIN_SEGMENT_SIZE: u32 = 4 * 1024;
/// Largest segment size a header may announce (bytes). Also bounds a segment body, and so
/// the largest buffer a client allocates for one segment.
pub const MAX_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;
/// Default segment size for served files.
pub const DEFAULT_SEGMENT_SIZE: u32 = 1024 * 1024;
/// Servers grow the segment size (doubling) until a file has at most this many segments.
pub const TARGET_MAX_SEGMENTS: u64 = 1 << 20;
/// Largest segment count a header may announce: bounds the digest table a client holds
/// (32 bytes each, so 128 MiB at the very worst).
pub const MAX_SEGMENTS: u64 = 1 << 22;
/// Digests travel in DIGESTS frames of at most this many entries (128 KiB of payload).
pub const MAX_DIGESTS_PER_FRAME: u32 = 4096;
/// Longest file name in bytes (the usual file-system limit).
pub const MAX_NAME_LEN: usize = 255;
/// Longest error message a server may send, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// Largest payload of any wire frame except the raw bytes that follow a SEGMENT frame.
pub const MAX_WIRE_PAYLOAD: u32 = 12 + MAX_DIGESTS_PER_FRAME * 32;
/// Requests a client may have outstanding on one connection; a server closes a connection
/// that exceeds it, so a client cannot make a server queue unbounded work.
pub const MAX_OUTSTANDING_REQUESTS: usize = 64;

/// Most servers one download job may name: bounds the per-server state a request can make
/// the daemon hold.
pub const MAX_SOURCES_PER_JOB: usize = 1024;

/// Control protocol version (arsnetctl ↔ arsnetd).
pub const CONTROL_VERSION: u16 = 1;
/// Largest control frame payload in bytes, enforced before any allocation.
pub const MAX_CONTROL_FRAME: u32 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Server connection limits. A virtual server has a bounded number of connection slots;
// these decide who may hold one and for how long, so that idle, half-open and slow-reading
// connections cannot lock honest clients out (PROTOCOL.md, "Server connection limits").
// Durations are `core::time::Duration` so that this crate stays free of I/O and clocks.
// ---------------------------------------------------------------------------------------

/// Connections one virtual server (one port) serves at once. A connection costs a task and
/// small buffers; the segment buffer is only allocated by its first REQUEST.
pub const SERVER_MAX_CONNECTIONS_PER_PORT: usize = 64;
/// Connections one source address may hold on one port: an IPv4 address, or an IPv6 /64
/// (what one host usually gets). One machine can then never fill a port by itself. A source
/// at its limit that connects again evicts its own longest-idle connection instead.
pub const SERVER_MAX_CONNECTIONS_PER_SOURCE: usize = 16;
/// Connection tasks one port may have alive, counting evicted ones still winding down:
/// past it, new connections wait in the kernel's backlog. Bounds memory under a connect
/// flood even if evicted connections were slow to end.
pub const SERVER_MAX_CONNECTION_TASKS_PER_PORT: usize = 2 * SERVER_MAX_CONNECTIONS_PER_PORT;
/// How long a client may take to send HELLO after connecting.
pub const SERVER_HELLO_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(10);
/// How long a client may wait after the header before its first REQUEST. Honest clients ask
/// at once; a connection that only said HELLO is closed after this long.
pub const SERVER_FIRST_REQUEST_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(30);
/// A connection that has requested before but has nothing queued and sends no REQUEST for
/// this long is closed. Long, so that a client waiting on its own slow disk is not cut off
/// while the port has room (when it is full, idle connections are evicted anyway).
pub const SERVER_IDLE_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(3600);
/// A write to a client that makes no progress at all for this long closes the connection:
/// the client stopped reading.
pub const SERVER_WRITE_STALL_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(600);
/// A connection whose current write has made no progress for this long counts as idle when
/// a newcomer needs its slot (a trickle reader). Healthy clients read continuously; this
/// only matters when the port or the source is full.
pub const SERVER_STALLED_WRITE_EVICTABLE: core::time::Duration =
    core::time::Duration::from_secs(10);
