//! `arsnetd`, the ArsNet daemon, as a library (the binary's `main.rs` only parses flags and
//! calls [`run`]). Modules from the bottom up — each uses only those listed before it:
//!
//! - `paths`, `config`, `lock`, `logging`: where state lives, the checked configuration, the
//!   state dir's lock, the log (whose filter a reload may change);
//! - `access`, `caller`: who may use the socket, and what a caller may ask for;
//! - `persist`: the state file; `lifecycle`: the pure job state machine;
//! - `state`: the shared registry ([`state::Daemon`]) with saving and pushed updates;
//! - `groups`, `jobs`: the requests on server groups and the download queue;
//! - `metrics`: the Prometheus exposition of the registry, and the opt-in `/metrics`
//!   listener;
//! - `control`: the control socket and its request handler;
//! - `service`: what the service manager sees (systemd notify: ready, status, watchdog);
//! - `reload`: SIGHUP, what of a re-read configuration may change live;
//! - `daemon`: start-up, signals and graceful shutdown.
//!
//! The control framing and socket paths are `arsnet-client`'s, shared with `arsnetctl`.

mod access;
mod caller;
pub mod config;
mod control;
mod daemon;
mod groups;
mod jobs;
mod lifecycle;
mod lock;
mod logging;
mod metrics;
mod paths;
pub mod persist;
mod reload;
mod service;
mod state;

pub use config::{Args, Config, Origin};
pub use daemon::run;
