//! Architecture rules as tests that can fail: no module import cycles inside a crate, no
//! function longer than 80 lines, no unused dependency, and `arsnetctl` links neither the
//! engine nor the daemon, only the transport backend names sockets; PROTOCOL.md names every limit and ARCHITECTURE.md states an
//! invariant per crate. Each checker takes the workspace root as an argument, so the
//! `fixtures` tests run it against small workspaces written to a temp dir.

mod cycles;
mod deps;
mod docs;
mod fixtures;
mod functions;
mod modules;
mod transport;

use std::path::PathBuf;

/// The workspace root: two levels above this crate's manifest dir (`crates/arsnet-tests`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Panics with every violation, one per line, when there is any.
pub fn assert_none(rule: &str, violations: &[String]) {
    if violations.is_empty() {
        return;
    }
    let mut message = format!("{rule}: {} violation(s)\n", violations.len());
    for v in violations {
        message.push_str("  ");
        message.push_str(v);
        message.push('\n');
    }
    panic!("{message}");
}
