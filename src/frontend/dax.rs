//! The front-end's side of a DAX window: a reserved address range of this
//! process that `BACKEND_SHMEM_MAP` requests from the daemon fill, the way a
//! VMM maps them into the guest's window. Each map is an
//! `mmap(MAP_SHARED | MAP_FIXED)` of the fd the daemon sent; each unmap puts
//! the `PROT_NONE` reservation back. Like QEMU, a map over a live mapping or
//! outside the window is refused (the daemon must unmap first), and an unmap
//! must name exactly one live mapping.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{HandlerResult, VhostUserFrontendReqHandler};

/// A reserved window; see the module docs.
pub struct DaxWindow {
    base: *mut u8,
    len: u64,
    /// moffset -> (len, writable)
    live: Mutex<BTreeMap<u64, (u64, bool)>>,
    maps: AtomicU64,
    unmaps: AtomicU64,
    refused: AtomicU64,
}

// SAFETY: `base` is a reservation the window owns for its whole life; the
// bookkeeping is behind a mutex, and the mapped bytes are only read and
// written through the bounds-checked methods below.
unsafe impl Send for DaxWindow {}
// SAFETY: as above.
unsafe impl Sync for DaxWindow {}

fn einval(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.to_string())
}

impl DaxWindow {
    /// Reserve `len` bytes of address space (no memory is committed).
    pub fn new(len: u64) -> io::Result<DaxWindow> {
        let n = usize::try_from(len).map_err(|_| einval("window too large"))?;
        // SAFETY: an anonymous PROT_NONE reservation at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                n,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(DaxWindow {
            base: p.cast(),
            len,
            live: Mutex::new(BTreeMap::new()),
            maps: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Live mappings: (moffset, len, writable).
    pub fn live(&self) -> Vec<(u64, u64, bool)> {
        self.lock().iter().map(|(&m, &(l, w))| (m, l, w)).collect()
    }

    /// (maps, unmaps, refused requests) so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.maps.load(Ordering::SeqCst), self.unmaps.load(Ordering::SeqCst), self.refused.load(Ordering::SeqCst))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (u64, bool)>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copy `n` bytes at `off` out of the window; `None` unless one live
    /// mapping covers them.
    pub fn read(&self, off: u64, n: usize) -> Option<Vec<u8>> {
        let live = self.lock();
        let end = off.checked_add(n as u64)?;
        live.iter().find(|(&m, &(l, _))| m <= off && end <= m + l)?;
        let mut v = vec![0u8; n];
        // SAFETY: [off, end) lies inside a live mapping of our reservation
        // (checked above, under the lock that unmaps take).
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(off as usize), v.as_mut_ptr(), n) };
        Some(v)
    }

    /// Store `data` at `off` (what a guest does through a writable mapping);
    /// false unless one live writable mapping covers it.
    pub fn write(&self, off: u64, data: &[u8]) -> bool {
        let live = self.lock();
        let Some(end) = off.checked_add(data.len() as u64) else { return false };
        if !live.iter().any(|(&m, &(l, w))| w && m <= off && end <= m + l) {
            return false;
        }
        // SAFETY: inside a live writable mapping (checked above, under the lock).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(off as usize), data.len()) };
        true
    }

    /// Map `len` bytes of `fd` at `fd_offset` over `[off, off + len)` of the
    /// window (what a VMM does for SHMEM_MAP). Refused (and counted) when
    /// the range is empty, unaligned, outside the window or over a live
    /// mapping.
    pub fn map(&self, fd: RawFd, fd_offset: u64, off: u64, len: u64, writable: bool) -> io::Result<()> {
        let mut live = self.lock();
        let Some(end) = off.checked_add(len) else { return self.refuse("range overflows") };
        if len == 0 || end > self.len || off % 4096 != 0 || len % 4096 != 0 {
            return self.refuse("map outside the window");
        }
        if live.iter().any(|(&m, &(l, _))| m < end && off < m + l) {
            return self.refuse("map over a live mapping");
        }
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: MAP_FIXED over [off, end) of our own reservation (checked
        // to lie inside it); the fd is the daemon's, mapped shared.
        let p = unsafe {
            libc::mmap(
                self.base.add(off as usize).cast(),
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                fd_offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::last_os_error());
        }
        live.insert(off, (len, writable));
        self.maps.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Put the reservation back over exactly one live mapping (SHMEM_UNMAP).
    pub fn unmap(&self, off: u64, len: u64) -> io::Result<()> {
        let mut live = self.lock();
        if live.get(&off).map(|e| e.0) != Some(len) {
            return self.refuse("unmap of something not mapped");
        }
        self.clear(off, len)?;
        live.remove(&off);
        self.unmaps.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Drop every mapping without counting unmaps: what happens to the
    /// window when the VMM resets the device or reconnects.
    pub fn reset(&self) -> io::Result<()> {
        let mut live = self.lock();
        self.clear(0, self.len)?;
        live.clear();
        Ok(())
    }

    fn clear(&self, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: put the PROT_NONE reservation back over [off, off + len),
        // a range of our own window (callers pass live mappings or the whole window).
        let p = unsafe {
            libc::mmap(
                self.base.add(off as usize).cast(),
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn refuse<T>(&self, msg: &str) -> io::Result<T> {
        self.refused.fetch_add(1, Ordering::SeqCst);
        Err(einval(msg))
    }
}

impl Drop for DaxWindow {
    fn drop(&mut self) {
        // SAFETY: the reservation and whatever is mapped in it are ours.
        unsafe { libc::munmap(self.base.cast(), self.len as usize) };
    }
}

impl VhostUserFrontendReqHandler for DaxWindow {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        if req.shmid != 0 {
            return self.refuse("no such shared memory region");
        }
        let writable = req.flags & VhostUserMMapFlags::WRITABLE.bits() != 0;
        self.map(fd.as_raw_fd(), req.fd_offset, req.shm_offset, req.len, writable).map(|()| 0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        self.unmap(req.shm_offset, req.len).map(|()| 0)
    }
}
