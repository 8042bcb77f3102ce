//! Control protocol between `arsnetctl` and `arsnetd`: request and response types, and their
//! framing (a u32 big-endian length, then a bincode-2 payload of at most
//! [`MAX_CONTROL_FRAME`] bytes). Decoding uses bincode's size limit so that a hostile length
//! inside the payload becomes an error, not an allocation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::limits::{CONTROL_VERSION, MAX_CONTROL_FRAME};
use crate::manifest::{Digest, JobTag};

/// Identifies a download job within one daemon.
pub type JobId = u64;
/// Identifies a server group within one daemon.
pub type GroupId = u64;

/// What a client asks. Every request is wrapped in a [`ClientMessage`] carrying the version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Ping,
    Serve(ServeSpec),
    Servers,
    StopServer {
        ports: Vec<u16>,
    },
    StartServer {
        ports: Vec<u16>,
    },
    /// Stops every port of a group and forgets it.
    RemoveGroup {
        id: GroupId,
    },
    Fetch(FetchSpec),
    List,
    Status {
        id: JobId,
    },
    /// Subscribe to pushed updates: one job, or everything when `None`.
    Watch {
        id: Option<JobId>,
    },
    Pause {
        id: JobId,
    },
    Resume {
        id: JobId,
    },
    Cancel {
        id: JobId,
        keep: bool,
    },
    Shutdown,
}

/// `arsnetctl serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServeSpec {
    pub file: PathBuf,
    pub count: u32,
    pub ports: Vec<u16>,
    pub bind: String,
    /// Per virtual server, bytes per second; `None` = unlimited.
    pub rate: Option<u64>,
    pub status_interval_secs: u64,
}

/// `arsnetctl fetch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchSpec {
    pub dir: PathBuf,
    /// "host:port" of every server.
    pub sources: Vec<String>,
    pub resume: bool,
    pub overwrite: bool,
    pub metric_interval_secs: u64,
    /// The content the user pinned, if any (`--blake3` / `--sha256`).
    #[serde(default)]
    pub pin: Option<Pin>,
}

/// A digest the user computed with a standard tool, naming the content they mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pin {
    /// The file's BLAKE3 hash, as `b3sum` prints it: only servers announcing it are used.
    Blake3(Digest),
    /// The file's SHA-256, as `sha256sum` prints it: checked on the finished file before it
    /// is published.
    Sha256(Digest),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientMessage {
    pub version: u16,
    pub request: Request,
}

/// What the daemon answers. A `Watch` is answered by a stream of `Update`s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Pong {
        version: String,
        pid: u32,
    },
    GroupStarted {
        id: GroupId,
    },
    Servers(Vec<GroupInfo>),
    Done,
    Queued {
        id: JobId,
        attached: bool,
    },
    /// `notes` says what could not be restored at the daemon's last start.
    List {
        jobs: Vec<JobInfo>,
        groups: Vec<GroupInfo>,
        notes: Vec<String>,
    },
    Job(JobInfo),
    Update(Update),
    /// The daemon skipped `skipped` updates because this watcher read too slowly.
    Lagged {
        skipped: u64,
    },
    Error(ControlError),
}

/// A pushed update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// Updates are built, encoded and dropped at once; boxing the common variant would only add
// an allocation per update.
#[allow(clippy::large_enum_variant)]
pub enum Update {
    Job(JobInfo),
    Groups(Vec<GroupInfo>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Conflict,
    Version,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ControlError {
            kind,
            message: message.into(),
        }
    }
}

/// A download job's lifecycle state as users see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    /// Connecting or transferring.
    Running,
    /// No server reachable right now; retrying with backoff.
    Waiting,
    Paused,
    Completed,
    Failed(String),
    Cancelled,
}

impl JobState {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed(_) | JobState::Cancelled
        )
    }

    pub fn label(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Waiting => "waiting",
            JobState::Paused => "paused",
            JobState::Completed => "completed",
            JobState::Failed(_) => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// One source server as seen by one download job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub address: String,
    /// "idle", "connecting", "active", "backoff", "blamed", "done".
    pub state: String,
    pub detail: String,
    pub rate_bps: u64,
    pub bytes: u64,
    pub segments: u64,
    pub failures: u64,
}

/// A download job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: JobId,
    pub state: JobState,
    pub dir: PathBuf,
    pub name: Option<String>,
    pub size: Option<u64>,
    pub segments_total: Option<u64>,
    pub segments_done: u64,
    pub bytes_done: u64,
    pub adopted_segments: u64,
    pub rate_bps: u64,
    pub elapsed_ms: u64,
    pub sources: Vec<SourceInfo>,
    /// The accepted content's BLAKE3 hash (what `b3sum` prints for the finished file).
    #[serde(default)]
    pub content: Option<Digest>,
    /// Inside the daemon only (never sent): the tag of the partial files the job holds, so
    /// that the job table follows a job that continued an orphaned partial download.
    #[serde(skip)]
    pub owner_tag: Option<JobTag>,
}

/// One virtual server (one port) of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortInfo {
    pub port: u16,
    /// "listening", "stopped" or "failed".
    pub state: String,
    pub detail: String,
    pub connections: u64,
    pub bytes_sent: u64,
    pub segments_sent: u64,
    pub rate_bps: u64,
}

/// A server group: one file served on several ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub id: GroupId,
    pub file: PathBuf,
    pub name: String,
    pub size: u64,
    /// The served content's BLAKE3 hash (what `b3sum FILE` prints): what clients may pin.
    pub blake3: Digest,
    pub bind: String,
    pub ports: Vec<PortInfo>,
}

/// Why a control frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ControlFrameError {
    #[error("control frame of {0} bytes exceeds the {MAX_CONTROL_FRAME}-byte limit")]
    TooLarge(u64),
    #[error("malformed control frame: {0}")]
    Decode(String),
    #[error("control protocol version {got} not supported (this build speaks {CONTROL_VERSION})")]
    Version { got: u16 },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_CONTROL_FRAME as usize }>()
}

/// Encodes `value` as one control frame: 4-byte big-endian length, then the payload.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, ControlFrameError> {
    let payload = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| ControlFrameError::Decode(e.to_string()))?;
    if payload.len() as u64 > u64::from(MAX_CONTROL_FRAME) {
        return Err(ControlFrameError::TooLarge(payload.len() as u64));
    }
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Checks a frame's length prefix before anything is allocated for its payload.
pub fn check_frame_len(prefix: [u8; 4]) -> Result<usize, ControlFrameError> {
    let len = u32::from_be_bytes(prefix);
    if len > MAX_CONTROL_FRAME {
        return Err(ControlFrameError::TooLarge(u64::from(len)));
    }
    Ok(len as usize)
}

/// Decodes one frame's payload; trailing bytes are an error.
pub fn decode_payload<T: for<'de> Deserialize<'de>>(
    payload: &[u8],
) -> Result<T, ControlFrameError> {
    let (value, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| ControlFrameError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(ControlFrameError::Decode(format!(
            "{} trailing bytes after the message",
            payload.len() - used
        )));
    }
    Ok(value)
}

/// Decodes a client's message and checks its version.
pub fn decode_client_message(payload: &[u8]) -> Result<Request, ControlFrameError> {
    let message: ClientMessage = decode_payload(payload)?;
    if message.version != CONTROL_VERSION {
        return Err(ControlFrameError::Version {
            got: message.version,
        });
    }
    Ok(message.request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trip() {
        let msg = ClientMessage {
            version: CONTROL_VERSION,
            request: Request::Fetch(FetchSpec {
                dir: "/tmp/x".into(),
                sources: vec!["127.0.0.1:5000".into()],
                resume: true,
                overwrite: false,
                metric_interval_secs: 1,
                pin: Some(Pin::Sha256([3; 32])),
            }),
        };
        let frame = encode_frame(&msg).unwrap();
        let len = check_frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode_client_message(&frame[4..]).unwrap(), msg.request);
    }

    #[test]
    fn version_mismatch_and_oversize_are_errors() {
        let msg = ClientMessage {
            version: 99,
            request: Request::List,
        };
        let frame = encode_frame(&msg).unwrap();
        assert!(matches!(
            decode_client_message(&frame[4..]),
            Err(ControlFrameError::Version { got: 99 })
        ));
        assert!(check_frame_len(u32::MAX.to_be_bytes()).is_err());
    }

    #[test]
    fn hostile_inner_length_does_not_allocate() {
        // A StopServer whose vec length claims 2^60 entries: must fail, not allocate.
        let mut payload = vec![1u8]; // version varint
        payload.push(3); // Request::StopServer
        payload.push(253); // u64 varint marker
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode_client_message(&payload).is_err());
    }

    proptest! {
        #[test]
        fn random_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_client_message(&bytes);
            let _ = decode_payload::<Response>(&bytes);
        }
    }
}
