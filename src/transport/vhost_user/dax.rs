//! The DAX window as the vhost-user transport provides it: region 0 of the
//! device's shared memory (`GET_SHMEM_CONFIG`), filled with
//! `BACKEND_SHMEM_MAP` / `BACKEND_SHMEM_UNMAP` requests on the back-end
//! request channel. Implements [`DaxMapper`] for the FUSE server.
//!
//! The epoch counter changes on every new front-end connection and every
//! device reset: the VMM drops the window's mappings then, and the FUSE
//! server's mapping table forgets them when it sees a new epoch.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::VhostUserFrontendReqHandler;

use super::BackendChannel;
use crate::fuse::dax::DaxMapper;

/// Shared-memory region id of the virtio-fs DAX window.
pub(super) const DAX_SHMID: u8 = 0;
/// The window is handed out in 2 MiB ranges (the guest's DAX range size).
pub const DAX_WINDOW_ALIGN: u64 = 2 << 20;
/// Largest window accepted (it only costs the VMM address space, but a
/// typo should not reserve the whole physical address space).
pub const DAX_WINDOW_MAX: u64 = 1 << 40;

/// Check a `--dax-window` size: a power of two from 2 MiB to 1 TiB (the VMM
/// exposes the window as a PCI BAR, whose size must be a power of two: QEMU
/// 11.1 aborts on any other size).
pub fn check_dax_window(len: u64) -> io::Result<()> {
    if !len.is_power_of_two() || !(DAX_WINDOW_ALIGN..=DAX_WINDOW_MAX).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("DAX window of {len} bytes: must be a power of two from 2 MiB to 1 TiB (e.g. 64M, 1G)"),
        ));
    }
    Ok(())
}

/// Maps fd ranges into the window through the back-end request channel.
pub(super) struct WindowMapper {
    pub(super) channel: BackendChannel,
    pub(super) len: u64,
    pub(super) epoch: Arc<AtomicU64>,
}

impl WindowMapper {
    fn request(&self, fd_offset: u64, moffset: u64, len: u64, writable: bool) -> io::Result<VhostUserMMap> {
        // The FUSE layer checked the range already; check again at the boundary.
        let end = moffset.checked_add(len).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        if len == 0 || end > self.len {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let flags = if writable { VhostUserMMapFlags::WRITABLE.bits() } else { 0 };
        Ok(VhostUserMMap { shmid: DAX_SHMID, fd_offset, shm_offset: moffset, len, flags, ..Default::default() })
    }
}

impl DaxMapper for WindowMapper {
    fn window_len(&self) -> u64 {
        self.len
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn map(&self, fd: BorrowedFd<'_>, fd_offset: u64, moffset: u64, len: u64, writable: bool) -> io::Result<()> {
        let req = self.request(fd_offset, moffset, len, writable)?;
        let backend = self.channel.get().ok_or_else(|| io::Error::other("no back-end request channel"))?;
        struct Raw(i32);
        impl AsRawFd for Raw {
            fn as_raw_fd(&self) -> i32 {
                self.0
            }
        }
        backend.shmem_map(&req, &Raw(fd.as_raw_fd())).map(|_| ())
    }

    fn unmap(&self, moffset: u64, len: u64) -> io::Result<()> {
        let req = self.request(0, moffset, len, false)?;
        let backend = self.channel.get().ok_or_else(|| io::Error::other("no back-end request channel"))?;
        backend.shmem_unmap(&req).map(|_| ())
    }
}
