//! Where the control socket and the state live when no flag says otherwise: under
//! `/run/arsnet` and `/var/lib/arsnet` for root (a system service), else the user's XDG
//! runtime and state dirs (via `directories`), with `$ARSNET_SOCKET` and systemd's
//! `$STATE_DIRECTORY` honoured. Both binaries call the same functions so they always agree.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the socket path for both binaries.
pub const SOCKET_ENV: &str = "ARSNET_SOCKET";

/// The system service's runtime directory (systemd's `RuntimeDirectory=arsnet`, created
/// for the service's `User=`); its owner is the one non-root user every client trusts.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/arsnet";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn project() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "arsnet")
}

/// The default control socket path.
pub fn default_socket() -> PathBuf {
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if is_root() {
        return Path::new(SYSTEM_RUNTIME_DIR).join("arsnetd.sock");
    }
    if let Some(dir) = project().and_then(|p| p.runtime_dir().map(|d| d.to_path_buf())) {
        return dir.join("arsnetd.sock");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    // Cron and ssh without a session have no $XDG_RUNTIME_DIR; systemd's per-user runtime
    // dir still exists, and a user daemon started from a session put its socket there.
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return run_user.join("arsnet").join("arsnetd.sock");
    }
    // Last resort; the daemon refuses this directory if another user owns it.
    std::env::temp_dir()
        .join(format!("arsnet-{uid}"))
        .join("arsnetd.sock")
}

/// The uid the system service runs as: the owner of [`SYSTEM_RUNTIME_DIR`], if it is a
/// real directory (only root can create it in /run, so its owner was chosen by root).
pub fn system_service_uid() -> Option<u32> {
    std::fs::symlink_metadata(SYSTEM_RUNTIME_DIR)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| m.uid())
}

/// The default state directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|p| !p.is_empty()) {
        // systemd may pass several, colon-separated; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first);
    }
    if is_root() {
        return PathBuf::from("/var/lib/arsnet");
    }
    if let Some(dir) = project().and_then(|p| p.state_dir().map(|d| d.to_path_buf())) {
        return dir;
    }
    std::env::temp_dir().join("arsnet-state")
}
