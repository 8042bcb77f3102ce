//! ArsNet crash-consistent download storage.
//!
//! A download of `NAME` into `DIR` lives in two files until it completes:
//! `DIR/NAME.arsnet-dump`, the data at its final offsets, and `DIR/NAME.arsnet-segments`,
//! an append-only, checksummed journal of the segments whose bytes are durable in the dump
//! (format in [`journal`]). The invariant: the journal never lists a segment whose bytes are
//! not durable, because a commit is always data pwrite → fdatasync(dump) → journal append →
//! fsync(journal). On completion the dump is renamed to `DIR/NAME` and the journal removed,
//! so `DIR/NAME` always is a complete file.
//!
//! Every file in `DIR` is reached through a held directory handle ([`dir`]): no symlink is
//! followed, only regular files of ours are used, new files are created exclusively, and the
//! file published as `DIR/NAME` is the very inode that was verified.
//!
//! Modules: [`backend`] (the [`BlockFile`] I/O seam and its `std::fs::File` impl),
//! [`journal`] (the on-disk format and [`Journal`]), [`store`] (the write order in
//! [`Store`], and [`DownloadStore`] on real files), [`error`] ([`StoreError`]), and with the
//! `test-util` feature `crash` (the power-cut simulating `CrashFile`).

pub mod backend;
#[cfg(any(test, feature = "test-util"))]
pub mod crash;
pub mod dir;
mod download;
pub mod error;
pub mod journal;
mod segset;
pub mod store;

pub use backend::BlockFile;
pub use download::{DownloadStore, Found};
pub use error::StoreError;
pub use journal::{Journal, JournalContents};
pub use store::{is_reserved_name, Adopted, Store, StorePaths};
