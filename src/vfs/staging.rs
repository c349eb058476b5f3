//! Staging area for files being written: a memfd per file.
//!
//! Object stores replace whole objects, so a file opened for writing keeps its
//! bytes here (random writes, appends and truncates included) until FLUSH,
//! FSYNC or RELEASE uploads them in one atomic PUT or multipart upload. memfd
//! pages are the same kind of memory the cache pool and the DAX window use.
//! Sparse regions cost nothing until written.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

/// The bytes of one file, held in a memfd.
#[derive(Debug)]
pub struct Staged {
    file: File,
    size: u64,
}

impl Staged {
    /// An empty staging file.
    pub fn new() -> io::Result<Self> {
        // SAFETY: the name is a valid NUL-terminated string and the flags are
        // valid; the returned fd (checked below) is owned by nobody else.
        let fd = unsafe { libc::memfd_create(c"ovfs-staging".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own exclusively.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(Staged { file, size: 0 })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Read up to `len` bytes at `off` (short at EOF).
    pub fn read(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        if off >= self.size {
            return Ok(Vec::new());
        }
        let n = (self.size - off).min(len as u64) as usize;
        let mut buf = vec![0u8; n];
        self.file.read_exact_at(&mut buf, off)?;
        Ok(buf)
    }

    /// Write `data` at `off`, growing the file as needed.
    pub fn write(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            // A zero-length write changes nothing, not even the size.
            return Ok(());
        }
        let end = off.checked_add(data.len() as u64).ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        self.file.write_all_at(data, off)?;
        self.size = self.size.max(end);
        Ok(())
    }

    /// Bytes of memory the memfd holds (its allocated pages).
    pub fn resident(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(self.size)
    }

    /// Give back the memory of `[off, off + len)` (the bytes read as zeros
    /// afterwards; the size does not change). Used for parts of a streamed
    /// upload that the back-end already has.
    pub fn punch(&mut self, off: u64, len: u64) -> io::Result<()> {
        let (Ok(o), Ok(l)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        if l == 0 {
            return Ok(());
        }
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, o, l)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Set the size (zero-filling when growing).
    pub fn truncate(&mut self, size: u64) -> io::Result<()> {
        self.file.set_len(size)?;
        self.size = size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_writes_truncate_and_holes() {
        let mut s = Staged::new().unwrap();
        s.write(10, b"hello").unwrap();
        assert_eq!(s.size(), 15);
        assert_eq!(s.read(0, 100).unwrap(), b"\0\0\0\0\0\0\0\0\0\0hello");
        s.write(12, b"XY").unwrap();
        assert_eq!(s.read(10, 5).unwrap(), b"heXYo");
        s.truncate(11).unwrap();
        assert_eq!(s.read(0, 100).unwrap().len(), 11);
        s.truncate(20).unwrap();
        assert_eq!(s.read(11, 100).unwrap(), vec![0u8; 9]);
        assert!(s.read(20, 10).unwrap().is_empty());
        assert!(s.write(u64::MAX - 1, b"abc").is_err());
        s.write(1000, b"").unwrap();
        assert_eq!(s.size(), 20, "an empty write past EOF does not grow the file");
    }

    #[test]
    fn punch_frees_pages_and_keeps_size() {
        let mut s = Staged::new().unwrap();
        s.write(0, &vec![7u8; 1 << 20]).unwrap();
        let blocks = |s: &Staged| s.resident();
        assert!(blocks(&s) >= 1 << 20);
        s.punch(0, 1 << 19).unwrap();
        assert_eq!(s.size(), 1 << 20);
        assert!(blocks(&s) <= (1 << 19) + 8192, "pages not freed: {}", blocks(&s));
        assert_eq!(s.read(0, 4).unwrap(), vec![0; 4]);
        assert_eq!(s.read(1 << 19, 4).unwrap(), vec![7; 4]);
    }
}
