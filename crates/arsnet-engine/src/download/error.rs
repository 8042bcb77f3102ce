//! How a download ends, and why it failed. The texts are the messages users see (the daemon
//! shows them as the job's failure), so they say what happened and what to do.

use std::path::PathBuf;
use std::sync::Arc;

use arsnet_proto::manifest::to_hex;
use arsnet_proto::Digest;

use arsnet_sched::FailReason;
use arsnet_store::StoreError;

use super::spec::RecordError;
use super::writer::{TaskFailure, WriteError};

/// How a job run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Every segment verified and the file published at this path.
    Completed(PathBuf),
    Failed(DownloadError),
    /// Stopped at a durable point by `JobCommand::Stop`; the partial files are kept.
    Stopped,
    /// Stopped by `JobCommand::Cancel`.
    Cancelled,
}

/// The servers that announced one content in an election without a strict majority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentVote {
    /// The content's BLAKE3; `None` for a layout with no identity (mirrors alone, which
    /// differ in size only).
    pub content: Option<Digest>,
    pub size: u64,
    /// The sources, as the user named them.
    pub sources: Vec<String>,
}

/// One source of a job that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFailure {
    /// The source, as the user named it.
    pub address: String,
    /// Its last connection error (or why it was blamed).
    pub error: String,
}

/// Why a download failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DownloadError {
    /// The HTTP client for the job's mirrors could not be set up (e.g. no TLS roots).
    #[error("cannot set up the HTTP client: {0}")]
    HttpClient(String),
    /// The download directory could not be created.
    #[error("cannot create {}: {reason}", .path.display())]
    CreateDir { path: PathBuf, reason: String },
    /// The download directory could not be opened, or is not the one the caller showed.
    #[error(transparent)]
    Dir(Arc<StoreError>),
    /// A partial download could not be examined or adopted.
    #[error("cannot resume: {0}")]
    Resume(Arc<StoreError>),
    /// `fetch -r` found an orphan's partial files of another content than the one decided.
    #[error(
        "a partial download exists ({}) of other content than the servers agree on; remove \
         it, or pin its content with --blake3 HEX",
        .0.display()
    )]
    PartialOfOtherContent(PathBuf),
    /// Partial files of a download this job does not own are in the way.
    #[error(
        "a partial download exists ({}) that is not this job's; to continue it, `fetch -r \
         --blake3 HEX` with the content's BLAKE3 (as b3sum prints it), or remove it",
        .0.display()
    )]
    PartialExists(PathBuf),
    #[error("{} already exists; pass --overwrite to replace it", .0.display())]
    TargetExists(PathBuf),
    /// The store could not be created.
    #[error(transparent)]
    Create(Arc<StoreError>),
    /// The writer failed (I/O, or the finished file is not the SHA-256 the user pinned).
    #[error("storage error: {0}")]
    Storage(#[from] WriteError),
    #[error("storage writer stopped unexpectedly")]
    WriterStopped,
    #[error("storage writer stopped before finalizing")]
    WriterStoppedBeforeFinalizing,
    #[error("no storage to finalize")]
    NoStorage,
    /// A store operation on the blocking pool panicked or was cancelled.
    #[error("storage task failed: {0}")]
    Task(TaskFailure),
    /// The `ContentHook` could not save the accepted content.
    #[error("cannot record the download before writing it: {0}")]
    ContentHook(Arc<RecordError>),
    /// Every source was ruled out (bad data, other content, a refusal), each with why.
    #[error(
        "every source was ruled out: {}; check the addresses and any pin",
        describe_failures(.0)
    )]
    AllBlamed(Vec<SourceFailure>),
    /// The scheduler gave up: there are no sources.
    #[error("{0}")]
    AllSourcesFailed(FailReason),
    /// No source ever answered (or the ones that did were blamed) and nothing was verified:
    /// each was tried `attempts` times (`DownloadConfig::max_tries`).
    #[error(
        "no source could be reached after {attempts} attempts each: {}; check the addresses, \
         or raise download.max_tries",
        describe_failures(.sources)
    )]
    Unreachable {
        attempts: u32,
        sources: Vec<SourceFailure>,
    },
    /// Unpinned sources announced different contents and none had a strict majority.
    #[error("{}", describe(.0))]
    Disagreement(Vec<ContentVote>),
    /// The finished file is not the content the user pinned, and repair could not make it
    /// so: nothing was published.
    #[error(
        "the downloaded file's {algorithm} is {}, not the pinned {}; nothing was published ({repair})",
        to_hex(.got),
        to_hex(.pinned)
    )]
    NotThePinned {
        algorithm: &'static str,
        got: Digest,
        pinned: Digest,
        /// What repair tried, or why it could not.
        repair: String,
    },
}

fn describe_failures(sources: &[SourceFailure]) -> String {
    let each: Vec<String> = sources
        .iter()
        .map(|s| format!("{} ({})", s.address, s.error))
        .collect();
    each.join("; ")
}

/// The sentence of a failed election: each content (or, for mirrors alone, each size) with
/// its sources, and what the user can do.
fn describe(votes: &[ContentVote]) -> String {
    let groups: Vec<String> = votes
        .iter()
        .map(|v| match v.content {
            Some(content) => format!("BLAKE3 {} from {}", to_hex(&content), v.sources.join(", ")),
            None => format!("a file of {} bytes from {}", v.size, v.sources.join(", ")),
        })
        .collect();
    if votes.iter().all(|v| v.content.is_none()) {
        format!(
            "the mirrors disagree about the file's size and none has a strict majority: {}; \
             leave out the mirrors that serve another file",
            groups.join("; ")
        )
    } else {
        format!(
            "the servers disagree about the content and none has a strict majority: {}; pin \
             the one you mean with --blake3 HEX (as b3sum prints it)",
            groups.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_names_every_source_and_says_what_to_do() {
        let error = DownloadError::Unreachable {
            attempts: 5,
            sources: vec![
                SourceFailure {
                    address: "127.0.0.1:1".into(),
                    error: "connect failed: Connection refused (os error 111)".into(),
                },
                SourceFailure {
                    address: "bad.invalid:80".into(),
                    error: "connect failed: failed to lookup address information".into(),
                },
            ],
        };
        assert_eq!(
            error.to_string(),
            "no source could be reached after 5 attempts each: 127.0.0.1:1 (connect failed: \
             Connection refused (os error 111)); bad.invalid:80 (connect failed: failed to \
             lookup address information); check the addresses, or raise download.max_tries"
        );
    }
}
