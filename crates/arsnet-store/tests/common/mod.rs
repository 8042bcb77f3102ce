//! Helpers shared by the integration tests: deterministic file contents and their manifests.
#![allow(dead_code)]

use arsnet_proto::manifest::digest_all;
use arsnet_proto::Manifest;

/// The smallest legal segment size keeps test files tiny.
pub const SEG: u32 = 4096;

/// The owner tag of the test's download job.
#[allow(dead_code)]
pub const TAG: [u8; 16] = [0x42; 16];

/// `len` pseudo-random bytes determined by `seed`.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The manifest of `data` under `name` with `SEG`-byte segments.
pub fn manifest(name: &str, data: &[u8]) -> Manifest {
    let digests = digest_all(data, SEG);
    Manifest::new(name.to_owned(), data.len() as u64, SEG, digests).unwrap()
}

/// Segment `index` of `data`.
pub fn segment<'a>(m: &Manifest, data: &'a [u8], index: u64) -> &'a [u8] {
    let (offset, len) = m.segment_range(index);
    &data[offset as usize..offset as usize + len as usize]
}

/// True when `image` holds segment `index` of `m` at its offset.
pub fn image_has_segment(m: &Manifest, image: &[u8], index: u64) -> bool {
    let (offset, len) = m.segment_range(index);
    let (start, end) = (offset as usize, offset as usize + len as usize);
    end <= image.len() && m.verify_segment(index, &image[start..end])
}
