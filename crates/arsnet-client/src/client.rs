//! The control-socket client used by `arsnetctl` (and the demo): connect,
//! check that the daemon is who it should be, send a versioned request, read responses.
//!
//! Whatever listens at the socket path decides what `fetch --wait` reports, so before a byte
//! is sent the client checks the listener's uid (SO_PEERCRED: this user, root, or the system
//! service's user) and that the socket's directory could not have been tampered with (owned
//! by that uid or root, writable by nobody else). A socket planted by another user at a
//! shared fallback path (`$TMPDIR/arsnet-UID/`) is refused instead of believed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::frame::{read_frame, write_frame, FrameError};
use crate::transport::{self, BorrowedHandle, Stream};
use arsnet_proto::control::{decode_payload, ClientMessage, ControlError, Request, Response};
use arsnet_proto::limits::{CONTROL_ANSWER_TIMEOUT, CONTROL_VERSION};

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
    /// The daemon accepted the request but did not answer in time (it is stuck, or what
    /// listens there is not a working daemon).
    #[error("arsnetd did not answer within {}s", .0.as_secs())]
    NoAnswer(std::time::Duration),
    #[error("{0}")]
    Daemon(ControlError),
}

/// A connection to the daemon's control socket.
pub struct Client {
    stream: Stream,
}

impl Client {
    /// Connects and checks the daemon (see the module doc) before anything is sent.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = transport::connect(path)
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
            .peer()
            .map_err(|e| untrusted(format!("cannot read the listener's credentials: {e}")))?;
        check_daemon(path, peer.uid, &Trusted::current()).map_err(untrusted)?;
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

    /// Sends `request` with `handles` (files or directories this process opened itself)
    /// passed along, so that the daemon acts on what the caller could open, not on what it
    /// could.
    pub async fn send_with_handles(
        &mut self,
        request: Request,
        handles: &[BorrowedHandle<'_>],
    ) -> Result<(), ClientError> {
        let message = ClientMessage {
            version: CONTROL_VERSION,
            request,
        };
        let frame = arsnet_proto::control::encode_frame(&message).map_err(FrameError::from)?;
        self.stream
            .send_with_handles(&frame, handles)
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

    /// Reads the answer to a request just sent, giving up after
    /// [`CONTROL_ANSWER_TIMEOUT`] — except for `serve`, whose answer comes once the whole
    /// file is hashed, which for a huge file on a slow disk may take longer.
    pub async fn answer_to(&mut self, request: &Request) -> Result<Response, ClientError> {
        if matches!(request, Request::Serve(_)) {
            return self.recv().await;
        }
        tokio::time::timeout(CONTROL_ANSWER_TIMEOUT, self.recv())
            .await
            .map_err(|_| ClientError::NoAnswer(CONTROL_ANSWER_TIMEOUT))?
    }

    /// One request, one response (see [`Client::answer_to`] for how long it waits).
    pub async fn call(&mut self, request: Request) -> Result<Response, ClientError> {
        self.send(request.clone()).await?;
        self.answer_to(&request).await
    }

    /// Subscribes to pushed updates (of job `id`, or of everything). The daemon answers
    /// with the current state at once, so the first one is awaited as any answer is; the
    /// rest come through [`Updates`].
    pub async fn watch(
        mut self,
        id: Option<arsnet_proto::control::JobId>,
    ) -> Result<Updates, ClientError> {
        let request = Request::Watch { id };
        self.send(request.clone()).await?;
        let first = self.answer_to(&request).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let _ = tx.try_send(Ok(first));
        let task = tokio::spawn(async move {
            loop {
                let next = self.recv().await;
                let ended = next.is_err();
                if tx.send(next).await.is_err() || ended {
                    return;
                }
            }
        });
        Ok(Updates { rx, task })
    }
}

/// Pushed updates, read by a task of their own: a reader can wait on other things too (a
/// timer, a signal) without ever dropping a frame half read, which a `select!` on the
/// socket read itself would do.
pub struct Updates {
    rx: tokio::sync::mpsc::Receiver<Result<Response, ClientError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Updates {
    /// The next update; an error once the connection ended.
    pub async fn next(&mut self) -> Result<Response, ClientError> {
        self.rx
            .recv()
            .await
            .unwrap_or(Err(ClientError::Frame(FrameError::Closed)))
    }
}

impl Drop for Updates {
    fn drop(&mut self) {
        self.task.abort();
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
            own: crate::paths::own_uid(),
            service: crate::paths::system_service_uid(),
        }
    }

    /// Whether a daemon running as `uid` may be talked to at a socket in `dir`. The system
    /// service's user is trusted only in its own runtime directory: it is the process that
    /// parses what the network sends, and must not be able to pose as "the daemon" at any
    /// path a client might try (`/tmp/arsnet-UID/…`, say) and receive its descriptors.
    fn allows(&self, uid: u32, dir: &Path) -> bool {
        uid == self.own
            || uid == 0
            || (Some(uid) == self.service && dir == Path::new(crate::paths::SYSTEM_RUNTIME_DIR))
    }

    /// Who may own the directory of a socket that `peer_uid` listens on: that uid or root;
    /// and, when root listens (systemd holding the socket for socket activation), also the
    /// system service's user, whose runtime directory the socket is in.
    fn may_own_socket_dir(&self, dir_uid: u32, peer_uid: u32) -> bool {
        dir_uid == peer_uid
            || dir_uid == 0
            || (peer_uid == 0 && self.service.is_some() && Some(dir_uid) == self.service)
    }
}

/// Checks that the listener's uid is trusted and that the directory the socket really is
/// in (symlinks resolved) belongs to that uid or root and is writable by no one else: who
/// can write there could have replaced the socket. Returns why not.
fn check_daemon(path: &Path, peer_uid: u32, trusted: &Trusted) -> Result<(), String> {
    let real =
        std::fs::canonicalize(path).map_err(|e| format!("cannot resolve the socket path: {e}"))?;
    let dir = real.parent().unwrap_or(Path::new("/"));
    if !trusted.allows(peer_uid, dir) {
        let service = match trusted.service {
            Some(uid) => format!(
                "uid {uid}, owner of {}, trusted only for a socket in it",
                crate::paths::SYSTEM_RUNTIME_DIR
            ),
            None => format!("none: {} does not exist", crate::paths::SYSTEM_RUNTIME_DIR),
        };
        return Err(format!(
            "the process listening there runs as uid {peer_uid}, which is neither this user \
             (uid {}), root, nor the system service's user ({service}); another user may \
             have planted it",
            trusted.own
        ));
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !trusted.may_own_socket_dir(meta.uid(), peer_uid) {
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
        let system = Path::new(crate::paths::SYSTEM_RUNTIME_DIR);
        let tmp = Path::new("/tmp/arsnet-1000");
        assert!(t.allows(1000, tmp) && t.allows(0, tmp) && t.allows(990, system));
        assert!(
            !t.allows(990, tmp),
            "the service user only in its own directory"
        );
        assert!(!t.allows(65534, system));
        let no_service = Trusted {
            own: 1000,
            service: None,
        };
        assert!(!no_service.allows(990, system));
    }

    #[test]
    fn a_socket_systemd_holds_may_be_in_the_service_users_directory() {
        let t = Trusted {
            own: 1000,
            service: Some(990),
        };
        assert!(t.may_own_socket_dir(990, 990), "the service's own socket");
        assert!(t.may_own_socket_dir(0, 990), "a root-owned directory");
        assert!(
            t.may_own_socket_dir(990, 0),
            "socket activation: systemd listens"
        );
        assert!(!t.may_own_socket_dir(1234, 0), "a stranger's directory");
        assert!(!t.may_own_socket_dir(990, 1000), "only when root listens");
        let no_service = Trusted {
            own: 1000,
            service: None,
        };
        assert!(!no_service.may_own_socket_dir(990, 0));
    }

    #[test]
    fn the_socket_directory_must_be_the_daemons_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        let me = crate::paths::own_uid();
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

    /// A reply that arrives in pieces, read while the caller also waits on a fast timer
    /// (as `fetch --wait` does): every update arrives whole.
    #[tokio::test]
    async fn updates_survive_a_caller_that_selects_on_a_timer() {
        use arsnet_proto::control::{Response, Update};
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.path().join("s.sock");
        let listener = transport::Listener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _request = read_frame(&mut stream).await.unwrap();
            let groups = Response::Update(Update::Groups(Vec::new()));
            write_frame(&mut stream, &groups).await.unwrap();
            let frame =
                arsnet_proto::control::encode_frame(&Response::Lagged { skipped: 7 }).unwrap();
            stream.write_all(&frame[..1]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            stream.write_all(&frame[1..]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        });
        let mut updates = Client::connect(&path)
            .await
            .unwrap()
            .watch(None)
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            tokio::select! {
                next = updates.next() => got.push(next.unwrap()),
                _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
            }
        }
        assert_eq!(got[1], Response::Lagged { skipped: 7 });
        server.abort();
    }
}
