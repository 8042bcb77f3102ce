//! The control-socket client used by `arsnetctl` (and the end-to-end tests): connect,
//! send a versioned request, read responses.

use std::path::{Path, PathBuf};

use arsnet_proto::control::{decode_payload, ClientMessage, ControlError, Request, Response};
use arsnet_proto::limits::CONTROL_VERSION;
use tokio::net::UnixStream;

use crate::control::frame::{read_frame, write_frame, FrameError};

/// Why a control request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach arsnetd at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connection to arsnetd failed: {0}")]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Daemon(ControlError),
}

/// A connection to the daemon's control socket.
pub struct Client {
    stream: UnixStream,
}

impl Client {
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: path.to_path_buf(),
                    source,
                })?;
        Ok(Client { stream })
    }

    pub async fn send(&mut self, request: Request) -> Result<(), ClientError> {
        let message = ClientMessage {
            version: CONTROL_VERSION,
            request,
        };
        write_frame(&mut self.stream, &message).await?;
        Ok(())
    }

    /// Reads the next response; a daemon-side error is returned as `ClientError::Daemon`.
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        let payload = read_frame(&mut self.stream).await?;
        match decode_payload::<Response>(&payload).map_err(FrameError::from)? {
            Response::Error(e) => Err(ClientError::Daemon(e)),
            other => Ok(other),
        }
    }

    /// One request, one response.
    pub async fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        self.send(request).await?;
        self.recv().await
    }
}
