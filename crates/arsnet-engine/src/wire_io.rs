//! Reading wire frames from async streams. The pure decoders live in `arsnet_proto::wire`;
//! this module only moves bytes, and never reads a payload before its length has passed the
//! frame type's bound.

use arsnet_proto::wire::{
    decode_client, decode_server, parse_frame_head, ClientFrame, ServerFrame, WireError,
    FRAME_HEADER_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A failure to read a frame: the transport broke or the peer sent something invalid.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    #[error("connection closed by peer")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Wire(#[from] WireError),
}

async fn read_raw<R: AsyncRead + Unpin>(
    reader: &mut R,
    payload: &mut Vec<u8>,
) -> Result<arsnet_proto::wire::FrameHead, FrameReadError> {
    let mut head = [0u8; FRAME_HEADER_LEN];
    if let Err(e) = reader.read_exact(&mut head).await {
        return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameReadError::Closed
        } else {
            FrameReadError::Io(e)
        });
    }
    let head = parse_frame_head(head)?;
    payload.clear();
    // `head.len` is bounded by parse_frame_head (at most MAX_WIRE_PAYLOAD).
    payload.resize(head.len as usize, 0);
    reader.read_exact(payload).await?;
    Ok(head)
}

/// Reads one frame sent by a server.
pub async fn read_server_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    payload: &mut Vec<u8>,
) -> Result<ServerFrame, FrameReadError> {
    let head = read_raw(reader, payload).await?;
    Ok(decode_server(head, payload)?)
}

/// Reads one frame sent by a client.
pub async fn read_client_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    payload: &mut Vec<u8>,
) -> Result<ClientFrame, FrameReadError> {
    let head = read_raw(reader, payload).await?;
    Ok(decode_client(head, payload)?)
}
