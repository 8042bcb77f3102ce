//! End-to-end tests: real `arsnetd` and `arsnetctl` processes, real TCP on loopback, real
//! files. Each test makes its own temp dir, daemons and ports, so tests run in parallel.

mod caller_rights;
mod cli_contract;
mod config_reload;
mod control;
mod dir_attacks;
mod engine;
mod faulty;
mod giving_up;
mod http_mirrors;
mod metrics;
mod mirrors_only;
mod nginx;
mod progress_display;
mod restart_figures;
mod server_abuse;
mod service;
mod silence;
mod socket_trust;
mod util;
