//! The trait a file system implements to be served over FUSE.
//!
//! Lookup-count contract (as in the kernel and virtiofsd): every successful
//! LOOKUP, CREATE, MKDIR, MKNOD, SYMLINK, LINK and every READDIRPLUS entry with
//! a non-zero nodeid adds one reference to that node; FORGET / BATCH_FORGET
//! drop `nlookup` references, and a node whose count reaches zero may be freed.
//! The root (nodeid 1) is never freed. When the server cannot deliver a
//! READDIRPLUS entry the file system handed out (the reply buffer was full), it
//! calls `forget(nodeid, 1)` for it.
//!
//! Methods return futures that must be `Send`: each request runs as its own
//! task. No implementation may hold a blocking lock across an `.await`.

use std::future::Future;
use std::time::Duration;

use super::abi;

/// An errno value (positive), as the FUSE reply carries it negated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EINTR: Errno = Errno(libc::EINTR);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);
    pub const ENOMEM: Errno = Errno(libc::ENOMEM);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ENOTSUP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW);
    pub const ENXIO: Errno = Errno(libc::ENXIO);
    pub const ELOOP: Errno = Errno(libc::ELOOP);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const EBUSY: Errno = Errno(libc::EBUSY);
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

pub type Result<T> = std::result::Result<T, Errno>;

/// Who sent the request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub unique: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// A looked-up node, as LOOKUP/CREATE/MKDIR... reply it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Entry {
    pub nodeid: u64,
    pub generation: u64,
    pub attr: abi::fuse_attr,
    pub entry_valid: Duration,
    pub attr_valid: Duration,
}

impl Entry {
    pub fn to_abi(&self) -> abi::fuse_entry_out {
        abi::fuse_entry_out {
            nodeid: self.nodeid,
            generation: self.generation,
            entry_valid: self.entry_valid.as_secs(),
            attr_valid: self.attr_valid.as_secs(),
            entry_valid_nsec: self.entry_valid.subsec_nanos(),
            attr_valid_nsec: self.attr_valid.subsec_nanos(),
            attr: self.attr,
        }
    }
}

/// One directory entry. `offset` is the cookie the kernel passes back to
/// continue after this entry. `entry` is filled for READDIRPLUS.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub ino: u64,
    pub offset: u64,
    /// DT_* type.
    pub typ: u32,
    pub name: Vec<u8>,
    pub entry: Option<Entry>,
}

/// A time to set: a value or "now".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSpec {
    Now,
    Set { secs: u64, nsecs: u32 },
}

/// What SETATTR asks to change.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
    pub ctime: Option<TimeSpec>,
    pub fh: Option<u64>,
}

/// What the file system wants from INIT.
#[derive(Clone, Copy, Debug, Default)]
pub struct InitOptions {
    /// Extra INIT flags to offer (intersected with what the kernel offers).
    pub want: u64,
}

macro_rules! unsupported {
    ($($name:ident ( $($arg:ident : $t:ty),* ) -> $ret:ty ;)*) => {
        $(
            #[allow(unused_variables)]
            fn $name(&self, ctx: &Ctx, $($arg: $t),*) -> impl Future<Output = Result<$ret>> + Send {
                async { Err(Errno::ENOSYS) }
            }
        )*
    };
}

/// A file system served by [`super::Server`]. Names passed in have already
/// been checked to be one valid path component.
pub trait Filesystem: Send + Sync + 'static {
    /// Called once per INIT; returns extra flags the file system wants.
    fn init(&self, kernel_flags: u64) -> InitOptions {
        let _ = kernel_flags;
        InitOptions::default()
    }

    /// Called on DESTROY: the session is over; drop per-session state.
    fn destroy(&self) {}

    fn lookup(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> impl Future<Output = Result<Entry>> + Send;

    /// Drop `nlookup` references to `nodeid` (never replies).
    fn forget(&self, nodeid: u64, nlookup: u64);

    fn getattr(
        &self,
        ctx: &Ctx,
        nodeid: u64,
        fh: Option<u64>,
    ) -> impl Future<Output = Result<(abi::fuse_attr, Duration)>> + Send;

    fn setattr(
        &self,
        ctx: &Ctx,
        nodeid: u64,
        attr: SetAttr,
    ) -> impl Future<Output = Result<(abi::fuse_attr, Duration)>> + Send;

    fn mkdir(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> impl Future<Output = Result<Entry>> + Send;

    fn unlink(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> impl Future<Output = Result<()>> + Send;

    fn rmdir(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> impl Future<Output = Result<()>> + Send;

    /// RENAME and RENAME2 (`flags` = 0 for plain RENAME).
    fn rename(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Returns (fh, FOPEN_* flags).
    fn open(&self, ctx: &Ctx, nodeid: u64, flags: u32) -> impl Future<Output = Result<(u64, u32)>> + Send;

    /// Returns (entry, fh, FOPEN_* flags).
    fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
        umask: u32,
    ) -> impl Future<Output = Result<(Entry, u64, u32)>> + Send;

    fn read(
        &self,
        ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send;

    /// READ appending at most `size` bytes to `out` (which already holds the
    /// reply header). The default calls [`Filesystem::read`] and copies; a file
    /// system that can read straight into the buffer overrides it and saves a
    /// copy of the data.
    fn read_into(
        &self,
        ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
        out: &mut Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let data = self.read(ctx, nodeid, fh, offset, size).await?;
            out.extend_from_slice(&data[..data.len().min(size as usize)]);
            Ok(())
        }
    }

    /// Returns the number of bytes written. `flags` are the open flags
    /// (O_SYNC / O_DSYNC matter).
    fn write(
        &self,
        ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        flags: u32,
    ) -> impl Future<Output = Result<u32>> + Send;

    fn flush(&self, ctx: &Ctx, nodeid: u64, fh: u64) -> impl Future<Output = Result<()>> + Send;

    fn release(&self, ctx: &Ctx, nodeid: u64, fh: u64, flags: u32) -> impl Future<Output = Result<()>> + Send;

    fn fsync(&self, ctx: &Ctx, nodeid: u64, fh: u64, datasync: bool) -> impl Future<Output = Result<()>> + Send;

    fn opendir(&self, ctx: &Ctx, nodeid: u64, flags: u32) -> impl Future<Output = Result<(u64, u32)>> + Send;

    /// Entries after cookie `offset`. `max_bytes` is the reply budget, so an
    /// implementation may stop early; returning more is fine (the server drops
    /// what does not fit and forgets their references when `plus`).
    fn readdir(
        &self,
        ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        max_bytes: u32,
        plus: bool,
    ) -> impl Future<Output = Result<Vec<DirEntry>>> + Send;

    fn releasedir(&self, ctx: &Ctx, nodeid: u64, fh: u64) -> impl Future<Output = Result<()>> + Send;

    fn fsyncdir(&self, ctx: &Ctx, nodeid: u64, fh: u64, datasync: bool) -> impl Future<Output = Result<()>> + Send {
        let _ = (ctx, nodeid, fh, datasync);
        async { Ok(()) }
    }

    fn statfs(&self, ctx: &Ctx, nodeid: u64) -> impl Future<Output = Result<abi::fuse_kstatfs>> + Send;

    fn access(&self, ctx: &Ctx, nodeid: u64, mask: u32) -> impl Future<Output = Result<()>> + Send;

    /// SEEK_SET/CUR/END/DATA/HOLE; returns the new offset.
    fn lseek(
        &self,
        ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        whence: u32,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// DAX (FUSE_SETUPMAPPING): `len` bytes of the file at `foffset`, as a
    /// mappable fd range, pinned until the matching [`Filesystem::dax_unmap`]:
    /// the fd stays at least that long and holds the same bytes READ and WRITE
    /// see. `writable` asks for a mapping the guest writes through (it counts
    /// as dirty until unmapped). The ranges asked for may reach past EOF.
    fn dax_map(
        &self,
        nodeid: u64,
        foffset: u64,
        len: u64,
        writable: bool,
    ) -> impl Future<Output = Result<super::dax::DaxSource>> + Send {
        let _ = (nodeid, foffset, len, writable);
        async { Err(Errno::ENOSYS) }
    }

    /// DAX: a range given out by `dax_map` is no longer mapped: release its pin
    /// and, when it was `writable`, write what the guest wrote back.
    fn dax_unmap(
        &self,
        nodeid: u64,
        foffset: u64,
        len: u64,
        writable: bool,
    ) -> impl Future<Output = Result<()>> + Send {
        let _ = (nodeid, foffset, len, writable);
        async { Ok(()) }
    }

    /// DAX per inode (`-o dax=inode`): should the guest use DAX for this node?
    /// Sets FUSE_ATTR_DAX in its attributes.
    fn dax_wanted(&self, nodeid: u64, attr: &abi::fuse_attr) -> bool {
        let _ = (nodeid, attr);
        false
    }

    unsupported! {
        readlink(nodeid: u64) -> Vec<u8>;
        symlink(parent: u64, name: &[u8], target: &[u8]) -> Entry;
        mknod(parent: u64, name: &[u8], mode: u32, rdev: u32, umask: u32) -> Entry;
        link(nodeid: u64, newparent: u64, newname: &[u8]) -> Entry;
        setxattr(nodeid: u64, name: &[u8], value: &[u8], flags: u32) -> ();
        getxattr(nodeid: u64, name: &[u8], size: u32) -> Vec<u8>;
        listxattr(nodeid: u64, size: u32) -> Vec<u8>;
        removexattr(nodeid: u64, name: &[u8]) -> ();
        fallocate(nodeid: u64, fh: u64, offset: u64, length: u64, mode: u32) -> ();
        syncfs(nodeid: u64) -> ();
    }
}
