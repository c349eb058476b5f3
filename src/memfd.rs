//! Anonymous shared memory: a memfd, and a memfd mapped `MAP_SHARED` into
//! this process. One place for the raw syscalls that the cache pool's arenas,
//! the staging files and the in-process front-end's guest memory all need.
//! The fd can be handed to another process (a VMM's DAX window, a daemon's
//! SET_MEM_TABLE) and maps the same bytes there.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

/// A new empty memfd (close-on-exec), optionally allowing seals.
pub fn create(name: &CStr, allow_sealing: bool) -> io::Result<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | if allow_sealing { libc::MFD_ALLOW_SEALING } else { 0 };
    // SAFETY: a valid NUL-terminated name and valid flags; the result is checked.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A memfd of a fixed length mapped read-write and shared; unmapped on drop.
///
/// The struct only hands out the base pointer: how the bytes are accessed
/// (blocks with their own ownership, bounds-checked copies, atomics) is the
/// owner's business, and so is its `Send`/`Sync` reasoning.
pub struct SharedMap {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: usize,
}

impl SharedMap {
    /// A zeroed memfd of `len` bytes (`len > 0`), mapped shared. With
    /// `seal_size` its size is sealed (no shrink, no grow), so the mapping
    /// can never lose its backing under a peer that maps the fd too.
    pub fn new(name: &CStr, len: usize, seal_size: bool) -> io::Result<SharedMap> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty shared memory"));
        }
        let size = libc::off_t::try_from(len).map_err(|_| io::Error::other("shared memory too large"))?;
        let fd = create(name, seal_size)?;
        // SAFETY: plain syscall on our own valid fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain syscall on our own valid fd; the seals only forbid size changes.
        if seal_size
            && unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new shared mapping of the whole file at an address the
        // kernel picks, so nothing existing is replaced or aliased.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SharedMap { fd, base, len })
    }

    /// The first byte of the mapping.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Length of the mapping (and of the memfd), bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a map is at least one byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd, to hand to a peer or to map elsewhere.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; owners guarantee nothing
        // reads or writes through `base` after they drop the map.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_mapping_of_the_fd_sees_the_same_bytes() {
        let m = SharedMap::new(c"ovfs-test", 8192, true).unwrap();
        // SAFETY: inside the 8192-byte mapping, which nothing else uses.
        unsafe { m.base().as_ptr().add(4096).write(0xa5) };
        let f = std::fs::File::from(m.fd.try_clone().unwrap());
        let mut b = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, 4096).unwrap();
        assert_eq!(b[0], 0xa5);
        // Sealed: the size cannot change.
        assert!(f.set_len(4096).is_err());
        assert!(f.set_len(1 << 20).is_err());
        assert!(SharedMap::new(c"ovfs-test", 0, false).is_err());
    }
}
