//! `arsnetctl`, the control client, as a library: the command line ([`cli`]), one function
//! per command ([`commands`]), how results are shown ([`render`]; live at a terminal:
//! [`progress`], drawn on [`terminal`]; elsewhere as plain lines stamped by [`stamp`]) and
//! what exit code they map to ([`exit`]). It stands on `arsnet-client` (framing, socket paths, the daemon
//! check) and `arsnet-proto` alone: neither the engine nor the daemon is linked in.
//!
//! Architecture Invariant: `cargo tree -p arsnetctl -e normal` contains neither
//! `arsnet-engine` nor `arsnetd` (the architecture tests check it).

pub mod again;
pub mod cli;
pub mod commands;
pub mod exit;
pub mod json;
pub mod out;
pub mod progress;
pub mod render;
pub mod stamp;
pub mod terminal;
