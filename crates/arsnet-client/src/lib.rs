//! The control-socket layer both binaries stand on: length-prefixed bincode frames
//! ([`frame`]), descriptors passed with them ([`fds`]), where the socket is ([`paths`]), and
//! the client that checks who listens there before it says anything ([`client`]).
//! `arsnetctl` is built on this crate alone (plus `arsnet-proto`); the daemon uses the same
//! framing and paths, so the two always agree.
//!
//! Architecture Invariant: nothing here knows about downloads, servers or the engine; it
//! moves control messages and descriptors, and decides which daemon may be trusted.

pub mod client;
pub mod fds;
pub mod frame;
pub mod paths;

pub use client::{Client, ClientError, Updates};
