//! The manifest: what a served file is (name, size, segment layout) and what its content must
//! hash to (a BLAKE3 digest per segment and a root over them). Servers build it, send it in
//! the wire header, and clients compare it across servers and keep it in their journal.

use crate::limits::{
    DEFAULT_SEGMENT_SIZE, MAX_SEGMENTS, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, TARGET_MAX_SEGMENTS,
};
use crate::name::{validate_file_name, NameError};

/// A BLAKE3 digest.
pub type Digest = [u8; 32];

/// Domain separator hashed into every root so that a root cannot be confused with a digest.
const ROOT_CONTEXT: &[u8] = b"arsnet-root-v1";

/// Why a manifest is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("unsafe file name: {0}")]
    Name(#[from] NameError),
    #[error("segment size {0} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}")]
    SegmentSize(u32),
    #[error("segment count {count} does not match size {size} with segment size {segment_size}")]
    SegmentCount {
        size: u64,
        segment_size: u32,
        count: u64,
    },
    #[error("file has {0} segments, more than the limit of {MAX_SEGMENTS}")]
    TooManySegments(u64),
    #[error("digest list has {got} entries, expected {expected}")]
    DigestCount { expected: u64, got: u64 },
    #[error("root digest does not match the segment digests")]
    RootMismatch,
}

/// Everything a client must know about a served file before fetching any byte of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub size: u64,
    pub segment_size: u32,
    pub digests: Vec<Digest>,
    pub root: Digest,
}

impl Manifest {
    /// Builds a manifest from per-segment digests, computing the root.
    pub fn new(
        name: String,
        size: u64,
        segment_size: u32,
        digests: Vec<Digest>,
    ) -> Result<Self, ManifestError> {
        let root = compute_root(size, segment_size, &digests);
        let manifest = Manifest {
            name,
            size,
            segment_size,
            digests,
            root,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks every field against the limits and the root against the digests.
    pub fn validate(&self) -> Result<(), ManifestError> {
        validate_file_name(self.name.as_bytes())?;
        check_layout(self.size, self.segment_size, self.digests.len() as u64)?;
        if compute_root(self.size, self.segment_size, &self.digests) != self.root {
            return Err(ManifestError::RootMismatch);
        }
        Ok(())
    }

    pub fn segment_count(&self) -> u64 {
        self.digests.len() as u64
    }

    /// Byte offset and length of segment `index` (which must be < segment_count).
    pub fn segment_range(&self, index: u64) -> (u64, u32) {
        segment_range(self.size, self.segment_size, index)
    }

    /// True when `data` is exactly segment `index`'s content.
    pub fn verify_segment(&self, index: u64, data: &[u8]) -> bool {
        match self.digests.get(index as usize) {
            Some(expected) => digest_segment(data) == *expected,
            None => false,
        }
    }

    /// A digest identifying the whole download: name and root (which covers size, segment
    /// size and every digest). Two servers agree iff their identities are equal.
    pub fn identity(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"arsnet-identity-v1");
        hasher.update(&(self.name.len() as u64).to_be_bytes());
        hasher.update(self.name.as_bytes());
        hasher.update(&self.root);
        *hasher.finalize().as_bytes()
    }
}

/// Checks that `count` is the right number of segments for the layout, within limits.
pub fn check_layout(size: u64, segment_size: u32, count: u64) -> Result<(), ManifestError> {
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
        return Err(ManifestError::SegmentSize(segment_size));
    }
    let expected = segment_count(size, segment_size);
    if expected > MAX_SEGMENTS {
        return Err(ManifestError::TooManySegments(expected));
    }
    if count != expected {
        return Err(ManifestError::SegmentCount {
            size,
            segment_size,
            count,
        });
    }
    Ok(())
}

/// Number of segments of a file: the last one may be short; an empty file has none.
pub fn segment_count(size: u64, segment_size: u32) -> u64 {
    size.div_ceil(u64::from(segment_size.max(1)))
}

/// Byte offset and length of segment `index` in a file of `size` bytes.
pub fn segment_range(size: u64, segment_size: u32, index: u64) -> (u64, u32) {
    let offset = index.saturating_mul(u64::from(segment_size));
    let len = size.saturating_sub(offset).min(u64::from(segment_size));
    // `len` ≤ segment_size, which is a u32.
    (offset, len as u32)
}

/// The segment size a server uses for a file of `size` bytes: 1 MiB, doubled until the file
/// has at most 2^20 segments (so the digest table stays small), capped at the maximum.
pub fn choose_segment_size(size: u64) -> u32 {
    let mut segment_size = DEFAULT_SEGMENT_SIZE;
    while segment_size < MAX_SEGMENT_SIZE && segment_count(size, segment_size) > TARGET_MAX_SEGMENTS
    {
        segment_size *= 2;
    }
    segment_size
}

/// BLAKE3 of one segment's bytes.
pub fn digest_segment(data: &[u8]) -> Digest {
    *blake3::hash(data).as_bytes()
}

/// The root: BLAKE3 over a context string, the size, the segment size and every digest.
pub fn compute_root(size: u64, segment_size: u32, digests: &[Digest]) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(ROOT_CONTEXT);
    hasher.update(&size.to_be_bytes());
    hasher.update(&segment_size.to_be_bytes());
    for digest in digests {
        hasher.update(digest);
    }
    *hasher.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_for(data: &[u8], segment_size: u32) -> Manifest {
        let digests = data
            .chunks(segment_size as usize)
            .map(digest_segment)
            .collect();
        Manifest::new("f".into(), data.len() as u64, segment_size, digests).unwrap()
    }

    #[test]
    fn layout_of_odd_sizes() {
        assert_eq!(segment_count(0, 4096), 0);
        assert_eq!(segment_count(1, 4096), 1);
        assert_eq!(segment_count(4096, 4096), 1);
        assert_eq!(segment_count(4097, 4096), 2);
        assert_eq!(segment_range(4097, 4096, 1), (4096, 1));
        assert_eq!(segment_range(8192, 4096, 1), (4096, 4096));
    }

    #[test]
    fn verify_and_root() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let m = manifest_for(&data, 4096);
        assert_eq!(m.segment_count(), 3);
        assert!(m.verify_segment(2, &data[8192..]));
        assert!(!m.verify_segment(1, &data[8192..]));
        assert!(!m.verify_segment(3, &data[8192..]));
        let mut tampered = m.clone();
        tampered.digests[0][0] ^= 1;
        assert_eq!(tampered.validate(), Err(ManifestError::RootMismatch));
        let mut renamed = m.clone();
        renamed.name = "g".into();
        assert_ne!(renamed.identity(), m.identity());
    }

    #[test]
    fn segment_size_grows_for_huge_files() {
        assert_eq!(choose_segment_size(0), DEFAULT_SEGMENT_SIZE);
        assert_eq!(choose_segment_size(1 << 40), 1 << 20);
        assert_eq!(choose_segment_size((1 << 40) + 1), 2 << 20);
        assert_eq!(choose_segment_size(u64::MAX), MAX_SEGMENT_SIZE);
    }

    #[test]
    fn rejects_bad_layouts() {
        assert!(check_layout(10, 100, 1).is_err());
        assert!(check_layout(10_000, 4096, 2).is_err());
        assert!(check_layout(u64::MAX, MAX_SEGMENT_SIZE, 0).is_err());
        assert!(check_layout(10_000, 4096, 3).is_ok());
    }
}
