//! Download jobs: one file fetched from many servers at once (the spec's `Client.py`).
//! `job` runs the scheduler loop, `connection` speaks the wire protocol to one server, and
//! `writer` owns the crash-safe store on the blocking pool.

mod buffers;
mod connection;
mod job;
mod writer;

pub use job::{run_download, ContentHook, DownloadConfig, DownloadSpec, JobCommand, Outcome};
