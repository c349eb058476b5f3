//! A host directory served as it is: the `--shared-dir` tree with full POSIX
//! semantics (modes, owners, symlinks, hard links, special files, xattrs),
//! which is what Kata's one virtio-fs device needs for container root file
//! systems and volumes.
//!
//! Inodes: every node the kernel knows holds an `O_PATH | O_NOFOLLOW` fd to
//! the host inode, keyed by `(st_dev, st_ino)` so that hard links and repeated
//! lookups share one node id. Node ids come from a counter and are never
//! reused; a node lives while its lookup count (see `fuse::filesystem`) is
//! non-zero. Holding the fd pins the host inode, so its number cannot be
//! recycled under us.
//!
//! Confinement (the guest is hostile): a name is only ever resolved relative
//! to its parent's fd, one component at a time (`openat`/`mkdirat`/... with
//! the parent's fd, names checked to be one component), and never through a
//! symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `AT_EMPTY_PATH`). A node is
//! opened for I/O by reopening its own fd through `/proc/self/fd/N`, which
//! lands on exactly that inode; only regular files are opened that way
//! (symlinks: ELOOP; fifos, sockets and devices: EPERM, so a guest can never
//! make the daemon open a host device node or block on a fifo; CREATE of an
//! existing name pins it with `O_PATH` and checks its type before opening it).
//! Operations that need a path on a node (chmod, utimens, xattrs) also go
//! through its `/proc/self/fd/N` link (holding the node, so the fd number stays
//! ours); for a symlink node that link resolves to the symlink itself, never to
//! its target. Directories bind-mounted into the
//! tree after start are seen because lookups resolve at request time.
//!
//! Owners: the daemon runs as root and creates as root, then gives the new
//! node to the requester (`Ctx` uid/gid) with `fchown`; in a set-group-ID
//! directory the group the host kernel assigned (the directory's) is kept.
//! Permission checks were already made by the guest kernel (virtio-fs and our
//! host mount use `default_permissions`); switching fsuid instead would re-check
//! them on the host without the caller's supplementary groups. Files are
//! created without set-ID bits and those are applied after the chown (which
//! would clear them), so no root-owned set-ID file ever exists. Regular files
//! are created with `O_CREAT | O_EXCL` and chowned through the returned fd (no
//! race); directories, special files and symlinks are chowned through a fresh
//! `O_PATH` fd after checking it is what was just created (type, owned by the
//! daemon). The process umask is set to 0 once (the guest kernel has already
//! applied the caller's umask to the modes it sends).
//!
//! xattrs (`--xattr`): passed through unmapped; FUSE_SETXATTR_EXT is asked
//! for so the kernel sends the header form the server decodes.
//!
//! Set-ID clearing: the kernel FUSE client (no HANDLE_KILLPRIV negotiated)
//! sends a SETATTR clearing the bits itself before an unprivileged write or
//! truncate; only `open(O_TRUNC)` (ATOMIC_O_TRUNC) is left to us, and we clear
//! them there when the caller is not root.
//!
//! Residual race (documented, not exploitable for escape): between mkdir/
//! mknod/symlink and the `O_PATH` open that sets the owner, a concurrent guest
//! rename could put another daemon-owned node of the same type under the name;
//! it would then be given to the caller.
//!
//! Blocking: every syscall runs directly on the calling task (a local file
//! system; no `.await` anywhere in this module). Lock order: the node table
//! (`nodes`, std mutex) and a directory handle's `fd` mutex are never held
//! together except `fd` -> `nodes` (readdirplus lookups); both are short and
//! never held across `.await`.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::handle::HandleTable;
use crate::fuse::abi;
use crate::fuse::filesystem::InitOptions;
use crate::fuse::filesystem::Result;
use crate::fuse::request::check_name;
use crate::fuse::{reply, Ctx, DirEntry, Entry, Errno, Filesystem, SetAttr, TimeSpec};

/// Knobs of the passthrough file system.
#[derive(Clone, Debug)]
pub struct PassthroughOptions {
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    /// Serve GETXATTR/SETXATTR/LISTXATTR/REMOVEXATTR (else ENOSYS).
    pub xattr: bool,
    /// Mark directories on another host file system than their parent with
    /// FUSE_ATTR_SUBMOUNT (when the kernel offers FUSE_SUBMOUNTS), so the guest
    /// gives them their own superblock (distinct st_dev, no inode clashes).
    pub announce_submounts: bool,
}

impl Default for PassthroughOptions {
    fn default() -> Self {
        PassthroughOptions {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            xattr: false,
            announce_submounts: false,
        }
    }
}

/// Thin wrappers over the syscalls used here: each returns the host errno.
mod sys {
    use super::*;

    /// The errno of the last failed call (EIO if there is none).
    pub fn errno() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().filter(|&e| e > 0).unwrap_or(libc::EIO))
    }

    pub fn check(ret: libc::c_int) -> Result<libc::c_int> {
        if ret < 0 {
            Err(errno())
        } else {
            Ok(ret)
        }
    }

    pub fn check_size(ret: libc::ssize_t) -> Result<usize> {
        if ret < 0 {
            Err(errno())
        } else {
            Ok(ret as usize)
        }
    }

    pub fn openat(dir: RawFd, name: &CStr, flags: i32, mode: u32) -> Result<OwnedFd> {
        // SAFETY: `name` is NUL-terminated; openat does not keep the pointer.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
        let fd = check(fd)?;
        // SAFETY: openat just returned this fd and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn fstat(fd: RawFd) -> Result<libc::stat> {
        let mut st = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is valid for writes of a `stat`; fstat fills it on success.
        check(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
        // SAFETY: fstat succeeded, so `st` is initialised.
        Ok(unsafe { st.assume_init() })
    }

    pub fn fstatfs(fd: RawFd) -> Result<libc::statfs> {
        let mut st = MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: `st` is valid for writes of a `statfs`.
        check(unsafe { libc::fstatfs(fd, st.as_mut_ptr()) })?;
        // SAFETY: fstatfs succeeded, so `st` is initialised.
        Ok(unsafe { st.assume_init() })
    }

    /// chown of the inode `fd` refers to (any kind, O_PATH is fine).
    pub fn fchown_empty(fd: RawFd, uid: u32, gid: u32) -> Result<()> {
        // SAFETY: the empty path is a NUL-terminated static string.
        check(unsafe { libc::fchownat(fd, c"".as_ptr(), uid, gid, libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW) })?;
        Ok(())
    }

    pub fn fchmod(fd: RawFd, mode: u32) -> Result<()> {
        // SAFETY: plain syscall on an fd we own.
        check(unsafe { libc::fchmod(fd, mode as libc::mode_t) })?;
        Ok(())
    }

    pub fn lseek(fd: RawFd, off: i64, whence: i32) -> Result<u64> {
        // SAFETY: plain syscall on an fd we own.
        let r = unsafe { libc::lseek(fd, off, whence) };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r as u64)
        }
    }

    /// Read directory entries (raw `linux_dirent64` records) into `buf`.
    pub fn getdents64(fd: RawFd, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let r = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
        if r < 0 {
            Err(errno())
        } else {
            Ok(r as usize)
        }
    }
}

/// One node the kernel knows.
#[derive(Debug)]
struct Node {
    /// `O_PATH | O_NOFOLLOW` fd of the host inode.
    fd: OwnedFd,
    key: (u64, u64),
    /// `st_mode & S_IFMT` (the type of an inode never changes).
    ftype: u32,
}

impl Node {
    fn is_dir(&self) -> bool {
        self.ftype == libc::S_IFDIR
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn dir(&self) -> Result<RawFd> {
        if self.is_dir() {
            Ok(self.raw())
        } else {
            Err(Errno::ENOTDIR)
        }
    }
}

#[derive(Debug, Default)]
struct NodeTable {
    /// nodeid -> (node, lookup count).
    by_id: HashMap<u64, (Arc<Node>, u64)>,
    by_key: HashMap<(u64, u64), u64>,
}

#[derive(Debug)]
struct FileHandle {
    nodeid: u64,
    fd: OwnedFd,
}

#[derive(Debug)]
struct DirHandle {
    nodeid: u64,
    /// Seek + getdents64 must not interleave between two READDIRs.
    fd: Mutex<OwnedFd>,
}

/// The passthrough file system.
pub struct PassthroughFs {
    opts: PassthroughOptions,
    nodes: Mutex<NodeTable>,
    next_id: AtomicU64,
    files: HandleTable<FileHandle>,
    dirs: HandleTable<DirHandle>,
    /// `/proc/self/fd`, to reopen node fds.
    proc_fd: OwnedFd,
    /// announce_submounts was asked for and the kernel offered FUSE_SUBMOUNTS.
    submounts: std::sync::atomic::AtomicBool,
    euid: u32,
    egid: u32,
    /// Which files get FUSE_ATTR_DAX (`-o dax=inode`); sizes only, no paths here.
    dax_policy: super::dax::DaxPolicy,
}

const ROOT: u64 = abi::FUSE_ROOT_ID;
/// "Leave unchanged" for chown.
const KEEP: u32 = u32::MAX;

fn cname(name: &[u8]) -> Result<CString> {
    // Defensive: the server checks names too; never let `..`, `/` or NUL through.
    check_name(name)?;
    CString::new(name).map_err(|_| Errno::EINVAL)
}

fn fd_name(fd: RawFd) -> CString {
    // A decimal number never contains NUL.
    CString::new(fd.to_string()).unwrap_or_default()
}

fn to_attr(st: &libc::stat) -> abi::fuse_attr {
    let rdev = st.st_rdev;
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    abi::fuse_attr {
        ino: st.st_ino,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: st.st_atime as u64,
        mtime: st.st_mtime as u64,
        ctime: st.st_ctime as u64,
        atimensec: st.st_atime_nsec as u32,
        mtimensec: st.st_mtime_nsec as u32,
        ctimensec: st.st_ctime_nsec as u32,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        // The kernel's new_encode_dev.
        rdev: (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12),
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The kernel's new_decode_dev.
fn decode_dev(rdev: u32) -> libc::dev_t {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// Open flags the guest may pass on to the host (no O_CREAT/O_EXCL: those are
/// ours to decide; no O_NOFOLLOW: reopening goes through a magic link; no
/// O_DIRECT: the guest's page cache decides caching).
fn host_open_flags(flags: u32) -> i32 {
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_TRUNC
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NONBLOCK
        | libc::O_NOATIME
        | libc::O_LARGEFILE;
    (flags as i32) & keep
}

/// Set-ID bits an unprivileged write/truncate clears (as the kernel does).
fn killed_mode(mode: u32) -> Option<u32> {
    if mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    let mut m = mode;
    if m & libc::S_ISUID != 0 {
        m &= !libc::S_ISUID;
    }
    if m & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        m &= !libc::S_ISGID;
    }
    (m != mode).then_some(m & 0o7777)
}

impl PassthroughFs {
    /// Serve `root` (which must be a directory). Sets the process umask to 0.
    pub fn new(root: &Path, opts: PassthroughOptions) -> std::io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let croot =
            CString::new(root.as_os_str().as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let to_io = |e: Errno| std::io::Error::from_raw_os_error(e.0);
        // The operator's path may contain symlinks; only what is below it is confined.
        let fd = sys::openat(libc::AT_FDCWD, &croot, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(to_io)?;
        let st = sys::fstat(fd.as_raw_fd()).map_err(to_io)?;
        let proc_fd =
            sys::openat(libc::AT_FDCWD, c"/proc/self/fd", libc::O_PATH | libc::O_DIRECTORY, 0).map_err(to_io)?;
        // SAFETY: umask, geteuid and getegid cannot fail and touch no memory.
        let (euid, egid) = unsafe {
            libc::umask(0);
            (libc::geteuid(), libc::getegid())
        };
        let key = (st.st_dev, st.st_ino);
        let mut t = NodeTable::default();
        t.by_id.insert(ROOT, (Arc::new(Node { fd, key, ftype: libc::S_IFDIR }), 1));
        t.by_key.insert(key, ROOT);
        Ok(PassthroughFs {
            opts,
            nodes: Mutex::new(t),
            next_id: AtomicU64::new(ROOT + 1),
            files: HandleTable::default(),
            dirs: HandleTable::default(),
            proc_fd,
            submounts: std::sync::atomic::AtomicBool::new(false),
            euid,
            egid,
            dax_policy: Default::default(),
        })
    }

    /// Which files get FUSE_ATTR_DAX under `-o dax=inode`.
    pub fn with_dax_policy(mut self, policy: super::dax::DaxPolicy) -> Self {
        self.dax_policy = policy;
        self
    }

    /// (known nodes, open files, open directories), for tests.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.lock_nodes().by_id.len(), self.files.len(), self.dirs.len())
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, NodeTable> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn node(&self, nodeid: u64) -> Result<Arc<Node>> {
        self.lock_nodes().by_id.get(&nodeid).map(|(n, _)| n.clone()).ok_or(Errno::EBADF)
    }

    /// The entry of a child found by lookup in `parent` (may be a submount).
    fn child_entry(&self, parent: &Node, nodeid: u64, st: &libc::stat) -> Entry {
        let mut e = self.entry(nodeid, st);
        if self.submounts.load(Ordering::Relaxed)
            && st.st_mode & libc::S_IFMT == libc::S_IFDIR
            && st.st_dev != parent.key.0
        {
            e.attr.flags |= abi::FUSE_ATTR_SUBMOUNT;
        }
        e
    }

    fn entry(&self, nodeid: u64, st: &libc::stat) -> Entry {
        Entry {
            nodeid,
            generation: 0,
            attr: to_attr(st),
            entry_valid: self.opts.entry_timeout,
            attr_valid: self.opts.attr_timeout,
        }
    }

    /// Register an `O_PATH` fd (one more lookup reference); returns its node id.
    fn insert(&self, fd: OwnedFd, st: &libc::stat) -> (u64, Arc<Node>) {
        let key = (st.st_dev, st.st_ino);
        let mut t = self.lock_nodes();
        if let Some(&id) = t.by_key.get(&key) {
            if let Some((n, refs)) = t.by_id.get_mut(&id) {
                *refs += 1;
                return (id, n.clone());
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(Node { fd, key, ftype: st.st_mode & libc::S_IFMT });
        t.by_id.insert(id, (node.clone(), 1));
        t.by_key.insert(key, id);
        (id, node)
    }

    /// Look `name` up in directory `parent` (one more lookup reference).
    fn lookup_child(&self, parent: &Node, name: &CStr) -> Result<(u64, Arc<Node>, libc::stat)> {
        let fd = sys::openat(parent.dir()?, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::fstat(fd.as_raw_fd())?;
        let (id, node) = self.insert(fd, &st);
        Ok((id, node, st))
    }

    /// Open an existing regular file `name` in `dir` (no O_CREAT).
    fn open_existing(&self, dir: RawFd, name: &CStr, flags: i32) -> Result<OwnedFd> {
        let path = sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)?;
        let st = sys::fstat(path.as_raw_fd())?;
        let ftype = st.st_mode & libc::S_IFMT;
        let node = Node { fd: path, key: (st.st_dev, st.st_ino), ftype };
        self.reopen(&node, flags & !libc::O_NOFOLLOW)
    }

    /// Reopen a node for I/O through its `/proc/self/fd/N` link.
    fn reopen(&self, node: &Node, flags: i32) -> Result<OwnedFd> {
        match node.ftype {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(Errno::EISDIR),
            libc::S_IFLNK => return Err(Errno::ELOOP),
            _ => return Err(Errno::EPERM),
        }
        sys::openat(self.proc_fd.as_raw_fd(), &fd_name(node.raw()), flags, 0)
    }

    fn open_dir_fd(&self, node: &Node) -> Result<OwnedFd> {
        sys::openat(node.dir()?, c".", libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
    }

    /// `/proc/self/fd/N` of a node as an absolute path (for path-only calls).
    fn proc_path(&self, node: &Node) -> CString {
        CString::new(format!("/proc/self/fd/{}", node.raw())).unwrap_or_default()
    }

    fn file(&self, nodeid: u64, fh: u64) -> Result<Arc<FileHandle>> {
        self.files.get(fh).filter(|h| h.nodeid == nodeid).ok_or(Errno::EBADF)
    }

    fn dir_handle(&self, nodeid: u64, fh: u64) -> Result<Arc<DirHandle>> {
        self.dirs.get(fh).filter(|h| h.nodeid == nodeid).ok_or(Errno::EBADF)
    }

    /// The group a new node must get: KEEP in a set-group-ID directory (the
    /// host kernel already gave it the directory's group), else the caller's.
    fn new_gid(ctx: &Ctx, parent: &Node) -> Result<u32> {
        let st = sys::fstat(parent.raw())?;
        Ok(if st.st_mode & libc::S_ISGID != 0 { KEEP } else { ctx.gid })
    }

    /// Give a freshly created node (through `fd`, any kind) to the caller, then
    /// apply the set-ID bits of `mode` that chown would have cleared.
    fn give(&self, ctx: &Ctx, fd: RawFd, gid: u32, mode: u32, is_dir: bool) -> Result<()> {
        let uid = if ctx.uid == self.euid { KEEP } else { ctx.uid };
        let gid = if gid == self.egid { KEEP } else { gid };
        if uid != KEEP || gid != KEEP {
            sys::fchown_empty(fd, uid, gid)?;
        }
        if !is_dir && mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            // SAFETY: the name is NUL-terminated; fchmodat follows the magic
            // link to exactly the inode `fd` refers to.
            sys::check(unsafe { libc::fchmodat(self.proc_fd.as_raw_fd(), fd_name(fd).as_ptr(), mode & 0o7777, 0) })?;
        }
        Ok(())
    }

    /// After mkdir/mknod/symlink as root: look the new name up and give it to
    /// the caller, unless what is there now is not what we created.
    fn finish_create(&self, ctx: &Ctx, parent: &Node, name: &CStr, gid: u32, mode: u32) -> Result<Entry> {
        let (id, node, st) = self.lookup_child(parent, name)?;
        let ours = st.st_mode & libc::S_IFMT == mode & libc::S_IFMT && st.st_uid == self.euid;
        if !ours {
            tracing::warn!(name = ?name, "created node replaced before its owner was set; leaving it");
            return Ok(self.entry(id, &st));
        }
        let fix = self.give(ctx, node.raw(), gid, mode, node.is_dir()).and_then(|()| sys::fstat(node.raw()));
        match fix {
            Ok(st) => Ok(self.entry(id, &st)),
            Err(e) => {
                self.forget(id, 1);
                Err(e)
            }
        }
    }

    /// Clear set-ID bits when an unprivileged caller truncates at open.
    fn kill_on_trunc(ctx: &Ctx, fd: RawFd, flags: u32) -> Result<()> {
        if flags as i32 & libc::O_TRUNC == 0 || ctx.uid == 0 {
            return Ok(());
        }
        let st = sys::fstat(fd)?;
        if let Some(m) = killed_mode(st.st_mode) {
            sys::fchmod(fd, m)?;
        }
        Ok(())
    }

    fn getattr_sync(&self, nodeid: u64, fh: Option<u64>) -> Result<(abi::fuse_attr, Duration)> {
        let st = match fh.and_then(|fh| self.file(nodeid, fh).ok()) {
            Some(h) => sys::fstat(h.fd.as_raw_fd())?,
            None => sys::fstat(self.node(nodeid)?.raw())?,
        };
        Ok((to_attr(&st), self.opts.attr_timeout))
    }

    fn setattr_sync(&self, nodeid: u64, a: &SetAttr) -> Result<(abi::fuse_attr, Duration)> {
        let node = self.node(nodeid)?;
        let handle = a.fh.and_then(|fh| self.file(nodeid, fh).ok());
        let proc = self.proc_fd.as_raw_fd();
        let pname = fd_name(node.raw());
        // Owner first: chown clears set-ID bits a mode change below may set.
        if a.uid.is_some() || a.gid.is_some() {
            sys::fchown_empty(node.raw(), a.uid.unwrap_or(KEEP), a.gid.unwrap_or(KEEP))?;
        }
        if let Some(mode) = a.mode {
            // SAFETY: NUL-terminated name; follows the magic link to this inode.
            sys::check(unsafe { libc::fchmodat(proc, pname.as_ptr(), mode & 0o7777, 0) })?;
        }
        if let Some(size) = a.size {
            let size = i64::try_from(size).map_err(|_| Errno::EFBIG)?;
            let opened;
            let fd = match &handle {
                Some(h) => h.fd.as_raw_fd(),
                None => {
                    opened = self.reopen(&node, libc::O_WRONLY)?;
                    opened.as_raw_fd()
                }
            };
            // SAFETY: plain syscall on an fd we own.
            sys::check(unsafe { libc::ftruncate(fd, size) })?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let ts = |t: Option<TimeSpec>| match t {
                None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
                Some(TimeSpec::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
                Some(TimeSpec::Set { secs, nsecs }) => {
                    libc::timespec { tv_sec: secs as libc::time_t, tv_nsec: nsecs as libc::c_long }
                }
            };
            let times = [ts(a.atime), ts(a.mtime)];
            // SAFETY: `times` is two valid timespecs; the name is NUL-terminated and
            // the magic link resolves to this inode (a symlink node: the link itself).
            sys::check(unsafe { libc::utimensat(proc, pname.as_ptr(), times.as_ptr(), 0) })?;
        }
        // FATTR_CTIME cannot be set on a host inode; the changes above update it.
        let st = match &handle {
            Some(h) => sys::fstat(h.fd.as_raw_fd())?,
            None => sys::fstat(node.raw())?,
        };
        Ok((to_attr(&st), self.opts.attr_timeout))
    }

    fn create_sync(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, flags: u32) -> Result<(Entry, u64, u32)> {
        let parent = self.node(parent)?;
        let dir = parent.dir()?;
        let name = cname(name)?;
        let gid = Self::new_gid(ctx, &parent)?;
        let oflags = host_open_flags(flags) | libc::O_NOFOLLOW;
        let exclusive = flags as i32 & libc::O_EXCL != 0;
        let mut attempts = 0;
        let (fd, created) = loop {
            attempts += 1;
            match sys::openat(dir, &name, oflags | libc::O_CREAT | libc::O_EXCL, mode & 0o1777) {
                Ok(fd) => break (fd, true),
                // Existing: pin the inode with O_PATH and open it only if it is a
                // regular file (never open a fifo or a device on the host).
                Err(Errno::EEXIST) if !exclusive => match self.open_existing(dir, &name, oflags) {
                    Ok(fd) => break (fd, false),
                    // Removed in between: try to create it again.
                    Err(Errno::ENOENT) if attempts < 8 => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            }
        };
        let st = sys::fstat(fd.as_raw_fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(if st.st_mode & libc::S_IFMT == libc::S_IFDIR { Errno::EISDIR } else { Errno::EPERM });
        }
        if created {
            self.give(ctx, fd.as_raw_fd(), gid, mode, false)?;
        } else {
            Self::kill_on_trunc(ctx, fd.as_raw_fd(), flags)?;
        }
        // The node's O_PATH fd is taken from the open fd: the same inode, whatever
        // happens to the name meanwhile.
        let path = sys::openat(self.proc_fd.as_raw_fd(), &fd_name(fd.as_raw_fd()), libc::O_PATH, 0)?;
        let st = sys::fstat(fd.as_raw_fd())?;
        let (id, _) = self.insert(path, &st);
        let fh = self.files.insert(FileHandle { nodeid: id, fd });
        Ok((self.entry(id, &st), fh, 0))
    }

    fn readdir_sync(&self, nodeid: u64, fh: u64, offset: u64, max_bytes: u32, plus: bool) -> Result<Vec<DirEntry>> {
        let h = self.dir_handle(nodeid, fh)?;
        let node = if plus { Some(self.node(nodeid)?) } else { None };
        let fd = h.fd.lock().unwrap_or_else(|p| p.into_inner());
        let raw = fd.as_raw_fd();
        sys::lseek(raw, offset as i64, libc::SEEK_SET)?;
        let max = max_bytes as usize;
        let mut buf = vec![0u8; max.clamp(1024, 64 << 10)];
        let mut out = Vec::new();
        let mut used = 0usize;
        'fill: loop {
            let n = sys::getdents64(raw, &mut buf)?;
            if n == 0 {
                break;
            }
            let mut pos = 0usize;
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name\0.
            while pos + 19 <= n {
                let rec = &buf[pos..n];
                let ino = u64::from_ne_bytes(rec[0..8].try_into().map_err(|_| Errno::EIO)?);
                let off = u64::from_ne_bytes(rec[8..16].try_into().map_err(|_| Errno::EIO)?);
                let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
                let typ = rec[18] as u32;
                if reclen < 19 || reclen > rec.len() {
                    return Err(Errno::EIO);
                }
                let raw_name = &rec[19..reclen];
                let name = &raw_name[..raw_name.iter().position(|&b| b == 0).unwrap_or(raw_name.len())];
                let size = reply::dirent_size(name.len(), plus);
                if used + size > max {
                    break 'fill;
                }
                used += size;
                pos += reclen;
                let mut e = DirEntry { ino, offset: off, typ, name: name.to_vec(), entry: None };
                if let Some(dir) = &node {
                    if name != b"." && name != b".." {
                        if let Ok(cn) = CString::new(name) {
                            // An entry that vanished meanwhile is listed without attributes.
                            if let Ok((id, _, st)) = self.lookup_child(dir, &cn) {
                                e.entry = Some(self.child_entry(dir, id, &st));
                            }
                        }
                    }
                }
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The node (kept alive so its fd number stays ours during the call), its
    /// `/proc/self/fd/N` path and the attribute name.
    fn xattr_path(&self, nodeid: u64, name: &[u8]) -> Result<(Arc<Node>, CString, CString)> {
        if !self.opts.xattr {
            return Err(Errno::ENOSYS);
        }
        let node = self.node(nodeid)?;
        let name = CString::new(name).map_err(|_| Errno::EINVAL)?;
        let path = self.proc_path(&node);
        Ok((node, path, name))
    }

    /// Run a size-probing call (getxattr/listxattr style) to completion.
    fn sized(size: u32, mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t) -> Result<Vec<u8>> {
        if size > 0 {
            let mut buf = vec![0u8; size as usize];
            let n = sys::check_size(call(buf.as_mut_ptr().cast(), buf.len()))?;
            buf.truncate(n);
            return Ok(buf);
        }
        // Size 0: the server replies with the length; fetch the value to measure it.
        for _ in 0..8 {
            let want = sys::check_size(call(std::ptr::null_mut(), 0))?;
            let mut buf = vec![0u8; want];
            match sys::check_size(call(buf.as_mut_ptr().cast(), buf.len())) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(Errno::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Errno::ERANGE)
    }
}

impl super::mounts::MountHost for PassthroughFs {
    fn node_key(&self, nodeid: u64) -> Option<(u64, u64)> {
        self.lock_nodes().by_id.get(&nodeid).map(|(n, _)| n.key)
    }
}

impl Filesystem for PassthroughFs {
    /// DAX maps the host file itself: the guest shares the host page cache,
    /// so READ/WRITE and FSYNC (which writes back every dirty page of the
    /// inode, mapped ones included) see the same bytes.
    async fn dax_map(
        &self,
        nodeid: u64,
        foffset: u64,
        _len: u64,
        writable: bool,
    ) -> Result<crate::fuse::dax::DaxSource> {
        let node = self.node(nodeid)?;
        // QEMU 11.1 maps read-only ranges with PROT_WRITE too (its mmap
        // fails on an O_RDONLY fd): open read-write when the host allows it.
        let fd = match self.reopen(&node, libc::O_RDWR) {
            Err(Errno::EROFS | Errno::EACCES | Errno::EPERM) if !writable => self.reopen(&node, libc::O_RDONLY)?,
            r => r?,
        };
        Ok(crate::fuse::dax::DaxSource { fd, offset: foffset })
    }

    fn dax_wanted(&self, _nodeid: u64, attr: &abi::fuse_attr) -> bool {
        self.dax_policy.wants(None, attr.size)
    }

    fn init(&self, kernel_flags: u64) -> InitOptions {
        let on = self.opts.announce_submounts && kernel_flags & abi::FUSE_SUBMOUNTS != 0;
        self.submounts.store(on, Ordering::Relaxed);
        let mut want = if on { abi::FUSE_SUBMOUNTS } else { 0 };
        if self.opts.xattr {
            // The server decodes SETXATTR as the 16-byte (extended) header
            // whenever the request is long enough, so ask the kernel to send
            // that form. (Its setxattr_flags only matter with POSIX ACLs,
            // which are not offered.)
            want |= abi::FUSE_SETXATTR_EXT;
        }
        InitOptions { want }
    }

    fn destroy(&self) {
        self.files.clear();
        self.dirs.clear();
        let mut t = self.lock_nodes();
        t.by_id.retain(|&id, _| id == ROOT);
        let root_key = t.by_id.get(&ROOT).map(|(n, _)| n.key);
        t.by_key.retain(|k, _| Some(*k) == root_key);
    }

    async fn lookup(&self, _ctx: &Ctx, parent: u64, name: &[u8]) -> Result<Entry> {
        let parent = self.node(parent)?;
        let name = cname(name)?;
        let (id, _, st) = self.lookup_child(&parent, &name)?;
        Ok(self.child_entry(&parent, id, &st))
    }

    fn forget(&self, nodeid: u64, nlookup: u64) {
        if nodeid == ROOT {
            return;
        }
        let mut t = self.lock_nodes();
        let Some((node, refs)) = t.by_id.get_mut(&nodeid) else { return };
        *refs = refs.saturating_sub(nlookup);
        if *refs > 0 {
            return;
        }
        let key = node.key;
        t.by_id.remove(&nodeid);
        if t.by_key.get(&key) == Some(&nodeid) {
            t.by_key.remove(&key);
        }
    }

    async fn getattr(&self, _ctx: &Ctx, nodeid: u64, fh: Option<u64>) -> Result<(abi::fuse_attr, Duration)> {
        self.getattr_sync(nodeid, fh)
    }

    async fn setattr(&self, _ctx: &Ctx, nodeid: u64, attr: SetAttr) -> Result<(abi::fuse_attr, Duration)> {
        self.setattr_sync(nodeid, &attr)
    }

    async fn mkdir(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, _umask: u32) -> Result<Entry> {
        let parent = self.node(parent)?;
        let name = cname(name)?;
        let gid = Self::new_gid(ctx, &parent)?;
        // SAFETY: NUL-terminated name relative to the parent's fd.
        sys::check(unsafe { libc::mkdirat(parent.dir()?, name.as_ptr(), (mode & 0o1777) as libc::mode_t) })?;
        self.finish_create(ctx, &parent, &name, gid, libc::S_IFDIR | (mode & 0o7777))
    }

    async fn mknod(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, rdev: u32, _umask: u32) -> Result<Entry> {
        let parent = self.node(parent)?;
        let name = cname(name)?;
        let gid = Self::new_gid(ctx, &parent)?;
        let ftype = mode & libc::S_IFMT;
        let ftype = if ftype == 0 { libc::S_IFREG } else { ftype };
        let m = ftype | (mode & 0o1777);
        // SAFETY: NUL-terminated name relative to the parent's fd.
        sys::check(unsafe { libc::mknodat(parent.dir()?, name.as_ptr(), m as libc::mode_t, decode_dev(rdev)) })?;
        self.finish_create(ctx, &parent, &name, gid, ftype | (mode & 0o7777))
    }

    async fn symlink(&self, ctx: &Ctx, parent: u64, name: &[u8], target: &[u8]) -> Result<Entry> {
        let parent = self.node(parent)?;
        let name = cname(name)?;
        let target = CString::new(target).map_err(|_| Errno::EINVAL)?;
        let gid = Self::new_gid(ctx, &parent)?;
        // SAFETY: both strings are NUL-terminated; the target is stored, never followed.
        sys::check(unsafe { libc::symlinkat(target.as_ptr(), parent.dir()?, name.as_ptr()) })?;
        self.finish_create(ctx, &parent, &name, gid, libc::S_IFLNK | 0o777)
    }

    async fn readlink(&self, _ctx: &Ctx, nodeid: u64) -> Result<Vec<u8>> {
        let node = self.node(nodeid)?;
        if node.ftype != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: the empty path means the symlink `fd` itself; `buf` is writable.
        let n =
            sys::check_size(unsafe { libc::readlinkat(node.raw(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
        buf.truncate(n);
        Ok(buf)
    }

    async fn link(&self, _ctx: &Ctx, nodeid: u64, newparent: u64, newname: &[u8]) -> Result<Entry> {
        let node = self.node(nodeid)?;
        let parent = self.node(newparent)?;
        let name = cname(newname)?;
        let dir = parent.dir()?;
        // SAFETY: the empty path with AT_EMPTY_PATH names the inode `fd` refers to.
        let r = sys::check(unsafe { libc::linkat(node.raw(), c"".as_ptr(), dir, name.as_ptr(), libc::AT_EMPTY_PATH) });
        if r == Err(Errno::ENOENT) {
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the magic link does not.
            let proc = self.proc_fd.as_raw_fd();
            // SAFETY: NUL-terminated names; the magic link resolves to this inode.
            sys::check(unsafe {
                libc::linkat(proc, fd_name(node.raw()).as_ptr(), dir, name.as_ptr(), libc::AT_SYMLINK_FOLLOW)
            })?;
        } else {
            r?;
        }
        let (id, _, st) = self.lookup_child(&parent, &name)?;
        Ok(self.entry(id, &st))
    }

    async fn unlink(&self, _ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        let parent = self.node(parent)?;
        let name = cname(name)?;
        // SAFETY: NUL-terminated name relative to the parent's fd.
        sys::check(unsafe { libc::unlinkat(parent.dir()?, name.as_ptr(), 0) })?;
        Ok(())
    }

    async fn rmdir(&self, _ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        let parent = self.node(parent)?;
        let name = cname(name)?;
        // SAFETY: NUL-terminated name relative to the parent's fd.
        sys::check(unsafe { libc::unlinkat(parent.dir()?, name.as_ptr(), libc::AT_REMOVEDIR) })?;
        Ok(())
    }

    async fn rename(
        &self,
        _ctx: &Ctx,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        let (old, new) = (self.node(parent)?, self.node(newparent)?);
        let (name, newname) = (cname(name)?, cname(newname)?);
        let (olddir, newdir) = (old.dir()?, new.dir()?);
        let r = if flags == 0 {
            // SAFETY: NUL-terminated names relative to the parents' fds.
            unsafe { libc::renameat(olddir, name.as_ptr(), newdir, newname.as_ptr()) }
        } else {
            // SAFETY: as above; renameat2 takes the same arguments plus flags.
            unsafe {
                libc::syscall(libc::SYS_renameat2, olddir, name.as_ptr(), newdir, newname.as_ptr(), flags)
                    as libc::c_int
            }
        };
        sys::check(r)?;
        Ok(())
    }

    async fn open(&self, ctx: &Ctx, nodeid: u64, flags: u32) -> Result<(u64, u32)> {
        let node = self.node(nodeid)?;
        let fd = self.reopen(&node, host_open_flags(flags))?;
        Self::kill_on_trunc(ctx, fd.as_raw_fd(), flags)?;
        Ok((self.files.insert(FileHandle { nodeid, fd }), 0))
    }

    async fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
        _umask: u32,
    ) -> Result<(Entry, u64, u32)> {
        self.create_sync(ctx, parent, name, mode, flags)
    }

    async fn read(&self, ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(ctx, nodeid, fh, offset, size, &mut buf).await?;
        Ok(buf)
    }

    async fn read_into(
        &self,
        _ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let h = self.file(nodeid, fh)?;
        let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let start = out.len();
        out.reserve(size as usize);
        // SAFETY: `out` has room for `size` more bytes after `start` (reserved
        // above); pread writes at most `size` bytes there.
        let n = sys::check_size(unsafe {
            libc::pread(h.fd.as_raw_fd(), out.as_mut_ptr().add(start).cast(), size as usize, off)
        })?;
        // SAFETY: pread initialised `n <= size` bytes after `start`.
        unsafe { out.set_len(start + n.min(size as usize)) };
        Ok(())
    }

    async fn write(&self, _ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, data: &[u8], _flags: u32) -> Result<u32> {
        let h = self.file(nodeid, fh)?;
        let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        // O_APPEND handles append at the host's end of file whatever `off` says.
        // SAFETY: `data` is valid for reads of `data.len()` bytes.
        let n = sys::check_size(unsafe { libc::pwrite(h.fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off) })?;
        u32::try_from(n).map_err(|_| Errno::EIO)
    }

    async fn flush(&self, _ctx: &Ctx, nodeid: u64, fh: u64) -> Result<()> {
        // Locks stay in the guest kernel; nothing is buffered here.
        self.file(nodeid, fh).map(|_| ())
    }

    async fn release(&self, _ctx: &Ctx, nodeid: u64, fh: u64, _flags: u32) -> Result<()> {
        self.file(nodeid, fh)?;
        self.files.remove(fh);
        Ok(())
    }

    async fn fsync(&self, _ctx: &Ctx, nodeid: u64, fh: u64, datasync: bool) -> Result<()> {
        let h = self.file(nodeid, fh)?;
        let fd = h.fd.as_raw_fd();
        // SAFETY: plain syscalls on an fd we own.
        sys::check(unsafe {
            if datasync {
                libc::fdatasync(fd)
            } else {
                libc::fsync(fd)
            }
        })?;
        Ok(())
    }

    async fn opendir(&self, _ctx: &Ctx, nodeid: u64, _flags: u32) -> Result<(u64, u32)> {
        let node = self.node(nodeid)?;
        let fd = self.open_dir_fd(&node)?;
        Ok((self.dirs.insert(DirHandle { nodeid, fd: Mutex::new(fd) }), 0))
    }

    async fn readdir(
        &self,
        _ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        max_bytes: u32,
        plus: bool,
    ) -> Result<Vec<DirEntry>> {
        self.readdir_sync(nodeid, fh, offset, max_bytes, plus)
    }

    async fn releasedir(&self, _ctx: &Ctx, nodeid: u64, fh: u64) -> Result<()> {
        self.dir_handle(nodeid, fh)?;
        self.dirs.remove(fh);
        Ok(())
    }

    async fn fsyncdir(&self, _ctx: &Ctx, nodeid: u64, fh: u64, datasync: bool) -> Result<()> {
        let h = self.dir_handle(nodeid, fh)?;
        let fd = h.fd.lock().unwrap_or_else(|p| p.into_inner());
        let raw = fd.as_raw_fd();
        // SAFETY: plain syscalls on an fd we own.
        sys::check(unsafe {
            if datasync {
                libc::fdatasync(raw)
            } else {
                libc::fsync(raw)
            }
        })?;
        Ok(())
    }

    async fn statfs(&self, _ctx: &Ctx, nodeid: u64) -> Result<abi::fuse_kstatfs> {
        let node = self.node(nodeid)?;
        let s = sys::fstatfs(node.raw())?;
        Ok(abi::fuse_kstatfs {
            blocks: s.f_blocks,
            bfree: s.f_bfree,
            bavail: s.f_bavail,
            files: s.f_files,
            ffree: s.f_ffree,
            bsize: s.f_bsize as u32,
            namelen: s.f_namelen as u32,
            frsize: s.f_frsize as u32,
            ..Default::default()
        })
    }

    async fn access(&self, ctx: &Ctx, nodeid: u64, mask: u32) -> Result<()> {
        let st = sys::fstat(self.node(nodeid)?.raw())?;
        let mask = mask & 0o7;
        if mask == 0 {
            return Ok(());
        }
        let mode = st.st_mode;
        if ctx.uid == 0 {
            let exec_ok = mode & libc::S_IFMT == libc::S_IFDIR || mode & 0o111 != 0;
            return if mask & 0o1 != 0 && !exec_ok { Err(Errno::EACCES) } else { Ok(()) };
        }
        // Supplementary groups are not known here; the guest kernel checks them.
        let bits = if ctx.uid == st.st_uid {
            (mode >> 6) & 7
        } else if ctx.gid == st.st_gid {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        if bits & mask == mask {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    async fn lseek(&self, _ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, whence: u32) -> Result<u64> {
        let h = self.file(nodeid, fh)?;
        sys::lseek(h.fd.as_raw_fd(), offset as i64, whence as i32)
    }

    async fn fallocate(&self, _ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, length: u64, mode: u32) -> Result<()> {
        let h = self.file(nodeid, fh)?;
        let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let len = i64::try_from(length).map_err(|_| Errno::EINVAL)?;
        // SAFETY: plain syscall on an fd we own.
        sys::check(unsafe { libc::fallocate(h.fd.as_raw_fd(), mode as i32, off, len) })?;
        Ok(())
    }

    async fn syncfs(&self, _ctx: &Ctx, nodeid: u64) -> Result<()> {
        let node = self.node(nodeid)?;
        // SAFETY: plain syscall; syncfs accepts an O_PATH fd's file system.
        sys::check(unsafe { libc::syncfs(node.raw()) })?;
        Ok(())
    }

    async fn setxattr(&self, _ctx: &Ctx, nodeid: u64, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        let (_node, path, name) = self.xattr_path(nodeid, name)?;
        // SAFETY: NUL-terminated strings; `value` is valid for `value.len()` bytes.
        sys::check(unsafe {
            libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags as i32)
        })?;
        Ok(())
    }

    async fn getxattr(&self, _ctx: &Ctx, nodeid: u64, name: &[u8], size: u32) -> Result<Vec<u8>> {
        let (_node, path, name) = self.xattr_path(nodeid, name)?;
        Self::sized(size, |buf, len| {
            // SAFETY: NUL-terminated strings; `buf` is null with len 0 or valid for `len` bytes.
            unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf, len) }
        })
    }

    async fn listxattr(&self, _ctx: &Ctx, nodeid: u64, size: u32) -> Result<Vec<u8>> {
        let (_node, path, _) = self.xattr_path(nodeid, b"")?;
        Self::sized(size, |buf, len| {
            // SAFETY: NUL-terminated path; `buf` is null with len 0 or valid for `len` bytes.
            unsafe { libc::listxattr(path.as_ptr(), buf.cast(), len) }
        })
    }

    async fn removexattr(&self, _ctx: &Ctx, nodeid: u64, name: &[u8]) -> Result<()> {
        let (_node, path, name) = self.xattr_path(nodeid, name)?;
        // SAFETY: NUL-terminated strings.
        sys::check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const RDWR: u32 = libc::O_RDWR as u32;

    fn fs_in(dir: &Path, xattr: bool) -> PassthroughFs {
        PassthroughFs::new(dir, PassthroughOptions { xattr, ..Default::default() }).unwrap()
    }

    fn root_ctx() -> Ctx {
        Ctx::default()
    }

    fn user(uid: u32, gid: u32) -> Ctx {
        Ctx { uid, gid, ..Default::default() }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn create_write_read_and_forget() {
        let t = tempfile::tempdir().unwrap();
        let fs = fs_in(t.path(), false);
        let c = root_ctx();
        let (e, fh, _) = block_on(fs.create(&c, ROOT, b"f", 0o644, RDWR | libc::O_CREAT as u32, 0)).unwrap();
        assert_eq!(e.attr.mode, libc::S_IFREG | 0o644);
        assert_eq!(block_on(fs.write(&c, e.nodeid, fh, 0, b"hello world", 0)).unwrap(), 11);
        assert_eq!(block_on(fs.read(&c, e.nodeid, fh, 6, 100)).unwrap(), b"world");
        block_on(fs.release(&c, e.nodeid, fh, 0)).unwrap();
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"hello world");
        // A second lookup finds the same node; two forgets free it.
        let e2 = block_on(fs.lookup(&c, ROOT, b"f")).unwrap();
        assert_eq!(e2.nodeid, e.nodeid);
        assert_eq!(fs.counts(), (2, 0, 0));
        fs.forget(e.nodeid, 1);
        assert_eq!(fs.counts().0, 2);
        fs.forget(e.nodeid, 1);
        assert_eq!(fs.counts().0, 1);
        assert_eq!(block_on(fs.getattr(&c, e.nodeid, None)).err(), Some(Errno::EBADF));
        // Node ids are not reused.
        let e3 = block_on(fs.lookup(&c, ROOT, b"f")).unwrap();
        assert_ne!(e3.nodeid, e.nodeid);
        // O_EXCL on an existing name; O_TRUNC and O_APPEND on the host fd.
        let excl = (RDWR as i32 | libc::O_CREAT | libc::O_EXCL) as u32;
        assert_eq!(block_on(fs.create(&c, ROOT, b"f", 0o644, excl, 0)).err(), Some(Errno::EEXIST));
        let (fh, _) = block_on(fs.open(&c, e3.nodeid, (libc::O_WRONLY | libc::O_APPEND) as u32)).unwrap();
        block_on(fs.write(&c, e3.nodeid, fh, 0, b"!", 0)).unwrap();
        block_on(fs.release(&c, e3.nodeid, fh, 0)).unwrap();
        assert_eq!(std::fs::read(t.path().join("f")).unwrap(), b"hello world!");
        let (fh, _) = block_on(fs.open(&c, e3.nodeid, (libc::O_WRONLY | libc::O_TRUNC) as u32)).unwrap();
        block_on(fs.release(&c, e3.nodeid, fh, 0)).unwrap();
        assert_eq!(std::fs::metadata(t.path().join("f")).unwrap().len(), 0);
        // A handle of one node is not valid for another.
        let (fh, _) = block_on(fs.open(&c, e3.nodeid, RDWR)).unwrap();
        assert_eq!(block_on(fs.read(&c, ROOT, fh, 0, 1)).err(), Some(Errno::EBADF));
    }

    #[test]
    fn setattr_size_mode_times() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"0123456789").unwrap();
        let fs = fs_in(t.path(), false);
        let c = root_ctx();
        let e = block_on(fs.lookup(&c, ROOT, b"f")).unwrap();
        let a = SetAttr {
            size: Some(4),
            mode: Some(0o600),
            mtime: Some(TimeSpec::Set { secs: 1_000_000, nsecs: 5 }),
            atime: Some(TimeSpec::Now),
            ..Default::default()
        };
        let (attr, _) = block_on(fs.setattr(&c, e.nodeid, a)).unwrap();
        assert_eq!((attr.size, attr.mode & 0o7777, attr.mtime, attr.mtimensec), (4, 0o600, 1_000_000, 5));
        let m = std::fs::metadata(t.path().join("f")).unwrap();
        assert_eq!((m.len(), m.mode() & 0o7777, m.mtime()), (4, 0o600, 1_000_000));
    }

    #[test]
    fn symlinks_are_never_followed_on_the_host() {
        let t = tempfile::tempdir().unwrap();
        let share = t.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(t.path().join("outside"), b"secret").unwrap();
        std::os::unix::fs::symlink("/etc", share.join("evil")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), share.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", share.join("rel")).unwrap();
        let fs = fs_in(&share, true);
        let c = root_ctx();
        let evil = block_on(fs.lookup(&c, ROOT, b"evil")).unwrap();
        assert_eq!(evil.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(block_on(fs.readlink(&c, evil.nodeid)).unwrap(), b"/etc");
        assert_eq!(block_on(fs.open(&c, evil.nodeid, 0)).err(), Some(Errno::ELOOP));
        assert_eq!(block_on(fs.opendir(&c, evil.nodeid, 0)).err(), Some(Errno::ENOTDIR));
        for name in [&b"passwd"[..], b"shadow", b"."] {
            let r = block_on(fs.lookup(&c, evil.nodeid, name)).err();
            assert!(matches!(r, Some(Errno::ENOTDIR) | Some(Errno::ELOOP) | Some(Errno::EINVAL)), "{r:?}");
        }
        assert_eq!(
            block_on(fs.create(&c, evil.nodeid, b"x", 0o644, RDWR | libc::O_CREAT as u32, 0)).err(),
            Some(Errno::ENOTDIR)
        );
        assert_eq!(block_on(fs.mkdir(&c, evil.nodeid, b"x", 0o755, 0)).err(), Some(Errno::ENOTDIR));
        for name in [&b"abs"[..], b"rel"] {
            let e = block_on(fs.lookup(&c, ROOT, name)).unwrap();
            assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK);
            assert_eq!(block_on(fs.open(&c, e.nodeid, 0)).err(), Some(Errno::ELOOP));
            assert_eq!(block_on(fs.open(&c, e.nodeid, RDWR | libc::O_TRUNC as u32)).err(), Some(Errno::ELOOP));
            // Truncating or timing the symlink node never reaches the target.
            let a = SetAttr { size: Some(0), ..Default::default() };
            assert!(block_on(fs.setattr(&c, e.nodeid, a)).is_err());
            let a = SetAttr { mtime: Some(TimeSpec::Set { secs: 7, nsecs: 0 }), ..Default::default() };
            let (attr, _) = block_on(fs.setattr(&c, e.nodeid, a)).unwrap();
            assert_eq!(attr.mtime, 7);
            let _ = block_on(fs.setxattr(&c, e.nodeid, b"user.x", b"1", 0));
        }
        let m = std::fs::metadata(t.path().join("outside")).unwrap();
        assert_eq!(std::fs::read(t.path().join("outside")).unwrap(), b"secret");
        assert_ne!(m.mtime(), 7);
        assert!(xattr::get(t.path().join("outside"), "user.x").unwrap_or(None).is_none());
        // create over a symlink name does not follow it.
        let r = block_on(fs.create(&c, ROOT, b"abs", 0o644, RDWR | libc::O_CREAT as u32, 0)).err();
        assert_eq!(r, Some(Errno::ELOOP));
        assert_eq!(std::fs::read(t.path().join("outside")).unwrap(), b"secret");
    }

    #[test]
    fn bad_names_are_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let fs = fs_in(t.path(), false);
        let c = root_ctx();
        let d = block_on(fs.lookup(&c, ROOT, b"d")).unwrap();
        for name in [&b".."[..], b".", b"", b"a/b", b"../..", b"/etc", b"a\0b"] {
            assert!(block_on(fs.lookup(&c, d.nodeid, name)).is_err(), "{name:?}");
            assert!(block_on(fs.mkdir(&c, d.nodeid, name, 0o755, 0)).is_err(), "{name:?}");
            assert!(block_on(fs.unlink(&c, d.nodeid, name)).is_err(), "{name:?}");
            assert!(block_on(fs.rename(&c, ROOT, b"d", d.nodeid, name, 0)).is_err(), "{name:?}");
        }
        assert_eq!(block_on(fs.lookup(&c, d.nodeid, b"..")).err(), Some(Errno::EINVAL));
        let long = vec![b'a'; 256];
        assert_eq!(block_on(fs.lookup(&c, ROOT, &long)).err(), Some(Errno::ENAMETOOLONG));
        // Forged node ids.
        assert_eq!(block_on(fs.lookup(&c, 999, b"d")).err(), Some(Errno::EBADF));
        assert_eq!(block_on(fs.open(&c, 999, 0)).err(), Some(Errno::EBADF));
    }

    #[test]
    fn hard_links_share_a_node() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"x").unwrap();
        let fs = fs_in(t.path(), false);
        let c = root_ctx();
        let a = block_on(fs.lookup(&c, ROOT, b"a")).unwrap();
        let b = block_on(fs.link(&c, a.nodeid, ROOT, b"b")).unwrap();
        assert_eq!(b.nodeid, a.nodeid);
        assert_eq!(b.attr.nlink, 2);
        assert_eq!(std::fs::metadata(t.path().join("b")).unwrap().ino(), a.attr.ino);
        block_on(fs.unlink(&c, ROOT, b"a")).unwrap();
        let (attr, _) = block_on(fs.getattr(&c, a.nodeid, None)).unwrap();
        assert_eq!(attr.nlink, 1);
    }

    #[test]
    fn rename_exchange_and_noreplace() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"A").unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/b"), b"B").unwrap();
        let fs = fs_in(t.path(), false);
        let c = root_ctx();
        let d = block_on(fs.lookup(&c, ROOT, b"d")).unwrap();
        let r = block_on(fs.rename(&c, ROOT, b"a", d.nodeid, b"b", abi::RENAME_NOREPLACE)).err();
        assert_eq!(r, Some(Errno::EEXIST));
        block_on(fs.rename(&c, ROOT, b"a", d.nodeid, b"b", abi::RENAME_EXCHANGE)).unwrap();
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"B");
        assert_eq!(std::fs::read(t.path().join("d/b")).unwrap(), b"A");
        block_on(fs.rename(&c, d.nodeid, b"b", ROOT, b"c", abi::RENAME_NOREPLACE)).unwrap();
        assert_eq!(std::fs::read(t.path().join("c")).unwrap(), b"A");
        block_on(fs.rename(&c, ROOT, b"c", ROOT, b"a", 0)).unwrap();
        assert_eq!(std::fs::read(t.path().join("a")).unwrap(), b"A");
        assert!(!t.path().join("c").exists());
        let r = block_on(fs.rename(&c, ROOT, b"nope", ROOT, b"a", abi::RENAME_EXCHANGE)).err();
        assert_eq!(r, Some(Errno::ENOENT));
    }

    #[test]
    fn new_nodes_belong_to_the_caller() {
        if !is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let fs = fs_in(t.path(), false);
        let u = user(1234, 5678);
        let md = |n: &str| std::fs::symlink_metadata(t.path().join(n)).unwrap();
        let (e, fh, _) = block_on(fs.create(&u, ROOT, b"f", 0o4755, RDWR | libc::O_CREAT as u32, 0)).unwrap();
        block_on(fs.release(&u, e.nodeid, fh, 0)).unwrap();
        assert_eq!((e.attr.uid, e.attr.gid, e.attr.mode & 0o7777), (1234, 5678, 0o4755));
        block_on(fs.mkdir(&u, ROOT, b"d", 0o750, 0)).unwrap();
        block_on(fs.symlink(&u, ROOT, b"l", b"/nowhere")).unwrap();
        block_on(fs.mknod(&u, ROOT, b"p", libc::S_IFIFO | 0o640, 0, 0)).unwrap();
        block_on(fs.mknod(&u, ROOT, b"s", libc::S_IFSOCK | 0o600, 0, 0)).unwrap();
        let chr = block_on(fs.mknod(&u, ROOT, b"c", libc::S_IFCHR | 0o600, (1 << 8) | 3, 0)).unwrap();
        assert_eq!(chr.attr.rdev, (1 << 8) | 3);
        assert_eq!(md("c").rdev(), libc::makedev(1, 3));
        for (n, mode) in [("f", 0o4755), ("d", 0o750), ("p", 0o640), ("s", 0o600), ("c", 0o600)] {
            let m = md(n);
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, mode), "{n}");
        }
        assert_eq!((md("l").uid(), md("l").gid()), (1234, 5678));
        // A set-group-ID directory gives its group (and, to directories, its bit).
        std::fs::create_dir(t.path().join("sg")).unwrap();
        std::os::unix::fs::chown(t.path().join("sg"), None, Some(4242)).unwrap();
        std::fs::set_permissions(t.path().join("sg"), std::fs::Permissions::from_mode(0o2777)).unwrap();
        let sg = block_on(fs.lookup(&u, ROOT, b"sg")).unwrap();
        block_on(fs.create(&u, sg.nodeid, b"f", 0o644, RDWR | libc::O_CREAT as u32, 0)).unwrap();
        block_on(fs.mkdir(&u, sg.nodeid, b"d", 0o755, 0)).unwrap();
        assert_eq!((md("sg/f").uid(), md("sg/f").gid()), (1234, 4242));
        assert_eq!((md("sg/d").uid(), md("sg/d").gid(), md("sg/d").mode() & 0o7777), (1234, 4242, 0o2755));
        // An unprivileged O_TRUNC clears set-ID bits; root's does not.
        let f = block_on(fs.lookup(&u, ROOT, b"f")).unwrap();
        block_on(fs.open(&root_ctx(), f.nodeid, (libc::O_WRONLY | libc::O_TRUNC) as u32)).unwrap();
        assert_eq!(md("f").mode() & 0o7777, 0o4755);
        block_on(fs.open(&user(1, 1), f.nodeid, (libc::O_WRONLY | libc::O_TRUNC) as u32)).unwrap();
        assert_eq!(md("f").mode() & 0o7777, 0o755);
    }

    #[test]
    fn special_files_are_never_opened_on_the_host() {
        let t = tempfile::tempdir().unwrap();
        let fs = fs_in(t.path(), false);
        let c = root_ctx();
        let p = block_on(fs.mknod(&c, ROOT, b"p", libc::S_IFIFO | 0o666, 0, 0)).unwrap();
        assert_eq!(block_on(fs.open(&c, p.nodeid, 0)).err(), Some(Errno::EPERM));
        let d = block_on(fs.mknod(&c, ROOT, b"null", libc::S_IFCHR | 0o666, (1 << 8) | 3, 0));
        if let Ok(d) = d {
            assert_eq!(block_on(fs.open(&c, d.nodeid, RDWR)).err(), Some(Errno::EPERM));
        }
    }

    #[test]
    fn readdir_offsets_are_stable_and_plus_counts_lookups() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..100 {
            std::fs::write(t.path().join(format!("file-{i:03}")), b"").unwrap();
        }
        let fs = fs_in(t.path(), false);
        let c = root_ctx();
        for plus in [false, true] {
            let (fh, _) = block_on(fs.opendir(&c, ROOT, 0)).unwrap();
            let mut names = Vec::new();
            let mut off = 0;
            loop {
                let v = block_on(fs.readdir(&c, ROOT, fh, off, 1024, plus)).unwrap();
                if v.is_empty() {
                    break;
                }
                for e in &v {
                    if plus && e.name != b"." && e.name != b".." {
                        let en = e.entry.as_ref().unwrap();
                        assert_ne!(en.nodeid, 0);
                        fs.forget(en.nodeid, 1);
                    }
                    names.push(e.name.clone());
                }
                off = v.last().unwrap().offset;
            }
            block_on(fs.releasedir(&c, ROOT, fh)).unwrap();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), 102, "plus={plus}");
            assert_eq!(fs.counts(), (1, 0, 0));
        }
    }

    #[test]
    fn xattrs_only_when_enabled() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"").unwrap();
        let c = root_ctx();
        let fs = fs_in(t.path(), false);
        let e = block_on(fs.lookup(&c, ROOT, b"f")).unwrap();
        assert_eq!(block_on(fs.getxattr(&c, e.nodeid, b"user.a", 0)).err(), Some(Errno::ENOSYS));
        assert_eq!(block_on(fs.setxattr(&c, e.nodeid, b"user.a", b"v", 0)).err(), Some(Errno::ENOSYS));
        let fs = fs_in(t.path(), true);
        let e = block_on(fs.lookup(&c, ROOT, b"f")).unwrap();
        if block_on(fs.setxattr(&c, e.nodeid, b"user.a", b"value", 0)).is_err() {
            return; // no user xattrs on this file system
        }
        assert_eq!(block_on(fs.getxattr(&c, e.nodeid, b"user.a", 0)).unwrap(), b"value");
        assert_eq!(block_on(fs.getxattr(&c, e.nodeid, b"user.a", 64)).unwrap(), b"value");
        assert_eq!(block_on(fs.getxattr(&c, e.nodeid, b"user.a", 2)).err(), Some(Errno::ERANGE));
        assert!(block_on(fs.listxattr(&c, e.nodeid, 0)).unwrap().windows(7).any(|w| w == b"user.a\0"));
        let r = block_on(fs.setxattr(&c, e.nodeid, b"user.a", b"v", libc::XATTR_CREATE as u32)).err();
        assert_eq!(r, Some(Errno::EEXIST));
        block_on(fs.removexattr(&c, e.nodeid, b"user.a")).unwrap();
        assert_eq!(block_on(fs.getxattr(&c, e.nodeid, b"user.a", 0)).err(), Some(Errno::ENODATA));
    }

    #[test]
    fn statfs_lseek_fallocate_access() {
        let t = tempfile::tempdir().unwrap();
        let fs = fs_in(t.path(), false);
        let c = root_ctx();
        let st = block_on(fs.statfs(&c, ROOT)).unwrap();
        assert!(st.bsize > 0 && st.namelen > 0);
        let (e, fh, _) = block_on(fs.create(&c, ROOT, b"f", 0o600, RDWR | libc::O_CREAT as u32, 0)).unwrap();
        block_on(fs.write(&c, e.nodeid, fh, 1 << 20, b"x", 0)).unwrap();
        let data = block_on(fs.lseek(&c, e.nodeid, fh, 0, libc::SEEK_DATA as u32)).unwrap();
        assert!(data <= 1 << 20);
        let hole = block_on(fs.lseek(&c, e.nodeid, fh, 0, libc::SEEK_HOLE as u32)).unwrap();
        assert!(hole <= (1 << 20) + 1);
        block_on(fs.fallocate(&c, e.nodeid, fh, 0, 4 << 20, 0)).unwrap();
        assert_eq!(block_on(fs.getattr(&c, e.nodeid, Some(fh))).unwrap().0.size, 4 << 20);
        block_on(fs.fsync(&c, e.nodeid, fh, true)).unwrap();
        assert!(block_on(fs.access(&c, e.nodeid, libc::R_OK as u32)).is_ok());
        assert_eq!(block_on(fs.access(&c, e.nodeid, libc::X_OK as u32)).err(), Some(Errno::EACCES));
        assert_eq!(block_on(fs.access(&user(4321, 4321), e.nodeid, libc::R_OK as u32)).err(), Some(Errno::EACCES));
    }

    #[test]
    fn create_over_an_existing_fifo_does_not_open_it() {
        let t = tempfile::tempdir().unwrap();
        let fs = fs_in(t.path(), false);
        let c = root_ctx();
        let p = block_on(fs.mknod(&c, ROOT, b"p", libc::S_IFIFO | 0o666, 0, 0)).unwrap();
        fs.forget(p.nodeid, 1);
        // Without O_EXCL an existing name is opened, but only if it is a regular file.
        let r = block_on(fs.create(&c, ROOT, b"p", 0o644, libc::O_CREAT as u32, 0)).err();
        assert_eq!(r, Some(Errno::EPERM));
        assert_eq!(fs.counts(), (1, 0, 0));
    }

    #[test]
    fn mounts_made_after_start_are_seen_and_announced() {
        if !is_root() {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("vol")).unwrap();
        let opts = PassthroughOptions { announce_submounts: true, ..Default::default() };
        let fs = PassthroughFs::new(t.path(), opts).unwrap();
        fs.init(abi::FUSE_SUBMOUNTS);
        let c = root_ctx();
        let before = block_on(fs.lookup(&c, ROOT, b"vol")).unwrap();
        assert_eq!(before.attr.flags & abi::FUSE_ATTR_SUBMOUNT, 0);
        let target = t.path().join("vol");
        let flags = nix::mount::MsFlags::empty();
        if nix::mount::mount(Some("tmpfs"), &target, Some("tmpfs"), flags, None::<&str>).is_err() {
            return; // no mount privilege here
        }
        std::fs::write(target.join("inside"), b"x").unwrap();
        let after = block_on(fs.lookup(&c, ROOT, b"vol"));
        let inside = after.as_ref().ok().map(|v| block_on(fs.lookup(&c, v.nodeid, b"inside")));
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        let after = after.unwrap();
        assert_ne!(after.nodeid, before.nodeid);
        assert_ne!(after.attr.flags & abi::FUSE_ATTR_SUBMOUNT, 0);
        assert_eq!(inside.unwrap().unwrap().attr.size, 1);
    }
}
