//! Download jobs: one file fetched from many sources at once (the spec's `Client.py`).
//!
//! - `job`: the scheduler loop (events in, actions out, wakes at the scheduler's deadline);
//! - `source`: the seam for "a place segments come from", and `source::arsnet`, an ArsNet
//!   server;
//! - `identity`: what a source claims the content is, and the digest tables the job holds;
//! - `storage` (finding, adopting, creating the files) and `writer` (the store on the
//!   blocking pool, batched durability);
//! - `end_check` (the whole file against the pin) and `repair` (finding the mirror that
//!   broke it, by provenance);
//! - `http_client` (the one HTTP client policy) and `checksum_url` (a `--checksum-url`
//!   read into a pin);
//! - `spec`, `progress`, `error`: what the job is asked, what it reports, how it ends.

mod buffers;
pub mod checksum_url;
mod cross_check;
mod end_check;
mod error;
mod http_client;
mod identity;
mod job;
mod progress;
mod repair;
mod source;
mod spec;
mod storage;
mod writer;

pub use error::{ContentVote, DownloadError, Outcome, SourceFailure};
pub use job::run_download;
pub use progress::{Activity, Progress};
pub use spec::{ContentHook, DownloadConfig, DownloadSpec, JobCommand, RecordContent, RecordError};
pub use writer::{TaskFailure, WriteError};
