//! An in-process vhost-user virtio-fs FRONT-END (what QEMU plus a guest kernel
//! are to the daemon), for tests and benchmarks: it drives any virtio-fs
//! daemon (ovfs, virtiofsd) through its unix socket without a guest. The
//! daemon itself never uses this module.
//!
//! It speaks vhost-user through the `vhost` crate's front-end side, gives the
//! daemon guest memory from a memfd ([`mem::GuestMem`], SET_MEM_TABLE), and
//! builds its own split virtqueues (descriptor table, available and used rings,
//! `VIRTIO_RING_F_EVENT_IDX` when the daemon offers it). Queue 0 is the
//! high-priority queue, queues 1..=N the request queues.
//!
//! Each queue has a fixed number of request slots: slot `s` owns descriptors
//! `2s` (readable, the request) and `2s+1` (writable, the reply) and two buffers
//! of `slot_size` bytes. [`Frontend::submit`] publishes raw request bytes (any
//! bytes: the hostile-guest suite uses it as is), [`Frontend::wait`] returns
//! completions in whatever order the daemon finishes them. Everything read back
//! from the rings is untrusted: a daemon that reports an unknown descriptor, a
//! completion twice, or a length past the buffer gets an `InvalidData` error,
//! never a panic or an access outside guest memory.
//!
//! FUSE helpers ([`Frontend::init`], [`Frontend::fuse`]) encode with
//! `crate::fuse::client`; `crate::fuse` knows nothing of this module.
//!
//! DAX ([`FrontendOptions::dax`]): when the daemon offers SHMEM, the
//! front-end acks BACKEND_REQ + BACKEND_SEND_FD + SHMEM, reserves a window of
//! the size GET_SHMEM_CONFIG gives for region 0 ([`dax::DaxWindow`]), hands the
//! daemon a back-end request channel (SET_BACKEND_REQ_FD, replies acked) and
//! serves its SHMEM_MAP / UNMAP requests on a thread into that window.

pub mod dax;
pub mod mem;
pub mod workload;

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend as VuFrontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::fuse::abi::{self, Pod};
use crate::fuse::client::{self, Reply};
use mem::GuestMem;

/// VIRTIO_F_VERSION_1.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Size of the FUSE reply header.
const OUT_HEADER: usize = 16;

/// INIT flags offered by [`Frontend::init`] (a subset of what Linux offers).
pub const DEFAULT_INIT_FLAGS: u64 = abi::FUSE_ASYNC_READ
    | abi::FUSE_BIG_WRITES
    | abi::FUSE_MAX_PAGES
    | abi::FUSE_PARALLEL_DIROPS
    | abi::FUSE_DO_READDIRPLUS
    | abi::FUSE_READDIRPLUS_AUTO
    | abi::FUSE_ASYNC_DIO;

/// How the front-end sets the device up.
#[derive(Clone, Debug)]
pub struct FrontendOptions {
    /// Request queues (the high-priority queue comes on top).
    pub request_queues: usize,
    /// Descriptors per queue (power of two, at least `2 * slots_per_queue`).
    pub queue_size: u16,
    /// Requests in flight at once per queue.
    pub slots_per_queue: usize,
    /// Bytes of each slot's request buffer and of its reply buffer.
    pub slot_size: usize,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX when offered (Linux guests do).
    pub event_idx: bool,
    /// How long [`Frontend::wait`] waits for a completion before `TimedOut`.
    pub timeout: Duration,
    /// Set up the DAX window when the daemon offers SHMEM (see the module docs).
    pub dax: bool,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            request_queues: 1,
            queue_size: 256,
            slots_per_queue: 64,
            slot_size: (1 << 20) + 4096,
            event_idx: true,
            timeout: Duration::from_secs(30),
            dax: false,
        }
    }
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Virtqueue index (0 = high priority).
    pub queue: usize,
    /// What [`Frontend::submit`] returned.
    pub token: u64,
    /// The length the daemon put in the used ring (untrusted).
    pub used_len: u32,
    /// The reply bytes: the first `min(used_len, reply_capacity, copy limit)`.
    pub reply: Vec<u8>,
}

impl Completion {
    /// The reply parsed as a FUSE reply (`None` when malformed or truncated).
    pub fn fuse(&self) -> Option<Reply> {
        Reply::parse(&self.reply)
    }
}

/// The virtio-fs config space (`tag[36]`, `num_request_queues`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    pub tag: String,
    pub num_request_queues: u32,
}

struct InFlight {
    token: u64,
    capacity: usize,
}

/// One split virtqueue the front-end owns.
struct Vq {
    size: u16,
    desc: usize,
    avail: usize,
    used: usize,
    /// Guest address of slot 0's request buffer.
    slots: usize,
    next_avail: u16,
    last_used: u16,
    free: Vec<usize>,
    inflight: Vec<Option<InFlight>>,
    kick: EventFd,
    call: EventFd,
}

/// A connected, running virtio-fs front-end.
pub struct Frontend {
    vu: VuFrontend,
    mem: GuestMem,
    queues: Vec<Vq>,
    opts: FrontendOptions,
    event_idx: bool,
    next_token: u64,
    next_unique: u64,
    copy_limit: usize,
    broken: Option<String>,
    dax: Option<std::sync::Arc<dax::DaxWindow>>,
}

fn vu_err(what: &str) -> impl FnOnce(vhost::Error) -> io::Error + '_ {
    move |e| io::Error::other(format!("vhost-user {what}: {e}"))
}

fn round_page(n: usize) -> usize {
    n.next_multiple_of(4096)
}

impl Frontend {
    /// Connect to the daemon at `socket` and bring the device up (features,
    /// memory table, 1 + `request_queues` enabled queues). The FUSE session is
    /// not started: call [`Frontend::init`] first.
    pub fn connect(socket: &Path, opts: FrontendOptions) -> io::Result<Frontend> {
        let nq = opts.request_queues.checked_add(1).ok_or_else(|| io::Error::other("too many queues"))?;
        let qs = opts.queue_size as usize;
        if !qs.is_power_of_two() || opts.slots_per_queue == 0 || opts.slots_per_queue * 2 > qs {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "queue_size must be a power of two >= 2 * slots_per_queue",
            ));
        }
        // Memory layout: per queue its three ring parts (page-aligned), then
        // the slot buffers of every queue.
        let ring_bytes = round_page(16 * qs) + round_page(6 + 2 * qs) + round_page(6 + 8 * qs);
        let slot_pair = 2 * opts.slot_size.next_multiple_of(64);
        let slots_total = nq
            .checked_mul(opts.slots_per_queue)
            .and_then(|n| n.checked_mul(slot_pair))
            .ok_or_else(|| io::Error::other("guest memory too large"))?;
        let mem = GuestMem::new(nq * ring_bytes + slots_total)?;

        let mut vu = VuFrontend::connect(socket, nq as u64).map_err(vu_err("connect"))?;
        vu.set_owner().map_err(vu_err("SET_OWNER"))?;
        let offered = vu.get_features().map_err(vu_err("GET_FEATURES"))?;
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        for (bit, name) in [(VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1"), (proto_bit, "PROTOCOL_FEATURES")] {
            if offered & bit == 0 {
                return Err(io::Error::other(format!("daemon does not offer {name}")));
            }
        }
        let event_idx = opts.event_idx && offered & VIRTIO_RING_F_EVENT_IDX != 0;
        let pf = vu.get_protocol_features().map_err(vu_err("GET_PROTOCOL_FEATURES"))?;
        let mut want =
            VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ;
        if opts.dax {
            want |= VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::BACKEND_SEND_FD
                | VhostUserProtocolFeatures::SHMEM;
        }
        let acked = pf & want;
        vu.set_protocol_features(acked).map_err(vu_err("SET_PROTOCOL_FEATURES"))?;
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every following message waits for the daemon's ack: errors show up
            // at the message that caused them.
            vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if acked.contains(VhostUserProtocolFeatures::MQ) {
            let max = vu.get_queue_num().map_err(vu_err("GET_QUEUE_NUM"))?;
            if (max as usize) < nq {
                return Err(io::Error::other(format!("daemon supports {max} queues, {nq} wanted")));
            }
        } else if nq > 2 {
            return Err(io::Error::other("daemon does not offer MQ"));
        }
        let mut features = VIRTIO_F_VERSION_1 | proto_bit;
        if event_idx {
            features |= VIRTIO_RING_F_EVENT_IDX;
        }
        vu.set_features(features).map_err(vu_err("SET_FEATURES"))?;

        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: mem.len() as u64,
            userspace_addr: mem.host_addr(0),
            mmap_offset: 0,
            mmap_handle: mem.fd(),
        };
        vu.set_mem_table(&[region]).map_err(vu_err("SET_MEM_TABLE"))?;
        let dax = if acked.contains(VhostUserProtocolFeatures::SHMEM | VhostUserProtocolFeatures::BACKEND_REQ) {
            Some(Self::setup_dax(&mut vu)?)
        } else {
            None
        };

        let mut queues = Vec::with_capacity(nq);
        for q in 0..nq {
            let desc = q * ring_bytes;
            let avail = desc + round_page(16 * qs);
            let used = avail + round_page(6 + 2 * qs);
            let slots = nq * ring_bytes + q * opts.slots_per_queue * slot_pair;
            let vq = Vq {
                size: opts.queue_size,
                desc,
                avail,
                used,
                slots,
                next_avail: 0,
                last_used: 0,
                free: (0..opts.slots_per_queue).rev().collect(),
                inflight: (0..opts.slots_per_queue).map(|_| None).collect(),
                kick: EventFd::new(EFD_NONBLOCK)?,
                call: EventFd::new(EFD_NONBLOCK)?,
            };
            vu.set_vring_num(q, opts.queue_size).map_err(vu_err("SET_VRING_NUM"))?;
            let cfg = VringConfigData {
                queue_max_size: opts.queue_size,
                queue_size: opts.queue_size,
                flags: 0,
                desc_table_addr: mem.host_addr(desc),
                used_ring_addr: mem.host_addr(used),
                avail_ring_addr: mem.host_addr(avail),
                log_addr: None,
            };
            vu.set_vring_addr(q, &cfg).map_err(vu_err("SET_VRING_ADDR"))?;
            vu.set_vring_base(q, 0).map_err(vu_err("SET_VRING_BASE"))?;
            vu.set_vring_call(q, &vq.call).map_err(vu_err("SET_VRING_CALL"))?;
            vu.set_vring_kick(q, &vq.kick).map_err(vu_err("SET_VRING_KICK"))?;
            queues.push(vq);
        }
        // With PROTOCOL_FEATURES rings start disabled; enable after KICK.
        for q in 0..nq {
            vu.set_vring_enable(q, true).map_err(vu_err("SET_VRING_ENABLE"))?;
        }
        Ok(Frontend {
            vu,
            mem,
            queues,
            opts,
            event_idx,
            next_token: 1,
            next_unique: 2,
            copy_limit: usize::MAX,
            broken: None,
            dax,
        })
    }

    /// GET_SHMEM_CONFIG, reserve region 0, SET_BACKEND_REQ_FD, and a thread
    /// serving the daemon's SHMEM_MAP / UNMAP requests until it disconnects.
    fn setup_dax(vu: &mut VuFrontend) -> io::Result<std::sync::Arc<dax::DaxWindow>> {
        use vhost::vhost_user::FrontendReqHandler;
        let cfg = vu.get_shmem_config().map_err(vu_err("GET_SHMEM_CONFIG"))?;
        let (n, sizes) = (cfg.nregions, cfg.memory_sizes);
        if n == 0 || sizes[0] == 0 {
            return Err(io::Error::other("daemon offers SHMEM but no region 0"));
        }
        let win = std::sync::Arc::new(dax::DaxWindow::new(sizes[0])?);
        let mut handler =
            FrontendReqHandler::new(win.clone()).map_err(|e| io::Error::other(format!("back-end channel: {e}")))?;
        // Without this the daemon waits forever for the ack of its map request.
        handler.set_reply_ack_flag(true);
        struct Raw(i32);
        impl AsRawFd for Raw {
            fn as_raw_fd(&self) -> i32 {
                self.0
            }
        }
        vu.set_backend_request_fd(&Raw(handler.get_tx_raw_fd())).map_err(vu_err("SET_BACKEND_REQ_FD"))?;
        std::thread::Builder::new().name("frontend-dax".into()).spawn(move || {
            // Ends when the daemon closes its end of the channel.
            while handler.handle_request().is_ok() {}
        })?;
        Ok(win)
    }

    /// The DAX window, when [`FrontendOptions::dax`] was asked and the daemon
    /// offers one.
    pub fn dax_window(&self) -> Option<&dax::DaxWindow> {
        self.dax.as_deref()
    }

    /// The options the front-end runs with.
    pub fn options(&self) -> &FrontendOptions {
        &self.opts
    }

    /// Whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Number of virtqueues (1 high-priority + request queues).
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Requests submitted on queue `q` and not completed yet.
    pub fn in_flight(&self, q: usize) -> usize {
        self.queues.get(q).map_or(0, |vq| vq.inflight.len() - vq.free.len())
    }

    /// Copy at most `limit` bytes of each reply into [`Completion::reply`]
    /// (benchmarks that only check the header avoid copying 1 MiB each time).
    pub fn set_reply_copy_limit(&mut self, limit: usize) {
        self.copy_limit = limit;
    }

    /// Guest addresses of queue `q`'s descriptor table, available ring and
    /// used ring (for tests that inspect or corrupt the rings).
    pub fn ring_offsets(&self, q: usize) -> Option<(usize, usize, usize)> {
        self.queues.get(q).map(|vq| (vq.desc, vq.avail, vq.used))
    }

    /// The guest memory (for tests that place their own bytes).
    pub fn memory(&self) -> &GuestMem {
        &self.mem
    }

    /// Read the virtio-fs config space (needs the CONFIG protocol feature).
    pub fn config(&mut self) -> io::Result<FsConfig> {
        let buf = [0u8; 40];
        let (_, payload) = self
            .vu
            .get_config(0, buf.len() as u32, VhostUserConfigFlags::empty(), &buf)
            .map_err(vu_err("GET_CONFIG"))?;
        if payload.len() < 40 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short config space"));
        }
        let tag_end = payload[..36].iter().position(|&b| b == 0).unwrap_or(36);
        Ok(FsConfig {
            tag: String::from_utf8_lossy(&payload[..tag_end]).into_owned(),
            num_request_queues: u32::from_le_bytes([payload[36], payload[37], payload[38], payload[39]]),
        })
    }

    fn check_broken(&self) -> io::Result<()> {
        match &self.broken {
            Some(why) => Err(io::Error::new(io::ErrorKind::InvalidData, why.clone())),
            None => Ok(()),
        }
    }

    fn queue(&self, q: usize) -> io::Result<&Vq> {
        self.queues.get(q).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no queue {q}")))
    }

    /// Publish one request on queue `q`: `req` (any bytes) in one readable
    /// descriptor, followed by one writable descriptor of `reply_capacity`
    /// bytes (none when 0). Returns a token that comes back in the
    /// [`Completion`]. `WouldBlock` when all slots of the queue are in flight.
    pub fn submit(&mut self, q: usize, req: &[u8], reply_capacity: usize) -> io::Result<u64> {
        self.check_broken()?;
        let slot_size = self.opts.slot_size;
        if req.len() > slot_size || reply_capacity > slot_size {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "request or reply larger than a slot"));
        }
        let token = self.next_token;
        let vq = self.queue(q)?;
        let Some(&slot) = vq.free.last() else {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "all slots of the queue are in flight"));
        };
        let slot_stride = 2 * slot_size.next_multiple_of(64);
        let req_gpa = vq.slots + slot * slot_stride;
        let reply_gpa = req_gpa + slot_stride / 2;
        let head = (2 * slot) as u16;
        self.mem.write(req_gpa, req)?;
        let (desc, avail, size, next_avail) = (vq.desc, vq.avail, vq.size, vq.next_avail);
        let flags = if reply_capacity > 0 { VRING_DESC_F_NEXT } else { 0 };
        self.write_desc(desc, head, req_gpa as u64, req.len() as u32, flags, head + 1)?;
        if reply_capacity > 0 {
            self.write_desc(desc, head + 1, reply_gpa as u64, reply_capacity as u32, VRING_DESC_F_WRITE, 0)?;
        }
        let ring_slot = avail + 4 + 2 * (next_avail % size) as usize;
        self.mem.store_u16(ring_slot, head, Ordering::Relaxed)?;
        let new_avail = next_avail.wrapping_add(1);
        // Release: descriptors and ring entry are visible before the index.
        self.mem.store_u16(avail + 2, new_avail, Ordering::Release)?;
        let vq = &mut self.queues[q];
        vq.free.pop();
        vq.inflight[slot] = Some(InFlight { token, capacity: reply_capacity });
        vq.next_avail = new_avail;
        self.next_token += 1;
        self.notify(q, next_avail, new_avail)?;
        Ok(token)
    }

    fn write_desc(&self, table: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) -> io::Result<()> {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write(table + 16 * i as usize, &d)
    }

    /// Kick queue `q` unless the daemon asked not to be (event index or
    /// VRING_USED_F_NO_NOTIFY).
    fn notify(&self, q: usize, old: u16, new: u16) -> io::Result<()> {
        let vq = &self.queues[q];
        // The index store must be visible before we read the daemon's hint.
        fence(Ordering::SeqCst);
        let need = if self.event_idx {
            let avail_event = self.mem.load_u16(vq.used + 4 + 8 * vq.size as usize, Ordering::Acquire)?;
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.mem.load_u16(vq.used, Ordering::Acquire)? & VRING_USED_F_NO_NOTIFY == 0
        };
        if need {
            vq.kick.write(1)?;
        }
        Ok(())
    }

    /// Collect the completions the daemon has published on queue `q`.
    pub fn poll(&mut self, q: usize, out: &mut Vec<Completion>) -> io::Result<usize> {
        self.check_broken()?;
        match self.harvest(q, out) {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                self.broken = Some(e.to_string());
                Err(e)
            }
            r => r,
        }
    }

    fn harvest(&mut self, q: usize, out: &mut Vec<Completion>) -> io::Result<usize> {
        let slot_stride = 2 * self.opts.slot_size.next_multiple_of(64);
        let copy_limit = self.copy_limit;
        let vq = self.queue(q)?;
        let (used, size, slots) = (vq.used, vq.size, vq.slots);
        let used_idx = self.mem.load_u16(used + 2, Ordering::Acquire)?;
        let new = used_idx.wrapping_sub(vq.last_used);
        let in_flight = vq.inflight.len() - vq.free.len();
        if new as usize > in_flight {
            return Err(bad(format!("queue {q}: used index moved by {new} with {in_flight} requests in flight")));
        }
        let mut idx = vq.last_used;
        for _ in 0..new {
            let elem = used + 4 + 8 * (idx % size) as usize;
            let id = self.mem.read_u32(elem)?;
            let len = self.mem.read_u32(elem + 4)?;
            let vq = &mut self.queues[q];
            let slot = (id / 2) as usize;
            if id % 2 != 0 || slot >= vq.inflight.len() {
                return Err(bad(format!("queue {q}: used ring names descriptor {id}, not a request head")));
            }
            let Some(f) = vq.inflight[slot].take() else {
                return Err(bad(format!("queue {q}: descriptor {id} completed but not in flight")));
            };
            vq.free.push(slot);
            vq.last_used = idx.wrapping_add(1);
            let n = (len as usize).min(f.capacity).min(copy_limit);
            let mut reply = vec![0u8; n];
            self.mem.read(slots + slot * slot_stride + slot_stride / 2, &mut reply)?;
            out.push(Completion { queue: q, token: f.token, used_len: len, reply });
            idx = idx.wrapping_add(1);
        }
        Ok(new as usize)
    }

    /// Wait until at least one completion arrives on any queue of `queues`
    /// and return everything completed there. `TimedOut` after the configured
    /// timeout (a dead or stuck daemon).
    pub fn wait(&mut self, queues: &[usize]) -> io::Result<Vec<Completion>> {
        let deadline = Instant::now() + self.opts.timeout;
        let mut out = Vec::new();
        loop {
            for &q in queues {
                self.poll(q, &mut out)?;
            }
            if !out.is_empty() {
                return Ok(out);
            }
            if queues.iter().all(|&q| self.in_flight(q) == 0) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "nothing in flight"));
            }
            // Ask for a signal at the next used entry, then re-check before
            // sleeping so a completion published meanwhile is not missed.
            for &q in queues {
                let vq = &self.queues[q];
                if self.event_idx {
                    self.mem.store_u16(vq.avail + 4 + 2 * vq.size as usize, vq.last_used, Ordering::Relaxed)?;
                }
            }
            fence(Ordering::SeqCst);
            let ready = queues.iter().any(|&q| {
                let vq = &self.queues[q];
                self.mem.load_u16(vq.used + 2, Ordering::Acquire).map(|i| i != vq.last_used).unwrap_or(true)
            });
            if ready {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no completion from the daemon"));
            }
            let mut fds: Vec<libc::pollfd> = queues
                .iter()
                .map(|&q| libc::pollfd { fd: self.queues[q].call.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                .collect();
            let ms = left.as_millis().clamp(1, 1000) as libc::c_int;
            // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for &q in queues {
                // Non-blocking: clears the counter, EAGAIN when it was zero.
                let _ = self.queues[q].call.read();
            }
        }
    }

    /// Submit one request and wait for its own completion (other completions
    /// on the queue that arrive meanwhile are dropped: use `submit`/`wait`
    /// when several requests are in flight).
    pub fn call(&mut self, q: usize, req: &[u8], reply_capacity: usize) -> io::Result<Completion> {
        let token = self.submit(q, req, reply_capacity)?;
        loop {
            for c in self.wait(&[q])? {
                if c.token == token {
                    return Ok(c);
                }
            }
        }
    }

    /// The next FUSE `unique` (even: bit 0 marks interrupts).
    pub fn unique(&mut self) -> u64 {
        let u = self.next_unique;
        self.next_unique += 2;
        u
    }

    /// Send one FUSE request on request queue 1 with a reply buffer of a whole
    /// slot and parse the reply. For READ use [`Frontend::fuse_with_capacity`]
    /// with `16 + size`, as Linux does: virtiofsd 1.14 answers EIO to a READ
    /// that fills `size` bytes when the writable part is larger.
    pub fn fuse(&mut self, req: &[u8]) -> io::Result<Reply> {
        self.fuse_with_capacity(req, self.opts.slot_size)
    }

    /// [`Frontend::fuse`] with a reply buffer of `reply_capacity` bytes.
    pub fn fuse_with_capacity(&mut self, req: &[u8], reply_capacity: usize) -> io::Result<Reply> {
        let c = self.call(1, req, reply_capacity)?;
        c.fuse().ok_or_else(|| bad(format!("malformed FUSE reply ({} bytes)", c.reply.len())))
    }

    /// FUSE_INIT offering `flags`; errors unless the daemon accepts.
    pub fn init(&mut self, flags: u64) -> io::Result<abi::fuse_init_out> {
        let u = self.unique();
        let r = self.fuse(&client::init(u, flags))?;
        if r.errno != 0 {
            return Err(io::Error::from_raw_os_error(r.errno));
        }
        abi::fuse_init_out::from_prefix(&r.body).ok_or_else(|| bad("short INIT reply".into()))
    }

    /// The FUSE reply header size, for [`Frontend::set_reply_copy_limit`].
    pub const FUSE_OUT_HEADER: usize = OUT_HEADER;
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}
