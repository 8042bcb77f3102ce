//! The seam itself: what the job and any kind of source say to each other (commands,
//! events, errors), the link a source reports through, and the [`Source`] trait. Kept apart
//! from the connection task (`super`) so that implementations depend on the seam, not on
//! the dispatcher that chooses them.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arsnet_proto::wire::{ErrorCode, SegmentHeadError, WireError};
use arsnet_proto::Manifest;
use arsnet_sched::ConnId;
use tokio::sync::{mpsc, watch};

use crate::download::buffers::BufferPool;
use crate::download::identity::{Claim, Manifests};
use crate::wire_io::FrameReadError;

/// What the job tells a source connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceCommand {
    Request(u64),
    Cancel(u64),
}

/// What a source connection tells its job.
#[derive(Debug)]
pub(crate) enum SourceEvent {
    /// The handshake is done: what the source claims the content is.
    Ready { conn: ConnId, claim: Claim },
    /// A whole requested segment; `verified` says whether it matched its digest.
    Segment {
        conn: ConnId,
        segment: u64,
        data: Vec<u8>,
        verified: bool,
    },
    /// The handshake starts (`waiting`) or stops waiting for another connection of the
    /// job to assemble the digest table it needs (see `Scheduler::on_table_wait`).
    TableWait { conn: ConnId, waiting: bool },
    /// The source gave a requested segment up (it answered a cancel).
    Cancelled { conn: ConnId, segment: u64 },
    /// The connection ended.
    Closed { conn: ConnId, error: SourceError },
}

/// Why a source connection ended. The texts are what users see as a source's last error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    #[error("send failed: {0}")]
    Send(#[source] std::io::Error),
    #[error("receive failed: {0}")]
    Receive(#[source] std::io::Error),
    /// A frame of the handshake could not be read (transport or a malformed frame).
    #[error("bad handshake frame: {0}")]
    HandshakeFrame(#[source] FrameReadError),
    /// A frame after the handshake could not be read.
    #[error("{0}")]
    Frame(#[from] FrameReadError),
    /// The digest table arrived slower than the protocol's minimum rate.
    #[error("digest table too slow: not complete after {}s", .0.as_secs())]
    DigestsTooSlow(std::time::Duration),
    /// The server sent ERROR (then closes).
    #[error("server error: {message}")]
    Server { code: ErrorCode, message: String },
    /// A well-formed frame of a type not allowed at this point of the exchange.
    #[error("protocol violation: expected {expected}, got {got}")]
    Expected { expected: &'static str, got: String },
    #[error("protocol violation: unexpected {0}")]
    Unexpected(String),
    /// A SEGMENT head that does not fit the manifest.
    #[error("protocol violation: {0}")]
    Segment(#[from] SegmentHeadError),
    #[error("bad digests: {0}")]
    Digests(#[source] WireError),
    #[error("bad digests: out of order or too many")]
    DigestOrder,
    /// The digests do not prove the header's root (or the layout is impossible).
    #[error("bad manifest: {0}")]
    Manifest(#[source] WireError),
    #[error("connection closed by server")]
    ClosedByServer,
    /// The job dropped its side of the command channel.
    #[error("job closed the connection")]
    JobClosed,
    /// The job stopped listening for events.
    #[error("job ended")]
    JobEnded,
    /// An HTTP request failed below HTTP (connect, TLS, reset, a malformed response).
    #[error("HTTP: {0}")]
    Http(String),
    #[error("HTTP status {status}{}", retry_after.map(|s| format!(" (retry after {s}s)")).unwrap_or_default())]
    HttpStatus {
        status: u16,
        retry_after: Option<u64>,
    },
    #[error("mirror ignores Range requests (it answered with the whole file)")]
    IgnoresRange,
    #[error("mirror's file changed: {0}")]
    MirrorChanged(String),
    #[error("mirror's file is {mirror} bytes, the content is {content} bytes")]
    MirrorSize { mirror: u64, content: u64 },
    #[error("bad Content-Range {got:?} (asked for {want})")]
    BadRange { got: String, want: String },
    #[error("response body ended after {got} of {want} bytes")]
    ShortBody { got: usize, want: usize },
    #[error("response body longer than the {0} bytes asked for")]
    LongBody(usize),
}

impl SourceError {
    /// Whether the source showed it cannot serve this job at all — it ignores Range, or
    /// breaks HTTP's framing (a range, a length other than it announced), or its file has
    /// another size: blamed with the reason rather than retried forever. A transport error,
    /// a status (busy, not found), a changed file are retried.
    pub fn blames_source(&self) -> bool {
        matches!(
            self,
            SourceError::IgnoresRange
                | SourceError::BadRange { .. }
                | SourceError::LongBody(_)
                | SourceError::ShortBody { .. }
                | SourceError::MirrorSize { .. }
        )
    }
}

/// The per-connection channel back to the job, and the job's shared tables.
pub(crate) struct Link {
    pub conn: ConnId,
    pub(super) events: mpsc::Sender<SourceEvent>,
    pub(super) counters: Arc<Counters>,
    /// Digest tables the job already holds, by download identity (one per content).
    pub manifests: Manifests,
    /// Segment buffers to fill (the writer gives them back).
    pub buffers: BufferPool,
    /// The manifest of the content the job decided on, once it has (mirrors wait for it).
    pub accepted: watch::Receiver<Option<Arc<Manifest>>>,
}

impl Link {
    /// Reports an event; fails once the job is gone.
    pub async fn report(&self, event: SourceEvent) -> Result<(), SourceError> {
        self.events
            .send(event)
            .await
            .map_err(|_| SourceError::JobEnded)
    }

    /// The decided content's manifest: at once if known, else when the job decides.
    pub async fn accepted_manifest(&self) -> Result<Arc<Manifest>, SourceError> {
        let mut accepted = self.accepted.clone();
        let manifest = accepted
            .wait_for(Option::is_some)
            .await
            .map_err(|_| SourceError::JobEnded)?;
        manifest.clone().ok_or(SourceError::JobEnded)
    }

    /// `bytes` of segment data arrived: counted for metrics and as progress.
    pub fn progressed(&self, bytes: usize) {
        self.counters
            .payload
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// `bytes` of handshake arrived (a digest table may be long): progress, not payload.
    pub fn handshaking(&self, bytes: usize) {
        self.counters
            .handshake
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Bytes a connection received, sampled by the job: one atomic add per read on the hot
/// path instead of one event.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Segment bytes (what the source contributed to the file).
    pub payload: AtomicU64,
    /// Handshake bytes (header and digest frames).
    pub handshake: AtomicU64,
}

impl Counters {
    /// Every byte received so far: what progress is measured in.
    pub fn total(&self) -> u64 {
        self.payload
            .load(Ordering::Relaxed)
            .saturating_add(self.handshake.load(Ordering::Relaxed))
    }
}

/// One place segments come from. See the module docs.
pub(crate) trait Source: Send + 'static {
    /// Connects, handshakes, and says what the source claims about the content.
    fn handshake(&mut self, link: &Link)
        -> impl Future<Output = Result<Claim, SourceError>> + Send;

    /// Serves the job's commands until the connection ends. `Ok` means the source closed
    /// the connection cleanly.
    fn transfer(
        self,
        claim: Claim,
        commands: mpsc::UnboundedReceiver<SourceCommand>,
        link: &Link,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;
}
