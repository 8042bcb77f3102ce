//! Where the content's identity comes from, apart from where its bytes come from. The job
//! trusts a content once it is decided (by the scheduler: the journal's or the job's saved
//! content, a user's `--blake3` pin, or the servers' strict majority); segments are verified
//! against a *manifest* (the digest table proving the root), which today comes from an
//! ArsNet server's HEADER + DIGESTS or from the adopted journal.
//!
//! A source states what it knows as a [`Claim`]. Only [`Claim::layout`] and
//! [`Claim::manifest`] are asked of it, so a source that announces no digest table of its
//! own (an HTTP mirror, which only knows a size) becomes a new variant here — verified
//! against the manifest the job already trusts — without any change to the job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arsnet_proto::control::Pin;
use arsnet_proto::{Digest, Manifest};
use arsnet_sched::Layout;

/// What a source claims the content is.
#[derive(Debug, Clone)]
pub(crate) enum Claim {
    /// A whole identity with the digest table that proves it (an ArsNet server's manifest,
    /// root already checked).
    Manifest(Arc<Manifest>),
    /// An HTTP mirror's file: a size and validators, no identity. It follows the content
    /// others decide (see `arsnet_sched::Scheduler::on_follower_ready`).
    Mirror(Arc<MirrorFile>),
}

/// What a mirror said of its file at the first response; pinned for the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MirrorFile {
    pub size: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Claim {
    /// The identity the scheduler compares and votes on; `None` for a mirror, which has
    /// none to offer.
    pub fn layout(&self) -> Option<Layout> {
        match self {
            Claim::Manifest(m) => Some(layout_of(m)),
            Claim::Mirror(_) => None,
        }
    }

    /// The digest table that verifies this claim's segments, if the claim carries one.
    pub fn manifest(&self) -> Option<&Arc<Manifest>> {
        match self {
            Claim::Manifest(m) => Some(m),
            Claim::Mirror(_) => None,
        }
    }

    /// Why this claim cannot serve `manifest`'s content, if it cannot (a mirror whose file
    /// has another size).
    pub fn contradicts(&self, manifest: &Manifest) -> Option<String> {
        match self {
            Claim::Mirror(file) if file.size != manifest.size => Some(format!(
                "its file is {} bytes, the content is {} bytes",
                file.size, manifest.size
            )),
            _ => None,
        }
    }
}

/// The scheduler's view of a manifest: segment count, identity and root.
pub(crate) fn layout_of(manifest: &Manifest) -> Layout {
    Layout {
        segment_count: manifest.segment_count(),
        size: manifest.size,
        fingerprint: manifest.identity(),
        content: manifest.root,
    }
}

/// The root the content must have before any source speaks: the job's history, else the
/// user's BLAKE3 pin. (A SHA-256 pin is checked on the finished file instead.)
pub(crate) fn required_content(history: Option<Digest>, pin: Option<Pin>) -> Option<Digest> {
    history.or(match pin {
        Some(Pin::Blake3(digest)) => Some(digest),
        _ => None,
    })
}

/// The manifests a job's connections have assembled, by download identity: a connection
/// whose server announces a download already known skips its DIGESTS frames (checking only
/// their order and count) and shares the one table, so a job holds one digest table per
/// content however many servers serve it. Only one connection assembles a given content's table
/// at a time (`assembling`, one turn per identity), so two servers of the same content never
/// build two copies either, while a server announcing other content (an attacker's huge
/// table, say) never makes the others wait.
#[derive(Clone, Default, Debug)]
pub(crate) struct Manifests {
    known: Arc<Mutex<HashMap<Digest, Arc<Manifest>>>>,
    assembling: Arc<Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Manifests {
    /// The table of `identity`, if the job holds it.
    pub fn get(&self, identity: &Digest) -> Option<Arc<Manifest>> {
        self.known
            .lock()
            .ok()
            .and_then(|m| m.get(identity).cloned())
    }

    /// Records a manifest (the job's adopted one, or one a connection assembled); answers
    /// the one the job keeps for that identity.
    pub fn insert(&self, manifest: Arc<Manifest>) -> Arc<Manifest> {
        match self.known.lock() {
            Ok(mut known) => known.entry(manifest.identity()).or_insert(manifest).clone(),
            Err(_) => manifest,
        }
    }

    /// The lock whose holder assembles the table of `identity` (other contents' turns are
    /// independent).
    pub fn turn(&self, identity: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        match self.assembling.lock() {
            Ok(mut turns) => turns.entry(*identity).or_default().clone(),
            // A panicked holder left plain data: a fresh turn is as good.
            Err(_) => Arc::default(),
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.known.lock().map_or(0, |k| k.len())
    }
}
