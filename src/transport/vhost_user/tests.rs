//! Unit tests for the vhost-user transport: the real device (`FsDevice`) is
//! driven through `VhostUserBackend::handle_event` over `VringRwLock`s whose
//! rings live in a `GuestMemoryMmap` laid out with `MockSplitQueue`, with a
//! test `RequestHandler` (no FUSE layer). `serve` is exercised over a real
//! Unix socket with hand-written vhost-user messages.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{config_slice, DeviceConfig, FsDevice, Vring, CONFIG_LEN, FUSE_IN_HEADER_LEN, VIRTIO_FEATURES};
use super::*;

const QSIZE: u16 = 16;
const MEM_SIZE: usize = 32 << 20;
const BUF_START: u64 = 0x10_0000;
const VRING_F_NEXT: u16 = 1;
const VRING_F_WRITE: u16 = 2;

const OP_ECHO: u32 = 1;
const OP_GATED: u32 = 2;
const OP_NONE: u32 = 3;
const OP_BIG: u32 = 4;
const OP_PANIC: u32 = 5;

/// Test handler keyed on the opcode field (bytes 4..8):
/// ECHO replies header + request body; GATED does the same after taking a
/// permit from `gate`; NONE replies nothing; BIG replies the number of bytes
/// given by the first body u32; PANIC panics.
struct TestHandler {
    gate: Arc<tokio::sync::Semaphore>,
    calls: AtomicUsize,
    finished: AtomicUsize,
    current: AtomicUsize,
    max_current: AtomicUsize,
}

impl Default for TestHandler {
    fn default() -> Self {
        Self {
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            calls: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            current: AtomicUsize::new(0),
            max_current: AtomicUsize::new(0),
        }
    }
}

fn out_header(len: usize, error: i32, unique: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&(len as u32).to_le_bytes());
    h.extend_from_slice(&error.to_le_bytes());
    h.extend_from_slice(&unique.to_le_bytes());
    h
}

fn echo_reply(req: &[u8]) -> Vec<u8> {
    let unique = u64::from_le_bytes(req[8..16].try_into().unwrap());
    let body = &req[FUSE_IN_HEADER_LEN..];
    let mut out = out_header(16 + body.len(), 0, unique);
    out.extend_from_slice(body);
    out
}

impl RequestHandler for TestHandler {
    fn handle(self: Arc<Self>, req: Vec<u8>) -> BoxFuture<'static, Option<Vec<u8>>> {
        async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let opcode = u32::from_le_bytes(req[4..8].try_into().unwrap());
            let unique = u64::from_le_bytes(req[8..16].try_into().unwrap());
            let reply = match opcode {
                OP_ECHO => Some(echo_reply(&req)),
                OP_GATED => {
                    let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
                    self.max_current.fetch_max(now, Ordering::SeqCst);
                    self.gate.acquire().await.unwrap().forget();
                    self.current.fetch_sub(1, Ordering::SeqCst);
                    Some(echo_reply(&req))
                }
                OP_NONE => None,
                OP_BIG => {
                    let n = u32::from_le_bytes(req[40..44].try_into().unwrap()) as usize;
                    let mut out = out_header(n, 0, unique);
                    out.resize(n, 0xAB);
                    Some(out)
                }
                OP_PANIC => panic!("test handler panics on purpose"),
                _ => None,
            };
            self.finished.fetch_add(1, Ordering::SeqCst);
            reply
        }
        .boxed()
    }
}

/// A FUSE-like request: 40-byte header (len, opcode, unique, zeros) + body.
fn request(opcode: u32, unique: u64, body: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; FUSE_IN_HEADER_LEN];
    r[0..4].copy_from_slice(&((FUSE_IN_HEADER_LEN + body.len()) as u32).to_le_bytes());
    r[4..8].copy_from_slice(&opcode.to_le_bytes());
    r[8..16].copy_from_slice(&unique.to_le_bytes());
    r.extend_from_slice(body);
    r
}

/// One part of a chain to publish.
enum Seg {
    /// Readable descriptor holding these bytes.
    R(Vec<u8>),
    /// Writable descriptor of this many bytes (pre-filled with 0xEE).
    W(u32),
    /// Raw descriptor (address, length, writable), nothing written.
    Raw(u64, u32, bool),
}

struct Layout {
    avail: GuestAddress,
    used: GuestAddress,
    next_desc: u16,
    mock: MockSplitQueue<'static, GuestMemoryMmap>,
}

struct Rig {
    _rt: tokio::runtime::Runtime,
    mem: &'static GuestMemoryMmap,
    handler: Arc<TestHandler>,
    dev: FsDevice,
    vrings: Vec<Vring>,
    layouts: Vec<Layout>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    next_buf: u64,
}

fn eventfd_file(efd: &EventFd) -> File {
    let dup = efd.try_clone().unwrap();
    // SAFETY: `dup` is a freshly duplicated eventfd we own; File takes it over.
    unsafe { File::from_raw_fd(dup.into_raw_fd()) }
}

impl Rig {
    fn new(num_request_queues: usize, max_inflight: usize) -> Self {
        let opts = VhostUserOptions {
            tag: Some("myfs".to_string()),
            num_request_queues,
            queue_size: usize::from(QSIZE),
            max_inflight,
            keep_serving: false,
            dax_window: None,
        };
        let cfg = DeviceConfig::try_from(&opts).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let gm = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        // Leaked so the MockSplitQueue borrows can live in the rig (test only).
        let mem: &'static GuestMemoryMmap = Box::leak(Box::new(gm.clone()));
        let atomic = GuestMemoryAtomic::new(gm);
        let handler = Arc::new(TestHandler::default());
        let dev = FsDevice::new(cfg, handler.clone(), rt.handle().clone(), BackendChannel::new(), Default::default());
        dev.update_memory(atomic.clone()).unwrap();
        let mut vrings = Vec::new();
        let mut layouts = Vec::new();
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        for q in 0..dev.num_queues() {
            let base = GuestAddress(0x1000 * (q as u64 + 1));
            let mock = MockSplitQueue::create(mem, base, QSIZE);
            // The mock sizes the available ring in entries instead of bytes, so
            // its used ring would overlap `used_event`: put the used ring apart.
            let used = base.unchecked_add(0x800);
            let vring = Vring::new(atomic.clone(), QSIZE).unwrap();
            vring.set_queue_size(QSIZE);
            vring.set_queue_info(mock.desc_table_addr().0, mock.avail_addr().0, used.0).unwrap();
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            let kick = EventFd::new(EFD_NONBLOCK).unwrap();
            let call = EventFd::new(EFD_NONBLOCK).unwrap();
            vring.set_kick(Some(eventfd_file(&kick)));
            vring.set_call(Some(eventfd_file(&call)));
            layouts.push(Layout { avail: mock.avail_addr(), used, next_desc: 0, mock });
            vrings.push(vring);
            kicks.push(kick);
            calls.push(call);
        }
        Rig { _rt: rt, mem, handler, dev, vrings, layouts, kicks, calls, next_buf: BUF_START }
    }

    fn enable_event_idx(&self) {
        for v in &self.vrings {
            v.set_queue_event_idx(true);
        }
        self.dev.set_event_idx(true);
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.next_buf;
        self.next_buf = (self.next_buf + len + 0x3f) & !0x3f;
        addr
    }

    /// Publish a chain on queue `q`; returns its head index and the address of
    /// each segment.
    fn push(&mut self, q: usize, segs: Vec<Seg>) -> (u16, Vec<u64>) {
        let mut raw = Vec::new();
        let mut addrs = Vec::new();
        let first = self.layouts[q].next_desc;
        let n = segs.len() as u16;
        for (i, seg) in segs.into_iter().enumerate() {
            let (addr, len, write) = match seg {
                Seg::R(bytes) => {
                    let a = self.alloc(bytes.len() as u64);
                    self.mem.write_slice(&bytes, GuestAddress(a)).unwrap();
                    (a, bytes.len() as u32, false)
                }
                Seg::W(len) => {
                    let a = self.alloc(u64::from(len));
                    self.mem.write_slice(&vec![0xEE; len as usize], GuestAddress(a)).unwrap();
                    (a, len, true)
                }
                Seg::Raw(a, len, write) => (a, len, write),
            };
            let idx = (first + i as u16) % QSIZE;
            let last = i as u16 + 1 == n;
            let mut flags = if write { VRING_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_F_NEXT;
            }
            raw.push(RawDescriptor::from(SplitDescriptor::new(addr, len, flags, (idx + 1) % QSIZE)));
            addrs.push(addr);
        }
        self.layouts[q].mock.add_desc_chains(&raw, first).expect("publish chain");
        self.layouts[q].next_desc = (first + n) % QSIZE;
        (first, addrs)
    }

    fn run(&self, q: usize) {
        self.dev.handle_event(q as u16, EventSet::IN, &self.vrings, 0).unwrap();
    }

    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let l = &self.layouts[q];
        let idx: u16 = self.mem.read_obj(l.used.unchecked_add(2)).unwrap();
        (0..idx)
            .map(|i| {
                let e: VirtqUsedElem = self.mem.read_obj(l.used.unchecked_add(4 + 8 * u64::from(i % QSIZE))).unwrap();
                (e.id(), e.len())
            })
            .collect()
    }

    fn wait_used(&self, q: usize, n: usize) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let used = self.used(q);
            if used.len() >= n {
                return used;
            }
            assert!(Instant::now() < deadline, "queue {q}: {} used entries, expected {n}", used.len());
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    fn wait_until(&self, what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The guest's `used_event` (in the available ring).
    fn set_used_event(&self, q: usize, v: u16) {
        let a = self.layouts[q].avail.unchecked_add(4 + 2 * u64::from(QSIZE));
        self.mem.write_obj(v, a).unwrap();
    }

    /// The device's `avail_event` (in the used ring).
    fn avail_event(&self, q: usize) -> u16 {
        let a = self.layouts[q].used.unchecked_add(4 + 8 * u64::from(QSIZE));
        self.mem.read_obj(a).unwrap()
    }

    fn signalled(&self, q: usize) -> bool {
        self.calls[q].read().is_ok()
    }
}

#[test]
fn normal_request_and_reply() {
    let mut rig = Rig::new(1, 8);
    let req = request(OP_ECHO, 2, b"hello world");
    let (head, addrs) = rig.push(1, vec![Seg::R(req), Seg::W(256)]);
    rig.run(1);
    let used = rig.wait_used(1, 1);
    assert_eq!(used, vec![(u32::from(head), 16 + 11)]);
    let mut expected = out_header(27, 0, 2);
    expected.extend_from_slice(b"hello world");
    assert_eq!(rig.read(addrs[1], 27), expected);
    // Bytes after the reply are untouched.
    assert_eq!(rig.read(addrs[1] + 27, 4), vec![0xEE; 4]);
    rig.wait_until("notification", || rig.signalled(1));
    assert_eq!(rig.handler.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn request_and_reply_spanning_descriptors() {
    let mut rig = Rig::new(1, 8);
    let req = request(OP_ECHO, 6, b"0123456789abcdef");
    let (a, b) = req.split_at(13);
    let (head, addrs) = rig.push(1, vec![Seg::R(a.to_vec()), Seg::R(b.to_vec()), Seg::W(10), Seg::W(100)]);
    rig.run(1);
    assert_eq!(rig.wait_used(1, 1), vec![(u32::from(head), 32)]);
    let mut expected = out_header(32, 0, 6);
    expected.extend_from_slice(b"0123456789abcdef");
    let mut got = rig.read(addrs[2], 10);
    got.extend(rig.read(addrs[3], 22));
    assert_eq!(got, expected);
}

#[test]
fn slow_request_does_not_block_fast_one() {
    let mut rig = Rig::new(1, 8);
    let (slow, slow_addrs) = rig.push(1, vec![Seg::R(request(OP_GATED, 2, b"slow")), Seg::W(64)]);
    let (fast, _) = rig.push(1, vec![Seg::R(request(OP_ECHO, 4, b"fast")), Seg::W(64)]);
    rig.run(1);
    let used = rig.wait_used(1, 1);
    assert_eq!(used[0], (u32::from(fast), 20));
    // The slow one is still in the handler and its buffer untouched.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rig.used(1).len(), 1);
    assert_eq!(rig.read(slow_addrs[1], 4), vec![0xEE; 4]);
    rig.handler.gate.add_permits(1);
    let used = rig.wait_used(1, 2);
    assert_eq!(used, vec![(u32::from(fast), 20), (u32::from(slow), 20)]);
    assert_eq!(&rig.read(slow_addrs[1], 20)[16..], b"slow");
}

#[test]
fn no_writable_part_with_reply_returns_len_zero() {
    let mut rig = Rig::new(1, 8);
    let (head, _) = rig.push(1, vec![Seg::R(request(OP_ECHO, 2, b"x"))]);
    rig.run(1);
    assert_eq!(rig.wait_used(1, 1), vec![(u32::from(head), 0)]);
    assert_eq!(rig.handler.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn none_reply_returns_len_zero() {
    let mut rig = Rig::new(1, 8);
    // FORGET-like: no writable part.
    let (h1, _) = rig.push(1, vec![Seg::R(request(OP_NONE, 2, b""))]);
    // No reply although there is room: the buffer must stay untouched.
    let (h2, addrs) = rig.push(1, vec![Seg::R(request(OP_NONE, 4, b"")), Seg::W(64)]);
    rig.run(1);
    let mut used = rig.wait_used(1, 2);
    used.sort();
    assert_eq!(used, vec![(u32::from(h1), 0), (u32::from(h2), 0)]);
    assert_eq!(rig.read(addrs[1], 64), vec![0xEE; 64]);
    assert_eq!(rig.handler.calls.load(Ordering::SeqCst), 2);
}

fn big_request(unique: u64, reply_len: u32) -> Vec<u8> {
    request(OP_BIG, unique, &reply_len.to_le_bytes())
}

#[test]
fn reply_larger_than_writable_part_gets_eio() {
    let mut rig = Rig::new(1, 8);
    let (h1, a1) = rig.push(1, vec![Seg::R(big_request(0x1234, 100)), Seg::W(32)]);
    rig.run(1);
    assert_eq!(rig.wait_used(1, 1), vec![(u32::from(h1), 16)]);
    assert_eq!(rig.read(a1[1], 16), out_header(16, -libc::EIO, 0x1234));
    assert_eq!(rig.read(a1[1] + 16, 16), vec![0xEE; 16]);

    // Not even room for the error header: returned with len 0, untouched.
    let (h2, a2) = rig.push(1, vec![Seg::R(big_request(0x5678, 100)), Seg::W(8)]);
    rig.run(1);
    assert_eq!(rig.wait_used(1, 2)[1], (u32::from(h2), 0));
    assert_eq!(rig.read(a2[1], 8), vec![0xEE; 8]);

    // Exactly fitting reply is written whole.
    let (h3, a3) = rig.push(1, vec![Seg::R(big_request(0x9abc, 48)), Seg::W(48)]);
    rig.run(1);
    assert_eq!(rig.wait_used(1, 3)[2], (u32::from(h3), 48));
    let got = rig.read(a3[1], 48);
    assert_eq!(got[..16], out_header(48, 0, 0x9abc)[..]);
    assert!(got[16..].iter().all(|&b| b == 0xAB));
}

#[test]
fn readable_part_shorter_than_header() {
    let mut rig = Rig::new(1, 8);
    // 30 bytes: unique readable -> EIO reply, handler not called.
    let mut short = request(OP_ECHO, 0x42, b"");
    short.truncate(30);
    let (h1, a1) = rig.push(1, vec![Seg::R(short), Seg::W(64)]);
    // 10 bytes: not even the unique -> len 0, buffer untouched.
    let (h2, a2) = rig.push(1, vec![Seg::R(vec![1; 10]), Seg::W(64)]);
    // Zero-length chain.
    let (h3, _) = rig.push(1, vec![Seg::R(Vec::new())]);
    rig.run(1);
    let used = rig.wait_used(1, 3);
    assert_eq!(used, vec![(u32::from(h1), 16), (u32::from(h2), 0), (u32::from(h3), 0)]);
    assert_eq!(rig.read(a1[1], 16), out_header(16, -libc::EIO, 0x42));
    assert_eq!(rig.read(a2[1], 64), vec![0xEE; 64]);
    assert_eq!(rig.handler.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn descriptor_outside_guest_memory() {
    let mut rig = Rig::new(1, 8);
    let outside = MEM_SIZE as u64 + 0x1000;
    // Readable part outside memory.
    let (h1, _) = rig.push(1, vec![Seg::Raw(outside, 64, false), Seg::W(64)]);
    // Readable part straddling the end of memory.
    let (h2, _) = rig.push(1, vec![Seg::Raw(MEM_SIZE as u64 - 20, 64, false), Seg::W(64)]);
    // Valid request, writable part outside memory.
    let (h3, _) = rig.push(1, vec![Seg::R(request(OP_ECHO, 2, b"")), Seg::Raw(outside, 64, true)]);
    // Address near u64::MAX (overflow in address arithmetic).
    let (h4, _) = rig.push(1, vec![Seg::Raw(u64::MAX - 8, 64, false), Seg::W(64)]);
    rig.run(1);
    let used = rig.wait_used(1, 4);
    assert_eq!(used, vec![(u32::from(h1), 0), (u32::from(h2), 0), (u32::from(h3), 0), (u32::from(h4), 0)]);
    assert_eq!(rig.handler.calls.load(Ordering::SeqCst), 0);
    // The queue still works afterwards.
    let (h5, _) = rig.push(1, vec![Seg::R(request(OP_ECHO, 8, b"ok")), Seg::W(64)]);
    rig.run(1);
    assert_eq!(rig.wait_used(1, 5)[4], (u32::from(h5), 18));
}

#[test]
fn absurd_lengths_are_rejected() {
    let mut rig = Rig::new(1, 8);
    // 17 MiB, inside guest memory: over the limit, unique readable -> EIO.
    let mut huge = request(OP_ECHO, 0x77, b"");
    huge.resize(17 << 20, 0);
    let (h1, a1) = rig.push(1, vec![Seg::R(huge), Seg::W(64)]);
    // Nearly 4 GiB in one descriptor: outside memory -> len 0.
    let (h2, a2) = rig.push(1, vec![Seg::Raw(BUF_START, u32::MAX, false), Seg::W(64)]);
    // Two descriptors summing past u32::MAX: the chain walk stops at the
    // overflow, the writable descriptor is never reached -> len 0.
    let (h3, _) =
        rig.push(1, vec![Seg::Raw(BUF_START, u32::MAX - 10, false), Seg::Raw(BUF_START, 100, false), Seg::W(64)]);
    rig.run(1);
    let used = rig.wait_used(1, 3);
    assert_eq!(used, vec![(u32::from(h1), 16), (u32::from(h2), 0), (u32::from(h3), 0)]);
    assert_eq!(rig.read(a1[1], 16), out_header(16, -libc::EIO, 0x77));
    assert_eq!(rig.read(a2[1], 64), vec![0xEE; 64]);
    assert_eq!(rig.handler.calls.load(Ordering::SeqCst), 0);
}

/// Write raw descriptors at table indexes `first..` and publish `head`.
fn publish_raw(rig: &Rig, q: usize, first: u16, descs: &[SplitDescriptor], head: u16) {
    let l = &rig.layouts[q];
    let table = l.avail.unchecked_sub(16 * u64::from(QSIZE));
    for (i, d) in descs.iter().enumerate() {
        let at = table.unchecked_add(16 * u64::from(first + i as u16));
        rig.mem.write_obj(RawDescriptor::from(*d), at).unwrap();
    }
    let idx: u16 = rig.mem.read_obj(l.avail.unchecked_add(2)).unwrap();
    rig.mem.write_obj(head, l.avail.unchecked_add(4 + 2 * u64::from(idx % QSIZE))).unwrap();
    rig.mem.write_obj(idx.wrapping_add(1), l.avail.unchecked_add(2)).unwrap();
}

#[test]
fn looping_and_dangling_chains_are_rejected() {
    let mut rig = Rig::new(1, 8);
    let req = request(OP_ECHO, 0x31, b"");
    let r = rig.alloc(64);
    rig.mem.write_slice(&req, GuestAddress(r)).unwrap();
    let w = rig.alloc(64);
    rig.mem.write_slice(&[0xEE; 64], GuestAddress(w)).unwrap();
    // 0 -> 1 -> 0 -> ...: a loop (the TTL ends the walk).
    publish_raw(
        &rig,
        1,
        0,
        &[SplitDescriptor::new(r, 40, VRING_F_NEXT, 1), SplitDescriptor::new(w, 64, VRING_F_NEXT | VRING_F_WRITE, 0)],
        0,
    );
    // 2 -> 200: `next` outside the table.
    publish_raw(&rig, 1, 2, &[SplitDescriptor::new(r, 40, VRING_F_NEXT, 200)], 2);
    rig.run(1);
    let used = rig.wait_used(1, 2);
    assert_eq!(used, vec![(0, 16), (2, 0)]);
    assert_eq!(rig.read(w, 16), out_header(16, -libc::EIO, 0x31));
    assert_eq!(rig.handler.calls.load(Ordering::SeqCst), 0);
}

#[test]
fn indirect_descriptor_table() {
    let mut rig = Rig::new(1, 8);
    let req = request(OP_ECHO, 0x44, b"indirect");
    let r = rig.alloc(64);
    rig.mem.write_slice(&req, GuestAddress(r)).unwrap();
    let w = rig.alloc(64);
    let table = rig.alloc(32);
    rig.mem
        .write_obj(RawDescriptor::from(SplitDescriptor::new(r, req.len() as u32, VRING_F_NEXT, 1)), GuestAddress(table))
        .unwrap();
    rig.mem
        .write_obj(RawDescriptor::from(SplitDescriptor::new(w, 64, VRING_F_WRITE, 0)), GuestAddress(table + 16))
        .unwrap();
    const VRING_F_INDIRECT: u16 = 4;
    publish_raw(&rig, 1, 0, &[SplitDescriptor::new(table, 32, VRING_F_INDIRECT, 0)], 0);
    rig.run(1);
    assert_eq!(rig.wait_used(1, 1), vec![(0, 24)]);
    let mut want = out_header(24, 0, 0x44);
    want.extend_from_slice(b"indirect");
    assert_eq!(rig.read(w, 24), want);
}

#[test]
fn queue_not_ready_is_left_alone() {
    let mut rig = Rig::new(1, 8);
    rig.push(1, vec![Seg::R(request(OP_ECHO, 2, b"")), Seg::W(64)]);
    rig.vrings[1].set_queue_ready(false);
    rig.run(1);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rig.handler.calls.load(Ordering::SeqCst), 0);
    assert!(rig.used(1).is_empty());
    rig.vrings[1].set_queue_ready(true);
    rig.run(1);
    assert_eq!(rig.wait_used(1, 1)[0].1, 16);
}

#[test]
fn handler_panic_gets_eio() {
    let mut rig = Rig::new(1, 8);
    let (head, addrs) = rig.push(1, vec![Seg::R(request(OP_PANIC, 0x99, b"")), Seg::W(64)]);
    rig.run(1);
    assert_eq!(rig.wait_used(1, 1), vec![(u32::from(head), 16)]);
    assert_eq!(rig.read(addrs[1], 16), out_header(16, -libc::EIO, 0x99));
    // The permit came back.
    rig.wait_until("permit release", || rig.dev.inflight() == 0);
}

#[test]
fn concurrency_bound_pauses_and_resumes() {
    let mut rig = Rig::new(1, 2);
    let mut heads = Vec::new();
    for i in 0..5u64 {
        heads.push(rig.push(1, vec![Seg::R(request(OP_GATED, 2 * i, b"")), Seg::W(64)]).0);
    }
    rig.run(1);
    rig.wait_until("two requests in the handler", || rig.handler.current.load(Ordering::SeqCst) == 2);
    // Only two chains were popped; the rest wait in the available ring.
    assert_eq!(rig.vrings[1].queue_next_avail(), 2);
    assert_eq!(rig.dev.inflight(), 2);
    // A kick without a free permit does not pop anything.
    rig.run(1);
    assert_eq!(rig.vrings[1].queue_next_avail(), 2);
    assert!(rig.kicks[1].read().is_err(), "no wake-up expected yet");

    let mut completed = 0;
    while completed < 5 {
        rig.handler.gate.add_permits(1);
        completed += 1;
        rig.wait_used(1, completed);
        if completed <= 3 {
            // The completion woke the starved queue through its kick eventfd.
            rig.wait_until("kick", || rig.kicks[1].read().is_ok());
            rig.run(1); // what the vring worker does on a kick
            assert_eq!(rig.vrings[1].queue_next_avail(), 2 + completed as u16);
        }
    }
    assert_eq!(rig.handler.max_current.load(Ordering::SeqCst), 2);
    let mut ids: Vec<u32> = rig.used(1).iter().map(|e| e.0).collect();
    ids.sort();
    let mut want: Vec<u32> = heads.iter().map(|&h| u32::from(h)).collect();
    want.sort();
    assert_eq!(ids, want);
    rig.wait_until("permits back", || rig.dev.inflight() == 0);
}

#[test]
fn bound_is_per_device_across_queues() {
    let mut rig = Rig::new(2, 1);
    rig.push(1, vec![Seg::R(request(OP_GATED, 2, b"")), Seg::W(64)]);
    rig.push(2, vec![Seg::R(request(OP_ECHO, 4, b"")), Seg::W(64)]);
    rig.run(1);
    rig.wait_until("gated request running", || rig.handler.current.load(Ordering::SeqCst) == 1);
    rig.run(2);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(rig.vrings[2].queue_next_avail(), 0, "queue 2 popped without a permit");
    rig.handler.gate.add_permits(1);
    rig.wait_used(1, 1);
    // Queue 2 (not the completing queue) is woken.
    rig.wait_until("kick on queue 2", || rig.kicks[2].read().is_ok());
    rig.run(2);
    assert_eq!(rig.wait_used(2, 1)[0].1, 16);
}

#[test]
fn multiqueue_and_high_priority_queue() {
    let mut rig = Rig::new(2, 8);
    for q in 0..3 {
        let (head, addrs) = rig.push(q, vec![Seg::R(request(OP_ECHO, 10 + q as u64, b"q")), Seg::W(64)]);
        rig.run(q);
        assert_eq!(rig.wait_used(q, 1), vec![(u32::from(head), 17)]);
        assert_eq!(rig.read(addrs[1], 16), out_header(17, 0, 10 + q as u64));
    }
    assert_eq!(rig.dev.requests_per_queue(), vec![1, 1, 1]);
    // Events for queues that do not exist are ignored.
    rig.dev.handle_event(7, EventSet::IN, &rig.vrings, 0).unwrap();
}

#[test]
fn completion_after_queue_stop_is_dropped() {
    let mut rig = Rig::new(1, 8);
    let (_, addrs) = rig.push(1, vec![Seg::R(request(OP_GATED, 2, b"")), Seg::W(64)]);
    rig.run(1);
    rig.wait_until("request running", || rig.handler.current.load(Ordering::SeqCst) == 1);
    // GET_VRING_BASE: queue not ready, then stop_vring; then the front-end
    // restarts the queue (ready again) before the old request finishes.
    rig.vrings[1].set_queue_ready(false);
    rig.dev.stop_vring(1).unwrap();
    rig.vrings[1].set_queue_ready(true);
    rig.handler.gate.add_permits(1);
    rig.wait_until("handler done", || rig.handler.finished.load(Ordering::SeqCst) == 1);
    rig.wait_until("permit back", || rig.dev.inflight() == 0);
    assert!(rig.used(1).is_empty());
    assert_eq!(rig.read(addrs[1], 64), vec![0xEE; 64]);
    assert!(!rig.signalled(1));
}

#[test]
fn completion_after_reset_or_disconnect_is_dropped() {
    let mut rig = Rig::new(1, 8);
    let (_, a1) = rig.push(1, vec![Seg::R(request(OP_GATED, 2, b"")), Seg::W(64)]);
    rig.run(1);
    rig.wait_until("request running", || rig.handler.current.load(Ordering::SeqCst) == 1);
    rig.dev.reset_device();
    rig.handler.gate.add_permits(1);
    rig.wait_until("permit back", || rig.dev.inflight() == 0);
    assert!(rig.used(1).is_empty());
    assert_eq!(rig.read(a1[1], 64), vec![0xEE; 64]);

    // New requests after the reset complete normally...
    let (h2, _) = rig.push(1, vec![Seg::R(request(OP_GATED, 4, b"")), Seg::W(64)]);
    rig.run(1);
    rig.handler.gate.add_permits(1);
    assert_eq!(rig.wait_used(1, 1), vec![(u32::from(h2), 16)]);

    // ...until the front-end disconnects.
    let (_, a3) = rig.push(1, vec![Seg::R(request(OP_GATED, 6, b"")), Seg::W(64)]);
    rig.run(1);
    rig.wait_until("request running", || rig.handler.current.load(Ordering::SeqCst) == 1);
    rig.dev.disconnect();
    rig.handler.gate.add_permits(1);
    rig.wait_until("permit back", || rig.dev.inflight() == 0);
    assert_eq!(rig.used(1).len(), 1);
    assert_eq!(rig.read(a3[1], 64), vec![0xEE; 64]);
}

#[test]
fn event_idx_notification_suppression() {
    let mut rig = Rig::new(1, 8);
    rig.enable_event_idx();
    // The guest asks to be notified only once the used index passes 5.
    rig.set_used_event(1, 5);
    rig.push(1, vec![Seg::R(request(OP_ECHO, 2, b"")), Seg::W(64)]);
    rig.run(1);
    rig.wait_used(1, 1);
    rig.wait_until("completion done", || rig.dev.inflight() == 0);
    // Draining re-enabled notifications: avail_event = next available index.
    assert_eq!(rig.avail_event(1), 1);
    assert!(!rig.signalled(1), "notified although used_event says not yet");

    // Now the guest wants a notification for the next used entry (index 1).
    rig.set_used_event(1, 1);
    rig.push(1, vec![Seg::R(request(OP_ECHO, 4, b"")), Seg::W(64)]);
    rig.run(1);
    rig.wait_used(1, 2);
    rig.wait_until("notification", || rig.signalled(1));
    assert_eq!(rig.avail_event(1), 2);
}

#[test]
fn config_space_slices() {
    let rig = Rig::new(2, 8);
    let mut full = vec![0u8; CONFIG_LEN];
    full[..4].copy_from_slice(b"myfs");
    full[36..].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(rig.dev.get_config(0, 40), full);
    assert_eq!(rig.dev.get_config(36, 4), vec![2, 0, 0, 0]);
    assert_eq!(rig.dev.get_config(2, 3), b"fs\0".to_vec());
    assert_eq!(rig.dev.get_config(38, 10), vec![0, 0]);
    assert!(rig.dev.get_config(40, 1).is_empty());
    assert!(rig.dev.get_config(u32::MAX, u32::MAX).is_empty());
    assert_eq!(rig.dev.get_config(1, u32::MAX), full[1..].to_vec());
    assert!(rig.dev.get_config(0, 0).is_empty());
    for offset in (0..=64u32).chain([u32::MAX - 1, u32::MAX]) {
        for size in (0..=64u32).chain([u32::MAX - 1, u32::MAX]) {
            let got = rig.dev.get_config(offset, size);
            let start = (offset as usize).min(CONFIG_LEN);
            let want_len = (size as usize).min(CONFIG_LEN - start);
            assert_eq!(got.len(), want_len, "offset {offset} size {size}");
            assert_eq!(got[..], full[start..start + want_len], "offset {offset} size {size}");
        }
    }
    assert!(config_slice(&[], 0, 5).is_empty());
}

#[test]
fn tag_and_options_validation() {
    let ok = VhostUserOptions::default();
    let cfg = DeviceConfig::try_from(&ok).unwrap();
    assert_eq!(cfg.num_queues, 2);
    assert_eq!(cfg.config_space[..36], [0u8; 36]);
    let tag36 = "a".repeat(36);
    let cfg = DeviceConfig::try_from(&VhostUserOptions { tag: Some(tag36.clone()), ..ok.clone() }).unwrap();
    assert_eq!(&cfg.config_space[..36], tag36.as_bytes());
    for bad in [
        VhostUserOptions { tag: Some("a".repeat(37)), ..ok.clone() },
        VhostUserOptions { tag: Some("a\0b".into()), ..ok.clone() },
        VhostUserOptions { num_request_queues: 0, ..ok.clone() },
        VhostUserOptions { num_request_queues: 64, ..ok.clone() },
        VhostUserOptions { queue_size: 2048, ..ok.clone() },
        VhostUserOptions { queue_size: 1000, ..ok.clone() },
        VhostUserOptions { queue_size: 0, ..ok.clone() },
        VhostUserOptions { max_inflight: 0, ..ok.clone() },
    ] {
        let err = DeviceConfig::try_from(&bad).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
    }
}

#[test]
fn features_and_protocol_features() {
    let rig = Rig::new(3, 8);
    let want = (1u64 << 32) | (1 << 29) | (1 << 28) | (1 << 30);
    assert_eq!(rig.dev.features(), want);
    assert_eq!(VIRTIO_FEATURES, want);
    let p = rig.dev.protocol_features();
    assert_eq!(
        p,
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
    );
    // Bits as the spec numbers them: MQ 0, REPLY_ACK 3, BACKEND_REQ 5,
    // CONFIG 9, BACKEND_SEND_FD 10, CONFIGURE_MEM_SLOTS 15.
    assert_eq!(p.bits(), (1 << 0) | (1 << 3) | (1 << 5) | (1 << 9) | (1 << 10) | (1 << 15));
    assert_eq!(rig.dev.num_queues(), 4);
    assert_eq!(rig.dev.max_queue_size(), usize::from(QSIZE));
    assert_eq!(rig.dev.queues_per_thread(), vec![0b1111]);
}

#[test]
fn dax_window_offers_shmem_and_one_region() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let handler: Arc<dyn RequestHandler> = Arc::new(TestHandler::default());
    let dev = |dax_window| {
        let opts = VhostUserOptions { dax_window, ..VhostUserOptions::default() };
        let cfg = DeviceConfig::try_from(&opts).unwrap();
        FsDevice::new(cfg, handler.clone(), rt.handle().clone(), BackendChannel::new(), Default::default())
    };
    let off = dev(None);
    assert!(!off.protocol_features().contains(VhostUserProtocolFeatures::SHMEM));
    assert!(off.get_shmem_config().is_err());
    let on = dev(Some(64 << 20));
    let p = on.protocol_features();
    assert!(p.contains(
        VhostUserProtocolFeatures::SHMEM
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::BACKEND_SEND_FD
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    ));
    assert_eq!(p.bits() & (1 << 22), 1 << 22, "SHMEM is bit 22 for QEMU 11.1");
    let c = on.get_shmem_config().unwrap();
    let (n, sizes) = (c.nregions, c.memory_sizes);
    assert_eq!((n, sizes[0], sizes[1]), (1, 64 << 20, 0));
    for bad in [0, 1 << 20, 3 << 20, 6 << 20, 2 << 40] {
        let opts = VhostUserOptions { dax_window: Some(bad), ..VhostUserOptions::default() };
        assert!(DeviceConfig::try_from(&opts).is_err(), "{bad}");
    }
}

// ---- serve() over a real socket ----

const GET_FEATURES: u32 = 1;
const GET_PROTOCOL_FEATURES: u32 = 15;

/// Send a header-only vhost-user request and read a u64 reply.
fn vhost_get_u64(sock: &mut UnixStream, request: u32) -> u64 {
    let mut msg = Vec::new();
    msg.extend_from_slice(&request.to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes()); // version 1
    msg.extend_from_slice(&0u32.to_le_bytes());
    sock.write_all(&msg).unwrap();
    let mut reply = [0u8; 20];
    sock.read_exact(&mut reply).unwrap();
    assert_eq!(u32::from_le_bytes(reply[0..4].try_into().unwrap()), request);
    assert_eq!(u32::from_le_bytes(reply[4..8].try_into().unwrap()) & 0x4, 0x4, "reply flag");
    assert_eq!(u32::from_le_bytes(reply[8..12].try_into().unwrap()), 8);
    u64::from_le_bytes(reply[12..20].try_into().unwrap())
}

fn connect_retry(path: &std::path::Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => {
                assert!(Instant::now() < deadline, "connect {}: {e}", path.display());
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap()
}

#[test]
fn serve_socket_path_answers_and_returns_on_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vu.sock");
    std::fs::write(&path, b"stale").unwrap();
    let rt = test_runtime();
    let handle = rt.handle().clone();
    let p2 = path.clone();
    let server = std::thread::spawn(move || {
        serve(Listen::SocketPath(p2), Arc::new(TestHandler::default()), VhostUserOptions::default(), handle)
    });
    let mut sock = connect_retry(&path);
    assert_eq!(vhost_get_u64(&mut sock, GET_FEATURES), VIRTIO_FEATURES);
    assert_eq!(vhost_get_u64(&mut sock, GET_PROTOCOL_FEATURES), device::protocol_features(false).bits());
    drop(sock);
    server.join().unwrap().unwrap();
    assert!(!path.exists(), "socket file left behind");
}

#[test]
fn serve_inherited_fd_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vu.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.into_raw_fd();
    let rt = test_runtime();
    let handle = rt.handle().clone();
    let opts = VhostUserOptions { keep_serving: true, ..VhostUserOptions::default() };
    let server = std::thread::spawn(move || {
        serve_connections(
            Listen::Fd(fd),
            Arc::new(TestHandler::default()),
            opts,
            handle,
            BackendChannel::new(),
            Some(2),
        )
    });
    for _ in 0..2 {
        let mut sock = connect_retry(&path);
        assert_eq!(vhost_get_u64(&mut sock, GET_FEATURES), VIRTIO_FEATURES);
        drop(sock);
    }
    server.join().unwrap().unwrap();
}

#[test]
fn serve_rejects_bad_input() {
    let rt = test_runtime();
    let err = serve(
        Listen::SocketPath("/nonexistent-dir/x.sock".into()),
        Arc::new(TestHandler::default()),
        VhostUserOptions::default(),
        rt.handle().clone(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent-dir/x.sock"), "{err}");

    let err = serve(
        Listen::SocketPath("/tmp/unused.sock".into()),
        Arc::new(TestHandler::default()),
        VhostUserOptions { tag: Some("x".repeat(40)), ..VhostUserOptions::default() },
        rt.handle().clone(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);

    let file = tempfile::tempfile().unwrap();
    let err = serve(
        Listen::Fd(file.into_raw_fd()),
        Arc::new(TestHandler::default()),
        VhostUserOptions::default(),
        rt.handle().clone(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn backend_channel_starts_empty() {
    let ch = BackendChannel::new();
    assert!(ch.get().is_none());
    assert!(format!("{ch:?}").contains("connected: false"));
}
