//! Unit tests of the block cache: lookups, LRU, TTL with an injected clock,
//! revalidation, invalidation, the memory bound, pins and dirty blocks.

use super::*;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// A clock the test moves by hand.
struct TestClock {
    offset_ms: Arc<AtomicU64>,
}

impl TestClock {
    fn new() -> (TestClock, Clock) {
        let base = Instant::now();
        let offset_ms = Arc::new(AtomicU64::new(0));
        let o = offset_ms.clone();
        let clock: Clock = Arc::new(move || base + Duration::from_millis(o.load(Ordering::Relaxed)));
        (TestClock { offset_ms }, clock)
    }

    fn advance(&self, d: Duration) {
        self.offset_ms.fetch_add(d.as_millis() as u64, Ordering::Relaxed);
    }
}

fn cache(limit: usize, block_size: usize, ttl: Option<Duration>) -> (BlockCache, TestClock) {
    let (tc, clock) = TestClock::new();
    let pool = Pool::with_limit(limit).unwrap();
    let cache = BlockCache::with_clock(pool, CacheConfig { block_size, ttl }, clock).unwrap();
    (cache, tc)
}

fn v(s: &str) -> Version {
    Arc::from(s)
}

fn hit(l: Lookup) -> Guard {
    match l {
        Lookup::Hit(g) => g,
        other => panic!("expected a hit, got {other:?}"),
    }
}

fn is_miss(l: Lookup) -> bool {
    matches!(l, Lookup::Miss)
}

#[test]
fn hit_and_miss() {
    let (c, _) = cache(8 * MIB, 64 * KIB, None);
    assert!(is_miss(c.get(1, 0)));
    c.insert(1, 64 * KIB as u64, b"hello world", v("e1")).unwrap();
    let g = hit(c.get(1, 64 * KIB as u64 + 5));
    assert_eq!(g.key(), BlockKey { ino: 1, offset: 64 * KIB as u64 });
    assert_eq!(g.valid_len(), 11);
    assert_eq!(&*g.version().clone(), "e1");
    let mut buf = [0u8; 5];
    assert_eq!(g.read(6, &mut buf), 5);
    assert_eq!(&buf, b"world");
    assert_eq!(g.read(11, &mut buf), 0);
    assert_eq!(g.to_bytes(), Bytes::from_static(b"hello world"));
    assert!(is_miss(c.get(2, 64 * KIB as u64)));
    assert!(is_miss(c.get(1, 0)));
    let s = c.stats();
    assert_eq!((s.hits, s.misses, s.inserts, s.entries), (1, 3, 1, 1));
    // Small data takes a small block.
    assert_eq!(s.bytes_used, 4 * KIB);
    assert_eq!(c.insert(1, 3, b"x", v("e")), Err(CacheError::BadRange));
    assert_eq!(c.insert(1, 0, &vec![0; 64 * KIB + 1], v("e")), Err(CacheError::BadRange));
}

#[test]
fn insert_replaces_clean_entry() {
    let (c, _) = cache(8 * MIB, 64 * KIB, None);
    c.insert(1, 0, b"old", v("e1")).unwrap();
    let old = hit(c.get(1, 0));
    c.insert(1, 0, b"new!", v("e2")).unwrap();
    let new = hit(c.get(1, 0));
    assert_eq!(new.to_bytes(), Bytes::from_static(b"new!"));
    assert_eq!(&**new.version(), "e2");
    // A guard taken before keeps showing what it saw.
    assert_eq!(old.to_bytes(), Bytes::from_static(b"old"));
    assert_eq!(c.stats().entries, 1);
}

#[test]
fn lru_order() {
    // Room for exactly four 4 KiB blocks.
    let (c, _) = cache(16 * KIB, 64 * KIB, None);
    for ino in 1..=4 {
        c.insert(ino, 0, &[ino as u8; 100], v("e")).unwrap();
    }
    hit(c.get(1, 0)); // 1 is now the most recently used; 2 is the LRU.
    c.insert(5, 0, b"five", v("e")).unwrap();
    assert!(is_miss(c.get(2, 0)));
    hit(c.get(1, 0));
    c.insert(6, 0, b"six", v("e")).unwrap();
    assert!(is_miss(c.get(3, 0)));
    for ino in [1, 4, 5, 6] {
        hit(c.get(ino, 0));
    }
    assert_eq!(c.stats().evictions, 2);
    assert!(c.stats().bytes_used <= 16 * KIB);
}

#[test]
fn ttl_expiry_and_refresh() {
    let (c, clock) = cache(8 * MIB, 64 * KIB, Some(Duration::from_secs(60)));
    c.insert(7, 0, b"data", v("etag-1")).unwrap();
    clock.advance(Duration::from_secs(59));
    hit(c.get(7, 0));
    clock.advance(Duration::from_secs(1));
    let (g, version) = match c.get(7, 0) {
        Lookup::Stale(g, version) => (g, version),
        other => panic!("expected stale, got {other:?}"),
    };
    assert_eq!(&*version, "etag-1");
    assert_eq!(g.to_bytes(), Bytes::from_static(b"data"));
    // The back-end says "changed": refresh with the old version must not pass.
    assert!(!c.refresh(7, 0, "etag-2"));
    assert!(matches!(c.get(7, 0), Lookup::Stale(..)));
    // Unchanged: refresh instead of refetching.
    assert!(c.refresh(7, 10, "etag-1"));
    hit(c.get(7, 0));
    clock.advance(Duration::from_secs(61));
    assert!(matches!(c.get(7, 0), Lookup::Stale(..)));
    assert!(!c.refresh(8, 0, "etag-1"));
    assert_eq!(c.stats().stale, 3);
}

#[test]
fn refresh_inode_and_no_ttl() {
    let (c, clock) = cache(8 * MIB, 64 * KIB, Some(Duration::from_secs(1)));
    for i in 0..4u64 {
        c.insert(3, i * 64 * KIB as u64, b"x", v(if i == 3 { "other" } else { "e" })).unwrap();
    }
    clock.advance(Duration::from_secs(2));
    assert_eq!(c.refresh_inode(3, "e"), 3);
    hit(c.get(3, 0));
    assert!(matches!(c.get(3, 3 * 64 * KIB as u64), Lookup::Stale(..)));

    let (c, clock) = cache(8 * MIB, 64 * KIB, None);
    c.insert(1, 0, b"x", v("e")).unwrap();
    clock.advance(Duration::from_secs(1_000_000));
    hit(c.get(1, 0));
}

#[test]
fn invalidate() {
    let bs = 64 * KIB as u64;
    let (c, _) = cache(8 * MIB, bs as usize, None);
    for ino in [1, 2] {
        for i in 0..5 {
            c.insert(ino, i * bs, b"abc", v("e")).unwrap();
        }
    }
    // [bs + 1, 3 * bs) overlaps blocks 1 and 2.
    assert_eq!(c.invalidate_range(1, bs + 1, 3 * bs), Invalidated { removed: 2, dirty_kept: 0 });
    for (i, cached) in [true, false, false, true, true].into_iter().enumerate() {
        assert_eq!(!is_miss(c.get(1, i as u64 * bs)), cached, "block {i}");
    }
    assert_eq!(c.invalidate_range(1, 5, 5), Invalidated::default());
    assert_eq!(c.invalidate_range(1, 4 * bs, u64::MAX).removed, 1);
    assert_eq!(c.invalidate_inode(1).removed, 2);
    assert!(is_miss(c.get(1, 0)));
    assert_eq!(c.stats().entries, 5);
    hit(c.get(2, 4 * bs));
    // Dirty blocks survive invalidation but not discard.
    c.write(2, 10, b"zz").unwrap();
    assert_eq!(c.invalidate_inode(2), Invalidated { removed: 4, dirty_kept: 1 });
    let mut expect = b"abc".to_vec();
    expect.extend_from_slice(&[0; 7]);
    expect.extend_from_slice(b"zz");
    assert_eq!(hit(c.get(2, 0)).to_bytes(), expect);
    assert_eq!(c.discard_range(2, 0, u64::MAX), Invalidated { removed: 1, dirty_kept: 0 });
    assert_eq!(c.stats().entries, 0);
    assert_eq!(c.stats().bytes_used, 0);
}

#[test]
fn write_marks_dirty_and_grows_block() {
    let (c, _) = cache(8 * MIB, 2 * MIB, None);
    assert_eq!(c.write(1, 0, b"x"), Err(CacheError::NotCached));
    c.insert(1, 0, b"0123456789", v("e1")).unwrap();
    assert_eq!(c.stats().bytes_used, 4 * KIB);
    c.write(1, 2, b"ab").unwrap();
    let g = hit(c.get(1, 0));
    assert_eq!(g.to_bytes(), Bytes::from_static(b"01ab456789"));
    // Past the 4 KiB block: moves to a bigger block, the gap reads as zeros.
    c.write(1, 100 * KIB as u64, b"far").unwrap();
    assert_eq!(g.valid_len(), 100 * KIB + 3);
    let all = g.to_bytes();
    assert_eq!(&all[..10], b"01ab456789");
    assert!(all[10..100 * KIB].iter().all(|&b| b == 0));
    assert_eq!(&all[100 * KIB..], b"far");
    assert_eq!(c.stats().bytes_used, 256 * KIB);
    // Crossing the block end is refused.
    assert_eq!(c.write(1, 2 * MIB as u64 - 1, b"ab"), Err(CacheError::BadRange));
    let s = c.stats();
    assert_eq!((s.dirty_entries, s.dirty_bytes), (1, 100 * KIB + 3));
    // Fetched data never overwrites unwritten changes.
    assert_eq!(c.insert(1, 0, b"backend", v("e2")), Err(CacheError::Dirty));
}

#[test]
fn dirty_blocks_and_mark_clean() {
    let (c, clock) = cache(8 * MIB, 64 * KIB, Some(Duration::from_secs(10)));
    c.insert(1, 0, b"aaaa", v("e1")).unwrap();
    c.insert(1, 64 * KIB as u64, b"bbbb", v("e1")).unwrap();
    c.insert(2, 0, b"cccc", v("e1")).unwrap();
    c.write(1, 64 * KIB as u64, b"B").unwrap();
    c.write(2, 0, b"C").unwrap();
    let d = c.dirty_blocks(Some(1), usize::MAX);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].key, BlockKey { ino: 1, offset: 64 * KIB as u64 });
    assert_eq!(d[0].data, Bytes::from_static(b"Bbbb"));
    assert_eq!(c.dirty_blocks(None, usize::MAX).len(), 2);
    assert_eq!(c.dirty_blocks(None, 1).len(), 1);
    // Dirty data does not go stale.
    clock.advance(Duration::from_secs(11));
    hit(c.get(1, 64 * KIB as u64));
    // Written again during the "upload": stays dirty.
    c.write(1, 64 * KIB as u64 + 1, b"X").unwrap();
    assert!(!c.mark_clean(d[0].key, d[0].gen, Some(v("e2"))));
    let d = c.dirty_blocks(Some(1), usize::MAX);
    assert_eq!(d[0].data, Bytes::from_static(b"BXbb"));
    assert!(c.mark_clean(d[0].key, d[0].gen, Some(v("e2"))));
    let g = hit(c.get(1, 64 * KIB as u64));
    assert_eq!(&**g.version(), "e2");
    assert!(c.dirty_blocks(Some(1), usize::MAX).is_empty());
    assert_eq!(c.stats().dirty_entries, 1);
    assert!(!c.mark_clean(BlockKey { ino: 9, offset: 0 }, 1, None));
}

#[test]
fn memory_bound_under_many_inserts() {
    let limit = MIB;
    let (c, _) = cache(limit, 64 * KIB, None);
    let mut seed = 0x1234_5678_u64;
    for i in 0..2000u64 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let len = (seed >> 33) as usize % (64 * KIB + 1);
        c.insert(i % 97, (i % 13) * 64 * KIB as u64, &vec![i as u8; len], v("e")).unwrap();
        assert!(c.pool().used_bytes() <= limit);
        let g = hit(c.get(i % 97, (i % 13) * 64 * KIB as u64));
        assert_eq!(g.valid_len(), len);
        assert!(g.with_data(|d| d.iter().all(|&b| b == i as u8)));
    }
    let s = c.stats();
    assert!(s.evictions > 1000, "{s:?}");
    assert!(s.bytes_used <= limit);
    assert!(c.pool().stats().committed_bytes <= 2 * MIB);
}

#[test]
fn pinned_entries_are_never_evicted() {
    let (c, _) = cache(8 * MIB, 2 * MIB, None);
    c.insert(1, 2 * MIB as u64, b"mapped bytes", v("e")).unwrap();
    // Leave garbage in the slab the pin will get, so the zeroing is visible.
    c.pool().alloc(2 * MIB).unwrap().as_mut_slice().fill(0xee);
    let pin = c.pin(1, 2 * MIB as u64 + 7).unwrap();
    assert_eq!(pin.len(), 2 * MIB);
    let (fd, off) = pin.fd_and_offset();
    assert_eq!(off % (2 * MIB as u64), 0);
    // The memfd range shows the block: data then zeros.
    // SAFETY: dup gives the test its own descriptor for the pool's memfd.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(libc::dup(fd)) });
    let mut buf = vec![0xffu8; 2 * MIB];
    file.read_exact_at(&mut buf, off).unwrap();
    assert_eq!(&buf[..12], b"mapped bytes");
    assert!(buf[12..].iter().all(|&b| b == 0));
    // Writes land in the mapped memory.
    c.write(1, 2 * MIB as u64 + 1, b"A").unwrap();
    file.read_exact_at(&mut buf[..2], off).unwrap();
    assert_eq!(&buf[..2], b"mA");
    // Fill the rest of the pool many times over.
    for i in 0..50u64 {
        c.insert(100 + i, 0, &vec![1; 2 * MIB], v("e")).unwrap();
    }
    let g = hit(c.get(1, 2 * MIB as u64));
    assert_eq!(g.with_data(|d| d[..3].to_vec()), b"mAp");
    assert_eq!(c.stats().pinned, 1);
    // The pinned block can be refreshed from the back-end in place.
    c.mark_clean(BlockKey { ino: 1, offset: 2 * MIB as u64 }, c.dirty_blocks(Some(1), 1)[0].gen, None);
    c.insert(1, 2 * MIB as u64, b"new", v("e2")).unwrap();
    assert_eq!(c.pin(1, 2 * MIB as u64).unwrap().fd_and_offset(), (fd, off));
    file.read_exact_at(&mut buf, off).unwrap();
    assert_eq!(&buf[..3], b"new");
    assert!(buf[3..].iter().all(|&b| b == 0));
    drop(pin);
    assert_eq!(c.stats().pinned, 0);
    // Unpinned: evictable again.
    for i in 0..4u64 {
        c.insert(200 + i, 0, &vec![1; 2 * MIB], v("e")).unwrap();
    }
    assert!(is_miss(c.get(1, 2 * MIB as u64)));
}

#[test]
fn pin_survives_invalidation() {
    let (c, _) = cache(4 * MIB, 2 * MIB, None);
    c.insert(1, 0, b"abc", v("e")).unwrap();
    let pin = c.pin(1, 0).unwrap();
    assert_eq!(c.pool().used_bytes(), 2 * MIB);
    assert_eq!(c.invalidate_inode(1).removed, 1);
    // The mapped range is still allocated until the pin goes.
    assert_eq!(c.pool().used_bytes(), 2 * MIB);
    assert!(!pin.mark_dirty());
    drop(pin);
    assert_eq!(c.pool().used_bytes(), 0);
    assert_eq!(c.pin(1, 0).unwrap_err(), CacheError::NotCached);
}

#[test]
fn dax_writes_mark_dirty() {
    let (c, _) = cache(4 * MIB, 2 * MIB, None);
    c.insert(1, 0, b"abc", v("e")).unwrap();
    let pin = c.pin(1, 0).unwrap();
    assert!(c.dirty_blocks(Some(1), 8).is_empty());
    assert!(pin.mark_dirty());
    assert_eq!(c.dirty_blocks(Some(1), 8).len(), 1);
    assert_eq!(c.insert(1, 0, b"x", v("e2")), Err(CacheError::Dirty));
}

#[test]
fn dirty_entries_are_not_dropped() {
    // Room for four 2 MiB blocks.
    let (c, _) = cache(8 * MIB, 2 * MIB, None);
    for i in 0..4u64 {
        c.insert(i, 0, &vec![i as u8; 2 * MIB], v("e")).unwrap();
        c.write(i, 5, b"dirty").unwrap();
    }
    assert_eq!(c.insert(9, 0, b"x", v("e")), Err(CacheError::Full));
    for i in 0..4u64 {
        let g = hit(c.get(i, 0));
        assert_eq!(g.with_data(|d| d[5..10].to_vec()), b"dirty");
    }
    assert_eq!(c.stats().dirty_entries, 4);
    // Write back the least recently used one, then the insert fits.
    let d = c.dirty_blocks(None, 1);
    assert_eq!(d[0].key.ino, 0);
    assert_eq!(d[0].data.len(), 2 * MIB);
    assert!(c.mark_clean(d[0].key, d[0].gen, Some(v("e2"))));
    c.insert(9, 0, b"x", v("e")).unwrap();
    assert!(is_miss(c.get(0, 0)));
    assert_eq!(c.stats().dirty_entries, 3);
    // A write that needs a bigger block fails cleanly when nothing can go.
    c.insert(10, 0, b"y", v("e")).unwrap();
    c.write(9, 0, b"z").unwrap();
    c.write(10, 0, b"z").unwrap();
    assert_eq!(c.write(10, MIB as u64, b"z"), Err(CacheError::Full));
    assert_eq!(hit(c.get(10, 0)).to_bytes(), Bytes::from_static(b"z"));
}

#[test]
fn concurrent_use() {
    let (c, _) = cache(8 * MIB, 64 * KIB, Some(Duration::from_secs(1)));
    let start = Instant::now();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut x = t + 1;
                for i in 0..3000u64 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let ino = (x >> 40) % 8;
                    let off = ((x >> 20) % 16) * 64 * KIB as u64;
                    match (x >> 10) % 8 {
                        0..=3 => match c.get(ino, off) {
                            Lookup::Hit(g) | Lookup::Stale(g, _) => {
                                let mut buf = [0u8; 16];
                                g.read(0, &mut buf);
                            }
                            Lookup::Miss => {
                                let len = ((x >> 5) % (64 * KIB as u64)) as usize;
                                match c.insert(ino, off, &vec![t as u8; len], v("e")) {
                                    Ok(()) | Err(CacheError::Dirty) | Err(CacheError::Full) => {}
                                    Err(e) => panic!("{e}"),
                                }
                            }
                        },
                        4 => {
                            let _ = c.write(ino, off + (x >> 50) % 1000, &[i as u8; 100]);
                        }
                        5 => {
                            for d in c.dirty_blocks(Some(ino), 4) {
                                c.mark_clean(d.key, d.gen, None);
                            }
                        }
                        6 => {
                            c.invalidate_range(ino, off, off + 1);
                        }
                        _ => {
                            if let Ok(p) = c.pin(ino, off) {
                                assert_eq!(p.len(), 64 * KIB);
                            }
                        }
                    }
                    assert!(c.pool().used_bytes() <= 8 * MIB);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("cache concurrent_use: 4 threads x 3000 ops in {:?}: {:?}", start.elapsed(), c.stats());
    assert_eq!(c.discard_range(0, 0, u64::MAX).dirty_kept, 0);
    for ino in 0..8 {
        c.discard_range(ino, 0, u64::MAX);
    }
    assert_eq!(c.stats().entries, 0);
    assert_eq!(c.pool().used_bytes(), 0);
}

#[test]
fn contains_sees_fresh_blocks_of_a_version_without_touching_stats() {
    let (c, clock) = cache(8 * MIB, 64 * KIB, Some(Duration::from_secs(10)));
    c.insert(3, 0, b"abc", v("e1")).unwrap();
    let before = c.stats();
    assert!(c.contains(3, 5, "e1"));
    assert!(!c.contains(3, 0, "e2"), "another version");
    assert!(!c.contains(3, 64 * KIB as u64, "e1"), "another block");
    clock.advance(Duration::from_secs(10));
    assert!(!c.contains(3, 0, "e1"), "expired: must be revalidated, not skipped by readahead");
    let after = c.stats();
    assert_eq!((before.hits, before.misses, before.stale), (after.hits, after.misses, after.stale));
}

#[test]
fn lowered_pool_limit_evicts_to_the_new_bound() {
    // The file system gives part of memory_limit to staged bytes.
    let (c, _) = cache(8 * MIB, 2 * MIB, None);
    for i in 0..4u64 {
        c.insert(1, i * 2 * MIB as u64, &vec![1u8; 2 * MIB], v("e")).unwrap();
    }
    assert_eq!(c.stats().bytes_used, 8 * MIB);
    c.pool().set_memory_limit(4 * MIB);
    assert_eq!(c.pool().memory_limit(), 4 * MIB);
    c.insert(2, 0, &vec![2u8; 2 * MIB], v("e")).unwrap();
    assert!(c.stats().bytes_used <= 4 * MIB, "{:?}", c.stats());
    // Raising it never goes past the size the pool was made with.
    c.pool().set_memory_limit(64 * MIB);
    assert_eq!(c.pool().memory_limit(), 8 * MIB);
}
