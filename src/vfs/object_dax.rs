//! DAX for [`ObjectFs`]: the guest maps the file's staging memfd, so bytes
//! written through the window and bytes written with FUSE WRITE are the same
//! memory, and READ of a staged file reads that memory too.
//!
//! A mapping pins the file: it holds a reference on the open-file state (so
//! the staged bytes outlive RELEASE; the guest keeps DAX mappings of closed
//! files), and the memfd is kept at least as long as the mapped extent
//! ([`Staged::pin`]). A writable mapping counts as dirty: FLUSH, FSYNC and
//! RELEASE upload the file while one is live, and its REMOVEMAPPING uploads
//! it once more.
//!
//! Lock order: the pin table (std mutex, here) is taken briefly, possibly
//! while holding an open file's `state` lock (`upload` asks `dax_writable`),
//! never the other way round.
//!
//! Limit: the first mapping stages the whole object (downloaded once), not
//! only the mapped 2 MiB range.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{io_err, Core, ObjectFs, OpenFile};
use crate::fuse::abi;
use crate::fuse::dax::DaxSource;
use crate::fuse::filesystem::Result;
use crate::fuse::Errno;
use crate::vfs::dax::DaxPolicy;
use crate::vfs::inode::Kind;

/// DAX state of one [`ObjectFs`].
#[derive(Debug, Default)]
pub(super) struct DaxState {
    pub(super) policy: DaxPolicy,
    /// nodeid -> live mappings of its staged memfd.
    pins: Mutex<HashMap<u64, Pins>>,
}

#[derive(Debug)]
struct Pins {
    file: Arc<OpenFile>,
    mappings: usize,
    writable: usize,
}

impl DaxState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pins>> {
        self.pins.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ObjectFs {
    /// Which files get FUSE_ATTR_DAX under `-o dax=inode`.
    pub fn with_dax_policy(mut self, policy: DaxPolicy) -> Self {
        let core = std::sync::Arc::get_mut(&mut self.core).expect("with_dax_policy before the file system is shared");
        core.dax.policy = policy;
        self
    }
}

impl Core {
    /// Live DAX mappings of a node (tests, metrics).
    pub fn dax_mappings(&self, nodeid: u64) -> usize {
        self.dax.lock().get(&nodeid).map(|p| p.mappings).unwrap_or(0)
    }

    /// A writable DAX mapping of the node is live: its staged bytes may have
    /// changed without a WRITE, so durability points upload it.
    pub(super) fn dax_writable(&self, nodeid: u64) -> bool {
        self.dax.lock().get(&nodeid).is_some_and(|p| p.writable > 0)
    }

    pub(super) fn dax_wanted_node(&self, nodeid: u64, attr: &abi::fuse_attr) -> bool {
        let path = self.inodes.get(nodeid).map(|(p, _)| p);
        self.dax.policy.wants(path.as_deref(), attr.size)
    }

    pub(super) async fn dax_map_node(&self, nodeid: u64, foffset: u64, len: u64, writable: bool) -> Result<DaxSource> {
        let (path, kind, _) = self.inodes.get_any(nodeid).ok_or(Errno::ENOENT)?;
        if kind != Kind::File {
            return Err(Errno::EINVAL);
        }
        let end = foffset.checked_add(len).ok_or(Errno::EINVAL)?;
        // The memfd grows (sparsely) to the mapped extent: bound it like a file.
        if end > self.opts().max_file_size.saturating_add(len) {
            return Err(Errno::EFBIG);
        }
        // One reference on the open-file state per mapping.
        let file = match self.open_file(nodeid) {
            Some(f) => self.acquire(nodeid, || f.snap()),
            None => self.open_node(nodeid, &path, writable).await?,
        };
        let pinned = {
            let mut st = file.state.lock().await;
            // Parts a streaming upload already released must come back first.
            let r = match self.settle_released(nodeid, &file, &mut st).await {
                Ok(()) => self.ensure_staged(nodeid, &file, &mut st).await,
                Err(e) => Err(e),
            };
            let r = match r {
                Err(e) => Err(e),
                Ok(()) => match st.staged.as_mut() {
                    None => Err(Errno::EIO),
                    Some(s) => s.pin(end).map_err(io_err),
                },
            };
            if r.is_ok() && writable {
                // Counts as dirty from now on (see `dax_writable`).
                st.opened_empty = false;
            }
            r
        };
        let fd = match pinned {
            Ok(fd) => fd,
            Err(e) => {
                self.release_ref(nodeid);
                return Err(e);
            }
        };
        let mut pins = self.dax.lock();
        let p = pins.entry(nodeid).or_insert_with(|| Pins { file: file.clone(), mappings: 0, writable: 0 });
        p.mappings += 1;
        p.writable += usize::from(writable);
        Ok(DaxSource { fd, offset: foffset })
    }

    pub(super) async fn dax_unmap_node(&self, nodeid: u64, writable: bool) -> Result<()> {
        let file = {
            let mut pins = self.dax.lock();
            let Some(p) = pins.get_mut(&nodeid) else { return Ok(()) };
            let file = p.file.clone();
            p.mappings -= 1;
            if writable {
                p.writable = p.writable.saturating_sub(1);
            }
            if p.mappings == 0 {
                pins.remove(&nodeid);
            }
            file
        };
        let mut result = Ok(());
        if writable {
            // What the guest wrote through the mapping goes to the back-end.
            file.state.lock().await.dirty = true;
            result = self.upload(nodeid, &file).await;
        }
        if let Some(s) = file.state.lock().await.staged.as_mut() {
            if let Err(e) = s.unpin() {
                tracing::warn!(nodeid, error = %e, "DAX: cannot shrink the staging memfd");
            }
        }
        self.release_ref(nodeid);
        result
    }
}
