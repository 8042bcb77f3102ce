//! Builds the manifest of a served file: BLAKE3 per segment and the root. Hashing a large
//! file takes seconds, so results are cached in the state dir, keyed by path, size, mtime,
//! inode and segment size: a daemon restart or a second group on the same file does not
//! re-hash. A cache entry carries its own checksum; a damaged one is recomputed, never trusted.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use arsnet_proto::manifest::{digest_segment, segment_count, segment_range};
use arsnet_proto::{Digest, Manifest};
use tracing::{debug, info, warn};

/// Version 2: digests are BLAKE3 chaining values (wire v2); older caches are not reused.
const CACHE_MAGIC: &[u8; 8] = b"ARSNDGS2";

/// Computes (or loads from `cache_dir`) the manifest of `file` served under `name`.
pub fn build_manifest(
    file: &File,
    path: &Path,
    name: String,
    segment_size: u32,
    cache_dir: Option<&Path>,
) -> std::io::Result<Manifest> {
    let meta = file.metadata()?;
    let size = meta.len();
    let cache_path = cache_dir.map(|dir| dir.join(cache_file_name(path, &meta, segment_size)));
    let count = segment_count(size, segment_size);
    let cached = cache_path.as_deref().and_then(|p| load_cache(p, count));
    let digests = match cached {
        Some(digests) => {
            debug!(path = %path.display(), "segment digests loaded from cache");
            digests
        }
        None => {
            let started = std::time::Instant::now();
            let digests = hash_segments(file, size, segment_size)?;
            info!(
                path = %path.display(),
                segments = digests.len(),
                secs = started.elapsed().as_secs_f32(),
                "hashed file"
            );
            if let Some(cache_path) = &cache_path {
                if let Err(e) = store_cache(cache_path, &digests) {
                    warn!(path = %cache_path.display(), error = %e, "could not write digest cache");
                }
            }
            digests
        }
    };
    Manifest::new(name, size, segment_size, digests)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn cache_file_name(path: &Path, meta: &std::fs::Metadata, segment_size: u32) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(path.as_os_str().as_encoded_bytes());
    for field in [
        meta.len(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ino(),
        meta.dev(),
        u64::from(segment_size),
    ] {
        hasher.update(&field.to_be_bytes());
    }
    format!("{}.digests", &hasher.finalize().to_hex()[..32])
}

/// Hashes every segment, spreading segments over the machine's cores. Each worker reads
/// into one reused buffer, so memory stays at cores × segment size.
fn hash_segments(file: &File, size: u64, segment_size: u32) -> std::io::Result<Vec<Digest>> {
    let count = segment_count(size, segment_size);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8) as u64;
    let mut digests = vec![[0u8; 32]; count as usize];
    let per_worker = count.div_ceil(workers.max(1)).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = digests
            .chunks_mut(per_worker as usize)
            .enumerate()
            .map(|(w, out)| {
                scope.spawn(move || -> std::io::Result<()> {
                    let mut buf = vec![0u8; segment_size as usize];
                    for (i, slot) in out.iter_mut().enumerate() {
                        let index = w as u64 * per_worker + i as u64;
                        let (offset, len) = segment_range(size, segment_size, index);
                        let buf = &mut buf[..len as usize];
                        file.read_exact_at(buf, offset)?;
                        *slot = digest_segment(size, segment_size, index, buf);
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| std::io::Error::other("hashing thread panicked"))?
        })
    })?;
    Ok(digests)
}

fn load_cache(path: &Path, count: u64) -> Option<Vec<Digest>> {
    let bytes = std::fs::read(path).ok()?;
    let expected_len = 8 + 8 + 32 * count as usize + 32;
    if bytes.len() != expected_len || &bytes[..8] != CACHE_MAGIC {
        return None;
    }
    let (body, check) = bytes.split_at(expected_len - 32);
    if blake3::hash(body).as_bytes() != check {
        return None;
    }
    if u64::from_be_bytes(body[8..16].try_into().ok()?) != count {
        return None;
    }
    body[16..]
        .chunks_exact(32)
        .map(|c| c.try_into().ok())
        .collect()
}

fn store_cache(path: &Path, digests: &[Digest]) -> std::io::Result<()> {
    let mut body = Vec::with_capacity(16 + digests.len() * 32 + 32);
    body.extend_from_slice(CACHE_MAGIC);
    body.extend_from_slice(&(digests.len() as u64).to_be_bytes());
    for d in digests {
        body.extend_from_slice(d);
    }
    let check = *blake3::hash(&body).as_bytes();
    body.extend_from_slice(&check);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp: PathBuf = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_and_damage_is_recomputed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let cache = dir.path().join("cache");
        let m1 = build_manifest(&file, &path, "data.bin".into(), 4096, Some(&cache)).unwrap();
        assert_eq!(m1.segment_count(), 25);
        assert!(m1.verify_segment(24, &data[24 * 4096..]));
        let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
        assert_eq!(entries.len(), 1);
        let entry = entries[0].as_ref().unwrap().path();
        // A damaged cache entry is ignored and rewritten.
        let mut bytes = std::fs::read(&entry).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&entry, &bytes).unwrap();
        assert!(load_cache(&entry, 25).is_none());
        let m2 = build_manifest(&file, &path, "data.bin".into(), 4096, Some(&cache)).unwrap();
        assert_eq!(m1, m2);
        assert!(load_cache(&entry, 25).is_some());
    }
}
