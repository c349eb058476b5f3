//! Block cache of file data, held in the memfd pool ([`pool`]).
//!
//! Entries are keyed by `(inode, block offset)`; a block covers `block_size`
//! bytes of a file (2 MiB by default, the DAX mapping unit). An entry holds a
//! pool [`Block`] sized to its data (small files take 4 KiB blocks), the valid
//! length, the fetch time, the back-end version it was read at (etag or
//! last-modified), a dirty state and a pin count.
//!
//! Contract with the file-system layer (all methods are sync and cheap; call
//! them from async code freely, but never hold a [`Guard`] data closure open
//! across an `.await`):
//! * `insert` stores a block read from the back-end: the file's bytes from the
//!   block offset up to the block end or EOF (a short block means EOF is in
//!   it). Inserting over a dirty block is refused ([`CacheError::Dirty`]).
//! * `get` answers `Hit`, `Stale(guard, version)` once the entry is older
//!   than the TTL (revalidate with the back-end: unchanged -> `refresh`, else
//!   fetch and `insert`), or `Miss`. Dirty entries never go stale.
//! * `write` changes bytes of a cached block (fetch it first: writes never
//!   create holes of unknown data) and marks it dirty. Dirty blocks are never
//!   evicted or invalidated silently: `insert` returns `Full` when only dirty
//!   or pinned entries are left; the caller takes `dirty_blocks`, uploads,
//!   calls `mark_clean` with the generation it uploaded, and retries.
//! * `pin` gives a block a full-size (2 MiB for the default size) memfd range
//!   that never moves or is freed until the [`Pin`] is dropped: that is what a
//!   DAX mapping points at. Pinned entries are never evicted.
//!
//! Locks, in order (never take an earlier one while holding a later one):
//! 1. `Inner::index` (std `Mutex`): key -> slot map, LRU lists, pin counts,
//!    versions, fetch times. Held for map/list updates; `insert` over an
//!    existing entry, `pin`, `mark_clean` and invalidation also take one
//!    entry's data lock under it (so they may wait for a reader's copy), and
//!    `insert` into a pinned entry / `pin` copy one block under it. Eviction
//!    only `try_write`s, so it never waits.
//! 2. `Entry::data` (std `RwLock`, one per entry): the block, valid length and
//!    write generations. Data copies happen under this lock only.
//! 3. The pool's internal reclaim mutex (taken inside `Pool::alloc`; the
//!    cache never allocates while holding 1 or 2).
//!
//! Memory: the pool's `memory_limit` bounds the bytes of all blocks (entries,
//! blocks of removed entries still held by a `Guard`/`Pin`, transient
//! allocations). When the pool says no, the cache evicts clean, unpinned,
//! idle entries in LRU order, preferring (within the 32 oldest) one whose
//! block has the size class being allocated: freeing such a block always
//! makes room, while freeing a block of another class only helps once its
//! whole 2 MiB slab is free (the pool then reclaims the slab). Small pools
//! with mixed sizes therefore evict more than their byte count suggests.
//!
//! No lock is held across an `.await` (there are none here). Dirtiness is
//! authoritative in the entry (`write_gen != clean_gen`); the index keeps a
//! `dirty_hint` to keep dirty entries off the eviction list, and every path
//! that could drop data re-checks the entry itself.

pub mod pool;

pub use pool::{Block, Pool, PoolConfig, PoolStats, SizeClass, SLAB_SIZE};

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Bound;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The back-end version a block was read at (etag or last-modified text).
pub type Version = Arc<str>;

/// Source of the current time (injectable for tests).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Default block size: 2 MiB, the DAX mapping unit.
pub const DEFAULT_BLOCK_SIZE: usize = SLAB_SIZE;

/// Identifies one cache block: an inode and a block-aligned file offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    pub ino: u64,
    pub offset: u64,
}

/// Cache parameters.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Bytes per block: a power of two from 4 KiB to 2 MiB.
    pub block_size: usize,
    /// Age after which a clean entry is `Stale`; `None`: never.
    pub ttl: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { block_size: DEFAULT_BLOCK_SIZE, ttl: Some(Duration::from_secs(60)) }
    }
}

/// Why a cache operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// No memory left and nothing evictable: every entry is dirty, pinned or
    /// in use. Write back (`dirty_blocks` + `mark_clean`) and retry.
    #[error("cache full: remaining entries are dirty, pinned or in use")]
    Full,
    /// The cached block has changes not yet written back.
    #[error("cached block has unwritten changes")]
    Dirty,
    /// The block is not cached (fetch and `insert` it first).
    #[error("block not cached")]
    NotCached,
    /// Offset not block-aligned, or data not within one block.
    #[error("range is not within one cache block")]
    BadRange,
}

/// Result of [`BlockCache::get`].
#[derive(Debug)]
pub enum Lookup {
    /// Fresh (or dirty) data.
    Hit(Guard),
    /// Data older than the TTL, read at this version: revalidate, then
    /// `refresh` (unchanged) or `insert` (changed).
    Stale(Guard, Version),
    Miss,
}

/// Counters and gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub evictions: u64,
    pub inserts: u64,
    pub entries: usize,
    pub pinned: usize,
    pub dirty_entries: usize,
    /// Valid bytes of dirty entries.
    pub dirty_bytes: usize,
    /// Pool bytes in use (block sizes, including blocks of removed entries
    /// still held by a `Guard` or `Pin`).
    pub bytes_used: usize,
    pub memory_limit: usize,
}

/// What an invalidation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Invalidated {
    pub removed: usize,
    /// Dirty entries left in place (their data is newer than the back-end's).
    pub dirty_kept: usize,
}

/// A snapshot of a dirty block to write back.
#[derive(Clone, Debug)]
pub struct DirtyBlock {
    pub key: BlockKey,
    /// The block's valid bytes at the snapshot.
    pub data: Bytes,
    /// Pass to [`BlockCache::mark_clean`] after the upload succeeded.
    pub gen: u64,
    /// The version the block was based on.
    pub version: Version,
}

/// The block cache; cheap to clone (shared).
#[derive(Clone)]
pub struct BlockCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockCache").field("block_size", &self.inner.block_size).finish_non_exhaustive()
    }
}

struct Inner {
    pool: Pool,
    block_size: usize,
    /// Size of the class a full block uses (what pinned entries hold).
    full_size: usize,
    /// The TTL in nanoseconds, `u64::MAX` for none (a reload may change it:
    /// [`BlockCache::set_ttl`]).
    ttl: AtomicU64,
    clock: Clock,
    index: Mutex<Index>,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    evictions: AtomicU64,
    inserts: AtomicU64,
}

#[derive(Default)]
struct Index {
    map: BTreeMap<BlockKey, Slot>,
    /// Clean, unpinned entries by last use (the eviction order).
    clean_lru: BTreeMap<u64, BlockKey>,
    /// Entries that may be dirty, by last use (write-back order).
    dirty_lru: BTreeMap<u64, BlockKey>,
    tick: u64,
}

struct Slot {
    entry: Arc<Entry>,
    version: Version,
    fetched_at: Instant,
    tick: u64,
    pins: u32,
    dirty_hint: bool,
}

struct Entry {
    key: BlockKey,
    data: RwLock<Data>,
}

struct Data {
    block: Block,
    valid: usize,
    write_gen: u64,
    clean_gen: u64,
    /// Removed from the index: writes must not land here.
    detached: bool,
}

impl Data {
    fn is_dirty(&self) -> bool {
        self.write_gen != self.clean_gen
    }
}

fn read_data(entry: &Entry) -> RwLockReadGuard<'_, Data> {
    entry.data.read().unwrap_or_else(|e| e.into_inner())
}

fn write_data(entry: &Entry) -> RwLockWriteGuard<'_, Data> {
    entry.data.write().unwrap_or_else(|e| e.into_inner())
}

impl Index {
    /// Mark `key` used now and put it on the list its state calls for.
    fn touch(&mut self, key: BlockKey) {
        let Some(slot) = self.map.get_mut(&key) else { return };
        self.clean_lru.remove(&slot.tick);
        self.dirty_lru.remove(&slot.tick);
        self.tick += 1;
        slot.tick = self.tick;
        if slot.dirty_hint {
            self.dirty_lru.insert(slot.tick, key);
        } else if slot.pins == 0 {
            self.clean_lru.insert(slot.tick, key);
        }
    }

    fn remove(&mut self, key: BlockKey) -> Option<Slot> {
        let slot = self.map.remove(&key)?;
        self.clean_lru.remove(&slot.tick);
        self.dirty_lru.remove(&slot.tick);
        Some(slot)
    }
}

/// A TTL as stored in [`Inner::ttl`].
fn ttl_nanos(ttl: Option<Duration>) -> u64 {
    ttl.map_or(u64::MAX, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX - 1))
}

impl BlockCache {
    /// A cache over `pool` using the system clock.
    pub fn new(pool: Pool, config: CacheConfig) -> io::Result<BlockCache> {
        BlockCache::with_clock(pool, config, Arc::new(Instant::now))
    }

    /// A cache reading the time from `clock`.
    pub fn with_clock(pool: Pool, config: CacheConfig, clock: Clock) -> io::Result<BlockCache> {
        let bs = config.block_size;
        if !bs.is_power_of_two() || !(4096..=SLAB_SIZE).contains(&bs) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cache block size must be a power of two, 4 KiB..2 MiB",
            ));
        }
        let full_size = SizeClass::for_len(bs).map(SizeClass::size).unwrap_or(SLAB_SIZE);
        Ok(BlockCache {
            inner: Arc::new(Inner {
                pool,
                block_size: bs,
                full_size,
                ttl: AtomicU64::new(ttl_nanos(config.ttl)),
                clock,
                index: Mutex::new(Index::default()),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                stale: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                inserts: AtomicU64::new(0),
            }),
        })
    }

    pub fn block_size(&self) -> usize {
        self.inner.block_size
    }

    /// The TTL after which a cached block is revalidated (`None`: never).
    pub fn ttl(&self) -> Option<Duration> {
        match self.inner.ttl.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// Change the TTL (configuration reload): applies to every block at its
    /// next lookup, including blocks already cached.
    pub fn set_ttl(&self, ttl: Option<Duration>) {
        self.inner.ttl.store(ttl_nanos(ttl), Ordering::Relaxed);
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The key of the block holding file offset `off`.
    pub fn key(&self, ino: u64, off: u64) -> BlockKey {
        BlockKey { ino, offset: off & !(self.inner.block_size as u64 - 1) }
    }

    /// Look up the block holding file offset `off`.
    pub fn get(&self, ino: u64, off: u64) -> Lookup {
        let inner = &self.inner;
        let key = self.key(ino, off);
        let now = (inner.clock)();
        let mut g = inner.lock();
        let Some(slot) = g.map.get(&key) else {
            inner.misses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Miss;
        };
        let guard = Guard { entry: slot.entry.clone(), version: slot.version.clone() };
        let expired =
            !slot.dirty_hint && self.ttl().is_some_and(|ttl| now.saturating_duration_since(slot.fetched_at) >= ttl);
        g.touch(key);
        drop(g);
        if expired && !read_data(&guard.entry).is_dirty() {
            inner.stale.fetch_add(1, Ordering::Relaxed);
            let version = guard.version.clone();
            return Lookup::Stale(guard, version);
        }
        inner.hits.fetch_add(1, Ordering::Relaxed);
        Lookup::Hit(guard)
    }

    /// Whether the block holding `off` is cached at `version` and fresh (no
    /// effect on statistics or LRU order; for readahead decisions).
    pub fn contains(&self, ino: u64, off: u64, version: &str) -> bool {
        let key = self.key(ino, off);
        let now = (self.inner.clock)();
        let g = self.inner.lock();
        g.map.get(&key).is_some_and(|slot| {
            &*slot.version == version
                && (slot.dirty_hint
                    || self.ttl().is_none_or(|ttl| now.saturating_duration_since(slot.fetched_at) < ttl))
        })
    }

    /// The back-end confirmed that `version` is current: make the block
    /// fresh again. False when the block is gone or holds another version.
    pub fn refresh(&self, ino: u64, off: u64, version: &str) -> bool {
        let key = self.key(ino, off);
        let now = (self.inner.clock)();
        let mut g = self.inner.lock();
        match g.map.get_mut(&key) {
            Some(slot) if &*slot.version == version => {
                slot.fetched_at = now;
                true
            }
            _ => false,
        }
    }

    /// `refresh` for every block of `ino` read at `version`; returns how many.
    pub fn refresh_inode(&self, ino: u64, version: &str) -> usize {
        let now = (self.inner.clock)();
        let mut g = self.inner.lock();
        let mut n = 0;
        for (_, slot) in g.map.range_mut(inode_range(ino)) {
            if &*slot.version == version {
                slot.fetched_at = now;
                n += 1;
            }
        }
        n
    }

    /// Store the back-end's bytes of the block at `off` (block-aligned):
    /// `data` runs to the block end or to EOF. Evicts clean entries as needed.
    pub fn insert(&self, ino: u64, off: u64, data: &[u8], version: Version) -> Result<(), CacheError> {
        let inner = &self.inner;
        if off % inner.block_size as u64 != 0 || data.len() > inner.block_size {
            return Err(CacheError::BadRange);
        }
        let key = BlockKey { ino, offset: off };
        let len = data.len();
        let mut block = self.alloc_block(len)?;
        block.as_mut_slice()[..len].copy_from_slice(data);
        let now = (inner.clock)();
        let mut g = inner.lock();
        let mut old = None;
        if let Some(slot) = g.map.get_mut(&key) {
            let entry = slot.entry.clone();
            let mut d = write_data(&entry);
            if d.is_dirty() {
                return Err(CacheError::Dirty);
            }
            if slot.pins > 0 {
                // Mapped: the block must stay; copy in place (pinned blocks are full size).
                let s = d.block.as_mut_slice();
                s[..len].copy_from_slice(data);
                s[len..].fill(0);
                d.valid = len;
                drop(d);
                slot.version = version;
                slot.fetched_at = now;
                g.touch(key);
                inner.inserts.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            d.detached = true;
            drop(d);
            old = g.remove(key);
        }
        let data = Data { block, valid: len, write_gen: 0, clean_gen: 0, detached: false };
        let entry = Arc::new(Entry { key, data: RwLock::new(data) });
        g.map.insert(key, Slot { entry, version, fetched_at: now, tick: 0, pins: 0, dirty_hint: false });
        g.touch(key);
        drop(g);
        drop(old);
        inner.inserts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Write `data` at file offset `off` into the cached block holding it
    /// (the range must not cross a block boundary) and mark it dirty. A write
    /// past the valid length zero-fills the gap (a short block ends at EOF).
    pub fn write(&self, ino: u64, off: u64, data: &[u8]) -> Result<(), CacheError> {
        let inner = &self.inner;
        let key = self.key(ino, off);
        let start = (off - key.offset) as usize;
        let end = start.checked_add(data.len()).filter(|&e| e <= inner.block_size).ok_or(CacheError::BadRange)?;
        loop {
            let entry = {
                let mut g = inner.lock();
                let Some(slot) = g.map.get_mut(&key) else { return Err(CacheError::NotCached) };
                if data.is_empty() {
                    return Ok(());
                }
                slot.dirty_hint = true;
                let entry = slot.entry.clone();
                g.touch(key);
                entry
            };
            let mut d = write_data(&entry);
            if d.detached {
                continue;
            }
            if end > d.block.len() {
                drop(d);
                let mut bigger = match self.alloc_block(end) {
                    Ok(b) => b,
                    Err(e) => {
                        self.fix_hint(&entry);
                        return Err(e);
                    }
                };
                d = write_data(&entry);
                if d.detached {
                    continue;
                }
                if end > d.block.len() {
                    let v = d.valid;
                    bigger.as_mut_slice()[..v].copy_from_slice(&d.block.as_slice()[..v]);
                    d.block = bigger;
                }
            }
            let valid = d.valid;
            let s = d.block.as_mut_slice();
            if start > valid {
                s[valid..start].fill(0);
            }
            s[start..end].copy_from_slice(data);
            d.valid = valid.max(end);
            d.write_gen += 1;
            return Ok(());
        }
    }

    /// Pin the cached block holding `off`: give it a full-size block (zeroed
    /// past the valid bytes) that stays put until the `Pin` is dropped.
    pub fn pin(&self, ino: u64, off: u64) -> Result<Pin, CacheError> {
        let inner = &self.inner;
        let key = self.key(ino, off);
        let mut spare: Option<Block> = None;
        loop {
            let mut g = inner.lock();
            let ix = &mut *g;
            let Some(slot) = ix.map.get_mut(&key) else { return Err(CacheError::NotCached) };
            let entry = slot.entry.clone();
            let mut d = write_data(&entry);
            if d.block.len() < inner.full_size {
                let Some(mut full) = spare.take() else {
                    drop(d);
                    drop(g);
                    spare = Some(self.alloc_block(inner.full_size)?);
                    continue;
                };
                let v = d.valid;
                full.as_mut_slice()[..v].copy_from_slice(&d.block.as_slice()[..v]);
                d.block = full;
            }
            if slot.pins == 0 {
                let v = d.valid;
                d.block.as_mut_slice()[v..].fill(0);
            }
            let (fd, offset) = d.block.fd_and_offset();
            let len = d.block.len();
            drop(d);
            slot.pins += 1;
            ix.touch(key);
            return Ok(Pin { cache: inner.clone(), entry, fd, offset, len });
        }
    }

    /// Snapshots of dirty blocks: of `ino` (all of them, in offset order), or
    /// of any inode (least recently used first); at most `max`.
    pub fn dirty_blocks(&self, ino: Option<u64>, max: usize) -> Vec<DirtyBlock> {
        let candidates: Vec<(Arc<Entry>, Version)> = {
            let g = self.inner.lock();
            let pick = |k: &BlockKey| g.map.get(k).map(|s| (s.entry.clone(), s.version.clone()));
            match ino {
                // Every entry of the inode: the entry, not the hint, is authoritative.
                Some(ino) => g.map.range(inode_range(ino)).filter_map(|(k, _)| pick(k)).collect(),
                None => g.dirty_lru.values().filter_map(pick).collect(),
            }
        };
        let mut out = Vec::new();
        let mut clean = Vec::new();
        for (entry, version) in candidates {
            if out.len() >= max {
                break;
            }
            let d = read_data(&entry);
            if d.is_dirty() {
                let data = Bytes::copy_from_slice(&d.block.as_slice()[..d.valid]);
                out.push(DirtyBlock { key: entry.key, data, gen: d.write_gen, version });
            } else if ino.is_none() {
                drop(d);
                clean.push(entry);
            }
        }
        for entry in clean {
            self.fix_hint(&entry);
        }
        out
    }

    /// Record that generation `gen` of the block was written back; with
    /// `version`, the block is also fresh at that version. False when the
    /// block is gone or was written again since (it stays dirty).
    pub fn mark_clean(&self, key: BlockKey, gen: u64, version: Option<Version>) -> bool {
        let now = (self.inner.clock)();
        let mut g = self.inner.lock();
        let Some(slot) = g.map.get_mut(&key) else { return false };
        let entry = slot.entry.clone();
        let mut d = write_data(&entry);
        if d.write_gen != gen {
            return false;
        }
        d.clean_gen = gen;
        drop(d);
        slot.dirty_hint = false;
        if let Some(v) = version {
            slot.version = v;
            slot.fetched_at = now;
        }
        g.touch(key);
        true
    }

    /// Evict the least recently used clean, unpinned entry not in use right
    /// now. False when there is none.
    pub fn evict_one(&self) -> bool {
        self.evict(None)
    }

    /// Evict one entry; with `prefer`, the least recently used entry whose
    /// block has that class among the oldest `EVICT_WINDOW` (freeing such a
    /// block is sure to make room for the allocation that failed), else the
    /// least recently used.
    fn evict(&self, prefer: Option<SizeClass>) -> bool {
        const EVICT_WINDOW: usize = 32;
        let inner = &self.inner;
        let mut g = inner.lock();
        let mut now_dirty = Vec::new();
        let victim = {
            let mut oldest = None;
            let mut matching = None;
            for (i, &key) in g.clean_lru.values().enumerate() {
                if oldest.is_some() && (prefer.is_none() || i >= EVICT_WINDOW) {
                    break;
                }
                let d = match g.map[&key].entry.data.try_write() {
                    Ok(d) => d,
                    Err(TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(TryLockError::WouldBlock) => continue,
                };
                if d.is_dirty() {
                    now_dirty.push(key);
                } else if prefer.is_some_and(|c| d.block.class() == c) {
                    matching = Some((key, d));
                    break;
                } else if oldest.is_none() {
                    oldest = Some((key, d));
                }
            }
            matching.or(oldest).map(|(key, mut d)| {
                d.detached = true;
                key
            })
        };
        for key in now_dirty {
            if let Some(slot) = g.map.get_mut(&key) {
                slot.dirty_hint = true;
            }
            g.touch(key);
        }
        let removed = victim.and_then(|key| g.remove(key));
        drop(g);
        match removed {
            Some(_slot) => {
                inner.evictions.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Drop the clean blocks of `ino` (the back-end object changed). Dirty
    /// blocks stay.
    pub fn invalidate_inode(&self, ino: u64) -> Invalidated {
        self.remove_range(inode_range(ino), true)
    }

    /// Drop the clean blocks of `ino` overlapping `[start, end)`.
    pub fn invalidate_range(&self, ino: u64, start: u64, end: u64) -> Invalidated {
        match self.block_range(ino, start, end) {
            Some(r) => self.remove_range(r, true),
            None => Invalidated::default(),
        }
    }

    /// Drop every block of `ino` overlapping `[start, end)`, dirty ones too
    /// (truncate, unlink: the data is meant to go).
    pub fn discard_range(&self, ino: u64, start: u64, end: u64) -> Invalidated {
        match self.block_range(ino, start, end) {
            Some(r) => self.remove_range(r, false),
            None => Invalidated::default(),
        }
    }

    /// Hits, misses, evictions and pool bytes in use, read from atomics
    /// without taking the cache lock (metrics scrapes).
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        let inner = &self.inner;
        (
            inner.hits.load(Ordering::Relaxed),
            inner.misses.load(Ordering::Relaxed),
            inner.evictions.load(Ordering::Relaxed),
            inner.pool.used_bytes() as u64,
        )
    }

    /// Blocks in the index (one lock, no walk: cheap enough for a metrics scrape).
    pub fn entries(&self) -> usize {
        self.inner.lock().map.len()
    }

    pub fn stats(&self) -> CacheStats {
        let inner = &self.inner;
        let g = inner.lock();
        let mut stats = CacheStats {
            hits: inner.hits.load(Ordering::Relaxed),
            misses: inner.misses.load(Ordering::Relaxed),
            stale: inner.stale.load(Ordering::Relaxed),
            evictions: inner.evictions.load(Ordering::Relaxed),
            inserts: inner.inserts.load(Ordering::Relaxed),
            entries: g.map.len(),
            pinned: g.map.values().filter(|s| s.pins > 0).count(),
            bytes_used: inner.pool.used_bytes(),
            memory_limit: inner.pool.memory_limit(),
            ..CacheStats::default()
        };
        for key in g.dirty_lru.values() {
            let d = read_data(&g.map[key].entry);
            if d.is_dirty() {
                stats.dirty_entries += 1;
                stats.dirty_bytes += d.valid;
            }
        }
        stats
    }

    fn block_range(&self, ino: u64, start: u64, end: u64) -> Option<(Bound<BlockKey>, Bound<BlockKey>)> {
        (start < end).then(|| (Bound::Included(self.key(ino, start)), Bound::Excluded(BlockKey { ino, offset: end })))
    }

    fn remove_range(&self, range: (Bound<BlockKey>, Bound<BlockKey>), keep_dirty: bool) -> Invalidated {
        let mut out = Invalidated::default();
        let mut removed = Vec::new();
        let mut g = self.inner.lock();
        let keys: Vec<BlockKey> = g.map.range(range).map(|(k, _)| *k).collect();
        for key in keys {
            let slot = &g.map[&key];
            let entry = slot.entry.clone();
            let mut d = write_data(&entry);
            if keep_dirty && (slot.dirty_hint || d.is_dirty()) {
                out.dirty_kept += 1;
                continue;
            }
            d.detached = true;
            drop(d);
            removed.extend(g.remove(key));
        }
        drop(g);
        out.removed = removed.len();
        out
    }

    /// A pool block for `len` bytes, evicting clean entries until one fits.
    fn alloc_block(&self, len: usize) -> Result<Block, CacheError> {
        let class = SizeClass::for_len(len).ok_or(CacheError::BadRange)?;
        loop {
            if let Some(block) = self.inner.pool.alloc_class(class) {
                return Ok(block);
            }
            if !self.evict(Some(class)) {
                return Err(CacheError::Full);
            }
        }
    }

    /// Clear a `dirty_hint` the entry does not deserve.
    fn fix_hint(&self, entry: &Arc<Entry>) {
        let mut g = self.inner.lock();
        let Some(slot) = g.map.get_mut(&entry.key) else { return };
        if !Arc::ptr_eq(&slot.entry, entry) || !slot.dirty_hint {
            return;
        }
        if !read_data(entry).is_dirty() {
            slot.dirty_hint = false;
            g.touch(entry.key);
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn inode_range(ino: u64) -> (Bound<BlockKey>, Bound<BlockKey>) {
    (Bound::Included(BlockKey { ino, offset: 0 }), Bound::Included(BlockKey { ino, offset: u64::MAX }))
}

/// Read access to a cached block. The block stays valid while the guard
/// lives, even if the entry is evicted or replaced meanwhile (the guard then
/// shows the old bytes).
pub struct Guard {
    entry: Arc<Entry>,
    version: Version,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").field("key", &self.entry.key).field("version", &self.version).finish()
    }
}

impl Guard {
    pub fn key(&self) -> BlockKey {
        self.entry.key
    }

    /// The version the block was read at (as of the lookup).
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Valid bytes in the block (less than the block size: EOF is inside).
    pub fn valid_len(&self) -> usize {
        read_data(&self.entry).valid
    }

    /// Copy valid bytes from `offset` (within the block) into `buf`; returns
    /// how many (0 at or past the valid length).
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> usize {
        let d = read_data(&self.entry);
        if offset >= d.valid {
            return 0;
        }
        let n = buf.len().min(d.valid - offset);
        buf[..n].copy_from_slice(&d.block.as_slice()[offset..offset + n]);
        n
    }

    /// Run `f` on the valid bytes. Writers of this block wait meanwhile: keep
    /// `f` short (a copy), never await inside it, and do not call the cache
    /// from it (an `insert`, `write` or `pin` of the same block would wait
    /// for `f` forever).
    pub fn with_data<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let d = read_data(&self.entry);
        f(&d.block.as_slice()[..d.valid])
    }

    /// A copy of the valid bytes.
    pub fn to_bytes(&self) -> Bytes {
        self.with_data(Bytes::copy_from_slice)
    }
}

/// A pinned block (for a DAX mapping): its memfd range stays valid and in
/// place until dropped. Dropping unpins (the entry becomes evictable again
/// when no pin is left).
pub struct Pin {
    cache: Arc<Inner>,
    entry: Arc<Entry>,
    fd: RawFd,
    offset: u64,
    len: usize,
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pin").field("key", &self.entry.key).field("offset", &self.offset).finish()
    }
}

impl Pin {
    pub fn key(&self) -> BlockKey {
        self.entry.key
    }

    /// The memfd and offset of the block (2 MiB-aligned for 2 MiB blocks);
    /// the fd is borrowed and valid while the pin lives.
    pub fn fd_and_offset(&self) -> (RawFd, u64) {
        (self.fd, self.offset)
    }

    /// The mapped length (the full block).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Record that the block changed through the mapping (guest wrote via
    /// DAX). False when the entry was removed from the cache meanwhile.
    pub fn mark_dirty(&self) -> bool {
        {
            let mut g = self.cache.lock();
            let Some(slot) = g.map.get_mut(&self.entry.key) else { return false };
            if !Arc::ptr_eq(&slot.entry, &self.entry) {
                return false;
            }
            slot.dirty_hint = true;
            g.touch(self.entry.key);
        }
        let mut d = write_data(&self.entry);
        if d.detached {
            return false;
        }
        d.write_gen += 1;
        true
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut g = self.cache.lock();
        let key = self.entry.key;
        if let Some(slot) = g.map.get_mut(&key) {
            if Arc::ptr_eq(&slot.entry, &self.entry) {
                slot.pins -= 1;
                g.touch(key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
