//! Guest memory of the front-end: one memfd mapped shared into this process and
//! handed to the daemon with SET_MEM_TABLE. Guest physical address 0 is the
//! start of the memfd.
//!
//! The daemon writes into this memory concurrently, so every access goes
//! through raw pointers (bulk copies) or atomics (ring indexes), never through
//! a Rust reference to the shared bytes, and every offset is bounds-checked:
//! values read back from the rings come from another process and are untrusted.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use crate::memfd::SharedMap;

/// A shared, bounds-checked mapping of a memfd.
pub struct GuestMem {
    map: SharedMap,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this struct; all access
// goes through bounds-checked raw-pointer copies and atomics, which are sound
// from any thread (the bytes may change under us anyway: the daemon writes them).
unsafe impl Send for GuestMem {}
// SAFETY: as above; `&GuestMem` only gives copying and atomic accessors.
unsafe impl Sync for GuestMem {}

impl GuestMem {
    /// A new zeroed memfd of `len` bytes (rounded up to a page), mapped shared.
    pub fn new(len: usize) -> io::Result<GuestMem> {
        let len = len.checked_next_multiple_of(4096).ok_or_else(|| io::Error::other("guest memory too large"))?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty guest memory"));
        }
        let map = SharedMap::new(c"ovfs-frontend-guest", len, false)?;
        Ok(GuestMem { ptr: map.base().as_ptr(), len, map })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd (for SET_MEM_TABLE).
    pub fn fd(&self) -> RawFd {
        self.map.fd()
    }

    /// Front-end virtual address of guest address `gpa` (ring addresses in
    /// SET_VRING_ADDR are front-end virtual addresses).
    pub fn host_addr(&self, gpa: usize) -> u64 {
        self.ptr as u64 + gpa as u64
    }

    fn check(&self, off: usize, n: usize) -> io::Result<()> {
        match off.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("guest memory access {off:#x}+{n:#x} outside {:#x} bytes", self.len),
            )),
        }
    }

    /// Copy `data` into guest memory at `off`.
    pub fn write(&self, off: usize, data: &[u8]) -> io::Result<()> {
        self.check(off, data.len())?;
        // SAFETY: the range is inside our mapping (checked above); `data` is a
        // separate Rust slice, so the two cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) };
        Ok(())
    }

    /// Copy guest memory at `off` into `out`.
    pub fn read(&self, off: usize, out: &mut [u8]) -> io::Result<()> {
        self.check(off, out.len())?;
        // SAFETY: the range is inside our mapping (checked above); `out` is a
        // separate Rust slice. Bytes may be changed concurrently by the daemon:
        // we copy them, never form a reference to them.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn atomic_u16(&self, off: usize) -> io::Result<&AtomicU16> {
        self.check(off, 2)?;
        if off % 2 != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "misaligned ring index"));
        }
        // SAFETY: in bounds and 2-aligned (the mapping is page-aligned); an
        // AtomicU16 has the layout of a u16 and tolerates concurrent access.
        Ok(unsafe { &*(self.ptr.add(off) as *const AtomicU16) })
    }

    pub fn load_u16(&self, off: usize, order: Ordering) -> io::Result<u16> {
        Ok(u16::from_le(self.atomic_u16(off)?.load(order)))
    }

    pub fn store_u16(&self, off: usize, v: u16, order: Ordering) -> io::Result<()> {
        self.atomic_u16(off)?.store(v.to_le(), order);
        Ok(())
    }

    pub fn read_u32(&self, off: usize) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}
