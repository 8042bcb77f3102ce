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

    /// In a job whose sources all claim no identity (mirrors alone), a claim's vote: a
    /// layout with no identity (`Manifest::unproven`) of its file's size, saved under
    /// `name`, elected like a server's header (a strict majority of those that answer), the
    /// whole file checked against the pin at the end. `Err` says why this claim is refused
    /// instead; `Ok(None)` for a claim that carries its own identity (it votes with that).
    pub fn size_vote(
        &self,
        name: Option<String>,
        pin: Option<Pin>,
    ) -> Result<Option<Arc<Manifest>>, String> {
        let Claim::Mirror(file) = self else {
            return Ok(None);
        };
        // A truncated or half-synced mirror answers like an empty file (200, no body): with
        // a pin that is not the empty file's, that answer is wrong, never a vote.
        if file.size == 0 && pin.is_some_and(|pin| !pins_the_empty_file(pin)) {
            return Err("answers as if the file were empty, which the pin rules out".into());
        }
        let name = name.ok_or("the mirror URL names no file to save under")?;
        Manifest::unproven(name, file.size)
            .map(|manifest| Some(Arc::new(manifest)))
            .map_err(|e| format!("its file cannot be fetched: {e}"))
    }
}

/// Whether `pin` names the empty file (so that a mirror saying the file is empty may be
/// right).
fn pins_the_empty_file(pin: Pin) -> bool {
    use sha2::Digest as _;
    match pin {
        Pin::Blake3(d) => d == *blake3::hash(b"").as_bytes(),
        Pin::Sha256(d) => d[..] == sha2::Sha256::digest(b"")[..],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(size: u64) -> Claim {
        Claim::Mirror(Arc::new(MirrorFile {
            size,
            etag: None,
            last_modified: None,
        }))
    }

    #[test]
    fn a_size_only_claim_votes_with_its_size_unless_the_pin_rules_it_out() {
        let name = || Some("x.img".to_string());
        let vote = mirror(3 << 20).size_vote(name(), None).unwrap().unwrap();
        assert_eq!((vote.name.as_str(), vote.size), ("x.img", 3 << 20));
        let other = Pin::Blake3(*blake3::hash(b"not empty").as_bytes());
        let empty = Pin::Blake3(*blake3::hash(b"").as_bytes());
        let err = mirror(0).size_vote(name(), Some(other)).unwrap_err();
        assert!(err.contains("empty"), "{err}");
        assert_eq!(
            mirror(0)
                .size_vote(name(), Some(empty))
                .unwrap()
                .unwrap()
                .size,
            0,
            "an empty file pinned as empty is a vote"
        );
        assert!(
            mirror(1).size_vote(None, None).is_err(),
            "no name to save under"
        );
        let manifest = Arc::new(Manifest::unproven("y".into(), 1).unwrap());
        assert!(
            Claim::Manifest(manifest)
                .size_vote(name(), None)
                .unwrap()
                .is_none(),
            "a claim with its own identity votes with that"
        );
    }
}
