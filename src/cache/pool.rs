//! The cache's memory: a pool of blocks carved from sealed memfds.
//!
//! Why memfd: a 2 MiB block of cached file data can later be mapped straight
//! into a guest's DAX window (the VMM maps `(memfd, offset, 2 MiB)` with
//! VHOST_USER_BACKEND_SHMEM_MAP), so FUSE READ/WRITE and DAX see the same
//! bytes. See `shared/DAX.md`.
//!
//! Layout. The pool grows by adding *arenas*; an arena is one memfd,
//! `ftruncate`d once to its final size, sealed with `F_SEAL_SHRINK |
//! F_SEAL_GROW` (so nothing, not even a bug here, can shrink it under a live
//! mapping) and mapped `MAP_SHARED`. Arenas are never unmapped or closed while
//! the pool lives (every [`Block`] holds the pool alive). An arena is cut into
//! 2 MiB *slabs* at 2 MiB-aligned memfd offsets; a free slab is either handed
//! out whole as a 2 MiB block or carved into equal blocks of one smaller size
//! class (4 KiB, 16 KiB, 64 KiB, 256 KiB, 1 MiB).
//!
//! Free lists. Each class below 2 MiB has a lock-free LIFO free list, and free
//! slabs have one more (which is also the 2 MiB class's list). Each list is a
//! Treiber stack over `u32` indices: the head is one `AtomicU64` packing
//! `(tag << 32) | index`, and the "next" links live in a side table of
//! `AtomicU32`s (one per possible block), never in the blocks themselves.
//! * Pop reads the head, reads `next[index]`, and CASes the head to
//!   `(tag + 1, next)`; push writes `next[index] = head.index` and CASes the
//!   head to `(tag + 1, index)`. Every successful CAS bumps the tag, so the
//!   classic ABA (head popped, reused and pushed back between our read and our
//!   CAS, making `next` stale) changes the tag and our CAS fails; a false
//!   success needs exactly 2^32 successful operations on that list between one
//!   thread's load and its CAS.
//! * The links are atomics in a table that lives as long as the pool, so a
//!   stale read of a link is a well-defined (and then discarded) value, never a
//!   read of freed memory or a data race with a block's new owner writing its
//!   bytes.
//! * Ordering: push publishes with Release and pop takes with Acquire, so a
//!   block's previous owner's writes happen-before its next owner's.
//!
//! Alloc and free are O(1) and take no lock. The slow path (class list and
//! free-slab list both empty, pool at its size) takes one mutex and *reclaims*:
//! it detaches every class list whole (one CAS each), returns slabs whose
//! blocks are all free to the slab list, and pushes the rest back. That keeps
//! memory that once held small blocks usable for large ones.
//!
//! Accounting. `used_bytes` is the sum of the class sizes of the blocks handed
//! out; `alloc` reserves a block's size against `memory_limit` with one
//! CAS loop before it takes a block and returns `None` when the limit would be
//! exceeded (the caller evicts and retries). The memfds total at most
//! `memory_limit` rounded up to 2 MiB, so the pool's memory (RSS included) is
//! bounded even with free blocks sitting in the lists. Fragmentation can still
//! make `alloc` fail under the limit (every slab partly used by another class);
//! the caller then evicts more, which frees whole slabs.
//!
//! Memory in a block may be shared with a guest once mapped for DAX; while so,
//! the guest can change the bytes at any time, like any shared memory.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::memfd::SharedMap;

/// Size of a slab, of the largest class and the alignment of its blocks.
pub const SLAB_SIZE: usize = 2 << 20;
/// Default size of one arena (one memfd).
pub const DEFAULT_ARENA_SIZE: usize = 64 << 20;
/// Blocks per slab of the smallest class; block index = slab * this + n.
const MAX_PER_SLAB: u32 = (SLAB_SIZE / 4096) as u32;
/// End of a list.
const NIL: u32 = u32::MAX;
/// Largest number of slabs whose block indices fit below `NIL` (16 TiB).
const MAX_SLABS: usize = (NIL / MAX_PER_SLAB) as usize;

/// A block size class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SizeClass {
    K4,
    K16,
    K64,
    K256,
    M1,
    M2,
}

impl SizeClass {
    /// All classes, smallest first.
    pub const ALL: [SizeClass; 6] =
        [SizeClass::K4, SizeClass::K16, SizeClass::K64, SizeClass::K256, SizeClass::M1, SizeClass::M2];

    /// The block size of this class in bytes.
    pub const fn size(self) -> usize {
        match self {
            SizeClass::K4 => 4 << 10,
            SizeClass::K16 => 16 << 10,
            SizeClass::K64 => 64 << 10,
            SizeClass::K256 => 256 << 10,
            SizeClass::M1 => 1 << 20,
            SizeClass::M2 => 2 << 20,
        }
    }

    /// The smallest class that holds `len` bytes (`0` gets the smallest);
    /// `None` above 2 MiB.
    pub fn for_len(len: usize) -> Option<SizeClass> {
        SizeClass::ALL.into_iter().find(|c| len <= c.size())
    }

    const fn index(self) -> usize {
        self as usize
    }

    const fn blocks_per_slab(self) -> u32 {
        (SLAB_SIZE / self.size()) as u32
    }
}

/// Pool construction parameters.
#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Upper bound on the bytes of blocks handed out (and, rounded up to
    /// 2 MiB, on the memfd bytes the pool creates).
    pub memory_limit: usize,
    /// Size of one arena (memfd); rounded up to a multiple of 2 MiB. The last
    /// arena is smaller when the limit ends inside it.
    pub arena_size: usize,
}

impl PoolConfig {
    pub fn new(memory_limit: usize) -> Self {
        PoolConfig { memory_limit, arena_size: DEFAULT_ARENA_SIZE }
    }
}

/// A point-in-time view of the pool's accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of blocks handed out (class sizes).
    pub used_bytes: usize,
    /// The configured bound on `used_bytes`.
    pub memory_limit: usize,
    /// Bytes of memfd created so far.
    pub committed_bytes: usize,
    /// Blocks handed out, per class (index = `SizeClass as usize`).
    pub live_blocks: [usize; 6],
    /// `alloc` calls that returned `None`.
    pub failed_allocs: u64,
    /// Runs of the reclaim slow path.
    pub reclaims: u64,
}

/// A pool of memfd-backed blocks; cheap to clone (shared).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("stats", &self.stats()).finish()
    }
}

impl Pool {
    /// A pool bounded by `config.memory_limit`. No memory is created until the
    /// first allocation.
    pub fn new(config: PoolConfig) -> io::Result<Pool> {
        let arena_size = config.arena_size.clamp(SLAB_SIZE, 1 << 40).div_ceil(SLAB_SIZE) * SLAB_SIZE;
        let slabs_per_arena = arena_size / SLAB_SIZE;
        let total_slabs = config.memory_limit.div_ceil(SLAB_SIZE);
        if total_slabs > MAX_SLABS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cache memory limit above 16 TiB"));
        }
        let n_arenas = total_slabs.div_ceil(slabs_per_arena);
        let arenas = (0..n_arenas).map(|_| OnceLock::new()).collect();
        Ok(Pool {
            inner: Arc::new(Inner {
                limit: AtomicUsize::new(config.memory_limit),
                max_limit: config.memory_limit,
                slabs_per_arena: slabs_per_arena as u32,
                total_slabs: total_slabs as u32,
                arenas,
                next_arena: AtomicUsize::new(0),
                committed: AtomicUsize::new(0),
                free_slabs: Stack::new(),
                free_blocks: std::array::from_fn(|_| Stack::new()),
                live: std::array::from_fn(|_| AtomicUsize::new(0)),
                used: AtomicUsize::new(0),
                failed: AtomicU64::new(0),
                reclaims: AtomicU64::new(0),
                reclaim_lock: Mutex::new(()),
            }),
        })
    }

    /// A pool with the default arena size.
    pub fn with_limit(memory_limit: usize) -> io::Result<Pool> {
        Pool::new(PoolConfig::new(memory_limit))
    }

    /// A block of the smallest class holding `len` bytes, or `None` when
    /// `len` is above 2 MiB or the block would exceed the memory limit (or
    /// fragmentation leaves no block of that class): evict and retry.
    pub fn alloc(&self, len: usize) -> Option<Block> {
        self.alloc_class(SizeClass::for_len(len)?)
    }

    /// A block of exactly `class`; see [`Pool::alloc`].
    pub fn alloc_class(&self, class: SizeClass) -> Option<Block> {
        let inner = &self.inner;
        let size = class.size();
        let reserved = inner.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(size).filter(|&n| n <= inner.limit.load(Ordering::Relaxed))
        });
        if reserved.is_err() {
            inner.failed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let Some(index) = inner.take(class) else {
            inner.used.fetch_sub(size, Ordering::AcqRel);
            inner.failed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        inner.live[class.index()].fetch_add(1, Ordering::Relaxed);
        let ptr = inner.block_ptr(index, class);
        Some(Block { pool: self.inner.clone(), index, class, ptr })
    }

    /// Return a block (same as dropping it).
    pub fn free(&self, block: Block) {
        debug_assert!(Arc::ptr_eq(&self.inner, &block.pool), "block freed to another pool");
        drop(block);
    }

    /// The memfd and byte offset of `block`; see [`Block::fd_and_offset`].
    pub fn fd_and_offset(&self, block: &Block) -> (RawFd, u64) {
        block.fd_and_offset()
    }

    /// Bytes of blocks handed out.
    pub fn used_bytes(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    pub fn memory_limit(&self) -> usize {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// Change the bound on blocks handed out (at most the limit the pool was
    /// created with; blocks already out stay). Lets the file system give part
    /// of one `memory_limit` to the staged bytes of files being written.
    pub fn set_memory_limit(&self, limit: usize) {
        self.inner.limit.store(limit.min(self.inner.max_limit), Ordering::Relaxed);
    }

    /// The bound the pool was created with: [`Pool::set_memory_limit`]
    /// never goes above it.
    pub fn max_memory_limit(&self) -> usize {
        self.inner.max_limit
    }

    /// Number of distinct block indices the pool can ever hand out (for
    /// tests and debugging tables indexed by [`Block::index`]).
    pub fn index_space(&self) -> usize {
        self.inner.total_slabs as usize * MAX_PER_SLAB as usize
    }

    pub fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        PoolStats {
            used_bytes: inner.used.load(Ordering::Acquire),
            memory_limit: inner.limit.load(Ordering::Relaxed),
            committed_bytes: inner.committed.load(Ordering::Acquire),
            live_blocks: std::array::from_fn(|i| inner.live[i].load(Ordering::Relaxed)),
            failed_allocs: inner.failed.load(Ordering::Relaxed),
            reclaims: inner.reclaims.load(Ordering::Relaxed),
        }
    }
}

/// One block of pool memory, owned: freed when dropped.
pub struct Block {
    pool: Arc<Inner>,
    index: u32,
    class: SizeClass,
    ptr: NonNull<u8>,
}

// SAFETY: a Block is the only owner of its bytes (the free lists hand each
// index to one Block at a time), the memory stays mapped while the Arc'd pool
// lives, and access goes through &self / &mut self, so moving it to or sharing
// it with another thread is as safe as for a Box<[u8]>.
unsafe impl Send for Block {}
// SAFETY: see Send: shared references only give shared (&[u8]) access.
unsafe impl Sync for Block {}

impl Block {
    /// The block's size (its class size).
    pub fn len(&self) -> usize {
        self.class.size()
    }

    /// Always false; blocks have at least 4 KiB.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn class(&self) -> SizeClass {
        self.class
    }

    /// The block's index in the pool (unique among live blocks).
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to len() bytes inside a live MAP_SHARED mapping of
        // an arena (kept mapped by self.pool); memfd memory is always
        // initialized (zero-filled, or earlier contents); this Block is the
        // only owner of the range, and &self forbids concurrent &mut.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; &mut self makes this the only live view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }

    /// The memfd holding this block and the block's byte offset in it. A
    /// 2 MiB block's offset is 2 MiB-aligned. The fd is borrowed: valid while
    /// this block (or the pool) lives; the memfd is sealed against shrinking.
    pub fn fd_and_offset(&self) -> (RawFd, u64) {
        let (arena, offset) = self.pool.locate(self.index, self.class);
        (arena.map.fd(), offset as u64)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.pool.give_back(self.index, self.class);
    }
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block").field("index", &self.index).field("class", &self.class).finish()
    }
}

/// One memfd, mapped.
struct Arena {
    /// The sealed memfd and its mapping (unmapped when the arena drops,
    /// which is only with the pool, after every Block: each holds the pool).
    map: SharedMap,
    /// Free-list links of the blocks, `slabs * MAX_PER_SLAB` entries.
    block_next: Box<[AtomicU32]>,
    /// Free-list links of the slabs.
    slab_next: Box<[AtomicU32]>,
}

// SAFETY: the mapping is process-wide and lives as long as the Arena; the
// Arena itself never reads or writes through `base` (Blocks do, under their
// own ownership rules), and the link tables are atomics.
unsafe impl Send for Arena {}
// SAFETY: see Send.
unsafe impl Sync for Arena {}

impl Arena {
    fn new(slabs: u32) -> io::Result<Arena> {
        let map = SharedMap::new(c"ovfs-cache", slabs as usize * SLAB_SIZE, true)?;
        let links = |n: usize| (0..n).map(|_| AtomicU32::new(NIL)).collect();
        Ok(Arena { map, block_next: links(slabs as usize * MAX_PER_SLAB as usize), slab_next: links(slabs as usize) })
    }
}

/// A Treiber stack of u32 indices with an ABA tag; links are external.
struct Stack {
    head: AtomicU64,
}

fn pack(tag: u32, index: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(index)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

impl Stack {
    fn new() -> Stack {
        Stack { head: AtomicU64::new(pack(0, NIL)) }
    }

    /// Push the chain `first -> ... -> last` (already linked by the caller,
    /// who owns every node in it).
    fn push_chain<'a>(&self, first: u32, last: u32, link: impl Fn(u32) -> &'a AtomicU32) {
        let last_link = link(last);
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let (tag, top) = unpack(head);
            last_link.store(top, Ordering::Relaxed);
            match self.head.compare_exchange_weak(
                head,
                pack(tag.wrapping_add(1), first),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    fn push<'a>(&self, index: u32, link: impl Fn(u32) -> &'a AtomicU32) {
        self.push_chain(index, index, link)
    }

    fn pop<'a>(&self, link: impl Fn(u32) -> &'a AtomicU32) -> Option<u32> {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let (tag, top) = unpack(head);
            if top == NIL {
                return None;
            }
            // Possibly stale if `top` was popped meanwhile; then the tag
            // changed and the CAS below fails.
            let next = link(top).load(Ordering::Relaxed);
            match self.head.compare_exchange_weak(
                head,
                pack(tag.wrapping_add(1), next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(top),
                Err(now) => head = now,
            }
        }
    }

    /// Detach the whole list; returns its first index (or NIL). The caller
    /// then owns every node of the chain.
    fn take_all(&self) -> u32 {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let (tag, top) = unpack(head);
            if top == NIL {
                return NIL;
            }
            match self.head.compare_exchange_weak(
                head,
                pack(tag.wrapping_add(1), NIL),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return top,
                Err(now) => head = now,
            }
        }
    }
}

struct Inner {
    /// Current bound on `used` (at most `max_limit`).
    limit: AtomicUsize,
    /// The bound the pool was created with (sizes the memfds).
    max_limit: usize,
    slabs_per_arena: u32,
    total_slabs: u32,
    /// Fixed table; entry i is set when arena i is created.
    arenas: Box<[OnceLock<Arena>]>,
    /// Next arena index to create.
    next_arena: AtomicUsize,
    committed: AtomicUsize,
    /// Free whole slabs (also the 2 MiB class's free list); slab indices.
    free_slabs: Stack,
    /// Free blocks per class (the M2 entry is unused); block indices.
    free_blocks: [Stack; 6],
    live: [AtomicUsize; 6],
    used: AtomicUsize,
    failed: AtomicU64,
    reclaims: AtomicU64,
    /// Serializes the reclaim slow path only (alloc/free never take it).
    reclaim_lock: Mutex<()>,
}

impl Inner {
    fn arena(&self, slab: u32) -> &Arena {
        self.arenas[(slab / self.slabs_per_arena) as usize].get().expect("index of an arena that was never created")
    }

    fn block_link(&self, index: u32) -> &AtomicU32 {
        let slab = index / MAX_PER_SLAB;
        let arena = self.arena(slab);
        let local = index - (slab - slab % self.slabs_per_arena) * MAX_PER_SLAB;
        &arena.block_next[local as usize]
    }

    fn slab_link(&self, slab: u32) -> &AtomicU32 {
        &self.arena(slab).slab_next[(slab % self.slabs_per_arena) as usize]
    }

    /// The arena of a block and the block's byte offset in it.
    fn locate(&self, index: u32, class: SizeClass) -> (&Arena, usize) {
        let slab = index / MAX_PER_SLAB;
        let n = (index % MAX_PER_SLAB) as usize;
        let offset = (slab % self.slabs_per_arena) as usize * SLAB_SIZE + n * class.size();
        (self.arena(slab), offset)
    }

    fn block_ptr(&self, index: u32, class: SizeClass) -> NonNull<u8> {
        let (arena, offset) = self.locate(index, class);
        debug_assert!(offset + class.size() <= arena.map.len());
        // SAFETY: offset + class size lies within the arena's mapping (slab
        // and block numbers are bounded by construction), so the result stays
        // inside the same allocation and is non-null.
        unsafe { NonNull::new_unchecked(arena.map.base().as_ptr().add(offset)) }
    }

    /// A free block index of `class` (bytes already reserved).
    fn take(&self, class: SizeClass) -> Option<u32> {
        if let Some(index) = self.take_fast(class) {
            return Some(index);
        }
        let _guard = self.reclaim_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Someone may have freed or reclaimed while we waited.
        if let Some(index) = self.take_fast(class) {
            return Some(index);
        }
        self.reclaim();
        self.take_fast(class)
    }

    fn take_fast(&self, class: SizeClass) -> Option<u32> {
        if class == SizeClass::M2 {
            return self.take_slab().map(|slab| slab * MAX_PER_SLAB);
        }
        let list = &self.free_blocks[class.index()];
        if let Some(index) = list.pop(|i| self.block_link(i)) {
            return Some(index);
        }
        // Carve a fresh slab: keep its first block, push the rest as a chain.
        let slab = self.take_slab()?;
        let first = slab * MAX_PER_SLAB;
        let n = class.blocks_per_slab();
        for i in 1..n - 1 {
            self.block_link(first + i).store(first + i + 1, Ordering::Relaxed);
        }
        list.push_chain(first + 1, first + n - 1, |i| self.block_link(i));
        Some(first)
    }

    fn take_slab(&self) -> Option<u32> {
        self.free_slabs.pop(|s| self.slab_link(s)).or_else(|| self.grow())
    }

    /// Create the next arena; returns one of its slabs and frees the others.
    fn grow(&self) -> Option<u32> {
        let n = self.arenas.len();
        let a = self.next_arena.fetch_update(Ordering::AcqRel, Ordering::Acquire, |i| (i < n).then_some(i + 1)).ok()?;
        let first = a as u32 * self.slabs_per_arena;
        let slabs = self.slabs_per_arena.min(self.total_slabs - first);
        match Arena::new(slabs) {
            Ok(arena) => {
                self.committed.fetch_add(arena.map.len(), Ordering::AcqRel);
                if self.arenas[a].set(arena).is_err() {
                    unreachable!("arena index reserved twice");
                }
            }
            Err(e) => {
                // The index stays used: the pool is smaller by one arena.
                tracing::warn!(error = %e, arena = a, "cache pool: cannot create arena");
                return None;
            }
        }
        if slabs > 1 {
            for s in first + 1..first + slabs - 1 {
                self.slab_link(s).store(s + 1, Ordering::Relaxed);
            }
            self.free_slabs.push_chain(first + 1, first + slabs - 1, |s| self.slab_link(s));
        }
        Some(first)
    }

    /// Slow path (reclaim_lock held): give slabs whose blocks are all free
    /// back to the slab list.
    fn reclaim(&self) {
        self.reclaims.fetch_add(1, Ordering::Relaxed);
        for class in SizeClass::ALL {
            if class == SizeClass::M2 {
                continue;
            }
            let list = &self.free_blocks[class.index()];
            let mut index = list.take_all();
            if index == NIL {
                continue;
            }
            // We own the detached chain: nobody else can reach these nodes.
            let mut blocks = Vec::new();
            let mut per_slab: HashMap<u32, u32> = HashMap::new();
            while index != NIL {
                blocks.push(index);
                *per_slab.entry(index / MAX_PER_SLAB).or_default() += 1;
                index = self.block_link(index).load(Ordering::Relaxed);
            }
            let full = class.blocks_per_slab();
            for (&slab, &count) in &per_slab {
                if count == full {
                    self.free_slabs.push(slab, |s| self.slab_link(s));
                }
            }
            blocks.retain(|b| per_slab[&(b / MAX_PER_SLAB)] != full);
            if let (Some(&first), Some(&last)) = (blocks.first(), blocks.last()) {
                for pair in blocks.windows(2) {
                    self.block_link(pair[0]).store(pair[1], Ordering::Relaxed);
                }
                list.push_chain(first, last, |i| self.block_link(i));
            }
        }
    }

    fn give_back(&self, index: u32, class: SizeClass) {
        if class == SizeClass::M2 {
            self.free_slabs.push(index / MAX_PER_SLAB, |s| self.slab_link(s));
        } else {
            self.free_blocks[class.index()].push(index, |i| self.block_link(i));
        }
        self.live[class.index()].fetch_sub(1, Ordering::Relaxed);
        self.used.fetch_sub(class.size(), Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    const MIB: usize = 1 << 20;

    fn file_of(fd: RawFd) -> std::fs::File {
        // SAFETY: dup gives us our own descriptor for the same memfd.
        let dup = unsafe { libc::dup(fd) };
        assert!(dup >= 0);
        // SAFETY: dup is a fresh descriptor we own.
        std::fs::File::from(unsafe { OwnedFd::from_raw_fd(dup) })
    }

    #[test]
    fn size_classes() {
        assert_eq!(SizeClass::for_len(0), Some(SizeClass::K4));
        assert_eq!(SizeClass::for_len(4096), Some(SizeClass::K4));
        assert_eq!(SizeClass::for_len(4097), Some(SizeClass::K16));
        assert_eq!(SizeClass::for_len(MIB + 1), Some(SizeClass::M2));
        assert_eq!(SizeClass::for_len(2 * MIB), Some(SizeClass::M2));
        assert_eq!(SizeClass::for_len(2 * MIB + 1), None);
        for c in SizeClass::ALL {
            assert_eq!(SLAB_SIZE % c.size(), 0);
        }
    }

    #[test]
    fn stack_tag_defeats_aba() {
        let links: Vec<AtomicU32> = (0..4).map(|_| AtomicU32::new(NIL)).collect();
        let link = |i: u32| &links[i as usize];
        let stack = Stack::new();
        for i in [2, 1, 0] {
            stack.push(i, link);
        }
        // A popper reads head = 0 and next = 1, then stalls...
        let seen = stack.head.load(Ordering::Acquire);
        let (_, top) = unpack(seen);
        let next = link(top).load(Ordering::Relaxed);
        assert_eq!((top, next), (0, 1));
        // ...while others pop 0 and 1 and push 0 back: head is 0 again, but
        // its next is now 2 (1 is in use).
        assert_eq!(stack.pop(link), Some(0));
        assert_eq!(stack.pop(link), Some(1));
        stack.push(0, link);
        assert_eq!(unpack(stack.head.load(Ordering::Acquire)).1, 0);
        // The stalled CAS would install the in-use 1 as head; the tag stops it.
        let (tag, _) = unpack(seen);
        assert!(stack.head.compare_exchange(seen, pack(tag + 1, next), Ordering::AcqRel, Ordering::Acquire).is_err());
        assert_eq!(stack.pop(link), Some(0));
        assert_eq!(stack.pop(link), Some(2));
        assert_eq!(stack.pop(link), None);
        // take_all detaches a chain in order.
        for i in [3, 2] {
            stack.push(i, link);
        }
        let first = stack.take_all();
        assert_eq!((first, link(first).load(Ordering::Relaxed)), (2, 3));
        assert_eq!(stack.pop(link), None);
    }

    #[test]
    fn alloc_free_each_class() {
        let pool = Pool::with_limit(16 * MIB).unwrap();
        for class in SizeClass::ALL {
            let mut a = pool.alloc_class(class).unwrap();
            let b = pool.alloc(class.size()).unwrap();
            assert_eq!(b.class(), class);
            assert_eq!(a.len(), class.size());
            assert_ne!(a.index(), b.index());
            a.as_mut_slice().fill(0xa5);
            assert!(a.as_slice().iter().all(|&x| x == 0xa5));
            assert_eq!(pool.used_bytes(), 2 * class.size());
            assert_eq!(pool.stats().live_blocks[class as usize], 2);
            pool.free(a);
            let last = b.index();
            drop(b);
            assert_eq!(pool.used_bytes(), 0);
            // LIFO: the block freed last comes back first.
            let c = pool.alloc_class(class).unwrap();
            assert_eq!(c.index(), last);
        }
        assert_eq!(pool.stats().live_blocks, [0; 6]);
        assert!(pool.alloc(2 * MIB + 1).is_none());
    }

    #[test]
    fn limit_enforced() {
        let pool = Pool::with_limit(4 * MIB).unwrap();
        let a = pool.alloc(2 * MIB).unwrap();
        let b = pool.alloc(2 * MIB).unwrap();
        assert!(pool.alloc(4096).is_none());
        assert_eq!(pool.used_bytes(), 4 * MIB);
        drop(a);
        // A freed 2 MiB slab can be carved into small blocks.
        let small: Vec<_> = (0..512).map(|_| pool.alloc(4096).unwrap()).collect();
        assert!(pool.alloc(4096).is_none());
        assert!(pool.stats().failed_allocs >= 2);
        drop(b);
        drop(small);
        assert_eq!(pool.used_bytes(), 0);
        // Everything free again, memory once carved small is reclaimed for 2 MiB.
        let big: Vec<_> = (0..2).map(|_| pool.alloc(2 * MIB).unwrap()).collect();
        assert!(pool.stats().reclaims >= 1);
        assert!(pool.stats().committed_bytes <= 4 * MIB);
        drop(big);
    }

    #[test]
    fn limit_not_multiple_of_slab() {
        let pool = Pool::with_limit(3 * MIB).unwrap();
        let a = pool.alloc(2 * MIB).unwrap();
        let b = pool.alloc(MIB).unwrap();
        assert!(pool.alloc(4096).is_none());
        drop((a, b));
        assert_eq!(pool.stats().committed_bytes, 4 * MIB);
    }

    #[test]
    fn two_mib_blocks_are_aligned() {
        let pool = Pool::new(PoolConfig { memory_limit: 20 * MIB, arena_size: 6 * MIB }).unwrap();
        // A few small blocks first so slabs get mixed.
        let _small: Vec<_> = (0..3).map(|_| pool.alloc(5000).unwrap()).collect();
        let big: Vec<_> = (0..9).map(|_| pool.alloc(2 * MIB).unwrap()).collect();
        let mut seen = std::collections::HashSet::new();
        for b in &big {
            let (fd, off) = b.fd_and_offset();
            assert_eq!(off % (2 * MIB as u64), 0);
            assert_eq!(b.as_slice().as_ptr() as usize % 4096, 0);
            assert!(seen.insert((fd, off)), "two blocks share a range");
        }
        // Arenas of 6 MiB: 20 MiB makes 4 memfds (6 + 6 + 6 + 2).
        assert!(pool.alloc(2 * MIB).is_none());
        assert_eq!(pool.stats().committed_bytes, 20 * MIB);
    }

    #[test]
    fn fd_offset_matches_memory() {
        let pool = Pool::new(PoolConfig { memory_limit: 16 * MIB, arena_size: 4 * MIB }).unwrap();
        let mut blocks: Vec<Block> = Vec::new();
        for (i, class) in SizeClass::ALL.into_iter().enumerate() {
            if class == SizeClass::M2 {
                continue;
            }
            let mut b = pool.alloc_class(class).unwrap();
            for (j, x) in b.as_mut_slice().iter_mut().enumerate() {
                *x = (i * 31 + j * 7) as u8;
            }
            blocks.push(b);
        }
        let mut big = pool.alloc(2 * MIB).unwrap();
        big.as_mut_slice().fill(0x5a);
        big.as_mut_slice()[2 * MIB - 1] = 0x77;
        blocks.push(big);
        for b in &blocks {
            let (fd, off) = pool.fd_and_offset(b);
            let mut buf = vec![0u8; b.len()];
            file_of(fd).read_exact_at(&mut buf, off).unwrap();
            assert!(buf == b.as_slice(), "pread differs from the mapping for {b:?}");
        }
        // And the other way: pwrite shows up in the slice.
        let b = &blocks[0];
        let (fd, off) = b.fd_and_offset();
        file_of(fd).write_all_at(b"hello", off + 10).unwrap();
        assert_eq!(&b.as_slice()[10..15], b"hello");
    }

    #[test]
    fn memfd_cannot_shrink() {
        let pool = Pool::with_limit(2 * MIB).unwrap();
        let b = pool.alloc(4096).unwrap();
        let (fd, _) = b.fd_and_offset();
        let err = file_of(fd).set_len(0).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn huge_limit_rejected() {
        assert!(Pool::with_limit(usize::MAX / 2).is_err());
        let pool = Pool::with_limit(0).unwrap();
        assert!(pool.alloc(1).is_none());
    }

    /// xorshift64*: a small deterministic generator for the stress test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn concurrent_stress() {
        const THREADS: usize = 8;
        const ITERS: usize = 20_000;
        const HELD: usize = 8;
        // Tight limit: allocs fail and the reclaim path runs.
        let pool = Pool::new(PoolConfig { memory_limit: 48 * MIB, arena_size: 8 * MIB }).unwrap();
        let in_use: Arc<Vec<AtomicBool>> = Arc::new((0..pool.index_space()).map(|_| AtomicBool::new(false)).collect());
        let start = Instant::now();
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let pool = pool.clone();
                let in_use = in_use.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678_9abc));
                    let mut held: Vec<(Block, u64)> = Vec::new();
                    let mut scratch = vec![0u8; 2 * MIB];
                    let (mut allocs, mut fails) = (0u64, 0u64);
                    let check_and_free = |(b, tag): (Block, u64), scratch: &mut [u8]| {
                        let len = b.len();
                        let fill = (tag % 251) as u8;
                        assert_eq!(&b.as_slice()[..8], &tag.to_le_bytes(), "header overwritten");
                        scratch[8..len].fill(fill);
                        assert!(b.as_slice()[8..] == scratch[8..len], "block body overwritten");
                        assert!(in_use[b.index() as usize].swap(false, Ordering::AcqRel), "freed twice");
                        drop(b);
                    };
                    for i in 0..ITERS {
                        let r = rng.next();
                        if held.len() >= HELD || (!held.is_empty() && r % 3 == 0) {
                            let victim = (r >> 8) as usize % held.len();
                            check_and_free(held.swap_remove(victim), &mut scratch);
                            continue;
                        }
                        // Small classes more often: big memsets are slow in debug builds.
                        let class = match (r >> 16) % 16 {
                            0..=5 => SizeClass::K4,
                            6..=9 => SizeClass::K16,
                            10..=11 => SizeClass::K64,
                            12 => SizeClass::K256,
                            13..=14 => SizeClass::M1,
                            _ => SizeClass::M2,
                        };
                        allocs += 1;
                        let Some(mut b) = pool.alloc_class(class) else {
                            fails += 1;
                            continue;
                        };
                        assert!(!in_use[b.index() as usize].swap(true, Ordering::AcqRel), "index handed out twice");
                        let tag = ((t as u64) << 48) | i as u64;
                        let s = b.as_mut_slice();
                        s.fill((tag % 251) as u8);
                        s[..8].copy_from_slice(&tag.to_le_bytes());
                        held.push((b, tag));
                    }
                    for h in held.drain(..) {
                        check_and_free(h, &mut scratch);
                    }
                    (allocs, fails)
                })
            })
            .collect();
        let (mut allocs, mut fails) = (0, 0);
        for h in handles {
            let (a, f) = h.join().unwrap();
            allocs += a;
            fails += f;
        }
        let stats = pool.stats();
        eprintln!(
            "pool stress: {THREADS} threads x {ITERS} iterations in {:?}: {allocs} allocs, {fails} failed, {} reclaims",
            start.elapsed(),
            stats.reclaims
        );
        assert_eq!(stats.used_bytes, 0);
        assert_eq!(stats.live_blocks, [0; 6]);
        assert!(stats.committed_bytes <= 48 * MIB);
        assert!(in_use.iter().all(|b| !b.load(Ordering::Relaxed)));
        // All memory is usable as 2 MiB blocks again.
        let all: Vec<_> = (0..24).map(|_| pool.alloc(2 * MIB).expect("reclaim after stress")).collect();
        assert_eq!(pool.used_bytes(), 48 * MIB);
        drop(all);
    }
}
