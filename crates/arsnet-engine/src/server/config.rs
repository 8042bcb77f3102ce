//! What a server group is asked to serve, and how.

use std::path::PathBuf;
use std::time::Duration;

use arsnet_store::dir::FileId;

/// What `serve` asks for.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub file: PathBuf,
    pub count: u32,
    pub ports: Vec<u16>,
    pub bind: String,
    pub rate: Option<u64>,
    pub status_interval: Duration,
    /// Override of the segment size (tests use small segments); `None` picks by file size.
    pub segment_size: Option<u32>,
    /// Where digests are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// The file the group must serve, when its caller proved it could read that very file:
    /// whatever is found at `file` is refused unless it is this one (checked on the open
    /// descriptor, before anything is hashed or bound).
    pub expect_file: Option<FileId>,
    /// The ports also answer plain HTTP/1.1 GET/HEAD with Range (`serve --http`).
    pub http: bool,
}
