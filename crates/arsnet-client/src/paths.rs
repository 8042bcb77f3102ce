//! Where the control socket is when no flag says otherwise: under `/run/arsnet` for root (a
//! system service), else the user's XDG runtime dir (via `directories`), with
//! `$ARSNET_SOCKET` honoured. Both binaries call these functions so they always agree.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the socket path for both binaries.
pub const SOCKET_ENV: &str = "ARSNET_SOCKET";

/// The system service's runtime directory (systemd's `RuntimeDirectory=arsnet`, created
/// for the service's `User=`); its owner is the one non-root user every client trusts.
pub const SYSTEM_RUNTIME_DIR: &str = "/run/arsnet";

/// This process's effective uid.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether this process runs as root (then the system service's paths are the defaults).
pub fn is_root() -> bool {
    own_uid() == 0
}

/// The per-user directories of the `arsnet` project (XDG on Linux).
pub fn project() -> Option<directories::ProjectDirs> {
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
