//! Virtual server groups: one file served on N ports, each port an independent server with
//! its own listener, connections and counters (the spec's `Server.py`).

mod admission;
mod config;
mod connection;
mod digests;
mod group;
mod http;
mod served;
mod validate;

pub use config::GroupConfig;
pub use digests::build_manifest;
pub use group::ServerGroup;
pub use validate::{validate_ports, ServeError};
