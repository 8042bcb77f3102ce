//! The whole-file check of a job whose segments no digest table proved (HTTP mirrors
//! alone), or whose user pinned a SHA-256.
//!
//! Two halves with one authority. [`RunningCheck`] hashes the file as the pin asks *while it
//! downloads*, segment by segment in file order (a segment as it is written when it is the
//! next one, else read back from the dump once the ones before it are in), so that a
//! matching file is published without a second pass over it. Only a match is taken from
//! it: anything else — a mismatch, or a hashed segment written again (a repair) — goes to
//! [`check`], which reads the finished dump once through its descriptor, hashes it and, in
//! the same pass, cuts it into the segments' BLAKE3 digests, so that a mismatch can be
//! traced to the segments, and the sources, that caused it (`repair`).

use std::collections::BTreeSet;

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
    let manifest = store.manifest().clone();
    let mut segments = SegmentDigests::new(&manifest);
    let mut hasher = PinHasher::new(pin);
    store.scan_dump(|bytes| {
        hasher.update(bytes);
        segments.update(bytes);
    })?;
    let (algorithm, got, pinned) = hasher.finish();
    Ok((got != pinned).then(|| Mismatch {
        algorithm,
        got,
        pinned,
        segments: segments.finish(),
    }))
}

/// The hash a pin names, fed in file order.
enum PinHasher {
    Sha256(Box<sha2::Sha256>, Digest),
    Blake3(Box<blake3::Hasher>, Digest),
}

impl PinHasher {
    fn new(pin: Pin) -> Self {
        use sha2::Digest as _;
        match pin {
            Pin::Sha256(pinned) => PinHasher::Sha256(Box::new(sha2::Sha256::new()), pinned),
            Pin::Blake3(pinned) => PinHasher::Blake3(Box::new(blake3::Hasher::new()), pinned),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest as _;
        match self {
            PinHasher::Sha256(h, _) => h.update(bytes),
            PinHasher::Blake3(h, _) => {
                h.update(bytes);
            }
        }
    }

    /// `(algorithm, got, pinned)`.
    fn finish(self) -> (&'static str, Digest, Digest) {
        use sha2::Digest as _;
        match self {
            PinHasher::Sha256(h, pinned) => ("SHA-256", h.finalize().into(), pinned),
            PinHasher::Blake3(h, pinned) => ("BLAKE3", *h.finalize().as_bytes(), pinned),
        }
    }
}

/// Where [`RunningCheck`] reads back a segment that was written before its turn came.
pub(crate) trait SegmentReader {
    /// Fills `buf` with `segment` as it is in the dump; `Ok(false)` when it is not there yet.
    fn read_segment(&self, segment: u64, buf: &mut Vec<u8>) -> Result<bool, StoreError>;
}

impl SegmentReader for DownloadStore {
    fn read_segment(&self, segment: u64, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        DownloadStore::read_segment(self, segment, buf)
    }
}

/// Bytes read back and hashed per written segment at most, so that catching up after a late
/// segment closes a gap never holds the writer for long (the rest follows with the next
/// writes, or at the finish). Hashing runs at GB/s and downloads at tens to hundreds of
/// MB/s, so this closes a gap of tens of segments within a few writes: a smaller budget (it
/// was 4 segments) left up to ~80 MiB to hash after the last byte arrived, ~0.1 s on a job
/// of a few seconds. With a queue of written segments ahead of it, the writer holds ~20 ms.
pub(crate) const CATCH_UP_BYTES_PER_WRITE: u64 = 32 << 20;

/// The pin's hash of the segments `0..next`, advanced while the download runs.
pub(crate) struct RunningCheck {
    pin: Pin,
    hasher: PinHasher,
    next: u64,
    count: u64,
    /// Set when a segment already hashed is written again: the hash no longer describes the
    /// dump, and only the full [`check`] can say what it holds.
    spoiled: bool,
    /// Segments [`CATCH_UP_BYTES_PER_WRITE`] holds (at least one).
    per_write: u64,
    /// Segments to be written again (their source was convicted of lying): what the dump
    /// holds for them now is not the file, so the hash waits for their new bytes.
    awaiting: BTreeSet<u64>,
    buf: Vec<u8>,
}

impl RunningCheck {
    pub(crate) fn new(pin: Pin, manifest: &Manifest) -> Self {
        RunningCheck {
            pin,
            hasher: PinHasher::new(pin),
            next: 0,
            count: manifest.segment_count(),
            spoiled: false,
            per_write: (CATCH_UP_BYTES_PER_WRITE / u64::from(manifest.segment_size).max(1)).max(1),
            awaiting: BTreeSet::new(),
            buf: Vec::new(),
        }
    }

    /// The pin this hash is checked against.
    pub(crate) fn pin(&self) -> Pin {
        self.pin
    }

    /// `segments` will be written again: their bytes in the dump now are not the file. A
    /// hash that already took one in starts over (SHA-256 cannot take bytes back out); the
    /// catch-up reads the dump back again while the download runs, so that a repair while
    /// downloading does not end in a second pass over the whole file.
    pub(crate) fn redo(&mut self, segments: &[u64]) {
        if segments.iter().any(|&s| s < self.next) {
            self.hasher = PinHasher::new(self.pin);
            self.next = 0;
        }
        self.awaiting
            .extend(segments.iter().copied().filter(|&s| s < self.count));
    }

    /// `segment` was just written with `data`.
    pub(crate) fn on_written(&mut self, segment: u64, data: &[u8]) {
        self.awaiting.remove(&segment);
        if segment < self.next {
            self.spoiled = true;
        } else if segment == self.next && !self.spoiled {
            self.hasher.update(data);
            self.next += 1;
        }
    }

    /// Hashes as many further segments as one write may (see [`CATCH_UP_BYTES_PER_WRITE`]).
    pub(crate) fn catch_up_after_write(
        &mut self,
        dump: &impl SegmentReader,
    ) -> Result<(), StoreError> {
        self.catch_up(dump, self.per_write)
    }

    /// Hashes up to `budget` further segments that are already in the dump.
    pub(crate) fn catch_up(
        &mut self,
        dump: &impl SegmentReader,
        mut budget: u64,
    ) -> Result<(), StoreError> {
        while budget > 0 && self.next < self.count && !self.spoiled {
            if self.awaiting.contains(&self.next) || !dump.read_segment(self.next, &mut self.buf)? {
                return Ok(());
            }
            self.hasher.update(&self.buf);
            self.next += 1;
            budget -= 1;
        }
        Ok(())
    }

    /// Segments not hashed yet, and whether the hash was spoiled (for the log).
    pub(crate) fn lag(&self) -> (u64, bool) {
        (self.count - self.next, self.spoiled)
    }

    /// Every segment is in: whether the file is, beyond doubt, the pinned content. `false`
    /// does not mean it is not (the hash may be spoiled): ask [`check`] then.
    pub(crate) fn matches(mut self, dump: &impl SegmentReader) -> Result<bool, StoreError> {
        self.catch_up(dump, u64::MAX)?;
        if self.spoiled || self.next < self.count || !self.awaiting.is_empty() {
            return Ok(false);
        }
        let (_, got, pinned) = self.hasher.finish();
        Ok(got == pinned)
    }
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

    use proptest::prelude::*;

    /// A dump in memory: the segments written so far.
    struct Segments(Vec<Option<Vec<u8>>>);

    impl SegmentReader for Segments {
        fn read_segment(&self, segment: u64, buf: &mut Vec<u8>) -> Result<bool, StoreError> {
            match self.0.get(segment as usize) {
                Some(Some(data)) => {
                    buf.clone_from(data);
                    Ok(true)
                }
                _ => Ok(false),
            }
        }
    }

    /// A small layout and file: 4 KiB segments, the last one short.
    fn file() -> (Manifest, Vec<Vec<u8>>, Vec<u8>) {
        let data: Vec<u8> = (0..9 * 4096 + 100u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let manifest =
            Manifest::new("f".into(), data.len() as u64, 4096, digest_all(&data, 4096)).unwrap();
        let segments = data.chunks(4096).map(<[u8]>::to_vec).collect();
        (manifest, segments, data)
    }

    fn pins(data: &[u8]) -> [Pin; 2] {
        use sha2::Digest as _;
        [
            Pin::Sha256(sha2::Sha256::digest(data).into()),
            Pin::Blake3(*blake3::hash(data).as_bytes()),
        ]
    }

    /// Writes `order` (some already in the dump, as adopted ones are) with catch-up budget
    /// `budget`, then asks whether the file matches `pin`.
    fn run(pin: Pin, adopted: &[usize], order: &[usize], budget: u64) -> bool {
        let (manifest, segments, _) = file();
        let mut dump = Segments(vec![None; segments.len()]);
        for &i in adopted {
            dump.0[i] = Some(segments[i].clone());
        }
        let mut running = RunningCheck::new(pin, &manifest);
        for &i in order {
            dump.0[i] = Some(segments[i].clone());
            running.on_written(i as u64, &segments[i]);
            running.catch_up(&dump, budget).unwrap();
        }
        running.matches(&dump).unwrap()
    }

    proptest! {
        /// Whatever the order segments arrive in, and whichever were adopted, the running
        /// hash says "matches" exactly for the right pin.
        #[test]
        fn the_running_hash_matches_the_right_pin_in_any_order(
            order in Just((0..10usize).collect::<Vec<_>>()).prop_shuffle(),
            adopted in 0..10usize,
            budget in 0..5u64,
        ) {
            let (_, _, data) = file();
            let (adopted, written) = order.split_at(adopted);
            for pin in pins(&data) {
                prop_assert!(run(pin, adopted, written, budget));
            }
            for pin in pins(b"another file") {
                prop_assert!(!run(pin, adopted, written, budget));
            }
        }
    }

    #[test]
    fn a_hashed_segment_written_again_spoils_the_running_hash() {
        let (_, _, data) = file();
        let [sha, _] = pins(&data);
        // In order, then segment 3 again (a repair rewriting it, with the very same bytes
        // here): only the full check may answer now.
        let order = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3];
        assert!(!run(sha, &[], &order, 4));
        assert!(run(sha, &[], &order[..10], 4));
    }

    #[test]
    fn segments_to_be_written_again_are_hashed_only_with_their_new_bytes() {
        let (manifest, segments, data) = file();
        let [sha, _] = pins(&data);
        // Segments 0..6 arrive, 2 and 4 from a liar; the liar is found out after they were
        // hashed, and the good bytes follow.
        let mut dump = Segments(vec![None; segments.len()]);
        let mut running = RunningCheck::new(sha, &manifest);
        for (i, segment) in segments.iter().enumerate().take(6) {
            let mut bytes = segment.clone();
            if i == 2 || i == 4 {
                bytes[7] ^= 0xff;
            }
            dump.0[i] = Some(bytes.clone());
            running.on_written(i as u64, &bytes);
            running.catch_up(&dump, 4).unwrap();
        }
        running.redo(&[2, 4]);
        // The hash started over and stops before 2, whose dump bytes are still the lie.
        running.catch_up(&dump, 100).unwrap();
        assert_eq!(running.lag(), (8, false));
        for i in [2, 4, 6, 7, 8, 9] {
            dump.0[i] = Some(segments[i].clone());
            running.on_written(i as u64, &segments[i]);
            running.catch_up(&dump, 4).unwrap();
        }
        assert!(running.matches(&dump).unwrap());
    }

    #[test]
    fn a_segment_to_be_written_again_that_never_is_is_no_match() {
        let (manifest, segments, data) = file();
        let [sha, _] = pins(&data);
        let dump = Segments(segments.iter().cloned().map(Some).collect());
        let mut running = RunningCheck::new(sha, &manifest);
        running.catch_up(&dump, 3).unwrap();
        // Segment 5 (not hashed yet, right bytes in the dump) is to be written again: until
        // it is, the dump's bytes for it do not count.
        running.redo(&[5]);
        assert!(!running.matches(&dump).unwrap());
    }

    #[test]
    fn a_missing_segment_is_no_match() {
        let (_, _, data) = file();
        let [sha, blake] = pins(&data);
        let order = [0, 1, 2, 3, 4, 5, 6, 8, 9];
        assert!(!run(sha, &[], &order, 4));
        assert!(!run(blake, &[], &order, 4));
    }

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
