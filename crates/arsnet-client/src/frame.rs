//! Length-prefixed control frames on a stream, used by both the daemon and the client. The
//! length is checked against the limit before the payload is allocated, and once a frame
//! has started, the rest must arrive within a deadline so a stalled peer cannot pin a
//! connection half-way through a frame.

use arsnet_proto::control::{check_frame_len, encode_frame, ControlFrameError};
use arsnet_proto::limits::CONTROL_FRAME_DEADLINE;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::transport::{Handle, Stream};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer stalled in the middle of a frame")]
    Stalled,
    #[error(transparent)]
    Frame(#[from] ControlFrameError),
}

/// Reads one frame's payload. Waits indefinitely for the first byte (an idle connection is
/// fine), then at most [`CONTROL_FRAME_DEADLINE`] for the rest.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; 4];
    let n = reader.read(&mut prefix[..1]).await?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    read_rest(reader, prefix).await
}

/// Reads the rest of a frame whose first byte is `prefix[0]`: within
/// [`CONTROL_FRAME_DEADLINE`] of that byte, and never more than the limit allows.
async fn read_rest<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut prefix: [u8; 4],
) -> Result<Vec<u8>, FrameError> {
    let rest = async {
        reader.read_exact(&mut prefix[1..]).await?;
        let len = check_frame_len(prefix)?;
        let mut payload = vec![0u8; len];
        reader.read_exact(&mut payload).await?;
        Ok::<_, FrameError>(payload)
    };
    match tokio::time::timeout(CONTROL_FRAME_DEADLINE, rest).await {
        Ok(Ok(payload)) => Ok(payload),
        Ok(Err(FrameError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(FrameError::Closed)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(FrameError::Stalled),
    }
}

/// [`read_frame`] on a control connection itself, also returning the open files the client
/// sent with the frame's first byte (see [`Stream::send_with_handles`]).
pub async fn read_frame_with_handles(
    stream: &mut Stream,
) -> Result<(Vec<u8>, Vec<Handle>), FrameError> {
    let mut prefix = [0u8; 4];
    let (n, handles) = stream.recv_with_handles(&mut prefix[..1]).await?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    let payload = read_rest(stream, prefix).await?;
    Ok((payload, handles))
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    let frame = encode_frame(value)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}
