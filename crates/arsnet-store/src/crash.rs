//! `CrashFile`: an in-memory [`BlockFile`] that models what survives a power cut, so tests
//! can prove the store's write order. It exists only for tests (feature `test-util`).
//!
//! The model: a file has a *durable* image (what is on the platter) and a *volatile* image
//! (what reads see). Writes and `set_len` change the volatile image and are remembered as
//! pending; `sync_data` / `sync_all` make the volatile image durable and forget the pending
//! operations. [`CrashFile::crash`] returns the content after a power cut: the durable image
//! plus a seeded arbitrary subset of the pending operations, in order, each write either
//! lost, applied whole, or torn (only a prefix or only a suffix of its bytes lands).
//!
//! A shared [`PowerCut`] counts mutating operations (writes, `set_len`, syncs) across all
//! files that share it and fails every operation from a chosen one on. The write that hits
//! the cut is left pending (it was in flight), so a crash may tear it. This lets a test stop
//! the store at any point — for instance between the dump's fdatasync and the journal append.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::backend::BlockFile;

/// Largest image a `CrashFile` will hold; larger lengths fail with `FileTooLarge`.
const MAX_IMAGE: u64 = 1 << 32;

/// A power switch shared by several `CrashFile`s: after a budget of mutating operations,
/// every further mutating operation fails with "simulated power cut".
#[derive(Debug, Clone)]
pub struct PowerCut(Arc<PowerState>);

#[derive(Debug)]
struct PowerState {
    remaining: AtomicU64,
    attempted: AtomicU64,
}

impl PowerCut {
    /// Power that never fails.
    pub fn never() -> Self {
        Self::after(u64::MAX)
    }

    /// Power that lets `ops` mutating operations succeed and fails the rest.
    pub fn after(ops: u64) -> Self {
        PowerCut(Arc::new(PowerState {
            remaining: AtomicU64::new(ops),
            attempted: AtomicU64::new(0),
        }))
    }

    /// Resets the budget: `ops` more mutating operations succeed (`u64::MAX`: never cut).
    pub fn set_remaining(&self, ops: u64) {
        self.0.remaining.store(ops, Ordering::SeqCst);
    }

    /// Mutating operations attempted so far (including failed ones).
    pub fn attempted(&self) -> u64 {
        self.0.attempted.load(Ordering::SeqCst)
    }

    /// True once an operation has been refused.
    pub fn is_cut(&self) -> bool {
        self.0.remaining.load(Ordering::SeqCst) == 0
    }

    /// Consumes one operation of budget; false when the power is (now) off.
    fn take(&self) -> bool {
        self.0.attempted.fetch_add(1, Ordering::SeqCst);
        self.0
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => None,
                u64::MAX => Some(u64::MAX),
                n => Some(n - 1),
            })
            .is_ok()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inner {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    pending: Vec<Op>,
}

/// An in-memory file with a durable and a volatile image. Handles made with
/// [`CrashFile::handle`] share the same file, so a test can keep one while the store owns
/// another.
#[derive(Debug)]
pub struct CrashFile {
    inner: Arc<Mutex<Inner>>,
    power: PowerCut,
}

impl Default for CrashFile {
    fn default() -> Self {
        Self::new()
    }
}

impl CrashFile {
    /// An empty file on power that never fails.
    pub fn new() -> Self {
        Self::from_bytes(Vec::new())
    }

    /// A file whose durable (and volatile) content is `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        CrashFile {
            inner: Arc::new(Mutex::new(Inner {
                durable: bytes.clone(),
                volatile: bytes,
                pending: Vec::new(),
            })),
            power: PowerCut::never(),
        }
    }

    /// The same file, on the given power switch.
    pub fn with_power(self, power: PowerCut) -> Self {
        CrashFile {
            inner: self.inner,
            power,
        }
    }

    /// Another handle on the same file (same images, same power switch).
    pub fn handle(&self) -> CrashFile {
        CrashFile {
            inner: Arc::clone(&self.inner),
            power: self.power.clone(),
        }
    }

    /// What is durable now.
    pub fn durable(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// What reads see now.
    pub fn volatile(&self) -> Vec<u8> {
        self.lock().volatile.clone()
    }

    /// Number of operations not yet made durable.
    pub fn pending_ops(&self) -> usize {
        self.lock().pending.len()
    }

    /// The file as found after a power cut now: the durable image plus a subset of the
    /// pending operations chosen by `seed`, writes possibly torn at any byte. The result is
    /// a fresh, fully durable file on power that never fails.
    pub fn crash(&self, seed: u64) -> CrashFile {
        let inner = self.lock();
        let mut rng = SplitMix64(seed);
        let mut image = inner.durable.clone();
        for op in &inner.pending {
            match op {
                Op::SetLen(len) => {
                    if rng.next() % 2 == 0 {
                        // Lengths were bounded by MAX_IMAGE when the op was accepted.
                        image.resize(usize::try_from(*len).unwrap_or(0), 0);
                    }
                }
                Op::Write { offset, data } => {
                    let len = data.len() as u64;
                    let (from, to) = match rng.next() % 4 {
                        0 => (0, 0),
                        1 => (0, len),
                        2 => (0, rng.next() % len.max(1)),
                        _ => (rng.next() % len.max(1), len),
                    };
                    if from < to {
                        let slice = data.get(from as usize..to as usize).unwrap_or(&[]);
                        apply_write(&mut image, offset + from, slice);
                    }
                }
            }
        }
        CrashFile::from_bytes(image)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn power_cut() -> io::Error {
    io::Error::other("simulated power cut")
}

fn check_size(end: u64) -> io::Result<()> {
    if end > MAX_IMAGE {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            "CrashFile is limited to 4 GiB",
        ));
    }
    Ok(())
}

/// Writes `data` at `offset`, zero-extending the image. Callers checked the size bound.
fn apply_write(image: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let start = offset as usize;
    let end = start + data.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    if let Some(dst) = image.get_mut(start..end) {
        dst.copy_from_slice(data);
    }
}

impl BlockFile for CrashFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let inner = self.lock();
        let len = inner.volatile.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let start = offset as usize;
        let n = buf.len().min(inner.volatile.len() - start);
        buf[..n].copy_from_slice(&inner.volatile[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
        check_size(end)?;
        let powered = self.power.take();
        let mut inner = self.lock();
        // A write that hits the cut was in flight: it stays pending, so a crash may tear it.
        inner.pending.push(Op::Write {
            offset,
            data: buf.to_vec(),
        });
        if !powered {
            return Err(power_cut());
        }
        apply_write(&mut inner.volatile, offset, buf);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        check_size(len)?;
        if !self.power.take() {
            return Err(power_cut());
        }
        let mut inner = self.lock();
        inner.pending.push(Op::SetLen(len));
        inner.volatile.resize(len as usize, 0);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().volatile.len() as u64)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.sync_all()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        if !self.power.take() {
            return Err(power_cut());
        }
        let mut inner = self.lock();
        inner.durable = inner.volatile.clone();
        inner.pending.clear();
        Ok(())
    }
}

/// A tiny deterministic generator (SplitMix64), so crash choices replay from a seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_makes_writes_survive() {
        let mut f = CrashFile::new();
        f.write_all_at(b"abc", 0).unwrap();
        f.sync_data().unwrap();
        f.write_all_at(b"XYZ", 1).unwrap();
        assert_eq!(f.volatile(), b"aXYZ");
        assert_eq!(f.durable(), b"abc");
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let after = f.crash(seed).volatile();
            assert!(after.starts_with(b"a"), "{after:?}");
            seen.insert(after);
        }
        // Lost, whole, and torn outcomes all occur.
        assert!(seen.contains(b"abc".as_slice()));
        assert!(seen.contains(b"aXYZ".as_slice()));
        assert!(seen.len() > 2, "{seen:?}");
    }

    #[test]
    fn power_cut_fails_later_ops_and_leaves_write_pending() {
        let power = PowerCut::after(1);
        let mut f = CrashFile::new().with_power(power.clone());
        f.write_all_at(b"ok", 0).unwrap();
        assert!(f.write_all_at(b"in-flight", 2).is_err());
        assert!(f.sync_all().is_err());
        assert!(power.is_cut());
        assert_eq!(power.attempted(), 3);
        assert_eq!(f.durable(), b"");
        assert_eq!(f.pending_ops(), 2);
        let handle = f.handle();
        assert_eq!(handle.volatile(), b"ok");
    }
}
