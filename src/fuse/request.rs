//! Bounds-checked decoding of request buffers.
//!
//! A [`Reader`] walks a byte slice; every read checks the remaining length and
//! fails with `EINVAL` instead of reading past the end. Names are checked as
//! single path components.

use super::abi::{Pod, NAME_MAX, PATH_MAX};
use super::filesystem::Errno;

/// A cursor over a request's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Read one ABI struct.
    pub fn read<T: Pod>(&mut self) -> Result<T, Errno> {
        let v = T::from_prefix(self.buf).ok_or(Errno::EINVAL)?;
        self.buf = &self.buf[std::mem::size_of::<T>()..];
        Ok(v)
    }

    /// Read a struct that older kernels send shorter (INIT, SETXATTR): at least
    /// `min` bytes must be there; missing trailing fields read as zero.
    pub fn read_compat<T: Pod>(&mut self, min: usize) -> Result<T, Errno> {
        let full = std::mem::size_of::<T>();
        if self.buf.len() >= full {
            return self.read();
        }
        if self.buf.len() < min {
            return Err(Errno::EINVAL);
        }
        let mut tmp = vec![0u8; full];
        tmp[..self.buf.len()].copy_from_slice(self.buf);
        self.buf = &[];
        T::from_prefix(&tmp).ok_or(Errno::EINVAL)
    }

    /// Take exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Errno> {
        if n > self.buf.len() {
            return Err(Errno::EINVAL);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Take a NUL-terminated string (without its NUL).
    pub fn cstr(&mut self) -> Result<&'a [u8], Errno> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// Take a NUL-terminated single path component: non-empty, no `/`, not `.`
    /// or `..`, at most NAME_MAX bytes.
    pub fn name(&mut self) -> Result<&'a [u8], Errno> {
        let s = self.cstr()?;
        check_name(s)?;
        Ok(s)
    }

    /// Take a NUL-terminated path (symlink target): non-empty, at most PATH_MAX.
    pub fn path(&mut self) -> Result<&'a [u8], Errno> {
        let s = self.cstr()?;
        if s.is_empty() {
            return Err(Errno::ENOENT);
        }
        if s.len() >= PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(s)
    }
}

/// Check one path component as the guest sent it.
pub fn check_name(s: &[u8]) -> Result<(), Errno> {
    if s.is_empty() || s == b"." || s == b".." || s.contains(&b'/') || s.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if s.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::abi::fuse_read_in;

    #[test]
    fn short_struct_is_einval() {
        let b = [0u8; 39];
        assert_eq!(Reader::new(&b).read::<fuse_read_in>().err(), Some(Errno::EINVAL));
        let b = [0u8; 40];
        assert!(Reader::new(&b).read::<fuse_read_in>().is_ok());
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(Reader::new(b"abc\0").name().unwrap(), b"abc");
        assert_eq!(Reader::new(b"abc").name().err(), Some(Errno::EINVAL));
        assert_eq!(Reader::new(b"a/b\0").name().err(), Some(Errno::EINVAL));
        assert_eq!(Reader::new(b".\0").name().err(), Some(Errno::EINVAL));
        assert_eq!(Reader::new(b"..\0").name().err(), Some(Errno::EINVAL));
        assert_eq!(Reader::new(b"\0").name().err(), Some(Errno::EINVAL));
        let long = [b'x'; 256];
        let mut v = long.to_vec();
        v.push(0);
        assert_eq!(Reader::new(&v).name().err(), Some(Errno::ENAMETOOLONG));
        let mut r = Reader::new(b"a\0b\0");
        assert_eq!(r.name().unwrap(), b"a");
        assert_eq!(r.name().unwrap(), b"b");
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn bytes_and_compat() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.bytes(4).err(), Some(Errno::EINVAL));
        assert_eq!(r.bytes(2).unwrap(), &[1, 2]);
        let init16 = [7u8, 0, 0, 0, 31, 0, 0, 0, 0, 0, 2, 0, 1, 0, 0, 0];
        let v: crate::fuse::abi::fuse_init_in = Reader::new(&init16).read_compat(16).unwrap();
        assert_eq!((v.major, v.minor, v.max_readahead, v.flags, v.flags2), (7, 31, 0x20000, 1, 0));
        assert!(Reader::new(&init16[..15]).read_compat::<crate::fuse::abi::fuse_init_in>(16).is_err());
    }
}
