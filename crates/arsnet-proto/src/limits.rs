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
/// How long a client gives a server's digest table beyond its size at
/// [`CLIENT_MIN_DIGEST_RATE`].
pub const CLIENT_DIGEST_GRACE: core::time::Duration = core::time::Duration::from_secs(10);
/// A client gives a server's digest table 10 s plus its size at this rate (bytes per second)
/// to arrive, however steadily it trickles: a server cannot hold a job's turn to assemble
/// that content's table forever. 128 MiB (the largest table) may take 34 minutes.
pub const CLIENT_MIN_DIGEST_RATE: u64 = 64 * 1024;
/// Requests a client may have outstanding on one connection; a server closes a connection
/// that exceeds it, so a client cannot make a server queue unbounded work.
pub const MAX_OUTSTANDING_REQUESTS: usize = 64;

/// Most servers one download job may name: bounds the per-server state a request can make
/// the daemon hold.
pub const MAX_SOURCES_PER_JOB: usize = 1024;

/// Control protocol version (arsnetctl ↔ arsnetd).
pub const CONTROL_VERSION: u16 = 5;
/// Largest control frame payload in bytes, enforced before any allocation.
pub const MAX_CONTROL_FRAME: u32 = 1024 * 1024;
/// Once a control frame's first byte arrived, the rest must arrive within this long, so a
/// stalled peer cannot pin a connection half-way through a frame (an idle connection,
/// between frames, is fine).
pub const CONTROL_FRAME_DEADLINE: core::time::Duration = core::time::Duration::from_secs(10);
/// How long a pushed update may wait for a watcher to read it before the watch is ended (a
/// suspended terminal gives its connection slot back).
pub const CONTROL_WATCH_WRITE_STALL: core::time::Duration = core::time::Duration::from_secs(300);
/// `pause` and `cancel` of a running job are answered once it stopped at a durable point, or
/// after this long (then as still running: the client says the request is pending).
pub const CONTROL_SETTLE_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(30);
/// How long a client waits for the answer to a request (except `serve`, which answers once
/// its file is hashed): longer than any request takes, `CONTROL_SETTLE_TIMEOUT` included.
pub const CONTROL_ANSWER_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(60);
/// Control connections the daemon serves at once; further clients wait in the backlog.
pub const CONTROL_MAX_CONNECTIONS: usize = 256;
/// Most descriptors one control request may carry (SCM_RIGHTS); the kernel closes more
/// (the message is truncated) and the request is refused.
pub const CONTROL_MAX_FDS: usize = 4;
/// Lowest port a server group may listen on (the spec's rule: no privileged ports).
pub const MIN_SERVE_PORT: u16 = 1024;
/// Longest status/metric interval (`-i`, `status_interval_secs`, `metric_interval_secs`):
/// one day. The shortest is one second.
pub const MAX_INTERVAL_SECS: u64 = 86_400;
/// The allowed status/metric intervals in seconds: the one range `-i` (the CLI's parser),
/// requests and the config file are checked against.
pub const INTERVAL_SECS: core::ops::RangeInclusive<u64> = 1..=MAX_INTERVAL_SECS;

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
/// After a served file changed in place, its stamp (size, mtime, ctime, inode, device) must
/// hold still this long before it is re-hashed: a writer may still be at it.
pub const SERVER_REHASH_SETTLE: core::time::Duration = core::time::Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// The opt-in metrics listener (`metrics_listen`): plain HTTP/1.1, `GET /metrics` only.
// Bounded so that a scraper gone wrong, or a flood, costs the daemon a few tasks at most.
// ---------------------------------------------------------------------------------------

/// Connections the metrics listener serves at once; further ones wait in the kernel's
/// backlog (a scrape takes milliseconds, so honest scrapers never queue long).
pub const METRICS_MAX_CONNECTIONS: usize = 8;
/// A request's headers must arrive within this long after the connection opened.
pub const METRICS_HEADER_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(5);
/// A metrics connection is closed this long after it opened, whatever it is doing (one
/// request per connection: no keep-alive, so a slow reader cannot hold a slot).
pub const METRICS_CONNECTION_DEADLINE: core::time::Duration = core::time::Duration::from_secs(10);
/// A metrics request's line and headers must fit in this many bytes (hyper's smallest read
/// buffer; `GET /metrics` never needs more).
pub const METRICS_MAX_REQUEST_BYTES: usize = 8192;

// ---------------------------------------------------------------------------------------
// HTTP(S) mirrors as sources.
// ---------------------------------------------------------------------------------------

/// Redirects followed per request to a mirror; more is an error (a loop, or a mirror that
/// bounces the client around).
pub const HTTP_MAX_REDIRECTS: usize = 5;
/// Largest checksum file (`fetch --checksum-url`) read, in bytes: a `SHA256SUMS` of a whole
/// distribution's release fits many times over.
pub const MAX_CHECKSUM_FILE_BYTES: usize = 1 << 20;
/// Longest a checksum file may take to arrive (connect to last byte), in seconds; the
/// `fetch` request waits for it.
pub const CHECKSUM_FETCH_SECS: u64 = 30;
/// Checksum files (`fetch --checksum-url`) the daemon reads at once; further requests wait
/// their turn, so that a flood of requests opens no flood of connections.
pub const CHECKSUM_FETCHES_AT_ONCE: usize = 4;
/// Longest a `fetch --checksum-url` waits for its turn before it is refused as busy (with
/// the read itself, within the client's wait for an answer).
pub const CHECKSUM_TURN_WAIT: core::time::Duration = core::time::Duration::from_secs(20);
/// Longest one cross-check sample (a segment fetched again from referees, one after the
/// other) may take; past it the sample says nothing. A job waits for its samples before it
/// finishes, so a referee that trickles must not hold it.
pub const CROSS_CHECK_SAMPLE_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(60);
/// Extra CA certificates one `fetch` may give (`--ca-cert`), and the size of each (PEM).
pub const MAX_CA_CERTS: usize = 8;
pub const MAX_CA_CERT_BYTES: usize = 64 * 1024;
/// Requests in flight per HTTP mirror a job may ask for (`--connections-per-source`, and the
/// daemon's `[download] mirror_connections`): politeness to a mirror, and a bound on sockets.
pub const MAX_CONNECTIONS_PER_SOURCE: u32 = 16;
