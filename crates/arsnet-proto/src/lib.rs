//! ArsNet protocol definitions: the client ↔ virtual-server wire protocol (v2), the
//! `arsnetctl` ↔ `arsnetd` control protocol, and every limit both enforce.
//!
//! This crate is pure: no I/O, no clock, no allocation sized by untrusted input. Drivers read
//! bytes from sockets and hand them here; everything returned is validated. `PROTOCOL.md` at
//! the repository root specifies both protocols byte by byte and must stay in step with this
//! crate.

pub mod checksum;
pub mod control;
pub mod limits;
pub mod manifest;
pub mod name;
pub mod request;
pub mod source;
pub mod units;
pub mod wire;

pub use manifest::{Digest, JobTag, Manifest, ManifestError};
pub use name::{validate_file_name, NameError};
pub use source::{SourceAddr, SourceAddrError};
