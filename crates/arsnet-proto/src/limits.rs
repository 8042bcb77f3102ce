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

/// Control protocol version (arsnetctl ↔ arsnetd).
pub const CONTROL_VERSION: u16 = 1;
/// Largest control frame payload in bytes, enforced before any allocation.
pub const MAX_CONTROL_FRAME: u32 = 1024 * 1024;
