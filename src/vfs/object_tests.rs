//! ObjectFs against the memory and fs services with a call recorder on the
//! back-end: durability order with write-back, the periodic flusher,
//! back-pressure on staged bytes, readahead, the listing cache.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ObjectFs, ObjectFsOptions};
use crate::backend::{Backend, PosixMeta};
use crate::cache::{BlockCache, CacheConfig, Pool};
use crate::config::{BackendSettings, StorageSettings};
use crate::fuse::abi::FUSE_ROOT_ID;
use crate::fuse::{Ctx, Filesystem};

const MIB: usize = 1 << 20;

type Log = Arc<Mutex<Vec<String>>>;

fn ctx() -> Ctx {
    Ctx { unique: 1, uid: 0, gid: 0, pid: 1 }
}

/// A back-end of `service` whose completed calls are appended to the log
/// as "op path".
fn backend(service: &str, root: Option<&std::path::Path>, latency: Duration) -> (Backend, Log) {
    let mut options = BTreeMap::new();
    if let Some(r) = root {
        options.insert("root".to_string(), r.to_str().unwrap().to_string());
    }
    let storage = StorageSettings { service: service.to_string(), options };
    let settings = BackendSettings { inject_latency: latency, ..BackendSettings::default() };
    let b = Backend::build(&storage, &settings).expect("backend");
    let log: Log = Arc::default();
    let l = log.clone();
    assert!(b.record_calls(Arc::new(move |op, path| l.lock().unwrap().push(format!("{op} {path}")))));
    (b, log)
}

fn count(log: &Log, prefix: &str) -> usize {
    log.lock().unwrap().iter().filter(|e| e.starts_with(prefix)).count()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(seed as u32 % 31) as u8 ^ seed).collect()
}

async fn create(fs: &ObjectFs, name: &str) -> (u64, u64) {
    let (e, fh, _) =
        fs.create(&ctx(), FUSE_ROOT_ID, name.as_bytes(), 0o644, libc::O_RDWR as u32, 0).await.expect("create");
    (e.nodeid, fh)
}

async fn write_all(fs: &ObjectFs, ino: u64, fh: u64, data: &[u8], chunk: usize) {
    for (i, c) in data.chunks(chunk).enumerate() {
        let n = fs.write(&ctx(), ino, fh, (i * chunk) as u64, c, 0).await.expect("write");
        assert_eq!(n as usize, c.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_returns_only_after_the_upload_with_write_back() {
    // Every back-end call takes 150 ms: an FSYNC that did not wait for the
    // upload would return before the recorder sees it.
    let (b, log) = backend("memory", None, Duration::from_millis(150));
    let opts = ObjectFsOptions { write_back: true, flush_interval: Duration::from_secs(3600), ..Default::default() };
    let fs = ObjectFs::new(b.clone(), opts);
    let (ino, fh) = create(&fs, "f").await;
    let data = pattern(300_000, 1);
    write_all(&fs, ino, fh, &data, 64 * 1024).await;
    assert_eq!(count(&log, "write f"), 0, "nothing uploaded before FSYNC");
    fs.fsync(&ctx(), ino, fh, false).await.expect("fsync");
    log.lock().unwrap().push("FSYNC returned".into());
    let l = log.lock().unwrap().clone();
    let put = l.iter().position(|e| e == "write f").expect("uploaded");
    let ret = l.iter().position(|e| e == "FSYNC returned").unwrap();
    assert!(put < ret, "FSYNC returned before the data reached the back-end: {l:?}");
    assert_eq!(b.read("f", 0, 1 << 20).await.unwrap(), Bytes::from(data.clone()));
    // A second change, FDATASYNC: same order.
    fs.write(&ctx(), ino, fh, 10, b"CHANGED", 0).await.unwrap();
    fs.fsync(&ctx(), ino, fh, true).await.expect("fdatasync");
    log.lock().unwrap().push("FDATASYNC returned".into());
    let l = log.lock().unwrap().clone();
    let puts: Vec<_> = l.iter().enumerate().filter(|(_, e)| *e == "write f").map(|(i, _)| i).collect();
    let ret = l.iter().position(|e| e == "FDATASYNC returned").unwrap();
    assert_eq!(puts.len(), 2, "{l:?}");
    assert!(puts[1] < ret, "{l:?}");
    assert_eq!(&b.read("f", 10, 7).await.unwrap()[..], b"CHANGED");
    fs.release(&ctx(), ino, fh, 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_flusher_uploads_dirty_files_with_write_back() {
    for write_back in [true, false] {
        let (b, log) = backend("memory", None, Duration::ZERO);
        let opts = ObjectFsOptions { write_back, flush_interval: Duration::from_millis(100), ..Default::default() };
        let fs = ObjectFs::new(b.clone(), opts);
        let (ino, fh) = create(&fs, "g").await;
        let data = pattern(100_000, 2);
        write_all(&fs, ino, fh, &data, 32 * 1024).await;
        let t0 = Instant::now();
        while count(&log, "write g") == 0 && t0.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if write_back {
            assert_eq!(count(&log, "write g"), 1, "the flusher uploads without FLUSH/FSYNC");
            assert_eq!(fs.background_uploads(), 1);
            assert_eq!(b.read("g", 0, 1 << 20).await.unwrap(), Bytes::from(data.clone()));
            // Clean now: the flusher does not upload it again, RELEASE neither.
            tokio::time::sleep(Duration::from_millis(300)).await;
            fs.release(&ctx(), ino, fh, 0).await.unwrap();
            assert_eq!(count(&log, "write g"), 1);
        } else {
            assert_eq!(count(&log, "write g"), 0, "without write-back only the durability points upload");
            assert_eq!(fs.background_uploads(), 0);
            fs.release(&ctx(), ino, fh, 0).await.unwrap();
            assert_eq!(count(&log, "write g"), 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_failure_keeps_data_dirty_until_fsync_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (b, log) = backend("fs", Some(dir.path()), Duration::ZERO);
    let opts = ObjectFsOptions { write_back: true, flush_interval: Duration::from_millis(50), ..Default::default() };
    let fs = ObjectFs::new(b.clone(), opts);
    let (ino, fh) = create(&fs, "h").await;
    // A directory takes the object's name behind our back: every upload of
    // `h` fails while it is there.
    std::fs::create_dir(dir.path().join("h")).unwrap();
    fs.write(&ctx(), ino, fh, 0, b"precious", 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(count(&log, "write h"), 0);
    assert_eq!(fs.background_uploads(), 0);
    assert!(fs.fsync(&ctx(), ino, fh, false).await.is_err(), "FSYNC reports the failing upload");
    assert!(fs.flush(&ctx(), ino, fh).await.is_err(), "FLUSH too");
    std::fs::remove_dir(dir.path().join("h")).unwrap();
    fs.fsync(&ctx(), ino, fh, false).await.expect("the data stayed dirty and goes out now");
    assert_eq!(std::fs::read(dir.path().join("h")).unwrap(), b"precious");
    fs.release(&ctx(), ino, fh, 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_bytes_stay_under_the_dirty_limit() {
    // Random writes (no streaming) to several files: writers wait for
    // uploads of staged files instead of growing past the limit.
    let (b, log) = backend("memory", None, Duration::from_millis(5));
    let limit = 4 * MIB;
    let opts = ObjectFsOptions { dirty_limit: Some(limit), part_size: MIB, ..Default::default() };
    let fs = ObjectFs::new(b.clone(), opts);
    let mut files = Vec::new();
    let mut want = Vec::new();
    for i in 0..4 {
        let name = format!("r{i}");
        let (ino, fh) = create(&fs, &name).await;
        // Written backwards: never sequential.
        let data = pattern(3 * MIB / 2, i as u8 + 10);
        for k in (0..6).rev() {
            let off = k * 256 * 1024;
            fs.write(&ctx(), ino, fh, off as u64, &data[off..off + 256 * 1024], 0).await.unwrap();
            let (used, lim) = fs.staged_bytes();
            assert_eq!(lim, limit as u64);
            assert!(used <= lim + 256 * 1024, "staged {used} over the limit {lim}");
        }
        files.push((ino, fh, name));
        want.push(data);
    }
    // 6 MiB written under a 4 MiB limit: files went out before RELEASE.
    let early = count(&log, "write r") + count(&log, "close r");
    assert!(early >= 1, "back-pressure uploaded early: {:?}", log.lock().unwrap());
    for ((ino, fh, name), data) in files.iter().zip(&want) {
        fs.release(&ctx(), *ino, *fh, 0).await.unwrap();
        assert_eq!(b.read(name, 0, 8 << 20).await.unwrap(), Bytes::from(data.clone()), "{name}");
    }
    assert_eq!(fs.staged_bytes().0, 0);
}

/// Once a stream has started, every complete part goes out as soon as it is
/// staged (none is kept back for the durability point to send), while a file
/// under two parts is still one PUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_sends_each_complete_part_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (b, log) = backend("fs", Some(dir.path()), Duration::ZERO);
    let opts = ObjectFsOptions { dirty_limit: Some(64 * MIB), part_size: MIB, ..Default::default() };
    let fs = ObjectFs::new(b.clone(), opts);
    let (ino, fh) = create(&fs, "small").await;
    let small = pattern(MIB + MIB / 2, 5);
    write_all(&fs, ino, fh, &small, MIB / 2).await;
    assert_eq!(fs.streamed_bytes(), 0, "under two parts: nothing streamed");
    fs.fsync(&ctx(), ino, fh, false).await.unwrap();
    assert_eq!(fs.streamed_bytes(), 0, "uploaded whole at fsync");
    fs.release(&ctx(), ino, fh, 0).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("small")).unwrap(), small);

    let (ino, fh) = create(&fs, "big").await;
    let data = pattern(5 * MIB, 6);
    write_all(&fs, ino, fh, &data[..3 * MIB], MIB).await;
    assert_eq!(fs.streamed_bytes(), 3 * MIB as u64, "every complete part sent while writing");
    for (i, c) in data[3 * MIB..].chunks(MIB / 2).enumerate() {
        fs.write(&ctx(), ino, fh, (3 * MIB + i * MIB / 2) as u64, c, 0).await.unwrap();
    }
    assert_eq!(fs.streamed_bytes(), 5 * MIB as u64);
    fs.fsync(&ctx(), ino, fh, false).await.unwrap();
    assert_eq!(std::fs::read(dir.path().join("big")).unwrap(), data, "durable at fsync, whole");
    assert_eq!(count(&log, "close big"), 1);
    fs.release(&ctx(), ino, fh, 0).await.unwrap();
    assert_eq!(count(&log, "close big"), 1, "nothing left for RELEASE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_file_releases_sent_parts_and_stays_correct() {
    let dir = tempfile::tempdir().unwrap();
    let (b, log) = backend("fs", Some(dir.path()), Duration::ZERO);
    let limit = 4 * MIB;
    let opts = ObjectFsOptions { dirty_limit: Some(limit), part_size: MIB, ..Default::default() };
    let fs = ObjectFs::new(b.clone(), opts);
    let (ino, fh) = create(&fs, "s").await;
    let data = pattern(40 * MIB, 3);
    let mut max = 0;
    for (i, c) in data.chunks(256 * 1024).enumerate() {
        fs.write(&ctx(), ino, fh, (i * 256 * 1024) as u64, c, 0).await.unwrap();
        max = max.max(fs.staged_bytes().0);
    }
    assert!(max <= (limit + 3 * MIB) as u64, "staged bytes peaked at {max}");
    assert!(fs.streamed_bytes() >= 30 * MIB as u64, "streamed {}", fs.streamed_bytes());
    assert!(count(&log, "part s") >= 30);
    // Reading bytes whose memory was given back completes the upload and
    // reads the object.
    let got = fs.read(&ctx(), ino, fh, 0, 4096).await.unwrap();
    assert_eq!(got, data[..4096]);
    assert_eq!(count(&log, "close s"), 1);
    let got = fs.read(&ctx(), ino, fh, (20 * MIB) as u64, 4096).await.unwrap();
    assert_eq!(got, data[20 * MIB..20 * MIB + 4096]);
    fs.fsync(&ctx(), ino, fh, false).await.unwrap();
    fs.release(&ctx(), ino, fh, 0).await.unwrap();
    let on_disk = std::fs::read(dir.path().join("s")).unwrap();
    assert!(on_disk == data, "content differs");
    assert_eq!(fs.staged_bytes().0, 0);

    // Same, then a write in the middle: the released parts are settled
    // (upload completed), the object reloaded and changed.
    let (ino, fh) = create(&fs, "t").await;
    let mut data = pattern(24 * MIB, 4);
    write_all(&fs, ino, fh, &data, MIB).await;
    fs.write(&ctx(), ino, fh, 5, b"MIDDLE", 0).await.unwrap();
    data[5..11].copy_from_slice(b"MIDDLE");
    fs.release(&ctx(), ino, fh, 0).await.unwrap();
    assert!(std::fs::read(dir.path().join("t")).unwrap() == data, "content differs after a middle write");
}

/// `ls -l`: READDIR, then LOOKUP + GETATTR of every name; returns how many.
async fn ls(fs: &ObjectFs, d: u64) -> usize {
    let (dh, _) = fs.opendir(&ctx(), d, 0).await.unwrap();
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let es = fs.readdir(&ctx(), d, dh, off, 64 * 1024, false).await.unwrap();
        let Some(last) = es.last() else { break };
        off = last.offset;
        names.extend(es.into_iter().map(|e| e.name).filter(|n| n != b"." && n != b".."));
    }
    fs.releasedir(&ctx(), d, dh).await.unwrap();
    for n in &names {
        let e = fs.lookup(&ctx(), d, n).await.unwrap();
        fs.getattr(&ctx(), e.nodeid, None).await.unwrap();
    }
    names.len()
}

fn cached_fs(b: Backend, readahead_max: usize) -> ObjectFs {
    let pool = Pool::with_limit(128 * MIB).unwrap();
    let cache = BlockCache::new(pool, CacheConfig::default()).unwrap();
    let opts = ObjectFsOptions { readahead_max, ..Default::default() };
    ObjectFs::new(b, opts).with_cache(cache)
}

async fn open_ro(fs: &ObjectFs, name: &str) -> (u64, u64) {
    let e = fs.lookup(&ctx(), FUSE_ROOT_ID, name.as_bytes()).await.unwrap();
    let (fh, _) = fs.open(&ctx(), e.nodeid, libc::O_RDONLY as u32).await.unwrap();
    (e.nodeid, fh)
}

async fn settle_reads(log: &Log) -> usize {
    // Wait until background fetches stop.
    let mut last = usize::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let n = count(log, "read ");
        if n == last {
            return n;
        }
        last = n;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readahead_follows_sequential_reads_and_not_random_ones() {
    let (b, log) = backend("memory", None, Duration::from_millis(2));
    let data = pattern(48 * MIB, 5);
    b.write("seq", Bytes::from(data.clone()), &PosixMeta::default()).await.unwrap();
    b.write("rnd", Bytes::from(data.clone()), &PosixMeta::default()).await.unwrap();
    let fs = cached_fs(b, 16 * MIB);

    // Sequential: 128 KiB reads over the first 6 MiB (3 blocks).
    let (ino, fh) = open_ro(&fs, "seq").await;
    for k in 0..48u64 {
        let got = fs.read(&ctx(), ino, fh, k * 128 * 1024, 128 * 1024).await.unwrap();
        assert!(got == data[(k * 128 * 1024) as usize..((k + 1) * 128 * 1024) as usize]);
    }
    let seq_reads = settle_reads(&log).await;
    let fetched = count(&log, "read seq");
    assert!(fetched > 3, "readahead fetched beyond the 3 blocks read: {fetched}");
    assert!(fetched <= 3 + 8 + 1, "not past the window (16 MiB = 8 blocks): {fetched}");
    // The next blocks come from the cache: no new GET for the next 4 MiB.
    for k in 48..80u64 {
        let got = fs.read(&ctx(), ino, fh, k * 128 * 1024, 128 * 1024).await.unwrap();
        assert!(got == data[(k * 128 * 1024) as usize..((k + 1) * 128 * 1024) as usize]);
    }
    assert!(count(&log, "read seq") >= fetched);
    fs.release(&ctx(), ino, fh, 0).await.unwrap();
    let seq_total = settle_reads(&log).await;
    eprintln!("readahead: {fetched} GETs after 6 MiB sequential, {seq_total} reads total (before {seq_reads})");

    // Random: 4 KiB reads in distinct, far-apart blocks: one GET per block.
    let (ino, fh) = open_ro(&fs, "rnd").await;
    let blocks = [17u64, 3, 11, 20, 7, 1, 14];
    for (i, blk) in blocks.iter().enumerate() {
        let off = blk * 2 * MIB as u64 + 4096 * i as u64;
        let got = fs.read(&ctx(), ino, fh, off, 4096).await.unwrap();
        assert!(got == data[off as usize..off as usize + 4096]);
    }
    settle_reads(&log).await;
    assert_eq!(count(&log, "read rnd"), blocks.len(), "random reads triggered readahead");
    fs.release(&ctx(), ino, fh, 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_cache_serves_ls_l_without_per_entry_lookups() {
    let (b, log) = backend("memory", None, Duration::ZERO);
    b.create_dir("d").await.unwrap();
    for i in 0..300 {
        b.write(&format!("d/f{i:04}"), Bytes::from(vec![b'x'; i]), &PosixMeta::default()).await.unwrap();
    }
    let opts = ObjectFsOptions { dir_cache_ttl: Duration::from_secs(60), ..Default::default() };
    let fs = ObjectFs::new(b.clone(), opts);
    let d = fs.lookup(&ctx(), FUSE_ROOT_ID, b"d").await.unwrap().nodeid;
    log.lock().unwrap().clear();

    assert_eq!(ls(&fs, d).await, 300);
    assert_eq!(count(&log, "list "), 1, "{:?}", &log.lock().unwrap()[..3]);
    assert_eq!(count(&log, "lookup "), 0, "no HEAD per entry");
    assert_eq!(ls(&fs, d).await, 300);
    assert_eq!(count(&log, "list "), 1, "listing reused within its TTL");
    // A name not in the fresh listing is ENOENT without a back-end call.
    assert!(fs.lookup(&ctx(), d, b"nope").await.is_err());
    assert_eq!(count(&log, "lookup "), 0);

    // A local create invalidates the parent's listing.
    let (e, fh, _) = fs.create(&ctx(), d, b"new", 0o644, libc::O_WRONLY as u32, 0).await.unwrap();
    fs.release(&ctx(), e.nodeid, fh, 0).await.unwrap();
    assert_eq!(ls(&fs, d).await, 301);
    assert_eq!(count(&log, "list "), 2);
    // So does an unlink.
    fs.unlink(&ctx(), d, b"f0000").await.unwrap();
    assert_eq!(ls(&fs, d).await, 300);
    assert_eq!(count(&log, "list "), 3);

    // Without the cache, every entry costs a back-end lookup.
    let (b2, log2) = backend("memory", None, Duration::ZERO);
    b2.create_dir("d").await.unwrap();
    for i in 0..50 {
        b2.write(&format!("d/f{i}"), Bytes::from_static(b"x"), &PosixMeta::default()).await.unwrap();
    }
    let fs2 = ObjectFs::new(b2, ObjectFsOptions::default());
    let d2 = fs2.lookup(&ctx(), FUSE_ROOT_ID, b"d").await.unwrap().nodeid;
    let (dh, _) = fs2.opendir(&ctx(), d2, 0).await.unwrap();
    let es = fs2.readdir(&ctx(), d2, dh, 0, 64 * 1024, false).await.unwrap();
    log2.lock().unwrap().clear();
    for e in es.iter().filter(|e| e.name != b"." && e.name != b"..") {
        fs2.lookup(&ctx(), d2, &e.name).await.unwrap();
    }
    assert_eq!(count(&log2, "lookup "), 50);
}

/// A back-end on the test S3 server under a fresh root, when
/// `OVFS_TEST_S3_ENDPOINT` is set.
fn s3_backend() -> Option<Backend> {
    let Ok(endpoint) = std::env::var("OVFS_TEST_S3_ENDPOINT") else {
        eprintln!("OVFS_TEST_S3_ENDPOINT not set; skipping");
        return None;
    };
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let mut options = BTreeMap::new();
    for (k, v) in [
        ("bucket", var("OVFS_TEST_S3_BUCKET", "test")),
        ("region", "us-east-1".to_string()),
        ("endpoint", endpoint),
        ("access_key_id", var("OVFS_TEST_S3_ACCESS_KEY_ID", "")),
        ("secret_access_key", var("OVFS_TEST_S3_SECRET_ACCESS_KEY", "")),
        ("root", format!("/ovfs-cache-test-{nanos}/")),
    ] {
        options.insert(k.to_string(), v);
    }
    Some(Backend::build(&StorageSettings { service: "s3".into(), options }, &BackendSettings::default()).unwrap())
}

/// S3 listings carry no POSIX metadata: with `listing_attrs` and the
/// listing cache, `ls -l` needs one listing and no HEAD per entry; without
/// them every entry costs a lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_ls_l_from_one_listing() {
    let Some(b) = s3_backend() else { return };
    b.create_dir("d").await.unwrap();
    for i in 0..40 {
        b.write(&format!("d/f{i:02}"), Bytes::from(vec![b'y'; i]), &PosixMeta::default()).await.unwrap();
    }
    for listing_attrs in [true, false] {
        let log: Log = Arc::default();
        let l = log.clone();
        let b = b.clone();
        let opts = ObjectFsOptions { dir_cache_ttl: Duration::from_secs(60), listing_attrs, ..Default::default() };
        let fs = ObjectFs::new(b.clone(), opts);
        let d = fs.lookup(&ctx(), FUSE_ROOT_ID, b"d").await.unwrap().nodeid;
        // A back-end takes one recorder: it counts the first round.
        if listing_attrs {
            assert!(b.record_calls(Arc::new(move |op, path| l.lock().unwrap().push(format!("{op} {path}")))));
            assert_eq!(ls(&fs, d).await, 40);
            assert_eq!(count(&log, "list d"), 1);
            assert_eq!(count(&log, "lookup "), 0, "no HEAD per entry");
            let e = fs.lookup(&ctx(), d, b"f07").await.unwrap();
            assert_eq!(e.attr.size, 7, "size from the listing");
        } else {
            // Without listing_attrs the S3 listing is not trusted for attributes.
            assert!(fs.listed("d/f07").is_none());
        }
    }
}

/// Real S3 (SeaweedFS), only when `OVFS_TEST_S3_ENDPOINT` is set (`make test`
/// sets it): a 64 MiB file streamed under a 16 MiB dirty limit (real
/// multipart, parts released as they go), durable at FSYNC, then read back
/// cold through the cache with readahead. Prints the read time against one
/// direct GET of the object (information, not a check: see docs/PERFORMANCE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_streamed_write_and_readahead() {
    let Some(b) = s3_backend() else { return };
    let log: Log = Arc::default();
    let l = log.clone();
    b.record_calls(Arc::new(move |op, path| l.lock().unwrap().push(format!("{op} {path}"))));
    let pool = Pool::with_limit(64 * MIB).unwrap();
    let cache = BlockCache::new(pool, CacheConfig::default()).unwrap();
    let opts = ObjectFsOptions { dirty_limit: Some(16 * MIB), part_size: 8 * MIB, ..Default::default() };
    let fs = ObjectFs::new(b.clone(), opts).with_cache(cache);

    let data = pattern(64 * MIB, 9);
    let (ino, fh) = create(&fs, "big").await;
    let t0 = Instant::now();
    let mut peak = 0;
    for (i, c) in data.chunks(MIB).enumerate() {
        fs.write(&ctx(), ino, fh, (i * MIB) as u64, c, 0).await.unwrap();
        peak = peak.max(fs.staged_bytes().0);
    }
    fs.fsync(&ctx(), ino, fh, false).await.unwrap();
    let write_time = t0.elapsed();
    log.lock().unwrap().push("FSYNC returned".into());
    fs.release(&ctx(), ino, fh, 0).await.unwrap();
    let l = log.lock().unwrap().clone();
    let close = l.iter().position(|e| e == "close big").expect("multipart completed");
    assert!(close < l.iter().position(|e| e == "FSYNC returned").unwrap());
    assert!(count(&log, "part big") >= 7, "streamed in parts");
    assert!(peak <= (16 + 2) * MIB as u64, "staged bytes peaked at {peak}");

    let t1 = Instant::now();
    let direct = b.read("big", 0, data.len() as u64).await.unwrap();
    let direct_time = t1.elapsed();
    assert!(direct == data, "object differs");
    log.lock().unwrap().clear();
    let (ino, fh) = open_ro(&fs, "big").await;
    let t2 = Instant::now();
    let mut off = 0u64;
    while (off as usize) < data.len() {
        let got = fs.read(&ctx(), ino, fh, off, 1 << 20).await.unwrap();
        assert!(got[..] == data[off as usize..off as usize + got.len()], "read at {off}");
        off += got.len() as u64;
    }
    let read_time = t2.elapsed();
    fs.release(&ctx(), ino, fh, 0).await.unwrap();
    assert_eq!(count(&log, "read big"), 32, "each 2 MiB block fetched once");
    eprintln!(
        "s3 64 MiB: streamed write+fsync {:.2} s (staged peak {} MiB); direct GET {:.2} s, \
         cold sequential read with readahead {:.2} s ({:.0}% of direct)",
        write_time.as_secs_f64(),
        peak >> 20,
        direct_time.as_secs_f64(),
        read_time.as_secs_f64(),
        100.0 * direct_time.as_secs_f64() / read_time.as_secs_f64()
    );
}

fn exact(log: &Log, entry: &str) -> usize {
    log.lock().unwrap().iter().filter(|e| *e == entry).count()
}

/// The small-file sequence the kernel sends for open(O_CREAT|O_EXCL) +
/// write + close: LOOKUP (miss), CREATE, WRITE, FLUSH, RELEASE, then a
/// GETATTR of the directory (its attributes were invalidated by the
/// create). One back-end lookup and one PUT per file: the CREATE trusts the
/// LOOKUP's fresh miss (negative entries allowed for a second), the
/// directory's attributes come from the memo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_file_create_costs_one_lookup_and_one_put() {
    let (b, log) = backend("memory", None, Duration::ZERO);
    b.create_dir("d").await.unwrap();
    let opts = ObjectFsOptions {
        dir_cache_ttl: Duration::from_secs(60),
        negative_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let fs = ObjectFs::new(b.clone(), opts);
    let d = fs.lookup(&ctx(), FUSE_ROOT_ID, b"d").await.unwrap().nodeid;
    // Back-end calls by operation, misses included (the recorder logs only
    // successful calls).
    let calls = |op: &str| b.stats().snapshot().iter().find(|(o, _, _)| *o == op).map(|(_, c, _)| *c).unwrap();
    let (stat0, write0) = (calls("stat"), calls("write"));
    log.lock().unwrap().clear();
    for i in 0..5 {
        let name = format!("s{i}");
        assert!(misses(&fs, d, name.as_bytes()).await);
        let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32;
        let (e, fh, _) = fs.create(&ctx(), d, name.as_bytes(), 0o644, flags, 0).await.expect("create");
        fs.write(&ctx(), e.nodeid, fh, 0, &[b'z'; 4096], 0).await.unwrap();
        fs.flush(&ctx(), e.nodeid, fh).await.unwrap();
        fs.release(&ctx(), e.nodeid, fh, 0).await.unwrap();
        let (attr, _) = fs.getattr(&ctx(), d, None).await.unwrap();
        assert_eq!(attr.mode & libc::S_IFMT, libc::S_IFDIR);
    }
    let l = log.lock().unwrap().clone();
    assert_eq!(calls("stat") - stat0, 5, "one lookup per file (the LOOKUP's miss): {l:?}");
    assert_eq!(calls("write") - write0, 5, "one PUT per file: {l:?}");
    assert_eq!(exact(&log, "lookup d"), 0, "directory attributes from the memo: {l:?}");
    for i in 0..5 {
        assert_eq!(b.read(&format!("d/s{i}"), 0, 8192).await.unwrap().len(), 4096);
    }

    // An unlink in the directory drops its attributes (an implied
    // directory can vanish with its last key): the next GETATTR asks.
    fs.unlink(&ctx(), d, b"s0").await.unwrap();
    fs.getattr(&ctx(), d, None).await.unwrap();
    assert_eq!(exact(&log, "lookup d"), 1);
}

/// A LOOKUP that finds nothing: ENOENT, or a negative entry (node id 0)
/// when negative entries are configured.
async fn misses(fs: &ObjectFs, parent: u64, name: &[u8]) -> bool {
    match fs.lookup(&ctx(), parent, name).await {
        Ok(e) => e.nodeid == 0,
        Err(e) => e == crate::fuse::Errno::ENOENT,
    }
}

/// The CREATE skips its check only right after the back-end missed that very
/// path: not after a local change of it, not once the memo is used up or
/// older than `negative_timeout`, never when that is 0 (the default), and an
/// object created meanwhile by someone else is then found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_checks_again_unless_the_miss_is_fresh() {
    let excl = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32;
    // Default: no memo at all; another client's key created right after the
    // miss is seen.
    let (b0, _) = backend("memory", None, Duration::ZERO);
    let fs0 = ObjectFs::new(b0.clone(), ObjectFsOptions::default());
    assert!(misses(&fs0, FUSE_ROOT_ID, b"w").await);
    b0.write("w", Bytes::from_static(b"theirs"), &PosixMeta::default()).await.unwrap();
    assert_eq!(fs0.create(&ctx(), FUSE_ROOT_ID, b"w", 0o644, excl, 0).await.err(), Some(crate::fuse::Errno::EEXIST));

    let miss = Duration::from_secs(1);
    let (b, log) = backend("memory", None, Duration::ZERO);
    let fs = ObjectFs::new(b.clone(), ObjectFsOptions { negative_timeout: miss, ..Default::default() });
    let root = FUSE_ROOT_ID;

    // A miss, then a local mkdir of the name: the CREATE checks (EISDIR).
    assert!(misses(&fs, root, b"x").await);
    fs.mkdir(&ctx(), root, b"x", 0o755, 0).await.unwrap();
    assert_eq!(fs.create(&ctx(), root, b"x", 0o644, excl, 0).await.err(), Some(crate::fuse::Errno::EISDIR));

    // A stale miss: someone else created the key since; O_EXCL sees it.
    assert!(misses(&fs, root, b"y").await);
    b.write("y", Bytes::from_static(b"theirs"), &PosixMeta::default()).await.unwrap();
    std::thread::sleep(miss + Duration::from_millis(50));
    assert_eq!(fs.create(&ctx(), root, b"y", 0o644, excl, 0).await.err(), Some(crate::fuse::Errno::EEXIST));
    assert_eq!(exact(&log, "lookup y"), 1, "the stale miss was checked again");

    // A fresh miss is used once: a second CREATE of the name checks again.
    assert!(misses(&fs, root, b"z").await);
    let (e, fh, _) = fs.create(&ctx(), root, b"z", 0o644, excl, 0).await.unwrap();
    fs.release(&ctx(), e.nodeid, fh, 0).await.unwrap();
    assert_eq!(fs.create(&ctx(), root, b"z", 0o644, excl, 0).await.err(), Some(crate::fuse::Errno::EEXIST));
}

/// On a store with real directories a new file changes its directory's
/// mtime: the directory's attributes are not reused after a create there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_attributes_follow_creates_on_native_directories() {
    let dir = tempfile::tempdir().unwrap();
    let (b, log) = backend("fs", Some(dir.path()), Duration::ZERO);
    b.create_dir("d").await.unwrap();
    let opts = ObjectFsOptions { dir_cache_ttl: Duration::from_secs(60), ..Default::default() };
    let fs = ObjectFs::new(b.clone(), opts);
    let d = fs.lookup(&ctx(), FUSE_ROOT_ID, b"d").await.unwrap().nodeid;
    fs.getattr(&ctx(), d, None).await.unwrap();
    let before = exact(&log, "lookup d");
    let (e, fh, _) = fs.create(&ctx(), d, b"f", 0o644, libc::O_WRONLY as u32, 0).await.unwrap();
    fs.release(&ctx(), e.nodeid, fh, 0).await.unwrap();
    fs.getattr(&ctx(), d, None).await.unwrap();
    assert_eq!(exact(&log, "lookup d"), before + 1, "{:?}", log.lock().unwrap());
}

/// Back-end calls of `op` so far, misses included (the recorder logs only
/// successful calls).
fn calls(b: &Backend, op: &str) -> u64 {
    b.stats().snapshot().iter().find(|(o, _, _)| *o == op).map(|(_, c, _)| *c).unwrap_or(0)
}

fn known_fs(b: Backend, negative_timeout: Duration) -> ObjectFs {
    let opts = ObjectFsOptions { dir_cache_ttl: Duration::from_secs(60), negative_timeout, ..Default::default() };
    ObjectFs::new(b, opts)
}

async fn put_small(fs: &ObjectFs, parent: u64, name: &str) {
    let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32;
    let (e, fh, _) = fs.create(&ctx(), parent, name.as_bytes(), 0o644, flags, 0).await.expect("create");
    fs.write(&ctx(), e.nodeid, fh, 0, &[b'k'; 4096], 0).await.unwrap();
    fs.flush(&ctx(), e.nodeid, fh).await.unwrap();
    fs.release(&ctx(), e.nodeid, fh, 0).await.unwrap();
    fs.forget(e.nodeid, 1);
}

/// In a directory this daemon created, the small-file sequence (LOOKUP
/// miss, CREATE, WRITE, FLUSH, RELEASE, GETATTR of the directory) costs one
/// PUT and no lookup: the directory's contents are known. Names created
/// here are then asked about (found, or not found after an unlink).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_directory_answers_misses_without_lookups() {
    let (b, _) = backend("memory", None, Duration::ZERO);
    let fs = known_fs(b.clone(), Duration::from_secs(5));
    let d = fs.mkdir(&ctx(), FUSE_ROOT_ID, b"d", 0o755, 0).await.unwrap().nodeid;
    // (The directory's own attributes: asked once, then reused.)
    fs.getattr(&ctx(), d, None).await.unwrap();
    let (stat0, write0, list0) = (calls(&b, "stat"), calls(&b, "write"), calls(&b, "list"));
    for i in 0..20 {
        let name = format!("s{i}");
        let e = fs.lookup(&ctx(), d, name.as_bytes()).await.expect("negative entry");
        assert_eq!(e.nodeid, 0);
        assert!(e.entry_valid > Duration::ZERO && e.entry_valid <= Duration::from_secs(5));
        put_small(&fs, d, &name).await;
        fs.getattr(&ctx(), d, None).await.unwrap();
    }
    assert_eq!(calls(&b, "stat") - stat0, 0, "no lookups");
    assert_eq!(calls(&b, "list") - list0, 0, "no listings");
    assert_eq!(calls(&b, "write") - write0, 20, "one PUT per file");
    for i in 0..20 {
        assert_eq!(b.read(&format!("d/s{i}"), 0, 8192).await.unwrap().len(), 4096);
    }
    // Names created here are asked about: found, and not found once gone.
    let e = fs.lookup(&ctx(), d, b"s3").await.unwrap();
    assert_ne!(e.nodeid, 0);
    fs.forget(e.nodeid, 1);
    fs.unlink(&ctx(), d, b"s3").await.unwrap();
    let stat1 = calls(&b, "stat");
    assert!(misses(&fs, d, b"s3").await);
    assert_eq!(calls(&b, "stat") - stat1, 1, "an unlinked name is asked about");
    let flags = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32;
    assert_eq!(fs.create(&ctx(), d, b"s4", 0o644, flags, 0).await.err(), Some(crate::fuse::Errno::EEXIST));
}

/// Another client's objects and directories: not seen from the knowledge
/// while it is younger than `negative_timeout` (the accepted staleness),
/// seen once it is older; a directory created elsewhere is never known.
/// Without `negative_timeout` (the default) nothing is known at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_directory_sees_other_writers_after_negative_timeout() {
    let neg = Duration::from_millis(400);
    let excl = (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32;
    let none = PosixMeta::default();

    // Default configuration: an object put right after the mkdir is seen.
    let (b0, _) = backend("memory", None, Duration::ZERO);
    let fs0 =
        ObjectFs::new(b0.clone(), ObjectFsOptions { dir_cache_ttl: Duration::from_secs(60), ..Default::default() });
    let d0 = fs0.mkdir(&ctx(), FUSE_ROOT_ID, b"d", 0o755, 0).await.unwrap().nodeid;
    b0.write("d/theirs", Bytes::from_static(b"theirs"), &none).await.unwrap();
    assert!(!misses(&fs0, d0, b"theirs").await);
    assert_eq!(fs0.create(&ctx(), d0, b"theirs", 0o644, excl, 0).await.err(), Some(crate::fuse::Errno::EEXIST));

    let (b, _) = backend("memory", None, Duration::ZERO);
    let fs = known_fs(b.clone(), neg);
    // A directory created here, then an object put in it by someone else:
    // within `negative_timeout` of the mkdir it is not seen (and the kernel
    // may keep the miss only for the rest of that time) ...
    let d = fs.mkdir(&ctx(), FUSE_ROOT_ID, b"d", 0o755, 0).await.unwrap().nodeid;
    b.write("d/theirs", Bytes::from_static(b"theirs"), &none).await.unwrap();
    let e = fs.lookup(&ctx(), d, b"theirs").await.unwrap();
    assert_eq!(e.nodeid, 0);
    assert!(e.entry_valid <= neg);
    // ... after it, it is: LOOKUP finds it and O_EXCL fails.
    std::thread::sleep(neg + Duration::from_millis(50));
    b.write("d/later", Bytes::from_static(b"theirs"), &none).await.unwrap();
    assert_eq!(fs.create(&ctx(), d, b"later", 0o644, excl, 0).await.err(), Some(crate::fuse::Errno::EEXIST));
    assert_eq!(b.read("d/later", 0, 100).await.unwrap(), Bytes::from_static(b"theirs"));
    let e = fs.lookup(&ctx(), d, b"theirs").await.unwrap();
    assert_ne!(e.nodeid, 0);
    fs.forget(e.nodeid, 1);

    // A full listing (READDIR) makes the root known: an object and a
    // directory put after it are not seen until the listing is older than
    // `negative_timeout`. (A file created here drops the cached listing
    // itself, which is reused for `dir_cache_ttl`; the knowledge stays.)
    assert_eq!(ls(&fs, FUSE_ROOT_ID).await, 1);
    put_small(&fs, FUSE_ROOT_ID, "mine").await;
    b.write("late", Bytes::from_static(b"theirs"), &none).await.unwrap();
    b.create_dir("ext").await.unwrap();
    assert!(misses(&fs, FUSE_ROOT_ID, b"late").await);
    assert!(misses(&fs, FUSE_ROOT_ID, b"ext").await);
    std::thread::sleep(neg + Duration::from_millis(50));
    assert!(!misses(&fs, FUSE_ROOT_ID, b"late").await);
    let ext = fs.lookup(&ctx(), FUSE_ROOT_ID, b"ext").await.unwrap();
    assert_eq!(ext.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    // Inside the directory created elsewhere nothing is known: every miss
    // is asked, and another client's object is seen at once.
    let stat0 = calls(&b, "stat");
    assert!(misses(&fs, ext.nodeid, b"x").await);
    assert_eq!(calls(&b, "stat") - stat0, 1);
    b.write("ext/x", Bytes::from_static(b"theirs"), &none).await.unwrap();
    assert!(!misses(&fs, ext.nodeid, b"x").await);
}

/// Knowledge that ran out while it was answering misses is renewed by one
/// listing, which sees what others put meanwhile; knowledge of a directory
/// renamed over, or of one renamed away, is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_directory_is_renewed_by_one_listing_and_dropped_by_renames() {
    let neg = Duration::from_millis(300);
    let none = PosixMeta::default();
    let (b, _) = backend("memory", None, Duration::ZERO);
    let fs = known_fs(b.clone(), neg);
    let d = fs.mkdir(&ctx(), FUSE_ROOT_ID, b"d", 0o755, 0).await.unwrap().nodeid;
    for i in 0..3 {
        assert!(misses(&fs, d, format!("a{i}").as_bytes()).await);
        put_small(&fs, d, &format!("a{i}")).await;
    }
    b.write("d/theirs", Bytes::from_static(b"theirs"), &none).await.unwrap();
    std::thread::sleep(neg + Duration::from_millis(50));
    let (stat0, list0) = (calls(&b, "stat"), calls(&b, "list"));
    assert!(misses(&fs, d, b"b0").await);
    assert!(misses(&fs, d, b"b1").await);
    assert_eq!((calls(&b, "list") - list0, calls(&b, "stat") - stat0), (1, 0), "one listing renewed it");
    // The renewed knowledge has the other client's object: asked, found.
    assert!(!misses(&fs, d, b"theirs").await);

    // A directory known empty, then renamed over by one with a file: its
    // knowledge must not hide the file.
    let a = fs.mkdir(&ctx(), FUSE_ROOT_ID, b"a", 0o755, 0).await.unwrap().nodeid;
    put_small(&fs, a, "x").await;
    let c = fs.mkdir(&ctx(), FUSE_ROOT_ID, b"c", 0o755, 0).await.unwrap().nodeid;
    assert!(misses(&fs, c, b"x").await);
    fs.rename(&ctx(), FUSE_ROOT_ID, b"a", FUSE_ROOT_ID, b"c", 0).await.unwrap();
    let c = fs.lookup(&ctx(), FUSE_ROOT_ID, b"c").await.unwrap().nodeid;
    assert!(!misses(&fs, c, b"x").await, "x moved into c");
    // And the old name, created again here, starts empty.
    let a = fs.mkdir(&ctx(), FUSE_ROOT_ID, b"a", 0o755, 0).await.unwrap().nodeid;
    assert!(misses(&fs, a, b"x").await);
}

/// A streamed part's buffer comes back when the back-end drops it and the
/// next part reuses that memory; at most `PART_POOL_IDLE` wait, and none
/// outlive the stream.
#[test]
fn part_buffers_are_reused_and_bounded() {
    use super::{PartPool, PART_POOL_IDLE};
    let mut s = super::Staged::new().unwrap();
    let data = pattern(3 * MIB, 9);
    s.write(0, &data).unwrap();
    let pool = Arc::new(PartPool::default());
    let a = pool.read(&s, 0, MIB).unwrap();
    assert_eq!(&a[..], &data[..MIB]);
    let ptr = a.as_ptr();
    drop(a);
    let b = pool.read(&s, MIB as u64, MIB).unwrap();
    assert_eq!(b.as_ptr(), ptr, "the returned buffer is reused");
    assert_eq!(&b[..], &data[MIB..2 * MIB]);
    let tail = pool.read(&s, (2 * MIB + 5) as u64, MIB).unwrap();
    assert_eq!(&tail[..], &data[2 * MIB + 5..], "short at the end of the file");
    let more: Vec<_> = (0..4).map(|i| pool.read(&s, i * 1000, 1000).unwrap()).collect();
    drop((b, tail, more));
    assert_eq!(pool.idle.lock().unwrap().len(), PART_POOL_IDLE);
    let late = pool.read(&s, 0, 10).unwrap();
    drop(pool);
    drop(late); // the stream is gone: freed, nothing kept
}
