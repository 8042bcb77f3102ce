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
    /// The daemon's metrics, as Prometheus text (appended last: the variant indices of the
    /// requests before it are unchanged on the wire).
    Metrics,
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
    /// The ports also answer plain HTTP/1.1 (`serve --http`).
    #[serde(default)]
    pub http: bool,
}

/// `arsnetctl fetch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchSpec {
    pub dir: PathBuf,
    /// Every source (parsed at the edge: a string that is not a source never gets here).
    pub sources: Vec<crate::source::SourceAddr>,
    pub resume: bool,
    pub overwrite: bool,
    pub metric_interval_secs: u64,
    /// The content the user pinned, if any (`--blake3` / `--sha256`).
    #[serde(default)]
    pub pin: Option<Pin>,
    /// Extra CA certificates (PEM) the job's HTTPS mirrors may chain to, besides the
    /// system's roots (`--ca-cert FILE`, read by the client).
    #[serde(default)]
    pub ca_certs: Vec<String>,
    /// Requests in flight per HTTP mirror for this job (`--connections-per-source`);
    /// `None` keeps the daemon's `[download] mirror_connections`.
    #[serde(default)]
    pub connections_per_source: Option<u32>,
    /// `--no-verify`: a job of HTTP mirrors only, without a pin, publishes what the mirrors
    /// sent, unchecked, and says so (see [`FetchSpec::verification`]).
    #[serde(default)]
    pub no_verify: bool,
    /// `--checksum-url`: a `sha256sum`/`b3sum`-format file (a mirror's `SHA256SUMS`) whose
    /// line for the file's name becomes the pin. The daemon reads it when the request
    /// arrives and sets [`FetchSpec::pin`] from it, so a restart never reads it again.
    #[serde(default)]
    pub checksum_url: Option<crate::source::SourceAddr>,
}

/// How a job's result is checked before it is published under its name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verification {
    /// Every segment against the digest table an ArsNet server announced (or the journal
    /// kept), proving the BLAKE3 root.
    #[default]
    Segments,
    /// The whole file against the user's pin, once every byte is on disk (mirrors only).
    WholeFile,
    /// Not at all: mirrors only, `--no-verify`.
    None,
}

impl Verification {
    /// The word `--json` and `status` use.
    pub fn label(self) -> &'static str {
        match self {
            Verification::Segments => "segments",
            Verification::WholeFile => "whole-file",
            Verification::None => "none",
        }
    }
}

impl FetchSpec {
    /// Whether every source is an HTTP mirror: then no source proves the content, and the
    /// user's pin (or `--no-verify`) is the only identity.
    pub fn mirrors_only(&self) -> bool {
        self.sources
            .iter()
            .all(crate::source::SourceAddr::is_mirror)
    }

    /// How this job's file is checked before it is published.
    pub fn verification(&self) -> Verification {
        let pinned = self.pin.is_some() || self.checksum_url.is_some();
        match (self.mirrors_only(), pinned) {
            (false, _) => Verification::Segments,
            (true, true) => Verification::WholeFile,
            (true, false) => Verification::None,
        }
    }

    /// The name the first mirror's URL gives the file (what a job of mirrors saves under,
    /// and the line a checksum file is searched for).
    pub fn mirror_file_name(&self) -> Option<String> {
        self.sources
            .iter()
            .find_map(crate::source::SourceAddr::file_name)
    }
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
    /// The answer to `Metrics`: the Prometheus text exposition format 0.0.4, rendered by the
    /// daemon (the client only prints it).
    Metrics(String),
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

/// Where one source of a download job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceState {
    /// Not connected, and not waiting to retry (e.g. nothing left to fetch from it).
    Idle,
    /// Connecting, or waiting for the source's header.
    Connecting,
    /// Transferring.
    Active,
    /// Failed; tried again after a delay (the detail says when and why).
    Backoff,
    /// Sent bad data or other content: never contacted again by this job.
    Blamed,
}

impl SourceState {
    pub fn label(self) -> &'static str {
        match self {
            SourceState::Idle => "idle",
            SourceState::Connecting => "connecting",
            SourceState::Active => "active",
            SourceState::Backoff => "backoff",
            SourceState::Blamed => "blamed",
        }
    }
}

/// Where one virtual server (one port) of a group stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortState {
    Listening,
    /// Stopped by the operator (`stop-server`).
    Stopped,
    /// Could not listen (the detail says why).
    Failed,
}

impl PortState {
    pub fn label(self) -> &'static str {
        match self {
            PortState::Listening => "listening",
            PortState::Stopped => "stopped",
            PortState::Failed => "failed",
        }
    }
}

/// One source server as seen by one download job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub address: String,
    pub state: SourceState,
    pub detail: String,
    pub rate_bps: u64,
    pub bytes: u64,
    pub segments: u64,
    pub failures: u64,
}

/// What a download's run reached: the one list of a job's figures, which the engine
/// reports, the daemon keeps across restarts and `status`/`list` show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunFigures {
    /// The file's size, once a source told it.
    pub size: Option<u64>,
    pub segments_total: Option<u64>,
    pub segments_done: u64,
    /// Bytes of the file verified and stored (adopted ones included).
    pub bytes_done: u64,
    /// Segments taken over from a partial download (re-verified, not fetched again).
    pub adopted_segments: u64,
    /// What this run fetched and kept: `bytes_done` less what it adopted (a finished run's
    /// average rate is of these bytes over `elapsed_ms`, not of bytes an earlier run
    /// fetched).
    pub fetched_bytes: u64,
    /// How long the run has been (or was) going.
    pub elapsed_ms: u64,
}

/// A download job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: JobId,
    pub state: JobState,
    pub dir: PathBuf,
    pub name: Option<String>,
    /// What the job's current (or, once it stopped, last) run reached.
    pub figures: RunFigures,
    /// While it runs, the rate now; after, the average of its last run.
    pub rate_bps: u64,
    pub sources: Vec<SourceInfo>,
    /// The accepted content's BLAKE3 hash (what `b3sum` prints for the finished file).
    #[serde(default)]
    pub content: Option<Digest>,
    /// How the file is checked before it is published (`None`: `--no-verify`, unchecked).
    #[serde(default)]
    pub verification: Verification,
    /// Inside the daemon only (never sent): the tag of the partial files the job holds, so
    /// that the job table follows a job that continued an orphaned partial download.
    #[serde(skip)]
    pub owner_tag: Option<JobTag>,
}

/// One virtual server (one port) of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortInfo {
    pub port: u16,
    pub state: PortState,
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
                sources: vec!["127.0.0.1:5000".parse().unwrap()],
                resume: true,
                overwrite: false,
                metric_interval_secs: 1,
                pin: Some(Pin::Sha256([3; 32])),
                ca_certs: Vec::new(),
                connections_per_source: Some(3),
                no_verify: false,
                checksum_url: None,
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
