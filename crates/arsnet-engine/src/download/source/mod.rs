//! Where segments come from. A *source* is one place the job can fetch segments from; the
//! job sees every kind through the same small seam:
//!
//! - [`Source::handshake`]: connect and learn what the source claims about the content (a
//!   [`Claim`]);
//! - [`Source::transfer`]: carry out [`SourceCommand`]s (request, cancel) and report what
//!   arrives through the [`Link`] (segments, cancels, and bytes as they arrive);
//! - the end of the connection, as a [`SourceError`].
//!
//! The connection task around a source ([`spawn`]) is shared, and [`spawn`] (with
//! [`fetch_one`], a single segment asked of a referee) is the one place that looks at a
//! [`SourceAddr`] to choose the implementation: an ArsNet server is [`arsnet`], an HTTP(S)
//! mirror `http`; a new kind is one new module and one arm in each.
//!
//! A source keeps no scheduling timers: it reports bytes as they arrive ([`Link::progressed`]),
//! the job feeds them to the scheduler, and the scheduler decides when silence has lasted too
//! long (handshake or stall) and tells the job to drop the connection, which aborts its task.
//! The one deadline inside a source is a protocol bound on reading a digest table
//! (`CLIENT_DIGEST_GRACE`, see ARCHITECTURE.md "Deliberately absent").

pub(crate) mod arsnet;
mod http;

mod seam;

pub(crate) use seam::{Counters, Link, Source, SourceCommand, SourceError, SourceEvent};

use std::sync::Arc;

use arsnet_proto::Manifest;
use arsnet_proto::SourceAddr;
use arsnet_sched::ConnId;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::buffers::BufferPool;
use super::identity::{Claim, Manifests};

/// What a connection needs from its job besides its address.
#[derive(Clone)]
pub(crate) struct SourceContext {
    pub events: mpsc::Sender<SourceEvent>,
    pub manifests: Manifests,
    pub buffers: BufferPool,
    /// The decided content's manifest, published by the job (see [`Link::accepted`]).
    pub accepted: watch::Receiver<Option<Arc<Manifest>>>,
    /// The job's HTTP client: one connection pool for all its mirror connections.
    pub http: reqwest::Client,
    /// Requests in flight per mirror connection (`DownloadConfig::mirror_connections`).
    pub mirror_connections: usize,
}

/// The job's side of a running connection. Dropping it aborts the connection.
pub(crate) struct SourceHandle {
    pub server: usize,
    pub commands: mpsc::UnboundedSender<SourceCommand>,
    pub counters: Arc<Counters>,
    /// `counters.total()` when the job last sampled it.
    pub sampled: u64,
    /// What this connection's source claimed, once it has.
    pub claim: Option<Claim>,
    task: JoinHandle<()>,
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a connection to `addr`, the `server`-th source of the job, as `conn`. With
/// [`fetch_one`], the one place that dispatches on the kind of source.
pub(crate) fn spawn(
    server: usize,
    conn: ConnId,
    addr: &SourceAddr,
    ctx: &SourceContext,
) -> SourceHandle {
    match addr {
        SourceAddr::ArsNet { .. } => {
            let source = arsnet::ArsNetServer::new(addr.to_full_string());
            spawn_source(server, conn, source, ctx)
        }
        SourceAddr::Http { url } => {
            let source =
                http::HttpMirror::new(url.clone(), ctx.http.clone(), ctx.mirror_connections);
            spawn_source(server, conn, source, ctx)
        }
    }
}

/// Segment `segment` of `manifest` from `addr`, asked once, outside any scheduler
/// connection (a referee, by repair and the cross-check). `None` for a kind of source that
/// is never asked so: an ArsNet server's segments are proven by its digest table as they
/// arrive, so it is never a suspect, and a referee is only needed where none is.
pub(crate) async fn fetch_one(
    addr: &SourceAddr,
    client: &reqwest::Client,
    manifest: &Arc<Manifest>,
    segment: u64,
    buffers: &BufferPool,
) -> Option<Result<Vec<u8>, SourceError>> {
    match addr {
        SourceAddr::ArsNet { .. } => None,
        SourceAddr::Http { url } => {
            Some(http::fetch_segment(client, url, manifest, segment, buffers).await)
        }
    }
}

/// Runs `source` as `conn`: handshake, `Ready`, transfer, and always a final `Closed`.
fn spawn_source<S: Source>(
    server: usize,
    conn: ConnId,
    source: S,
    ctx: &SourceContext,
) -> SourceHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let counters = Arc::new(Counters::default());
    let link = Link {
        conn,
        events: ctx.events.clone(),
        counters: counters.clone(),
        manifests: ctx.manifests.clone(),
        buffers: ctx.buffers.clone(),
        accepted: ctx.accepted.clone(),
    };
    let task = tokio::spawn(async move {
        let error = match drive(source, rx, &link).await {
            Ok(()) => SourceError::ClosedByServer,
            Err(e) => e,
        };
        // The job may be gone already; then nobody needs to hear it.
        let _ = link.report(SourceEvent::Closed { conn, error }).await;
    });
    SourceHandle {
        server,
        commands: tx,
        counters,
        sampled: 0,
        claim: None,
        task,
    }
}

pub(crate) async fn drive<S: Source>(
    mut source: S,
    commands: mpsc::UnboundedReceiver<SourceCommand>,
    link: &Link,
) -> Result<(), SourceError> {
    let claim = source.handshake(link).await?;
    link.report(SourceEvent::Ready {
        conn: link.conn,
        claim: claim.clone(),
    })
    .await?;
    source.transfer(claim, commands, link).await
}
