//! POSIX on an object store (any OpenDAL service, reached through `backend`).
//!
//! Mapping (gcsfuse style, see docs/SEMANTICS.md): key = path, `/` separates
//! directories; a directory is a marker or implied by keys below it, and wins
//! over a file of the same name. Nothing is kept but bounded, per-session
//! state: the inode table, open handles, and the staged bytes of files being
//! written.
//!
//! Writes: a file open for writing is staged in a memfd ([`Staged`]), loaded
//! from the object first when an existing object is modified (read-modify-
//! write). FLUSH, FSYNC, RELEASE and O_SYNC/O_DSYNC writes upload the whole
//! file as one PUT or one multipart upload, so the object is replaced
//! atomically and never visible half-written.
//!
//! Memory: staged bytes are counted against `dirty_limit` (part of the
//! cache's `memory_limit`); writers wait for room (back-pressure) while
//! streamed parts give their memory back and other staged files are
//! uploaded early. With write-back on, a periodic flusher uploads files that
//! stayed dirty. Reads of unmodified files go through the block cache with
//! per-handle readahead; directory listings may be reused for a TTL.
//! See docs/ARCHITECTURE.md ("Writes and durability", "Reads").
//!
//! Lock order: `open` (std mutex, the open-file table) may be taken while
//! holding nothing else; an open file's `state` (tokio mutex) may be held
//! across back-end calls and is the only lock ever held across `.await`; a
//! file's `snap` (std mutex) is taken last and briefly. Never two `state`
//! locks at once. `inflight`, `listings`, `memo` and a handle's `ra` are
//! leaves.
//!
//! Round trips saved (docs/PERFORMANCE.md, small files): a CREATE right
//! after a LOOKUP that the back-end answered "not found" skips its own
//! existence check when that miss is younger than `negative_timeout` (the
//! staleness of "not found" the configuration accepts; 0, the default,
//! turns this off), and a directory's
//! attributes are reused for `dir_cache_ttl` (the kernel asks for them again
//! after every change inside it). In a directory whose complete contents
//! are known here (one this daemon created, or one it listed whole), kept up
//! to date with the changes made here, a LOOKUP or CREATE of a name not in
//! it is "not found" without a request while that knowledge is younger than
//! both `negative_timeout` and `dir_cache_ttl`. See [`Memo`], [`KnownDir`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::handle::HandleTable;
use super::inode::{InodeTable, Kind};
use super::staging::Staged;
use crate::backend::{Backend, Caps, EntryKind, ErrorKind, Meta, ObjectWriter, PosixMeta};
use crate::cache::{BlockCache, BlockKey, Lookup, Version};
use crate::fuse::abi::{self, RENAME_NOREPLACE};
use crate::fuse::filesystem::Result;
use crate::fuse::{reply, Ctx, DirEntry, Entry, Errno, Filesystem, SetAttr, TimeSpec};

// DAX (FUSE_SETUPMAPPING) lives apart: the guest maps the staging memfd.
#[path = "object_dax.rs"]
mod dax;

/// Knobs of the object-store file system.
#[derive(Clone, Debug)]
pub struct ObjectFsOptions {
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    /// How long the kernel may remember that a name does not exist (0: not
    /// at all, so objects created by other programs appear at once).
    pub negative_timeout: Duration,
    pub file_mode: u32,
    pub dir_mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Files up to this size are uploaded with one PUT; larger ones stream as
    /// a multipart upload in parts of this size.
    pub part_size: usize,
    /// Largest file the guest may create (EFBIG beyond).
    pub max_file_size: u64,
    /// Most objects a directory rename may move.
    pub rename_dir_limit: usize,
    /// Write-back: a periodic flusher uploads dirty files every
    /// `flush_interval` without waiting for FLUSH/FSYNC/RELEASE.
    pub write_back: bool,
    pub flush_interval: Duration,
    /// Staged bytes allowed before writers wait for uploads (`None`: a
    /// quarter of the cache's memory limit, else 64 MiB). With a cache, the
    /// cache's pool gives up this much of its limit.
    pub dirty_limit: Option<usize>,
    /// Largest readahead window per handle (0: off).
    pub readahead_max: usize,
    /// Reuse of a directory listing for READDIR/LOOKUP/GETATTR (0: off).
    pub dir_cache_ttl: Duration,
    /// Use listing attributes even where listings carry no POSIX metadata.
    pub listing_attrs: bool,
}

impl ObjectFsOptions {
    /// Take the `[cache_settings]` knobs of this file system from `c`.
    pub fn with_cache_settings(mut self, c: &crate::config::CacheSettings) -> Self {
        self.attr_timeout = c.attr_timeout;
        self.entry_timeout = c.entry_timeout;
        self.negative_timeout = c.negative_timeout;
        self.write_back = c.enabled_cache_write_back;
        self.flush_interval = c.flush_interval;
        self.dirty_limit = Some(c.dirty_limit.unwrap_or(c.memory_limit / 4));
        self.readahead_max = c.readahead_max;
        self.dir_cache_ttl = c.dir_cache_ttl;
        self.listing_attrs = c.listing_attrs;
        self
    }
}

impl Default for ObjectFsOptions {
    fn default() -> Self {
        ObjectFsOptions {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            negative_timeout: Duration::ZERO,
            file_mode: 0o644,
            dir_mode: 0o755,
            uid: 0,
            gid: 0,
            part_size: 8 << 20,
            max_file_size: 1 << 40,
            rename_dir_limit: 10_000,
            write_back: false,
            flush_interval: Duration::from_secs(5),
            dirty_limit: None,
            readahead_max: 64 << 20,
            dir_cache_ttl: Duration::ZERO,
            listing_attrs: false,
        }
    }
}

/// Attributes of an open file, readable without waiting for its state lock.
#[derive(Clone, Debug)]
struct Snapshot {
    /// The staged bytes are authoritative (file created, written or truncated).
    staged: bool,
    /// The object exists in the back-end (false for a new file not yet uploaded).
    in_backend: bool,
    unlinked: bool,
    size: u64,
    mtime: SystemTime,
    posix: PosixMeta,
    /// The object's version (etag, else size and mtime) when it was opened:
    /// cached blocks of another version are not served (close-to-open
    /// consistency with other writers).
    version: Option<Version>,
    /// The object's size when it was opened (readahead stops there).
    object_size: Option<u64>,
}

#[derive(Debug)]
struct FileState {
    staged: Option<Staged>,
    dirty: bool,
    /// The only change not uploaded yet is the emptying done by CREATE or
    /// an O_TRUNC open. FLUSH then does not upload: `cmd > file` (open with
    /// O_TRUNC, dup2, close, write...) would otherwise replace the object
    /// with an empty one before the first byte is written. RELEASE and FSYNC
    /// upload it.
    opened_empty: bool,
    /// Every write so far appended to a file that started empty (created,
    /// or opened with O_TRUNC): its upload may stream while it is written.
    sequential: bool,
    /// The multipart upload streaming this file's first `sent` bytes.
    stream: Option<Stream>,
    /// Bytes `[0, punched)` of the staged file were sent by `stream` and
    /// their memory given back (only under memory pressure). While the
    /// stream is open they exist nowhere but in the upload.
    punched: u64,
    /// A streamed upload whose released parts cannot be re-sent failed:
    /// reported by every later FSYNC/FLUSH/RELEASE of the file.
    lost: Option<Errno>,
    /// When the file last became dirty (the periodic flusher's clock).
    dirty_since: Option<Instant>,
}

/// A multipart upload that started while the file was still being written
/// sequentially. The bytes stay staged, so it can be abandoned at any time
/// (a non-sequential write, a truncate, new metadata) for a whole upload at
/// the durability point. The object appears only when it is closed.
struct Stream {
    writer: ObjectWriter,
    sent: u64,
    posix: PosixMeta,
    /// Memory of the parts handed to `writer`, reused once it is done with them.
    parts: Arc<PartPool>,
}

/// The buffers of one streaming upload's parts. A part is read from the
/// staging memfd into a buffer lent to the back-end writer, which gives it
/// back when the part is uploaded; the next part reuses it instead of
/// faulting in fresh memory (a page fault per 4 KiB page, for every byte of
/// a large file). At most [`PART_POOL_IDLE`] buffers wait here, and they go
/// with the stream.
#[derive(Debug, Default)]
struct PartPool {
    idle: Mutex<Vec<Vec<u8>>>,
}

/// Idle part buffers a stream keeps for reuse.
const PART_POOL_IDLE: usize = 2;

/// One part's bytes lent to the back-end; back to its pool when dropped.
struct PooledPart {
    buf: Vec<u8>,
    pool: std::sync::Weak<PartPool>,
}

impl AsRef<[u8]> for PooledPart {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledPart {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < PART_POOL_IDLE {
                idle.push(std::mem::take(&mut self.buf));
            }
        }
    }
}

impl PartPool {
    /// `[off, off + len)` of `staged` (short at EOF) in a pooled buffer.
    fn read(self: &Arc<Self>, staged: &Staged, off: u64, len: usize) -> std::io::Result<Bytes> {
        let mut buf = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop().unwrap_or_default();
        staged.read_into(off, len, &mut buf)?;
        Ok(Bytes::from_owner(PooledPart { buf, pool: Arc::downgrade(self) }))
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("sent", &self.sent).finish_non_exhaustive()
    }
}

/// Per-node state shared by all handles of an open file.
#[derive(Debug)]
struct OpenFile {
    state: tokio::sync::Mutex<FileState>,
    snap: Mutex<Snapshot>,
    /// Staged bytes this file holds against the budget (see [`Budget`]).
    charged: AtomicU64,
    budget: Arc<Budget>,
}

/// Staged bytes of all open files against `dirty_limit`.
#[derive(Debug)]
struct Budget {
    used: AtomicU64,
    limit: AtomicU64,
    /// Signalled whenever staged bytes are given back.
    freed: tokio::sync::Notify,
}

impl Budget {
    fn over(&self, extra: u64) -> bool {
        self.used.load(Ordering::Acquire).saturating_add(extra) > self.limit.load(Ordering::Relaxed)
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        let c = self.charged.swap(0, Ordering::AcqRel);
        if c > 0 {
            self.budget.used.fetch_sub(c, Ordering::AcqRel);
            self.budget.freed.notify_waiters();
        }
    }
}

impl OpenFile {
    fn snap(&self) -> Snapshot {
        self.snap.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.snap.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Debug)]
struct FileHandle {
    nodeid: u64,
    file: Arc<OpenFile>,
    writable: bool,
    ra: Mutex<ReadAhead>,
}

/// Sequential-read detection of one handle.
#[derive(Debug, Default)]
struct ReadAhead {
    /// End of the previous read (0 before the first).
    last_end: u64,
    /// Sequential reads in a row.
    streak: u32,
    /// Current window (0: off).
    window: u64,
    /// Readahead has been issued up to here.
    issued: u64,
}

/// Blocks being fetched (readahead or a foreground miss): waiters acquire
/// the semaphore, which the fetcher closes when the block is in the cache
/// (or the fetch failed).
type InFlight = Arc<Mutex<HashMap<BlockKey, Arc<tokio::sync::Semaphore>>>>;

#[derive(Debug)]
struct Listed {
    name: String,
    kind: Kind,
    meta: Option<Meta>,
}

#[derive(Debug)]
struct DirHandle {
    nodeid: u64,
    snapshot: Mutex<Option<Arc<Vec<Listed>>>>,
}

/// The object-store file system (a handle on [`Core`], shared with the
/// periodic flusher task).
pub struct ObjectFs {
    core: Arc<Core>,
}

/// See [`ObjectFs::observer`]: every read is `None` once the file system is gone.
#[derive(Clone)]
pub struct Observer(std::sync::Weak<Core>);

impl Observer {
    /// Staged bytes of files being written, and their limit.
    pub fn staged_bytes(&self) -> Option<(u64, u64)> {
        self.0.upgrade().map(|c| (c.budget.used.load(Ordering::Acquire), c.budget.limit.load(Ordering::Relaxed)))
    }

    /// Nodes the guest holds (lookups not yet forgotten), open file
    /// handles, open directory handles.
    pub fn counts(&self) -> Option<(usize, usize, usize)> {
        self.0.upgrade().map(|c| (c.inodes.len(), c.files.len(), c.dirs.len()))
    }

    /// Data cache hits, misses, evictions and pool bytes in use.
    pub fn cache_counters(&self) -> Option<(u64, u64, u64, u64)> {
        self.0.upgrade().and_then(|c| c.cache.as_ref().map(|cache| cache.counters()))
    }

    /// Blocks in the data cache's index.
    pub fn cache_entries(&self) -> Option<usize> {
        self.0.upgrade().and_then(|c| c.cache.as_ref().map(|cache| cache.entries()))
    }

    /// Bytes uploaded by streaming writers, uploads by the write-back flusher.
    pub fn uploads(&self) -> Option<(u64, u64)> {
        self.0.upgrade().map(|c| (c.streamed.load(Ordering::Relaxed), c.flushed.load(Ordering::Relaxed)))
    }
}

/// Changes the options of a running [`ObjectFs`] (configuration reload);
/// does nothing once the file system is gone.
#[derive(Clone)]
pub struct Tuner(std::sync::Weak<Core>);

impl Tuner {
    /// Take `opts` (TTLs, POSIX defaults, readahead, listing cache,
    /// write-back, dirty limit: everything is read per request), the data
    /// cache's TTL (`None`: no expiry) and its memory bound. Requests in
    /// flight finish with the options they loaded.
    ///
    /// The memory bound is split as at start (the staged bytes' share, the
    /// rest for the block pool) but cannot grow past the bound the pool was
    /// created with ([`Tuner::max_memory_limit`]); blocks over a lowered
    /// bound are evicted now.
    pub fn apply(&self, mut opts: ObjectFsOptions, cache_ttl: Option<Duration>, memory_limit: usize) {
        let Some(core) = self.0.upgrade() else { return };
        // Never in a running file system.
        opts.max_file_size = core.opts().max_file_size;
        match &core.cache {
            Some(cache) => {
                let total = memory_limit.min(cache.pool().max_memory_limit());
                let dirty = opts.dirty_limit.unwrap_or(total / 4).min(total / 2);
                cache.set_ttl(cache_ttl);
                cache.pool().set_memory_limit(total - dirty);
                core.budget.limit.store(dirty as u64, Ordering::Relaxed);
                while cache.pool().used_bytes() > total - dirty && cache.evict_one() {}
                opts.dirty_limit = Some(dirty);
            }
            None => {
                let dirty = opts.dirty_limit.unwrap_or(DEFAULT_DIRTY_LIMIT);
                core.budget.limit.store(dirty as u64, Ordering::Relaxed);
            }
        }
        if core.opts().dir_cache_ttl != opts.dir_cache_ttl {
            core.listings.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        core.opts.store(Arc::new(opts));
        core.budget.freed.notify_waiters();
    }

    /// The largest `memory_limit` a reload may set: the one the data cache
    /// was created with (`None`: no data cache).
    pub fn max_memory_limit(&self) -> Option<usize> {
        self.0.upgrade().and_then(|c| c.cache.as_ref().map(|c| c.pool().max_memory_limit()))
    }

    /// See [`Backend::check_reconfigure`] (false once the file system is gone).
    pub fn check_backend(
        &self,
        storage: &crate::config::StorageSettings,
        settings: &crate::config::BackendSettings,
    ) -> std::result::Result<(), String> {
        match self.0.upgrade() {
            Some(core) => core.backend.check_reconfigure(storage, settings).map_err(|e| e.message().to_string()),
            None => Ok(()),
        }
    }

    /// Swap the back-end's operator ([`Backend::reconfigure`]).
    pub fn reconfigure_backend(
        &self,
        storage: &crate::config::StorageSettings,
        settings: &crate::config::BackendSettings,
    ) -> std::result::Result<(), String> {
        match self.0.upgrade() {
            Some(core) => core.backend.reconfigure(storage, settings).map_err(|e| e.message().to_string()),
            None => Ok(()),
        }
    }

    /// The data cache's TTL (`Some(None)`: no expiry; `None`: no cache or
    /// the file system is gone).
    pub fn cache_ttl(&self) -> Option<Option<Duration>> {
        self.0.upgrade().and_then(|c| c.cache.as_ref().map(|c| c.ttl()))
    }

    /// The current options (tests).
    pub fn options(&self) -> Option<ObjectFsOptions> {
        self.0.upgrade().map(|c| (*c.opts()).clone())
    }
}

impl std::ops::Deref for ObjectFs {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

/// The state of an [`ObjectFs`].
pub struct Core {
    backend: Backend,
    caps: Caps,
    /// Replaced whole by a configuration reload ([`ObjectFs::tuner`]); read
    /// with [`Core::opts`] (a lock-free load).
    opts: arc_swap::ArcSwap<ObjectFsOptions>,
    inodes: InodeTable,
    files: HandleTable<FileHandle>,
    dirs: HandleTable<DirHandle>,
    /// nodeid -> (open file, number of handles + internal users).
    open: Mutex<HashMap<u64, (Arc<OpenFile>, usize)>>,
    /// Time shown for objects the back-end gives no time for (the root,
    /// implied directories): when this daemon started.
    started: SystemTime,
    /// Data blocks read from the back-end (memfd pool), keyed by node id.
    cache: Option<BlockCache>,
    /// Bytes sent by streaming uploads while files were being written.
    streamed: std::sync::atomic::AtomicU64,
    budget: Arc<Budget>,
    inflight: InFlight,
    /// Directory path -> (listed at, listing), reused for `dir_cache_ttl`.
    listings: Mutex<HashMap<String, CachedListing>>,
    flusher: std::sync::atomic::AtomicBool,
    /// Uploads done by the periodic flusher.
    flushed: AtomicU64,
    /// DAX mappings of staged files and the per-inode DAX policy.
    dax: dax::DaxState,
    /// Fresh back-end answers reused to save round trips.
    memo: Mutex<Memo>,
}

/// Entries kept per map of [`Memo`] before stale ones are dropped.
const MAX_MEMO: usize = 4096;

/// Fresh back-end answers reused to save round trips. What it gives up:
/// - `misses`: kept for `negative_timeout` (none when it is 0, the
///   default): the "not found" staleness the configuration already accepts
///   from the guest kernel's negative entries. A key another client of the
///   bucket creates between a LOOKUP that missed and the CREATE right after
///   it (within that time) is not seen, and the new file replaces it at its
///   first upload. Without the
///   memo the window is the same in kind: a key created between the CREATE's
///   check and the upload at FLUSH/RELEASE is replaced too (there is no
///   conditional PUT here), so O_EXCL never held against other writers of
///   the bucket; the memo widens that window by the LOOKUP-to-CREATE gap.
///   An entry is used once, and any change of the path here drops it.
/// - `dirs`: a directory's attributes, kept for `dir_cache_ttl` like a
///   listing (off when that is 0). A directory removed or re-marked by
///   another client shows its old attributes until then. Changes made here
///   drop them: of the directory itself or below it, and of a child, except
///   that adding or rewriting a file on a store without real directories
///   leaves the parent's attributes as they are (an object store's directory
///   marker does not change when keys below it do).
/// - `known`: directories whose complete contents this daemon knows (see
///   [`KnownDir`]); a LOOKUP or CREATE of a name outside that set is
///   answered "not found" without a round trip.
#[derive(Default)]
struct Memo {
    misses: HashMap<String, Instant>,
    dirs: HashMap<String, (Instant, Meta)>,
    known: HashMap<String, KnownDir>,
}

/// The complete contents of a directory as far as this daemon knows: every
/// name the back-end had in it at `at` (an empty directory this daemon
/// created, or a full listing), plus every name changed here since. A name
/// outside `names` was not in the directory at `at` and has not been
/// created here since, so "not found" is as stale as `at` is old. It is
/// only claimed while that age is below both `negative_timeout` (the
/// staleness of "not found" the configuration accepts) and `dir_cache_ttl`
/// (the staleness of a listing it accepts); see [`Core::known_absent`].
///
/// `names` is a superset: a name is added before this daemon creates,
/// renames or changes anything at it, and never removed (an unlinked name
/// stays and is simply asked about). A change at the directory itself or
/// above it drops the entry (a renamed or removed directory).
struct KnownDir {
    /// When the observation began (before the request was sent); `None`
    /// while it is in flight: names added meanwhile are collected, the
    /// entry is not used, and it is only completed if still there.
    at: Option<Instant>,
    names: std::collections::HashSet<String>,
    /// Misses this knowledge answered (decides whether a re-listing pays).
    hits: u64,
}

/// Most names kept by one [`KnownDir`]; a directory with more is not known.
const MAX_KNOWN_NAMES: usize = 10_000;

/// Most [`KnownDir`]s kept (so at most 640,000 names in all).
const MAX_KNOWN_DIRS: usize = 64;

/// Most names kept by all [`KnownDir`]s together.
const MAX_KNOWN_TOTAL: usize = 100_000;

/// Keeps the [`KnownDir`]s right around a change made here (see
/// [`Core::changing`]): the change's name is noted again when it drops.
struct Changing<'a> {
    core: &'a Core,
    path: String,
    drop_self: bool,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.core.note_change(&self.path, self.drop_self);
    }
}

/// Names per page of a listing (S3 ListObjectsV2 returns at most 1000 keys
/// per request): the cost of re-listing a known directory, in requests.
const LIST_PAGE: usize = 1000;

impl Memo {
    fn bound<V>(m: &mut HashMap<String, V>, fresh: impl Fn(&V) -> bool) {
        if m.len() >= MAX_MEMO {
            m.retain(|_, v| fresh(v));
            if m.len() >= MAX_MEMO {
                m.clear();
            }
        }
    }
}

fn kind_of(meta: &Meta) -> Kind {
    match meta.kind {
        EntryKind::Dir => Kind::Dir,
        // s3fs keeps symlinks and special files as objects whose `mode`
        // metadata carries the file type.
        EntryKind::File => match meta.posix.mode.map(|m| m & libc::S_IFMT) {
            Some(libc::S_IFLNK) => Kind::Symlink,
            Some(t @ (libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK)) => Kind::Special(t),
            _ => Kind::File,
        },
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

/// The last component of `path` (the whole of it at the top level).
fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn name_str(name: &[u8]) -> Result<&str> {
    std::str::from_utf8(name).map_err(|_| Errno::EINVAL)
}

fn io_err(e: std::io::Error) -> Errno {
    tracing::warn!(error = %e, "staging I/O error");
    Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

/// An object's version: its etag, else its size and mtime.
fn version_of(m: &Meta) -> Version {
    match &m.etag {
        Some(e) => e.as_str().into(),
        None => {
            let t = m.mtime.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default();
            format!("{}:{}", m.size, t.as_nanos()).into()
        }
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// A directory listing and when it was taken.
type CachedListing = (Instant, Arc<Vec<Listed>>);

/// Most directory listings kept by the listing cache.
const MAX_LISTINGS: usize = 256;

/// Removes a block's in-flight mark and wakes its waiters, also when the
/// fetching task is cancelled (INTERRUPT).
struct FetchMark {
    inflight: InFlight,
    key: BlockKey,
    sem: Arc<tokio::sync::Semaphore>,
}

impl Drop for FetchMark {
    fn drop(&mut self) {
        let mut g = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if g.get(&self.key).is_some_and(|s| Arc::ptr_eq(s, &self.sem)) {
            g.remove(&self.key);
        }
        drop(g);
        self.sem.close();
    }
}

/// Mark `key` in flight; `None` when someone else is fetching it (their
/// semaphore is returned to wait on).
fn mark_fetch(inflight: &InFlight, key: BlockKey) -> std::result::Result<FetchMark, Arc<tokio::sync::Semaphore>> {
    let mut g = inflight.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = g.get(&key) {
        return Err(s.clone());
    }
    let sem = Arc::new(tokio::sync::Semaphore::new(0));
    g.insert(key, sem.clone());
    Ok(FetchMark { inflight: inflight.clone(), key, sem })
}

/// The bytes of the block at `boff` (block-aligned): fetched with one ranged
/// GET and cached, or, when a readahead is already fetching it, taken from
/// the cache once that fetch is done.
async fn fetch_block(
    backend: &Backend,
    cache: &BlockCache,
    inflight: &InFlight,
    ino: u64,
    path: &str,
    boff: u64,
    version: Version,
) -> Result<Bytes> {
    let key = cache.key(ino, boff);
    let mark = match mark_fetch(inflight, key) {
        Ok(m) => Some(m),
        Err(sem) => {
            // Closed when the other fetch ends.
            let _ = sem.acquire().await;
            if let Lookup::Hit(g) = cache.get(ino, boff) {
                if *g.version() == version {
                    return Ok(g.to_bytes());
                }
            }
            None
        }
    };
    let bs = cache.block_size() as u64;
    let data = backend.read(path, boff, bs).await?;
    if let Err(e) = cache.insert(ino, boff, &data, version) {
        tracing::debug!(error = %e, "block not cached");
    }
    drop(mark);
    Ok(data)
}

/// Fetch a block into the cache in the background (readahead).
fn spawn_fetch(
    backend: &Backend,
    cache: &BlockCache,
    inflight: &InFlight,
    ino: u64,
    path: &str,
    boff: u64,
    v: Version,
) {
    let Ok(mark) = mark_fetch(inflight, cache.key(ino, boff)) else { return };
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let (backend, cache, path) = (backend.clone(), cache.clone(), path.to_string());
    rt.spawn(async move {
        let bs = cache.block_size() as u64;
        match backend.read(&path, boff, bs).await {
            Ok(data) => {
                if let Err(e) = cache.insert(ino, boff, &data, v) {
                    tracing::debug!(error = %e, "readahead block not cached");
                }
            }
            Err(e) => tracing::debug!(error = %e, "readahead failed"),
        }
        drop(mark);
    });
}

/// Staged bytes allowed without a cache to take the limit from.
const DEFAULT_DIRTY_LIMIT: usize = 64 << 20;

impl ObjectFs {
    pub fn new(backend: Backend, opts: ObjectFsOptions) -> Self {
        let caps = backend.caps();
        let limit = opts.dirty_limit.unwrap_or(DEFAULT_DIRTY_LIMIT) as u64;
        let budget = Arc::new(Budget {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
            freed: tokio::sync::Notify::new(),
        });
        let core = Core {
            backend,
            caps,
            opts: arc_swap::ArcSwap::from_pointee(opts),
            inodes: InodeTable::new(),
            files: HandleTable::default(),
            dirs: HandleTable::default(),
            open: Mutex::new(HashMap::new()),
            started: now(),
            cache: None,
            streamed: std::sync::atomic::AtomicU64::new(0),
            budget,
            dax: Default::default(),
            inflight: Arc::default(),
            listings: Mutex::new(HashMap::new()),
            flusher: std::sync::atomic::AtomicBool::new(false),
            flushed: AtomicU64::new(0),
            memo: Mutex::default(),
        };
        ObjectFs { core: Arc::new(core) }
    }

    /// Bytes sent by streaming uploads before their files' durability point
    /// (tests, metrics).
    pub fn streamed_bytes(&self) -> u64 {
        self.streamed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Serve reads of unmodified files from `cache` (blocks of
    /// `cache.block_size()` bytes, fetched whole: a sequential reader makes
    /// one back-end request per block).
    ///
    /// The staged bytes of files being written share the pool's memory
    /// limit: the pool gives up `dirty_limit` of it (by default a quarter).
    pub fn with_cache(mut self, cache: BlockCache) -> Self {
        let core = Arc::get_mut(&mut self.core).expect("with_cache before the file system is shared");
        let total = cache.pool().memory_limit();
        let dirty = core.opts().dirty_limit.unwrap_or(total / 4).min(total / 2);
        cache.pool().set_memory_limit(total - dirty);
        core.budget.limit.store(dirty as u64, Ordering::Relaxed);
        core.cache = Some(cache);
        self
    }

    /// Uploads done by the periodic flusher (tests, metrics).
    pub fn background_uploads(&self) -> u64 {
        self.flushed.load(Ordering::Relaxed)
    }

    /// Start the periodic flusher (write-back) once, on the current tokio
    /// runtime. It holds only a weak reference: it ends with the file system.
    fn start_flusher(&self) {
        if self.flusher.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.flusher.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(&self.core);
        rt.spawn(async move {
            // `flush_interval` and `enabled_cache_write_back` are read at
            // every round: a configuration reload changes them live.
            loop {
                let every = match weak.upgrade() {
                    Some(core) => core.opts().flush_interval.max(Duration::from_millis(10)),
                    None => break,
                };
                tokio::time::sleep(every).await;
                let Some(core) = weak.upgrade() else { break };
                if core.opts().write_back {
                    core.flush_old(every).await;
                }
            }
        });
    }

    /// Staged bytes held by open files, and the limit (tests, metrics).
    pub fn staged_bytes(&self) -> (u64, u64) {
        (self.budget.used.load(Ordering::Acquire), self.budget.limit.load(Ordering::Relaxed))
    }

    /// A handle through which a configuration reload changes this file
    /// system's options while it serves (see [`Tuner`]).
    pub fn tuner(&self) -> Tuner {
        Tuner(Arc::downgrade(&self.core))
    }

    /// A handle for metrics gauges that reads this file system's counters
    /// without keeping it alive or taking its locks.
    pub fn observer(&self) -> Observer {
        Observer(Arc::downgrade(&self.core))
    }

    /// Data cache counters, when the cache is on (tests, metrics).
    pub fn cache_stats(&self) -> Option<crate::cache::CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// Live nodes, open file handles, open dir handles (tests, metrics).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.inodes.len(), self.files.len(), self.dirs.len())
    }
}

impl Core {
    /// The current options (a configuration reload may replace them).
    fn opts(&self) -> Arc<ObjectFsOptions> {
        self.opts.load_full()
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<OpenFile>, usize)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node(&self, nodeid: u64) -> Result<(String, Kind)> {
        self.inodes.get(nodeid).ok_or(Errno::ENOENT)
    }

    fn dir_child(&self, parent: u64, name: &[u8]) -> Result<String> {
        let (p, kind) = self.node(parent)?;
        if kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok(join(&p, name_str(name)?))
    }

    fn open_file(&self, nodeid: u64) -> Option<Arc<OpenFile>> {
        self.lock_open().get(&nodeid).map(|(f, _)| f.clone())
    }

    /// Take a reference on the node's open-file state, creating it with
    /// `init` when the file is not open yet.
    fn acquire(&self, nodeid: u64, init: impl FnOnce() -> Snapshot) -> Arc<OpenFile> {
        let mut g = self.lock_open();
        let e = g.entry(nodeid).or_insert_with(|| {
            let f = OpenFile {
                state: tokio::sync::Mutex::new(FileState {
                    staged: None,
                    dirty: false,
                    opened_empty: false,
                    sequential: false,
                    stream: None,
                    punched: 0,
                    lost: None,
                    dirty_since: None,
                }),
                snap: Mutex::new(init()),
                charged: AtomicU64::new(0),
                budget: self.budget.clone(),
            };
            (Arc::new(f), 0)
        });
        e.1 += 1;
        e.0.clone()
    }

    fn release_ref(&self, nodeid: u64) {
        let mut g = self.lock_open();
        if let Some(e) = g.get_mut(&nodeid) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                g.remove(&nodeid);
            }
        }
    }

    fn attr(&self, ino: u64, kind: Kind, size: u64, mtime: Option<SystemTime>, posix: &PosixMeta) -> abi::fuse_attr {
        let tbits = kind.type_bits();
        let default_perm = self.default_perm(kind);
        let perm = posix.mode.map(|m| m & 0o7777).unwrap_or(default_perm);
        let t = posix.mtime.or(mtime).unwrap_or(self.started);
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        abi::fuse_attr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: d.as_secs(),
            mtime: d.as_secs(),
            ctime: d.as_secs(),
            atimensec: d.subsec_nanos(),
            mtimensec: d.subsec_nanos(),
            ctimensec: d.subsec_nanos(),
            mode: tbits | perm,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid: posix.uid.unwrap_or(self.opts().uid),
            gid: posix.gid.unwrap_or(self.opts().gid),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn default_perm(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Dir => self.opts().dir_mode,
            Kind::Symlink => 0o777,
            Kind::File | Kind::Special(_) => self.opts().file_mode,
        }
    }

    fn attr_from_meta(&self, ino: u64, meta: &Meta) -> abi::fuse_attr {
        self.attr(ino, kind_of(meta), meta.size, meta.mtime, &meta.posix)
    }

    fn attr_from_snap(&self, ino: u64, s: &Snapshot) -> abi::fuse_attr {
        self.attr(ino, Kind::File, s.size, Some(s.mtime), &s.posix)
    }

    fn entry(&self, nodeid: u64, attr: abi::fuse_attr) -> Entry {
        Entry {
            nodeid,
            generation: self.inodes.generation(),
            attr,
            entry_valid: self.opts().entry_timeout,
            attr_valid: self.opts().attr_timeout,
        }
    }

    /// A file at `path` known only to this daemon (created, not uploaded yet).
    fn local_new_file(&self, path: &str) -> Option<(u64, Snapshot)> {
        let id = self.inodes.id_of(path)?;
        let f = self.open_file(id)?;
        let s = f.snap();
        (!s.in_backend && !s.unlinked).then_some((id, s))
    }

    /// What is at `path`: a local new file, or whatever the back-end says.
    async fn stat_path(&self, path: &str) -> Result<Meta> {
        if let Some((_, s)) = self.local_new_file(path) {
            return Ok(Meta { kind: EntryKind::File, size: s.size, mtime: Some(s.mtime), etag: None, posix: s.posix });
        }
        Ok(self.backend.lookup(path).await?)
    }

    async fn exists(&self, path: &str) -> Result<Option<Meta>> {
        match self.stat_path(path).await {
            Ok(m) => Ok(Some(m)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn new_posix(&self, ctx: &Ctx, mode: u32) -> PosixMeta {
        if !self.caps.user_metadata {
            return PosixMeta::default();
        }
        PosixMeta { mode: Some(mode), uid: Some(ctx.uid), gid: Some(ctx.gid), mtime: Some(now()) }
    }

    /// Load the object's current bytes into a staging memfd (read-modify-write).
    async fn load(&self, path: &str, in_backend: bool) -> Result<Staged> {
        let mut s = Staged::new().map_err(io_err)?;
        if !in_backend {
            return Ok(s);
        }
        let chunk = self.opts().part_size.max(1 << 20) as u64;
        let mut off = 0u64;
        loop {
            let data = self.backend.read(path, off, chunk).await?;
            if data.is_empty() {
                break;
            }
            s.write(off, &data).map_err(io_err)?;
            off += data.len() as u64;
            if (data.len() as u64) < chunk {
                break;
            }
        }
        Ok(s)
    }

    async fn ensure_staged(&self, nodeid: u64, file: &OpenFile, st: &mut FileState) -> Result<()> {
        if st.staged.is_some() {
            return Ok(());
        }
        let snap = file.snap();
        let (path, _, _) = self.inodes.get_any(nodeid).ok_or(Errno::ENOENT)?;
        let s = self.load(&path, snap.in_backend).await?;
        let size = s.size();
        st.staged = Some(s);
        st.punched = 0;
        file.update(|x| {
            x.staged = true;
            x.size = size;
        });
        Self::recharge(file, st);
        Ok(())
    }

    /// Bring the file's charge against the staged-bytes budget up to date:
    /// the memory its staging memfd holds (holes and released parts cost
    /// nothing).
    fn recharge(file: &OpenFile, st: &FileState) {
        let now = st.staged.as_ref().map(Staged::resident).unwrap_or(0);
        let old = file.charged.swap(now, Ordering::AcqRel);
        let b = &file.budget;
        if now > old {
            b.used.fetch_add(now - old, Ordering::AcqRel);
        } else if now < old {
            b.used.fetch_sub(old - now, Ordering::AcqRel);
            b.freed.notify_waiters();
        }
    }

    /// Upload a dirty file: one PUT, or a multipart upload for large files.
    async fn upload(&self, nodeid: u64, file: &OpenFile) -> Result<()> {
        let mut guard = file.state.lock().await;
        self.upload_locked(nodeid, file, &mut guard).await
    }

    /// [`Core::upload`] with the state lock held. A failure leaves the file
    /// dirty (the next durability point tries again), except for a streamed
    /// upload whose released parts are gone: that error sticks (`lost`).
    async fn upload_locked(&self, nodeid: u64, file: &OpenFile, st: &mut FileState) -> Result<()> {
        if let Some(e) = st.lost {
            return Err(e);
        }
        if !st.dirty && !self.dax_writable(nodeid) {
            return Ok(());
        }
        let snap = file.snap();
        let Some((path, _, linked)) = self.inodes.get_any(nodeid) else { return Ok(()) };
        if snap.unlinked || !linked {
            st.dirty = false;
            return Ok(());
        }
        let _change = self.changing(&path, true);
        let Some(staged) = st.staged.as_ref() else {
            st.dirty = false;
            return Ok(());
        };
        let size = staged.size();
        let part = self.opts().part_size as u64;
        if let Some(stream) = st.stream.take() {
            // The object's metadata is fixed when its upload starts: a
            // streamed file keeps the mode/owner it had then, and its `mtime`
            // metadata is the time the stream started.
            let same = |a: &PosixMeta, b: &PosixMeta| a.mode == b.mode && a.uid == b.uid && a.gid == b.gid;
            let released = st.punched > 0;
            if (released || same(&stream.posix, &snap.posix)) && stream.sent <= size {
                let changed = !same(&stream.posix, &snap.posix);
                if let Err(e) = self.finish_stream(&path, staged, stream, size).await {
                    if released {
                        tracing::warn!(path = %path, error = %e, "streamed upload failed after its parts were released");
                        st.lost = Some(e);
                        st.dirty = false;
                    }
                    return Err(e);
                }
                if changed {
                    // Parts already released: the metadata follows.
                    self.backend.set_posix(&path, &snap.posix).await?;
                }
                self.uploaded(nodeid, file, st);
                if released {
                    // The staged copy has holes: the object is the file now.
                    self.unstage(nodeid, file, st).await;
                }
                tracing::debug!(path = %path, size, "uploaded (streamed)");
                return Ok(());
            }
            let _ = stream.writer.abort().await;
        }
        if size <= part {
            let data = staged.read(0, size as usize).map_err(io_err)?;
            self.backend.write(&path, Bytes::from(data), &snap.posix).await?;
        } else {
            let mut w = self.backend.writer(&path, &snap.posix).await?;
            let parts = Arc::new(PartPool::default());
            let mut off = 0u64;
            while off < size {
                let data = match parts.read(staged, off, part.min(size - off) as usize) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(io_err(e));
                    }
                };
                off += data.len() as u64;
                if let Err(e) = w.write(data).await {
                    let _ = w.abort().await;
                    return Err(e.into());
                }
            }
            w.close().await?;
        }
        self.uploaded(nodeid, file, st);
        tracing::debug!(path = %path, size, "uploaded");
        Ok(())
    }

    /// Book-keeping after a successful upload.
    fn uploaded(&self, nodeid: u64, file: &OpenFile, st: &mut FileState) {
        st.dirty = false;
        st.opened_empty = false;
        st.dirty_since = None;
        file.update(|x| x.in_backend = true);
        self.forget_cached(nodeid);
        if let Some((p, _, _)) = self.inodes.get_any(nodeid) {
            self.forget_listing_added(&p);
        }
    }

    /// Drop a clean file's staged copy (memory pressure, or holes after a
    /// streamed upload): reads go to the object again, writes load it again.
    async fn unstage(&self, nodeid: u64, file: &OpenFile, st: &mut FileState) {
        // A DAX-mapped memfd is what the guest sees: never dropped under it.
        if st.dirty || st.stream.is_some() || file.snap().unlinked || st.staged.as_ref().is_some_and(|s| s.pins() > 0) {
            return;
        }
        st.staged = None;
        st.punched = 0;
        st.sequential = false;
        Self::recharge(file, st);
        // The new object's version, for reads through the cache.
        let version = match self.inodes.get_any(nodeid) {
            Some((path, _, true)) if self.cache.is_some() => {
                self.backend.lookup(&path).await.ok().map(|m| version_of(&m))
            }
            _ => None,
        };
        let object_size = version.as_ref().map(|_| file.snap().size);
        file.update(|x| {
            x.staged = false;
            x.version = version;
            x.object_size = object_size;
        });
    }

    /// Release the memory of parts a streaming upload has sent.
    fn release_sent(file: &OpenFile, st: &mut FileState) {
        let (Some(stream), Some(staged)) = (st.stream.as_ref(), st.staged.as_mut()) else { return };
        if staged.pins() > 0 {
            // Mapped by a guest (DAX): the bytes must stay.
            return;
        }
        let upto = stream.sent;
        if upto <= st.punched {
            return;
        }
        match staged.punch(st.punched, upto - st.punched) {
            Ok(()) => {
                st.punched = upto;
                Self::recharge(file, st);
            }
            Err(e) => tracing::warn!(error = %e, "cannot release staged memory"),
        }
    }

    /// A change is about to touch bytes a streaming upload released: finish
    /// that upload (the object becomes current) and drop the staged copy,
    /// so the change applies to a fresh load of the object.
    async fn settle_released(&self, nodeid: u64, file: &OpenFile, st: &mut FileState) -> Result<()> {
        if st.punched == 0 {
            return Ok(());
        }
        self.upload_locked(nodeid, file, st).await?;
        if st.staged.is_some() && st.punched > 0 {
            // Not uploaded (unlinked meanwhile): nothing to keep.
            st.staged = None;
            st.punched = 0;
            Self::recharge(file, st);
            file.update(|x| x.staged = false);
        }
        Ok(())
    }

    /// Wait until the staged bytes leave room for `extra` more (back-pressure
    /// on writers): release what streaming uploads already sent, then upload
    /// the largest staged files and drop their copies. A file staged whole
    /// that alone takes more than half the limit (random writes to a large
    /// object) is uploaded but keeps its copy: dropping it would reload the
    /// whole object on its next write. Returns when there is room, or when
    /// nothing more can be freed (no streaming upload left to wait for).
    /// Never called with a state lock held.
    async fn make_room(&self, extra: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let half = self.budget.limit.load(Ordering::Relaxed) / 2;
        while self.budget.over(extra) {
            let mut files: Vec<(u64, Arc<OpenFile>)> =
                self.lock_open().iter().map(|(id, (f, _))| (*id, f.clone())).collect();
            files.retain(|(_, f)| f.charged.load(Ordering::Relaxed) > 0);
            files.sort_by_key(|(_, f)| std::cmp::Reverse(f.charged.load(Ordering::Relaxed)));
            let mut freed = false;
            let mut streaming = false;
            let mut failed = None;
            for (id, f) in files {
                if !self.budget.over(extra) {
                    return Ok(());
                }
                let before = f.charged.load(Ordering::Relaxed);
                let mut st = f.state.lock().await;
                if st.stream.is_some() {
                    streaming = true;
                    Self::release_sent(&f, &mut st);
                } else if !st.opened_empty && !f.snap().unlinked {
                    match self.upload_locked(id, &f, &mut st).await {
                        Ok(()) if before <= half => self.unstage(id, &f, &mut st).await,
                        Ok(()) => {}
                        Err(e) => failed = Some(e),
                    }
                }
                freed |= f.charged.load(Ordering::Relaxed) < before;
            }
            if freed {
                continue;
            }
            if let Some(e) = failed {
                // The back-end refuses uploads: do not grow memory.
                return Err(e);
            }
            if !streaming || Instant::now() >= deadline {
                tracing::debug!("staged bytes stay above dirty_limit: nothing more can be released");
                return Ok(());
            }
            let wait = self.budget.freed.notified();
            let _ = tokio::time::timeout(Duration::from_millis(50), wait).await;
        }
        Ok(())
    }

    /// Send the rest of a streamed file and complete its upload.
    async fn finish_stream(&self, path: &str, staged: &Staged, mut stream: Stream, size: u64) -> Result<()> {
        let part = self.opts().part_size as u64;
        while stream.sent < size {
            let data = match stream.parts.read(staged, stream.sent, part.min(size - stream.sent) as usize) {
                Ok(d) => d,
                Err(e) => {
                    let _ = stream.writer.abort().await;
                    return Err(io_err(e));
                }
            };
            stream.sent += data.len() as u64;
            if let Err(e) = stream.writer.write(data).await {
                let _ = stream.writer.abort().await;
                return Err(e.into());
            }
        }
        tracing::trace!(path, "streamed upload complete");
        stream.writer.close().await.map_err(Errno::from)
    }

    /// While a file that started empty is written sequentially, stream it:
    /// the upload starts once two parts are staged (so files under two parts
    /// go out as one PUT), and from then on every part is sent as soon as it
    /// is complete, so that the durability point has as little as possible
    /// left to send (the back-end writer keeps one part of its own back and
    /// uploads a few concurrently). A failure abandons the stream: the whole
    /// file is uploaded at the durability point, unless parts were released
    /// already (then the failure is `lost`).
    async fn stream_parts(&self, nodeid: u64, file: &OpenFile, snap_posix: &PosixMeta, st: &mut FileState) {
        let part = self.opts().part_size as u64;
        let Some(size) = st.staged.as_ref().map(|s| s.size()) else { return };
        if !st.sequential {
            return;
        }
        match st.stream.as_ref() {
            Some(s) if size < s.sent + part => return,
            None if size < 2 * part => return,
            _ => {}
        }
        if st.stream.is_none() {
            let Some((path, _, true)) = self.inodes.get_any(nodeid) else { return };
            match self.backend.writer(&path, snap_posix).await {
                Ok(writer) => {
                    st.stream = Some(Stream { writer, sent: 0, posix: snap_posix.clone(), parts: Arc::default() })
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot start a streaming upload; the file is uploaded whole later");
                    return;
                }
            }
        }
        while let (Some(stream), Some(staged)) = (st.stream.as_mut(), st.staged.as_ref()) {
            if size < stream.sent + part {
                break;
            }
            let r = match stream.parts.read(staged, stream.sent, part as usize) {
                Ok(data) => stream.writer.write(data).await.map_err(Errno::from),
                Err(e) => Err(io_err(e)),
            };
            match r {
                Ok(()) => {
                    stream.sent += part;
                    self.streamed.fetch_add(part, Ordering::Relaxed);
                }
                Err(e) if st.punched > 0 => {
                    tracing::warn!(error = %e, "streamed upload failed after its parts were released");
                    Core::drop_stream(st).await;
                    st.lost = Some(e);
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "streaming upload abandoned; the file is uploaded whole later");
                    Core::drop_stream(st).await;
                    return;
                }
            }
        }
        if self.budget.over(0) {
            Self::release_sent(file, st);
        }
    }

    /// Abandon a streaming upload (the staged bytes stay authoritative;
    /// callers settle released parts first).
    async fn drop_stream(st: &mut FileState) {
        if let Some(s) = st.stream.take() {
            let _ = s.writer.abort().await;
        }
    }

    fn file_handle(&self, nodeid: u64, fh: u64) -> Result<Arc<FileHandle>> {
        let h = self.files.get(fh).ok_or(Errno::EBADF)?;
        if h.nodeid != nodeid {
            return Err(Errno::EBADF);
        }
        Ok(h)
    }

    fn dir_handle(&self, nodeid: u64, fh: u64) -> Result<Arc<DirHandle>> {
        let h = self.dirs.get(fh).ok_or(Errno::EBADF)?;
        if h.nodeid != nodeid {
            return Err(Errno::EBADF);
        }
        Ok(h)
    }

    async fn getattr_node(&self, nodeid: u64) -> Result<(abi::fuse_attr, Duration)> {
        if let Some(f) = self.open_file(nodeid) {
            let s = f.snap();
            if s.staged || !s.in_backend || s.unlinked {
                return Ok((self.attr_from_snap(nodeid, &s), self.opts().attr_timeout));
            }
        }
        let (path, kind) = self.node(nodeid)?;
        let meta = match self.listed(&path) {
            Some(Some(m)) => m,
            _ => match (kind == Kind::Dir).then(|| self.memo_dir(&path)).flatten() {
                Some(m) => m,
                None => {
                    let m = self.backend.lookup(&path).await?;
                    self.note_dir(&path, &m);
                    m
                }
            },
        };
        if kind_of(&meta) != kind {
            return Err(Errno::ENOENT);
        }
        Ok((self.attr_from_meta(nodeid, &meta), self.opts().attr_timeout))
    }

    /// Open a file node: returns the open-file state (reference taken).
    async fn open_node(&self, nodeid: u64, path: &str, writable: bool) -> Result<Arc<OpenFile>> {
        if let Some(f) = self.open_file(nodeid) {
            // Already open: share its state.
            return Ok(self.acquire(nodeid, || f.snap()));
        }
        // Writers need the object's metadata to keep it on rewrite; readers
        // through the cache need its version.
        let (posix, version, object_size) = if (writable && self.caps.user_metadata) || self.cache.is_some() {
            let m = self.backend.lookup(path).await?;
            if m.kind == EntryKind::Dir {
                return Err(Errno::EISDIR);
            }
            let version = version_of(&m);
            (if writable { m.posix } else { PosixMeta::default() }, Some(version), Some(m.size))
        } else {
            (PosixMeta::default(), None, None)
        };
        Ok(self.acquire(nodeid, || Snapshot {
            staged: false,
            in_backend: true,
            unlinked: false,
            size: 0,
            mtime: now(),
            posix,
            version,
            object_size,
        }))
    }

    /// Set a file's size; `from_open` for the emptying of an O_TRUNC open.
    async fn truncate(&self, nodeid: u64, file: &OpenFile, size: u64, from_open: bool) -> Result<()> {
        if size > self.opts().max_file_size {
            return Err(Errno::EFBIG);
        }
        let mut st = file.state.lock().await;
        if size == 0 {
            // Everything goes: released parts need no settling.
            Core::drop_stream(&mut st).await;
            st.punched = 0;
            st.lost = None;
        } else {
            self.settle_released(nodeid, file, &mut st).await?;
        }
        if size == 0 && st.staged.is_none() {
            st.staged = Some(Staged::new().map_err(io_err)?);
        } else {
            self.ensure_staged(nodeid, file, &mut st).await?;
        }
        if let Some(s) = st.staged.as_mut() {
            s.truncate(size).map_err(io_err)?;
        }
        Self::recharge(file, &st);
        st.dirty_since.get_or_insert_with(Instant::now);
        st.opened_empty = from_open && (st.opened_empty || !st.dirty);
        // Emptied by O_TRUNC: may stream again; any other size change may
        // rewrite what a stream already sent.
        st.sequential = from_open && size == 0;
        Core::drop_stream(&mut st).await;
        st.dirty = true;
        file.update(|x| {
            x.staged = true;
            x.size = size;
            x.mtime = now();
            if let Some(p) = x.posix.mtime.as_mut() {
                *p = now();
            }
        });
        Ok(())
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<Listed>> {
        let mut out: Vec<Listed> = self
            .backend
            .list(path)
            .await?
            .into_iter()
            .map(|e| Listed { kind: kind_of(&e.meta), name: e.name, meta: Some(e.meta) })
            .collect();
        // Files created here but not uploaded yet.
        let local: Vec<(u64, Arc<OpenFile>)> = self.lock_open().iter().map(|(id, (f, _))| (*id, f.clone())).collect();
        for (id, f) in local {
            let s = f.snap();
            if s.in_backend || s.unlinked {
                continue;
            }
            let Some((p, _)) = self.inodes.get(id) else { continue };
            if parent_of(&p) != path || p.is_empty() {
                continue;
            }
            let name = name_of(&p).to_string();
            if out.iter().all(|l| l.name != name) {
                out.push(Listed {
                    name,
                    kind: Kind::File,
                    meta: Some(Meta {
                        kind: EntryKind::File,
                        size: s.size,
                        mtime: Some(s.mtime),
                        etag: None,
                        posix: s.posix,
                    }),
                });
            }
        }
        Ok(out)
    }

    /// Rename a directory object by object (not atomic; see SEMANTICS.md).
    async fn rename_dir(&self, from: &str, to: &str) -> Result<()> {
        let mut stack = vec![(from.to_string(), to.to_string())];
        let mut moved = 0usize;
        let mut emptied = Vec::new();
        while let Some((f, t)) = stack.pop() {
            // The new directory keeps the old one's mode and owner.
            let posix = self.backend.lookup(&f).await.map(|m| m.posix).unwrap_or_default();
            self.backend.create_dir_with(&t, &posix).await?;
            for e in self.backend.list(&f).await? {
                moved += 1;
                if moved > self.opts().rename_dir_limit {
                    tracing::warn!(
                        from,
                        limit = self.opts().rename_dir_limit,
                        "directory rename over rename_dir_limit"
                    );
                    return Err(Errno::EXDEV);
                }
                let (fc, tc) = (join(&f, &e.name), join(&t, &e.name));
                match e.meta.kind {
                    EntryKind::Dir => stack.push((fc, tc)),
                    EntryKind::File => self.backend.rename_file(&fc, &tc, false).await?,
                }
            }
            emptied.push(f);
        }
        for d in emptied.iter().rev() {
            match self.backend.remove_dir(d).await {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Create a symlink or special file: one object whose content is `data`
    /// and whose `mode` metadata carries the file type.
    async fn create_special(&self, ctx: &Ctx, path: &str, mode: u32, data: &[u8]) -> Result<Entry> {
        let _change = self.changing(path, true);
        if self.exists(path).await?.is_some() {
            return Err(Errno::EEXIST);
        }
        let posix = self.new_posix(ctx, mode);
        self.backend.write(path, Bytes::copy_from_slice(data), &posix).await?;
        let meta = Meta { kind: EntryKind::File, size: data.len() as u64, mtime: Some(now()), etag: None, posix };
        let kind = kind_of(&meta);
        self.forget_listing(path);
        let id = self.inodes.lookup(path, kind);
        Ok(self.entry(id, self.attr_from_meta(id, &meta)))
    }

    /// Read `[offset, offset + size)` through the block cache: blocks of the
    /// open-time `version` are served from memory, others fetched whole.
    async fn read_cached(
        &self,
        cache: &BlockCache,
        nodeid: u64,
        path: &str,
        version: &Version,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>> {
        let bs = cache.block_size() as u64;
        let end = offset.saturating_add(size);
        let mut out = Vec::with_capacity(size.min(bs * 2) as usize);
        let mut pos = offset;
        while pos < end {
            let boff = pos - pos % bs;
            let at = (pos - boff) as usize;
            let want = (end - pos).min(bs - at as u64) as usize;
            let start = out.len();
            out.resize(start + want, 0);
            let cached = match cache.get(nodeid, boff) {
                Lookup::Hit(g) if g.version() == version => Some(g.read(at, &mut out[start..])),
                Lookup::Stale(g, v) if &v == version => {
                    cache.refresh(nodeid, boff, version);
                    Some(g.read(at, &mut out[start..]))
                }
                _ => None,
            };
            let n = match cached {
                Some(n) => n,
                None => {
                    let data =
                        fetch_block(&self.backend, cache, &self.inflight, nodeid, path, boff, version.clone()).await?;
                    let n = data.len().saturating_sub(at).min(want);
                    out[start..start + n].copy_from_slice(&data[at..at + n]);
                    n
                }
            };
            out.truncate(start + n);
            if n < want {
                break; // end of file
            }
            pos += n as u64;
        }
        Ok(out)
    }

    /// Sequential detection for one handle: a read that starts within a
    /// block of where the previous one ended continues a run; from the
    /// second read of a run the window doubles (from two blocks up to
    /// `readahead_max`) and the blocks up to `end + window` (not past the
    /// object's size) are fetched in parallel, each its own ranged GET, into
    /// the cache. Any other read ends the run: random reads fetch only what
    /// they read.
    #[allow(clippy::too_many_arguments)]
    fn readahead(
        &self,
        h: &FileHandle,
        cache: &BlockCache,
        path: &str,
        version: &Version,
        offset: u64,
        size: u64,
        object_size: Option<u64>,
    ) {
        let bs = cache.block_size() as u64;
        let end = offset.saturating_add(size);
        let (from, to) = {
            let mut ra = h.ra.lock().unwrap_or_else(|p| p.into_inner());
            let seq = if ra.last_end == 0 { offset == 0 } else { offset.abs_diff(ra.last_end) <= bs };
            ra.last_end = end;
            if !seq {
                *ra = ReadAhead { last_end: end, ..ReadAhead::default() };
                return;
            }
            ra.streak = ra.streak.saturating_add(1);
            if ra.streak < 2 {
                return;
            }
            // Never more than a quarter of the pool: blocks read ahead must
            // not evict each other before they are read.
            let pool = cache.pool().memory_limit() as u64 / 4;
            let max = (self.opts().readahead_max as u64).min(pool).max(bs);
            ra.window = if ra.window == 0 { (2 * bs).min(max) } else { ra.window.saturating_mul(2).min(max) };
            let to = end.saturating_add(ra.window).min(object_size.unwrap_or(u64::MAX));
            let from = ra.issued.max(end - end % bs);
            ra.issued = ra.issued.max(to);
            (from, to)
        };
        let mut b = from - from % bs;
        while b < to {
            if !cache.contains(h.nodeid, b, version) {
                spawn_fetch(&self.backend, cache, &self.inflight, h.nodeid, path, b, version.clone());
            }
            b += bs;
        }
    }

    /// A fresh cached listing of `dir`, if any.
    fn cached_listing(&self, dir: &str) -> Option<Arc<Vec<Listed>>> {
        let ttl = self.opts().dir_cache_ttl;
        if ttl.is_zero() {
            return None;
        }
        let g = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        g.get(dir).filter(|(at, _)| at.elapsed() < ttl).map(|(_, l)| l.clone())
    }

    /// The listing of `dir`: cached (within `dir_cache_ttl`) or fetched.
    async fn listing(&self, dir: &str) -> Result<Arc<Vec<Listed>>> {
        if let Some(l) = self.cached_listing(dir) {
            return Ok(l);
        }
        let l = Arc::new(self.observe_dir(dir).await?);
        let ttl = self.opts().dir_cache_ttl;
        if !ttl.is_zero() {
            let mut g = self.listings.lock().unwrap_or_else(|p| p.into_inner());
            if g.len() >= MAX_LISTINGS {
                g.retain(|_, (at, _)| at.elapsed() < ttl);
                if g.len() >= MAX_LISTINGS {
                    g.clear();
                }
            }
            g.insert(dir.to_string(), (Instant::now(), l.clone()));
        }
        Ok(l)
    }

    /// What a fresh cached listing says about `path`: `Some(Some(meta))`
    /// listed, `Some(None)` not there, `None` no usable listing (none
    /// cached, or its attributes lack POSIX metadata and `listing_attrs` is
    /// off).
    fn listed(&self, path: &str) -> Option<Option<Meta>> {
        if path.is_empty() || !(self.caps.listing_has_posix || self.opts().listing_attrs) {
            return None;
        }
        let l = self.cached_listing(parent_of(path))?;
        let name = name_of(path);
        match l.iter().find(|e| e.name == name) {
            Some(e) => e.meta.clone().map(Some),
            None => Some(None),
        }
    }

    /// `path` (or something below it) changed here: cached listings of its
    /// parent, itself and below are dropped, and so are the memos of
    /// [`Memo`] for the same paths.
    fn forget_listing(&self, path: &str) {
        self.forget_memo(path, true);
        self.forget_listings(path);
    }

    /// [`Core::forget_listing`] for a file created or rewritten at `path`:
    /// on a store without real directories its parent's attributes stay.
    fn forget_listing_added(&self, path: &str) {
        self.forget_memo(path, self.caps.native_dirs);
        self.forget_listings(path);
    }

    fn lock_memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.memo.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget_memo(&self, path: &str, parent_too: bool) {
        let mut m = self.lock_memo();
        m.misses.remove(path);
        if m.dirs.is_empty() {
            return;
        }
        if parent_too {
            m.dirs.remove(parent_of(path));
        }
        let prefix = format!("{path}/");
        m.dirs.retain(|k, _| k != path && !(path.is_empty() || k.starts_with(&prefix)));
    }

    /// The back-end just said nothing is at `path` (remembered for
    /// `negative_timeout`; not at all when that is 0).
    fn note_miss(&self, path: &str) {
        let ttl = self.opts().negative_timeout;
        if ttl.is_zero() {
            return;
        }
        let mut m = self.lock_memo();
        Memo::bound(&mut m.misses, |at| at.elapsed() < ttl);
        m.misses.insert(path.to_string(), Instant::now());
    }

    /// Whether the back-end said nothing is at `path` less than
    /// `negative_timeout` ago (the memo is used up).
    fn take_miss(&self, path: &str) -> bool {
        let ttl = self.opts().negative_timeout;
        self.lock_memo().misses.remove(path).is_some_and(|at| at.elapsed() < ttl)
    }

    /// Keep a directory's attributes just fetched from the back-end.
    fn note_dir(&self, path: &str, meta: &Meta) {
        let ttl = self.opts().dir_cache_ttl;
        if ttl.is_zero() || meta.kind != EntryKind::Dir {
            return;
        }
        let mut m = self.lock_memo();
        Memo::bound(&mut m.dirs, |(at, _)| at.elapsed() < ttl);
        m.dirs.insert(path.to_string(), (Instant::now(), meta.clone()));
    }

    /// A directory's attributes fetched less than `dir_cache_ttl` ago.
    fn memo_dir(&self, path: &str) -> Option<Meta> {
        let ttl = self.opts().dir_cache_ttl;
        if ttl.is_zero() {
            return None;
        }
        let m = self.lock_memo();
        m.dirs.get(path).filter(|(at, _)| at.elapsed() < ttl).map(|(_, meta)| meta.clone())
    }

    /// How long a [`KnownDir`] may answer "not found": the smaller of
    /// `negative_timeout` and `dir_cache_ttl`, counted from the start of the
    /// observation. `None` (not used) when either is 0, or on stores with
    /// real directories (a lookup there is one cheap call, and their
    /// listings leave out entries that are neither files nor directories).
    fn known_ttl(&self) -> Option<Duration> {
        let o = self.opts();
        let ttl = o.negative_timeout.min(o.dir_cache_ttl);
        (!ttl.is_zero() && !self.caps.native_dirs).then_some(ttl)
    }

    /// Nothing is at `path`, according to its parent's [`KnownDir`] younger
    /// than [`Core::known_ttl`]: how much longer that holds. `hit` counts
    /// the answer as a saved round trip.
    fn known_absent(&self, path: &str, hit: bool) -> Option<Duration> {
        let ttl = self.known_ttl()?;
        if path.is_empty() {
            return None;
        }
        let name = name_of(path);
        let mut m = self.lock_memo();
        let k = m.known.get_mut(parent_of(path))?;
        let age = k.at?.elapsed();
        if age >= ttl || k.names.contains(name) {
            return None;
        }
        k.hits += u64::from(hit);
        Some(ttl - age)
    }

    /// Whether `dir`'s [`KnownDir`] ran out while it paid off: it answered
    /// at least one miss per page a new listing of it takes.
    fn known_worth_renewing(&self, dir: &str) -> bool {
        let Some(ttl) = self.known_ttl() else { return false };
        let m = self.lock_memo();
        m.known.get(dir).is_some_and(|k| {
            k.at.is_some_and(|at| at.elapsed() >= ttl) && k.hits >= (k.names.len() / LIST_PAGE + 1) as u64
        })
    }

    /// A change at `path` is about to be made here, or was just made (or
    /// failed, or was cancelled: the back-end may have done it anyway): its
    /// name joins its parent's [`KnownDir`], and what was known below it,
    /// and of itself when `drop_self`, is dropped.
    fn note_change(&self, path: &str, drop_self: bool) {
        let mut m = self.lock_memo();
        if m.known.is_empty() {
            return;
        }
        if !path.is_empty() {
            let parent = parent_of(path);
            let name = name_of(path);
            if let Some(k) = m.known.get_mut(parent) {
                k.names.insert(name.to_string());
                if k.names.len() > MAX_KNOWN_NAMES {
                    m.known.remove(parent);
                }
            }
        }
        let prefix = format!("{path}/");
        m.known.retain(|k, _| !(path.is_empty() || k.starts_with(&prefix) || (drop_self && k == path)));
    }

    /// [`Core::note_change`] now and again when the returned guard drops.
    fn changing(&self, path: &str, drop_self: bool) -> Changing<'_> {
        self.note_change(path, drop_self);
        Changing { core: self, path: path.to_string(), drop_self }
    }

    /// Begin observing `dir`'s complete contents; returns when it began
    /// (`None`: known directories are off). Names changed here from now on
    /// are collected, and the ones already known are kept (a superset stays
    /// true; and if an observation begun earlier completes this one, the
    /// changes since its start are all in).
    fn begin_known(&self, dir: &str) -> Option<Instant> {
        let ttl = self.known_ttl()?;
        let at = Instant::now();
        let mut m = self.lock_memo();
        let old = m.known.remove(dir);
        if m.known.len() >= MAX_KNOWN_DIRS {
            m.known.retain(|_, k| k.at.is_some_and(|t| t.elapsed() < ttl));
            if m.known.len() >= MAX_KNOWN_DIRS {
                m.known.clear();
            }
        }
        let (names, hits) = old.map(|k| (k.names, k.hits)).unwrap_or_default();
        m.known.insert(dir.to_string(), KnownDir { at: None, names, hits });
        Some(at)
    }

    /// Complete the observation of `dir` begun at `at` with the names the
    /// back-end had; nothing if a change at or above `dir` dropped it, or
    /// another observation replaced it, meanwhile.
    fn finish_known(&self, dir: &str, at: Instant, names: impl IntoIterator<Item = String>) {
        let mut m = self.lock_memo();
        let Some(k) = m.known.get_mut(dir).filter(|k| k.at.is_none()) else { return };
        k.names.extend(names);
        if k.names.len() > MAX_KNOWN_NAMES {
            m.known.remove(dir);
            return;
        }
        k.at = Some(at);
        let total: usize = m.known.values().map(|k| k.names.len()).sum();
        if total > MAX_KNOWN_TOTAL {
            let d = dir.to_string();
            m.known.retain(|k, _| *k == d);
        }
    }

    /// An observation of `dir` that failed: drop it.
    fn abandon_known(&self, dir: &str) {
        let mut m = self.lock_memo();
        if m.known.get(dir).is_some_and(|k| k.at.is_none()) {
            m.known.remove(dir);
        }
    }

    /// A full listing of `dir`, kept as its [`KnownDir`] (and returned).
    async fn observe_dir(&self, dir: &str) -> Result<Vec<Listed>> {
        let Some(at) = self.begin_known(dir) else { return self.list_dir(dir).await };
        match self.list_dir(dir).await {
            Ok(l) => {
                self.finish_known(dir, at, l.iter().map(|e| e.name.clone()));
                Ok(l)
            }
            Err(e) => {
                self.abandon_known(dir);
                Err(e)
            }
        }
    }

    /// A LOOKUP's "not found" without a round trip: from the parent's
    /// [`KnownDir`], renewed with one listing first when it ran out while
    /// paying off. Returns how long the answer holds.
    async fn known_miss(&self, path: &str) -> Option<Duration> {
        if let Some(v) = self.known_absent(path, true) {
            return Some(v);
        }
        let dir = parent_of(path);
        if path.is_empty() || !self.known_worth_renewing(dir) {
            return None;
        }
        if let Err(e) = self.observe_dir(dir).await {
            tracing::debug!(dir, error = %e, "renewing a known directory failed");
            return None;
        }
        self.known_absent(path, true)
    }

    /// The listing part of [`Core::forget_listing`].
    fn forget_listings(&self, path: &str) {
        if self.opts().dir_cache_ttl.is_zero() {
            return;
        }
        let mut g = self.listings.lock().unwrap_or_else(|p| p.into_inner());
        g.remove(parent_of(path));
        let prefix = format!("{path}/");
        g.retain(|k, _| k != path && !(path.is_empty() || k.starts_with(&prefix)));
    }

    /// One round of the periodic flusher: upload files dirty for at least
    /// `age` (not those streaming, whose parts are already going out, nor
    /// those whose only change is the emptying of CREATE/O_TRUNC). A failure
    /// keeps the file dirty; its next FSYNC/FLUSH/RELEASE tries again and
    /// reports the outcome.
    async fn flush_old(&self, age: Duration) {
        let files: Vec<(u64, Arc<OpenFile>)> = self.lock_open().iter().map(|(id, (f, _))| (*id, f.clone())).collect();
        for (id, f) in files {
            let mut st = f.state.lock().await;
            let old = st.dirty_since.is_some_and(|t| t.elapsed() >= age);
            if !st.dirty || !old || st.opened_empty || st.stream.is_some() || st.lost.is_some() {
                continue;
            }
            match self.upload_locked(id, &f, &mut st).await {
                Ok(()) => {
                    self.flushed.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(node = id, error = %e, "write-back upload failed; the file stays dirty");
                    st.dirty_since = Some(Instant::now());
                }
            }
        }
    }

    /// The file at `path` is about to lose its name (unlink, or a rename over
    /// it): if it is open, its handles keep a private staged copy.
    async fn detach_open(&self, path: &str) -> Result<()> {
        if let Some(id) = self.inodes.id_of(path) {
            if let Some(f) = self.open_file(id) {
                let mut st = f.state.lock().await;
                self.settle_released(id, &f, &mut st).await?;
                self.ensure_staged(id, &f, &mut st).await?;
                Core::drop_stream(&mut st).await;
                st.dirty = false;
                f.update(|x| x.unlinked = true);
            }
        }
        Ok(())
    }

    /// SETATTR on a file that lost its name but is still open: only its
    /// private staged copy changes.
    async fn setattr_detached(&self, nodeid: u64, a: &SetAttr) -> Result<(abi::fuse_attr, Duration)> {
        let f = self.open_file(nodeid).ok_or(Errno::ENOENT)?;
        if let Some(size) = a.size {
            self.truncate(nodeid, &f, size, false).await?;
        }
        if let Some(m) = a.mode {
            f.update(|x| x.posix.mode = Some(libc::S_IFREG | (m & 0o7777)));
        }
        f.update(|x| {
            if a.uid.is_some() {
                x.posix.uid = a.uid;
            }
            if a.gid.is_some() {
                x.posix.gid = a.gid;
            }
        });
        Ok((self.attr_from_snap(nodeid, &f.snap()), self.opts().attr_timeout))
    }

    /// Drop a node's cached blocks (its object changed or is gone).
    fn forget_cached(&self, nodeid: u64) {
        if let Some(c) = &self.cache {
            c.discard_range(nodeid, 0, u64::MAX);
        }
    }

    /// Upload a local file's pending bytes before a rename moves it.
    async fn settle(&self, path: &str) -> Result<()> {
        if let Some(id) = self.inodes.id_of(path) {
            if let Some(f) = self.open_file(id) {
                self.upload(id, &f).await?;
            }
        }
        Ok(())
    }
}

impl Filesystem for ObjectFs {
    async fn dax_map(
        &self,
        nodeid: u64,
        foffset: u64,
        len: u64,
        writable: bool,
    ) -> Result<crate::fuse::dax::DaxSource> {
        self.dax_map_node(nodeid, foffset, len, writable).await
    }

    async fn dax_unmap(&self, nodeid: u64, _foffset: u64, _len: u64, writable: bool) -> Result<()> {
        self.dax_unmap_node(nodeid, writable).await
    }

    fn dax_wanted(&self, nodeid: u64, attr: &abi::fuse_attr) -> bool {
        self.dax_wanted_node(nodeid, attr)
    }

    fn destroy(&self) {
        self.files.clear();
        self.dirs.clear();
        self.lock_open().clear();
    }

    async fn lookup(&self, _ctx: &Ctx, parent: u64, name: &[u8]) -> Result<Entry> {
        let path = self.dir_child(parent, name)?;
        let found = match self.listed(&path) {
            _ if self.local_new_file(&path).is_some() => self.stat_path(&path).await,
            Some(Some(m)) => Ok(m),
            Some(None) => Err(Errno::ENOENT),
            None => {
                if let Some(valid) = self.known_miss(&path).await {
                    // A negative entry for as long as the knowledge holds.
                    return Ok(Entry { entry_valid: valid, ..Entry::default() });
                }
                let r = self.stat_path(&path).await;
                match &r {
                    Err(Errno::ENOENT) => self.note_miss(&path),
                    Ok(m) => self.note_dir(&path, m),
                    Err(_) => {}
                }
                r
            }
        };
        let meta = match found {
            Ok(m) => m,
            Err(Errno::ENOENT) if !self.opts().negative_timeout.is_zero() => {
                // A negative entry (node id 0): the kernel caches the miss.
                return Ok(Entry { entry_valid: self.opts().negative_timeout, ..Entry::default() });
            }
            Err(e) => return Err(e),
        };
        let kind = kind_of(&meta);
        let id = self.inodes.lookup(&path, kind);
        let attr = match self.open_file(id).map(|f| f.snap()) {
            Some(s) if s.staged || !s.in_backend => self.attr_from_snap(id, &s),
            _ => self.attr_from_meta(id, &meta),
        };
        Ok(self.entry(id, attr))
    }

    fn forget(&self, nodeid: u64, nlookup: u64) {
        self.inodes.forget(nodeid, nlookup);
        if self.cache.is_some() && self.inodes.get_any(nodeid).is_none() {
            // Node ids are never reused: its blocks can never be read again.
            self.forget_cached(nodeid);
        }
    }

    async fn getattr(&self, _ctx: &Ctx, nodeid: u64, _fh: Option<u64>) -> Result<(abi::fuse_attr, Duration)> {
        self.getattr_node(nodeid).await
    }

    async fn setattr(&self, ctx: &Ctx, nodeid: u64, a: SetAttr) -> Result<(abi::fuse_attr, Duration)> {
        let (path, kind) = match self.node(nodeid) {
            Ok(n) => n,
            Err(e) => {
                // ftruncate/fchmod on a file that was unlinked while open.
                return match self.inodes.get_any(nodeid) {
                    Some((_, Kind::File, false)) => self.setattr_detached(nodeid, &a).await,
                    _ => Err(e),
                };
            }
        };
        if let Some(size) = a.size {
            if kind == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            let file = self.open_node(nodeid, &path, true).await?;
            let r = match self.truncate(nodeid, &file, size, false).await {
                Ok(()) if a.fh.is_none() => self.upload(nodeid, &file).await,
                r => r,
            };
            self.release_ref(nodeid);
            r?;
        }
        let explicit_time =
            matches!(a.atime, Some(TimeSpec::Set { .. })) || matches!(a.mtime, Some(TimeSpec::Set { .. }));
        let meta_change = a.mode.is_some() || a.uid.is_some() || a.gid.is_some() || explicit_time;
        if meta_change || (a.mtime.is_some() && self.caps.user_metadata) {
            if !self.caps.user_metadata {
                if meta_change {
                    return Err(Errno::ENOTSUP);
                }
            } else {
                let tbits = kind.type_bits();
                let default_perm = self.default_perm(kind);
                let mtime = match a.mtime {
                    Some(TimeSpec::Now) => Some(now()),
                    // The guest chooses `secs`: a time the host cannot
                    // represent is EINVAL, never an overflow.
                    Some(TimeSpec::Set { secs, nsecs }) => {
                        Some(UNIX_EPOCH.checked_add(Duration::new(secs, nsecs.min(999_999_999))).ok_or(Errno::EINVAL)?)
                    }
                    None => None,
                };
                let apply = |p: &mut PosixMeta| {
                    if let Some(m) = a.mode {
                        p.mode = Some(tbits | (m & 0o7777));
                    }
                    if a.uid.is_some() {
                        p.uid = a.uid;
                    }
                    if a.gid.is_some() {
                        p.gid = a.gid;
                    }
                    if mtime.is_some() {
                        p.mtime = mtime;
                    }
                };
                if let Some(f) = self.open_file(nodeid).filter(|f| f.snap().staged || !f.snap().in_backend) {
                    // The staged copy is authoritative: change it and upload
                    // now (a concurrent RELEASE may be dropping the state).
                    {
                        let mut st = f.state.lock().await;
                        f.update(|x| apply(&mut x.posix));
                        st.dirty = true;
                        st.opened_empty = false;
                    }
                    self.upload(nodeid, &f).await?;
                } else {
                    let mut p = self.backend.lookup(&path).await?.posix;
                    if p.mode.is_none() {
                        p.mode = Some(tbits | default_perm);
                    }
                    p.uid = p.uid.or(Some(self.opts().uid));
                    p.gid = p.gid.or(Some(self.opts().gid));
                    apply(&mut p);
                    // A directory marker on an object store keeps no metadata:
                    // a change to what it shows anyway (the defaults) is
                    // accepted as the no-op it is; anything else is ENOTSUP.
                    let shown = kind == Kind::Dir
                        && !explicit_time
                        && p.mode.map(|m| m & 0o7777) == Some(default_perm)
                        && p.uid == Some(self.opts().uid)
                        && p.gid == Some(self.opts().gid);
                    match self.backend.set_posix(&path, &p).await {
                        Err(e) if shown && e.kind == ErrorKind::Unsupported => {}
                        r => r?,
                    }
                    self.forget_listing(&path);
                    // An open handle's next upload must carry the new metadata.
                    if let Some(f) = self.open_file(nodeid) {
                        f.update(|x| x.posix = p.clone());
                    }
                }
            }
        }
        let _ = ctx;
        self.getattr_node(nodeid).await
    }

    async fn mkdir(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, _umask: u32) -> Result<Entry> {
        let path = self.dir_child(parent, name)?;
        let _change = self.changing(&path, false);
        // Nothing at `path` means nothing below it either: once created, the
        // directory's contents are known (empty, as of `at`).
        let at = Instant::now();
        if self.exists(&path).await?.is_some() {
            return Err(Errno::EEXIST);
        }
        let known = self.begin_known(&path).is_some();
        // On object stores the marker keeps no metadata: the requested mode
        // is shown until the attribute TTL expires, then the default (see
        // SEMANTICS.md); showing it now keeps `mkdir -m` from failing.
        let posix = self.new_posix(ctx, libc::S_IFDIR | (mode & 0o7777));
        if let Err(e) = self.backend.create_dir_with(&path, &posix).await {
            self.abandon_known(&path);
            return Err(e.into());
        }
        self.forget_listing(&path);
        if known {
            self.finish_known(&path, at, []);
        }
        let id = self.inodes.lookup(&path, Kind::Dir);
        Ok(self.entry(id, self.attr(id, Kind::Dir, 0, Some(now()), &posix)))
    }

    async fn unlink(&self, _ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        let path = self.dir_child(parent, name)?;
        let _change = self.changing(&path, true);
        if let Some((id, _)) = self.local_new_file(&path) {
            if let Some(f) = self.open_file(id) {
                let mut st = f.state.lock().await;
                // A RELEASE may have uploaded it while we waited for the lock:
                // then it is deleted from the back-end below.
                if !f.snap().in_backend {
                    Core::drop_stream(&mut st).await;
                    st.dirty = false;
                    f.update(|x| x.unlinked = true);
                    drop(st);
                    self.forget_listing(&path);
                    self.inodes.unlink(&path);
                    return Ok(());
                }
            }
        }
        let meta = self.backend.lookup(&path).await?;
        if meta.kind == EntryKind::Dir {
            return Err(Errno::EISDIR);
        }
        self.detach_open(&path).await?;
        self.backend.delete_file(&path).await?;
        if let Some(id) = self.inodes.id_of(&path) {
            self.forget_cached(id);
        }
        self.forget_listing(&path);
        self.inodes.unlink(&path);
        Ok(())
    }

    async fn rmdir(&self, _ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        let path = self.dir_child(parent, name)?;
        let _change = self.changing(&path, true);
        let meta = self.stat_path(&path).await?;
        if meta.kind != EntryKind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let prefix = format!("{path}/");
        let pending = self.lock_open().keys().copied().collect::<Vec<_>>();
        for id in pending {
            if let Some((p, _)) = self.inodes.get(id) {
                if p.starts_with(&prefix) && self.local_new_file(&p).is_some() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        }
        self.backend.remove_dir(&path).await?;
        self.forget_listing(&path);
        self.inodes.unlink(&path);
        Ok(())
    }

    async fn rename(
        &self,
        _ctx: &Ctx,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(Errno::EINVAL);
        }
        let noreplace = flags & RENAME_NOREPLACE != 0;
        let from = self.dir_child(parent, name)?;
        let to = self.dir_child(newparent, newname)?;
        let (_change_from, _change_to) = (self.changing(&from, true), self.changing(&to, true));
        let src = self.stat_path(&from).await?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(Errno::EINVAL);
        }
        if let Some(dst) = self.exists(&to).await? {
            if noreplace {
                return Err(Errno::EEXIST);
            }
            match (src.kind, dst.kind) {
                (EntryKind::File, EntryKind::Dir) => return Err(Errno::EISDIR),
                (EntryKind::Dir, EntryKind::File) => return Err(Errno::ENOTDIR),
                (EntryKind::Dir, EntryKind::Dir) => {
                    // Fails with ENOTEMPTY unless empty; then it is replaced.
                    self.backend.remove_dir(&to).await?;
                }
                // Open handles of the replaced file keep its old bytes.
                (EntryKind::File, EntryKind::File) => self.detach_open(&to).await?,
            }
        }
        match src.kind {
            EntryKind::File => {
                self.settle(&from).await?;
                self.backend.rename_file(&from, &to, noreplace).await?;
            }
            EntryKind::Dir => self.rename_dir(&from, &to).await?,
        }
        self.forget_listing(&from);
        self.forget_listing(&to);
        self.inodes.rename(&from, &to);
        Ok(())
    }

    async fn open(&self, _ctx: &Ctx, nodeid: u64, flags: u32) -> Result<(u64, u32)> {
        let (path, kind) = self.node(nodeid)?;
        match kind {
            Kind::Dir => return Err(Errno::EISDIR),
            Kind::Symlink => return Err(Errno::ELOOP),
            Kind::Special(_) => return Err(Errno::ENXIO),
            Kind::File => {}
        }
        let acc = flags as i32 & libc::O_ACCMODE;
        let writable = acc != libc::O_RDONLY;
        let file = self.open_node(nodeid, &path, writable).await?;
        if writable && flags as i32 & libc::O_TRUNC != 0 {
            if let Err(e) = self.truncate(nodeid, &file, 0, true).await {
                self.release_ref(nodeid);
                return Err(e);
            }
        }
        let fh = self.files.insert(FileHandle { nodeid, file, writable, ra: Mutex::default() });
        Ok((fh, 0))
    }

    async fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
        _umask: u32,
    ) -> Result<(Entry, u64, u32)> {
        let path = self.dir_child(parent, name)?;
        // Right after a LOOKUP the back-end answered "not found", or in a
        // directory whose contents are known: no check (see `Memo` and
        // `KnownDir` for what that gives up).
        let fresh = self.take_miss(&path) || self.known_absent(&path, false).is_some();
        let existing = if fresh && self.local_new_file(&path).is_none() { None } else { self.exists(&path).await? };
        if let Some(m) = existing {
            if m.kind == EntryKind::Dir {
                return Err(Errno::EISDIR);
            }
            if flags as i32 & libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            let id = self.inodes.lookup(&path, Kind::File);
            return match self.open(ctx, id, flags).await {
                Ok((fh, oflags)) => {
                    let (attr, _) = self.getattr_node(id).await?;
                    Ok((self.entry(id, attr), fh, oflags))
                }
                Err(e) => {
                    self.inodes.forget(id, 1);
                    Err(e)
                }
            };
        }
        let posix = self.new_posix(ctx, libc::S_IFREG | (mode & 0o7777));
        self.note_change(&path, true);
        self.forget_listing_added(&path);
        let id = self.inodes.lookup(&path, Kind::File);
        let snap = Snapshot {
            staged: true,
            in_backend: false,
            unlinked: false,
            size: 0,
            mtime: now(),
            posix,
            version: None,
            object_size: None,
        };
        let file = self.acquire(id, || snap.clone());
        {
            let mut st = file.state.lock().await;
            match Staged::new() {
                Ok(s) => st.staged = Some(s),
                Err(e) => {
                    drop(st);
                    self.release_ref(id);
                    self.inodes.forget(id, 1);
                    return Err(io_err(e));
                }
            }
            st.dirty = true;
            st.opened_empty = true;
            st.sequential = true;
        }
        let writable = flags as i32 & libc::O_ACCMODE != libc::O_RDONLY;
        let fh = self.files.insert(FileHandle { nodeid: id, file: file.clone(), writable, ra: Mutex::default() });
        Ok((self.entry(id, self.attr_from_snap(id, &file.snap())), fh, 0))
    }

    async fn read(&self, _ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.file_handle(nodeid, fh)?;
        if offset.checked_add(size as u64).is_none() {
            return Ok(Vec::new());
        }
        if h.file.snap().staged {
            let mut st = h.file.state.lock().await;
            if st.punched > offset {
                // Those bytes went out with a streaming upload: complete it
                // and read the object.
                self.settle_released(nodeid, &h.file, &mut st).await?;
            }
            if let Some(s) = st.staged.as_ref() {
                return s.read(offset, size as usize).map_err(io_err);
            }
        }
        let (path, _, _) = self.inodes.get_any(nodeid).ok_or(Errno::ENOENT)?;
        let snap = h.file.snap();
        if let (Some(cache), Some(version)) = (&self.cache, snap.version) {
            if self.opts().readahead_max > 0 {
                self.readahead(&h, cache, &path, &version, offset, size as u64, snap.object_size);
            }
            return self.read_cached(cache, nodeid, &path, &version, offset, size as u64).await;
        }
        Ok(self.backend.read(&path, offset, size as u64).await?.to_vec())
    }

    async fn write(&self, _ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, data: &[u8], flags: u32) -> Result<u32> {
        let h = self.file_handle(nodeid, fh)?;
        if !h.writable {
            return Err(Errno::EBADF);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > self.opts().max_file_size {
            return Err(Errno::EFBIG);
        }
        if self.opts().write_back {
            self.start_flusher();
        }
        // Back-pressure: room for this write's bytes before it is staged.
        self.make_room(data.len() as u64).await?;
        {
            let mut st = h.file.state.lock().await;
            if let Some(e) = st.lost {
                return Err(e);
            }
            let size = st.staged.as_ref().map(|s| s.size());
            if st.punched > 0 && size != Some(offset) && !data.is_empty() {
                self.settle_released(nodeid, &h.file, &mut st).await?;
            }
            self.ensure_staged(nodeid, &h.file, &mut st).await?;
            let Some(s) = st.staged.as_mut() else { return Err(Errno::EIO) };
            let appends = offset == s.size();
            s.write(offset, data).map_err(io_err)?;
            let size = s.size();
            if !appends && !data.is_empty() {
                st.sequential = false;
                Core::drop_stream(&mut st).await;
            }
            st.dirty_since.get_or_insert_with(Instant::now);
            st.dirty = true;
            st.opened_empty = false;
            h.file.update(|x| {
                x.size = size;
                x.mtime = now();
                if x.posix.mtime.is_some() {
                    x.posix.mtime = Some(x.mtime);
                }
            });
            let posix = h.file.snap().posix;
            self.stream_parts(nodeid, &h.file, &posix, &mut st).await;
            Core::recharge(&h.file, &st);
        }
        if flags as i32 & libc::O_DSYNC != 0 {
            self.upload(nodeid, &h.file).await?;
        }
        Ok(data.len() as u32)
    }

    async fn flush(&self, _ctx: &Ctx, nodeid: u64, fh: u64) -> Result<()> {
        let h = self.file_handle(nodeid, fh)?;
        if h.file.state.lock().await.opened_empty {
            // Only the open-time emptying is pending: RELEASE uploads it.
            return Ok(());
        }
        self.upload(nodeid, &h.file).await
    }

    async fn release(&self, _ctx: &Ctx, nodeid: u64, fh: u64, _flags: u32) -> Result<()> {
        let h = self.file_handle(nodeid, fh)?;
        let r = self.upload(nodeid, &h.file).await;
        self.files.remove(fh);
        self.release_ref(nodeid);
        r
    }

    async fn fsync(&self, _ctx: &Ctx, nodeid: u64, fh: u64, _datasync: bool) -> Result<()> {
        let h = self.file_handle(nodeid, fh)?;
        self.upload(nodeid, &h.file).await
    }

    async fn opendir(&self, _ctx: &Ctx, nodeid: u64, _flags: u32) -> Result<(u64, u32)> {
        let (_, kind) = self.node(nodeid)?;
        if kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        Ok((self.dirs.insert(DirHandle { nodeid, snapshot: Mutex::new(None) }), 0))
    }

    async fn readdir(
        &self,
        _ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        max_bytes: u32,
        plus: bool,
    ) -> Result<Vec<DirEntry>> {
        let h = self.dir_handle(nodeid, fh)?;
        let (path, _) = self.node(nodeid)?;
        let cached = if offset == 0 { None } else { h.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone() };
        let list = match cached {
            Some(l) => l,
            None => {
                let l = self.listing(&path).await?;
                *h.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(l.clone());
                l
            }
        };
        // Cookies: 1 = after ".", 2 = after "..", 3 + i = after list[i].
        let mut out = Vec::new();
        let mut used = 0usize;
        let total = list.len() as u64 + 2;
        let mut i = offset;
        while i < total {
            let (name, kind, meta): (String, Kind, Option<&Meta>) = match i {
                0 => (".".into(), Kind::Dir, None),
                1 => ("..".into(), Kind::Dir, None),
                n => {
                    let Some(l) = list.get((n - 2) as usize) else { break };
                    (l.name.clone(), l.kind, l.meta.as_ref())
                }
            };
            let size = reply::dirent_size(name.len(), plus);
            if used + size > max_bytes as usize {
                break;
            }
            used += size;
            // A listing without POSIX metadata (S3) cannot tell a symlink or
            // a FIFO from a regular file: say "unknown" and let the kernel
            // LOOKUP it, rather than hand out an inode of the wrong type.
            let typed = i < 2 || kind == Kind::Dir || self.caps.listing_has_posix || self.opts().listing_attrs;
            let typ = if typed { kind.dirent_type() } else { libc::DT_UNKNOWN as u32 };
            let mut e = DirEntry { ino: u64::MAX, offset: i + 1, typ, name: name.into_bytes(), entry: None };
            if i < 2 {
                e.ino = nodeid;
            } else {
                let child = join(&path, std::str::from_utf8(&e.name).unwrap_or_default());
                if plus && typed {
                    let id = self.inodes.lookup(&child, kind);
                    let attr = match (self.open_file(id).map(|f| f.snap()), meta) {
                        (Some(s), _) if s.staged || !s.in_backend => self.attr_from_snap(id, &s),
                        (_, Some(m)) => self.attr_from_meta(id, m),
                        _ => self.attr(id, kind, 0, None, &PosixMeta::default()),
                    };
                    e.ino = id;
                    let mut en = self.entry(id, attr);
                    if !self.caps.listing_has_posix && !self.opts().listing_attrs {
                        // A directory's mode/owner are not in the listing:
                        // let the kernel ask (GETATTR) before trusting them.
                        en.attr_valid = Duration::ZERO;
                    }
                    e.entry = Some(en);
                } else {
                    // Stable per path while the node lives; the kernel only
                    // uses it for d_ino.
                    e.ino = self.inodes.id_of(&child).unwrap_or(u64::MAX);
                }
            }
            out.push(e);
            i += 1;
        }
        Ok(out)
    }

    async fn releasedir(&self, _ctx: &Ctx, nodeid: u64, fh: u64) -> Result<()> {
        self.dir_handle(nodeid, fh)?;
        self.dirs.remove(fh);
        Ok(())
    }

    async fn statfs(&self, _ctx: &Ctx, _nodeid: u64) -> Result<abi::fuse_kstatfs> {
        // Object stores have no capacity to report: a large, constant figure.
        Ok(abi::fuse_kstatfs {
            blocks: 1 << 40,
            bfree: 1 << 40,
            bavail: 1 << 40,
            files: 1 << 32,
            ffree: 1 << 32,
            bsize: 4096,
            namelen: abi::NAME_MAX as u32,
            frsize: 4096,
            ..Default::default()
        })
    }

    async fn access(&self, _ctx: &Ctx, nodeid: u64, _mask: u32) -> Result<()> {
        // Permission bits are checked by the kernel (default_permissions);
        // this only confirms the node still exists.
        self.node(nodeid).map(|_| ())
    }

    async fn lseek(&self, _ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, whence: u32) -> Result<u64> {
        self.file_handle(nodeid, fh)?;
        let (attr, _) = self.getattr_node(nodeid).await?;
        match whence as i32 {
            libc::SEEK_SET => Ok(offset),
            // No holes are tracked: data everywhere below EOF.
            libc::SEEK_DATA if offset < attr.size => Ok(offset),
            libc::SEEK_HOLE if offset < attr.size => Ok(attr.size),
            libc::SEEK_DATA | libc::SEEK_HOLE => Err(Errno::ENXIO),
            _ => Err(Errno::EINVAL),
        }
    }

    async fn readlink(&self, _ctx: &Ctx, nodeid: u64) -> Result<Vec<u8>> {
        let (path, kind) = self.node(nodeid)?;
        if kind != Kind::Symlink {
            return Err(Errno::EINVAL);
        }
        Ok(self.backend.read(&path, 0, abi::PATH_MAX as u64).await?.to_vec())
    }

    async fn symlink(&self, ctx: &Ctx, parent: u64, name: &[u8], target: &[u8]) -> Result<Entry> {
        let path = self.dir_child(parent, name)?;
        // s3fs style: the object holds the target, `mode` says S_IFLNK.
        if !self.caps.user_metadata {
            return Err(Errno::EPERM);
        }
        self.create_special(ctx, &path, libc::S_IFLNK | 0o777, target).await
    }

    async fn link(&self, _ctx: &Ctx, _nodeid: u64, _newparent: u64, _newname: &[u8]) -> Result<Entry> {
        Err(Errno::EPERM)
    }

    async fn mknod(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, _rdev: u32, umask: u32) -> Result<Entry> {
        let t = mode & libc::S_IFMT;
        if t != libc::S_IFREG && t != 0 {
            if !self.caps.user_metadata || !matches!(t, libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK)
            {
                return Err(Errno::EPERM);
            }
            let path = self.dir_child(parent, name)?;
            return self.create_special(ctx, &path, t | (mode & 0o7777), b"").await;
        }
        let (entry, fh, _) =
            self.create(ctx, parent, name, mode, libc::O_WRONLY as u32 | libc::O_EXCL as u32, umask).await?;
        self.release(ctx, entry.nodeid, fh, 0).await?;
        Ok(entry)
    }
}

#[cfg(test)]
#[path = "object_tests.rs"]
mod tests;
