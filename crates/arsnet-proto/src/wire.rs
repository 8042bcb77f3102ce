//! Wire protocol v1 between a downloading client and a virtual server.
//!
//! Every frame is a 5-byte frame header (`type: u8`, `len: u32` big-endian) followed by `len`
//! payload bytes. A SEGMENT frame's payload is a 20-byte segment header; the segment's raw
//! bytes follow it outside the frame (so a server can stream them straight from the file).
//! `len` is checked against a per-type bound before a single payload byte is read, so a
//! hostile peer cannot make the reader allocate. See PROTOCOL.md for the byte layout.

use crate::limits::{
    MAX_DIGESTS_PER_FRAME, MAX_ERROR_MESSAGE, MAX_NAME_LEN, MAX_SEGMENT_SIZE, WIRE_MAGIC,
    WIRE_VERSION,
};
use crate::manifest::{check_layout, Digest, Manifest, ManifestError};
use crate::name::{validate_file_name, NameError};

/// Length of the frame header that precedes every payload.
pub const FRAME_HEADER_LEN: usize = 5;
/// Length of a SEGMENT frame's payload (segment u64, offset u64, length u32).
pub const SEGMENT_HEAD_LEN: u32 = 20;
/// Fixed part of a HEADER payload (everything but the name).
const HEADER_FIXED_LEN: u32 = 4 + 2 + 2 + 8 + 4 + 8 + 32;

/// Frame types. Client → server types are below 0x80, server → client types above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Request = 0x02,
    Cancel = 0x03,
    Header = 0x81,
    Digests = 0x82,
    Segment = 0x83,
    Cancelled = 0x84,
    Error = 0x85,
}

impl FrameType {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0x01 => Self::Hello,
            0x02 => Self::Request,
            0x03 => Self::Cancel,
            0x81 => Self::Header,
            0x82 => Self::Digests,
            0x83 => Self::Segment,
            0x84 => Self::Cancelled,
            0x85 => Self::Error,
            _ => return None,
        })
    }

    /// The inclusive range of payload lengths this frame type may carry.
    fn payload_bounds(self) -> (u32, u32) {
        match self {
            Self::Hello | Self::Request | Self::Cancel | Self::Cancelled => (8, 8),
            Self::Header => (HEADER_FIXED_LEN + 1, HEADER_FIXED_LEN + MAX_NAME_LEN as u32),
            Self::Digests => (12 + 32, 12 + 32 * MAX_DIGESTS_PER_FRAME),
            Self::Segment => (SEGMENT_HEAD_LEN, SEGMENT_HEAD_LEN),
            Self::Error => (4, 4 + MAX_ERROR_MESSAGE as u32),
        }
    }

    fn is_client(self) -> bool {
        (self as u8) < 0x80
    }
}

/// Codes carried by an ERROR frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    UnsupportedVersion,
    BadRequest,
    TooManyRequests,
    FileChanged,
    Internal,
    Unknown(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            Self::UnsupportedVersion => 1,
            Self::BadRequest => 2,
            Self::TooManyRequests => 3,
            Self::FileChanged => 4,
            Self::Internal => 5,
            Self::Unknown(code) => code,
        }
    }

    fn from_u16(code: u16) -> Self {
        match code {
            1 => Self::UnsupportedVersion,
            2 => Self::BadRequest,
            3 => Self::TooManyRequests,
            4 => Self::FileChanged,
            5 => Self::Internal,
            other => Self::Unknown(other),
        }
    }
}

/// Everything that can be wrong with bytes received on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    #[error("frame type {ty:?} sent in the wrong direction")]
    WrongDirection { ty: FrameType },
    #[error("frame {ty:?} has length {len}, allowed {min}..={max}")]
    BadLength {
        ty: FrameType,
        len: u32,
        min: u32,
        max: u32,
    },
    #[error("bad magic 0x{0:08x} (not an ArsNet peer)")]
    BadMagic(u32),
    #[error("peer speaks protocol version {0}, this build speaks {WIRE_VERSION}")]
    UnsupportedVersion(u16),
    #[error("server sent an unsafe file name: {0}")]
    BadName(#[from] NameError),
    #[error("server sent an invalid layout: {0}")]
    Layout(#[from] ManifestError),
    /// A table of zero digests is the mark of a layout with no identity
    /// (`Manifest::unproven`): accepting one from a server would switch verification off.
    #[error("server sent a digest table of zeros (no content identity)")]
    ZeroDigests,
    #[error("error message is not UTF-8")]
    BadUtf8,
    #[error("segment length {0} exceeds the maximum segment size")]
    SegmentTooLong(u32),
    #[error("unexpected frame {0:?} at this point of the exchange")]
    Unexpected(FrameType),
    #[error("digest frame starts at {got}, expected {expected}")]
    DigestOrder { expected: u64, got: u64 },
    #[error("digest frames carry more digests than the header announced")]
    TooManyDigests,
}

/// A parsed frame header: its type and a payload length already checked against the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub ty: FrameType,
    pub len: u32,
}

/// Parses and bounds-checks a frame header. Never panics, never trusts `len` beyond the
/// type's bound.
pub fn parse_frame_head(bytes: [u8; FRAME_HEADER_LEN]) -> Result<FrameHead, WireError> {
    let ty = FrameType::from_byte(bytes[0]).ok_or(WireError::UnknownFrameType(bytes[0]))?;
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let (min, max) = ty.payload_bounds();
    if !(min..=max).contains(&len) {
        return Err(WireError::BadLength { ty, len, min, max });
    }
    Ok(FrameHead { ty, len })
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Hello { version: u16 },
    Request { segment: u64 },
    Cancel { segment: u64 },
}

/// The fixed part of a server's HEADER frame. The digests follow in DIGESTS frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub size: u64,
    pub segment_size: u32,
    pub segment_count: u64,
    pub root: Digest,
}

impl Header {
    /// The identity of the download this header offers (see `Manifest::identity`).
    pub fn identity(&self) -> Digest {
        crate::manifest::identity_of(&self.name, self.size, self.segment_size, &self.root)
    }
}

/// The header of a SEGMENT frame; `length` raw bytes follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHead {
    pub segment: u64,
    pub offset: u64,
    pub length: u32,
}

/// Frames a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    Header(Header),
    Digests { first: u64, digests: Vec<Digest> },
    Segment(SegmentHead),
    Cancelled { segment: u64 },
    Error { code: ErrorCode, message: String },
}

/// A little cursor over a payload whose length was already checked, so reads cannot fail.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.bytes.len());
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        head
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let src = self.take(N);
        out[..src.len()].copy_from_slice(src);
        out
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }
}

fn check_len(head: FrameHead, payload: &[u8]) -> Result<(), WireError> {
    let (min, max) = head.ty.payload_bounds();
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    if len != head.len || !(min..=max).contains(&len) {
        return Err(WireError::BadLength {
            ty: head.ty,
            len,
            min,
            max,
        });
    }
    Ok(())
}

/// Decodes a client frame's payload.
pub fn decode_client(head: FrameHead, payload: &[u8]) -> Result<ClientFrame, WireError> {
    check_len(head, payload)?;
    if !head.ty.is_client() {
        return Err(WireError::WrongDirection { ty: head.ty });
    }
    let mut r = Reader { bytes: payload };
    Ok(match head.ty {
        FrameType::Hello => {
            let magic = r.u32();
            if magic != WIRE_MAGIC {
                return Err(WireError::BadMagic(magic));
            }
            let version = r.u16();
            let _reserved = r.u16();
            ClientFrame::Hello { version }
        }
        FrameType::Request => ClientFrame::Request { segment: r.u64() },
        _ => ClientFrame::Cancel { segment: r.u64() },
    })
}

/// Decodes a server frame's payload, validating names and layouts.
pub fn decode_server(head: FrameHead, payload: &[u8]) -> Result<ServerFrame, WireError> {
    check_len(head, payload)?;
    if head.ty.is_client() {
        return Err(WireError::WrongDirection { ty: head.ty });
    }
    let mut r = Reader { bytes: payload };
    match head.ty {
        FrameType::Header => decode_header(head, payload.len(), &mut r),
        FrameType::Digests => decode_digests(head, payload.len(), &mut r),
        FrameType::Segment => {
            let segment = r.u64();
            let offset = r.u64();
            let length = r.u32();
            if length > MAX_SEGMENT_SIZE {
                return Err(WireError::SegmentTooLong(length));
            }
            Ok(ServerFrame::Segment(SegmentHead {
                segment,
                offset,
                length,
            }))
        }
        FrameType::Cancelled => Ok(ServerFrame::Cancelled { segment: r.u64() }),
        _ => {
            let code = ErrorCode::from_u16(r.u16());
            let len = usize::from(r.u16());
            let message = std::str::from_utf8(r.take(len)).map_err(|_| WireError::BadUtf8)?;
            Ok(ServerFrame::Error {
                code,
                message: printable(message),
            })
        }
    }
}

/// A server's text as it may be shown: it ends up in logs, `status` and at the user's
/// terminal, where an escape sequence could retitle the window, clear the screen or forge a
/// "saved … verified" line. Control characters (C0, DEL, C1) become `\u{..}` escapes.
pub fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// HEADER: magic, version, then a name whose length must account for the whole payload.
fn decode_header(
    head: FrameHead,
    len: usize,
    r: &mut Reader<'_>,
) -> Result<ServerFrame, WireError> {
    let magic = r.u32();
    if magic != WIRE_MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = r.u16();
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let name_len = usize::from(r.u16());
    if len != HEADER_FIXED_LEN as usize + name_len {
        return Err(WireError::BadLength {
            ty: head.ty,
            len: head.len,
            min: HEADER_FIXED_LEN + name_len as u32,
            max: HEADER_FIXED_LEN + name_len as u32,
        });
    }
    let name = validate_file_name(r.take(name_len))?.to_owned();
    let size = r.u64();
    let segment_size = r.u32();
    let segment_count = r.u64();
    check_layout(size, segment_size, segment_count)?;
    let root = r.array();
    Ok(ServerFrame::Header(Header {
        name,
        size,
        segment_size,
        segment_count,
        root,
    }))
}

/// DIGESTS: the count must account for the whole payload (checked before any allocation).
fn decode_digests(
    head: FrameHead,
    len: usize,
    r: &mut Reader<'_>,
) -> Result<ServerFrame, WireError> {
    let first = r.u64();
    let count = r.u32();
    let expected = 12 + 32 * u64::from(count);
    if len as u64 != expected {
        let expected = u32::try_from(expected).unwrap_or(u32::MAX);
        return Err(WireError::BadLength {
            ty: head.ty,
            len: head.len,
            min: expected,
            max: expected,
        });
    }
    let digests = (0..count).map(|_| r.array()).collect();
    Ok(ServerFrame::Digests { first, digests })
}

fn put_head(out: &mut Vec<u8>, ty: FrameType, len: usize) {
    out.push(ty as u8);
    // Every encoder below produces payloads far below u32::MAX.
    out.extend_from_slice(&(len as u32).to_be_bytes());
}

impl ClientFrame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            ClientFrame::Hello { version } => {
                put_head(out, FrameType::Hello, 8);
                out.extend_from_slice(&WIRE_MAGIC.to_be_bytes());
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&0u16.to_be_bytes());
            }
            ClientFrame::Request { segment } => {
                put_head(out, FrameType::Request, 8);
                out.extend_from_slice(&segment.to_be_bytes());
            }
            ClientFrame::Cancel { segment } => {
                put_head(out, FrameType::Cancel, 8);
                out.extend_from_slice(&segment.to_be_bytes());
            }
        }
    }
}

impl ServerFrame {
    /// Appends the encoded frame to `out`. For `Segment`, only the 20-byte head is written;
    /// the caller sends the raw bytes after it. Over-long names, digest lists and messages
    /// are the caller's bug; they are truncated to the limits rather than sent invalid.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ServerFrame::Header(h) => {
                let name = &h.name.as_bytes()[..h.name.len().min(MAX_NAME_LEN)];
                put_head(
                    out,
                    FrameType::Header,
                    HEADER_FIXED_LEN as usize + name.len(),
                );
                out.extend_from_slice(&WIRE_MAGIC.to_be_bytes());
                out.extend_from_slice(&WIRE_VERSION.to_be_bytes());
                out.extend_from_slice(&(name.len() as u16).to_be_bytes());
                out.extend_from_slice(name);
                out.extend_from_slice(&h.size.to_be_bytes());
                out.extend_from_slice(&h.segment_size.to_be_bytes());
                out.extend_from_slice(&h.segment_count.to_be_bytes());
                out.extend_from_slice(&h.root);
            }
            ServerFrame::Digests { first, digests } => {
                let digests = &digests[..digests.len().min(MAX_DIGESTS_PER_FRAME as usize)];
                put_head(out, FrameType::Digests, 12 + 32 * digests.len());
                out.extend_from_slice(&first.to_be_bytes());
                out.extend_from_slice(&(digests.len() as u32).to_be_bytes());
                for digest in digests {
                    out.extend_from_slice(digest);
                }
            }
            ServerFrame::Segment(s) => {
                put_head(out, FrameType::Segment, SEGMENT_HEAD_LEN as usize);
                out.extend_from_slice(&s.segment.to_be_bytes());
                out.extend_from_slice(&s.offset.to_be_bytes());
                out.extend_from_slice(&s.length.to_be_bytes());
            }
            ServerFrame::Cancelled { segment } => {
                put_head(out, FrameType::Cancelled, 8);
                out.extend_from_slice(&segment.to_be_bytes());
            }
            ServerFrame::Error { code, message } => {
                let mut end = message.len().min(MAX_ERROR_MESSAGE);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                let text = &message.as_bytes()[..end];
                put_head(out, FrameType::Error, 4 + text.len());
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                out.extend_from_slice(&(text.len() as u16).to_be_bytes());
                out.extend_from_slice(text);
            }
        }
    }
}

/// Encodes a manifest as the HEADER frame followed by its DIGESTS frames.
pub fn encode_manifest(manifest: &Manifest, out: &mut Vec<u8>) {
    ServerFrame::Header(Header {
        name: manifest.name.clone(),
        size: manifest.size,
        segment_size: manifest.segment_size,
        segment_count: manifest.segment_count(),
        root: manifest.root,
    })
    .encode(out);
    for (i, chunk) in manifest
        .digests
        .chunks(MAX_DIGESTS_PER_FRAME as usize)
        .enumerate()
    {
        let first = (i * MAX_DIGESTS_PER_FRAME as usize) as u64;
        ServerFrame::Digests {
            first,
            digests: chunk.to_vec(),
        }
        .encode(out);
    }
}

/// Rebuilds a manifest from a HEADER frame and the DIGESTS frames that follow it, checking
/// their order and count, and finally the root.
#[derive(Debug)]
pub struct ManifestAssembler {
    header: Header,
    digests: Vec<Digest>,
}

impl ManifestAssembler {
    pub fn new(header: Header) -> Self {
        ManifestAssembler {
            header,
            digests: Vec::new(),
        }
    }

    /// Adds one DIGESTS frame. Returns true once every digest has arrived.
    pub fn push(&mut self, first: u64, digests: Vec<Digest>) -> Result<bool, WireError> {
        let expected = self.digests.len() as u64;
        if first != expected {
            return Err(WireError::DigestOrder {
                expected,
                got: first,
            });
        }
        if expected + digests.len() as u64 > self.header.segment_count {
            return Err(WireError::TooManyDigests);
        }
        self.digests.extend(digests);
        Ok(self.is_complete())
    }

    pub fn is_complete(&self) -> bool {
        self.digests.len() as u64 == self.header.segment_count
    }

    /// The validated manifest (root checked against the digests).
    pub fn finish(self) -> Result<Manifest, WireError> {
        let manifest = Manifest {
            name: self.header.name,
            size: self.header.size,
            segment_size: self.header.segment_size,
            digests: self.digests,
            root: self.header.root,
        };
        manifest.validate()?;
        if manifest.is_unproven() {
            return Err(WireError::ZeroDigests);
        }
        Ok(manifest)
    }
}

/// Why a SEGMENT head does not fit the manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentHeadError {
    #[error("segment {segment} out of range (file has {count})")]
    OutOfRange { segment: u64, count: u64 },
    #[error(
        "segment {segment} announced at offset {offset} length {length}, expected offset \
         {expected_offset} length {expected_length}"
    )]
    Misplaced {
        segment: u64,
        offset: u64,
        length: u32,
        expected_offset: u64,
        expected_length: u32,
    },
}

/// Checks a SEGMENT head against the manifest: index in range, offset and length exact.
pub fn check_segment_head(manifest: &Manifest, head: &SegmentHead) -> Result<(), SegmentHeadError> {
    if head.segment >= manifest.segment_count() {
        return Err(SegmentHeadError::OutOfRange {
            segment: head.segment,
            count: manifest.segment_count(),
        });
    }
    let (offset, length) = manifest.segment_range(head.segment);
    if head.offset != offset || head.length != length {
        return Err(SegmentHeadError::Misplaced {
            segment: head.segment,
            offset: head.offset,
            length: head.length,
            expected_offset: offset,
            expected_length: length,
        });
    }
    Ok(())
}

#[cfg(test)]
mod printable_tests {
    use super::printable;

    #[test]
    fn control_characters_are_shown_escaped() {
        let hostile = "\u{1b}]0;PWNED\u{7}\u{1b}[2Jsaved /etc/passwd\r\n\u{9b}31m ok é";
        let shown = printable(hostile);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("\\u{1b}]0;PWNED"), "{shown}");
        assert!(shown.ends_with(" ok é"));
        assert_eq!(printable("plain text"), "plain text");
    }

    #[test]
    fn a_servers_error_text_is_decoded_printable() {
        use super::*;
        let mut buf = Vec::new();
        ServerFrame::Error {
            code: ErrorCode::Internal,
            message: "\u{1b}[2Jsaved /etc/passwd, verified\u{7}".into(),
        }
        .encode(&mut buf);
        let head = parse_frame_head(buf[..5].try_into().unwrap()).unwrap();
        match decode_server(head, &buf[5..]).unwrap() {
            ServerFrame::Error { message, .. } => {
                assert!(!message.chars().any(char::is_control), "{message:?}");
                assert!(message.contains("saved /etc/passwd"));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::digest_segment;
    use proptest::prelude::*;

    fn split(bytes: &[u8]) -> (FrameHead, &[u8]) {
        let head = parse_frame_head(bytes[..5].try_into().unwrap()).unwrap();
        (head, &bytes[5..])
    }

    #[test]
    fn client_frames_round_trip() {
        for frame in [
            ClientFrame::Hello { version: 1 },
            ClientFrame::Request { segment: 42 },
            ClientFrame::Cancel { segment: u64::MAX },
        ] {
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            let (head, payload) = split(&buf);
            assert_eq!(decode_client(head, payload).unwrap(), frame);
        }
    }

    #[test]
    fn manifest_round_trip_in_chunks() {
        let data = vec![7u8; 4096 * 5000 + 3];
        let size = data.len() as u64;
        let digests: Vec<_> = data
            .chunks(4096)
            .enumerate()
            .map(|(i, c)| digest_segment(size, 4096, i as u64, c))
            .collect();
        let manifest = Manifest::new("big.img".into(), data.len() as u64, 4096, digests).unwrap();
        let mut buf = Vec::new();
        encode_manifest(&manifest, &mut buf);
        let mut rest = &buf[..];
        let mut assembler = None;
        let mut frames = 0;
        while !rest.is_empty() {
            let (head, after) = split(rest);
            let (payload, tail) = after.split_at(head.len as usize);
            rest = tail;
            frames += 1;
            match decode_server(head, payload).unwrap() {
                ServerFrame::Header(h) => assembler = Some(ManifestAssembler::new(h)),
                ServerFrame::Digests { first, digests } => {
                    assembler.as_mut().unwrap().push(first, digests).unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(frames, 3, "header + two digest frames");
        assert_eq!(assembler.unwrap().finish().unwrap(), manifest);
    }

    #[test]
    fn hostile_header_name_is_refused() {
        let header = Header {
            name: "../x".into(),
            size: 1,
            segment_size: 4096,
            segment_count: 1,
            root: [0; 32],
        };
        let mut buf = Vec::new();
        ServerFrame::Header(header).encode(&mut buf);
        let (head, payload) = split(&buf);
        assert!(matches!(
            decode_server(head, payload),
            Err(WireError::BadName(_))
        ));
    }

    #[test]
    fn oversized_lengths_are_refused_before_reading() {
        let mut bytes = [FrameType::Digests as u8, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            parse_frame_head(bytes),
            Err(WireError::BadLength { .. })
        ));
        bytes[0] = 0x7f;
        assert_eq!(
            parse_frame_head(bytes),
            Err(WireError::UnknownFrameType(0x7f))
        );
        let segment = [FrameType::Segment as u8, 0, 0, 0, 21];
        assert!(parse_frame_head(segment).is_err());
    }

    #[test]
    fn digests_out_of_order_or_extra_are_refused() {
        let header = Header {
            name: "f".into(),
            size: 4096,
            segment_size: 4096,
            segment_count: 1,
            // A one-segment file's root is its only digest: make them differ.
            root: [1; 32],
        };
        let mut a = ManifestAssembler::new(header);
        assert!(matches!(
            a.push(1, vec![[0; 32]]),
            Err(WireError::DigestOrder { .. })
        ));
        assert!(matches!(
            a.push(0, vec![[0; 32]; 2]),
            Err(WireError::TooManyDigests)
        ));
        assert_eq!(a.push(0, vec![[0; 32]]), Ok(true));
        assert!(matches!(
            a.finish(),
            Err(WireError::Layout(ManifestError::RootMismatch))
        ));
    }

    #[test]
    fn a_server_announcing_a_table_of_zeros_is_refused() {
        // The unproven layout's marker: taking it from a server would switch verification off.
        let unproven = Manifest::unproven("f.bin".into(), 3 << 20).unwrap();
        let mut assembler = ManifestAssembler::new(Header {
            name: unproven.name.clone(),
            size: unproven.size,
            segment_size: unproven.segment_size,
            segment_count: unproven.segment_count(),
            root: unproven.root,
        });
        assert_eq!(assembler.push(0, unproven.digests.clone()), Ok(true));
        assert_eq!(assembler.finish(), Err(WireError::ZeroDigests));
    }

    #[test]
    fn digest_count_that_overflows_is_an_error_not_a_panic() {
        let mut payload = vec![0u8; 12 + 32];
        payload[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        let head = FrameHead {
            ty: FrameType::Digests,
            len: payload.len() as u32,
        };
        assert!(matches!(
            decode_server(head, &payload),
            Err(WireError::BadLength { .. })
        ));
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            if bytes.len() >= 5 {
                if let Ok(head) = parse_frame_head(bytes[..5].try_into().unwrap()) {
                    let payload = &bytes[5..];
                    let _ = decode_server(head, payload);
                    let _ = decode_client(head, payload);
                }
            }
        }

        #[test]
        fn decoding_mutated_headers_never_panics(pos in 0usize..80, byte in any::<u8>()) {
            let header = Header { name: "file.bin".into(), size: 10_000, segment_size: 4096, segment_count: 3, root: [1; 32] };
            let mut buf = Vec::new();
            ServerFrame::Header(header).encode(&mut buf);
            let idx = pos % buf.len();
            buf[idx] = byte;
            if let Ok(head) = parse_frame_head(buf[..5].try_into().unwrap()) {
                let _ = decode_server(head, &buf[5..]);
            }
        }
    }
}
