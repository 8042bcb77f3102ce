//! The demo's files and ports: a reproducible test file, a byte-for-byte comparison, free
//! loopback ports.

use std::io::{Read, Write};
use std::path::Path;

/// Writes `size` bytes of reproducible pseudo-random data, streaming in 1 MiB blocks.
pub fn make_test_file(path: &Path, size: u64) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            // xorshift64*: fast and good enough to defeat any accidental compression.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    file.get_ref().sync_all()
}

/// Streams both files and compares them, 1 MiB at a time.
pub fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// `n` loopback ports free right now.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    // Hold all listeners until every port is chosen so no port is picked twice.
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_files_are_reproducible_and_compared_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        make_test_file(&a, 3 << 20 | 5).unwrap();
        make_test_file(&b, 3 << 20 | 5).unwrap();
        assert!(same_content(&a, &b).unwrap());
        let mut bytes = std::fs::read(&b).unwrap();
        bytes[2 << 20] ^= 1;
        std::fs::write(&b, &bytes).unwrap();
        assert!(!same_content(&a, &b).unwrap());
        let ports = free_ports(3).unwrap();
        assert_eq!(ports.len(), 3);
    }
}
