//! Where the daemon keeps its state when no flag says otherwise: `/var/lib/arsnet` for root
//! (a system service), else the user's XDG state dir, with systemd's `$STATE_DIRECTORY`
//! honoured. The socket's default is the client layer's (`arsnet_client::paths`), so both
//! binaries agree on it.

use std::path::PathBuf;

use arsnet_client::paths::{is_root, project};

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
