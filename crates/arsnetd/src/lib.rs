//! `arsnetd`, the ArsNet daemon, as a library: configuration and paths, the control socket,
//! the registry of server groups and the queue of downloads, and their persistence. The
//! binary's `main.rs` only parses flags and calls [`run`]. `arsnetctl` reuses [`client`] and
//! [`paths`] so both binaries agree on where the socket is and how frames look.

pub mod caller;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
mod groups;
mod jobs;
pub mod lock;
pub mod paths;
pub mod persist;

pub use config::{Args, Config};
pub use daemon::run;
