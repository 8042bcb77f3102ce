//! Virtual server groups: one file served on N ports, each port an independent server with
//! its own listener, connections and counters (the spec's `Server.py`).

mod admission;
mod connection;
mod digests;
mod group;
mod validate;

pub use digests::build_manifest;
pub use group::{GroupConfig, ServerGroup};
pub use validate::{validate_ports, ServeError};
