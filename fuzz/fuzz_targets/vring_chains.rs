//! Fuzz target: the vhost-user transport's descriptor-chain layer over fake
//! guest memory. The input lays out one split virtqueue (size, available
//! ring, descriptor table) and the bytes of guest memory behind it;
//! `ovfs::transport::vhost_user::fuzzing::drain_queue` pops every chain the
//! way the device does, checks it, copies the request out, writes a reply
//! back and fills the used ring.
//!
//! Guest memory: two 16 KiB regions at 0x0 and 0x8000 with a hole between
//! them, so descriptors can point into memory, into the hole, across a region
//! boundary or far past the end. Descriptor tables can be indirect (the flag
//! is fuzzed; the indirect table is whatever the memory holds).
//!
//! Checked: no panic; every byte of guest memory that changed lies in the used
//! ring or in a writable descriptor of a popped chain; a used length never
//! exceeds the chain's writable space; an accepted request is at least a
//! `fuse_in_header` long.
//!
//! Input: [size sel][n heads][heads...][8 bytes per descriptor: addr u16,
//! len u16, flags, next, modifiers, reply sel][memory fill...].
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ovfs::transport::vhost_user::fuzzing::drain_queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const REGIONS: [(u64, usize); 2] = [(0, 0x4000), (0x8000, 0x4000)];
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x200;
const USED: u64 = 0x300;
const FILL: u64 = 0x400;

fn mem() -> &'static Arc<GuestMemoryMmap<()>> {
    static M: OnceLock<Arc<GuestMemoryMmap<()>>> = OnceLock::new();
    M.get_or_init(|| {
        let ranges: Vec<(GuestAddress, usize)> = REGIONS.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        Arc::new(GuestMemoryMmap::from_ranges(&ranges).expect("guest memory"))
    })
}

/// Copy both regions into `out` (reused across inputs: no allocation per input).
fn snapshot(m: &GuestMemoryMmap<()>, out: &mut [Vec<u8>; 2]) {
    for (v, &(a, l)) in out.iter_mut().zip(REGIONS.iter()) {
        v.resize(l, 0);
        m.read_slice(v, GuestAddress(a)).expect("read region");
    }
}

/// Offsets where `a` and `b` differ. Whole 64-byte chunks are compared first
/// (one memcmp each), so only chunks that changed are walked byte by byte:
/// a byte loop over all 32 KiB cost most of an execution under coverage
/// instrumentation (a comparison hook per byte).
fn changed(a: &[u8], b: &[u8], mut f: impl FnMut(usize)) {
    const CHUNK: usize = 64;
    for (c, (ca, cb)) in a.chunks(CHUNK).zip(b.chunks(CHUNK)).enumerate() {
        if ca == cb {
            continue;
        }
        for (i, (x, y)) in ca.iter().zip(cb).enumerate() {
            if x != y {
                f(c * CHUNK + i);
            }
        }
    }
}

thread_local! {
    static BUFS: std::cell::RefCell<([Vec<u8>; 2], [Vec<u8>; 2])> =
        const { std::cell::RefCell::new(([Vec::new(), Vec::new()], [Vec::new(), Vec::new()])) };
}

const ZERO: [u8; 0x4000] = [0u8; 0x4000];

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let m = mem();
    let size: u16 = 1 << (data[0] % 5);
    let nheads = 1 + (data[1] % 4) as usize;
    let mut rest = &data[2..];
    let take = |rest: &mut &[u8], n: usize| -> Vec<u8> {
        let k = n.min(rest.len());
        let mut v = rest[..k].to_vec();
        v.resize(n, 0);
        *rest = &rest[k..];
        v
    };
    let heads = take(&mut rest, nheads);
    let descs = take(&mut rest, 8 * size as usize);
    let reply_sel = take(&mut rest, 1)[0];

    // Fresh memory: zeroes, then the fill bytes from FILL on in both regions.
    for &(a, l) in REGIONS.iter() {
        m.write_slice(&ZERO[..l], GuestAddress(a)).expect("zero region");
    }
    let fill = &rest[..rest.len().min(0x4000 - FILL as usize)];
    m.write_slice(fill, GuestAddress(FILL)).expect("fill");
    let fill2 = &rest[..rest.len().min(0x4000)];
    m.write_slice(fill2, GuestAddress(0x8000)).expect("fill");

    // Descriptor table.
    for i in 0..size as usize {
        let d = &descs[i * 8..i * 8 + 8];
        let mut addr = u64::from(u16::from_le_bytes([d[0], d[1]]));
        let mut len = u32::from(u16::from_le_bytes([d[2], d[3]]));
        let flags = u16::from(d[4] & 0x7);
        let next = u16::from(d[5]) % (size + 2);
        let mods = d[6];
        if mods & 1 != 0 {
            len |= 0xffff_0000;
        }
        if mods & 2 != 0 {
            addr |= 1 << 63;
        }
        if mods & 4 != 0 {
            addr = addr.wrapping_neg();
        }
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        m.write_slice(&raw, GuestAddress(DESC + 16 * i as u64)).expect("descriptor");
    }
    // Available ring: flags 0, idx = number of heads, ring entries.
    m.write_obj(0u16, GuestAddress(AVAIL)).expect("avail flags");
    m.write_obj(nheads as u16, GuestAddress(AVAIL + 2)).expect("avail idx");
    for (i, h) in heads.iter().enumerate() {
        let h = u16::from(*h) % (size + 1);
        m.write_obj(h, GuestAddress(AVAIL + 4 + 2 * (i as u64 % size as u64))).expect("avail ring");
    }

    BUFS.with(|bufs| {
        let (before, after) = &mut *bufs.borrow_mut();
        snapshot(m, before);
        let mut nreply = 0u32;
        let outcomes = drain_queue(m, size, DESC, AVAIL, USED, 8, |req| {
            nreply += 1;
            let unique = u64::from_le_bytes(req[8..16].try_into().expect("8 bytes"));
            let len = 16 + (usize::from(reply_sel).wrapping_mul(37 * nreply as usize) % 700);
            let mut r = vec![0xa5u8; len];
            r[0..4].copy_from_slice(&(len as u32).to_le_bytes());
            r[4..8].copy_from_slice(&0i32.to_le_bytes());
            r[8..16].copy_from_slice(&unique.to_le_bytes());
            Some(r)
        })
        .expect("queue setup");
        snapshot(m, after);

        let used_end = USED + 4 + 8 * u64::from(size) + 2;
        for o in &outcomes {
            let room: u64 = o.writable.iter().map(|&(_, l)| u64::from(l)).sum();
            assert!(u64::from(o.used_len) <= room, "used length {} > writable {room}", o.used_len);
            if let Some(req) = &o.request {
                assert!(req.len() >= 40 && req.len() <= 16 << 20, "accepted request of {} bytes", req.len());
            }
        }
        for (r, &(base, _)) in REGIONS.iter().enumerate() {
            changed(&before[r], &after[r], |off| {
                let a = base + off as u64;
                let in_used = (USED..used_end).contains(&a);
                let in_writable =
                    outcomes.iter().flat_map(|o| o.writable.iter()).any(|&(wa, wl)| a >= wa && a - wa < u64::from(wl));
                assert!(
                    in_used || in_writable,
                    "guest byte {a:#x} written outside the used ring and writable descriptors"
                );
            });
        }
    });
});
