//! Several back-ends in one tree: `[[mounts]]` attached at paths.
//!
//! [`MountTable`] serves a root and a changeable set of mounts, each a file
//! system of its own (an [`crate::vfs::ObjectFs`] with its own back-end,
//! retry/timeout policy and cache) attached at an absolute path such as
//! `/data` or `/a/b`. The root is either a file system (the top-level
//! `[storage_settings]`) or, without one, a small synthetic read-only tree
//! holding the mount points and the directories on the way to them.
//!
//! Node ids: slot 0 is the root (the root file system's own ids, or the
//! synthetic directories' ids); a mount gets a slot number `s >= 1` when it
//! is added, never reused in the daemon's life, and its node `n` is
//! `s << 48 | n`. So an id routes by its top bits alone, and an id of a mount
//! that was removed answers ESTALE forever (a later mount at the same path
//! gets a new slot).
//!
//! Runtime changes ([`MountTable::add_mount`], [`MountTable::remove_mount`])
//! replace an immutable snapshot behind a `RwLock<Arc<..>>`; a request clones
//! the `Arc` and drops the lock at once (never held across `.await`), so a
//! request in flight on a removed mount finishes on it, and the guest
//! connection is never touched. A removed mount still takes FLUSH, FSYNC,
//! RELEASE, RELEASEDIR and FORGET, so files open at the removal are uploaded
//! at close (durability); everything else on it answers ESTALE.
//!
//! Failure isolation: each mount has its own back-end, so its timeouts and
//! retries hold only its own requests. Requests are tasks (nothing global
//! waits for one), but the transport's in-flight budget is device-wide, so
//! each mount may hold at most [`MountTable::max_inflight`] requests at once;
//! beyond that a request to it is answered EIO at once (FORGET and RELEASE
//! are never refused), and a stalled back-end cannot take every slot.
//!
//! With a root file system, mount points are found by path: the root's node
//! ids of the directories on a mount path are remembered as LOOKUP returns
//! them (node ids are never reused, see [`crate::vfs::inode`]); a mount point
//! needs no directory in the root store, but is listed by READDIR only if one
//! exists there. Names on mount paths cannot be created, removed or renamed
//! in the root (EEXIST / EBUSY).
//!
//! Locks: `snapshot` (RwLock) and `names` (Mutex) are never held together,
//! nor across `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fuse::abi;
use crate::fuse::filesystem::{InitOptions, Result};
use crate::fuse::{Ctx, DirEntry, Entry, Errno, Filesystem, SetAttr};

const ESTALE: Errno = Errno(libc::ESTALE);
const SHIFT: u32 = 48;
const LOCAL: u64 = (1 << SHIFT) - 1;
const ROOT: u64 = abi::FUSE_ROOT_ID;
/// Slots 1..=MAX_SLOT (16 bits of node id).
const MAX_SLOT: u64 = (1 << (64 - SHIFT)) - 1;
/// Default per-mount bound on requests in flight (half the vhost-user
/// transport's device-wide default of 256).
pub const DEFAULT_MOUNT_INFLIGHT: usize = 128;
/// How long the kernel may keep a synthetic entry.
const SYNTH_TTL: Duration = Duration::from_secs(1);

/// One attached file system.
pub struct MountSlot<M> {
    /// Absolute, normalized (`/data`).
    pub path: String,
    pub fs: M,
    pub read_only: bool,
    slot: u64,
    inflight: AtomicUsize,
    refused: AtomicU64,
}

impl<M> std::fmt::Debug for MountSlot<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountSlot")
            .field("path", &self.path)
            .field("slot", &self.slot)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl<M> MountSlot<M> {
    /// Requests answered EIO because the mount had too many in flight.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Requests on this mount now (counted against its bound).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// An immutable view of the mounts; replaced whole on each change.
struct Snapshot<M> {
    by_slot: BTreeMap<u64, Arc<MountSlot<M>>>,
    by_path: BTreeMap<String, u64>,
    /// Removed mounts, still reachable for closing what the guest had open
    /// (FLUSH, FSYNC, RELEASE, RELEASEDIR, FORGET) so that data written
    /// before the removal still reaches the back-end at close.
    removed: BTreeMap<u64, Arc<MountSlot<M>>>,
}

impl<M> Snapshot<M> {
    fn mount_at(&self, path: &str) -> Option<&Arc<MountSlot<M>>> {
        self.by_path.get(path).and_then(|s| self.by_slot.get(s))
    }

    /// Whether `path` ("" = root) is a proper ancestor of a mount point.
    fn on_the_way(&self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.by_path.range(prefix.clone()..).next().is_some_and(|(p, _)| p.starts_with(&prefix))
    }

    /// The names directly below `path` that are mount points or on the way
    /// to one (sorted, unique).
    fn children(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}/");
        let mut v: Vec<String> = Vec::new();
        for p in self.by_path.keys().filter(|p| p.starts_with(&prefix)) {
            let name = p[prefix.len()..].split('/').next().unwrap_or_default();
            if v.last().map(String::as_str) != Some(name) {
                v.push(name.to_string());
            }
        }
        v
    }
}

/// Node id <-> path of the directories of slot 0 that lead to mount points.
struct Names {
    by_id: HashMap<u64, String>,
    by_path: HashMap<String, u64>,
    /// Next synthetic id (synthetic root only).
    next: u64,
}

/// The root file system and the mounts; see the module note.
pub struct MountTable<R, M> {
    /// `None`: the synthetic root.
    root: Option<R>,
    snapshot: RwLock<Arc<Snapshot<M>>>,
    names: Mutex<Names>,
    next_slot: AtomicU64,
    max_inflight: usize,
    submounts: AtomicBool,
    /// Kernel INIT flags (for mounts added after INIT), and whether INIT came.
    kernel_flags: AtomicU64,
    inited: AtomicBool,
    started: SystemTime,
}

enum Route<M> {
    Root(u64),
    Mount(Arc<MountSlot<M>>, u64),
}

fn global(slot: u64, local: u64) -> u64 {
    (slot << SHIFT) | local
}

fn writes(flags: u32) -> bool {
    let f = flags as i32;
    f & libc::O_ACCMODE != libc::O_RDONLY || f & (libc::O_TRUNC | libc::O_CREAT | libc::O_APPEND) != 0
}

fn join(parent: &str, name: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(name).ok()?;
    Some(format!("{parent}/{name}"))
}

/// Counts a request against its mount's in-flight bound.
struct Permit<'a>(&'a AtomicUsize);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<R: Filesystem, M: Filesystem> MountTable<R, M> {
    /// `root`: the root file system, or `None` for the synthetic root.
    pub fn new(root: Option<R>) -> Self {
        let mut names = Names { by_id: HashMap::new(), by_path: HashMap::new(), next: ROOT + 1 };
        names.by_id.insert(ROOT, String::new());
        names.by_path.insert(String::new(), ROOT);
        MountTable {
            root,
            snapshot: RwLock::new(Arc::new(Snapshot {
                by_slot: BTreeMap::new(),
                by_path: BTreeMap::new(),
                removed: BTreeMap::new(),
            })),
            names: Mutex::new(names),
            next_slot: AtomicU64::new(1),
            max_inflight: DEFAULT_MOUNT_INFLIGHT,
            submounts: AtomicBool::new(false),
            kernel_flags: AtomicU64::new(0),
            inited: AtomicBool::new(false),
            started: SystemTime::now(),
        }
    }

    /// Per-mount bound on requests in flight (at least 1).
    pub fn with_max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = n.max(1);
        self
    }

    pub fn max_inflight(&self) -> usize {
        self.max_inflight
    }

    pub fn root(&self) -> Option<&R> {
        self.root.as_ref()
    }

    fn snap(&self) -> Arc<Snapshot<M>> {
        self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock_names(&self) -> std::sync::MutexGuard<'_, Names> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mounts now attached, by path.
    pub fn mounts(&self) -> Vec<Arc<MountSlot<M>>> {
        let s = self.snap();
        s.by_path.values().filter_map(|slot| s.by_slot.get(slot).cloned()).collect()
    }

    /// Attach `fs` at `path` (absolute, normalized, as checked by the config).
    /// Refused if a mount is already at that path, inside it or above it, or
    /// no slot is left. Works while serving: new lookups find it.
    pub fn add_mount(&self, path: &str, fs: M, read_only: bool) -> std::result::Result<Arc<MountSlot<M>>, String> {
        if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') || path.contains("//") {
            return Err(format!("mount path {path:?}: must be absolute and normalized"));
        }
        let mut g = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        for p in g.by_path.keys() {
            let nested = |a: &str, b: &str| b.starts_with(a) && b.as_bytes().get(a.len()) == Some(&b'/');
            if p == path || nested(p, path) || nested(path, p) {
                return Err(format!("mount path {path}: overlaps the mount at {p}"));
            }
        }
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        if slot > MAX_SLOT {
            return Err(format!("mount path {path}: no mount slot left (at most {MAX_SLOT} per daemon life)"));
        }
        if self.inited.load(Ordering::Acquire) {
            fs.init(self.kernel_flags.load(Ordering::Relaxed));
        }
        let m = Arc::new(MountSlot {
            path: path.to_string(),
            fs,
            read_only,
            slot,
            inflight: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        });
        let mut by_slot = g.by_slot.clone();
        let mut by_path = g.by_path.clone();
        by_slot.insert(slot, m.clone());
        by_path.insert(path.to_string(), slot);
        *g = Arc::new(Snapshot { by_slot, by_path, removed: g.removed.clone() });
        Ok(m)
    }

    /// Detach the mount at `path`: it is gone from the tree and its node ids
    /// answer ESTALE from now on, except FLUSH, FSYNC, RELEASE, RELEASEDIR
    /// and FORGET, which still reach it so that files open at the removal
    /// are uploaded and freed when the guest closes them (the file system is
    /// kept for that until the daemon exits). Requests already running on it
    /// finish. Returns it, or `None` if nothing is mounted there.
    pub fn remove_mount(&self, path: &str) -> Option<Arc<MountSlot<M>>> {
        let mut g = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        let slot = *g.by_path.get(path)?;
        let mut by_slot = g.by_slot.clone();
        let mut by_path = g.by_path.clone();
        let mut removed = g.removed.clone();
        by_path.remove(path);
        let m = by_slot.remove(&slot)?;
        removed.insert(slot, m.clone());
        *g = Arc::new(Snapshot { by_slot, by_path, removed });
        Some(m)
    }

    fn route(&self, id: u64) -> Result<Route<M>> {
        let hi = id >> SHIFT;
        if hi == 0 {
            return Ok(Route::Root(id));
        }
        let local = id & LOCAL;
        if local == 0 {
            return Err(Errno::EBADF);
        }
        match self.snap().by_slot.get(&hi) {
            Some(m) => Ok(Route::Mount(m.clone(), local)),
            None => Err(ESTALE),
        }
    }

    /// Like `route`, but also to removed mounts (for closing handles).
    fn route_closing(&self, id: u64) -> Result<Route<M>> {
        let hi = id >> SHIFT;
        if hi == 0 || id & LOCAL == 0 {
            return self.route(id);
        }
        let snap = self.snap();
        match snap.by_slot.get(&hi).or_else(|| snap.removed.get(&hi)) {
            Some(m) => Ok(Route::Mount(m.clone(), id & LOCAL)),
            None => Err(ESTALE),
        }
    }

    /// Count a request against `m`'s bound; EIO when it is full.
    fn admit<'a>(&self, m: &'a MountSlot<M>) -> Result<Permit<'a>> {
        let n = m.inflight.fetch_add(1, Ordering::AcqRel);
        let p = Permit(&m.inflight);
        if n >= self.max_inflight {
            if m.refused.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                tracing::warn!(mount = %m.path, limit = self.max_inflight, "mount has too many requests in flight (back-end stalled?); answering EIO");
            }
            return Err(Errno::EIO);
        }
        Ok(p)
    }

    /// A mount entry with a global node id.
    fn mount_entry(m: &MountSlot<M>, mut e: Entry) -> Result<Entry> {
        if e.nodeid > LOCAL {
            m.fs.forget(e.nodeid, 1);
            return Err(Errno::EIO);
        }
        if e.nodeid != 0 {
            e.nodeid = global(m.slot, e.nodeid);
        }
        Ok(e)
    }

    fn dir_attr(&self, ino: u64, mode: u32) -> abi::fuse_attr {
        let t = self.started.duration_since(UNIX_EPOCH).unwrap_or_default();
        abi::fuse_attr {
            ino,
            mode: libc::S_IFDIR | mode,
            nlink: 2,
            blksize: 4096,
            atime: t.as_secs(),
            mtime: t.as_secs(),
            ctime: t.as_secs(),
            atimensec: t.subsec_nanos(),
            mtimensec: t.subsec_nanos(),
            ctimensec: t.subsec_nanos(),
            ..Default::default()
        }
    }

    /// The entry of a mount's root. Made here, without asking the back-end,
    /// so that a lookup or listing of the parent never waits for a stalled
    /// back-end; attributes are not cached (GETATTR goes to the mount).
    fn mount_root_entry(&self, m: &MountSlot<M>) -> Entry {
        let mut attr = self.dir_attr(global(m.slot, ROOT), if m.read_only { 0o555 } else { 0o755 });
        if self.submounts.load(Ordering::Relaxed) {
            attr.flags |= abi::FUSE_ATTR_SUBMOUNT;
        }
        Entry { nodeid: global(m.slot, ROOT), generation: 0, attr, entry_valid: SYNTH_TTL, attr_valid: Duration::ZERO }
    }

    /// The path of a slot-0 directory on the way to a mount, if it is one.
    fn path_of(&self, id: u64) -> Option<String> {
        self.lock_names().by_id.get(&id).cloned()
    }

    /// Remember a slot-0 node as the directory at `path`; for the synthetic
    /// root, allocate its id.
    fn name_node(&self, path: &str, id: Option<u64>) -> u64 {
        let mut n = self.lock_names();
        if let Some(&old) = n.by_path.get(path) {
            if id.is_none() || id == Some(old) {
                return old;
            }
        }
        let id = id.unwrap_or_else(|| {
            let i = n.next;
            n.next += 1;
            i
        });
        n.by_id.insert(id, path.to_string());
        n.by_path.insert(path.to_string(), id);
        id
    }

    /// Whether a change of `name` in slot-0 directory `parent` would touch a
    /// mount point or a directory on the way to one.
    fn guarded(&self, snap: &Snapshot<M>, parent: u64, name: &[u8]) -> bool {
        match self.path_of(parent).and_then(|p| join(&p, name)) {
            Some(q) => snap.mount_at(&q).is_some() || snap.on_the_way(&q),
            None => false,
        }
    }

    fn root_fs(&self) -> Result<&R> {
        self.root.as_ref().ok_or(Errno::EROFS)
    }

    async fn lookup_root(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<Entry> {
        let snap = self.snap();
        let here = self.path_of(parent).and_then(|p| join(&p, name));
        if let Some(q) = &here {
            if let Some(m) = snap.mount_at(q) {
                return Ok(self.mount_root_entry(m));
            }
        }
        let on_the_way = here.as_deref().is_some_and(|q| snap.on_the_way(q));
        match &self.root {
            None => {
                if self.path_of(parent).is_none() {
                    return Err(ESTALE);
                }
                let q = here.filter(|_| on_the_way).ok_or(Errno::ENOENT)?;
                let id = self.name_node(&q, None);
                Ok(Entry {
                    nodeid: id,
                    generation: 0,
                    attr: self.dir_attr(id, 0o555),
                    entry_valid: SYNTH_TTL,
                    attr_valid: SYNTH_TTL,
                })
            }
            Some(root) => {
                let e = root.lookup(ctx, parent, name).await?;
                if e.nodeid > LOCAL {
                    root.forget(e.nodeid, 1);
                    return Err(Errno::EIO);
                }
                if let Some(q) = here.filter(|_| on_the_way && e.attr.mode & libc::S_IFMT == libc::S_IFDIR) {
                    self.name_node(&q, Some(e.nodeid));
                }
                Ok(e)
            }
        }
    }

    fn synth_readdir(&self, nodeid: u64, offset: u64, plus: bool) -> Result<Vec<DirEntry>> {
        let path = self.path_of(nodeid).ok_or(ESTALE)?;
        let snap = self.snap();
        let mut all: Vec<(Vec<u8>, u64)> = vec![(b".".to_vec(), nodeid), (b"..".to_vec(), ROOT)];
        for name in snap.children(&path) {
            let q = format!("{path}/{name}");
            let ino = match snap.mount_at(&q) {
                Some(m) => global(m.slot, ROOT),
                None => self.name_node(&q, None),
            };
            all.push((name.into_bytes(), ino));
        }
        // READDIRPLUS entries carry no node (the kernel looks each up), so a
        // listing of the root never waits for a mount's back-end.
        let _ = plus;
        Ok(all
            .into_iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (name, ino))| DirEntry { ino, offset: i as u64 + 1, typ: libc::DT_DIR as u32, name, entry: None })
            .collect())
    }
}

macro_rules! by_node {
    ($self:ident, $id:expr, |$fs:ident, $n:ident| $body:expr, $synthetic:expr) => {
        match $self.route($id)? {
            Route::Root($n) => match &$self.root {
                Some($fs) => $body.await,
                None => $synthetic,
            },
            Route::Mount(m, $n) => {
                let _p = $self.admit(&m)?;
                let $fs = &m.fs;
                $body.await
            }
        }
    };
}

/// Refuse changes to read-only mounts and to the synthetic root.
macro_rules! writable {
    ($self:ident, $id:expr) => {
        match $self.route($id)? {
            Route::Mount(m, _) if m.read_only => return Err(Errno::EROFS),
            Route::Root(_) if $self.root.is_none() => return Err(Errno::EROFS),
            _ => {}
        }
    };
}

impl<R: Filesystem, M: Filesystem> Filesystem for MountTable<R, M> {
    fn init(&self, kernel_flags: u64) -> InitOptions {
        self.kernel_flags.store(kernel_flags, Ordering::Relaxed);
        self.inited.store(true, Ordering::Release);
        let mut want = self.root.as_ref().map_or(0, |r| r.init(kernel_flags).want);
        for m in self.mounts() {
            want |= m.fs.init(kernel_flags).want;
        }
        let sub = kernel_flags & abi::FUSE_SUBMOUNTS != 0;
        self.submounts.store(sub, Ordering::Relaxed);
        if sub {
            want |= abi::FUSE_SUBMOUNTS;
        }
        InitOptions { want }
    }

    fn destroy(&self) {
        if let Some(r) = &self.root {
            r.destroy();
        }
        for m in self.mounts() {
            m.fs.destroy();
        }
    }

    async fn lookup(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<Entry> {
        match self.route(parent)? {
            Route::Root(p) => self.lookup_root(ctx, p, name).await,
            Route::Mount(m, p) => {
                let _p = self.admit(&m)?;
                let e = m.fs.lookup(ctx, p, name).await?;
                Self::mount_entry(&m, e)
            }
        }
    }

    fn forget(&self, nodeid: u64, nlookup: u64) {
        match self.route_closing(nodeid) {
            Ok(Route::Root(n)) => {
                if let Some(r) = &self.root {
                    r.forget(n, nlookup)
                }
            }
            // Mount roots hold no lookup reference in the mount.
            Ok(Route::Mount(_, ROOT)) => {}
            Ok(Route::Mount(m, n)) => m.fs.forget(n, nlookup),
            Err(_) => {}
        }
    }

    async fn getattr(&self, ctx: &Ctx, nodeid: u64, fh: Option<u64>) -> Result<(abi::fuse_attr, Duration)> {
        by_node!(self, nodeid, |fs, n| fs.getattr(ctx, n, fh), {
            self.path_of(nodeid).ok_or(ESTALE)?;
            Ok((self.dir_attr(nodeid, 0o555), SYNTH_TTL))
        })
    }

    async fn setattr(&self, ctx: &Ctx, nodeid: u64, attr: SetAttr) -> Result<(abi::fuse_attr, Duration)> {
        writable!(self, nodeid);
        by_node!(self, nodeid, |fs, n| fs.setattr(ctx, n, attr), Err(Errno::EROFS))
    }

    async fn mkdir(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, umask: u32) -> Result<Entry> {
        writable!(self, parent);
        match self.route(parent)? {
            Route::Root(p) => {
                if self.guarded(&self.snap(), p, name) {
                    return Err(Errno::EEXIST);
                }
                self.root_fs()?.mkdir(ctx, p, name, mode, umask).await
            }
            Route::Mount(m, p) => {
                let _p = self.admit(&m)?;
                let e = m.fs.mkdir(ctx, p, name, mode, umask).await?;
                Self::mount_entry(&m, e)
            }
        }
    }

    async fn unlink(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        writable!(self, parent);
        if matches!(self.route(parent)?, Route::Root(p) if self.guarded(&self.snap(), p, name)) {
            return Err(Errno::EBUSY);
        }
        by_node!(self, parent, |fs, p| fs.unlink(ctx, p, name), Err(Errno::EROFS))
    }

    async fn rmdir(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        writable!(self, parent);
        if matches!(self.route(parent)?, Route::Root(p) if self.guarded(&self.snap(), p, name)) {
            return Err(Errno::EBUSY);
        }
        by_node!(self, parent, |fs, p| fs.rmdir(ctx, p, name), Err(Errno::EROFS))
    }

    async fn rename(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        writable!(self, parent);
        match (self.route(parent)?, self.route(newparent)?) {
            (Route::Root(p), Route::Root(np)) => {
                let snap = self.snap();
                if self.guarded(&snap, p, name) || self.guarded(&snap, np, newname) {
                    return Err(Errno::EBUSY);
                }
                self.root_fs()?.rename(ctx, p, name, np, newname, flags).await
            }
            (Route::Mount(m, p), Route::Mount(m2, np)) if m.slot == m2.slot => {
                let _p = self.admit(&m)?;
                m.fs.rename(ctx, p, name, np, newname, flags).await
            }
            _ => Err(Errno::EXDEV),
        }
    }

    async fn open(&self, ctx: &Ctx, nodeid: u64, flags: u32) -> Result<(u64, u32)> {
        if writes(flags) {
            writable!(self, nodeid);
        }
        by_node!(self, nodeid, |fs, n| fs.open(ctx, n, flags), Err(Errno::EISDIR))
    }

    async fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
        umask: u32,
    ) -> Result<(Entry, u64, u32)> {
        writable!(self, parent);
        match self.route(parent)? {
            Route::Root(p) => {
                if self.guarded(&self.snap(), p, name) {
                    return Err(Errno::EEXIST);
                }
                let root = self.root_fs()?;
                let (e, fh, of) = root.create(ctx, p, name, mode, flags, umask).await?;
                if e.nodeid > LOCAL {
                    let _ = root.release(ctx, e.nodeid, fh, flags).await;
                    root.forget(e.nodeid, 1);
                    return Err(Errno::EIO);
                }
                Ok((e, fh, of))
            }
            Route::Mount(m, p) => {
                let _p = self.admit(&m)?;
                let (e, fh, of) = m.fs.create(ctx, p, name, mode, flags, umask).await?;
                if e.nodeid > LOCAL {
                    let _ = m.fs.release(ctx, e.nodeid, fh, flags).await;
                }
                Ok((Self::mount_entry(&m, e)?, fh, of))
            }
        }
    }

    async fn read(&self, ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        by_node!(self, nodeid, |fs, n| fs.read(ctx, n, fh, offset, size), Err(Errno::EISDIR))
    }

    async fn read_into(
        &self,
        ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        by_node!(self, nodeid, |fs, n| fs.read_into(ctx, n, fh, offset, size, out), Err(Errno::EISDIR))
    }

    async fn write(&self, ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, data: &[u8], flags: u32) -> Result<u32> {
        writable!(self, nodeid);
        by_node!(self, nodeid, |fs, n| fs.write(ctx, n, fh, offset, data, flags), Err(Errno::EROFS))
    }

    async fn flush(&self, ctx: &Ctx, nodeid: u64, fh: u64) -> Result<()> {
        match self.route_closing(nodeid)? {
            Route::Root(n) => match &self.root {
                Some(r) => r.flush(ctx, n, fh).await,
                None => Ok(()),
            },
            Route::Mount(m, n) => {
                let _p = self.admit(&m)?;
                m.fs.flush(ctx, n, fh).await
            }
        }
    }

    async fn release(&self, ctx: &Ctx, nodeid: u64, fh: u64, flags: u32) -> Result<()> {
        // Never refused for the in-flight bound: the handle must be freed.
        match self.route_closing(nodeid)? {
            Route::Root(n) => match &self.root {
                Some(r) => r.release(ctx, n, fh, flags).await,
                None => Ok(()),
            },
            Route::Mount(m, n) => m.fs.release(ctx, n, fh, flags).await,
        }
    }

    async fn fsync(&self, ctx: &Ctx, nodeid: u64, fh: u64, datasync: bool) -> Result<()> {
        match self.route_closing(nodeid)? {
            Route::Root(n) => match &self.root {
                Some(r) => r.fsync(ctx, n, fh, datasync).await,
                None => Ok(()),
            },
            Route::Mount(m, n) => {
                let _p = self.admit(&m)?;
                m.fs.fsync(ctx, n, fh, datasync).await
            }
        }
    }

    async fn opendir(&self, ctx: &Ctx, nodeid: u64, flags: u32) -> Result<(u64, u32)> {
        by_node!(self, nodeid, |fs, n| fs.opendir(ctx, n, flags), {
            self.path_of(nodeid).ok_or(ESTALE)?;
            Ok((0, 0))
        })
    }

    async fn readdir(
        &self,
        ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        max_bytes: u32,
        plus: bool,
    ) -> Result<Vec<DirEntry>> {
        match self.route(nodeid)? {
            Route::Root(n) => {
                let Some(root) = &self.root else { return self.synth_readdir(n, offset, plus) };
                let mut v = root.readdir(ctx, n, fh, offset, max_bytes, plus).await?;
                let Some(path) = self.path_of(n) else { return Ok(v) };
                let snap = self.snap();
                for d in v.iter_mut() {
                    let Some(q) = join(&path, &d.name) else { continue };
                    if let Some(m) = snap.mount_at(&q) {
                        // The mount's root in place of the root's directory.
                        if let Some(e) = d.entry.take() {
                            if e.nodeid != 0 {
                                root.forget(e.nodeid, 1);
                            }
                            d.entry = Some(self.mount_root_entry(m));
                        }
                        d.ino = global(m.slot, ROOT);
                        d.typ = libc::DT_DIR as u32;
                    } else if let Some(e) = d.entry.as_mut() {
                        if e.nodeid > LOCAL {
                            root.forget(e.nodeid, 1);
                            d.entry = None;
                        } else if e.nodeid != 0 && snap.on_the_way(&q) && e.attr.mode & libc::S_IFMT == libc::S_IFDIR {
                            self.name_node(&q, Some(e.nodeid));
                        }
                    }
                }
                Ok(v)
            }
            Route::Mount(m, n) => {
                let _p = self.admit(&m)?;
                let mut v = m.fs.readdir(ctx, n, fh, offset, max_bytes, plus).await?;
                for d in v.iter_mut() {
                    if let Some(e) = d.entry.take() {
                        d.entry = Self::mount_entry(&m, e).ok();
                    }
                }
                Ok(v)
            }
        }
    }

    async fn releasedir(&self, ctx: &Ctx, nodeid: u64, fh: u64) -> Result<()> {
        match self.route_closing(nodeid)? {
            Route::Root(n) => match &self.root {
                Some(r) => r.releasedir(ctx, n, fh).await,
                None => Ok(()),
            },
            Route::Mount(m, n) => m.fs.releasedir(ctx, n, fh).await,
        }
    }

    async fn fsyncdir(&self, ctx: &Ctx, nodeid: u64, fh: u64, datasync: bool) -> Result<()> {
        by_node!(self, nodeid, |fs, n| fs.fsyncdir(ctx, n, fh, datasync), Ok(()))
    }

    async fn statfs(&self, ctx: &Ctx, nodeid: u64) -> Result<abi::fuse_kstatfs> {
        by_node!(
            self,
            nodeid,
            |fs, n| fs.statfs(ctx, n),
            Ok(abi::fuse_kstatfs { bsize: 4096, namelen: 255, frsize: 4096, ..Default::default() })
        )
    }

    async fn access(&self, ctx: &Ctx, nodeid: u64, mask: u32) -> Result<()> {
        if mask & libc::W_OK as u32 != 0 {
            writable!(self, nodeid);
        }
        by_node!(self, nodeid, |fs, n| fs.access(ctx, n, mask), Ok(()))
    }

    async fn lseek(&self, ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, whence: u32) -> Result<u64> {
        by_node!(self, nodeid, |fs, n| fs.lseek(ctx, n, fh, offset, whence), Err(Errno::EINVAL))
    }

    async fn readlink(&self, ctx: &Ctx, nodeid: u64) -> Result<Vec<u8>> {
        by_node!(self, nodeid, |fs, n| fs.readlink(ctx, n), Err(Errno::EINVAL))
    }

    async fn symlink(&self, ctx: &Ctx, parent: u64, name: &[u8], target: &[u8]) -> Result<Entry> {
        writable!(self, parent);
        match self.route(parent)? {
            Route::Root(p) => {
                if self.guarded(&self.snap(), p, name) {
                    return Err(Errno::EEXIST);
                }
                self.root_fs()?.symlink(ctx, p, name, target).await
            }
            Route::Mount(m, p) => {
                let _p = self.admit(&m)?;
                let e = m.fs.symlink(ctx, p, name, target).await?;
                Self::mount_entry(&m, e)
            }
        }
    }

    async fn mknod(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, rdev: u32, umask: u32) -> Result<Entry> {
        writable!(self, parent);
        match self.route(parent)? {
            Route::Root(p) => {
                if self.guarded(&self.snap(), p, name) {
                    return Err(Errno::EEXIST);
                }
                self.root_fs()?.mknod(ctx, p, name, mode, rdev, umask).await
            }
            Route::Mount(m, p) => {
                let _p = self.admit(&m)?;
                let e = m.fs.mknod(ctx, p, name, mode, rdev, umask).await?;
                Self::mount_entry(&m, e)
            }
        }
    }

    async fn link(&self, ctx: &Ctx, nodeid: u64, newparent: u64, newname: &[u8]) -> Result<Entry> {
        writable!(self, newparent);
        match (self.route(nodeid)?, self.route(newparent)?) {
            (Route::Root(n), Route::Root(np)) => {
                if self.guarded(&self.snap(), np, newname) {
                    return Err(Errno::EEXIST);
                }
                self.root_fs()?.link(ctx, n, np, newname).await
            }
            (Route::Mount(m, n), Route::Mount(m2, np)) if m.slot == m2.slot => {
                let _p = self.admit(&m)?;
                let e = m.fs.link(ctx, n, np, newname).await?;
                Self::mount_entry(&m, e)
            }
            _ => Err(Errno::EXDEV),
        }
    }

    async fn setxattr(&self, ctx: &Ctx, nodeid: u64, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        writable!(self, nodeid);
        by_node!(self, nodeid, |fs, n| fs.setxattr(ctx, n, name, value, flags), Err(Errno::EROFS))
    }

    async fn getxattr(&self, ctx: &Ctx, nodeid: u64, name: &[u8], size: u32) -> Result<Vec<u8>> {
        by_node!(self, nodeid, |fs, n| fs.getxattr(ctx, n, name, size), Err(Errno::ENODATA))
    }

    async fn listxattr(&self, ctx: &Ctx, nodeid: u64, size: u32) -> Result<Vec<u8>> {
        by_node!(self, nodeid, |fs, n| fs.listxattr(ctx, n, size), Ok(Vec::new()))
    }

    async fn removexattr(&self, ctx: &Ctx, nodeid: u64, name: &[u8]) -> Result<()> {
        writable!(self, nodeid);
        by_node!(self, nodeid, |fs, n| fs.removexattr(ctx, n, name), Err(Errno::EROFS))
    }

    async fn fallocate(&self, ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, length: u64, mode: u32) -> Result<()> {
        writable!(self, nodeid);
        by_node!(self, nodeid, |fs, n| fs.fallocate(ctx, n, fh, offset, length, mode), Err(Errno::EROFS))
    }

    async fn syncfs(&self, ctx: &Ctx, nodeid: u64) -> Result<()> {
        by_node!(self, nodeid, |fs, n| fs.syncfs(ctx, n), Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, StorageSettings};
    use crate::vfs::ObjectFs;
    use std::time::Instant;

    fn ctx() -> Ctx {
        Ctx::default()
    }

    fn memfs() -> ObjectFs {
        memfs_with(&Config::default_memory())
    }

    fn memfs_with(cfg: &Config) -> ObjectFs {
        crate::cli::build_object_fs(&StorageSettings::default(), cfg).unwrap().0
    }

    async fn names(t: &MountTable<ObjectFs, ObjectFs>, dir: u64) -> Vec<String> {
        let (fh, _) = t.opendir(&ctx(), dir, 0).await.unwrap();
        let v = t.readdir(&ctx(), dir, fh, 0, 65536, true).await.unwrap();
        t.releasedir(&ctx(), dir, fh).await.unwrap();
        let mut n: Vec<String> = v.iter().map(|d| String::from_utf8_lossy(&d.name).into_owned()).collect();
        n.retain(|x| x != "." && x != "..");
        n.sort();
        n
    }

    async fn put(t: &MountTable<ObjectFs, ObjectFs>, dir: u64, name: &[u8], data: &[u8]) -> Result<u64> {
        let (e, fh, _) = t.create(&ctx(), dir, name, 0o644, libc::O_RDWR as u32, 0).await?;
        t.write(&ctx(), e.nodeid, fh, 0, data, 0).await?;
        t.release(&ctx(), e.nodeid, fh, 0).await?;
        Ok(e.nodeid)
    }

    #[tokio::test]
    async fn synthetic_root_holds_the_mount_points() {
        let t: MountTable<ObjectFs, ObjectFs> = MountTable::new(None);
        t.add_mount("/data", memfs(), false).unwrap();
        t.add_mount("/a/b", memfs(), false).unwrap();
        t.add_mount("/ro", memfs(), true).unwrap();
        t.init(abi::FUSE_SUBMOUNTS);
        assert_eq!(names(&t, ROOT).await, ["a", "data", "ro"]);
        let (attr, _) = t.getattr(&ctx(), ROOT, None).await.unwrap();
        assert_eq!(attr.mode, libc::S_IFDIR | 0o555);

        let data = t.lookup(&ctx(), ROOT, b"data").await.unwrap();
        assert_eq!(data.nodeid >> SHIFT, 1);
        assert_ne!(data.attr.flags & abi::FUSE_ATTR_SUBMOUNT, 0, "announced as a submount");
        let a = t.lookup(&ctx(), ROOT, b"a").await.unwrap();
        assert_eq!(a.nodeid >> SHIFT, 0, "an intermediate directory of the synthetic root");
        assert_eq!(names(&t, a.nodeid).await, ["b"]);
        let b = t.lookup(&ctx(), a.nodeid, b"b").await.unwrap();
        assert_eq!(b.nodeid >> SHIFT, 2);
        assert_eq!(t.lookup(&ctx(), ROOT, b"nope").await.unwrap_err(), Errno::ENOENT);
        assert_eq!(t.lookup(&ctx(), a.nodeid, b"c").await.unwrap_err(), Errno::ENOENT);

        // The synthetic tree is read-only.
        assert_eq!(t.mkdir(&ctx(), ROOT, b"x", 0o755, 0).await.unwrap_err(), Errno::EROFS);
        assert_eq!(put(&t, a.nodeid, b"f", b"x").await.unwrap_err(), Errno::EROFS);
        assert_eq!(t.rmdir(&ctx(), ROOT, b"data").await.unwrap_err(), Errno::EROFS);
        assert_eq!(t.access(&ctx(), ROOT, libc::W_OK as u32).await.unwrap_err(), Errno::EROFS);

        // Mounts are separate file systems.
        let f = put(&t, data.nodeid, b"f", b"in data").await.unwrap();
        assert_eq!(f >> SHIFT, 1);
        put(&t, b.nodeid, b"g", b"in a/b").await.unwrap();
        assert_eq!(names(&t, data.nodeid).await, ["f"]);
        assert_eq!(names(&t, b.nodeid).await, ["g"]);
        assert_eq!(t.rename(&ctx(), data.nodeid, b"f", b.nodeid, b"f", 0).await.unwrap_err(), Errno::EXDEV);
        assert_eq!(t.link(&ctx(), f, b.nodeid, b"l").await.unwrap_err(), Errno::EXDEV);
        t.rename(&ctx(), data.nodeid, b"f", data.nodeid, b"f2", 0).await.unwrap();

        let ro = t.lookup(&ctx(), ROOT, b"ro").await.unwrap();
        assert_eq!(ro.attr.mode, libc::S_IFDIR | 0o555);
        assert_eq!(put(&t, ro.nodeid, b"f", b"x").await.unwrap_err(), Errno::EROFS);
        assert_eq!(t.mkdir(&ctx(), ro.nodeid, b"d", 0o755, 0).await.unwrap_err(), Errno::EROFS);
        assert!(names(&t, ro.nodeid).await.is_empty());

        // Hostile ids: no panic, an errno.
        assert_eq!(t.getattr(&ctx(), 99 << SHIFT | 1, None).await.unwrap_err(), ESTALE);
        assert_eq!(t.getattr(&ctx(), 1 << SHIFT, None).await.unwrap_err(), Errno::EBADF);
        assert_eq!(t.getattr(&ctx(), 12345, None).await.unwrap_err(), ESTALE);
    }

    #[tokio::test]
    async fn mounts_are_added_and_removed_at_runtime() {
        let t: MountTable<ObjectFs, ObjectFs> = MountTable::new(None);
        t.init(0);
        t.add_mount("/x", memfs(), false).unwrap();
        let x = t.lookup(&ctx(), ROOT, b"x").await.unwrap();
        let f = put(&t, x.nodeid, b"f", b"old").await.unwrap();
        assert_eq!(t.add_mount("/x", memfs(), false).unwrap_err(), "mount path /x: overlaps the mount at /x");
        assert!(t.add_mount("/x/y", memfs(), false).is_err(), "inside a mount");
        assert!(t.add_mount("/", memfs(), false).is_err());
        assert!(t.add_mount("y", memfs(), false).is_err());

        // A new mount is found by new lookups; the others are untouched.
        t.add_mount("/y/z", memfs(), false).unwrap();
        assert_eq!(names(&t, ROOT).await, ["x", "y"]);
        let y = t.lookup(&ctx(), ROOT, b"y").await.unwrap();
        let z = t.lookup(&ctx(), y.nodeid, b"z").await.unwrap();
        put(&t, z.nodeid, b"g", b"z").await.unwrap();
        assert_eq!(t.getattr(&ctx(), f, None).await.unwrap().0.size, 3);

        // A file open across the removal.
        let (o, ofh, _) = t.create(&ctx(), x.nodeid, b"open", 0o644, libc::O_RDWR as u32, 0).await.unwrap();
        assert_eq!(t.write(&ctx(), o.nodeid, ofh, 0, b"pending", 0).await.unwrap(), 7);

        // Removed: its ids are stale, the path is gone, the others serve.
        let gone = t.remove_mount("/x").expect("was mounted");
        assert_eq!(t.write(&ctx(), o.nodeid, ofh, 7, b"more", 0).await.unwrap_err(), ESTALE);
        // ... but closing still reaches it: the data written before is uploaded.
        t.flush(&ctx(), o.nodeid, ofh).await.unwrap();
        t.release(&ctx(), o.nodeid, ofh, 0).await.unwrap();
        t.forget(o.nodeid, 1);
        let e = gone.fs.lookup(&ctx(), ROOT, b"open").await.unwrap();
        assert_eq!(e.attr.size, 7, "uploaded at close after the removal");
        assert_eq!(gone.path, "/x");
        assert!(t.remove_mount("/x").is_none());
        assert_eq!(t.getattr(&ctx(), f, None).await.unwrap_err(), ESTALE);
        assert_eq!(t.getattr(&ctx(), x.nodeid, None).await.unwrap_err(), ESTALE);
        assert_eq!(t.opendir(&ctx(), x.nodeid, 0).await.unwrap_err(), ESTALE);
        t.forget(f, 1);
        assert_eq!(t.lookup(&ctx(), ROOT, b"x").await.unwrap_err(), Errno::ENOENT);
        assert_eq!(names(&t, ROOT).await, ["y"]);
        assert_eq!(names(&t, z.nodeid).await, ["g"]);

        // Mounted again at the same path: a new slot, old ids stay stale.
        t.add_mount("/x", memfs(), false).unwrap();
        let x2 = t.lookup(&ctx(), ROOT, b"x").await.unwrap();
        assert_ne!(x2.nodeid, x.nodeid);
        assert_eq!(t.getattr(&ctx(), f, None).await.unwrap_err(), ESTALE);
        assert!(names(&t, x2.nodeid).await.is_empty(), "a fresh memory back-end");
        assert_eq!(t.mounts().iter().map(|m| m.path.clone()).collect::<Vec<_>>(), ["/x", "/y/z"]);

        // Removing the only mount below /y leaves /y stale-but-harmless.
        t.remove_mount("/y/z").unwrap();
        assert!(names(&t, y.nodeid).await.is_empty());
        assert_eq!(t.lookup(&ctx(), y.nodeid, b"z").await.unwrap_err(), Errno::ENOENT);
    }

    #[tokio::test]
    async fn a_root_file_system_with_mounts() {
        let t: MountTable<ObjectFs, ObjectFs> = MountTable::new(Some(memfs()));
        t.init(0);
        t.add_mount("/m", memfs(), false).unwrap();
        t.add_mount("/deep/er", memfs(), false).unwrap();
        put(&t, ROOT, b"rootfile", b"r").await.unwrap();
        // The mount point needs no directory in the root store.
        let m = t.lookup(&ctx(), ROOT, b"m").await.unwrap();
        assert_eq!(m.nodeid >> SHIFT, 1);
        put(&t, m.nodeid, b"inm", b"m").await.unwrap();
        assert_eq!(names(&t, m.nodeid).await, ["inm"]);
        // Names on mount paths are guarded in the root.
        assert_eq!(t.mkdir(&ctx(), ROOT, b"m", 0o755, 0).await.unwrap_err(), Errno::EEXIST);
        assert_eq!(put(&t, ROOT, b"m", b"x").await.unwrap_err(), Errno::EEXIST);
        assert_eq!(t.rename(&ctx(), ROOT, b"rootfile", ROOT, b"m", 0).await.unwrap_err(), Errno::EBUSY);
        // An intermediate directory must exist in the root store.
        assert_eq!(t.lookup(&ctx(), ROOT, b"deep").await.unwrap_err(), Errno::ENOENT);
        t.remove_mount("/deep/er").unwrap();
        let deep = t.mkdir(&ctx(), ROOT, b"deep", 0o755, 0).await.unwrap();
        t.mkdir(&ctx(), deep.nodeid, b"er", 0o755, 0).await.unwrap();
        put(&t, deep.nodeid, b"sibling", b"s").await.unwrap();
        t.add_mount("/deep/er", memfs(), false).unwrap();
        assert_eq!(t.rmdir(&ctx(), ROOT, b"deep").await.unwrap_err(), Errno::EBUSY);
        let deep = t.lookup(&ctx(), ROOT, b"deep").await.unwrap();
        assert_eq!(deep.nodeid >> SHIFT, 0);
        let er = t.lookup(&ctx(), deep.nodeid, b"er").await.unwrap();
        assert_eq!(er.nodeid >> SHIFT, 3, "the mount, not the root's directory");
        // READDIRPLUS of the parent hands out the mount's root.
        let (fh, _) = t.opendir(&ctx(), deep.nodeid, 0).await.unwrap();
        let v = t.readdir(&ctx(), deep.nodeid, fh, 0, 65536, true).await.unwrap();
        let d = v.iter().find(|d| d.name == b"er").expect("listed");
        assert_eq!(d.ino, er.nodeid);
        assert_eq!(d.entry.map(|e| e.nodeid), Some(er.nodeid));
        // The root stays writable elsewhere.
        assert_eq!(t.getattr(&ctx(), put(&t, ROOT, b"other", b"oo").await.unwrap(), None).await.unwrap().0.size, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_mount_is_bounded_and_does_not_hold_up_the_others() {
        let mut slow = Config::default_memory();
        slow.backend_settings.inject_latency = Duration::from_secs(3);
        slow.backend_settings.inject_latency_paths = "stuck".into();
        let t: Arc<MountTable<ObjectFs, ObjectFs>> = Arc::new(MountTable::new(None).with_max_inflight(2));
        t.add_mount("/slow", memfs_with(&slow), false).unwrap();
        t.add_mount("/fast", memfs(), false).unwrap();
        t.init(0);
        let s = t.lookup(&ctx(), ROOT, b"slow").await.unwrap().nodeid;
        let f = t.lookup(&ctx(), ROOT, b"fast").await.unwrap().nodeid;
        let mut stuck = Vec::new();
        for _ in 0..2 {
            let t = t.clone();
            stuck.push(tokio::spawn(async move { t.lookup(&ctx(), s, b"stuck").await }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        assert_eq!(t.lookup(&ctx(), s, b"other").await.unwrap_err(), Errno::EIO, "over the bound: EIO at once");
        assert_eq!(t.mounts()[0].refused() + t.mounts()[1].refused(), 1);
        for i in 0..20 {
            put(&t, f, format!("f{i}").as_bytes(), b"data").await.unwrap();
        }
        assert_eq!(names(&t, f).await.len(), 20);
        let fast = t0.elapsed();
        assert!(fast < Duration::from_secs(2), "the other mount waited: {fast:?}");
        for h in stuck {
            assert_eq!(h.await.unwrap().unwrap_err(), Errno::ENOENT, "the stalled lookups finish");
        }
        // Below the bound again: served.
        assert_eq!(t.lookup(&ctx(), s, b"other").await.unwrap_err(), Errno::ENOENT);
        eprintln!("other mount: 20 creates + a listing in {fast:?} while the stalled mount was at its bound");
    }
}
