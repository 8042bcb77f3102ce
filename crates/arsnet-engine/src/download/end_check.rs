//! The whole-file check of a job whose segments no digest table proved (HTTP mirrors
//! alone): the finished dump is read once through its descriptor, hashed as the user's pin
//! asks (SHA-256 or BLAKE3), and — in the same pass — cut into the segments' BLAKE3 digests,
//! so that a mismatch can be traced to the segments, and the sources, that caused it
//! (`repair`).

use arsnet_proto::control::Pin;
use arsnet_proto::{Digest, Manifest};
use arsnet_store::{DownloadStore, StoreError};

/// A finished dump that is not the pinned content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mismatch {
    pub algorithm: &'static str,
    pub got: Digest,
    pub pinned: Digest,
    /// The BLAKE3 digest (chaining value) of each segment as it is in the dump.
    pub segments: Vec<Digest>,
}

/// Hashes the dump of `store` against `pin`: `None` when it matches.
pub(crate) fn check(store: &DownloadStore, pin: Pin) -> Result<Option<Mismatch>, StoreError> {
    use sha2::Digest as _;
    let manifest = store.manifest().clone();
    let mut segments = SegmentDigests::new(&manifest);
    let mut sha = sha2::Sha256::new();
    let mut blake = blake3::Hasher::new();
    store.scan_dump(|bytes| {
        match pin {
            Pin::Sha256(_) => sha.update(bytes),
            Pin::Blake3(_) => {
                blake.update(bytes);
            }
        }
        segments.update(bytes);
    })?;
    let (algorithm, got, pinned) = match pin {
        Pin::Sha256(pinned) => ("SHA-256", sha.finalize().into(), pinned),
        Pin::Blake3(pinned) => ("BLAKE3", *blake.finalize().as_bytes(), pinned),
    };
    Ok((got != pinned).then(|| Mismatch {
        algorithm,
        got,
        pinned,
        segments: segments.finish(),
    }))
}

/// Segment digests of a file fed as a stream of chunks of any size.
struct SegmentDigests {
    manifest: Manifest,
    next: u64,
    hasher: Option<blake3::Hasher>,
    left: u64,
    done: Vec<Digest>,
}

impl SegmentDigests {
    fn new(manifest: &Manifest) -> Self {
        let mut digests = SegmentDigests {
            manifest: manifest.clone(),
            next: 0,
            hasher: None,
            left: 0,
            done: Vec::with_capacity(manifest.digests.len()),
        };
        digests.start_next();
        digests
    }

    fn start_next(&mut self) {
        self.hasher = self.manifest.segment_hasher(self.next);
        self.left = match self.hasher {
            Some(_) => u64::from(self.manifest.segment_range(self.next).1),
            None => 0,
        };
    }

    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let Some(hasher) = self.hasher.as_mut() else {
                // Past the last segment: a dump longer than the file adds nothing.
                return;
            };
            let take = bytes
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            hasher.update(&bytes[..take]);
            bytes = &bytes[take..];
            self.left -= take as u64;
            if self.left == 0 {
                self.done.push(self.manifest.digest_of(hasher));
                self.next += 1;
                self.start_next();
            }
        }
    }

    fn finish(self) -> Vec<Digest> {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arsnet_proto::manifest::digest_all;

    #[test]
    fn digests_of_a_stream_cut_anywhere_are_the_segments_digests() {
        let data: Vec<u8> = (0..(3 << 20) + 12345u32).map(|i| (i % 251) as u8).collect();
        let manifest = Manifest::unproven("f".into(), data.len() as u64).unwrap();
        let expected = digest_all(&data, manifest.segment_size);
        for cut in [1usize, 4096, 1 << 20, 777_777] {
            let mut digests = SegmentDigests::new(&manifest);
            for chunk in data.chunks(cut) {
                digests.update(chunk);
            }
            assert_eq!(digests.finish(), expected, "chunks of {cut}");
        }
    }
}
