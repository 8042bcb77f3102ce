//! One client connection to a virtual server: hello, header + digests, then a loop serving
//! requested segments in order. A reader half parses requests and cancels while the writer
//! half streams segments, so a client can keep several requests in flight. Segments are read
//! with pread into one reused buffer per connection, allocated by the first request: memory
//! does not grow with file size, and a connection that never asks costs next to nothing.
//!
//! The connection reports what it is doing to its port's admission table (see
//! `admission.rs`), which evicts it for a newcomer only while it is idle or stalled; an
//! evicted connection that is between frames is told why before it is closed.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arsnet_proto::limits::{
    MAX_OUTSTANDING_REQUESTS, SERVER_FIRST_REQUEST_TIMEOUT, SERVER_HELLO_TIMEOUT,
    SERVER_IDLE_TIMEOUT, SERVER_WRITE_STALL_TIMEOUT, WIRE_VERSION,
};
use arsnet_proto::wire::{ClientFrame, ErrorCode, SegmentHead, ServerFrame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::admission::{Activity, Phase, Ticket};
use super::group::{PortStats, Served, ServedFile};
use crate::rate::TokenBucket;
use crate::wire_io::{read_client_frame, FrameReadError};

/// Sent to a connection evicted while idle, so that an honest client knows why.
const EVICTED: &str =
    "server full: this idle connection was closed to make room for another client";
/// Writes are cut into slices this big so that the stall limit measures progress, not the
/// time a whole (possibly huge) buffer takes on a slow link.
const WRITE_SLICE: usize = 64 * 1024;
/// Bytes written between counter updates when not rate-limited.
const WRITE_CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("{0}")]
    Read(#[from] FrameReadError),
    #[error("write failed: {0}")]
    Write(#[from] std::io::Error),
    #[error("client refused: {0}")]
    Refused(String),
    #[error("evicted to make room for another client")]
    Evicted,
}

enum Command {
    Request(u64),
    Cancel(u64),
    Violation(ErrorCode, String),
}

/// `write_all` that gives up on a client that stopped reading. Each slice restarts the
/// `Writing` phase, so the admission table sees how long the current slice has been stuck.
async fn write_all<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    activity: &Activity,
) -> Result<(), ConnError> {
    for slice in bytes.chunks(WRITE_SLICE) {
        activity.set(Phase::Writing);
        match tokio::time::timeout(SERVER_WRITE_STALL_TIMEOUT, writer.write_all(slice)).await {
            Ok(result) => result?,
            Err(_) => return Err(ConnError::Refused("client stopped reading".into())),
        }
    }
    Ok(())
}

async fn send_error<W: AsyncWrite + Unpin>(writer: &mut W, code: ErrorCode, message: String) {
    let mut buf = Vec::new();
    ServerFrame::Error { code, message }.encode(&mut buf);
    // Best effort: the connection is being closed because of this error anyway.
    let _ = writer.write_all(&buf).await;
    let _ = writer.flush().await;
}

pub(crate) async fn serve_connection(
    mut stream: TcpStream,
    file: &ServedFile,
    stats: &PortStats,
    bucket: Option<&TokenBucket>,
    ticket: &Ticket,
) -> Result<(), ConnError> {
    let activity = &*ticket.activity;
    let evicted = &ticket.evicted;
    let mut payload = Vec::new();
    let hello = tokio::select! {
        biased;
        hello = tokio::time::timeout(
            SERVER_HELLO_TIMEOUT,
            read_client_frame(&mut stream, &mut payload),
        ) => hello.map_err(|_| {
            ConnError::Refused(format!(
                "no hello within {} s",
                SERVER_HELLO_TIMEOUT.as_secs()
            ))
        })?,
        _ = evicted.cancelled() => {
            send_error(&mut stream, ErrorCode::Internal, EVICTED.into()).await;
            return Err(ConnError::Evicted);
        }
    };
    match hello {
        Ok(ClientFrame::Hello { version }) if version == WIRE_VERSION => {}
        Ok(ClientFrame::Hello { version }) => {
            let msg =
                format!("unsupported protocol version {version}; server speaks {WIRE_VERSION}");
            send_error(&mut stream, ErrorCode::UnsupportedVersion, msg.clone()).await;
            return Err(ConnError::Refused(msg));
        }
        Ok(other) => {
            let msg = format!("expected HELLO, got {other:?}");
            send_error(&mut stream, ErrorCode::BadRequest, msg.clone()).await;
            return Err(ConnError::Refused(msg));
        }
        Err(e) => {
            send_error(&mut stream, ErrorCode::BadRequest, e.to_string()).await;
            return Err(e.into());
        }
    }
    // The file as hashed now: this connection keeps that view to the end. Digests that no
    // longer describe the file are never sent, not even as a header.
    let Some(served) = &file.for_new_connection() else {
        let msg = "the served file changed on disk; it is being re-hashed, try again shortly";
        send_error(&mut stream, ErrorCode::FileChanged, msg.into()).await;
        return Err(ConnError::Refused(msg.into()));
    };
    write_all(&mut stream, &served.preamble, activity).await?;

    let (mut reader, mut writer) = stream.into_split();
    let (tx, rx) = mpsc::channel(MAX_OUTSTANDING_REQUESTS + 8);
    let read_requests = async move {
        let mut payload = Vec::new();
        loop {
            let command = match read_client_frame(&mut reader, &mut payload).await {
                Ok(ClientFrame::Request { segment }) => Command::Request(segment),
                Ok(ClientFrame::Cancel { segment }) => Command::Cancel(segment),
                Ok(ClientFrame::Hello { .. }) => {
                    Command::Violation(ErrorCode::BadRequest, "HELLO sent twice".into())
                }
                Err(FrameReadError::Closed) => return,
                Err(e) => Command::Violation(ErrorCode::BadRequest, e.to_string()),
            };
            let stop = matches!(command, Command::Violation(..));
            if tx.send(command).await.is_err() || stop {
                return;
            }
        }
    };
    let serve = serve_requests(&mut writer, rx, served, file, stats, bucket, ticket);
    tokio::pin!(serve);
    tokio::pin!(read_requests);
    // The writer finishing (error or violation) ends the connection at once. The reader
    // finishing (client half-closed, or a violation queued) lets the writer drain what is
    // queued, including an ERROR frame, and stop.
    tokio::select! {
        result = &mut serve => result,
        _ = &mut read_requests => serve.await,
    }
}

async fn serve_requests<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut rx: mpsc::Receiver<Command>,
    served: &Arc<Served>,
    file: &ServedFile,
    stats: &PortStats,
    bucket: Option<&TokenBucket>,
    ticket: &Ticket,
) -> Result<(), ConnError> {
    let activity = &*ticket.activity;
    let count = served.manifest.segment_count();
    let mut queue: VecDeque<u64> = VecDeque::new();
    // Allocated (to the segment size) by the first segment read, not before: a client that
    // only says HELLO must not cost a segment buffer.
    let mut buf = Vec::new();
    let mut frame = Vec::with_capacity(64);
    // When the queue last became empty. Only work (a segment to send) resets it: CANCELs or
    // requests cancelled at once do not keep a connection alive.
    let mut idle_since: Option<Instant> = None;
    // Until a first segment was sent, the short first-request deadline applies.
    let mut sent_any = false;
    loop {
        if queue.is_empty() {
            let since = *idle_since.get_or_insert_with(Instant::now);
            // Again on every wait: writing a CANCELLED in between must not look like work.
            activity.set_at(Phase::Idle, since.into_std());
            let (limit, why) = if sent_any {
                (SERVER_IDLE_TIMEOUT, "idle for too long")
            } else {
                (SERVER_FIRST_REQUEST_TIMEOUT, "no request after the header")
            };
            let next = tokio::select! {
                biased;
                next = tokio::time::timeout_at(since + limit, rx.recv()) => {
                    next.map_err(|_| ConnError::Refused(why.into()))?
                }
                _ = ticket.evicted.cancelled() => {
                    send_error(writer, ErrorCode::Internal, EVICTED.into()).await;
                    return Err(ConnError::Evicted);
                }
            };
            match next {
                Some(command) => {
                    apply(command, &mut queue, count, writer, &mut frame, activity).await?
                }
                None => return Ok(()),
            }
        }
        while let Ok(command) = rx.try_recv() {
            apply(command, &mut queue, count, writer, &mut frame, activity).await?;
        }
        let Some(segment) = queue.pop_front() else {
            continue;
        };
        idle_since = None;
        sent_any = true;
        activity.set(Phase::Working);
        let (offset, length) = served.manifest.segment_range(segment);
        buf = read_segment(served.clone(), buf, offset, length as usize).await?;
        if !served.unchanged() || buf.len() != length as usize {
            let msg = "the served file changed on disk since it was hashed".to_string();
            file.report_change();
            send_error(writer, ErrorCode::FileChanged, msg.clone()).await;
            tracing::warn!("{msg}; refusing to serve stale digests");
            return Err(ConnError::Refused(msg));
        }
        frame.clear();
        ServerFrame::Segment(SegmentHead {
            segment,
            offset,
            length,
        })
        .encode(&mut frame);
        write_all(writer, &frame, activity).await?;
        let chunk = bucket.map_or(WRITE_CHUNK, TokenBucket::chunk_size);
        for piece in buf.chunks(chunk) {
            if let Some(bucket) = bucket {
                // Waiting for --rate tokens is the server's doing, never the client's.
                activity.set(Phase::Working);
                bucket.acquire(piece.len()).await;
            }
            write_all(writer, piece, activity).await?;
            stats
                .bytes_sent
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        stats.segments_sent.fetch_add(1, Ordering::Relaxed);
    }
}

async fn apply<W: AsyncWrite + Unpin>(
    command: Command,
    queue: &mut VecDeque<u64>,
    count: u64,
    writer: &mut W,
    frame: &mut Vec<u8>,
    activity: &Activity,
) -> Result<(), ConnError> {
    match command {
        Command::Request(segment) if segment >= count => {
            let msg = format!("segment {segment} out of range (file has {count})");
            send_error(writer, ErrorCode::BadRequest, msg.clone()).await;
            Err(ConnError::Refused(msg))
        }
        Command::Request(_) if queue.len() >= MAX_OUTSTANDING_REQUESTS => {
            let msg = format!("more than {MAX_OUTSTANDING_REQUESTS} outstanding requests");
            send_error(writer, ErrorCode::TooManyRequests, msg.clone()).await;
            Err(ConnError::Refused(msg))
        }
        Command::Request(segment) => {
            queue.push_back(segment);
            Ok(())
        }
        Command::Cancel(segment) => {
            // Only a queued request can be cancelled; one already sent (or being sent) is
            // answered by its SEGMENT, so the client always gets exactly one answer.
            if let Some(pos) = queue.iter().position(|&s| s == segment) {
                queue.remove(pos);
                frame.clear();
                ServerFrame::Cancelled { segment }.encode(frame);
                write_all(writer, frame, activity).await?;
            }
            Ok(())
        }
        Command::Violation(code, message) => {
            send_error(writer, code, message.clone()).await;
            Err(ConnError::Refused(message))
        }
    }
}

/// pread of one segment on the blocking pool, reusing `buf`. A short read (file truncated
/// under us) returns a shorter buffer, which the caller reports as a changed file.
async fn read_segment(
    served: Arc<Served>,
    mut buf: Vec<u8>,
    offset: u64,
    length: usize,
) -> Result<Vec<u8>, ConnError> {
    tokio::task::spawn_blocking(move || {
        buf.resize(length, 0);
        let mut filled = 0;
        while filled < length {
            match served
                .file
                .read_at(&mut buf[filled..], offset + filled as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ConnError::Write(e)),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    })
    .await
    .map_err(|e| ConnError::Refused(format!("read task failed: {e}")))?
}
