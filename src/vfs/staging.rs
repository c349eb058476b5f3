//! Staging area for files being written: a memfd per file.
//!
//! Object stores replace whole objects, so a file opened for writing keeps its
//! bytes here (random writes, appends and truncates included) until FLUSH,
//! FSYNC or RELEASE uploads them in one atomic PUT or multipart upload. memfd
//! pages are the same kind of memory the cache pool and the DAX window use.
//! Sparse regions cost nothing until written.
//!
//! DAX: the memfd itself is what the guest maps ([`Staged::pin`] hands out a
//! duplicate of its fd). While pinned, the memfd never gets shorter than the
//! largest mapped extent (the VMM would take SIGBUS touching a page past its
//! end): the file's size is tracked apart from the memfd's length, and bytes
//! past the size that a mapping may still hold are zeroed (punched) whenever
//! they could become part of the file again.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The bytes of one file, held in a memfd.
#[derive(Debug)]
pub struct Staged {
    file: File,
    size: u64,
    /// Live DAX mappings of this memfd.
    pins: usize,
    /// The memfd stays at least this long while `pins > 0`.
    pinned_len: u64,
}

impl Staged {
    /// An empty staging file.
    pub fn new() -> io::Result<Self> {
        let file = File::from(crate::memfd::create(c"ovfs-staging", false)?);
        Ok(Staged { file, size: 0, pins: 0, pinned_len: 0 })
    }

    /// DAX: a mapping of `[.., end)` of the memfd goes live. Grows the memfd
    /// (sparse) to at least `end` and returns a duplicate of its fd for the VMM.
    pub fn pin(&mut self, end: u64) -> io::Result<std::os::fd::OwnedFd> {
        let fd = std::os::fd::OwnedFd::from(self.file.try_clone()?);
        if end > self.memfd_len()? {
            self.file.set_len(end)?;
        }
        self.pins += 1;
        self.pinned_len = self.pinned_len.max(end);
        Ok(fd)
    }

    /// DAX: one mapping is gone. With the last one, the memfd shrinks back to
    /// the file's size.
    pub fn unpin(&mut self) -> io::Result<()> {
        self.pins = self.pins.saturating_sub(1);
        if self.pins == 0 {
            self.pinned_len = 0;
            if self.memfd_len()? > self.size {
                self.file.set_len(self.size)?;
            }
        }
        Ok(())
    }

    /// Live DAX mappings.
    pub fn pins(&self) -> usize {
        self.pins
    }

    fn memfd_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Zero `[from, to)` of the memfd where it exists (bytes past the file's
    /// size that a mapping may have written and that are about to become part
    /// of the file).
    fn zero_tail(&self, from: u64, to: u64) -> io::Result<()> {
        let to = to.min(self.memfd_len()?);
        if from >= to {
            return Ok(());
        }
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(from), libc::off_t::try_from(to - from)) else {
            return Err(io::Error::from_raw_os_error(libc::EFBIG));
        };
        // SAFETY: fallocate on a descriptor we own, with plain integer
        // arguments; it touches no memory of ours.
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Read up to `len` bytes at `off` (short at EOF).
    pub fn read(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(off, len, &mut buf)?;
        Ok(buf)
    }

    /// [`Staged::read`] into `buf` (emptied first), reusing its memory: the
    /// parts of a streamed upload are read here a whole part at a time.
    pub fn read_into(&self, off: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        if off >= self.size {
            return Ok(());
        }
        let n = (self.size - off).min(len as u64) as usize;
        // Not zeroed first: `pread` fills every byte.
        buf.reserve(n);
        let mut done = 0usize;
        while done < n {
            let at = off + done as u64;
            let Ok(at) = libc::off_t::try_from(at) else {
                return Err(io::Error::from_raw_os_error(libc::EFBIG));
            };
            // SAFETY: `buf` has a capacity of at least `n` and its first `done`
            // bytes are initialised, so `[done, n)` of its allocation is valid for
            // `n - done` writable bytes; the descriptor is ours.
            let r = unsafe {
                libc::pread(self.file.as_raw_fd(), buf.as_mut_ptr().add(done) as *mut libc::c_void, n - done, at)
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                // The memfd is never shorter than the size: cannot happen.
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            done += r as usize;
            // SAFETY: `pread` initialised `[.., done)`, within the capacity.
            unsafe { buf.set_len(done) };
        }
        Ok(())
    }

    /// Write `data` at `off`, growing the file as needed.
    pub fn write(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            // A zero-length write changes nothing, not even the size.
            return Ok(());
        }
        let end = off.checked_add(data.len() as u64).ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
        if self.pins > 0 && off > self.size {
            // The gap becomes part of the file: it must read as zeros.
            self.zero_tail(self.size, off)?;
        }
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
        if self.pins == 0 {
            self.file.set_len(size)?;
        } else {
            // Never shorter than a live mapping; what lies past the new size
            // (or comes back into the file when growing) reads as zeros.
            let (lo, hi) = (size.min(self.size), size.max(self.memfd_len()?));
            self.zero_tail(lo, hi)?;
            self.file.set_len(size.max(self.pinned_len))?;
        }
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
    fn pinned_memfd_never_shrinks_below_the_mapping() {
        let mut s = Staged::new().unwrap();
        s.write(0, &[7u8; 10_000]).unwrap();
        let fd = s.pin(2 << 20).unwrap();
        let f = File::from(fd);
        assert_eq!(f.metadata().unwrap().len(), 2 << 20);
        assert_eq!(s.size(), 10_000);
        // A "mapping" writes past EOF, then the file is truncated and regrown.
        f.write_all_at(b"garbage", 20_000).unwrap();
        s.truncate(100).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 2 << 20, "memfd kept at the mapped extent");
        assert_eq!(s.read(0, 1000).unwrap(), vec![7u8; 100]);
        s.truncate(30_000).unwrap();
        let back = s.read(0, 30_000).unwrap();
        assert_eq!(&back[..100], &[7u8; 100][..]);
        assert!(back[100..].iter().all(|&b| b == 0), "bytes past the old size read as zeros");
        // A write past EOF leaves a zero gap even over bytes a mapping wrote.
        f.write_all_at(b"junk", 40_000).unwrap();
        s.write(50_000, b"x").unwrap();
        assert!(s.read(30_000, 20_000).unwrap().iter().all(|&b| b == 0));
        // Same memory: what the mapping writes, READ sees.
        f.write_all_at(b"dax!", 0).unwrap();
        assert_eq!(s.read(0, 4).unwrap(), b"dax!");
        s.unpin().unwrap();
        assert_eq!(f.metadata().unwrap().len(), 50_001, "back to the file size after the last unpin");
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
