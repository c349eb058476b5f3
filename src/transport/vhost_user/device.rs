//! The virtio-fs device as `vhost-user-backend` sees it, and the queue core:
//! pop descriptor chains, copy requests out, run them as tokio tasks, write
//! replies back and complete chains out of order.
//!
//! Threads: `handle_event` runs on the vring worker thread of
//! `vhost-user-backend` (one thread for all queues) and pops and parses;
//! requests run as tasks on tokio worker threads, except that a request alone
//! in flight is first polled once on the vring worker thread and completes
//! there when it never waits (`Inner::run_inline`: saves two thread hops of
//! latency). The vring's `RwLock` is the only
//! lock on the path and is never held across an `.await`:
//! - pop: write lock, one chain at a time;
//! - reply copy into guest memory: read lock (so a concurrent `GET_VRING_BASE`,
//!   which takes the write lock to mark the queue not ready, waits for it);
//! - `add_used` + `needs_notification` + signal: write lock.
//!
//! A completion is dropped (never written) when the queue was stopped or reset
//! since its chain was popped (per-queue generation counter, bumped by
//! `stop_vring` / `reset_device`) or the front-end disconnected.
//!
//! Concurrency bound: one semaphore of `max_inflight` permits per device; a
//! chain is popped only with a permit in hand. A queue that finds none marks
//! itself starved and leaves its chains in the available ring; the task that
//! releases a permit writes the starved queue's kick eventfd, so the vring
//! worker thread drains it again as if the guest had kicked.

use std::io;
use std::os::unix::io::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserVirtioFeatures};
use vhost::vhost_user::Backend;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringState, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use super::{BackendChannel, VhostUserOptions, MAX_QUEUE_SIZE, MAX_REQUEST_QUEUES, MAX_TAG_LEN};
use crate::transport::RequestHandler;

/// Guest memory as the daemon maps it.
pub(super) type Mem = GuestMemoryMmap<()>;
/// The swappable guest memory shared with `vhost-user-backend`.
pub(super) type GuestMem = GuestMemoryAtomic<Mem>;
/// One virtqueue as `vhost-user-backend` keeps it.
pub(super) type Vring = VringRwLock<GuestMem>;
pub(super) type Chain = DescriptorChain<Arc<Mem>>;

/// `sizeof(struct fuse_in_header)`: shorter requests are malformed.
pub(super) const FUSE_IN_HEADER_LEN: usize = 40;
/// `sizeof(struct fuse_out_header)`.
pub(super) const FUSE_OUT_HEADER_LEN: usize = 16;
/// Largest readable part accepted (FUSE writes are at most a few MiB).
pub(super) const MAX_REQUEST_LEN: u64 = 16 << 20;
/// virtio-fs config space: `tag[36]` + `num_request_queues: u32` (LE).
pub(super) const CONFIG_LEN: usize = MAX_TAG_LEN + 4;

/// Virtio features offered.
pub(super) const VIRTIO_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// vhost-user protocol features offered (SHMEM only with a DAX window).
pub(super) fn protocol_features(dax: bool) -> VhostUserProtocolFeatures {
    let base = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD;
    if dax {
        base | VhostUserProtocolFeatures::SHMEM
    } else {
        base
    }
}

/// Validated device parameters (from [`VhostUserOptions`]).
#[derive(Clone, Debug)]
pub(super) struct DeviceConfig {
    pub(super) config_space: [u8; CONFIG_LEN],
    pub(super) num_queues: usize,
    pub(super) queue_size: usize,
    pub(super) max_inflight: usize,
    /// DAX window size (region 0), checked.
    pub(super) dax_window: Option<u64>,
}

impl TryFrom<&VhostUserOptions> for DeviceConfig {
    type Error = io::Error;

    fn try_from(opts: &VhostUserOptions) -> io::Result<Self> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        let tag = opts.tag.as_deref().unwrap_or("");
        if tag.len() > MAX_TAG_LEN {
            return Err(invalid(format!(
                "virtio-fs tag {tag:?} is {} bytes long, at most {MAX_TAG_LEN} allowed",
                tag.len()
            )));
        }
        if tag.contains('\0') {
            return Err(invalid("virtio-fs tag contains a NUL byte".to_string()));
        }
        if opts.num_request_queues == 0 || opts.num_request_queues > MAX_REQUEST_QUEUES {
            return Err(invalid(format!(
                "num_request_queues must be between 1 and {MAX_REQUEST_QUEUES}, got {}",
                opts.num_request_queues
            )));
        }
        if !opts.queue_size.is_power_of_two() || opts.queue_size > MAX_QUEUE_SIZE {
            return Err(invalid(format!(
                "queue_size must be a power of two of at most {MAX_QUEUE_SIZE}, got {}",
                opts.queue_size
            )));
        }
        if opts.max_inflight == 0 || opts.max_inflight > Semaphore::MAX_PERMITS {
            return Err(invalid(format!("max_inflight must be at least 1, got {}", opts.max_inflight)));
        }
        if let Some(len) = opts.dax_window {
            super::check_dax_window(len)?;
        }
        let mut config_space = [0u8; CONFIG_LEN];
        config_space[..tag.len()].copy_from_slice(tag.as_bytes());
        // num_request_queues <= 63, so the cast is lossless.
        config_space[MAX_TAG_LEN..].copy_from_slice(&(opts.num_request_queues as u32).to_le_bytes());
        Ok(Self {
            config_space,
            num_queues: opts.num_request_queues + 1,
            queue_size: opts.queue_size,
            max_inflight: opts.max_inflight,
            dax_window: opts.dax_window,
        })
    }
}

/// The `vhost-user-backend` device. Cheap to clone (the daemon wants `Clone`).
#[derive(Clone)]
pub(super) struct FsDevice {
    inner: Arc<Inner>,
}

struct QueueCtl {
    /// Bumped whenever the queue is stopped or the device reset: completions
    /// of chains popped under an older generation are dropped.
    generation: AtomicU64,
    /// The queue stopped popping for want of a permit and waits for a wake-up.
    starved: AtomicBool,
    /// Requests taken from this queue (logged at disconnect; tests and
    /// operators see which queues the guest uses).
    requests: AtomicU64,
}

struct Inner {
    cfg: DeviceConfig,
    handler: Arc<dyn RequestHandler>,
    rt: tokio::runtime::Handle,
    channel: BackendChannel,
    /// DAX window epoch (see `dax`): bumped on device reset.
    dax_epoch: Arc<AtomicU64>,
    event_idx: AtomicBool,
    mem: RwLock<Option<GuestMem>>,
    permits: Arc<Semaphore>,
    queues: Box<[QueueCtl]>,
    /// The vrings, captured from the first `handle_event` (all queues are
    /// served by one worker thread, so the slice is indexed by queue number).
    vrings: OnceLock<Vec<Vring>>,
    disconnected: AtomicBool,
}

impl FsDevice {
    pub(super) fn new(
        cfg: DeviceConfig,
        handler: Arc<dyn RequestHandler>,
        rt: tokio::runtime::Handle,
        channel: BackendChannel,
        dax_epoch: Arc<AtomicU64>,
    ) -> Self {
        let queues = (0..cfg.num_queues)
            .map(|_| QueueCtl {
                generation: AtomicU64::new(0),
                starved: AtomicBool::new(false),
                requests: AtomicU64::new(0),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(cfg.max_inflight)),
                cfg,
                handler,
                rt,
                channel,
                dax_epoch,
                event_idx: AtomicBool::new(false),
                mem: RwLock::new(None),
                queues,
                vrings: OnceLock::new(),
                disconnected: AtomicBool::new(false),
            }),
        }
    }

    /// The front-end is gone: drop every completion from now on.
    pub(super) fn disconnect(&self) {
        self.inner.disconnected.store(true, Ordering::SeqCst);
        let counts: Vec<String> = self
            .inner
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| format!("q{i}={}", q.requests.load(Ordering::Relaxed)))
            .collect();
        tracing::info!("vhost-user connection closed; requests per queue: {}", counts.join(" "));
    }

    /// Requests taken from each queue so far.
    #[cfg(test)]
    pub(super) fn requests_per_queue(&self) -> Vec<u64> {
        self.inner.queues.iter().map(|q| q.requests.load(Ordering::Relaxed)).collect()
    }

    /// Requests currently being handled (tests).
    #[cfg(test)]
    pub(super) fn inflight(&self) -> usize {
        self.inner.cfg.max_inflight - self.inner.permits.available_permits()
    }
}

impl VhostUserBackend for FsDevice {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.inner.cfg.num_queues
    }

    fn max_queue_size(&self) -> usize {
        self.inner.cfg.queue_size
    }

    fn features(&self) -> u64 {
        VIRTIO_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features(self.inner.cfg.dax_window.is_some())
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        match self.inner.cfg.dax_window {
            Some(len) => Ok(VhostUserShMemConfig::new(1, &[len])),
            None => Err(io::Error::from_raw_os_error(libc::ENOTSUP)),
        }
    }

    fn reset_device(&self) {
        tracing::debug!("vhost-user device reset");
        // The VMM drops the window's mappings with the device.
        self.inner.dax_epoch.fetch_add(1, Ordering::SeqCst);
        for ctl in self.inner.queues.iter() {
            ctl.generation.fetch_add(1, Ordering::SeqCst);
            ctl.starved.store(false, Ordering::SeqCst);
        }
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner.event_idx.store(enabled, Ordering::SeqCst);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        config_slice(&self.inner.cfg.config_space, offset, size).to_vec()
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.inner.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        tracing::debug!("vhost-user back-end request channel received");
        self.inner.channel.set(Some(backend));
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // num_queues <= 64 (checked in DeviceConfig).
        let n = self.inner.cfg.num_queues;
        vec![if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC) {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::warn!("cannot create the vring worker exit eventfd: {e}");
                None
            }
        }
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if let Some(ctl) = self.inner.queues.get(queue_index as usize) {
            ctl.generation.fetch_add(1, Ordering::SeqCst);
            ctl.starved.store(false, Ordering::SeqCst);
        }
        Ok(())
    }

    fn handle_event(&self, device_event: u16, evset: EventSet, vrings: &[Vring], _thread_id: usize) -> io::Result<()> {
        let q = usize::from(device_event);
        if q >= self.inner.cfg.num_queues || q >= vrings.len() {
            tracing::warn!("vhost-user: event for unknown queue {q} ignored");
            return Ok(());
        }
        if !evset.contains(EventSet::IN) {
            tracing::warn!("vhost-user: unexpected event set {evset:?} on queue {q} ignored");
            return Ok(());
        }
        self.inner.vrings.get_or_init(|| vrings.to_vec());
        // Errors are logged inside: returning one would stop the worker thread.
        self.inner.process_queue(q, &vrings[q]);
        Ok(())
    }
}

/// The part of the config space at `offset..offset + size`, clipped to the
/// config space (empty when `offset` is past its end).
pub(super) fn config_slice(config: &[u8], offset: u32, size: u32) -> &[u8] {
    let start = (offset as usize).min(config.len());
    let end = start.saturating_add(size as usize).min(config.len());
    &config[start..end]
}

/// A 16-byte `fuse_out_header` answering `unique` with EIO.
pub(super) fn eio_reply(unique: u64) -> [u8; FUSE_OUT_HEADER_LEN] {
    let mut out = [0u8; FUSE_OUT_HEADER_LEN];
    out[0..4].copy_from_slice(&(FUSE_OUT_HEADER_LEN as u32).to_le_bytes());
    out[4..8].copy_from_slice(&(-libc::EIO).to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
    out
}

fn unique_of(bytes: &[u8]) -> Option<u64> {
    let b: [u8; 8] = bytes.get(8..16)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

enum Drain {
    /// The available ring is empty (or the queue cannot be read).
    Empty,
    /// Out of permits: chains stay in the ring until a completion wakes us.
    Starved,
}

/// A chain that was popped and still has to go back to the used ring.
struct Pending {
    q: usize,
    vring: Vring,
    generation: u64,
    head: u16,
    mem: Arc<Mem>,
    chain: Chain,
    /// `unique` of the request, for error replies.
    unique: Option<u64>,
}

/// A chain the transport answers itself.
pub(super) struct Rejected {
    pub(super) reason: String,
    pub(super) unique: Option<u64>,
}

/// Holds a concurrency permit; releasing it wakes starved queues.
struct Inflight {
    inner: Arc<Inner>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        drop(self.permit.take());
        // Pairs with the fence in `Inner::acquire`: either the starved queue's
        // retry sees this permit, or we see its starved flag.
        fence(Ordering::SeqCst);
        self.inner.wake_starved();
    }
}

impl Inner {
    fn process_queue(self: &Arc<Self>, q: usize, vring: &Vring) {
        let event_idx = self.event_idx.load(Ordering::SeqCst);
        loop {
            if event_idx {
                if let Err(e) = vring.disable_notification() {
                    tracing::warn!("queue {q}: cannot disable notifications: {e}");
                    return;
                }
            }
            if let Drain::Starved = self.drain(q, vring) {
                return;
            }
            if !event_idx {
                return;
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!("queue {q}: cannot enable notifications: {e}");
                    return;
                }
            }
        }
    }

    fn memory(&self) -> Option<Arc<Mem>> {
        let mem = self.mem.read().unwrap_or_else(|p| p.into_inner());
        mem.as_ref().map(|m| m.memory().into_inner())
    }

    fn acquire(&self, q: usize) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        self.queues[q].starved.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.queues[q].starved.store(false, Ordering::SeqCst);
                Some(permit)
            }
            Err(_) => {
                tracing::debug!("queue {q}: {} requests in flight, pausing", self.cfg.max_inflight);
                None
            }
        }
    }

    fn drain(self: &Arc<Self>, q: usize, vring: &Vring) -> Drain {
        loop {
            let Some(permit) = self.acquire(q) else {
                return Drain::Starved;
            };
            let Some(mem) = self.memory() else {
                return Drain::Empty;
            };
            let (chain, generation, more) = {
                let mut state = vring.get_mut();
                let generation = self.queues[q].generation.load(Ordering::SeqCst);
                let queue = state.get_queue_mut();
                match queue.pop_descriptor_chain(mem.clone()) {
                    Some(chain) => {
                        // More chains already waiting behind this one?
                        let more = queue
                            .avail_idx(&*mem, Ordering::Acquire)
                            .map_or(true, |avail| avail.0 != queue.next_avail());
                        (chain, generation, more)
                    }
                    None => return Drain::Empty,
                }
            };
            let mut pending =
                Pending { q, vring: vring.clone(), generation, head: chain.head_index(), mem, chain, unique: None };
            match parse_request(&pending.mem, &pending.chain) {
                Ok((req, unique)) => {
                    pending.unique = Some(unique);
                    self.spawn_request(pending, req, permit, more);
                }
                Err(rejected) => {
                    tracing::warn!(
                        "queue {q}: malformed descriptor chain (head {}): {}; {}",
                        pending.head,
                        rejected.reason,
                        if rejected.unique.is_some() { "answering EIO" } else { "returning it unused" }
                    );
                    pending.unique = rejected.unique;
                    let reply = rejected.unique.map(|u| eio_reply(u).to_vec());
                    self.complete(pending, reply);
                    drop(permit);
                }
            }
        }
    }

    /// `more`: other chains are waiting in the available ring.
    fn spawn_request(self: &Arc<Self>, pending: Pending, req: Vec<u8>, permit: OwnedSemaphorePermit, more: bool) {
        if let Some(ctl) = self.queues.get(pending.q) {
            ctl.requests.fetch_add(1, Ordering::Relaxed);
        }
        // Alone in flight with nothing waiting behind it: start it right here
        // (see `run_inline`). Otherwise it goes to the runtime at once, so a
        // burst of requests is served in parallel, not one by one on this thread.
        let alone = !more && self.permits.available_permits() + 1 >= self.cfg.max_inflight;
        let guard = Inflight { inner: self.clone(), permit: Some(permit) };
        let request = self.handler.clone().handle(req);
        if alone {
            self.run_inline(pending, request, guard);
        } else {
            self.rt.spawn(Self::finish(pending, request, guard));
        }
    }

    /// Run a request to its end and complete its chain (a panic in the
    /// handler is answered with EIO).
    async fn finish(pending: Pending, request: BoxFuture<'static, Option<Vec<u8>>>, guard: Inflight) {
        let outcome = AssertUnwindSafe(request).catch_unwind().await;
        let reply = outcome.unwrap_or_else(|_| Self::panicked(&pending));
        guard.inner.complete(pending, reply);
        drop(guard);
    }

    fn panicked(pending: &Pending) -> Option<Vec<u8>> {
        tracing::warn!("queue {}: request handler panicked (head {}); answering EIO", pending.q, pending.head);
        pending.unique.map(|u| eio_reply(u).to_vec())
    }

    /// Poll a request once on this (vring worker) thread, inside the
    /// runtime's context, and hand it to the runtime only if it is not done
    /// (a request done here costs no task: completed in place).
    ///
    /// Used when the request is the only one in flight and no chain waits
    /// behind it: most requests finish
    /// without ever waiting (a passthrough GETATTR is one `fstatat`), and
    /// answering here saves the wake-up of a tokio worker and the hop back, the
    /// largest part of a lone request's latency. With others in flight tasks
    /// go straight to the runtime so requests run in parallel. A request that
    /// returns Pending was polled with a no-op waker; the runtime polls it again
    /// at once when spawned, which registers its real waker. One that panicked
    /// is not polled again: its chain is answered with EIO.
    fn run_inline(&self, pending: Pending, mut request: BoxFuture<'static, Option<Vec<u8>>>, guard: Inflight) {
        let _runtime = self.rt.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::panic::catch_unwind(AssertUnwindSafe(|| request.as_mut().poll(&mut cx))) {
            Ok(std::task::Poll::Ready(reply)) => {
                guard.inner.complete(pending, reply);
                drop(guard);
            }
            Ok(std::task::Poll::Pending) => {
                self.rt.spawn(Self::finish(pending, request, guard));
            }
            Err(_) => {
                let reply = Self::panicked(&pending);
                guard.inner.complete(pending, reply);
                drop(guard);
            }
        }
    }

    /// Is a completion popped under `generation` still wanted?
    fn live(&self, state: &VringState<GuestMem>, q: usize, generation: u64) -> bool {
        !self.disconnected.load(Ordering::SeqCst)
            && state.get_queue().ready()
            && self.queues[q].generation.load(Ordering::SeqCst) == generation
    }

    /// Write `reply` (if any) into the chain and return it to the used ring.
    fn complete(&self, pending: Pending, reply: Option<Vec<u8>>) {
        let Pending { q, vring, generation, head, mem, chain, unique } = pending;
        let len = {
            let state = vring.get_ref();
            if !self.live(&state, q, generation) {
                tracing::debug!("queue {q}: dropping completion of head {head} (queue stopped)");
                return;
            }
            match reply {
                None => 0,
                Some(reply) => write_reply(&mem, chain, &reply, unique, q, head),
            }
        };
        let mut state = vring.get_mut();
        if !self.live(&state, q, generation) {
            tracing::debug!("queue {q}: dropping completion of head {head} (queue stopped)");
            return;
        }
        if let Err(e) = state.add_used(head, len) {
            tracing::warn!("queue {q}: cannot add head {head} to the used ring: {e}");
            return;
        }
        let notify = match state.needs_notification() {
            Ok(notify) => notify,
            Err(e) => {
                tracing::warn!("queue {q}: cannot read the used event index: {e}");
                true
            }
        };
        if notify {
            if let Err(e) = state.signal_used_queue() {
                tracing::warn!("queue {q}: cannot signal the guest: {e}");
            }
        }
    }

    /// Kick every starved queue so the vring worker drains it again.
    fn wake_starved(&self) {
        for (q, ctl) in self.queues.iter().enumerate() {
            if !ctl.starved.swap(false, Ordering::SeqCst) {
                continue;
            }
            let Some(vring) = self.vrings.get().and_then(|v| v.get(q)) else {
                continue;
            };
            let state = vring.get_ref();
            if let Some(kick) = state.get_kick() {
                let one: u64 = 1;
                // SAFETY: the kick eventfd stays open while we hold the vring
                // lock (replacing it needs the write lock); we pass a pointer
                // to 8 readable bytes, the size an eventfd write takes.
                let rc = unsafe {
                    libc::write(
                        kick.as_raw_fd(),
                        (&one as *const u64).cast::<libc::c_void>(),
                        std::mem::size_of::<u64>(),
                    )
                };
                if rc < 0 {
                    tracing::warn!("queue {q}: cannot wake the queue: {}", io::Error::last_os_error());
                }
            }
        }
    }
}

/// Check a chain and copy out its readable part; returns the request and its
/// `unique`.
pub(super) fn parse_request(mem: &Mem, chain: &Chain) -> Result<(Vec<u8>, u64), Rejected> {
    let reject = |reason: String| Rejected { reason, unique: None };
    let mut readable: u64 = 0;
    let mut truncated = false;
    for desc in chain.clone() {
        if !desc.is_write_only() {
            readable += u64::from(desc.len());
        }
        // The walk stops early (TTL spent on a loop, `next` out of the table,
        // unreadable table, length overflow) with a NEXT flag still set.
        truncated = desc.has_next();
    }
    // Validate the writable part now, so a completion can always build its writer.
    Writer::<()>::new(mem, chain.clone()).map_err(|e| reject(format!("bad writable part: {e}")))?;
    let mut reader = Reader::<()>::new(mem, chain.clone()).map_err(|e| reject(format!("bad readable part: {e}")))?;

    if truncated || readable < FUSE_IN_HEADER_LEN as u64 || readable > MAX_REQUEST_LEN {
        let mut head = [0u8; 16];
        let unique = if readable >= 16 {
            io::Read::read_exact(&mut reader, &mut head).ok().and_then(|()| unique_of(&head))
        } else {
            None
        };
        let what = if truncated {
            "from a chain that loops or links outside its descriptor table"
        } else if readable < FUSE_IN_HEADER_LEN as u64 {
            "shorter than a fuse_in_header"
        } else {
            "over the request size limit"
        };
        return Err(Rejected { reason: format!("readable part of {readable} bytes is {what}"), unique });
    }
    // readable <= 16 MiB, so it fits a usize.
    let mut req = vec![0u8; readable as usize];
    io::Read::read_exact(&mut reader, &mut req).map_err(|e| reject(format!("cannot read the request: {e}")))?;
    let unique = unique_of(&req).unwrap_or(0);
    Ok((req, unique))
}

/// Write a reply into the chain's writable part; returns the used length.
pub(super) fn write_reply(mem: &Mem, chain: Chain, reply: &[u8], req_unique: Option<u64>, q: usize, head: u16) -> u32 {
    let mut writer = match Writer::<()>::new(mem, chain) {
        Ok(writer) => writer,
        Err(e) => {
            tracing::warn!("queue {q}: head {head}: bad writable part: {e}; returning it unused");
            return 0;
        }
    };
    let room = writer.available_bytes();
    let bytes: &[u8] = if reply.len() <= room {
        reply
    } else {
        let unique = unique_of(reply).or(req_unique).unwrap_or(0);
        if room >= FUSE_OUT_HEADER_LEN {
            tracing::warn!(
                "queue {q}: head {head}: reply of {} bytes does not fit in {room} writable bytes; answering EIO",
                reply.len()
            );
            let eio = eio_reply(unique);
            return match io::Write::write_all(&mut writer, &eio) {
                Ok(()) => FUSE_OUT_HEADER_LEN as u32,
                Err(e) => {
                    tracing::warn!("queue {q}: head {head}: cannot write the reply: {e}");
                    0
                }
            };
        }
        tracing::warn!(
            "queue {q}: head {head}: reply of {} bytes does not fit in {room} writable bytes, nor does an error reply; returning it unused",
            reply.len()
        );
        return 0;
    };
    match io::Write::write_all(&mut writer, bytes) {
        Ok(()) => u32::try_from(bytes.len()).unwrap_or(0),
        Err(e) => {
            tracing::warn!("queue {q}: head {head}: cannot write the reply: {e}; returning it unused");
            0
        }
    }
}
