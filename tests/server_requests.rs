//! Malformed and hostile requests straight into the FUSE server over the
//! memory back-end: every one gets an errno reply (or, for requests that take
//! none, no reply) and the server keeps serving.

use std::sync::Arc;

use ovfs::config::Config;
use ovfs::fuse::abi::{self, Opcode, Pod};
use ovfs::fuse::client::{self, Reply};
use ovfs::fuse::Server;
use ovfs::vfs::ObjectFs;

fn server() -> Arc<Server<ObjectFs>> {
    ovfs::cli::build_server(&Config::default_memory()).expect("memory server").0
}

async fn call(s: &Server<ObjectFs>, req: &[u8]) -> Option<Reply> {
    s.dispatch(req).await.map(|r| Reply::parse(&r).expect("well-formed reply"))
}

async fn ready() -> Arc<Server<ObjectFs>> {
    let s = server();
    let r = call(&s, &client::init(2, 0)).await.unwrap();
    assert_eq!(r.errno, 0);
    let out: abi::fuse_init_out = r.get().unwrap();
    assert_eq!(out.major, 7);
    assert!(out.max_write >= 4096);
    s
}

async fn errno(s: &Server<ObjectFs>, req: &[u8]) -> i32 {
    call(s, req).await.expect("a reply").errno
}

/// The server still answers a normal request.
async fn alive(s: &Server<ObjectFs>) {
    assert_eq!(errno(s, &client::getattr(9998, 1)).await, 0, "server stopped serving");
}

#[tokio::test]
async fn requests_before_init_get_eio() {
    let s = server();
    assert_eq!(errno(&s, &client::getattr(4, 1)).await, libc::EIO);
    assert!(call(&s, &client::forget(6, 1, 1)).await.is_none());
}

#[tokio::test]
async fn truncated_and_lying_headers() {
    let s = ready().await;
    let good = client::getattr(10, 1);
    // Truncated header: unique readable -> EINVAL; shorter -> dropped.
    let r = call(&s, &good[..39]).await.unwrap();
    assert_eq!((r.errno, r.unique), (libc::EINVAL, 10));
    assert!(call(&s, &good[..7]).await.is_none());
    assert!(call(&s, &[]).await.is_none());
    // Declared length beyond the buffer.
    let mut long = good.clone();
    long[0..4].copy_from_slice(&1000u32.to_le_bytes());
    assert_eq!(errno(&s, &long).await, libc::EINVAL);
    // Declared length shorter than the header.
    let mut short = good.clone();
    short[0..4].copy_from_slice(&8u32.to_le_bytes());
    assert_eq!(errno(&s, &short).await, libc::EINVAL);
    // Body shorter than the op's struct.
    let mut r = client::request(Opcode::Getattr, 12, 1, &[&[0u8; 3]]);
    assert_eq!(errno(&s, &r).await, libc::EINVAL);
    r = client::request(Opcode::Read, 13, 1, &[&[0u8; 39]]);
    assert_eq!(errno(&s, &r).await, libc::EINVAL);
    // Unknown opcodes.
    for op in [0u32, 7, 19, 53, 4096, u32::MAX] {
        let mut r = client::getattr(14, 1);
        r[4..8].copy_from_slice(&op.to_le_bytes());
        assert_eq!(errno(&s, &r).await, libc::ENOSYS, "opcode {op}");
    }
    alive(&s).await;
}

#[tokio::test]
async fn bad_names() {
    let s = ready().await;
    // No NUL terminator.
    let r = client::request(Opcode::Lookup, 20, 1, &[b"abc"]);
    assert_eq!(errno(&s, &r).await, libc::EINVAL);
    for bad in ["a/b", "/", ".", "..", ""] {
        assert_eq!(errno(&s, &client::lookup(21, 1, bad)).await, libc::EINVAL, "lookup {bad:?}");
        assert_eq!(errno(&s, &client::mkdir(22, 1, bad, 0o755)).await, libc::EINVAL, "mkdir {bad:?}");
        assert_eq!(errno(&s, &client::create(23, 1, bad, 0o644, 0o101)).await, libc::EINVAL, "create {bad:?}");
    }
    let long = "x".repeat(4096);
    assert_eq!(errno(&s, &client::lookup(24, 1, &long)).await, libc::ENAMETOOLONG);
    // RENAME with only one name.
    let r = client::request(Opcode::Rename, 25, 1, &[abi::fuse_rename_in { newdir: 1 }.as_bytes(), b"a\0"]);
    assert_eq!(errno(&s, &r).await, libc::EINVAL);
    // Invalid UTF-8 cannot be an object key.
    let r = client::request(Opcode::Lookup, 26, 1, &[b"\xff\xfe\0"]);
    assert_eq!(errno(&s, &r).await, libc::EINVAL);
    alive(&s).await;
}

#[tokio::test]
async fn huge_counts_and_sizes() {
    let s = ready().await;
    // BATCH_FORGET claiming 4 billion entries, carrying one.
    let b = abi::fuse_batch_forget_in { count: u32::MAX, dummy: 0 };
    let one = abi::fuse_forget_one { nodeid: 12345, nlookup: 1 };
    let r = client::request(Opcode::BatchForget, 30, 0, &[b.as_bytes(), one.as_bytes()]);
    assert!(call(&s, &r).await.is_none());
    // WRITE whose size exceeds the data carried.
    let w = abi::fuse_write_in { fh: 1, offset: 0, size: u32::MAX, ..Default::default() };
    let r = client::request(Opcode::Write, 31, 1, &[w.as_bytes(), b"abc"]);
    assert_eq!(errno(&s, &r).await, libc::EINVAL);
    // SETXATTR whose size exceeds the data carried.
    let x = abi::fuse_setxattr_in { size: u32::MAX, ..Default::default() };
    let r = client::request(Opcode::Setxattr, 32, 1, &[x.as_bytes(), b"user.a\0", b"v"]);
    assert_eq!(errno(&s, &r).await, libc::EINVAL);
    // READDIR asking for 4 GiB on a forged handle.
    assert_eq!(errno(&s, &client::readdir(33, 1, 777, 0, u32::MAX, true)).await, libc::EBADF);
    // REMOVEMAPPING with a huge count (no DAX window): ENOSYS, no allocation.
    let r = client::request(Opcode::RemoveMapping, 34, 1, &[abi::fuse_removemapping_in { count: u32::MAX }.as_bytes()]);
    assert_eq!(errno(&s, &r).await, libc::ENOSYS);
    alive(&s).await;
}

#[tokio::test]
async fn unknown_nodes_and_forged_handles() {
    let s = ready().await;
    assert_eq!(errno(&s, &client::getattr(40, 999_999)).await, libc::ENOENT);
    assert_eq!(errno(&s, &client::lookup(41, 999_999, "a")).await, libc::ENOENT);
    assert_eq!(errno(&s, &client::read(42, 1, 123, 0, 10)).await, libc::EBADF);
    // A file, then a forged handle and a directory handle used on it.
    let r = call(&s, &client::create(43, 1, "f", 0o100644, libc::O_RDWR as u32)).await.unwrap();
    assert_eq!(r.errno, 0);
    let e: abi::fuse_entry_out = r.get().unwrap();
    let o = abi::fuse_open_out::from_prefix(&r.body[128..]).unwrap();
    assert_eq!(errno(&s, &client::write(44, e.nodeid, o.fh + 1000, 0, b"x")).await, libc::EBADF);
    let d = call(&s, &client::opendir(45, 1)).await.unwrap();
    let dfh = d.get::<abi::fuse_open_out>().unwrap().fh;
    assert_eq!(errno(&s, &client::read(46, e.nodeid, dfh, 0, 10)).await, libc::EBADF);
    assert_eq!(errno(&s, &client::readdir(47, 1, o.fh, 0, 4096, false)).await, libc::EBADF);
    // A handle of one node used on another.
    assert_eq!(errno(&s, &client::read(48, 1, o.fh, 0, 10)).await, libc::EBADF);
    // Offsets near 2^64.
    let r = call(&s, &client::read(49, e.nodeid, o.fh, u64::MAX - 1, 4096)).await.unwrap();
    assert_eq!((r.errno, r.body.len()), (0, 0));
    assert_eq!(errno(&s, &client::write(50, e.nodeid, o.fh, u64::MAX - 1, b"abc")).await, libc::EFBIG);
    assert_eq!(errno(&s, &client::write(51, e.nodeid, o.fh, 1 << 62, b"abc")).await, libc::EFBIG);
    // The real handle still works.
    assert_eq!(errno(&s, &client::write(52, e.nodeid, o.fh, 0, b"hello")).await, 0);
    assert_eq!(errno(&s, &client::release(53, e.nodeid, o.fh)).await, 0);
    // Released handle is gone.
    assert_eq!(errno(&s, &client::read(54, e.nodeid, o.fh, 0, 10)).await, libc::EBADF);
    // Forgotten node.
    assert!(call(&s, &client::forget(55, e.nodeid, 1)).await.is_none());
    assert_eq!(errno(&s, &client::getattr(56, e.nodeid)).await, libc::ENOENT);
    alive(&s).await;
}

#[tokio::test]
async fn write_then_read_back_through_the_protocol() {
    let s = ready().await;
    let r = call(&s, &client::create(60, 1, "data", 0o100644, libc::O_RDWR as u32)).await.unwrap();
    let e: abi::fuse_entry_out = r.get().unwrap();
    let fh = abi::fuse_open_out::from_prefix(&r.body[128..]).unwrap().fh;
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for (i, chunk) in payload.chunks(65536).enumerate() {
        let w = call(&s, &client::write(61, e.nodeid, fh, (i * 65536) as u64, chunk)).await.unwrap();
        assert_eq!(w.get::<abi::fuse_write_out>().unwrap().size as usize, chunk.len());
    }
    assert_eq!(errno(&s, &client::flush(62, e.nodeid, fh)).await, 0);
    assert_eq!(errno(&s, &client::release(63, e.nodeid, fh)).await, 0);
    let o = call(&s, &client::open(64, e.nodeid, libc::O_RDONLY as u32)).await.unwrap();
    let fh = o.get::<abi::fuse_open_out>().unwrap().fh;
    let mut got = Vec::new();
    loop {
        let r = call(&s, &client::read(65, e.nodeid, fh, got.len() as u64, 131072)).await.unwrap();
        assert_eq!(r.errno, 0);
        if r.body.is_empty() {
            break;
        }
        got.extend_from_slice(&r.body);
    }
    assert_eq!(got, payload);
    let a = call(&s, &client::getattr(66, e.nodeid)).await.unwrap();
    assert_eq!(a.get::<abi::fuse_attr_out>().unwrap().attr.size, payload.len() as u64);
}

#[tokio::test]
async fn readdirplus_lookup_counts_balance() {
    let s = ready().await;
    for i in 0..50 {
        let r = call(&s, &client::create(70 + i, 1, &format!("file-with-a-longish-name-{i:03}"), 0o100644, 1))
            .await
            .unwrap();
        let e: abi::fuse_entry_out = r.get().unwrap();
        let fh = abi::fuse_open_out::from_prefix(&r.body[128..]).unwrap().fh;
        assert_eq!(errno(&s, &client::release(200 + i, e.nodeid, fh)).await, 0);
        assert!(call(&s, &client::forget(300 + i, e.nodeid, 1)).await.is_none());
    }
    let base = s.filesystem().counts().0;
    let d = call(&s, &client::opendir(400, 1)).await.unwrap();
    let fh = d.get::<abi::fuse_open_out>().unwrap().fh;
    // A small buffer: most entries do not fit; their references must be given back.
    let r = call(&s, &client::readdir(401, 1, fh, 0, 600, true)).await.unwrap();
    assert_eq!(r.errno, 0);
    let mut delivered = Vec::new();
    let mut off = 0;
    while off + 152 <= r.body.len() {
        let p = abi::fuse_direntplus::from_prefix(&r.body[off..]).unwrap();
        if p.entry_out.nodeid != 0 {
            delivered.push(p.entry_out.nodeid);
        }
        off += (152 + p.dirent.namelen as usize + 7) & !7;
    }
    assert!(!delivered.is_empty() && delivered.len() < 50);
    assert_eq!(s.filesystem().counts().0, base + delivered.len(), "only delivered entries hold references");
    for id in delivered {
        call(&s, &client::forget(500, id, 1)).await;
    }
    assert_eq!(s.filesystem().counts().0, base);
}

/// SETXATTR's argument is 8 bytes unless FUSE_SETXATTR_EXT was agreed: the
/// name must be read right after them (here the object store answers ENOSYS
/// for xattrs, but a misread name would be EINVAL first).
#[tokio::test]
async fn setxattr_layout_follows_negotiation() {
    let s = ready().await; // INIT without FUSE_SETXATTR_EXT
    let x8 = [5u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    let r = client::request(Opcode::Setxattr, 80, 1, &[&x8, b"user.k\0", b"value"]);
    assert_eq!(errno(&s, &r).await, libc::ENOSYS);
    // The same request read as the 16-byte form would swallow the name.
    let s2 = server();
    call(&s2, &client::init(2, abi::FUSE_SETXATTR_EXT)).await.unwrap();
    let x16 = abi::fuse_setxattr_in { size: 5, ..Default::default() };
    let r = client::request(Opcode::Setxattr, 81, 1, &[x16.as_bytes(), b"user.k\0", b"value"]);
    assert_eq!(errno(&s2, &r).await, libc::ENOSYS);
}

/// Reads of an unchanged object are served from the block cache (one fetch
/// per 2 MiB block), and a new version of the object is never served stale.
#[tokio::test]
async fn reads_come_from_the_block_cache() {
    let s = ready().await;
    let r = call(&s, &client::create(90, 1, "cached", 0o100644, libc::O_RDWR as u32)).await.unwrap();
    let e: abi::fuse_entry_out = r.get().unwrap();
    let fh = abi::fuse_open_out::from_prefix(&r.body[128..]).unwrap().fh;
    let v1 = vec![1u8; 300_000];
    call(&s, &client::write(91, e.nodeid, fh, 0, &v1)).await.unwrap();
    assert_eq!(errno(&s, &client::release(92, e.nodeid, fh)).await, 0);
    let before = s.filesystem().cache_stats().expect("cache on by default");
    for round in 0..3u64 {
        let o = call(&s, &client::open(93 + round, e.nodeid, libc::O_RDONLY as u32)).await.unwrap();
        let fh = o.get::<abi::fuse_open_out>().unwrap().fh;
        for off in [0u64, 65536, 131072] {
            let r = call(&s, &client::read(100, e.nodeid, fh, off, 65536)).await.unwrap();
            assert_eq!(r.body, v1[off as usize..off as usize + 65536]);
        }
        call(&s, &client::release(101, e.nodeid, fh)).await.unwrap();
    }
    let after = s.filesystem().cache_stats().unwrap();
    assert_eq!(after.misses - before.misses, 1, "one fetch for the block: {after:?}");
    assert!(after.hits - before.hits >= 8, "{after:?}");
    // Rewrite the object: the next open must see the new bytes.
    let o = call(&s, &client::open(110, e.nodeid, libc::O_RDWR as u32 | libc::O_TRUNC as u32)).await.unwrap();
    let fh = o.get::<abi::fuse_open_out>().unwrap().fh;
    call(&s, &client::write(111, e.nodeid, fh, 0, &[2u8; 1000])).await.unwrap();
    assert_eq!(errno(&s, &client::release(112, e.nodeid, fh)).await, 0);
    let o = call(&s, &client::open(113, e.nodeid, libc::O_RDONLY as u32)).await.unwrap();
    let fh = o.get::<abi::fuse_open_out>().unwrap().fh;
    let r = call(&s, &client::read(114, e.nodeid, fh, 0, 4096)).await.unwrap();
    assert_eq!(r.body, vec![2u8; 1000]);
}

/// With `negative_timeout`, a missing name is answered with a negative entry
/// (node id 0, cached by the kernel for that long); without it, ENOENT.
#[tokio::test]
async fn negative_entries_follow_the_config() {
    let s = ready().await;
    assert_eq!(errno(&s, &client::lookup(120, 1, "nope")).await, libc::ENOENT);
    let cfg =
        Config::parse("[cache_settings]\nnegative_timeout = \"5s\"\n[storage_settings]\ntype = \"memory\"\n").unwrap();
    let s2 = ovfs::cli::build_server(&cfg).unwrap().0;
    call(&s2, &client::init(2, 0)).await.unwrap();
    let r = call(&s2, &client::lookup(121, 1, "nope")).await.unwrap();
    assert_eq!(r.errno, 0);
    let e: abi::fuse_entry_out = r.get().unwrap();
    assert_eq!((e.nodeid, e.entry_valid), (0, 5));
}

/// A file written sequentially from empty streams its multipart upload while
/// it is written (complete parts go out as they fill); the object appears
/// only at the durability point, whole. A write that is not an append
/// abandons the stream and the file is uploaded whole instead.
#[tokio::test]
async fn sequential_writes_stream_their_upload() {
    let cfg =
        Config::parse("[storage_settings]\ntype = \"memory\"\n[backend_settings]\npart_size = \"5MiB\"\n").unwrap();
    let (s, backend) = ovfs::cli::build_server(&cfg).unwrap();
    call(&s, &client::init(2, 0)).await.unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    for (name, random_write) in [("streamed", false), ("rewritten", true)] {
        let before = s.filesystem().streamed_bytes();
        let r = call(&s, &client::create(130, 1, name, 0o100644, libc::O_RDWR as u32)).await.unwrap();
        let e: abi::fuse_entry_out = r.get().unwrap();
        let fh = abi::fuse_open_out::from_prefix(&r.body[128..]).unwrap().fh;
        let mut want = Vec::new();
        for i in 0..20u64 {
            call(&s, &client::write(131, e.nodeid, fh, i << 20, &chunk)).await.unwrap();
            want.extend_from_slice(&chunk);
        }
        let streamed = s.filesystem().streamed_bytes() - before;
        assert!(streamed >= 10 << 20, "{name}: parts sent while writing: {streamed}");
        if random_write {
            call(&s, &client::write(132, e.nodeid, fh, 1000, b"XYZ")).await.unwrap();
            want[1000..1003].copy_from_slice(b"XYZ");
        }
        assert!(backend.lookup(name).await.is_err(), "{name}: not visible before the durability point");
        assert_eq!(errno(&s, &client::release(133, e.nodeid, fh)).await, 0);
        let meta = backend.lookup(name).await.unwrap();
        assert_eq!(meta.size, 20 << 20, "{name}");
        let got = backend.read(name, 0, 20 << 20).await.unwrap();
        assert!(got[..] == want[..], "{name}: bytes differ");
    }
}

/// Found by the fuzzer: SETATTR with an mtime the host cannot represent
/// (seconds near 2^64) overflowed `SystemTime` and panicked. Now EINVAL.
#[tokio::test]
async fn setattr_time_overflow_is_einval() {
    let s = ready().await;
    let r = call(&s, &client::create(140, 1, "t", 0o100644, libc::O_RDWR as u32)).await.unwrap();
    let e: abi::fuse_entry_out = r.get().unwrap();
    let sa =
        abi::fuse_setattr_in { valid: abi::FATTR_MTIME, mtime: u64::MAX, mtimensec: u32::MAX, ..Default::default() };
    let r = client::request(Opcode::Setattr, 141, e.nodeid, &[sa.as_bytes()]);
    assert_eq!(errno(&s, &r).await, libc::EINVAL);
    alive(&s).await;
}

fn interrupt(unique: u64, target: u64) -> Vec<u8> {
    client::request(Opcode::Interrupt, unique, 0, &[abi::fuse_interrupt_in { unique: target }.as_bytes()])
}

/// INTERRUPT cancels a read-only request that waits (EINTR), also one whose
/// INTERRUPT came before it started waiting. Every back-end call takes 60 s
/// here: without the cancellation the LOOKUPs would answer ENOENT after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_cancels_waiting_requests() {
    let mut cfg = Config::default_memory();
    cfg.backend_settings.inject_latency = std::time::Duration::from_secs(60);
    let s = ovfs::cli::build_server(&cfg).expect("memory server").0;
    assert_eq!(errno(&s, &client::init(2, 0)).await, 0);

    // The LOOKUP waits on the back-end; the INTERRUPT comes meanwhile (or,
    // on a slow machine, before it waits: cancelled either way).
    let s2 = s.clone();
    let slow = tokio::spawn(async move { call(&s2, &client::lookup(100, 1, "slow")).await });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(call(&s, &interrupt(101, 100)).await.is_none(), "INTERRUPT takes no reply");
    let r = slow.await.unwrap().expect("a reply");
    assert_eq!((r.errno, r.unique), (libc::EINTR, 100));

    // The INTERRUPT first: the LOOKUP is cancelled as soon as it waits.
    assert!(call(&s, &interrupt(102, 200)).await.is_none());
    let r = call(&s, &client::lookup(200, 1, "slow2")).await.expect("a reply");
    assert_eq!((r.errno, r.unique), (libc::EINTR, 200));
}
