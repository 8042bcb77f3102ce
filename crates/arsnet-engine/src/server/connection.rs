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
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arsnet_proto::limits::{
    MAX_OUTSTANDING_REQUESTS, SERVER_FIRST_REQUEST_TIMEOUT, SERVER_HELLO_TIMEOUT,
    SERVER_IDLE_TIMEOUT, SERVER_WRITE_STALL_TIMEOUT, WIRE_VERSION,
};
use arsnet_proto::wire::{ClientFrame, ErrorCode, SegmentHead, ServerFrame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::admission::{Activity, Phase, Ticket};
use super::served::{PortStats, Served, ServedFile};
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

/// Serves one client connection to its end: HELLO, the preamble, then requests.
pub(crate) async fn serve_connection<S>(
    mut stream: S,
    file: &ServedFile,
    stats: &PortStats,
    bucket: Option<&TokenBucket>,
    ticket: &Ticket,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let activity = &*ticket.activity;
    greet(&mut stream, ticket).await?;
    // The file as hashed now: this connection keeps that view to the end. Digests that no
    // longer describe the file are never sent, not even as a header.
    let Some(served) = &file.for_new_connection() else {
        let msg = "the served file changed on disk; it is being re-hashed, try again shortly";
        send_error(&mut stream, ErrorCode::FileChanged, msg.into()).await;
        return Err(ConnError::Refused(msg.into()));
    };
    write_all(&mut stream, &served.preamble, activity).await?;

    let (mut reader, mut writer) = tokio::io::split(stream);
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
    let conn = Conn {
        served,
        file,
        stats,
        bucket,
        ticket,
    };
    let serve = conn.serve_requests(&mut writer, rx);
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

/// Waits for the client's HELLO (within [`SERVER_HELLO_TIMEOUT`]) and checks its version.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ticket: &Ticket,
) -> Result<(), ConnError> {
    let mut payload = Vec::new();
    let hello = tokio::select! {
        biased;
        hello = tokio::time::timeout(
            SERVER_HELLO_TIMEOUT,
            read_client_frame(stream, &mut payload),
        ) => hello.map_err(|_| {
            ConnError::Refused(format!(
                "no hello within {} s",
                SERVER_HELLO_TIMEOUT.as_secs()
            ))
        })?,
        _ = ticket.evicted.cancelled() => {
            send_error(stream, ErrorCode::Internal, EVICTED.into()).await;
            return Err(ConnError::Evicted);
        }
    };
    let (code, msg) = match hello {
        Ok(ClientFrame::Hello { version }) if version == WIRE_VERSION => return Ok(()),
        Ok(ClientFrame::Hello { version }) => (
            ErrorCode::UnsupportedVersion,
            format!("unsupported protocol version {version}; server speaks {WIRE_VERSION}"),
        ),
        Ok(other) => (
            ErrorCode::BadRequest,
            format!("expected HELLO, got {other:?}"),
        ),
        Err(e) => {
            send_error(stream, ErrorCode::BadRequest, e.to_string()).await;
            return Err(e.into());
        }
    };
    send_error(stream, code, msg.clone()).await;
    Err(ConnError::Refused(msg))
}

/// What one connection serves from, and reports to.
struct Conn<'a> {
    served: &'a Arc<Served>,
    file: &'a ServedFile,
    stats: &'a PortStats,
    bucket: Option<&'a TokenBucket>,
    ticket: &'a Ticket,
}

impl Conn<'_> {
    async fn serve_requests<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        mut rx: mpsc::Receiver<Command>,
    ) -> Result<(), ConnError> {
        let activity = &*self.ticket.activity;
        let count = self.served.manifest.segment_count();
        let mut queue: VecDeque<u64> = VecDeque::new();
        // Allocated (to the segment size) by the first segment read, not before: a client
        // that only says HELLO must not cost a segment buffer.
        let mut buf = Vec::new();
        let mut frame = Vec::with_capacity(64);
        // When the queue last became empty. Only work (a segment to send) resets it: CANCELs
        // or requests cancelled at once do not keep a connection alive.
        let mut idle_since: Option<Instant> = None;
        // Until a first segment was sent, the short first-request deadline applies.
        let mut sent_any = false;
        loop {
            if queue.is_empty() {
                let since = *idle_since.get_or_insert_with(Instant::now);
                match self.wait_for_work(writer, &mut rx, since, sent_any).await? {
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
            buf = self.send_segment(writer, segment, buf, &mut frame).await?;
        }
    }

    /// With nothing queued: the next command, within the idle deadline (the short
    /// first-request one until a segment was sent), unless a newcomer evicts this
    /// connection. `None`: the client closed.
    async fn wait_for_work<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        rx: &mut mpsc::Receiver<Command>,
        since: Instant,
        sent_any: bool,
    ) -> Result<Option<Command>, ConnError> {
        // Again on every wait: writing a CANCELLED in between must not look like work.
        self.ticket.activity.set_at(Phase::Idle, since.into_std());
        let (limit, why) = if sent_any {
            (SERVER_IDLE_TIMEOUT, "idle for too long")
        } else {
            (SERVER_FIRST_REQUEST_TIMEOUT, "no request after the header")
        };
        tokio::select! {
            biased;
            next = tokio::time::timeout_at(since + limit, rx.recv()) => {
                next.map_err(|_| ConnError::Refused(why.into()))
            }
            _ = self.ticket.evicted.cancelled() => {
                send_error(writer, ErrorCode::Internal, EVICTED.into()).await;
                Err(ConnError::Evicted)
            }
        }
    }

    /// Reads `segment` (checking the file still is as hashed) and sends it, paced by the
    /// token bucket if any. Returns the buffer for reuse.
    async fn send_segment<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        segment: u64,
        buf: Vec<u8>,
        frame: &mut Vec<u8>,
    ) -> Result<Vec<u8>, ConnError> {
        let activity = &*self.ticket.activity;
        activity.set(Phase::Working);
        let (offset, length) = self.served.manifest.segment_range(segment);
        let buf = read_segment(self.served.clone(), buf, offset, length as usize).await?;
        if !self.served.unchanged() || buf.len() != length as usize {
            let msg = "the served file changed on disk since it was hashed".to_string();
            // Logged before the client is told, so that the log already says it when the
            // client reports it.
            tracing::warn!("{msg}; refusing to serve stale digests");
            self.file.report_change();
            send_error(writer, ErrorCode::FileChanged, msg.clone()).await;
            return Err(ConnError::Refused(msg));
        }
        frame.clear();
        ServerFrame::Segment(SegmentHead {
            segment,
            offset,
            length,
        })
        .encode(frame);
        write_all(writer, frame, activity).await?;
        let chunk = self.bucket.map_or(WRITE_CHUNK, TokenBucket::chunk_size);
        for piece in buf.chunks(chunk) {
            if let Some(bucket) = self.bucket {
                // Waiting for --rate tokens is the server's doing, never the client's.
                activity.set(Phase::Working);
                bucket.acquire(piece.len()).await;
            }
            write_all(writer, piece, activity).await?;
            self.stats
                .bytes_sent
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        self.stats.segments_sent.fetch_add(1, Ordering::Relaxed);
        Ok(buf)
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
        let filled = served.read_at_most(&mut buf, offset)?;
        buf.truncate(filled);
        Ok(buf)
    })
    .await
    .map_err(|e| ConnError::Refused(format!("read task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    //! One server connection against a scripted client over an in-memory duplex stream.

    use std::time::Duration;

    use super::*;
    use crate::server::admission::{Admission, Limits};
    use crate::server::config::GroupConfig;
    use crate::server::served::open_served;
    use crate::wire_io::read_server_frame;
    use arsnet_proto::wire::{ManifestAssembler, FRAME_HEADER_LEN};
    use arsnet_proto::Manifest;
    use tokio::io::{AsyncReadExt, DuplexStream};

    const SEG: u32 = 4096;

    struct Fixture {
        data: Vec<u8>,
        file: Arc<ServedFile>,
        stats: Arc<PortStats>,
        _dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("served.bin");
        let data: Vec<u8> = (0..6 * SEG as usize + 100).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let config = GroupConfig {
            file: path,
            count: 1,
            ports: vec![5000],
            bind: "127.0.0.1".into(),
            rate: None,
            status_interval: Duration::from_secs(5),
            segment_size: Some(SEG),
            cache_dir: None,
            expect_file: None,
            http: false,
        };
        let served = open_served(&config).unwrap();
        Fixture {
            data,
            file: Arc::new(ServedFile::new(served)),
            stats: Arc::new(PortStats::default()),
            _dir: dir,
        }
    }

    /// Starts the server side of a connection whose client end is returned; `buffer` is the
    /// duplex capacity each way (small: the server blocks until the client reads).
    fn serve(
        f: &Fixture,
        buffer: usize,
    ) -> (DuplexStream, tokio::task::JoinHandle<Result<(), ConnError>>) {
        let (client, server) = tokio::io::duplex(buffer);
        let (file, stats) = (f.file.clone(), f.stats.clone());
        let admission = Admission::new(Limits::default());
        let (ticket, _) = admission
            .admit("10.0.0.1".parse().unwrap(), std::time::Instant::now())
            .unwrap();
        let task =
            tokio::spawn(
                async move { serve_connection(server, &file, &stats, None, &ticket).await },
            );
        (client, task)
    }

    async fn send(client: &mut DuplexStream, frames: &[ClientFrame]) {
        let mut buf = Vec::new();
        for frame in frames {
            frame.encode(&mut buf);
        }
        client.write_all(&buf).await.unwrap();
    }

    /// HELLO, then reads HEADER and DIGESTS into a manifest.
    async fn hello(client: &mut DuplexStream) -> Manifest {
        send(
            client,
            &[ClientFrame::Hello {
                version: WIRE_VERSION,
            }],
        )
        .await;
        let mut payload = Vec::new();
        let ServerFrame::Header(header) = read_server_frame(client, &mut payload).await.unwrap()
        else {
            panic!("expected HEADER")
        };
        let mut assembler = ManifestAssembler::new(header);
        while !assembler.is_complete() {
            match read_server_frame(client, &mut payload).await.unwrap() {
                ServerFrame::Digests { first, digests } => {
                    assembler.push(first, digests).unwrap();
                }
                other => panic!("expected DIGESTS, got {other:?}"),
            }
        }
        assembler.finish().unwrap()
    }

    /// Reads the next frame; a SEGMENT's bytes are read and returned with it.
    async fn next(client: &mut DuplexStream) -> (ServerFrame, Vec<u8>) {
        let mut payload = Vec::new();
        let frame = read_server_frame(client, &mut payload).await.unwrap();
        let mut bytes = Vec::new();
        if let ServerFrame::Segment(head) = &frame {
            bytes.resize(head.length as usize, 0);
            client.read_exact(&mut bytes).await.unwrap();
        }
        (frame, bytes)
    }

    async fn expect_error(client: &mut DuplexStream) -> (ErrorCode, String) {
        loop {
            match next(client).await {
                (ServerFrame::Error { code, message }, _) => return (code, message),
                (ServerFrame::Segment(_), _) => {}
                (other, _) => panic!("expected ERROR, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn hello_gets_the_manifest_and_a_request_its_segment() {
        let f = fixture();
        let (mut client, task) = serve(&f, 1 << 20);
        let manifest = hello(&mut client).await;
        assert_eq!(manifest, f.file.get().manifest);
        send(&mut client, &[ClientFrame::Request { segment: 6 }]).await;
        let (frame, bytes) = next(&mut client).await;
        assert_eq!(
            frame,
            ServerFrame::Segment(SegmentHead {
                segment: 6,
                offset: 6 * u64::from(SEG),
                length: 100
            })
        );
        assert_eq!(bytes, f.data[6 * SEG as usize..]);
        assert!(manifest.verify_segment(6, &bytes));
        drop(client);
        assert!(
            task.await.unwrap().is_ok(),
            "a client closing is a clean end"
        );
        assert_eq!(f.stats.segments_sent.load(Ordering::Relaxed), 1);
        assert_eq!(f.stats.bytes_sent.load(Ordering::Relaxed), 100);
    }

    #[tokio::test]
    async fn a_queued_request_is_cancelled_and_never_sent() {
        let f = fixture();
        // Smaller than a segment: the server is stuck writing segment 0 while it reads the
        // rest of the requests and the cancel.
        let (mut client, _task) = serve(&f, FRAME_HEADER_LEN + 20 + 100);
        hello(&mut client).await;
        let mut frames: Vec<ClientFrame> = (0..6)
            .map(|segment| ClientFrame::Request { segment })
            .collect();
        frames.push(ClientFrame::Cancel { segment: 5 });
        send(&mut client, &frames).await;
        let mut answers = Vec::new();
        while answers.len() < 6 {
            match next(&mut client).await {
                (ServerFrame::Segment(head), _) => answers.push(("segment", head.segment)),
                (ServerFrame::Cancelled { segment }, _) => answers.push(("cancelled", segment)),
                (other, _) => panic!("{other:?}"),
            }
        }
        assert!(answers.contains(&("cancelled", 5)), "{answers:?}");
        assert!(!answers.contains(&("segment", 5)), "{answers:?}");
        for s in 0..5 {
            assert!(answers.contains(&("segment", s)), "{answers:?}");
        }
    }

    #[tokio::test]
    async fn a_wrong_version_is_answered_and_closed() {
        let f = fixture();
        let (mut client, task) = serve(&f, 1 << 20);
        send(&mut client, &[ClientFrame::Hello { version: 99 }]).await;
        let (code, message) = expect_error(&mut client).await;
        assert_eq!(code, ErrorCode::UnsupportedVersion);
        assert!(
            message.contains("unsupported protocol version 99"),
            "{message}"
        );
        assert!(matches!(task.await.unwrap(), Err(ConnError::Refused(_))));
    }

    #[tokio::test]
    async fn a_bad_frame_after_the_handshake_gets_an_error_and_a_close() {
        let f = fixture();
        let (mut client, task) = serve(&f, 1 << 20);
        hello(&mut client).await;
        // Type 0x7f does not exist.
        client
            .write_all(&[0x7f, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let (code, message) = expect_error(&mut client).await;
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("unknown frame type 0x7f"), "{message}");
        assert!(matches!(task.await.unwrap(), Err(ConnError::Refused(_))));
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after the ERROR");
    }

    #[tokio::test]
    async fn a_second_hello_and_an_out_of_range_request_are_refused() {
        let f = fixture();
        let (mut client, task) = serve(&f, 1 << 20);
        hello(&mut client).await;
        send(
            &mut client,
            &[ClientFrame::Hello {
                version: WIRE_VERSION,
            }],
        )
        .await;
        assert_eq!(
            expect_error(&mut client).await,
            (ErrorCode::BadRequest, "HELLO sent twice".into())
        );
        assert!(task.await.unwrap().is_err());

        let (mut client, task) = serve(&f, 1 << 20);
        hello(&mut client).await;
        send(&mut client, &[ClientFrame::Request { segment: 99 }]).await;
        let (code, message) = expect_error(&mut client).await;
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("segment 99 out of range"), "{message}");
        assert!(task.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn more_outstanding_requests_than_the_limit_close_the_connection() {
        let f = fixture();
        // The server blocks on the first segment, so the others all queue.
        let (mut client, task) = serve(&f, FRAME_HEADER_LEN + 20 + 100);
        hello(&mut client).await;
        let frames = vec![ClientFrame::Request { segment: 0 }; MAX_OUTSTANDING_REQUESTS + 2];
        send(&mut client, &frames).await;
        let (code, message) = expect_error(&mut client).await;
        assert_eq!(code, ErrorCode::TooManyRequests);
        assert!(
            message.contains("more than 64 outstanding requests"),
            "{message}"
        );
        assert!(matches!(task.await.unwrap(), Err(ConnError::Refused(_))));

        // Exactly the limit is fine.
        let (mut client, _task) = serve(&f, 1 << 20);
        hello(&mut client).await;
        let frames = vec![ClientFrame::Request { segment: 0 }; MAX_OUTSTANDING_REQUESTS];
        send(&mut client, &frames).await;
        for _ in 0..MAX_OUTSTANDING_REQUESTS {
            assert!(matches!(next(&mut client).await.0, ServerFrame::Segment(_)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_says_hello_is_closed_after_the_deadline() {
        let f = fixture();
        let (_client, task) = serve(&f, 1 << 20);
        let started = tokio::time::Instant::now();
        let result = task.await.unwrap();
        assert!(
            matches!(&result, Err(ConnError::Refused(m)) if m == "no hello within 10 s"),
            "{result:?}"
        );
        assert_eq!(started.elapsed(), SERVER_HELLO_TIMEOUT);
    }
}
