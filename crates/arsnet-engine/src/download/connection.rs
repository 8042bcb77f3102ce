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
use arsnet_proto::{Digest, Manifest};
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

/// The manifests a job's connections have assembled, by download identity: a connection
/// whose server announces a download already known skips its DIGESTS frames (checking only
/// their order and count) and shares the one table, so a job holds one digest table per
/// content however many servers serve it. Only one connection assembles at a time
/// (`assembling`), so two servers of the same content never build two copies either.
#[derive(Clone, Default)]
pub(crate) struct Manifests {
    known: Arc<std::sync::Mutex<std::collections::HashMap<Digest, Arc<Manifest>>>>,
    assembling: Arc<tokio::sync::Mutex<()>>,
}

impl Manifests {
    fn get(&self, identity: &Digest) -> Option<Arc<Manifest>> {
        self.known
            .lock()
            .ok()
            .and_then(|m| m.get(identity).cloned())
    }

    /// Records a manifest (the job's adopted one, or one a connection assembled).
    pub fn insert(&self, manifest: Arc<Manifest>) -> Arc<Manifest> {
        match self.known.lock() {
            Ok(mut known) => known.entry(manifest.identity()).or_insert(manifest).clone(),
            Err(_) => manifest,
        }
    }
}

/// What a connection needs from its job besides its address.
#[derive(Clone)]
pub(crate) struct ConnContext {
    pub connect_timeout: Duration,
    pub events: mpsc::Sender<ConnEvent>,
    pub manifests: Manifests,
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
    manifests: &Manifests,
) -> Result<(TcpStream, Arc<Manifest>), String> {
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
    let header = match read_frame_within(&mut stream, &mut payload, connect_timeout).await? {
        ServerFrame::Header(header) => header,
        ServerFrame::Error { message, .. } => return Err(format!("server error: {message}")),
        other => {
            return Err(format!(
                "protocol violation: expected HEADER, got {other:?}"
            ))
        }
    };
    let identity = header.identity();
    if let Some(known) = manifests.get(&identity) {
        skip_digests(
            &mut stream,
            &mut payload,
            header.segment_count,
            connect_timeout,
        )
        .await?;
        return Ok((stream, known));
    }
    // One assembly at a time per job; whoever waited may find the table made meanwhile.
    let _turn = manifests.assembling.lock().await;
    if let Some(known) = manifests.get(&identity) {
        skip_digests(
            &mut stream,
            &mut payload,
            header.segment_count,
            connect_timeout,
        )
        .await?;
        return Ok((stream, known));
    }
    let mut assembler = ManifestAssembler::new(header);
    while !assembler.is_complete() {
        match read_frame_within(&mut stream, &mut payload, connect_timeout).await? {
            ServerFrame::Digests { first, digests } => {
                assembler
                    .push(first, digests)
                    .map_err(|e| format!("bad digests: {e}"))?;
            }
            other => {
                return Err(format!(
                    "protocol violation: expected DIGESTS, got {other:?}"
                ))
            }
        }
    }
    let manifest = assembler
        .finish()
        .map_err(|e| format!("bad manifest: {e}"))?;
    Ok((stream, manifests.insert(Arc::new(manifest))))
}

/// Reads one server frame, giving up after `limit` of silence. Each frame gets its own
/// limit, not the whole exchange: the digest table of a huge file may take a while on a slow
/// link, and steady progress is not a hang.
async fn read_frame_within(
    stream: &mut TcpStream,
    payload: &mut Vec<u8>,
    limit: Duration,
) -> Result<ServerFrame, String> {
    tokio::time::timeout(limit, read_server_frame(stream, payload))
        .await
        .map_err(|_| format!("server sent nothing for {}s", limit.as_secs()))?
        .map_err(|e| format!("bad handshake frame: {e}"))
}

/// Reads the DIGESTS frames of a download whose table the job already holds, checking their
/// order and count but keeping nothing.
async fn skip_digests(
    stream: &mut TcpStream,
    payload: &mut Vec<u8>,
    count: u64,
    limit: Duration,
) -> Result<(), String> {
    let mut next = 0u64;
    while next < count {
        match read_frame_within(stream, payload, limit).await? {
            ServerFrame::Digests { first, digests }
                if first == next && next + digests.len() as u64 <= count =>
            {
                next += digests.len() as u64;
            }
            ServerFrame::Digests { .. } => {
                return Err("bad digests: out of order or too many".to_string())
            }
            other => {
                return Err(format!(
                    "protocol violation: expected DIGESTS, got {other:?}"
                ))
            }
        }
    }
    Ok(())
}

async fn run(
    conn: ConnId,
    address: &str,
    ctx: &ConnContext,
    mut commands: mpsc::UnboundedReceiver<ConnCommand>,
    received: &AtomicU64,
) -> Result<(), String> {
    let events = &ctx.events;
    let (stream, manifest) = handshake(address, ctx.connect_timeout, &ctx.manifests).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use arsnet_proto::manifest::digest_all;
    use tokio::io::AsyncReadExt;

    /// A server on loopback that sends `manifest`'s HEADER and DIGESTS to each connection
    /// after its HELLO, then holds the connection open.
    async fn preamble_server(manifest: &Manifest) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut preamble = Vec::new();
        arsnet_proto::wire::encode_manifest(manifest, &mut preamble);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let preamble = preamble.clone();
                tokio::spawn(async move {
                    let mut hello = [0u8; 13];
                    if stream.read_exact(&mut hello).await.is_ok() {
                        let _ = stream.write_all(&preamble).await;
                        let mut sink = [0u8; 64];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                });
            }
        });
        address
    }

    fn manifest_of(seed: u8) -> Manifest {
        let data: Vec<u8> = (0..5 * 4096 + 7).map(|i| (i as u8) ^ seed).collect();
        Manifest::new(
            "f.bin".into(),
            data.len() as u64,
            4096,
            digest_all(&data, 4096),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn servers_of_one_content_share_one_digest_table() {
        let same = manifest_of(1);
        let other = manifest_of(2);
        let mut addresses = Vec::new();
        for _ in 0..3 {
            addresses.push(preamble_server(&same).await);
        }
        addresses.push(preamble_server(&other).await);
        let manifests = Manifests::default();
        let timeout = Duration::from_secs(5);
        let mut got = Vec::new();
        for address in &addresses {
            let (_stream, manifest) = handshake(address, timeout, &manifests).await.unwrap();
            got.push(manifest);
        }
        assert!(Arc::ptr_eq(&got[0], &got[1]) && Arc::ptr_eq(&got[1], &got[2]));
        assert_eq!(*got[0], same);
        assert_eq!(*got[3], other);
        assert_eq!(
            manifests.known.lock().unwrap().len(),
            2,
            "one table per content"
        );
        // A table the job already held (e.g. adopted from the journal) is used as is.
        let adopted = Manifests::default();
        let held = adopted.insert(Arc::new(same.clone()));
        let (_stream, manifest) = handshake(&addresses[0], timeout, &adopted).await.unwrap();
        assert!(Arc::ptr_eq(&held, &manifest));
    }

    #[tokio::test]
    async fn a_server_whose_digests_do_not_prove_its_root_is_refused() {
        let mut lying = manifest_of(3);
        lying.digests[2][0] ^= 1;
        let address = preamble_server(&lying).await;
        let err = handshake(&address, Duration::from_secs(5), &Manifests::default())
            .await
            .err()
            .unwrap();
        assert!(err.contains("bad manifest"), "{err}");
    }
}
