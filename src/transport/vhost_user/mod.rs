//! vhost-user virtio-fs transport: owns the vhost-user socket, the virtio-fs
//! device model (features, config space, queues) and the path from a virtqueue
//! descriptor chain to a [`RequestHandler`] call and back.
//!
//! The vhost-user protocol itself (messages, memory table, vring setup, the
//! epoll thread that watches kick eventfds) is run by `vhost-user-backend`.
//! This module supplies the device ([`device::FsDevice`]): every kick pops the
//! available chains, copies each request out of guest memory and spawns one task
//! per request on the tokio runtime, so requests complete out of order. The
//! FUSE layer never sees a virtio type, and this module never interprets a FUSE
//! request beyond the `unique` field needed for an error reply.
//!
//! The DAX work needs the back-end request channel (`Backend`) that the
//! front-end hands over with `VHOST_USER_SET_BACKEND_REQ_FD`: pass a
//! [`BackendChannel`] to [`serve_with_backend_channel`] and keep a clone.
//! With [`VhostUserOptions::dax_window`] the device offers the shared-memory
//! window itself (`dax`): it answers `GET_SHMEM_CONFIG` and hands the FUSE
//! server a mapper that sends `BACKEND_SHMEM_MAP` / `UNMAP`.

mod dax;
mod device;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
#[cfg(test)]
mod tests;

use std::io;
use std::os::unix::io::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vhost::vhost_user::{Backend, Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::RequestHandler;
pub use dax::{check_dax_window, DAX_WINDOW_ALIGN, DAX_WINDOW_MAX};
use device::{DeviceConfig, FsDevice};

/// Line printed on stderr right before accepting a connection. Kata's
/// runtime-rs waits for it before starting the VMM: do not change it.
pub const WAITING_MESSAGE: &str = "Waiting for vhost-user socket connection...";

/// Largest virtio-fs tag (`tag[36]` in the config space).
pub const MAX_TAG_LEN: usize = 36;

/// Largest queue size the device accepts (vhost-user / QEMU limit for virtio-fs).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// Largest number of request queues (one vring worker thread serves all queues;
/// its queue mask is a u64 that also holds the high-priority queue).
pub const MAX_REQUEST_QUEUES: usize = 63;

/// How the virtio-fs device is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostUserOptions {
    /// Device tag in the config space (at most 36 bytes). `None` leaves the tag
    /// empty: QEMU's `vhost-user-fs-pci` supplies its own tag, only the generic
    /// vhost-user device reads it from the back-end.
    pub tag: Option<String>,
    /// Request queues (the high-priority queue comes on top). Default 1.
    pub num_request_queues: usize,
    /// Largest queue size the front-end may set (power of two, at most 1024).
    pub queue_size: usize,
    /// Requests in flight at once, over all queues of the device. At the limit,
    /// chains stay in the available ring until a request completes.
    pub max_inflight: usize,
    /// After the VMM disconnects, accept the next connection (fresh device
    /// state) instead of returning.
    pub keep_serving: bool,
    /// DAX window size in bytes (a power of two, 2 MiB..1 TiB): offer
    /// `VHOST_USER_PROTOCOL_F_SHMEM` with one shared-memory region of this size
    /// and serve FUSE_SETUPMAPPING through it. `None`: no window, nothing new
    /// offered.
    pub dax_window: Option<u64>,
}

impl Default for VhostUserOptions {
    fn default() -> Self {
        Self {
            tag: None,
            num_request_queues: 1,
            queue_size: MAX_QUEUE_SIZE,
            max_inflight: 256,
            keep_serving: false,
            dax_window: None,
        }
    }
}

/// Where the vhost-user socket comes from.
#[derive(Debug)]
pub enum Listen {
    /// Create a listening socket at this path (a stale file is removed first;
    /// the file is removed again when `serve` returns).
    SocketPath(PathBuf),
    /// An inherited listening socket (Kata's `--fd=3`); `serve` takes ownership
    /// of the descriptor and `accept()`s on it.
    Fd(RawFd),
}

/// Shared slot for the back-end request channel (`VHOST_USER_SET_BACKEND_REQ_FD`),
/// used to send `BACKEND_SHMEM_MAP` / `UNMAP` for DAX. Cloning shares the slot.
///
/// The slot is filled when the front-end sends the channel and emptied when a
/// connection starts or ends. [`BackendChannel::get`] returns a clone of the
/// `Backend` (it is itself a shared handle), so no lock of this module is held
/// while a map request waits for the VMM.
#[derive(Clone, Default)]
pub struct BackendChannel(Arc<Mutex<Option<Backend>>>);

impl BackendChannel {
    /// A new, empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// The channel of the current connection, if the front-end sent one.
    pub fn get(&self) -> Option<Backend> {
        self.lock().clone()
    }

    pub(crate) fn set(&self, backend: Option<Backend>) {
        *self.lock() = backend;
    }

    fn lock(&self) -> MutexGuard<'_, Option<Backend>> {
        // A panic while holding this lock cannot leave the Option inconsistent.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for BackendChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendChannel").field("connected", &self.lock().is_some()).finish()
    }
}

/// Serve one virtio-fs device over vhost-user.
///
/// Prints [`WAITING_MESSAGE`] on stderr, accepts one front-end connection and
/// serves it until it disconnects, then returns `Ok(())` (like virtiofsd), or,
/// with `keep_serving`, accepts the next connection with fresh device state.
/// Requests run as tasks on `rt`. Blocks the calling thread.
pub fn serve(
    listen: Listen,
    handler: Arc<dyn RequestHandler>,
    opts: VhostUserOptions,
    rt: tokio::runtime::Handle,
) -> io::Result<()> {
    serve_with_backend_channel(listen, handler, opts, rt, BackendChannel::new())
}

/// [`serve`], with the back-end request channel published into `channel`
/// (for DAX: keep a clone of `channel` where FUSE_SETUPMAPPING is handled).
pub fn serve_with_backend_channel(
    listen: Listen,
    handler: Arc<dyn RequestHandler>,
    opts: VhostUserOptions,
    rt: tokio::runtime::Handle,
    channel: BackendChannel,
) -> io::Result<()> {
    serve_connections(listen, handler, opts, rt, channel, None)
}

/// The accept loop; `max_connections` bounds it for tests.
fn serve_connections(
    listen: Listen,
    handler: Arc<dyn RequestHandler>,
    opts: VhostUserOptions,
    rt: tokio::runtime::Handle,
    channel: BackendChannel,
    max_connections: Option<usize>,
) -> io::Result<()> {
    let config = DeviceConfig::try_from(&opts)?;
    // Bumped at every connection and device reset: the VMM dropped the window.
    let epoch = Arc::new(AtomicU64::new(0));
    if let Some(len) = config.dax_window {
        let mapper = dax::WindowMapper { channel: channel.clone(), len, epoch: epoch.clone() };
        if !handler.enable_dax(Arc::new(mapper)) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "this request handler cannot serve a DAX window"));
        }
    }
    let mut listener = open_listener(listen)?;
    let mut served = 0usize;
    loop {
        // Setup and accept failures are fatal; a connection that ends with an
        // error is fatal only when not asked to keep serving.
        let result = serve_one(&mut listener, &handler, &config, &rt, &channel, &epoch)?;
        served += 1;
        let limit_reached = max_connections.is_some_and(|max| served >= max);
        match result {
            Ok(()) => tracing::info!("vhost-user front-end disconnected"),
            Err(e) if opts.keep_serving && !limit_reached => {
                tracing::warn!("vhost-user connection ended with an error: {e}")
            }
            Err(e) => return Err(e),
        }
        if !opts.keep_serving || limit_reached {
            return Ok(());
        }
    }
}

fn open_listener(listen: Listen) -> io::Result<Listener> {
    let listener = match listen {
        Listen::SocketPath(path) => Listener::new(&path, true)
            .map_err(|e| io::Error::other(format!("cannot listen on vhost-user socket {}: {e}", path.display())))?,
        Listen::Fd(fd) => {
            check_listening_socket(fd)?;
            // SAFETY: the caller hands over an inherited listening socket it no
            // longer uses; we checked it is an open socket. `Listener` takes
            // ownership and closes it on drop.
            unsafe { Listener::from_raw_fd(fd) }
        }
    };
    // An inherited socket may be non-blocking; the daemon's accept loop would spin.
    listener.set_nonblocking(false).map_err(|e| io::Error::other(format!("vhost-user socket: {e}")))?;
    Ok(listener)
}

fn check_listening_socket(fd: RawFd) -> io::Result<()> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes at most one `struct stat` into `st`, which has room
    // for it; an invalid fd only makes it fail with EBADF.
    let rc = unsafe { libc::fstat(fd, st.as_mut_ptr()) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("vhost-user socket fd {fd}: {e}")));
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("vhost-user socket fd {fd} is not a socket")));
    }
    Ok(())
}

/// Accept and serve one front-end connection with a fresh device. The outer
/// error is fatal (cannot create the daemon, cannot accept); the inner one is
/// how the connection ended.
fn serve_one(
    listener: &mut Listener,
    handler: &Arc<dyn RequestHandler>,
    config: &DeviceConfig,
    rt: &tokio::runtime::Handle,
    channel: &BackendChannel,
    epoch: &Arc<AtomicU64>,
) -> io::Result<io::Result<()>> {
    channel.set(None);
    epoch.fetch_add(1, Ordering::SeqCst);
    let device = FsDevice::new(config.clone(), handler.clone(), rt.clone(), channel.clone(), epoch.clone());
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new("ovfs-vhost-user".to_string(), device.clone(), mem)
        .map_err(|e| io::Error::other(format!("cannot create vhost-user daemon: {e}")))?;

    eprintln!("{WAITING_MESSAGE}");
    let result = match daemon.start(listener) {
        Ok(()) => {
            tracing::info!("vhost-user front-end connected");
            daemon.wait()
        }
        Err(e) => Err(e),
    };

    // Stop the vring worker thread of this connection and drop completions of
    // requests still in flight: their rings belong to a gone front-end.
    for epoll_handler in daemon.get_epoll_handlers() {
        epoll_handler.send_exit_event();
    }
    device.disconnect();
    channel.set(None);
    epoch.fetch_add(1, Ordering::SeqCst);

    match result {
        Ok(()) => Ok(Ok(())),
        Err(DaemonError::HandleRequest(VhostUserError::Disconnected))
        | Err(DaemonError::HandleRequest(VhostUserError::PartialMessage)) => Ok(Ok(())),
        Err(e @ DaemonError::HandleRequest(_)) => Ok(Err(io::Error::other(format!("vhost-user: {e}")))),
        Err(e) => Err(io::Error::other(format!("vhost-user: {e}"))),
    }
}
