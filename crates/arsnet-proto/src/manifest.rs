//! The manifest: what a served file is (name, size, segment layout) and what its content must
//! hash to. The root is the file's real BLAKE3 hash, the very digest `b3sum FILE` prints, so
//! a user can pin a download to it with a standard tool. Each segment's digest is the BLAKE3
//! chaining value of that segment as a subtree of the file's hash tree (blake3's `hazmat`
//! module), so every segment stays verifiable on its own and the digests combine into the
//! root. That needs power-of-two segment sizes (segments are then whole subtrees). A file of
//! one segment has the root itself as its only digest. Servers build the manifest, send it
//! in the wire header, and clients compare it across servers and keep it in their journal.

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

use crate::limits::{
    DEFAULT_SEGMENT_SIZE, MAX_SEGMENTS, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, TARGET_MAX_SEGMENTS,
};
use crate::name::{validate_file_name, NameError};

/// A BLAKE3 digest.
pub type Digest = [u8; 32];

/// A random value naming one download job: its partial files carry it, so that no other
/// job adopts or removes them.
pub type JobTag = [u8; 16];

/// Why a manifest is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("unsafe file name: {0}")]
    Name(#[from] NameError),
    #[error("segment size {0} is not a power of two in {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}")]
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

    /// The manifest of a file known only by its size and name (a job whose sources are all
    /// HTTP mirrors): a digest table of zeros and the root that table gives. No file has
    /// that table (its chaining values would all be zero), so it is a layout with no
    /// identity: its segments cannot be checked one by one, and the job checks the whole
    /// file against the user's pin before publishing instead. See [`Manifest::is_unproven`].
    pub fn unproven(name: String, size: u64) -> Result<Self, ManifestError> {
        let segment_size = choose_segment_size(size);
        let count = segment_count(size, segment_size);
        check_layout(size, segment_size, count)?;
        let digests = vec![[0u8; 32]; usize::try_from(count).unwrap_or(usize::MAX)];
        Manifest::new(name, size, segment_size, digests)
    }

    /// Whether this is an [`Manifest::unproven`] layout: a zero digest table. An ArsNet
    /// server announcing one is refused (it would switch verification off); an empty file
    /// has no digests and is proven by its root alone.
    pub fn is_unproven(&self) -> bool {
        !self.digests.is_empty() && self.digests.iter().all(|d| *d == [0u8; 32])
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
        let Some(mut hasher) = self.segment_hasher(index) else {
            return false;
        };
        if data.len() as u64 != u64::from(self.segment_range(index).1) {
            return false;
        }
        hasher.update(data);
        self.check_segment(index, &hasher)
    }

    /// A hasher positioned for segment `index` (None when out of range): feed it exactly the
    /// segment's bytes (never more: BLAKE3 panics past a subtree's end), then
    /// [`Manifest::check_segment`]. Lets a connection hash bytes as they arrive.
    pub fn segment_hasher(&self, index: u64) -> Option<blake3::Hasher> {
        if index >= self.segment_count() {
            return None;
        }
        let mut hasher = blake3::Hasher::new();
        if self.segment_count() > 1 {
            hasher.set_input_offset(self.segment_range(index).0);
        }
        Some(hasher)
    }

    /// True when `hasher` (from [`Manifest::segment_hasher`], fed the segment's bytes) matches
    /// segment `index`'s digest.
    pub fn check_segment(&self, index: u64, hasher: &blake3::Hasher) -> bool {
        let Some(expected) = self.digests.get(index as usize) else {
            return false;
        };
        if hasher.count() != u64::from(self.segment_range(index).1) {
            return false;
        }
        segment_digest_of(hasher, self.segment_count()) == *expected
    }

    /// The digest of the bytes `hasher` (from [`Manifest::segment_hasher`]) was fed: what
    /// a segment's digest is when they are the segment's content.
    pub fn digest_of(&self, hasher: &blake3::Hasher) -> Digest {
        segment_digest_of(hasher, self.segment_count())
    }

    /// What two servers must agree on to serve segments of one download: name, size,
    /// segment size and root (which covers every digest). Two servers agree iff their
    /// identities are equal.
    pub fn identity(&self) -> Digest {
        identity_of(&self.name, self.size, self.segment_size, &self.root)
    }
}

/// [`Manifest::identity`] from the fields a wire header carries, so that a client can tell
/// which download a server offers before it receives the digest table.
pub fn identity_of(name: &str, size: u64, segment_size: u32, root: &Digest) -> Digest {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"arsnet-identity-v2");
    hasher.update(&(name.len() as u64).to_be_bytes());
    hasher.update(name.as_bytes());
    hasher.update(&size.to_be_bytes());
    hasher.update(&segment_size.to_be_bytes());
    hasher.update(root);
    *hasher.finalize().as_bytes()
}

/// The digest of a segment from its finished hasher: the chaining value when the file has
/// several segments, the root hash when the segment is the whole file.
fn segment_digest_of(hasher: &blake3::Hasher, segment_count: u64) -> Digest {
    if segment_count > 1 {
        hasher.finalize_non_root()
    } else {
        *hasher.finalize().as_bytes()
    }
}

/// Checks that `count` is the right number of segments for the layout, within limits.
pub fn check_layout(size: u64, segment_size: u32, count: u64) -> Result<(), ManifestError> {
    if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size)
        || !segment_size.is_power_of_two()
    {
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

/// The digest of segment `index` of a file of `size` bytes cut into `segment_size` segments
/// (`data` must be that whole segment): its BLAKE3 chaining value, or the root hash when the
/// file has one segment.
pub fn digest_segment(size: u64, segment_size: u32, index: u64, data: &[u8]) -> Digest {
    let count = segment_count(size, segment_size);
    let mut hasher = blake3::Hasher::new();
    if count > 1 {
        hasher.set_input_offset(segment_range(size, segment_size, index).0);
    }
    hasher.update(data);
    segment_digest_of(&hasher, count)
}

/// Every segment digest of `data` held in memory (tests and tools; servers hash files with
/// [`digest_segment`] segment by segment).
pub fn digest_all(data: &[u8], segment_size: u32) -> Vec<Digest> {
    let size = data.len() as u64;
    data.chunks(segment_size.max(1) as usize)
        .enumerate()
        .map(|(i, chunk)| digest_segment(size, segment_size, i as u64, chunk))
        .collect()
}

/// The root: the file's BLAKE3 hash (what `b3sum` prints), combined from the segment digests
/// along BLAKE3's tree (the left subtree holds the largest power of two of segments that is
/// smaller than the count). An empty file's root is the hash of nothing. A digest list that
/// does not fit the layout gives a root no honest file has (validate() refuses it first).
pub fn compute_root(size: u64, segment_size: u32, digests: &[Digest]) -> Digest {
    if segment_count(size, segment_size) != digests.len() as u64 {
        return [0u8; 32];
    }
    match digests {
        [] => *blake3::hash(&[]).as_bytes(),
        [only] => *only,
        _ => {
            let (left, right) = digests.split_at(left_subtree_segments(digests.len()));
            *merge_subtrees_root(&subtree(left), &subtree(right), Mode::Hash).as_bytes()
        }
    }
}

/// The largest power of two smaller than `count` (≥ 2): how many segments the left subtree
/// holds. Segments are power-of-two multiples of BLAKE3's chunk, so this matches BLAKE3's own
/// split of the file.
fn left_subtree_segments(count: usize) -> usize {
    (count / 2 + count % 2)
        .next_power_of_two()
        .min(count - 1)
        .max(1)
}

/// The chaining value of a non-root subtree made of `digests` (at least one).
fn subtree(digests: &[Digest]) -> Digest {
    match digests {
        [] => [0u8; 32],
        [only] => *only,
        _ => {
            let (left, right) = digests.split_at(left_subtree_segments(digests.len()));
            merge_subtrees_non_root(&subtree(left), &subtree(right), Mode::Hash)
        }
    }
}

/// Lower-case hex of a digest, as `b3sum` and `sha256sum` print it.
pub fn to_hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits (either case) into a digest.
pub fn from_hex(text: &str) -> Option<Digest> {
    let bytes = text.trim().as_bytes();
    // Digits only: `from_str_radix` alone would take "+f" as a pair.
    if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *slot = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_for(data: &[u8], segment_size: u32) -> Manifest {
        let size = data.len() as u64;
        let digests = data
            .chunks(segment_size as usize)
            .enumerate()
            .map(|(i, chunk)| digest_segment(size, segment_size, i as u64, chunk))
            .collect();
        Manifest::new("f".into(), size, segment_size, digests).unwrap()
    }

    #[test]
    fn root_is_the_files_blake3_hash() {
        // Around every interesting boundary: empty, one segment, exact powers of two of
        // segments, one byte over, and uneven counts whose tree is lopsided.
        let data: Vec<u8> = (0..(40 * 4096 + 17) as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in [
            0usize,
            1,
            4095,
            4096,
            4097,
            8192,
            3 * 4096,
            5 * 4096 + 1,
            16 * 4096,
            33 * 4096 - 5,
            data.len(),
        ] {
            let slice = &data[..len];
            for segment_size in [4096u32, 8192, 65536] {
                let m = manifest_for(slice, segment_size);
                assert_eq!(
                    m.root,
                    *blake3::hash(slice).as_bytes(),
                    "len {len} seg {segment_size}"
                );
                for i in 0..m.segment_count() {
                    let (offset, l) = m.segment_range(i);
                    let seg = &slice[offset as usize..offset as usize + l as usize];
                    assert!(m.verify_segment(i, seg));
                }
            }
        }
    }

    #[test]
    fn hex_round_trip() {
        let d = *blake3::hash(b"x").as_bytes();
        assert_eq!(from_hex(&to_hex(&d)), Some(d));
        assert_eq!(from_hex(&to_hex(&d).to_uppercase()), Some(d));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex(&"zz".repeat(32)), None);
        assert_eq!(from_hex(&"é".repeat(32)), None);
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
        // Segments must be whole BLAKE3 subtrees: powers of two only.
        assert!(check_layout(10_000, 6144, 2).is_err());
    }

    #[test]
    fn an_unproven_layout_is_valid_marked_and_never_a_real_files() {
        for size in [1u64, 4096, 5 << 20, (3 << 30) + 7] {
            let m = Manifest::unproven("x.img".into(), size).unwrap();
            assert!(m.validate().is_ok() && m.is_unproven(), "{size}");
            assert_eq!(m.segment_size, choose_segment_size(size));
            assert_eq!(m.segment_count(), segment_count(size, m.segment_size));
        }
        let data = vec![7u8; 3 << 20];
        assert!(!manifest_for(&data, 1 << 20).is_unproven());
        // An empty file has no digests: its root (the hash of nothing) proves it.
        assert!(!Manifest::unproven("e".into(), 0).unwrap().is_unproven());
        assert!(Manifest::unproven("../x".into(), 1).is_err());
    }

    #[test]
    fn hex_is_64_digits_and_nothing_else() {
        let digest = [0xabu8; 32];
        assert_eq!(from_hex(&to_hex(&digest)), Some(digest));
        assert_eq!(from_hex(&to_hex(&digest).to_uppercase()), Some(digest));
        let signed = format!("+b{}", &to_hex(&digest)[2..]);
        assert_eq!(from_hex(&signed), None);
        assert_eq!(from_hex(&to_hex(&digest)[1..]), None);
    }
}
