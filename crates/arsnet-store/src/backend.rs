//! The storage backend seam: the store does all its file I/O through [`BlockFile`], a
//! positioned-I/O file with explicit durability points. `std::fs::File` is the production
//! backend; `CrashFile` in the `crash` module (feature `test-util`) simulates power cuts so tests can
//! prove the write order keeps the journal honest.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A file addressed by offset, with the two durability barriers the store relies on.
pub trait BlockFile: Send {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at EOF).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when the file has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// A hint, not a barrier: start writing `len` bytes at `offset` to the disk now, so
    /// that the next [`BlockFile::sync_data`] has little left to wait for (the kernel would
    /// otherwise hold them dirty until the sync and then write them all at once). Nothing
    /// is durable until that sync; backends without such a call do nothing.
    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Makes written data durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes written data and metadata durable (fsync).
    fn sync_all(&mut self) -> io::Result<()>;
}

impl BlockFile for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return Ok(());
        };
        // SAFETY: a plain syscall on a descriptor this `File` owns; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(self.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
}

impl<F: BlockFile + ?Sized> BlockFile for Box<F> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }

    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).start_writeback(offset, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        (**self).sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        (**self).sync_all()
    }
}

/// Fills `buf` from `offset`, retrying short reads; a read past EOF is `UnexpectedEof`.
pub fn read_exact_at<F: BlockFile + ?Sized>(
    file: &F,
    mut buf: &mut [u8],
    mut offset: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file is too short",
                ));
            }
            Ok(n) => {
                let n = n.min(buf.len());
                buf = &mut buf[n..];
                offset = offset.saturating_add(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_backend_round_trip() {
        let mut f = tempfile::tempfile().unwrap();
        assert!(BlockFile::is_empty(&f).unwrap());
        f.write_all_at(b"hello", 3).unwrap();
        assert_eq!(BlockFile::len(&f).unwrap(), 8);
        let mut buf = [0u8; 8];
        read_exact_at(&f, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"\0\0\0hello");
        BlockFile::set_len(&mut f, 4).unwrap();
        BlockFile::sync_data(&mut f).unwrap();
        BlockFile::sync_all(&mut f).unwrap();
        let err = read_exact_at(&f, &mut buf, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
