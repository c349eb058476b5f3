//! The kernel FUSE ABI: opcodes, flags and the `repr(C)` structs exchanged with
//! the kernel, protocol 7.31 up to 7.41 (what Linux 6.12 speaks), written from
//! `include/uapi/linux/fuse.h`. Every struct's size is asserted in the tests
//! below; all fields are plain integers, so every bit pattern is a valid value
//! (which is what makes [`Pod`] sound).

#![allow(non_camel_case_types)]

/// Protocol version we speak.
pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR_VERSION: u32 = 41;
/// Oldest minor version we accept (virtio-fs needs 7.27+, we ask 7.31).
pub const MIN_KERNEL_MINOR_VERSION: u32 = 31;

/// Bit 0 of `unique` marks an interrupt request (`/dev/fuse` only).
pub const FUSE_INT_REQ_BIT: u64 = 1;
/// Root node id.
pub const FUSE_ROOT_ID: u64 = 1;
/// Longest name component the kernel accepts.
pub const NAME_MAX: usize = 255;
/// Longest symlink target / path we accept (PATH_MAX).
pub const PATH_MAX: usize = 4096;

/// FUSE opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Opcode {
    Lookup = 1,
    Forget = 2,
    Getattr = 3,
    Setattr = 4,
    Readlink = 5,
    Symlink = 6,
    Mknod = 8,
    Mkdir = 9,
    Unlink = 10,
    Rmdir = 11,
    Rename = 12,
    Link = 13,
    Open = 14,
    Read = 15,
    Write = 16,
    Statfs = 17,
    Release = 18,
    Fsync = 20,
    Setxattr = 21,
    Getxattr = 22,
    Listxattr = 23,
    Removexattr = 24,
    Flush = 25,
    Init = 26,
    Opendir = 27,
    Readdir = 28,
    Releasedir = 29,
    Fsyncdir = 30,
    Getlk = 31,
    Setlk = 32,
    Setlkw = 33,
    Access = 34,
    Create = 35,
    Interrupt = 36,
    Bmap = 37,
    Destroy = 38,
    Ioctl = 39,
    Poll = 40,
    NotifyReply = 41,
    BatchForget = 42,
    Fallocate = 43,
    Readdirplus = 44,
    Rename2 = 45,
    Lseek = 46,
    CopyFileRange = 47,
    SetupMapping = 48,
    RemoveMapping = 49,
    Syncfs = 50,
    Tmpfile = 51,
    Statx = 52,
}

impl Opcode {
    /// Decode an opcode number; `None` for numbers this ABI does not know.
    pub fn from_u32(n: u32) -> Option<Opcode> {
        use Opcode::*;
        Some(match n {
            1 => Lookup,
            2 => Forget,
            3 => Getattr,
            4 => Setattr,
            5 => Readlink,
            6 => Symlink,
            8 => Mknod,
            9 => Mkdir,
            10 => Unlink,
            11 => Rmdir,
            12 => Rename,
            13 => Link,
            14 => Open,
            15 => Read,
            16 => Write,
            17 => Statfs,
            18 => Release,
            20 => Fsync,
            21 => Setxattr,
            22 => Getxattr,
            23 => Listxattr,
            24 => Removexattr,
            25 => Flush,
            26 => Init,
            27 => Opendir,
            28 => Readdir,
            29 => Releasedir,
            30 => Fsyncdir,
            31 => Getlk,
            32 => Setlk,
            33 => Setlkw,
            34 => Access,
            35 => Create,
            36 => Interrupt,
            37 => Bmap,
            38 => Destroy,
            39 => Ioctl,
            40 => Poll,
            41 => NotifyReply,
            42 => BatchForget,
            43 => Fallocate,
            44 => Readdirplus,
            45 => Rename2,
            46 => Lseek,
            47 => CopyFileRange,
            48 => SetupMapping,
            49 => RemoveMapping,
            50 => Syncfs,
            51 => Tmpfile,
            52 => Statx,
            _ => return None,
        })
    }

    /// A short lower-case name, for logs and metrics.
    pub fn name(self) -> &'static str {
        use Opcode::*;
        match self {
            Lookup => "lookup",
            Forget => "forget",
            Getattr => "getattr",
            Setattr => "setattr",
            Readlink => "readlink",
            Symlink => "symlink",
            Mknod => "mknod",
            Mkdir => "mkdir",
            Unlink => "unlink",
            Rmdir => "rmdir",
            Rename => "rename",
            Link => "link",
            Open => "open",
            Read => "read",
            Write => "write",
            Statfs => "statfs",
            Release => "release",
            Fsync => "fsync",
            Setxattr => "setxattr",
            Getxattr => "getxattr",
            Listxattr => "listxattr",
            Removexattr => "removexattr",
            Flush => "flush",
            Init => "init",
            Opendir => "opendir",
            Readdir => "readdir",
            Releasedir => "releasedir",
            Fsyncdir => "fsyncdir",
            Getlk => "getlk",
            Setlk => "setlk",
            Setlkw => "setlkw",
            Access => "access",
            Create => "create",
            Interrupt => "interrupt",
            Bmap => "bmap",
            Destroy => "destroy",
            Ioctl => "ioctl",
            Poll => "poll",
            NotifyReply => "notify_reply",
            BatchForget => "batch_forget",
            Fallocate => "fallocate",
            Readdirplus => "readdirplus",
            Rename2 => "rename2",
            Lseek => "lseek",
            CopyFileRange => "copy_file_range",
            SetupMapping => "setupmapping",
            RemoveMapping => "removemapping",
            Syncfs => "syncfs",
            Tmpfile => "tmpfile",
            Statx => "statx",
        }
    }
}

// INIT flags (fuse_init_in.flags / fuse_init_out.flags; flags2 holds bits 32..63).
pub const FUSE_ASYNC_READ: u64 = 1 << 0;
pub const FUSE_POSIX_LOCKS: u64 = 1 << 1;
pub const FUSE_FILE_OPS: u64 = 1 << 2;
pub const FUSE_ATOMIC_O_TRUNC: u64 = 1 << 3;
pub const FUSE_EXPORT_SUPPORT: u64 = 1 << 4;
pub const FUSE_BIG_WRITES: u64 = 1 << 5;
pub const FUSE_DONT_MASK: u64 = 1 << 6;
pub const FUSE_SPLICE_WRITE: u64 = 1 << 7;
pub const FUSE_SPLICE_MOVE: u64 = 1 << 8;
pub const FUSE_SPLICE_READ: u64 = 1 << 9;
pub const FUSE_FLOCK_LOCKS: u64 = 1 << 10;
pub const FUSE_HAS_IOCTL_DIR: u64 = 1 << 11;
pub const FUSE_AUTO_INVAL_DATA: u64 = 1 << 12;
pub const FUSE_DO_READDIRPLUS: u64 = 1 << 13;
pub const FUSE_READDIRPLUS_AUTO: u64 = 1 << 14;
pub const FUSE_ASYNC_DIO: u64 = 1 << 15;
pub const FUSE_WRITEBACK_CACHE: u64 = 1 << 16;
pub const FUSE_NO_OPEN_SUPPORT: u64 = 1 << 17;
pub const FUSE_PARALLEL_DIROPS: u64 = 1 << 18;
pub const FUSE_HANDLE_KILLPRIV: u64 = 1 << 19;
pub const FUSE_POSIX_ACL: u64 = 1 << 20;
pub const FUSE_ABORT_ERROR: u64 = 1 << 21;
pub const FUSE_MAX_PAGES: u64 = 1 << 22;
pub const FUSE_CACHE_SYMLINKS: u64 = 1 << 23;
pub const FUSE_NO_OPENDIR_SUPPORT: u64 = 1 << 24;
pub const FUSE_EXPLICIT_INVAL_DATA: u64 = 1 << 25;
pub const FUSE_MAP_ALIGNMENT: u64 = 1 << 26;
pub const FUSE_SUBMOUNTS: u64 = 1 << 27;
pub const FUSE_HANDLE_KILLPRIV_V2: u64 = 1 << 28;
pub const FUSE_SETXATTR_EXT: u64 = 1 << 29;
pub const FUSE_INIT_EXT: u64 = 1 << 30;
pub const FUSE_INIT_RESERVED: u64 = 1 << 31;
pub const FUSE_SECURITY_CTX: u64 = 1 << 32;
pub const FUSE_HAS_INODE_DAX: u64 = 1 << 33;
pub const FUSE_CREATE_SUPP_GROUP: u64 = 1 << 34;
pub const FUSE_HAS_EXPIRE_ONLY: u64 = 1 << 35;
pub const FUSE_DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
pub const FUSE_PASSTHROUGH: u64 = 1 << 37;
pub const FUSE_NO_EXPORT_SUPPORT: u64 = 1 << 38;
pub const FUSE_HAS_RESEND: u64 = 1 << 39;
pub const FUSE_ALLOW_IDMAP: u64 = 1 << 40;

// SETATTR valid bits.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;
pub const FATTR_LOCKOWNER: u32 = 1 << 9;
pub const FATTR_CTIME: u32 = 1 << 10;
pub const FATTR_KILL_SUIDGID: u32 = 1 << 11;

// OPEN reply flags.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
pub const FOPEN_NONSEEKABLE: u32 = 1 << 2;
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
pub const FOPEN_STREAM: u32 = 1 << 4;
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
pub const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

pub const FUSE_GETATTR_FH: u32 = 1 << 0;
pub const FUSE_RELEASE_FLUSH: u32 = 1 << 0;
pub const FUSE_RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;
pub const FUSE_WRITE_CACHE: u32 = 1 << 0;
pub const FUSE_WRITE_LOCKOWNER: u32 = 1 << 1;
pub const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
pub const FUSE_READ_LOCKOWNER: u32 = 1 << 1;
pub const FUSE_FSYNC_FDATASYNC: u32 = 1 << 0;
pub const FUSE_ATTR_SUBMOUNT: u32 = 1 << 0;
pub const FUSE_ATTR_DAX: u32 = 1 << 1;
pub const FUSE_SETUPMAPPING_FLAG_WRITE: u64 = 1 << 0;
pub const FUSE_SETUPMAPPING_FLAG_READ: u64 = 1 << 1;
/// Most ranges one REMOVEMAPPING may carry (fs/fuse/dax.c).
pub const FUSE_REMOVEMAPPING_MAX_ENTRY: usize = 256;

// RENAME2 flags (linux/fs.h).
pub const RENAME_NOREPLACE: u32 = 1 << 0;
pub const RENAME_EXCHANGE: u32 = 1 << 1;
pub const RENAME_WHITEOUT: u32 = 1 << 2;

/// Marker for plain-old-data ABI structs: `repr(C)`, integers only, no padding
/// the compiler inserts on its own (sizes are asserted), so any byte string of
/// the right length is a valid value.
///
/// # Safety
/// Implement only for `repr(C)` structs made solely of integer fields.
pub unsafe trait Pod: Copy + Default + Sized {
    /// Read one value from the front of `buf`; `None` when it is too short.
    fn from_prefix(buf: &[u8]) -> Option<Self> {
        if buf.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: `buf` holds at least size_of::<Self>() bytes (checked above),
        // read_unaligned copes with any alignment, and every bit pattern is a
        // valid `Self` because it is made only of integers (trait contract).
        Some(unsafe { std::ptr::read_unaligned(buf.as_ptr() as *const Self) })
    }

    /// The value's bytes, as the kernel expects them.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `self` is a valid, initialised repr(C) integer-only struct with
        // no implicit padding (sizes asserted in tests), so viewing its
        // size_of::<Self>() bytes as u8 is sound for the borrow's lifetime.
        unsafe { std::slice::from_raw_parts(self as *const Self as *const u8, std::mem::size_of::<Self>()) }
    }
}

macro_rules! pod {
    ($($(#[$m:meta])* pub struct $name:ident { $(pub $f:ident : $t:ty),* $(,)? })*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
            pub struct $name { $(pub $f: $t),* }
            // SAFETY: repr(C), integer fields only; size asserted in tests.
            unsafe impl Pod for $name {}
        )*
    };
}

pod! {
    pub struct fuse_attr {
        pub ino: u64, pub size: u64, pub blocks: u64,
        pub atime: u64, pub mtime: u64, pub ctime: u64,
        pub atimensec: u32, pub mtimensec: u32, pub ctimensec: u32,
        pub mode: u32, pub nlink: u32, pub uid: u32, pub gid: u32, pub rdev: u32,
        pub blksize: u32, pub flags: u32,
    }
    pub struct fuse_kstatfs {
        pub blocks: u64, pub bfree: u64, pub bavail: u64, pub files: u64, pub ffree: u64,
        pub bsize: u32, pub namelen: u32, pub frsize: u32, pub padding: u32,
        pub spare0: u32, pub spare1: u32, pub spare2: u32, pub spare3: u32, pub spare4: u32, pub spare5: u32,
    }
    pub struct fuse_file_lock { pub start: u64, pub end: u64, pub typ: u32, pub pid: u32 }
    pub struct fuse_entry_out {
        pub nodeid: u64, pub generation: u64, pub entry_valid: u64, pub attr_valid: u64,
        pub entry_valid_nsec: u32, pub attr_valid_nsec: u32, pub attr: fuse_attr,
    }
    pub struct fuse_forget_in { pub nlookup: u64 }
    pub struct fuse_forget_one { pub nodeid: u64, pub nlookup: u64 }
    pub struct fuse_batch_forget_in { pub count: u32, pub dummy: u32 }
    pub struct fuse_getattr_in { pub getattr_flags: u32, pub dummy: u32, pub fh: u64 }
    pub struct fuse_attr_out { pub attr_valid: u64, pub attr_valid_nsec: u32, pub dummy: u32, pub attr: fuse_attr }
    pub struct fuse_mknod_in { pub mode: u32, pub rdev: u32, pub umask: u32, pub padding: u32 }
    pub struct fuse_mkdir_in { pub mode: u32, pub umask: u32 }
    pub struct fuse_rename_in { pub newdir: u64 }
    pub struct fuse_rename2_in { pub newdir: u64, pub flags: u32, pub padding: u32 }
    pub struct fuse_link_in { pub oldnodeid: u64 }
    pub struct fuse_setattr_in {
        pub valid: u32, pub padding: u32, pub fh: u64, pub size: u64, pub lock_owner: u64,
        pub atime: u64, pub mtime: u64, pub ctime: u64,
        pub atimensec: u32, pub mtimensec: u32, pub ctimensec: u32,
        pub mode: u32, pub unused4: u32, pub uid: u32, pub gid: u32, pub unused5: u32,
    }
    pub struct fuse_open_in { pub flags: u32, pub open_flags: u32 }
    pub struct fuse_create_in { pub flags: u32, pub mode: u32, pub umask: u32, pub open_flags: u32 }
    pub struct fuse_open_out { pub fh: u64, pub open_flags: u32, pub backing_id: i32 }
    pub struct fuse_release_in { pub fh: u64, pub flags: u32, pub release_flags: u32, pub lock_owner: u64 }
    pub struct fuse_flush_in { pub fh: u64, pub unused: u32, pub padding: u32, pub lock_owner: u64 }
    pub struct fuse_read_in {
        pub fh: u64, pub offset: u64, pub size: u32, pub read_flags: u32,
        pub lock_owner: u64, pub flags: u32, pub padding: u32,
    }
    pub struct fuse_write_in {
        pub fh: u64, pub offset: u64, pub size: u32, pub write_flags: u32,
        pub lock_owner: u64, pub flags: u32, pub padding: u32,
    }
    pub struct fuse_write_out { pub size: u32, pub padding: u32 }
    pub struct fuse_statfs_out { pub st: fuse_kstatfs }
    pub struct fuse_fsync_in { pub fh: u64, pub fsync_flags: u32, pub padding: u32 }
    pub struct fuse_setxattr_in { pub size: u32, pub flags: u32, pub setxattr_flags: u32, pub padding: u32 }
    pub struct fuse_getxattr_in { pub size: u32, pub padding: u32 }
    pub struct fuse_getxattr_out { pub size: u32, pub padding: u32 }
    pub struct fuse_lk_in { pub fh: u64, pub owner: u64, pub lk: fuse_file_lock, pub lk_flags: u32, pub padding: u32 }
    pub struct fuse_lk_out { pub lk: fuse_file_lock }
    pub struct fuse_access_in { pub mask: u32, pub padding: u32 }
    /// The 7.36+ INIT request; older kernels send only the first 16 bytes.
    pub struct fuse_init_in {
        pub major: u32, pub minor: u32, pub max_readahead: u32, pub flags: u32,
        pub flags2: u32,
        pub unused0: u32, pub unused1: u32, pub unused2: u32, pub unused3: u32, pub unused4: u32,
        pub unused5: u32, pub unused6: u32, pub unused7: u32, pub unused8: u32, pub unused9: u32,
        pub unused10: u32,
    }
    pub struct fuse_init_out {
        pub major: u32, pub minor: u32, pub max_readahead: u32, pub flags: u32,
        pub max_background: u16, pub congestion_threshold: u16, pub max_write: u32,
        pub time_gran: u32, pub max_pages: u16, pub map_alignment: u16,
        pub flags2: u32, pub max_stack_depth: u32,
        pub unused0: u32, pub unused1: u32, pub unused2: u32, pub unused3: u32, pub unused4: u32, pub unused5: u32,
    }
    pub struct fuse_interrupt_in { pub unique: u64 }
    pub struct fuse_bmap_in { pub block: u64, pub blocksize: u32, pub padding: u32 }
    pub struct fuse_bmap_out { pub block: u64 }
    pub struct fuse_ioctl_in { pub fh: u64, pub flags: u32, pub cmd: u32, pub arg: u64, pub in_size: u32, pub out_size: u32 }
    pub struct fuse_poll_in { pub fh: u64, pub kh: u64, pub flags: u32, pub events: u32 }
    pub struct fuse_fallocate_in { pub fh: u64, pub offset: u64, pub length: u64, pub mode: u32, pub padding: u32 }
    pub struct fuse_in_header {
        pub len: u32, pub opcode: u32, pub unique: u64, pub nodeid: u64,
        pub uid: u32, pub gid: u32, pub pid: u32, pub total_extlen: u16, pub padding: u16,
    }
    pub struct fuse_out_header { pub len: u32, pub error: i32, pub unique: u64 }
    pub struct fuse_dirent { pub ino: u64, pub off: u64, pub namelen: u32, pub typ: u32 }
    pub struct fuse_direntplus { pub entry_out: fuse_entry_out, pub dirent: fuse_dirent }
    pub struct fuse_lseek_in { pub fh: u64, pub offset: u64, pub whence: u32, pub padding: u32 }
    pub struct fuse_lseek_out { pub offset: u64 }
    pub struct fuse_copy_file_range_in {
        pub fh_in: u64, pub off_in: u64, pub nodeid_out: u64, pub fh_out: u64, pub off_out: u64,
        pub len: u64, pub flags: u64,
    }
    pub struct fuse_setupmapping_in { pub fh: u64, pub foffset: u64, pub len: u64, pub flags: u64, pub moffset: u64 }
    pub struct fuse_removemapping_in { pub count: u32 }
    pub struct fuse_removemapping_one { pub moffset: u64, pub len: u64 }
    pub struct fuse_syncfs_in { pub padding: u64 }
    pub struct fuse_statx_in { pub getattr_flags: u32, pub reserved: u32, pub fh: u64, pub sx_flags: u32, pub sx_mask: u32 }
}

/// Size of the INIT request sent by kernels before 7.36 (no flags2).
pub const FUSE_COMPAT_INIT_IN_SIZE: usize = 16;
/// Size of the SETXATTR request without FUSE_SETXATTR_EXT.
pub const FUSE_COMPAT_SETXATTR_IN_SIZE: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(size_of::<fuse_attr>(), 88);
        assert_eq!(size_of::<fuse_kstatfs>(), 80);
        assert_eq!(size_of::<fuse_file_lock>(), 24);
        assert_eq!(size_of::<fuse_entry_out>(), 128);
        assert_eq!(size_of::<fuse_forget_in>(), 8);
        assert_eq!(size_of::<fuse_forget_one>(), 16);
        assert_eq!(size_of::<fuse_batch_forget_in>(), 8);
        assert_eq!(size_of::<fuse_getattr_in>(), 16);
        assert_eq!(size_of::<fuse_attr_out>(), 104);
        assert_eq!(size_of::<fuse_mknod_in>(), 16);
        assert_eq!(size_of::<fuse_mkdir_in>(), 8);
        assert_eq!(size_of::<fuse_rename_in>(), 8);
        assert_eq!(size_of::<fuse_rename2_in>(), 16);
        assert_eq!(size_of::<fuse_link_in>(), 8);
        assert_eq!(size_of::<fuse_setattr_in>(), 88);
        assert_eq!(size_of::<fuse_open_in>(), 8);
        assert_eq!(size_of::<fuse_create_in>(), 16);
        assert_eq!(size_of::<fuse_open_out>(), 16);
        assert_eq!(size_of::<fuse_release_in>(), 24);
        assert_eq!(size_of::<fuse_flush_in>(), 24);
        assert_eq!(size_of::<fuse_read_in>(), 40);
        assert_eq!(size_of::<fuse_write_in>(), 40);
        assert_eq!(size_of::<fuse_write_out>(), 8);
        assert_eq!(size_of::<fuse_statfs_out>(), 80);
        assert_eq!(size_of::<fuse_fsync_in>(), 16);
        assert_eq!(size_of::<fuse_setxattr_in>(), 16);
        assert_eq!(size_of::<fuse_getxattr_in>(), 8);
        assert_eq!(size_of::<fuse_getxattr_out>(), 8);
        assert_eq!(size_of::<fuse_lk_in>(), 48);
        assert_eq!(size_of::<fuse_lk_out>(), 24);
        assert_eq!(size_of::<fuse_access_in>(), 8);
        assert_eq!(size_of::<fuse_init_in>(), 64);
        assert_eq!(size_of::<fuse_init_out>(), 64);
        assert_eq!(size_of::<fuse_interrupt_in>(), 8);
        assert_eq!(size_of::<fuse_bmap_in>(), 16);
        assert_eq!(size_of::<fuse_bmap_out>(), 8);
        assert_eq!(size_of::<fuse_ioctl_in>(), 32);
        assert_eq!(size_of::<fuse_poll_in>(), 24);
        assert_eq!(size_of::<fuse_fallocate_in>(), 32);
        assert_eq!(size_of::<fuse_in_header>(), 40);
        assert_eq!(size_of::<fuse_out_header>(), 16);
        assert_eq!(size_of::<fuse_dirent>(), 24);
        assert_eq!(size_of::<fuse_direntplus>(), 152);
        assert_eq!(size_of::<fuse_lseek_in>(), 24);
        assert_eq!(size_of::<fuse_lseek_out>(), 8);
        assert_eq!(size_of::<fuse_copy_file_range_in>(), 56);
        assert_eq!(size_of::<fuse_setupmapping_in>(), 40);
        assert_eq!(size_of::<fuse_removemapping_in>(), 4);
        assert_eq!(size_of::<fuse_removemapping_one>(), 16);
        assert_eq!(size_of::<fuse_syncfs_in>(), 8);
        assert_eq!(size_of::<fuse_statx_in>(), 24);
    }

    #[test]
    fn pod_round_trip_and_short_buffers() {
        let h = fuse_out_header { len: 16, error: -2, unique: 0x1122_3344_5566_7788 };
        let b = h.as_bytes().to_vec();
        assert_eq!(b.len(), 16);
        assert_eq!(&b[0..4], &16u32.to_le_bytes());
        assert_eq!(&b[4..8], &(-2i32).to_le_bytes());
        assert_eq!(fuse_out_header::from_prefix(&b), Some(h));
        assert_eq!(fuse_out_header::from_prefix(&b[..15]), None);
        // unaligned source
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&b);
        assert_eq!(fuse_out_header::from_prefix(&shifted[1..]), Some(h));
    }

    #[test]
    fn opcodes_round_trip() {
        for n in 0..100u32 {
            if let Some(op) = Opcode::from_u32(n) {
                assert_eq!(op as u32, n);
                assert!(!op.name().is_empty());
            }
        }
        assert_eq!(Opcode::from_u32(7), None);
        assert_eq!(Opcode::from_u32(19), None);
        assert_eq!(Opcode::from_u32(4096), None);
    }
}
