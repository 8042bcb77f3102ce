//! ArsNet's tokio drivers. `server` hosts virtual server groups (one file, one listener per
//! port); `download` runs download jobs, feeding network events to the pure scheduler
//! (`arsnet-sched`) and its decisions to sockets and the crash-safe store (`arsnet-store`).

pub mod download;
pub mod rate;
pub mod server;
pub mod wire_io;
