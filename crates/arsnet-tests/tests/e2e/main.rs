//! End-to-end tests: real `arsnetd` and `arsnetctl` processes, real TCP on loopback, real
//! files. Each test makes its own temp dir, daemons and ports, so tests run in parallel.

mod caller_rights;
mod control;
mod dir_attacks;
mod engine;
mod faulty;
mod server_abuse;
mod socket_trust;
mod util;
