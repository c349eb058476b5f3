//! The FUSE server: decode one request, call the file system, encode the reply.
//!
//! One flat `match` over opcodes. Every argument is read through the
//! bounds-checked [`Reader`]; any decoding failure becomes an errno reply.
//! Requests are independent futures (the transport runs each as its own task),
//! so replies complete out of order. Read-only requests can be cancelled by
//! INTERRUPT once they wait: a request is entered in the table of
//! cancellable ones only when its first poll did not finish it (most finish
//! there, and skip the table's lock and the abort handle's allocation); an
//! INTERRUPT for a request not in the table is remembered (a few, bounded) so
//! a request interrupted during its first poll is cancelled when it enters.
//! The lock guarding that table is never held across `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;

use futures::future::{AbortHandle, Abortable, BoxFuture};

use super::abi::{self, Opcode, Pod};
use super::dax::{Dax, DaxMapper};
use super::filesystem::{Ctx, Errno, Filesystem, SetAttr, TimeSpec};
use super::reply;
use super::request::Reader;
use crate::transport::RequestHandler;

/// Server-wide knobs.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Largest WRITE (and READ) payload offered to the kernel.
    pub max_write: u32,
    /// Max background requests the kernel may queue.
    pub max_background: u16,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { max_write: 1 << 20, max_background: 64 }
    }
}

/// Flags we offer at INIT regardless of the file system.
const BASE_FLAGS: u64 = abi::FUSE_ASYNC_READ
    | abi::FUSE_BIG_WRITES
    | abi::FUSE_ATOMIC_O_TRUNC
    | abi::FUSE_DO_READDIRPLUS
    | abi::FUSE_READDIRPLUS_AUTO
    | abi::FUSE_PARALLEL_DIROPS
    | abi::FUSE_AUTO_INVAL_DATA
    | abi::FUSE_MAX_PAGES
    | abi::FUSE_INIT_EXT;

/// INTERRUPTs remembered for requests not (yet) in the table.
const EARLY_INTERRUPTS: usize = 64;

/// Cancellable requests that wait, and INTERRUPTs that found none.
#[derive(Default)]
struct Inflight {
    waiting: HashMap<u64, AbortHandle>,
    /// `unique`s of INTERRUPTs that came before their request waited (or
    /// after it finished: uniques are not reused within a session, so such
    /// entries only age out).
    early: VecDeque<u64>,
}

/// Serves FUSE requests for one file system.
pub struct Server<F> {
    fs: F,
    opts: ServerOptions,
    initialized: AtomicBool,
    /// INIT flags agreed with the kernel (some change request layouts).
    negotiated: AtomicU64,
    /// In-flight cancellable requests that had to wait, by `unique`.
    inflight: Mutex<Inflight>,
    /// DAX window, when the transport has one ([`Server::enable_dax`]).
    dax: OnceLock<Dax>,
}

impl<F: Filesystem> Server<F> {
    pub fn new(fs: F, opts: ServerOptions) -> Self {
        Server {
            fs,
            opts,
            initialized: AtomicBool::new(false),
            negotiated: AtomicU64::new(0),
            inflight: Mutex::default(),
            dax: OnceLock::new(),
        }
    }

    /// Serve FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING through `mapper` (the
    /// transport's DAX window). Only the first call counts.
    pub fn enable_dax(&self, mapper: Arc<dyn DaxMapper>) {
        let len = mapper.window_len();
        if self.dax.set(Dax::new(mapper)).is_ok() {
            tracing::info!(window = len, "DAX window enabled");
        }
    }

    /// The DAX state, when enabled (tests, metrics).
    pub fn dax(&self) -> Option<&Dax> {
        self.dax.get()
    }

    /// Set FUSE_ATTR_DAX when per-inode DAX was agreed and the file system wants it.
    fn mark_dax(&self, nodeid: u64, attr: &mut abi::fuse_attr) {
        if self.dax.get().is_some()
            && self.negotiated.load(Ordering::Acquire) & abi::FUSE_HAS_INODE_DAX != 0
            && attr.mode & libc::S_IFMT == libc::S_IFREG
            && self.fs.dax_wanted(nodeid, attr)
        {
            attr.flags |= abi::FUSE_ATTR_DAX;
        }
    }

    pub fn filesystem(&self) -> &F {
        &self.fs
    }

    /// Handle one request buffer; `None` when no reply is due.
    pub async fn dispatch(&self, buf: &[u8]) -> Option<Vec<u8>> {
        let hsize = std::mem::size_of::<abi::fuse_in_header>();
        let Some(h) = abi::fuse_in_header::from_prefix(buf) else {
            tracing::warn!(len = buf.len(), "request shorter than fuse_in_header");
            // Answer if at least `unique` (bytes 8..16) can be read.
            let unique = u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?);
            return Some(reply::error(unique, Errno::EINVAL));
        };
        let unique = h.unique;
        let len = h.len as usize;
        if len < hsize || len > buf.len() {
            tracing::warn!(declared = len, actual = buf.len(), "request length disagrees with buffer");
            return Some(reply::error(unique, Errno::EINVAL));
        }
        let body = &buf[hsize..len];
        let Some(op) = Opcode::from_u32(h.opcode) else {
            tracing::debug!(opcode = h.opcode, "unknown opcode");
            return Some(reply::error(unique, Errno::ENOSYS));
        };
        let ctx = Ctx { unique, uid: h.uid, gid: h.gid, pid: h.pid };
        if op != Opcode::Init && !self.initialized.load(Ordering::Acquire) {
            return match op {
                Opcode::Forget | Opcode::BatchForget | Opcode::Interrupt => None,
                _ => Some(reply::error(unique, Errno::EIO)),
            };
        }
        tracing::trace!(op = op.name(), unique, nodeid = h.nodeid, "request");
        let cancellable = matches!(
            op,
            Opcode::Lookup
                | Opcode::Getattr
                | Opcode::Read
                | Opcode::Readdir
                | Opcode::Readdirplus
                | Opcode::Statfs
                | Opcode::Access
                | Opcode::Readlink
                | Opcode::Getxattr
                | Opcode::Listxattr
                | Opcode::Lseek
        );
        let result = if cancellable {
            let mut call = std::pin::pin!(self.call(op, &ctx, h.nodeid, body));
            match futures::poll!(call.as_mut()) {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    let (handle, reg) = AbortHandle::new_pair();
                    let interrupted = {
                        let mut g = self.lock_inflight();
                        match g.early.iter().position(|u| *u == unique) {
                            Some(i) => {
                                g.early.remove(i);
                                true
                            }
                            None => {
                                g.waiting.insert(unique, handle);
                                false
                            }
                        }
                    };
                    if interrupted {
                        Err(Errno::EINTR)
                    } else {
                        let r = Abortable::new(call, reg).await;
                        self.lock_inflight().waiting.remove(&unique);
                        r.unwrap_or(Err(Errno::EINTR))
                    }
                }
            }
        } else {
            self.call(op, &ctx, h.nodeid, body).await
        };
        match result {
            Ok(r) => r,
            Err(e) => Some(reply::error(unique, e)),
        }
    }

    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn call(&self, op: Opcode, ctx: &Ctx, nodeid: u64, body: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
        let fs = &self.fs;
        let u = ctx.unique;
        let mut r = Reader::new(body);
        let entry = |mut e: super::Entry| {
            self.mark_dax(e.nodeid, &mut e.attr);
            Some(reply::ok(u, &e.to_abi()))
        };
        let attr = |(mut a, valid): (abi::fuse_attr, Duration)| {
            self.mark_dax(nodeid, &mut a);
            Some(reply::ok(
                u,
                &abi::fuse_attr_out {
                    attr_valid: valid.as_secs(),
                    attr_valid_nsec: valid.subsec_nanos(),
                    dummy: 0,
                    attr: a,
                },
            ))
        };
        let open =
            |(fh, flags): (u64, u32)| Some(reply::ok(u, &abi::fuse_open_out { fh, open_flags: flags, backing_id: 0 }));
        let empty = |()| Some(reply::empty(u));
        Ok(match op {
            Opcode::Init => {
                if let Some(dax) = self.dax.get() {
                    dax.forget_stale(fs).await;
                }
                Some(self.init(u, &mut r)?)
            }
            Opcode::Destroy => {
                if let Some(dax) = self.dax.get() {
                    dax.clear(fs).await;
                }
                self.fs.destroy();
                self.initialized.store(false, Ordering::Release);
                Some(reply::empty(u))
            }
            Opcode::Lookup => entry(fs.lookup(ctx, nodeid, r.name()?).await?),
            Opcode::Forget => {
                let f: abi::fuse_forget_in = match r.read() {
                    Ok(f) => f,
                    Err(_) => return Ok(None),
                };
                fs.forget(nodeid, f.nlookup);
                None
            }
            Opcode::BatchForget => {
                let Ok(b) = r.read::<abi::fuse_batch_forget_in>() else { return Ok(None) };
                for _ in 0..b.count {
                    let Ok(one) = r.read::<abi::fuse_forget_one>() else { break };
                    fs.forget(one.nodeid, one.nlookup);
                }
                None
            }
            Opcode::Getattr => {
                let g: abi::fuse_getattr_in = r.read()?;
                let fh = (g.getattr_flags & abi::FUSE_GETATTR_FH != 0).then_some(g.fh);
                attr(fs.getattr(ctx, nodeid, fh).await?)
            }
            Opcode::Setattr => {
                let s: abi::fuse_setattr_in = r.read()?;
                attr(fs.setattr(ctx, nodeid, decode_setattr(&s)).await?)
            }
            Opcode::Readlink => {
                let target = fs.readlink(ctx, nodeid).await?;
                Some(reply::ok_parts(u, &[&target]))
            }
            Opcode::Symlink => {
                let name = r.name()?;
                let target = r.path()?;
                entry(fs.symlink(ctx, nodeid, name, target).await?)
            }
            Opcode::Mknod => {
                let m: abi::fuse_mknod_in = r.read()?;
                entry(fs.mknod(ctx, nodeid, r.name()?, m.mode, m.rdev, m.umask).await?)
            }
            Opcode::Mkdir => {
                let m: abi::fuse_mkdir_in = r.read()?;
                entry(fs.mkdir(ctx, nodeid, r.name()?, m.mode, m.umask).await?)
            }
            Opcode::Unlink => empty(fs.unlink(ctx, nodeid, r.name()?).await?),
            Opcode::Rmdir => empty(fs.rmdir(ctx, nodeid, r.name()?).await?),
            Opcode::Rename => {
                let a: abi::fuse_rename_in = r.read()?;
                let (old, new) = (r.name()?, r.name()?);
                empty(fs.rename(ctx, nodeid, old, a.newdir, new, 0).await?)
            }
            Opcode::Rename2 => {
                let a: abi::fuse_rename2_in = r.read()?;
                let (old, new) = (r.name()?, r.name()?);
                empty(fs.rename(ctx, nodeid, old, a.newdir, new, a.flags).await?)
            }
            Opcode::Link => {
                let l: abi::fuse_link_in = r.read()?;
                entry(fs.link(ctx, l.oldnodeid, nodeid, r.name()?).await?)
            }
            Opcode::Open => {
                let o: abi::fuse_open_in = r.read()?;
                open(fs.open(ctx, nodeid, o.flags).await?)
            }
            Opcode::Create => {
                let c: abi::fuse_create_in = r.read()?;
                let name = r.name()?;
                let (mut e, fh, flags) = fs.create(ctx, nodeid, name, c.mode, c.flags, c.umask).await?;
                self.mark_dax(e.nodeid, &mut e.attr);
                let o = abi::fuse_open_out { fh, open_flags: flags, backing_id: 0 };
                Some(reply::ok_parts(u, &[e.to_abi().as_bytes(), o.as_bytes()]))
            }
            Opcode::Read => {
                let a: abi::fuse_read_in = r.read()?;
                let size = a.size.min(self.opts.max_write);
                // The data lands right after the header: no copy into a reply.
                let hlen = std::mem::size_of::<abi::fuse_out_header>();
                let mut out = Vec::with_capacity(hlen + size as usize);
                out.resize(hlen, 0);
                fs.read_into(ctx, nodeid, a.fh, a.offset, size, &mut out).await?;
                out.truncate(hlen + size as usize);
                let h = abi::fuse_out_header { len: out.len() as u32, error: 0, unique: u };
                out[..hlen].copy_from_slice(h.as_bytes());
                Some(out)
            }
            Opcode::Write => {
                let a: abi::fuse_write_in = r.read()?;
                let data = r.bytes(a.size as usize)?;
                let n = fs.write(ctx, nodeid, a.fh, a.offset, data, a.flags).await?;
                Some(reply::ok(u, &abi::fuse_write_out { size: n, padding: 0 }))
            }
            Opcode::Statfs => Some(reply::ok(u, &abi::fuse_statfs_out { st: fs.statfs(ctx, nodeid).await? })),
            Opcode::Release => {
                let a: abi::fuse_release_in = r.read()?;
                empty(fs.release(ctx, nodeid, a.fh, a.flags).await?)
            }
            Opcode::Fsync => {
                let a: abi::fuse_fsync_in = r.read()?;
                empty(fs.fsync(ctx, nodeid, a.fh, a.fsync_flags & abi::FUSE_FSYNC_FDATASYNC != 0).await?)
            }
            Opcode::Flush => {
                let a: abi::fuse_flush_in = r.read()?;
                empty(fs.flush(ctx, nodeid, a.fh).await?)
            }
            Opcode::Opendir => {
                let o: abi::fuse_open_in = r.read()?;
                open(fs.opendir(ctx, nodeid, o.flags).await?)
            }
            Opcode::Readdir | Opcode::Readdirplus => {
                let a: abi::fuse_read_in = r.read()?;
                let plus = op == Opcode::Readdirplus;
                let max = a.size.min(self.opts.max_write) as usize;
                let mut entries = fs.readdir(ctx, nodeid, a.fh, a.offset, max as u32, plus).await?;
                for en in entries.iter_mut().filter_map(|e| e.entry.as_mut()) {
                    self.mark_dax(en.nodeid, &mut en.attr);
                }
                let mut buf = Vec::with_capacity(max.min(64 << 10));
                let mut full = false;
                for e in &entries {
                    if !full && reply::push_dirent(&mut buf, max, e, plus) {
                        continue;
                    }
                    full = true;
                    // Not delivered: give back the reference READDIRPLUS took.
                    if let Some(en) = &e.entry {
                        if en.nodeid != 0 {
                            fs.forget(en.nodeid, 1);
                        }
                    }
                }
                Some(reply::ok_parts(u, &[&buf]))
            }
            Opcode::Releasedir => {
                let a: abi::fuse_release_in = r.read()?;
                empty(fs.releasedir(ctx, nodeid, a.fh).await?)
            }
            Opcode::Fsyncdir => {
                let a: abi::fuse_fsync_in = r.read()?;
                empty(fs.fsyncdir(ctx, nodeid, a.fh, a.fsync_flags & abi::FUSE_FSYNC_FDATASYNC != 0).await?)
            }
            Opcode::Setxattr => {
                // The 16-byte form only when FUSE_SETXATTR_EXT was agreed;
                // otherwise the kernel sends 8 bytes and the name follows.
                let a: abi::fuse_setxattr_in = if self.negotiated.load(Ordering::Acquire) & abi::FUSE_SETXATTR_EXT != 0
                {
                    r.read()?
                } else {
                    let b = r.bytes(abi::FUSE_COMPAT_SETXATTR_IN_SIZE)?;
                    abi::fuse_setxattr_in::from_prefix(&[b, &[0u8; 8]].concat()).ok_or(Errno::EINVAL)?
                };
                let name = r.cstr()?;
                let value = r.bytes(a.size as usize)?;
                empty(fs.setxattr(ctx, nodeid, name, value, a.flags).await?)
            }
            Opcode::Getxattr => {
                let a: abi::fuse_getxattr_in = r.read()?;
                let name = r.cstr()?;
                let v = fs.getxattr(ctx, nodeid, name, a.size).await?;
                Some(xattr_reply(u, a.size, v)?)
            }
            Opcode::Listxattr => {
                let a: abi::fuse_getxattr_in = r.read()?;
                let v = fs.listxattr(ctx, nodeid, a.size).await?;
                Some(xattr_reply(u, a.size, v)?)
            }
            Opcode::Removexattr => empty(fs.removexattr(ctx, nodeid, r.cstr()?).await?),
            Opcode::Access => {
                let a: abi::fuse_access_in = r.read()?;
                empty(fs.access(ctx, nodeid, a.mask).await?)
            }
            Opcode::Interrupt => {
                if let Ok(a) = r.read::<abi::fuse_interrupt_in>() {
                    let mut g = self.lock_inflight();
                    match g.waiting.get(&a.unique) {
                        Some(h) => h.abort(),
                        None => {
                            if g.early.len() >= EARLY_INTERRUPTS {
                                g.early.pop_front();
                            }
                            g.early.push_back(a.unique);
                        }
                    }
                }
                None
            }
            Opcode::Lseek => {
                let a: abi::fuse_lseek_in = r.read()?;
                let off = fs.lseek(ctx, nodeid, a.fh, a.offset, a.whence).await?;
                Some(reply::ok(u, &abi::fuse_lseek_out { offset: off }))
            }
            Opcode::Fallocate => {
                let a: abi::fuse_fallocate_in = r.read()?;
                empty(fs.fallocate(ctx, nodeid, a.fh, a.offset, a.length, a.mode).await?)
            }
            Opcode::Syncfs => empty(fs.syncfs(ctx, nodeid).await?),
            Opcode::SetupMapping => {
                let dax = self.dax.get().ok_or(Errno::ENOSYS)?;
                let a: abi::fuse_setupmapping_in = r.read()?;
                empty(dax.setup(fs, nodeid, &a).await?)
            }
            Opcode::RemoveMapping => {
                let dax = self.dax.get().ok_or(Errno::ENOSYS)?;
                let a: abi::fuse_removemapping_in = r.read()?;
                let count = a.count as usize;
                if count > abi::FUSE_REMOVEMAPPING_MAX_ENTRY {
                    return Err(Errno::EINVAL);
                }
                let mut ranges = Vec::with_capacity(count);
                for _ in 0..count {
                    ranges.push(r.read::<abi::fuse_removemapping_one>()?);
                }
                empty(dax.remove(fs, &ranges).await?)
            }
            // Locks are left to the kernel (POSIX_LOCKS/FLOCK_LOCKS are not
            // offered); the rest is not served.
            Opcode::Getlk
            | Opcode::Setlk
            | Opcode::Setlkw
            | Opcode::Bmap
            | Opcode::Ioctl
            | Opcode::Poll
            | Opcode::CopyFileRange
            | Opcode::Statx => return Err(Errno::ENOSYS),
            Opcode::Tmpfile => return Err(Errno::ENOTSUP),
            // A reply to a notification we never sent.
            Opcode::NotifyReply => None,
        })
    }

    fn init(&self, unique: u64, r: &mut Reader<'_>) -> Result<Vec<u8>, Errno> {
        let i: abi::fuse_init_in = r.read_compat(abi::FUSE_COMPAT_INIT_IN_SIZE)?;
        if i.major != abi::KERNEL_VERSION {
            tracing::warn!(major = i.major, "unsupported FUSE major version");
            if i.major > abi::KERNEL_VERSION {
                // Tell the kernel which major we speak; it retries.
                let out = abi::fuse_init_out { major: abi::KERNEL_VERSION, ..Default::default() };
                return Ok(reply::ok(unique, &out));
            }
            return Err(Errno(libc::EPROTO));
        }
        if i.minor < abi::MIN_KERNEL_MINOR_VERSION {
            tracing::warn!(minor = i.minor, "FUSE minor version too old");
            return Err(Errno(libc::EPROTO));
        }
        let mut kernel = i.flags as u64;
        if kernel & abi::FUSE_INIT_EXT != 0 {
            kernel |= (i.flags2 as u64) << 32;
        }
        let dax = self.dax.get().is_some();
        let mut want = BASE_FLAGS | self.fs.init(kernel).want;
        if dax {
            want |= abi::FUSE_MAP_ALIGNMENT | abi::FUSE_HAS_INODE_DAX;
        }
        let flags = kernel & want;
        let max_pages = (self.opts.max_write / 4096).clamp(1, u16::MAX as u32) as u16;
        let out = abi::fuse_init_out {
            major: abi::KERNEL_VERSION,
            minor: i.minor.min(abi::KERNEL_MINOR_VERSION),
            max_readahead: i.max_readahead,
            flags: flags as u32,
            max_background: self.opts.max_background,
            congestion_threshold: (self.opts.max_background as u32 * 3 / 4) as u16,
            max_write: self.opts.max_write,
            time_gran: 1,
            max_pages,
            flags2: (flags >> 32) as u32,
            // log2 of the alignment of SETUPMAPPING offsets (kernel: <= 21).
            map_alignment: if dax && flags & abi::FUSE_MAP_ALIGNMENT != 0 { super::dax::MAP_ALIGNMENT_LOG2 } else { 0 },
            ..Default::default()
        };
        self.negotiated.store(flags, Ordering::Release);
        self.initialized.store(true, Ordering::Release);
        tracing::info!(minor = i.minor, flags = format_args!("{flags:#x}"), "FUSE session initialised");
        Ok(reply::ok(unique, &out))
    }
}

fn decode_setattr(s: &abi::fuse_setattr_in) -> SetAttr {
    let v = s.valid;
    let time = |set: u32, now: u32, secs: u64, nsecs: u32| {
        if v & now != 0 {
            Some(TimeSpec::Now)
        } else if v & set != 0 {
            Some(TimeSpec::Set { secs, nsecs: nsecs.min(999_999_999) })
        } else {
            None
        }
    };
    SetAttr {
        mode: (v & abi::FATTR_MODE != 0).then_some(s.mode),
        uid: (v & abi::FATTR_UID != 0).then_some(s.uid),
        gid: (v & abi::FATTR_GID != 0).then_some(s.gid),
        size: (v & abi::FATTR_SIZE != 0).then_some(s.size),
        atime: time(abi::FATTR_ATIME, abi::FATTR_ATIME_NOW, s.atime, s.atimensec),
        mtime: time(abi::FATTR_MTIME, abi::FATTR_MTIME_NOW, s.mtime, s.mtimensec),
        ctime: time(abi::FATTR_CTIME, 0, s.ctime, s.ctimensec),
        fh: (v & abi::FATTR_FH != 0).then_some(s.fh),
    }
}

/// GETXATTR/LISTXATTR: size 0 asks for the length only.
fn xattr_reply(unique: u64, size: u32, value: Vec<u8>) -> Result<Vec<u8>, Errno> {
    if size == 0 {
        let n = u32::try_from(value.len()).map_err(|_| Errno::E2BIG)?;
        return Ok(reply::ok(unique, &abi::fuse_getxattr_out { size: n, padding: 0 }));
    }
    if value.len() > size as usize {
        return Err(Errno::ERANGE);
    }
    Ok(reply::ok_parts(unique, &[&value]))
}

impl<F: Filesystem> RequestHandler for Server<F> {
    fn handle(self: Arc<Self>, req: Vec<u8>) -> BoxFuture<'static, Option<Vec<u8>>> {
        Box::pin(async move { self.dispatch(&req).await })
    }

    fn enable_dax(&self, mapper: Arc<dyn DaxMapper>) -> bool {
        Server::enable_dax(self, mapper);
        true
    }

    fn dax_stats(&self) -> Option<super::dax::DaxStats> {
        self.dax().map(|d| d.stats())
    }
}
