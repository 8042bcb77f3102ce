//! One client connection to a virtual server: hello, header + digests, then a loop serving
//! requested segments in order. A reader half parses requests and cancels while the writer
//! half streams segments, so a client can keep several requests in flight. Segments are read
//! with pread into one reused buffer per connection: memory does not grow with file size.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arsnet_proto::limits::{MAX_OUTSTANDING_REQUESTS, WIRE_VERSION};
use arsnet_proto::wire::{ClientFrame, ErrorCode, SegmentHead, ServerFrame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::group::{PortStats, Served, ServedFile};
use crate::rate::TokenBucket;
use crate::wire_io::{read_client_frame, FrameReadError};

/// How long a client may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with nothing queued and no request for this long is closed, so idle clients
/// cannot hold a virtual server's connection slots forever.
/// An hour: longer than any client's stall timeout, so a client that merely waits on its own
/// slow disk (and so requests nothing for a while) is never cut off.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// A write that makes no progress at all for this long means the client stopped reading.
const WRITE_STALL: Duration = Duration::from_secs(600);
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
}

enum Command {
    Request(u64),
    Cancel(u64),
    Violation(ErrorCode, String),
}

/// `write_all` that gives up on a client that stopped reading.
async fn write_all<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> Result<(), ConnError> {
    for slice in bytes.chunks(WRITE_SLICE) {
        match tokio::time::timeout(WRITE_STALL, writer.write_all(slice)).await {
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
) -> Result<(), ConnError> {
    // The file as hashed when this connection arrived: it keeps that view to the end.
    let served = &file.get();
    let mut payload = Vec::new();
    let hello = tokio::time::timeout(HELLO_TIMEOUT, read_client_frame(&mut stream, &mut payload))
        .await
        .map_err(|_| ConnError::Refused("no hello within 10 s".into()))?;
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
    write_all(&mut stream, &served.preamble).await?;

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
    let serve = serve_requests(&mut writer, rx, served, file, stats, bucket);
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
) -> Result<(), ConnError> {
    let count = served.manifest.segment_count();
    let mut queue: VecDeque<u64> = VecDeque::new();
    let mut buf = Vec::with_capacity(served.manifest.segment_size as usize);
    let mut frame = Vec::with_capacity(64);
    loop {
        if queue.is_empty() {
            let next = tokio::time::timeout(IDLE_TIMEOUT, rx.recv())
                .await
                .map_err(|_| ConnError::Refused("idle for too long".into()))?;
            match next {
                Some(command) => apply(command, &mut queue, count, writer, &mut frame).await?,
                None => return Ok(()),
            }
        }
        while let Ok(command) = rx.try_recv() {
            apply(command, &mut queue, count, writer, &mut frame).await?;
        }
        let Some(segment) = queue.pop_front() else {
            continue;
        };
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
        write_all(writer, &frame).await?;
        let chunk = bucket.map_or(WRITE_CHUNK, TokenBucket::chunk_size);
        for piece in buf.chunks(chunk) {
            if let Some(bucket) = bucket {
                bucket.acquire(piece.len()).await;
            }
            write_all(writer, piece).await?;
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
                write_all(writer, frame).await?;
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
