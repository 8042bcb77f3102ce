//! An ArsNet server as a source (wire protocol v2, PROTOCOL.md §1): connect, HELLO, HEADER
//! and DIGESTS (assembled into a manifest whose root is checked, or skipped when the job
//! already holds that table), then REQUEST/CANCEL out and SEGMENT/CANCELLED in. Each
//! segment is hashed as its bytes arrive and reported as verified or not; the job and the
//! scheduler decide what that means.
//!
//! No timers here: every frame and every chunk of segment bytes is reported to the job as
//! progress, and the scheduler decides when silence is too long (see `source/mod.rs`). That
//! covers the TCP connect too: a connect that hangs is a silent handshake.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arsnet_proto::limits::{CLIENT_DIGEST_GRACE, CLIENT_MIN_DIGEST_RATE, WIRE_VERSION};
use arsnet_proto::wire::{
    check_segment_head, ClientFrame, Header, ManifestAssembler, SegmentHead, ServerFrame,
    FRAME_HEADER_LEN,
};
use arsnet_proto::Manifest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::seam::{Link, Source, SourceCommand, SourceError, SourceEvent};
use crate::download::identity::Claim;
use crate::wire_io::read_server_frame;

/// Read granularity of segment bodies: the progress counter moves at least this often.
const READ_CHUNK: usize = 128 * 1024;

/// How the stream is obtained: lazily, when the handshake starts.
type Dial<S> = Pin<Box<dyn Future<Output = io::Result<S>> + Send>>;

/// One connection to an ArsNet server, over TCP (or, in tests, any byte stream).
pub(crate) struct ArsNetServer<S = TcpStream> {
    dial: Option<Dial<S>>,
    stream: Option<S>,
}

impl ArsNetServer<TcpStream> {
    /// A server at `address` (`host:port`); nothing happens until the handshake.
    pub fn new(address: String) -> Self {
        let dial = async move {
            let stream = TcpStream::connect(address).await?;
            // Requests are tiny and latency-bound.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        };
        ArsNetServer {
            dial: Some(Box::pin(dial)),
            stream: None,
        }
    }
}

#[cfg(test)]
impl<S: Send + 'static> ArsNetServer<S> {
    /// A server at the other end of `stream`.
    pub fn over(stream: S) -> Self {
        ArsNetServer {
            dial: None,
            stream: Some(stream),
        }
    }
}

impl<S> Source for ArsNetServer<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn handshake(&mut self, link: &Link) -> Result<Claim, SourceError> {
        if let Some(dial) = self.dial.take() {
            self.stream = Some(dial.await.map_err(SourceError::Connect)?);
        }
        let stream = self.stream.as_mut().ok_or(SourceError::JobClosed)?;
        let manifest = handshake(stream, link).await?;
        Ok(Claim::Manifest(manifest))
    }

    async fn transfer(
        mut self,
        claim: Claim,
        commands: mpsc::UnboundedReceiver<SourceCommand>,
        link: &Link,
    ) -> Result<(), SourceError> {
        let stream = self.stream.take().ok_or(SourceError::JobClosed)?;
        // An ArsNet server's claim always carries its manifest.
        let manifest = claim.manifest().cloned().ok_or(SourceError::JobClosed)?;
        let (reader, writer) = tokio::io::split(stream);
        tokio::select! {
            error = send_commands(writer, commands) => Err(error),
            result = receive(reader, &manifest, link) => result,
        }
    }
}

/// HELLO, then HEADER and the DIGESTS: the server's manifest, shared with the job's other
/// connections when it is a table the job already holds.
async fn handshake<S>(stream: &mut S, link: &Link) -> Result<Arc<Manifest>, SourceError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hello = Vec::new();
    ClientFrame::Hello {
        version: WIRE_VERSION,
    }
    .encode(&mut hello);
    stream.write_all(&hello).await.map_err(SourceError::Send)?;
    let mut payload = Vec::new();
    let header = match handshake_frame(stream, &mut payload, link).await? {
        ServerFrame::Header(header) => header,
        ServerFrame::Error { code, message } => return Err(SourceError::Server { code, message }),
        other => return Err(expected("HEADER", &other)),
    };
    let identity = header.identity();
    if let Some(known) = link.manifests.get(&identity) {
        skip_digests(stream, &mut payload, header.segment_count, link).await?;
        return Ok(known);
    }
    // One assembly at a time per content; whoever waited may find the table made meanwhile.
    let _turn = wait_for_turn(&identity, link).await?;
    if let Some(known) = link.manifests.get(&identity) {
        skip_digests(stream, &mut payload, header.segment_count, link).await?;
        return Ok(known);
    }
    let table = header.segment_count.saturating_mul(32);
    let bound = CLIENT_DIGEST_GRACE + Duration::from_secs(table / CLIENT_MIN_DIGEST_RATE);
    let manifest = tokio::time::timeout(bound, assemble(stream, &mut payload, header, link))
        .await
        .map_err(|_| SourceError::DigestsTooSlow(bound))??;
    Ok(link.manifests.insert(Arc::new(manifest)))
}

/// Waits for the turn to assemble `identity`'s table while another connection of this job
/// assembles it. Waiting on a sibling is not silence of this server (it sent its header):
/// the scheduler is told, so that no handshake timer runs meanwhile, and told again when
/// the turn comes. The sibling itself is bounded by [`CLIENT_MIN_DIGEST_RATE`], so the wait
/// is too.
async fn wait_for_turn(
    identity: &arsnet_proto::Digest,
    link: &Link,
) -> Result<tokio::sync::OwnedMutexGuard<()>, SourceError> {
    let turn = link.manifests.turn(identity);
    if let Ok(free) = turn.clone().try_lock_owned() {
        return Ok(free);
    }
    let conn = link.conn;
    link.report(SourceEvent::TableWait {
        conn,
        waiting: true,
    })
    .await?;
    let guard = turn.lock_owned().await;
    link.report(SourceEvent::TableWait {
        conn,
        waiting: false,
    })
    .await?;
    Ok(guard)
}

fn expected(what: &'static str, got: &ServerFrame) -> SourceError {
    SourceError::Expected {
        expected: what,
        got: format!("{got:?}"),
    }
}

/// Reads one handshake frame and reports its bytes as progress.
async fn handshake_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    payload: &mut Vec<u8>,
    link: &Link,
) -> Result<ServerFrame, SourceError> {
    let frame = read_server_frame(stream, payload)
        .await
        .map_err(SourceError::HandshakeFrame)?;
    link.handshaking(FRAME_HEADER_LEN + payload.len());
    Ok(frame)
}

/// Builds the manifest from the DIGESTS frames and checks it proves the header's root.
async fn assemble<S: AsyncRead + Unpin>(
    stream: &mut S,
    payload: &mut Vec<u8>,
    header: Header,
    link: &Link,
) -> Result<Manifest, SourceError> {
    let mut assembler = ManifestAssembler::new(header);
    while !assembler.is_complete() {
        match handshake_frame(stream, payload, link).await? {
            ServerFrame::Digests { first, digests } => {
                assembler
                    .push(first, digests)
                    .map_err(SourceError::Digests)?;
            }
            other => return Err(expected("DIGESTS", &other)),
        }
    }
    assembler.finish().map_err(SourceError::Manifest)
}

/// Reads the DIGESTS frames of a download whose table the job already holds, checking their
/// order and count but keeping nothing.
async fn skip_digests<S: AsyncRead + Unpin>(
    stream: &mut S,
    payload: &mut Vec<u8>,
    count: u64,
    link: &Link,
) -> Result<(), SourceError> {
    let mut next = 0u64;
    while next < count {
        match handshake_frame(stream, payload, link).await? {
            ServerFrame::Digests { first, digests }
                if first == next && next + digests.len() as u64 <= count =>
            {
                next += digests.len() as u64;
            }
            ServerFrame::Digests { .. } => return Err(SourceError::DigestOrder),
            other => return Err(expected("DIGESTS", &other)),
        }
    }
    Ok(())
}

/// Sends the job's requests and cancels until the job drops its side.
async fn send_commands<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut commands: mpsc::UnboundedReceiver<SourceCommand>,
) -> SourceError {
    let mut buf = Vec::with_capacity(16);
    while let Some(command) = commands.recv().await {
        buf.clear();
        match command {
            SourceCommand::Request(segment) => ClientFrame::Request { segment }.encode(&mut buf),
            SourceCommand::Cancel(segment) => ClientFrame::Cancel { segment }.encode(&mut buf),
        }
        if let Err(e) = writer.write_all(&buf).await {
            return SourceError::Send(e);
        }
    }
    SourceError::JobClosed
}

/// Reads SEGMENT and CANCELLED frames and reports them until the connection ends.
async fn receive<R: AsyncRead + Unpin>(
    mut reader: R,
    manifest: &Manifest,
    link: &Link,
) -> Result<(), SourceError> {
    let mut payload = Vec::new();
    loop {
        let conn = link.conn;
        let event = match read_server_frame(&mut reader, &mut payload).await? {
            ServerFrame::Segment(head) => {
                receive_segment(&mut reader, manifest, head, link).await?
            }
            ServerFrame::Cancelled { segment } => SourceEvent::Cancelled { conn, segment },
            ServerFrame::Error { code, message } => {
                return Err(SourceError::Server { code, message })
            }
            other => return Err(SourceError::Unexpected(format!("{other:?}"))),
        };
        link.report(event).await?;
    }
}

/// Reads one segment's bytes into a pooled buffer, hashing them as they arrive.
async fn receive_segment<R: AsyncRead + Unpin>(
    reader: &mut R,
    manifest: &Manifest,
    head: SegmentHead,
    link: &Link,
) -> Result<SourceEvent, SourceError> {
    check_segment_head(manifest, &head)?;
    // check_segment_head bounds the segment to the manifest: in range, and exactly its
    // length, so the hasher is never fed past its subtree.
    let mut hasher = manifest
        .segment_hasher(head.segment)
        .ok_or(SourceError::Segment(
            arsnet_proto::wire::SegmentHeadError::OutOfRange {
                segment: head.segment,
                count: manifest.segment_count(),
            },
        ))?;
    let mut data = link.buffers.take(head.length as usize);
    for chunk in data.chunks_mut(READ_CHUNK) {
        // Every read is progress as it arrives, not each whole chunk: a slow server's bytes
        // (a chunk takes 3 s at 40 KB/s) would otherwise look like silence to the
        // scheduler, and like bursts to the rate meter.
        let mut filled = 0;
        while filled < chunk.len() {
            let n = reader
                .read(&mut chunk[filled..])
                .await
                .map_err(SourceError::Receive)?;
            if n == 0 {
                return Err(SourceError::Receive(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            link.progressed(n);
            filled += n;
        }
        hasher.update(chunk);
    }
    let verified = manifest.check_segment(head.segment, &hasher);
    Ok(SourceEvent::Segment {
        conn: link.conn,
        segment: head.segment,
        data,
        verified,
    })
}

#[cfg(test)]
mod tests {
    //! The ArsNet source against a scripted server over an in-memory duplex stream: no
    //! sockets, no daemon, and the server says exactly what each test needs.

    use super::*;
    use crate::download::buffers::BufferPool;
    use crate::download::identity::Manifests;
    use crate::download::source::Counters;
    use crate::wire_io::{read_client_frame, FrameReadError};
    use arsnet_proto::manifest::digest_all;
    use arsnet_proto::wire::{encode_manifest, ErrorCode, SegmentHeadError, WireError};
    use arsnet_sched::ConnId;
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    const SEG: u32 = 4096;

    fn content(seed: u8) -> Vec<u8> {
        (0..5 * SEG as usize + 7)
            .map(|i| (i as u8) ^ seed)
            .collect()
    }

    fn manifest_of(data: &[u8]) -> Manifest {
        Manifest::new(
            "f.bin".into(),
            data.len() as u64,
            SEG,
            digest_all(data, SEG),
        )
        .unwrap()
    }

    fn link(manifests: Manifests) -> (Link, mpsc::Receiver<SourceEvent>) {
        let (events, rx) = mpsc::channel(16);
        let link = Link {
            conn: ConnId(7),
            events,
            counters: Arc::new(Counters::default()),
            manifests,
            buffers: BufferPool::new(4),
            accepted: tokio::sync::watch::channel(None).1,
        };
        (link, rx)
    }

    /// The server's end of the stream, split for scripting.
    struct Server {
        rx: ReadHalf<DuplexStream>,
        tx: WriteHalf<DuplexStream>,
        payload: Vec<u8>,
    }

    impl Server {
        async fn expect(&mut self) -> ClientFrame {
            read_client_frame(&mut self.rx, &mut self.payload)
                .await
                .unwrap()
        }

        async fn send(&mut self, frame: ServerFrame) {
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            self.tx.write_all(&buf).await.unwrap();
        }

        async fn send_segment(&mut self, m: &Manifest, data: &[u8], segment: u64) {
            let (offset, length) = m.segment_range(segment);
            self.send(ServerFrame::Segment(SegmentHead {
                segment,
                offset,
                length,
            }))
            .await;
            let bytes = &data[offset as usize..(offset + u64::from(length)) as usize];
            self.tx.write_all(bytes).await.unwrap();
        }

        /// Answers the HELLO with `manifest`'s HEADER and DIGESTS.
        async fn greet(&mut self, manifest: &Manifest) {
            assert_eq!(
                self.expect().await,
                ClientFrame::Hello {
                    version: WIRE_VERSION
                }
            );
            let mut preamble = Vec::new();
            encode_manifest(manifest, &mut preamble);
            self.tx.write_all(&preamble).await.unwrap();
        }
    }

    fn pair() -> (ArsNetServer<DuplexStream>, Server) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (rx, tx) = tokio::io::split(server);
        let server = Server {
            rx,
            tx,
            payload: Vec::new(),
        };
        (ArsNetServer::over(client), server)
    }

    async fn handshake_with(
        manifests: Manifests,
        script: impl FnOnce(Server) -> Pin<Box<dyn Future<Output = Server> + Send>>,
    ) -> (Result<Claim, SourceError>, Link, Server) {
        let (mut source, server) = pair();
        let (link, _events) = link(manifests);
        let server = tokio::spawn(script(server));
        let claim = source.handshake(&link).await;
        (claim, link, server.await.unwrap())
    }

    #[tokio::test]
    async fn handshake_assembles_the_manifest_and_counts_its_bytes_as_progress() {
        let data = content(1);
        let m = manifest_of(&data);
        let m2 = m.clone();
        let (claim, link, _server) = handshake_with(Manifests::default(), |mut s| {
            Box::pin(async move {
                s.greet(&m2).await;
                s
            })
        })
        .await;
        let claim = claim.unwrap();
        assert_eq!(claim.manifest().map(|m| &**m), Some(&m));
        assert_eq!(
            claim.layout(),
            Some(crate::download::identity::layout_of(&m))
        );
        let mut preamble = Vec::new();
        encode_manifest(&m, &mut preamble);
        assert_eq!(
            link.counters
                .handshake
                .load(std::sync::atomic::Ordering::Relaxed),
            preamble.len() as u64,
            "every handshake byte is reported as progress"
        );
        assert_eq!(
            link.counters
                .payload
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[tokio::test]
    async fn sources_of_one_content_share_one_digest_table() {
        let (same, other) = (manifest_of(&content(1)), manifest_of(&content(2)));
        let manifests = Manifests::default();
        let mut got = Vec::new();
        for m in [&same, &same, &same, &other] {
            let m = m.clone();
            let (claim, _, _) = handshake_with(manifests.clone(), |mut s| {
                Box::pin(async move {
                    s.greet(&m).await;
                    s
                })
            })
            .await;
            got.push(claim.unwrap().manifest().unwrap().clone());
        }
        assert!(Arc::ptr_eq(&got[0], &got[1]) && Arc::ptr_eq(&got[1], &got[2]));
        assert_eq!(*got[3], other);
        assert_eq!(manifests.len(), 2, "one table per content");
    }

    /// Sends HELLO's answer: the HEADER only, no DIGESTS (a server that holds its turn).
    async fn header_only(s: &mut Server, m: &Manifest) {
        assert!(matches!(s.expect().await, ClientFrame::Hello { .. }));
        let mut header = Vec::new();
        ServerFrame::Header(arsnet_proto::wire::Header {
            name: m.name.clone(),
            size: m.size,
            segment_size: m.segment_size,
            segment_count: m.segment_count(),
            root: m.root,
        })
        .encode(&mut header);
        s.tx.write_all(&header).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_holding_its_table_back_never_blocks_other_content_and_waiters_stay_alive() {
        let (held, other) = (manifest_of(&content(4)), manifest_of(&content(5)));
        let manifests = Manifests::default();
        // Source A announces `held` and then sends no digest at all: it holds that
        // content's turn until the minimum digest rate runs out.
        let (mut a, mut a_server) = pair();
        let (a_link, _a_events) = link(manifests.clone());
        let h = held.clone();
        tokio::spawn(async move {
            header_only(&mut a_server, &h).await;
            std::future::pending::<()>().await
        });
        let a_task = tokio::spawn(async move { a.handshake(&a_link).await });
        tokio::task::yield_now().await;
        // Source B, other content: done at once, not queued behind A.
        let started = tokio::time::Instant::now();
        let (claim, _, _) = handshake_with(manifests.clone(), move |mut s| {
            Box::pin(async move {
                s.greet(&other).await;
                s
            })
        })
        .await;
        assert!(claim.is_ok(), "{claim:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B waited for A's turn"
        );
        // Source C, same content as A: it waits for A's turn, and says so (it sent its
        // header: its silence meanwhile is no handshake timeout).
        let (mut c, mut c_server) = pair();
        let (c_link, mut c_events) = link(manifests.clone());
        let h = held.clone();
        tokio::spawn(async move {
            c_server.greet(&h).await;
            std::future::pending::<()>().await
        });
        let c_task = tokio::spawn(async move { c.handshake(&c_link).await });
        let waits = c_events.recv().await;
        assert!(
            matches!(waits, Some(SourceEvent::TableWait { waiting: true, .. })),
            "{waits:?}"
        );
        // A is cut off once its table is overdue; C then takes the turn, says so, and
        // completes.
        let a_result = a_task.await.unwrap();
        assert!(
            matches!(a_result, Err(SourceError::DigestsTooSlow(_))),
            "{a_result:?}"
        );
        let c_claim = c_task.await.unwrap().unwrap();
        assert_eq!(c_claim.manifest().map(|m| &**m), Some(&held));
        let resumed = c_events.try_recv();
        assert!(
            matches!(resumed, Ok(SourceEvent::TableWait { waiting: false, .. })),
            "{resumed:?}"
        );
    }

    #[tokio::test]
    async fn a_server_whose_digests_do_not_prove_its_root_is_refused() {
        let mut lying = manifest_of(&content(3));
        lying.digests[2][0] ^= 1;
        let (claim, _, _) = handshake_with(Manifests::default(), |mut s| {
            Box::pin(async move {
                s.greet(&lying).await;
                s
            })
        })
        .await;
        let err = claim.unwrap_err();
        assert!(matches!(err, SourceError::Manifest(_)), "{err:?}");
        assert!(err.to_string().starts_with("bad manifest: "), "{err}");
    }

    #[tokio::test]
    async fn digests_out_of_order_are_a_violation() {
        let m = manifest_of(&content(4));
        let (claim, _, _) = handshake_with(Manifests::default(), |mut s| {
            Box::pin(async move {
                s.expect().await;
                s.send(ServerFrame::Header(Header {
                    name: m.name.clone(),
                    size: m.size,
                    segment_size: m.segment_size,
                    segment_count: m.segment_count(),
                    root: m.root,
                }))
                .await;
                s.send(ServerFrame::Digests {
                    first: 1,
                    digests: m.digests[1..].to_vec(),
                })
                .await;
                s
            })
        })
        .await;
        let err = claim.unwrap_err();
        assert!(
            matches!(
                err,
                SourceError::Digests(WireError::DigestOrder {
                    expected: 0,
                    got: 1
                })
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_server_error_or_a_close_before_the_header_ends_the_handshake() {
        let (claim, _, _) = handshake_with(Manifests::default(), |mut s| {
            Box::pin(async move {
                s.expect().await;
                s.send(ServerFrame::Error {
                    code: ErrorCode::UnsupportedVersion,
                    message: "speak 9".into(),
                })
                .await;
                s
            })
        })
        .await;
        let err = claim.unwrap_err();
        assert!(
            matches!(err, SourceError::Server { code: ErrorCode::UnsupportedVersion, ref message } if message == "speak 9"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "server error: speak 9");

        let (mut source, server) = pair();
        drop(server);
        let (link, _events) = link(Manifests::default());
        let err = source.handshake(&link).await.unwrap_err();
        // The HELLO cannot even be sent, or the header never comes.
        assert!(
            matches!(
                err,
                SourceError::Send(_) | SourceError::HandshakeFrame(FrameReadError::Closed)
            ),
            "{err:?}"
        );
    }

    /// A connection past its handshake: the source runs `drive` in a task, the test plays
    /// the server and the job.
    struct Running {
        server: Server,
        commands: mpsc::UnboundedSender<SourceCommand>,
        events: mpsc::Receiver<SourceEvent>,
        counters: Arc<Counters>,
        done: tokio::task::JoinHandle<Result<(), SourceError>>,
        manifest: Manifest,
        data: Vec<u8>,
    }

    async fn running() -> Running {
        let data = content(5);
        let manifest = manifest_of(&data);
        let (source, mut server) = pair();
        let (link, mut events) = link(Manifests::default());
        let counters = link.counters.clone();
        let (commands, rx) = mpsc::unbounded_channel();
        let done =
            tokio::spawn(async move { crate::download::source::drive(source, rx, &link).await });
        server.greet(&manifest).await;
        match events.recv().await {
            Some(SourceEvent::Ready { conn, .. }) => assert_eq!(conn, ConnId(7)),
            other => panic!("expected Ready, got {other:?}"),
        }
        Running {
            server,
            commands,
            events,
            counters,
            done,
            manifest,
            data,
        }
    }

    #[tokio::test]
    async fn segments_stream_in_verified_and_a_corrupt_one_is_reported_unverified() {
        let mut r = running().await;
        r.commands.send(SourceCommand::Request(0)).unwrap();
        r.commands.send(SourceCommand::Request(5)).unwrap();
        assert_eq!(r.server.expect().await, ClientFrame::Request { segment: 0 });
        assert_eq!(r.server.expect().await, ClientFrame::Request { segment: 5 });
        r.server.send_segment(&r.manifest, &r.data, 0).await;
        let mut corrupt = r.data.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        r.server.send_segment(&r.manifest, &corrupt, 5).await;
        match r.events.recv().await {
            Some(SourceEvent::Segment {
                segment: 0,
                data,
                verified: true,
                ..
            }) => assert_eq!(data, r.data[..SEG as usize]),
            other => panic!("{other:?}"),
        }
        match r.events.recv().await {
            Some(SourceEvent::Segment {
                segment: 5,
                data,
                verified: false,
                ..
            }) => assert_eq!(data.len(), 7, "the last, short segment"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.counters
                .payload
                .load(std::sync::atomic::Ordering::Relaxed),
            u64::from(SEG) + 7
        );
    }

    #[tokio::test]
    async fn a_cancel_is_sent_and_its_answer_reported() {
        let mut r = running().await;
        r.commands.send(SourceCommand::Request(3)).unwrap();
        r.commands.send(SourceCommand::Cancel(3)).unwrap();
        assert_eq!(r.server.expect().await, ClientFrame::Request { segment: 3 });
        assert_eq!(r.server.expect().await, ClientFrame::Cancel { segment: 3 });
        r.server.send(ServerFrame::Cancelled { segment: 3 }).await;
        assert!(matches!(
            r.events.recv().await,
            Some(SourceEvent::Cancelled { segment: 3, .. })
        ));
    }

    #[tokio::test]
    async fn a_misplaced_segment_head_is_a_protocol_violation() {
        let mut r = running().await;
        r.server
            .send(ServerFrame::Segment(SegmentHead {
                segment: 1,
                offset: 0,
                length: SEG,
            }))
            .await;
        let err = r.done.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                SourceError::Segment(SegmentHeadError::Misplaced { segment: 1, .. })
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("protocol violation: segment 1 announced at offset 0"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_header_after_the_handshake_is_a_protocol_violation() {
        let mut r = running().await;
        let m = r.manifest.clone();
        r.server.greet_again(&m).await;
        let err = r.done.await.unwrap().unwrap_err();
        assert!(matches!(err, SourceError::Unexpected(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("protocol violation: unexpected Header"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_server_closing_mid_segment_is_a_receive_failure() {
        let mut r = running().await;
        let (offset, length) = r.manifest.segment_range(2);
        r.server
            .send(ServerFrame::Segment(SegmentHead {
                segment: 2,
                offset,
                length,
            }))
            .await;
        r.server.tx.write_all(&r.data[..100]).await.unwrap();
        drop(r.server);
        let err = r.done.await.unwrap().unwrap_err();
        assert!(matches!(err, SourceError::Receive(_)), "{err:?}");
    }

    impl Server {
        /// Sends a HEADER where none is allowed.
        async fn greet_again(&mut self, m: &Manifest) {
            self.send(ServerFrame::Header(Header {
                name: m.name.clone(),
                size: m.size,
                segment_size: m.segment_size,
                segment_count: m.segment_count(),
                root: m.root,
            }))
            .await;
        }
    }
}
