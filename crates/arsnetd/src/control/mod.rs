//! The control socket: a Unix-domain socket only its owner can use (directory 0700, socket
//! 0600, and the peer's uid checked before a byte is decoded), carrying length-prefixed
//! bincode frames. Each connection is served by its own task; a bad client only ever loses
//! its own connection.

mod handler;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arsnet_client::transport::{self, Listener};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use arsnet_proto::limits::CONTROL_MAX_CONNECTIONS;

use crate::access::{self, ControlGroup};
use crate::state::Daemon;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another arsnetd is already listening on {0}")]
    InUse(String),
    #[error("unsafe control socket directory: {0}")]
    Unsafe(String),
    #[error("{path} exists and is {kind}, not a socket: refusing to replace it (choose another --socket)")]
    NotASocket { path: String, kind: &'static str },
    #[error("cannot set up control socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Creates the socket's directory (0700, or 0750 for a control group) and binds the socket
/// (0600, or 0660 for a control group). A socket file left by a crashed daemon (nobody
/// accepts on it) is replaced; a live one is an error, and so is anything but a socket. An existing directory must be safe
/// (ours, not writable by others).
pub fn bind_socket(path: &Path, group: Option<&ControlGroup>) -> Result<Listener, SocketError> {
    let shown = path.display().to_string();
    let io = |source| SocketError::Io {
        path: shown.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
            if let Some(group) = group {
                access::share_with_group(dir, group, 0o750).map_err(io)?;
            }
        }
        access::check_dir_is_safe(dir).map_err(SocketError::Unsafe)?;
        // A directory left 0700 by an earlier run without a control group must let the
        // group through now (only when it is ours to change).
        if let Some(group) = group {
            let ours = std::fs::metadata(dir)
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == access::own_uid());
            if matches!(ours, Ok(true)) {
                access::share_with_group(dir, group, 0o750).map_err(io)?;
            }
        }
    }
    // Only a socket is ever removed as stale: `--socket` pointing at a user's file (or a
    // symlink to one, or a directory) must not cost them that file.
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if transport::is_live(path) {
                return Err(SocketError::InUse(shown));
            }
            info!(socket = %shown, "removing stale socket left by a previous daemon");
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(meta) => {
            return Err(SocketError::NotASocket {
                path: shown,
                kind: describe(meta.file_type()),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = Listener::bind(path).map_err(io)?;
    match group {
        Some(group) => access::share_with_group(path, group, 0o660).map_err(io)?,
        None => {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?
        }
    }
    Ok(listener)
}

/// The listening socket the service manager passed (systemd socket activation:
/// `LISTEN_FDS`/`LISTEN_PID`, descriptors from 3), if any: the one `LISTEN_FDNAMES` names
/// `control` (`FileDescriptorName=control` in the socket unit), or, when none is named so, the
/// only one passed. It must be a listening Unix stream socket; anything else is an error
/// rather than something to guess about.
pub fn inherited_socket() -> Result<Option<Listener>, SocketError> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // The variables are consumed, so no child process ever takes them for its own.
    let passed: Vec<(std::os::fd::RawFd, String)> = sd_notify::listen_fds_with_names(true)
        .map_err(|source| SocketError::Io {
            path: "the sockets passed by the service manager (LISTEN_FDS, LISTEN_FDNAMES)".into(),
            source,
        })?
        .collect();
    let Some(fd) = control_fd(&passed)? else {
        return Ok(None);
    };
    for &(other, _) in passed.iter().filter(|(other, _)| *other != fd) {
        // Not ours to use: at least no child process inherits it.
        // SAFETY: fcntl on a descriptor number only changes that descriptor's flags.
        unsafe { libc::fcntl(other, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: the service manager passed this descriptor to us to own (LISTEN_PID is our
    // pid, checked by listen_fds), and nothing else in this process uses it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Listener::adopt(owned)
        .map(Some)
        .map_err(|source| SocketError::Io {
            path: format!("descriptor {fd} passed by the service manager"),
            source,
        })
}

/// Which passed descriptor is the control socket: the one named `control`, else the only one.
fn control_fd(
    passed: &[(std::os::fd::RawFd, String)],
) -> Result<Option<std::os::fd::RawFd>, SocketError> {
    if let Some((fd, _)) = passed.iter().find(|(_, name)| name == CONTROL_FD_NAME) {
        return Ok(Some(*fd));
    }
    match passed {
        [] => Ok(None),
        [(fd, _)] => Ok(Some(*fd)),
        more => {
            let names: Vec<&str> = more.iter().map(|(_, name)| name.as_str()).collect();
            Err(SocketError::Io {
                path: "the sockets passed by the service manager".into(),
                source: std::io::Error::other(format!(
                    "{} descriptors ({}) and none named \"{CONTROL_FD_NAME}\" (FileDescriptorName=)",
                    more.len(),
                    names.join(", ")
                )),
            })
        }
    }
}

/// The name (`LISTEN_FDNAMES`, `FileDescriptorName=`) of the passed control socket.
const CONTROL_FD_NAME: &str = "control";

fn describe(kind: std::fs::FileType) -> &'static str {
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Accepts control connections until the daemon shuts down.
pub async fn serve(daemon: Arc<Daemon>, listener: Listener) {
    let permits = Arc::new(Semaphore::new(CONTROL_MAX_CONNECTIONS));
    let group: Option<String> = daemon.control_group.as_ref().map(|g| g.name.clone());
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
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                backoff = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                warn!(error = %e, "control accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let peer = match peer {
            Ok(peer) => peer,
            Err(e) => {
                warn!(error = %e, "refused control connection: cannot read peer credentials");
                continue;
            }
        };
        let daemon = daemon.clone();
        let group = group.clone();
        tokio::spawn(async move {
            let transport::Peer { uid, gid, pid } = peer;
            // The group lookup may block on NSS (LDAP…): keep it off the async threads.
            let allowed = tokio::task::spawn_blocking(move || {
                access::peer_allowed(uid, gid, group.as_deref())
            })
            .await
            .unwrap_or(false);
            if allowed {
                let caller = crate::caller::Caller { uid, gid, pid };
                handler::handle(daemon, stream, caller).await;
            } else {
                warn!(uid, pid = ?pid, "refused control connection from another user");
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_socket_is_picked_by_name_or_as_the_only_one() {
        let named = |pairs: &[(i32, &str)]| -> Vec<(i32, String)> {
            pairs.iter().map(|&(fd, n)| (fd, n.to_string())).collect()
        };
        let pick = |pairs: &[(i32, &str)]| control_fd(&named(pairs)).ok().flatten();
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&[(3, "unknown")]), Some(3), "no names: the only one");
        assert_eq!(
            pick(&[(3, "arsnetd.socket")]),
            Some(3),
            "a unit without the name"
        );
        assert_eq!(pick(&[(3, "metrics"), (4, "control")]), Some(4));
        assert!(
            control_fd(&named(&[(3, "a"), (4, "b")])).is_err(),
            "no guessing"
        );
    }
}
