//! Recycled segment buffers. Every segment a client receives needs a buffer of up to the
//! segment size; allocating (and zeroing, and for large sizes mmap-ing and page-faulting)
//! a fresh one per segment costs more than copying the data. Connections take buffers from
//! the pool and the writer gives them back once the bytes are on disk.

use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub(crate) struct BufferPool {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` idle buffers.
    pub fn new(keep: usize) -> Self {
        BufferPool {
            free: Arc::new(Mutex::new(Vec::new())),
            keep,
        }
    }

    /// A buffer of exactly `len` bytes. Recycled buffers are not zeroed again: every byte is
    /// overwritten by the segment read into it.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let recycled = self.free.lock().ok().and_then(|mut free| free.pop());
        let mut buf = recycled.unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Returns a buffer for reuse (dropped if the pool is full).
    pub fn give(&self, buf: Vec<u8>) {
        if let Ok(mut free) = self.free.lock() {
            if free.len() < self.keep {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_sized() {
        let pool = BufferPool::new(2);
        let mut a = pool.take(10);
        a[0] = 7;
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(4);
        assert_eq!(b.len(), 4);
        assert_eq!(b.as_ptr(), ptr, "the same allocation came back");
        pool.give(vec![0; 1]);
        pool.give(vec![0; 1]);
        pool.give(vec![0; 1]);
        assert_eq!(pool.free.lock().unwrap().len(), 2, "bounded");
    }
}
