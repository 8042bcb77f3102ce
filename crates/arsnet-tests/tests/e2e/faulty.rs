//! A faulty-server kit: a minimal, deliberately misbehaving implementation of the server side
//! of wire protocol v2 (blocking std sockets, one thread per connection), for testing that
//! the client blames bad servers and refuses hostile headers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use arsnet_proto::manifest::{compute_root, digest_all, segment_count, segment_range};
use arsnet_proto::wire::{
    decode_client, parse_frame_head, ClientFrame, Header, SegmentHead, ServerFrame,
};

#[derive(Debug, Clone)]
pub enum Fault {
    /// Flips a byte in every copy of this segment it sends (digests stay honest).
    CorruptSegment(u64),
    /// Flips a byte in every segment it sends.
    CorruptAll,
    /// Announces this file name instead of the real one.
    Name(String),
    /// Honest, but waits this long before sending its header.
    LateHeader(Duration),
    /// Honest, but waits this long before sending each segment.
    Slow(Duration),
    /// Sends half of the first segment asked for, then nothing, keeping the connection open.
    Stall,
    /// Announces a file of this many bytes (16 MiB segments, made-up digests) and never
    /// sends a byte of it.
    AnnounceSize(u64),
}

pub struct FaultyServer {
    pub port: u16,
}

struct Served {
    data: Vec<u8>,
    name: String,
    segment_size: u32,
    fault: Fault,
}

impl FaultyServer {
    pub fn start(data: Vec<u8>, name: &str, segment_size: u32, fault: Fault) -> FaultyServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(Served {
            data,
            name: name.to_string(),
            segment_size,
            fault,
        });
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let served = served.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &served);
                });
            }
        });
        FaultyServer { port }
    }
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<ClientFrame> {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head)?;
    let head = parse_frame_head(head).map_err(std::io::Error::other)?;
    let mut payload = vec![0u8; head.len as usize];
    stream.read_exact(&mut payload)?;
    decode_client(head, &payload).map_err(std::io::Error::other)
}

fn serve(mut stream: TcpStream, s: &Served) -> std::io::Result<()> {
    let _hello = read_frame(&mut stream)?;
    let (size, segment_size, digests) = match s.fault {
        Fault::AnnounceSize(size) => {
            let segment_size = 16 << 20;
            let count = segment_count(size, segment_size);
            let digests = (0..count)
                .map(|i| *blake3::hash(&i.to_be_bytes()).as_bytes())
                .collect();
            (size, segment_size, digests)
        }
        _ => (
            s.data.len() as u64,
            s.segment_size,
            digest_all(&s.data, s.segment_size),
        ),
    };
    let name = match &s.fault {
        Fault::Name(name) => name.clone(),
        _ => s.name.clone(),
    };
    let mut out = Vec::new();
    ServerFrame::Header(Header {
        name,
        size,
        segment_size,
        segment_count: segment_count(size, segment_size),
        root: compute_root(size, segment_size, &digests),
    })
    .encode(&mut out);
    for (i, chunk) in digests.chunks(4096).enumerate() {
        ServerFrame::Digests {
            first: (i * 4096) as u64,
            digests: chunk.to_vec(),
        }
        .encode(&mut out);
    }
    if let Fault::LateHeader(delay) = s.fault {
        std::thread::sleep(delay);
    }
    stream.write_all(&out)?;
    loop {
        let ClientFrame::Request { segment } = read_frame(&mut stream)? else {
            continue;
        };
        let (offset, length) = segment_range(size, s.segment_size, segment);
        let mut body = s.data[offset as usize..(offset + u64::from(length)) as usize].to_vec();
        match s.fault {
            Fault::CorruptSegment(bad) if bad == segment => body[0] ^= 0xff,
            Fault::CorruptAll => body[0] ^= 0xff,
            Fault::Slow(delay) => std::thread::sleep(delay),
            _ => {}
        }
        let mut frame = Vec::new();
        ServerFrame::Segment(SegmentHead {
            segment,
            offset,
            length,
        })
        .encode(&mut frame);
        stream.write_all(&frame)?;
        if let Fault::Stall = s.fault {
            stream.write_all(&body[..body.len() / 2])?;
            // Hold the connection open, silent, until the client gives up on it.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink)? > 0 {}
            return Ok(());
        }
        stream.write_all(&body)?;
    }
}
