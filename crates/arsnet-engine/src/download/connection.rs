//! One connection from a download job to one server: connect, hello, receive the manifest,
//! then keep requests flowing while segments stream in. Each segment is hashed as its bytes
//! arrive and reported as verified or corrupt; the job decides what to do with it. Received
//! bytes are counted in an atomic the job samples for progress and stall detection, so the
//! hot path sends one event per segment, not per read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arsnet_proto::limits::WIRE_VERSION;
use arsnet_proto::wire::{check_segment_head, ClientFrame, ManifestAssembler, ServerFrame};
use arsnet_proto::Manifest;
use arsnet_sched::ConnId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::buffers::BufferPool;
use crate::wire_io::read_server_frame;

/// Read granularity of segment bodies: the progress counter moves at least this often.
const READ_CHUNK: usize = 128 * 1024;

/// What a connection tells its job.
pub(crate) enum ConnEvent {
    Header {
        conn: ConnId,
        manifest: Arc<Manifest>,
    },
    Segment {
        conn: ConnId,
        segment: u64,
        data: Vec<u8>,
        verified: bool,
    },
    Cancelled {
        conn: ConnId,
        segment: u64,
    },
    Closed {
        conn: ConnId,
        error: String,
    },
}

/// What a job tells a connection.
pub(crate) enum ConnCommand {
    Request(u64),
    Cancel(u64),
}

/// The job's side of a running connection. Dropping it aborts the connection.
pub(crate) struct ConnHandle {
    pub server: usize,
    pub commands: mpsc::UnboundedSender<ConnCommand>,
    pub received: Arc<AtomicU64>,
    /// `received` when the job last sampled it.
    pub sampled: u64,
    /// The manifest this connection's server announced, once it has.
    pub manifest: Option<Arc<Manifest>>,
    task: JoinHandle<()>,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The job's accepted manifest, shared so that every connection serving the same content
/// uses one digest table instead of holding its own copy.
pub(crate) type Canonical = Arc<std::sync::Mutex<Option<Arc<Manifest>>>>;

/// What a connection needs from its job besides its address.
#[derive(Clone)]
pub(crate) struct ConnContext {
    pub connect_timeout: Duration,
    pub events: mpsc::Sender<ConnEvent>,
    pub canonical: Canonical,
    pub buffers: BufferPool,
}

pub(crate) fn spawn_connection(
    server: usize,
    conn: ConnId,
    address: String,
    ctx: ConnContext,
) -> ConnHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let task = tokio::spawn(async move {
        let error = match run(conn, &address, &ctx, rx, &counter).await {
            Ok(()) => "connection closed by server".to_string(),
            Err(e) => e,
        };
        let _ = ctx.events.send(ConnEvent::Closed { conn, error }).await;
    });
    ConnHandle {
        server,
        commands: tx,
        received,
        sampled: 0,
        manifest: None,
        task,
    }
}

async fn handshake(
    address: &str,
    connect_timeout: Duration,
) -> Result<(TcpStream, Manifest), String> {
    let mut stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
        .await
        .map_err(|_| format!("connect timed out after {}s", connect_timeout.as_secs()))?
        .map_err(|e| format!("connect failed: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut hello = Vec::new();
    ClientFrame::Hello {
        version: WIRE_VERSION,
    }
    .encode(&mut hello);
    stream
        .write_all(&hello)
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    let mut payload = Vec::new();
    // Each frame gets `connect_timeout`, not the whole exchange: the digest table of a huge
    // file may take a while on a slow link, and steady progress is not a hang.
    let no_progress = || format!("server sent nothing for {}s", connect_timeout.as_secs());
    let read = async {
        let first = tokio::time::timeout(
            connect_timeout,
            read_server_frame(&mut stream, &mut payload),
        )
        .await
        .map_err(|_| no_progress())?;
        let header = match first {
            Ok(ServerFrame::Header(header)) => header,
            Ok(ServerFrame::Error { message, .. }) => {
                return Err(format!("server error: {message}"))
            }
            Ok(other) => {
                return Err(format!(
                    "protocol violation: expected HEADER, got {other:?}"
                ))
            }
            Err(e) => return Err(format!("bad header: {e}")),
        };
        let mut assembler = ManifestAssembler::new(header);
        while !assembler.is_complete() {
            let next = tokio::time::timeout(
                connect_timeout,
                read_server_frame(&mut stream, &mut payload),
            )
            .await
            .map_err(|_| no_progress())?;
            match next {
                Ok(ServerFrame::Digests { first, digests }) => {
                    assembler
                        .push(first, digests)
                        .map_err(|e| format!("bad digests: {e}"))?;
                }
                Ok(other) => {
                    return Err(format!(
                        "protocol violation: expected DIGESTS, got {other:?}"
                    ))
                }
                Err(e) => return Err(format!("bad digests: {e}")),
            }
        }
        assembler.finish().map_err(|e| format!("bad manifest: {e}"))
    };
    let manifest = read.await?;
    Ok((stream, manifest))
}

async fn run(
    conn: ConnId,
    address: &str,
    ctx: &ConnContext,
    mut commands: mpsc::UnboundedReceiver<ConnCommand>,
    received: &AtomicU64,
) -> Result<(), String> {
    let events = &ctx.events;
    let (stream, manifest) = handshake(address, ctx.connect_timeout).await?;
    let shared = ctx.canonical.lock().ok().and_then(|c| c.clone());
    let manifest = match shared {
        Some(canonical) if canonical.identity() == manifest.identity() => canonical,
        _ => Arc::new(manifest),
    };
    events
        .send(ConnEvent::Header {
            conn,
            manifest: manifest.clone(),
        })
        .await
        .map_err(|_| "job ended".to_string())?;
    let (mut reader, mut writer) = stream.into_split();

    let send_requests = async move {
        let mut buf = Vec::with_capacity(16);
        while let Some(command) = commands.recv().await {
            buf.clear();
            match command {
                ConnCommand::Request(segment) => ClientFrame::Request { segment }.encode(&mut buf),
                ConnCommand::Cancel(segment) => ClientFrame::Cancel { segment }.encode(&mut buf),
            }
            if let Err(e) = writer.write_all(&buf).await {
                return format!("send failed: {e}");
            }
        }
        "job closed the connection".to_string()
    };

    let receive = async move {
        let mut payload = Vec::new();
        loop {
            let frame = read_server_frame(&mut reader, &mut payload)
                .await
                .map_err(|e| e.to_string())?;
            let event = match frame {
                ServerFrame::Segment(head) => {
                    check_segment_head(&manifest, &head)
                        .map_err(|e| format!("protocol violation: {e}"))?;
                    let mut data = ctx.buffers.take(head.length as usize);
                    // check_segment_head bounds the segment to the manifest: in range, and
                    // exactly its length, so the hasher is never fed past its subtree.
                    let Some(mut hasher) = manifest.segment_hasher(head.segment) else {
                        return Err(format!(
                            "protocol violation: segment {} out of range",
                            head.segment
                        ));
                    };
                    for chunk in data.chunks_mut(READ_CHUNK) {
                        reader
                            .read_exact(chunk)
                            .await
                            .map_err(|e| format!("receive failed: {e}"))?;
                        hasher.update(chunk);
                        received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    let verified = manifest.check_segment(head.segment, &hasher);
                    ConnEvent::Segment {
                        conn,
                        segment: head.segment,
                        data,
                        verified,
                    }
                }
                ServerFrame::Cancelled { segment } => ConnEvent::Cancelled { conn, segment },
                ServerFrame::Error { message, .. } => {
                    return Err(format!("server error: {message}"))
                }
                other => return Err(format!("protocol violation: unexpected {other:?}")),
            };
            events
                .send(event)
                .await
                .map_err(|_| "job ended".to_string())?;
        }
    };
    tokio::select! {
        error = send_requests => Err(error),
        result = receive => result,
    }
}
