//! The control socket: a Unix-domain socket only its owner can use (directory 0700, socket
//! 0600, and the peer's uid checked before a byte is decoded), carrying length-prefixed
//! bincode frames. Each connection is served by its own task; a bad client only ever loses
//! its own connection.

pub mod frame;
mod handler;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::daemon::Daemon;

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another arsnetd is already listening on {0}")]
    InUse(String),
    #[error("cannot set up control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Creates the socket's directory (0700) and binds the socket (0600). A socket file left by
/// a crashed daemon (nobody accepts on it) is replaced; a live one is an error.
pub fn bind_socket(path: &Path) -> Result<UnixListener, SocketError> {
    let shown = path.display().to_string();
    let io = |source| SocketError::Io {
        path: shown.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(shown)),
            Err(_) => {
                info!(socket = %shown, "removing stale socket left by a previous daemon");
                std::fs::remove_file(path).map_err(io)?;
            }
        }
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Accepts control connections until the daemon shuts down.
pub async fn serve(daemon: Arc<Daemon>, listener: UnixListener) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let allowed_gid = daemon.config.control_group.as_deref().and_then(group_id);
    let mut backoff = Duration::from_millis(10);
    loop {
        // Take a permit before accepting, so a flood of clients waits in the backlog.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            _ = daemon.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                warn!(error = %e, "control accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if peer_allowed(cred.uid(), cred.gid(), allowed_gid) => {}
            Ok(cred) => {
                warn!(uid = cred.uid(), pid = ?cred.pid(), "refused control connection from another user");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "refused control connection: cannot read peer credentials");
                continue;
            }
        }
        let daemon = daemon.clone();
        tokio::spawn(async move {
            handler::handle(daemon, stream).await;
            drop(permit);
        });
    }
}

fn peer_allowed(uid: u32, gid: u32, allowed_gid: Option<u32>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    uid == own || uid == 0 || allowed_gid == Some(gid)
}

/// Resolves a group name to its gid.
fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam with a valid C string; the result is read immediately.
    let group = unsafe { libc::getgrnam(cname.as_ptr()) };
    if group.is_null() {
        warn!(group = name, "control_group does not exist; ignoring it");
        return None;
    }
    // SAFETY: non-null pointer returned by getgrnam.
    Some(unsafe { (*group).gr_gid })
}
