//! DAX: FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING and the table of what is mapped
//! where in the device's shared-memory window.
//!
//! The transport supplies a [`DaxMapper`] (it asks the VMM to map an fd range
//! into the window); the file system supplies the bytes as a [`DaxSource`]
//! (an fd + offset, pinned until [`crate::fuse::Filesystem::dax_unmap`]). This
//! module knows neither virtio nor storage types.
//!
//! The guest is hostile: every `moffset`/`len` is checked against the window
//! before anything is mapped, overlapping requests are resolved by unmapping
//! what was there first (which is also how a read-only mapping is upgraded to
//! writable), and two requests racing for the same range get EBUSY.
//!
//! Locking: one std mutex (the table), never held across `.await` nor across a
//! map/unmap call to the VMM: a range being mapped is marked `Busy` in the
//! table, the lock is dropped, the VMM is asked, and the lock is taken again to
//! record the result. The table remembers the mapper's epoch; when the device
//! was reset or the VMM reconnected, the epoch differs and every recorded
//! mapping is dropped (the VMM dropped the window) and its pin released.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::abi;
use super::filesystem::{Errno, Filesystem, Result};

/// Alignment (log2) of `foffset`, `moffset` and `len` announced in INIT's
/// `map_alignment`: 4 KiB pages.
pub const MAP_ALIGNMENT_LOG2: u16 = 12;
const MAP_ALIGNMENT: u64 = 1 << MAP_ALIGNMENT_LOG2;

/// Maps fd ranges into the device's DAX window (implemented by the transport).
pub trait DaxMapper: Send + Sync + 'static {
    /// Size of the window (region 0) in bytes.
    fn window_len(&self) -> u64;
    /// Changes whenever the window was dropped behind our back (device reset,
    /// new front-end connection): mappings recorded under another epoch are gone.
    fn epoch(&self) -> u64;
    /// Map `len` bytes of `fd` at `fd_offset` at `moffset` in the window.
    /// Blocking: waits for the VMM's answer.
    fn map(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        fd_offset: u64,
        moffset: u64,
        len: u64,
        writable: bool,
    ) -> io::Result<()>;
    /// Unmap `[moffset, moffset + len)` of the window. Blocking.
    fn unmap(&self, moffset: u64, len: u64) -> io::Result<()>;
}

/// What a file system hands out for a mapping: `len` bytes of `fd` starting
/// at `offset` stay valid (the fd is never shrunk below them) until the
/// matching `dax_unmap`.
#[derive(Debug)]
pub struct DaxSource {
    pub fd: OwnedFd,
    pub offset: u64,
}

/// One recorded mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub moffset: u64,
    pub len: u64,
    pub nodeid: u64,
    pub foffset: u64,
    pub writable: bool,
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    /// A SETUPMAPPING for this range is talking to the VMM.
    Busy {
        len: u64,
    },
    Mapped(Mapping),
}

impl Slot {
    fn len(&self) -> u64 {
        match self {
            Slot::Busy { len } => *len,
            Slot::Mapped(m) => m.len,
        }
    }
}

#[derive(Default)]
struct Table {
    epoch: u64,
    /// moffset -> slot; slots never overlap.
    slots: BTreeMap<u64, Slot>,
}

impl Table {
    /// Forget everything when the window was dropped; returns the mappings
    /// whose pins must be released (they are no longer mapped).
    fn sync_epoch(&mut self, epoch: u64) -> Vec<Mapping> {
        if self.epoch == epoch {
            return Vec::new();
        }
        self.epoch = epoch;
        std::mem::take(&mut self.slots)
            .into_values()
            .filter_map(|s| match s {
                Slot::Mapped(m) => Some(m),
                Slot::Busy { .. } => None,
            })
            .collect()
    }

    /// Slots intersecting `[start, start + len)` (start + len does not overflow).
    fn overlapping(&self, start: u64, len: u64) -> Vec<(u64, Slot)> {
        let end = start + len;
        let mut out = Vec::new();
        // The slot starting at or before `start` may reach into the range.
        if let Some((&k, s)) = self.slots.range(..=start).next_back() {
            if k + s.len() > start {
                out.push((k, *s));
            }
        }
        for (&k, s) in self.slots.range(start.saturating_add(1)..end) {
            out.push((k, *s));
        }
        out
    }
}

/// DAX state of one FUSE server.
pub struct Dax {
    mapper: Arc<dyn DaxMapper>,
    table: Mutex<Table>,
    stats: Stats,
}

/// Counters (logged at DESTROY; tests read them through [`Dax::stats`]).
#[derive(Default)]
struct Stats {
    setups: AtomicU64,
    writable_setups: AtomicU64,
    unmaps: AtomicU64,
    refused: AtomicU64,
}

/// A snapshot of the DAX counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaxStats {
    /// SETUPMAPPING requests that mapped a range.
    pub setups: u64,
    /// ... of which writable.
    pub writable_setups: u64,
    /// Ranges unmapped (REMOVEMAPPING, replaced by a new mapping, DESTROY).
    pub unmaps: u64,
    /// SETUPMAPPING / REMOVEMAPPING answered with an error.
    pub refused: u64,
    /// Mappings live now.
    pub live: u64,
}

impl Dax {
    pub fn new(mapper: Arc<dyn DaxMapper>) -> Self {
        let epoch = mapper.epoch();
        Dax { mapper, table: Mutex::new(Table { epoch, slots: BTreeMap::new() }), stats: Stats::default() }
    }

    pub fn stats(&self) -> DaxStats {
        let s = &self.stats;
        DaxStats {
            setups: s.setups.load(Ordering::Relaxed),
            writable_setups: s.writable_setups.load(Ordering::Relaxed),
            unmaps: s.unmaps.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            live: self.mappings().len() as u64,
        }
    }

    pub fn window_len(&self) -> u64 {
        self.mapper.window_len()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mappings currently recorded (tests, metrics).
    pub fn mappings(&self) -> Vec<Mapping> {
        self.lock()
            .slots
            .values()
            .filter_map(|s| match s {
                Slot::Mapped(m) => Some(*m),
                Slot::Busy { .. } => None,
            })
            .collect()
    }

    /// `[moffset, moffset + len)` lies inside the window and is page aligned.
    fn check_range(&self, moffset: u64, len: u64) -> Result<()> {
        let end = moffset.checked_add(len).ok_or(Errno::EINVAL)?;
        if len == 0 || end > self.window_len() || moffset % MAP_ALIGNMENT != 0 || len % MAP_ALIGNMENT != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    async fn release_all<F: Filesystem>(&self, fs: &F, stale: Vec<Mapping>) {
        for m in stale {
            if let Err(e) = fs.dax_unmap(m.nodeid, m.foffset, m.len, m.writable).await {
                tracing::warn!(nodeid = m.nodeid, error = %e, "DAX: releasing a dropped mapping failed");
            }
        }
    }

    /// Unmap `maps` in the VMM (unless `vmm` is false) and release their pins;
    /// returns the first error.
    async fn unmap_and_release<F: Filesystem>(&self, fs: &F, maps: Vec<Mapping>) -> Result<()> {
        let mut first = Ok(());
        for m in maps {
            self.stats.unmaps.fetch_add(1, Ordering::Relaxed);
            let mapper = self.mapper.clone();
            let r = blocking(move || mapper.unmap(m.moffset, m.len)).await;
            if let Err(e) = r {
                tracing::warn!(moffset = m.moffset, len = m.len, error = %e, "DAX: SHMEM_UNMAP failed");
                if first.is_ok() {
                    first = Err(Errno::EIO);
                }
            }
            // Written-back even when the VMM refused: the guest can no longer
            // reach it through our table.
            if let Err(e) = fs.dax_unmap(m.nodeid, m.foffset, m.len, m.writable).await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// FUSE_SETUPMAPPING.
    pub async fn setup<F: Filesystem>(&self, fs: &F, nodeid: u64, a: &abi::fuse_setupmapping_in) -> Result<()> {
        let r = self.setup_inner(fs, nodeid, a).await;
        match &r {
            Ok(()) => {
                self.stats.setups.fetch_add(1, Ordering::Relaxed);
                if a.flags & abi::FUSE_SETUPMAPPING_FLAG_WRITE != 0 {
                    self.stats.writable_setups.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(nodeid, moffset = a.moffset, len = a.len, foffset = a.foffset, error = %e, "DAX: SETUPMAPPING refused");
            }
        }
        r
    }

    async fn setup_inner<F: Filesystem>(&self, fs: &F, nodeid: u64, a: &abi::fuse_setupmapping_in) -> Result<()> {
        if a.flags & !(abi::FUSE_SETUPMAPPING_FLAG_READ | abi::FUSE_SETUPMAPPING_FLAG_WRITE) != 0 {
            return Err(Errno::EINVAL);
        }
        self.check_range(a.moffset, a.len)?;
        if a.foffset % MAP_ALIGNMENT != 0 || a.foffset.checked_add(a.len).is_none() {
            return Err(Errno::EINVAL);
        }
        let writable = a.flags & abi::FUSE_SETUPMAPPING_FLAG_WRITE != 0;
        let (stale, replaced) = {
            let mut t = self.lock();
            let stale = t.sync_epoch(self.mapper.epoch());
            let over = t.overlapping(a.moffset, a.len);
            if over.iter().any(|(_, s)| matches!(s, Slot::Busy { .. })) {
                (stale, None)
            } else {
                let mut replaced = Vec::new();
                for (k, s) in over {
                    t.slots.remove(&k);
                    if let Slot::Mapped(m) = s {
                        replaced.push(m);
                    }
                }
                t.slots.insert(a.moffset, Slot::Busy { len: a.len });
                (stale, Some(replaced))
            }
        };
        self.release_all(fs, stale).await;
        // Another SETUPMAPPING is mapping part of this range right now.
        let replaced = replaced.ok_or(Errno::EBUSY)?;
        // Whatever was there goes first (QEMU refuses overlapping maps); this
        // also turns a read-only mapping of the same range into a writable one.
        let mut result = self.unmap_and_release(fs, replaced).await;
        let mapping = Mapping { moffset: a.moffset, len: a.len, nodeid, foffset: a.foffset, writable };
        if result.is_ok() {
            result = self.map_one(fs, mapping).await;
        }
        let recorded = {
            let mut t = self.lock();
            let busy_here = matches!(t.slots.get(&a.moffset), Some(Slot::Busy { len }) if *len == a.len);
            if busy_here {
                t.slots.remove(&a.moffset);
            }
            let live = busy_here && t.epoch == self.mapper.epoch();
            if result.is_ok() && live {
                t.slots.insert(a.moffset, Slot::Mapped(mapping));
            }
            live
        };
        result?;
        if !recorded {
            // The window was dropped while we mapped: nothing is mapped.
            self.release_all(fs, vec![mapping]).await;
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// Pin the source and ask the VMM; on failure nothing stays pinned.
    async fn map_one<F: Filesystem>(&self, fs: &F, m: Mapping) -> Result<()> {
        let src = fs.dax_map(m.nodeid, m.foffset, m.len, m.writable).await?;
        if src.offset.checked_add(m.len).is_none() {
            let _ = fs.dax_unmap(m.nodeid, m.foffset, m.len, m.writable).await;
            return Err(Errno::EINVAL);
        }
        let mapper = self.mapper.clone();
        let r = blocking(move || mapper.map(src.fd.as_fd(), src.offset, m.moffset, m.len, m.writable)).await;
        if let Err(e) = r {
            tracing::warn!(moffset = m.moffset, len = m.len, error = %e, "DAX: SHMEM_MAP failed");
            let _ = fs.dax_unmap(m.nodeid, m.foffset, m.len, m.writable).await;
            return Err(Errno::EIO);
        }
        tracing::trace!(?m, "DAX: mapped");
        Ok(())
    }

    /// FUSE_REMOVEMAPPING: `ranges` already decoded (at most 256).
    pub async fn remove<F: Filesystem>(&self, fs: &F, ranges: &[abi::fuse_removemapping_one]) -> Result<()> {
        let r = self.remove_inner(fs, ranges).await;
        if r.is_err() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    async fn remove_inner<F: Filesystem>(&self, fs: &F, ranges: &[abi::fuse_removemapping_one]) -> Result<()> {
        for r in ranges {
            self.check_range(r.moffset, r.len)?;
        }
        let (stale, maps) = {
            let mut t = self.lock();
            let stale = t.sync_epoch(self.mapper.epoch());
            let mut maps = Vec::new();
            for r in ranges {
                for (k, s) in t.overlapping(r.moffset, r.len) {
                    if let Slot::Mapped(m) = s {
                        t.slots.remove(&k);
                        maps.push(m);
                    }
                }
            }
            (stale, maps)
        };
        self.release_all(fs, stale).await;
        self.unmap_and_release(fs, maps).await
    }

    /// A new session starts (INIT): if the VMM dropped the window since the
    /// last request (reset, reconnect), release the pins of what it held.
    pub async fn forget_stale<F: Filesystem>(&self, fs: &F) {
        let stale = self.lock().sync_epoch(self.mapper.epoch());
        if !stale.is_empty() {
            tracing::info!(count = stale.len(), "DAX: the window was dropped; releasing its mappings");
        }
        self.release_all(fs, stale).await;
    }

    /// Drop every mapping (DESTROY): unmap in the VMM and release the pins.
    pub async fn clear<F: Filesystem>(&self, fs: &F) {
        let (stale, maps) = {
            let mut t = self.lock();
            let stale = t.sync_epoch(self.mapper.epoch());
            let maps = std::mem::take(&mut t.slots)
                .into_values()
                .filter_map(|s| match s {
                    Slot::Mapped(m) => Some(m),
                    Slot::Busy { .. } => None,
                })
                .collect();
            (stale, maps)
        };
        self.release_all(fs, stale).await;
        let _ = self.unmap_and_release(fs, maps).await;
        let s = self.stats();
        tracing::info!(
            setups = s.setups,
            writable = s.writable_setups,
            unmaps = s.unmaps,
            refused = s.refused,
            "DAX session: {} SETUPMAPPING ({} writable), {} ranges unmapped, {} refused",
            s.setups,
            s.writable_setups,
            s.unmaps,
            s.refused
        );
    }
}

/// Run a blocking VMM call off the async worker threads when a tokio runtime
/// is around (the map request waits for QEMU, which meanwhile sends us a
/// memory-table update on another thread).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => match h.spawn_blocking(f).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        Err(_) => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_search() {
        let mut t = Table::default();
        let m = |moffset, len| Slot::Mapped(Mapping { moffset, len, nodeid: 2, foffset: 0, writable: false });
        t.slots.insert(0, m(0, 4096));
        t.slots.insert(8192, m(8192, 8192));
        assert_eq!(t.overlapping(4096, 4096).len(), 0);
        assert_eq!(t.overlapping(0, 4096).len(), 1);
        assert_eq!(t.overlapping(12288, 4096).len(), 1);
        assert_eq!(t.overlapping(0, 1 << 20).len(), 2);
        assert_eq!(t.overlapping(16384, 4096).len(), 0);
    }
}
