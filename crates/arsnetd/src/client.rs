//! The control-socket client used by `arsnetctl` (and the end-to-end tests): connect,
//! check that the daemon is who it should be, send a versioned request, read responses.
//!
//! Whatever listens at the socket path decides what `fetch --wait` reports, so before a byte
//! is sent the client checks the listener's uid (SO_PEERCRED: this user, root, or the system
//! service's user) and that the socket's directory could not have been tampered with (owned
//! by that uid or root, writable by nobody else). A socket planted by another user at a
//! shared fallback path (`$TMPDIR/arsnet-UID/`) is refused instead of believed.

use std::os::unix::fs::MetadataExt;
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
    /// Something listens at the path, but it is not a daemon this user may trust.
    #[error("refusing to talk to {path}: {reason}")]
    Untrusted { path: PathBuf, reason: String },
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
    /// Connects and checks the daemon (see the module doc) before anything is sent.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: path.to_path_buf(),
                    source,
                })?;
        let untrusted = |reason: String| ClientError::Untrusted {
            path: path.to_path_buf(),
            reason,
        };
        let peer = stream
            .peer_cred()
            .map_err(|e| untrusted(format!("cannot read the listener's credentials: {e}")))?;
        check_daemon(path, peer.uid(), &Trusted::current()).map_err(untrusted)?;
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

    /// Sends `request` with `fds` (files or directories this process opened itself) passed
    /// along, so that the daemon acts on what the caller could open, not on what it could.
    pub async fn send_with_fds(
        &mut self,
        request: Request,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), ClientError> {
        let message = ClientMessage {
            version: CONTROL_VERSION,
            request,
        };
        let frame = arsnet_proto::control::encode_frame(&message).map_err(FrameError::from)?;
        crate::control::fds::send_with_fds(&self.stream, &frame, fds)
            .await
            .map_err(FrameError::from)?;
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

/// The uids a daemon may run as, for this caller.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trusted {
    own: u32,
    /// The system service's user, when the system runtime directory exists.
    service: Option<u32>,
}

impl Trusted {
    fn current() -> Self {
        Trusted {
            own: crate::control::own_uid(),
            service: crate::paths::system_service_uid(),
        }
    }

    fn allows(&self, uid: u32) -> bool {
        uid == self.own || uid == 0 || Some(uid) == self.service
    }
}

/// Checks that the listener's uid is trusted and that the directory the socket really is
/// in (symlinks resolved) belongs to that uid or root and is writable by no one else: who
/// can write there could have replaced the socket. Returns why not.
fn check_daemon(path: &Path, peer_uid: u32, trusted: &Trusted) -> Result<(), String> {
    if !trusted.allows(peer_uid) {
        let service = match trusted.service {
            Some(uid) => format!("uid {uid}, owner of {}", crate::paths::SYSTEM_RUNTIME_DIR),
            None => format!("none: {} does not exist", crate::paths::SYSTEM_RUNTIME_DIR),
        };
        return Err(format!(
            "the process listening there runs as uid {peer_uid}, which is neither this user \
             (uid {}), root, nor the system service's user ({service}); another user may \
             have planted it",
            trusted.own
        ));
    }
    let real =
        std::fs::canonicalize(path).map_err(|e| format!("cannot resolve the socket path: {e}"))?;
    let dir = real.parent().unwrap_or(Path::new("/"));
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if meta.uid() != peer_uid && meta.uid() != 0 {
        return Err(format!(
            "its directory {} belongs to uid {}, not to the daemon's user (uid {peer_uid}) or \
             root, so it could have replaced the socket",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "its directory {} is writable by others (mode {mode:o}), so anyone could have \
             replaced the socket",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_self_root_and_the_service_user_are_trusted() {
        let t = Trusted {
            own: 1000,
            service: Some(990),
        };
        assert!(t.allows(1000) && t.allows(0) && t.allows(990));
        assert!(!t.allows(65534));
        let no_service = Trusted {
            own: 1000,
            service: None,
        };
        assert!(!no_service.allows(990));
    }

    #[test]
    fn the_socket_directory_must_be_the_daemons_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let me = crate::control::own_uid();
        let trusted = Trusted {
            own: me,
            service: None,
        };
        let sock = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        for (mode, ok) in [
            (0o700, true),
            (0o750, true),
            (0o770, false),
            (0o1777, false),
        ] {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let result = check_daemon(&sock, me, &trusted);
            assert_eq!(result.is_ok(), ok, "mode {mode:o}: {result:?}");
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let stranger = if me == 4242 { 4243 } else { 4242 };
        let err = check_daemon(&sock, stranger, &trusted).unwrap_err();
        assert!(err.contains(&format!("uid {stranger}")), "{err}");
        // A symlink is judged by where the socket really is.
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let link = open.path().join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        assert!(check_daemon(&link, me, &trusted).is_ok());
        let planted = open.path().join("planted.sock");
        let _fake = std::os::unix::net::UnixListener::bind(&planted).unwrap();
        std::os::unix::fs::symlink(&planted, dir.path().join("to-planted.sock")).unwrap();
        let err = check_daemon(&dir.path().join("to-planted.sock"), me, &trusted).unwrap_err();
        assert!(err.contains("writable by others"), "{err}");
    }
}
