//! The demo's command line.

use std::path::PathBuf;

use clap::Parser;

/// Demonstrate ArsNet end to end: start a private daemon, serve a test file on several
/// virtual servers, fetch it, stop one server half way, verify and summarise.
#[derive(Debug, Parser)]
#[command(name = "arsnet-demo", version)]
pub struct Args {
    /// Size of the test file in MiB.
    #[arg(long, default_value_t = 256)]
    pub size_mib: u64,
    /// Number of virtual servers (at least 2, to show failover).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub servers: u32,
    /// Per-server bandwidth limit in bytes per second [default: sized so the demo lasts
    /// about 8 seconds].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Keep the demo's directory (test file, download, daemon state) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Use the daemon at this control socket instead of a private one (only when named
    /// here: `ARSNET_SOCKET` is ignored, so the demo never touches a daemon by accident).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}
