//! Builds the manifest of a served file: BLAKE3 per segment and the root. Hashing a large
//! file takes seconds, so results are cached in the state dir, keyed by path, size, mtime,
//! ctime, inode, device and segment size: a daemon restart or a second group on the same file
//! does not re-hash. ctime is in the key because mtime can be put back after an edit
//! (`touch -r`) and ctime cannot. A cache entry carries its own checksum; a damaged one is
//! recomputed, never trusted.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use arsnet_proto::manifest::{digest_segment, segment_count, segment_range};
use arsnet_proto::{Digest, Manifest};
use tracing::{debug, info, warn};

/// Version 2: digests are BLAKE3 chaining values (wire v2); older caches are not reused.
const CACHE_MAGIC: &[u8; 8] = b"ARSNDGS2";

/// What identifies the bytes of a file without reading them: every field an in-place edit,
/// a replacement or a copy elsewhere changes. ctime matters most: an editor (or an attacker)
/// can restore size and mtime after an edit, but any write, and any restoring of mtime,
/// sets ctime to the current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    pub size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
    dev: u64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        FileStamp {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

/// Computes (or loads from `cache_dir`) the manifest of `file` served under `name`.
pub fn build_manifest(
    file: &File,
    path: &Path,
    name: String,
    segment_size: u32,
    cache_dir: Option<&Path>,
) -> std::io::Result<Manifest> {
    build_stamped_manifest(file, path, name, segment_size, cache_dir).map(|(manifest, _)| manifest)
}

/// [`build_manifest`], also returning the stamp of the file as it was when hashing began:
/// if the file changes while (or after) it is hashed, the stamp no longer matches and the
/// server refuses to serve those digests.
pub(crate) fn build_stamped_manifest(
    file: &File,
    path: &Path,
    name: String,
    segment_size: u32,
    cache_dir: Option<&Path>,
) -> std::io::Result<(Manifest, FileStamp)> {
    let stamp = FileStamp::of(&file.metadata()?);
    let size = stamp.size;
    let cache_path = cache_dir.map(|dir| dir.join(cache_file_name(path, &stamp, segment_size)));
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
            // Digests of a file that changed while it was read may describe no version of
            // it: never keep them for later. (Serving them is refused by the stamp check.)
            let still = FileStamp::of(&file.metadata()?) == stamp;
            match &cache_path {
                Some(cache_path) if still => {
                    if let Err(e) = store_cache(cache_path, &digests) {
                        warn!(path = %cache_path.display(), error = %e, "could not write digest cache");
                    }
                }
                Some(_) => debug!(path = %path.display(), "file changed while hashed: not cached"),
                None => {}
            }
            digests
        }
    };
    let manifest = Manifest::new(name, size, segment_size, digests)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((manifest, stamp))
}

fn cache_file_name(path: &Path, stamp: &FileStamp, segment_size: u32) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(path.as_os_str().as_encoded_bytes());
    for field in [
        stamp.size,
        stamp.mtime.0 as u64,
        stamp.mtime.1 as u64,
        stamp.ctime.0 as u64,
        stamp.ctime.1 as u64,
        stamp.ino,
        stamp.dev,
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

    #[test]
    fn an_edit_that_restores_size_and_mtime_is_not_served_from_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        std::fs::write(&path, vec![1u8; 50_000]).unwrap();
        let cache = dir.path().join("cache");
        let file = File::open(&path).unwrap();
        let (old, stamp) =
            build_stamped_manifest(&file, &path, "data.bin".into(), 4096, Some(&cache)).unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        // Same size, same inode, mtime put back: only ctime differs. The pause only moves
        // the edit past a coarse file-system clock tick, so that ctime can differ at all.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.write_all_at(&[2u8; 100], 10_000).unwrap();
        writer
            .set_times(std::fs::FileTimes::new().set_modified(mtime))
            .unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.len(), meta.modified().unwrap()), (50_000, mtime));
        assert_ne!(FileStamp::of(&meta), stamp, "the edit changes the stamp");
        let (new, _) =
            build_stamped_manifest(&file, &path, "data.bin".into(), 4096, Some(&cache)).unwrap();
        assert_ne!(
            old.root, new.root,
            "digests recomputed, not loaded from the cache"
        );
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
    }
}
