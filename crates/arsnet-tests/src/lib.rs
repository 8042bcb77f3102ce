//! End-to-end tests for ArsNet live in `tests/e2e/`: they run the real `arsnetd` and
//! `arsnetctl` binaries on temp sockets, temp state dirs and loopback ports. This library
//! is intentionally empty.
