//! The control-socket layer both binaries stand on: the transport and the only code that
//! knows it is a Unix-domain socket ([`transport`]: connections, the peer's identity, open
//! files passed along), length-prefixed bincode frames on it ([`frame`]), where the socket
//! is ([`paths`]), and the client that checks who listens there before it says anything
//! ([`client`]).
//! `arsnetctl` is built on this crate alone (plus `arsnet-proto`); the daemon uses the same
//! framing and paths, so the two always agree.
//!
//! Architecture Invariant: nothing here knows about downloads, servers or the engine; it
//! moves control messages and descriptors, and decides which daemon may be trusted.

pub mod client;
pub mod frame;
pub mod paths;
pub mod transport;

pub use client::{Client, ClientError, Updates};
