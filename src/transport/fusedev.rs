//! Host `/dev/fuse` transport: the same FUSE server mounted on the host, so
//! the whole stack can be exercised with real tools (pjdfstest, cp, diff)
//! without a VM.
//!
//! One thread reads requests from `/dev/fuse` (a read returns exactly one
//! request); each request runs as its own task on the tokio runtime and
//! writes its reply with one `write(2)` (the kernel takes replies in any
//! order). A semaphore bounds the requests in flight. Unmounting (by a signal
//! handler or `fusermount -u`) makes the read fail with ENODEV, which ends
//! the loop.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::RequestHandler;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Shown as the source in /proc/mounts.
    pub fs_name: String,
    pub allow_other: bool,
    /// Let the kernel check permissions against the attributes we report.
    pub default_permissions: bool,
    /// Largest request payload (must match the server's max_write).
    pub max_write: u32,
    /// Requests in flight at most.
    pub max_inflight: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fs_name: "ovfs".into(),
            allow_other: true,
            default_permissions: true,
            max_write: 1 << 20,
            max_inflight: 256,
        }
    }
}

/// Requests at least this long are handed on in the read buffer itself (a
/// fresh one is allocated for the next read) rather than copied out of it.
const SWAP_BUFFER_AT: usize = 64 * 1024;

/// A mounted `/dev/fuse` session.
pub struct FuseMount {
    fd: Arc<OwnedFd>,
    mountpoint: PathBuf,
    opts: MountOptions,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl FuseMount {
    /// Open `/dev/fuse` and mount it on `mountpoint`.
    pub fn mount(mountpoint: &Path, opts: MountOptions) -> io::Result<FuseMount> {
        let dev = c"/dev/fuse";
        // SAFETY: a valid NUL-terminated path and valid flags; the result is checked.
        let raw = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let meta = std::fs::metadata(mountpoint)?;
        use std::os::unix::fs::MetadataExt;
        let mut data = format!(
            "fd={},rootmode={:o},user_id={},group_id={},max_read={}",
            fd.as_raw_fd(),
            meta.mode() & libc::S_IFMT,
            // SAFETY: getuid/getgid cannot fail.
            unsafe { libc::getuid() },
            // SAFETY: as above.
            unsafe { libc::getgid() },
            opts.max_write
        );
        if opts.allow_other {
            data.push_str(",allow_other");
        }
        if opts.default_permissions {
            data.push_str(",default_permissions");
        }
        let src = CString::new(opts.fs_name.clone()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let target = cstr(mountpoint)?;
        let fstype = c"fuse.ovfs";
        let cdata = CString::new(data).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                cdata.as_ptr() as *const libc::c_void,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FuseMount { fd: Arc::new(fd), mountpoint: mountpoint.to_path_buf(), opts })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Serve requests until the file system is unmounted.
    pub fn serve(&self, handler: Arc<dyn RequestHandler>, rt: tokio::runtime::Handle) -> io::Result<()> {
        let sem = Arc::new(tokio::sync::Semaphore::new(self.opts.max_inflight.max(1)));
        let bufsize = self.opts.max_write as usize + 64 * 1024;
        // Empty, with room for `bufsize` bytes (not zeroed: `read` fills it).
        let mut buf: Vec<u8> = Vec::with_capacity(bufsize);
        let raw = self.fd.as_raw_fd();
        loop {
            let permit = rt.block_on(sem.clone().acquire_owned()).map_err(|_| io::Error::other("semaphore closed"))?;
            debug_assert!(buf.is_empty() && buf.capacity() >= bufsize);
            // SAFETY: `buf` is empty with a capacity of at least `bufsize`, so its
            // spare capacity is valid for `bufsize` writable bytes; `raw` stays
            // open while `self.fd` lives.
            let n = unsafe { libc::read(raw, buf.spare_capacity_mut().as_mut_ptr() as *mut libc::c_void, bufsize) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::ENOENT) => continue,
                    Some(libc::ENODEV) => return Ok(()),
                    _ => return Err(e),
                }
            }
            if n == 0 {
                return Ok(());
            }
            let n = (n as usize).min(bufsize);
            // SAFETY: `read` initialised the first `n` bytes of the spare
            // capacity (`n <= bufsize <= capacity`).
            unsafe { buf.set_len(n) };
            // A large request (a WRITE's payload) takes the buffer itself
            // instead of a copy of it (the next read gets a fresh one); small
            // ones are copied so the big buffer is reused.
            let req = if n >= SWAP_BUFFER_AT {
                std::mem::replace(&mut buf, Vec::with_capacity(bufsize))
            } else {
                let req = buf.clone();
                buf.clear();
                req
            };
            let h = handler.clone();
            let fd = self.fd.clone();
            rt.spawn(async move {
                if let Some(reply) = h.handle(req).await {
                    write_reply(fd.as_raw_fd(), &reply);
                }
                drop(permit);
            });
        }
    }
}

fn write_reply(fd: RawFd, reply: &[u8]) {
    // SAFETY: `reply` is a valid readable buffer; `fd` is open (kept alive by
    // the Arc the caller holds).
    let n = unsafe { libc::write(fd, reply.as_ptr() as *const libc::c_void, reply.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        // ENOENT: the request was interrupted and the kernel dropped it.
        if e.raw_os_error() != Some(libc::ENOENT) {
            tracing::warn!(error = %e, "writing FUSE reply failed");
        }
    }
}

/// Detach-unmount a FUSE mount point (used on SIGINT/SIGTERM).
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let target = cstr(mountpoint)?;
    // SAFETY: valid NUL-terminated path, valid flags.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
