//! A mount table: other file systems attached inside a root file system.
//!
//! [`MountFs`] serves a root file system (the passthrough tree of Kata's
//! shared directory) and a list of mounts, each a file system of its own
//! (an [`crate::vfs::ObjectFs`] on a bucket) attached at a directory of the
//! root. A mount point is recognised by the host (device, inode) of the
//! directory ([`MountPoint`]), so it is found wherever the directory shows up
//! (a bind mount of a placeholder has its source's identity), and can be
//! given by a path resolved on first use.
//!
//! Node ids: the root file system's ids are used as they are; mount `i`'s id
//! `n` becomes `(i + 1) << 48 | n`, so each id routes to exactly one file
//! system by its top bits and no table is needed. File and directory handles
//! are routed with the node id every request carries. LOOKUP and READDIRPLUS
//! results of the root that are a mount point are replaced by the mount's root
//! (the root's lookup reference is given back at once); the mount's root is
//! announced as a submount when the kernel supports it, so the guest gives it
//! its own device number. RENAME and LINK across file systems are EXDEV.
//! A read-only mount answers EROFS to every change.
//!
//! No locks of its own except the lazily resolved mount point keys (set once).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::fuse::abi;
use crate::fuse::filesystem::{InitOptions, Result};
use crate::fuse::{Ctx, DirEntry, Entry, Errno, Filesystem, SetAttr};

const SHIFT: u32 = 48;
const LOCAL: u64 = (1 << SHIFT) - 1;
const ROOT: u64 = abi::FUSE_ROOT_ID;

/// A root file system that can tell the host identity of its nodes.
pub trait MountHost: Filesystem {
    /// (st_dev, st_ino) of a node the kernel knows.
    fn node_key(&self, nodeid: u64) -> Option<(u64, u64)>;
}

/// Where a mount is attached: the (device, inode) of a directory of the root
/// file system, known up front or found on first use.
pub struct MountPoint {
    key: OnceLock<(u64, u64)>,
    path: Option<PathBuf>,
}

impl MountPoint {
    /// A directory of known identity.
    pub fn key(dev: u64, ino: u64) -> MountPoint {
        let key = OnceLock::new();
        let _ = key.set((dev, ino));
        MountPoint { key, path: None }
    }

    /// The directory at this host path (a final symlink is not followed:
    /// it is not a directory). If it does not exist yet, it is stat'ed again
    /// at each directory lookup until it does.
    pub fn host_dir(path: PathBuf) -> MountPoint {
        let mp = MountPoint { key: OnceLock::new(), path: Some(path) };
        mp.resolve();
        mp
    }

    fn resolve(&self) -> Option<(u64, u64)> {
        if let Some(k) = self.key.get() {
            return Some(*k);
        }
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::symlink_metadata(self.path.as_ref()?).ok().filter(|m| m.is_dir())?;
        Some(*self.key.get_or_init(|| (md.dev(), md.ino())))
    }

    /// The host path, if given by path.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }
}

/// One attached file system.
pub struct Mount<M> {
    /// For logs.
    pub name: String,
    pub point: MountPoint,
    pub fs: M,
    pub read_only: bool,
}

/// The root file system with the mounts attached.
pub struct MountFs<R, M> {
    root: R,
    mounts: Vec<Mount<M>>,
    submounts: AtomicBool,
}

enum Route {
    Root(u64),
    Mount(usize, u64),
}

fn global(i: usize, local: u64) -> u64 {
    ((i as u64 + 1) << SHIFT) | local
}

fn is_dir(attr: &abi::fuse_attr) -> bool {
    attr.mode & libc::S_IFMT == libc::S_IFDIR
}

fn writes(flags: u32) -> bool {
    let f = flags as i32;
    f & libc::O_ACCMODE != libc::O_RDONLY || f & (libc::O_TRUNC | libc::O_CREAT | libc::O_APPEND) != 0
}

impl<R: MountHost, M: Filesystem> MountFs<R, M> {
    /// At most 65,534 mounts (the node id space is split 16/48 bits).
    pub fn new(root: R, mounts: Vec<Mount<M>>) -> Self {
        assert!(mounts.len() < (1 << (64 - SHIFT)) - 1, "too many mounts");
        MountFs { root, mounts, submounts: AtomicBool::new(false) }
    }

    pub fn root(&self) -> &R {
        &self.root
    }

    pub fn mounts(&self) -> &[Mount<M>] {
        &self.mounts
    }

    fn route(&self, id: u64) -> Result<Route> {
        let hi = id >> SHIFT;
        if hi == 0 {
            return Ok(Route::Root(id));
        }
        let i = (hi - 1) as usize;
        let local = id & LOCAL;
        if i < self.mounts.len() && local != 0 {
            Ok(Route::Mount(i, local))
        } else {
            Err(Errno::EBADF)
        }
    }

    fn writable(&self, r: &Route) -> Result<()> {
        match r {
            Route::Mount(i, _) if self.mounts[*i].read_only => Err(Errno::EROFS),
            _ => Ok(()),
        }
    }

    /// Both in the same file system (for RENAME and LINK), else EXDEV.
    fn same(&self, a: u64, b: u64) -> Result<(Route, u64)> {
        match (self.route(a)?, self.route(b)?) {
            (Route::Root(x), Route::Root(y)) => Ok((Route::Root(x), y)),
            (Route::Mount(i, x), Route::Mount(j, y)) if i == j => Ok((Route::Mount(i, x), y)),
            _ => Err(Errno::EXDEV),
        }
    }

    /// A mount entry with a global node id.
    fn mount_entry(&self, i: usize, mut e: Entry) -> Result<Entry> {
        if e.nodeid > LOCAL {
            self.mounts[i].fs.forget(e.nodeid, 1);
            return Err(Errno::EIO);
        }
        if e.nodeid != 0 {
            e.nodeid = global(i, e.nodeid);
        }
        Ok(e)
    }

    /// The mount whose point is this host inode.
    fn mount_at(&self, key: (u64, u64)) -> Option<usize> {
        self.mounts.iter().position(|m| m.point.resolve() == Some(key))
    }

    /// A root entry, or the mount attached there (the root's reference is
    /// given back).
    async fn attach(&self, ctx: &Ctx, e: Entry) -> Result<Entry> {
        if e.nodeid > LOCAL {
            self.root.forget(e.nodeid, 1);
            return Err(Errno::EIO);
        }
        if self.mounts.is_empty() || !is_dir(&e.attr) {
            return Ok(e);
        }
        let Some(i) = self.root.node_key(e.nodeid).and_then(|k| self.mount_at(k)) else { return Ok(e) };
        self.root.forget(e.nodeid, 1);
        Ok(self.mount_root(ctx, i).await)
    }

    /// The entry of mount `i`'s root. A back-end that cannot be reached
    /// shows an empty-looking directory here (errors come with the next
    /// request), so a slow bucket never fails the container's mount.
    async fn mount_root(&self, ctx: &Ctx, i: usize) -> Entry {
        let m = &self.mounts[i];
        let (mut attr, valid) = match m.fs.getattr(ctx, ROOT, None).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(volume = %m.name, error = %e, "mount root: back-end not answering; showing a placeholder directory");
                let attr = abi::fuse_attr {
                    ino: ROOT,
                    mode: libc::S_IFDIR | 0o755,
                    nlink: 2,
                    blksize: 4096,
                    ..Default::default()
                };
                (attr, Duration::ZERO)
            }
        };
        if self.submounts.load(Ordering::Relaxed) {
            attr.flags |= abi::FUSE_ATTR_SUBMOUNT;
        }
        Entry { nodeid: global(i, ROOT), generation: 0, attr, entry_valid: valid, attr_valid: valid }
    }
}

macro_rules! by_node {
    ($self:ident, $id:expr, |$fs:ident, $n:ident| $body:expr) => {
        match $self.route($id)? {
            Route::Root($n) => {
                let $fs = &$self.root;
                $body.await
            }
            Route::Mount(i, $n) => {
                let $fs = &$self.mounts[i].fs;
                $body.await
            }
        }
    };
}

impl<R: MountHost, M: Filesystem> Filesystem for MountFs<R, M> {
    fn init(&self, kernel_flags: u64) -> InitOptions {
        let mut want = self.root.init(kernel_flags).want;
        for m in &self.mounts {
            want |= m.fs.init(kernel_flags).want;
        }
        let sub = !self.mounts.is_empty() && kernel_flags & abi::FUSE_SUBMOUNTS != 0;
        self.submounts.store(sub, Ordering::Relaxed);
        if sub {
            want |= abi::FUSE_SUBMOUNTS;
        }
        InitOptions { want }
    }

    fn destroy(&self) {
        self.root.destroy();
        for m in &self.mounts {
            m.fs.destroy();
        }
    }

    async fn lookup(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<Entry> {
        match self.route(parent)? {
            Route::Root(p) => {
                let e = self.root.lookup(ctx, p, name).await?;
                self.attach(ctx, e).await
            }
            Route::Mount(i, p) => {
                let e = self.mounts[i].fs.lookup(ctx, p, name).await?;
                self.mount_entry(i, e)
            }
        }
    }

    fn forget(&self, nodeid: u64, nlookup: u64) {
        match self.route(nodeid) {
            Ok(Route::Root(n)) => self.root.forget(n, nlookup),
            // Mount roots hold no lookup reference in the mount (see attach).
            Ok(Route::Mount(_, ROOT)) => {}
            Ok(Route::Mount(i, n)) => self.mounts[i].fs.forget(n, nlookup),
            Err(_) => {}
        }
    }

    async fn getattr(&self, ctx: &Ctx, nodeid: u64, fh: Option<u64>) -> Result<(abi::fuse_attr, Duration)> {
        by_node!(self, nodeid, |fs, n| fs.getattr(ctx, n, fh))
    }

    async fn setattr(&self, ctx: &Ctx, nodeid: u64, attr: SetAttr) -> Result<(abi::fuse_attr, Duration)> {
        self.writable(&self.route(nodeid)?)?;
        by_node!(self, nodeid, |fs, n| fs.setattr(ctx, n, attr))
    }

    async fn mkdir(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, umask: u32) -> Result<Entry> {
        match self.route(parent)? {
            Route::Root(p) => {
                let e = self.root.mkdir(ctx, p, name, mode, umask).await?;
                self.attach(ctx, e).await
            }
            r @ Route::Mount(i, p) => {
                self.writable(&r)?;
                let e = self.mounts[i].fs.mkdir(ctx, p, name, mode, umask).await?;
                self.mount_entry(i, e)
            }
        }
    }

    async fn unlink(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        self.writable(&self.route(parent)?)?;
        by_node!(self, parent, |fs, p| fs.unlink(ctx, p, name))
    }

    async fn rmdir(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> Result<()> {
        self.writable(&self.route(parent)?)?;
        by_node!(self, parent, |fs, p| fs.rmdir(ctx, p, name))
    }

    async fn rename(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        let (r, np) = self.same(parent, newparent)?;
        self.writable(&r)?;
        match r {
            Route::Root(p) => self.root.rename(ctx, p, name, np, newname, flags).await,
            Route::Mount(i, p) => self.mounts[i].fs.rename(ctx, p, name, np, newname, flags).await,
        }
    }

    async fn open(&self, ctx: &Ctx, nodeid: u64, flags: u32) -> Result<(u64, u32)> {
        let r = self.route(nodeid)?;
        if writes(flags) {
            self.writable(&r)?;
        }
        by_node!(self, nodeid, |fs, n| fs.open(ctx, n, flags))
    }

    async fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
        umask: u32,
    ) -> Result<(Entry, u64, u32)> {
        match self.route(parent)? {
            Route::Root(p) => {
                let (e, fh, of) = self.root.create(ctx, p, name, mode, flags, umask).await?;
                if e.nodeid > LOCAL {
                    let _ = self.root.release(ctx, e.nodeid, fh, flags).await;
                    self.root.forget(e.nodeid, 1);
                    return Err(Errno::EIO);
                }
                Ok((e, fh, of))
            }
            r @ Route::Mount(i, p) => {
                self.writable(&r)?;
                let (e, fh, of) = self.mounts[i].fs.create(ctx, p, name, mode, flags, umask).await?;
                if e.nodeid > LOCAL {
                    let _ = self.mounts[i].fs.release(ctx, e.nodeid, fh, flags).await;
                }
                Ok((self.mount_entry(i, e)?, fh, of))
            }
        }
    }

    async fn read(&self, ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        by_node!(self, nodeid, |fs, n| fs.read(ctx, n, fh, offset, size))
    }

    async fn write(&self, ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, data: &[u8], flags: u32) -> Result<u32> {
        self.writable(&self.route(nodeid)?)?;
        by_node!(self, nodeid, |fs, n| fs.write(ctx, n, fh, offset, data, flags))
    }

    async fn flush(&self, ctx: &Ctx, nodeid: u64, fh: u64) -> Result<()> {
        by_node!(self, nodeid, |fs, n| fs.flush(ctx, n, fh))
    }

    async fn release(&self, ctx: &Ctx, nodeid: u64, fh: u64, flags: u32) -> Result<()> {
        by_node!(self, nodeid, |fs, n| fs.release(ctx, n, fh, flags))
    }

    async fn fsync(&self, ctx: &Ctx, nodeid: u64, fh: u64, datasync: bool) -> Result<()> {
        by_node!(self, nodeid, |fs, n| fs.fsync(ctx, n, fh, datasync))
    }

    async fn opendir(&self, ctx: &Ctx, nodeid: u64, flags: u32) -> Result<(u64, u32)> {
        by_node!(self, nodeid, |fs, n| fs.opendir(ctx, n, flags))
    }

    async fn readdir(
        &self,
        ctx: &Ctx,
        nodeid: u64,
        fh: u64,
        offset: u64,
        max_bytes: u32,
        plus: bool,
    ) -> Result<Vec<DirEntry>> {
        match self.route(nodeid)? {
            Route::Root(n) => {
                let mut v = self.root.readdir(ctx, n, fh, offset, max_bytes, plus).await?;
                for d in v.iter_mut() {
                    if let Some(e) = d.entry.take() {
                        if e.nodeid == 0 {
                            d.entry = Some(e);
                            continue;
                        }
                        // An entry that cannot be served is listed without attributes.
                        d.entry = self.attach(ctx, e).await.ok();
                    }
                }
                Ok(v)
            }
            Route::Mount(i, n) => {
                let mut v = self.mounts[i].fs.readdir(ctx, n, fh, offset, max_bytes, plus).await?;
                for d in v.iter_mut() {
                    if let Some(e) = d.entry.take() {
                        d.entry = self.mount_entry(i, e).ok();
                    }
                }
                Ok(v)
            }
        }
    }

    async fn releasedir(&self, ctx: &Ctx, nodeid: u64, fh: u64) -> Result<()> {
        by_node!(self, nodeid, |fs, n| fs.releasedir(ctx, n, fh))
    }

    async fn fsyncdir(&self, ctx: &Ctx, nodeid: u64, fh: u64, datasync: bool) -> Result<()> {
        by_node!(self, nodeid, |fs, n| fs.fsyncdir(ctx, n, fh, datasync))
    }

    async fn statfs(&self, ctx: &Ctx, nodeid: u64) -> Result<abi::fuse_kstatfs> {
        by_node!(self, nodeid, |fs, n| fs.statfs(ctx, n))
    }

    async fn access(&self, ctx: &Ctx, nodeid: u64, mask: u32) -> Result<()> {
        let r = self.route(nodeid)?;
        if mask & libc::W_OK as u32 != 0 {
            self.writable(&r)?;
        }
        by_node!(self, nodeid, |fs, n| fs.access(ctx, n, mask))
    }

    async fn lseek(&self, ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, whence: u32) -> Result<u64> {
        by_node!(self, nodeid, |fs, n| fs.lseek(ctx, n, fh, offset, whence))
    }

    async fn readlink(&self, ctx: &Ctx, nodeid: u64) -> Result<Vec<u8>> {
        by_node!(self, nodeid, |fs, n| fs.readlink(ctx, n))
    }

    async fn symlink(&self, ctx: &Ctx, parent: u64, name: &[u8], target: &[u8]) -> Result<Entry> {
        match self.route(parent)? {
            Route::Root(p) => {
                let e = self.root.symlink(ctx, p, name, target).await?;
                self.attach(ctx, e).await
            }
            r @ Route::Mount(i, p) => {
                self.writable(&r)?;
                let e = self.mounts[i].fs.symlink(ctx, p, name, target).await?;
                self.mount_entry(i, e)
            }
        }
    }

    async fn mknod(&self, ctx: &Ctx, parent: u64, name: &[u8], mode: u32, rdev: u32, umask: u32) -> Result<Entry> {
        match self.route(parent)? {
            Route::Root(p) => {
                let e = self.root.mknod(ctx, p, name, mode, rdev, umask).await?;
                self.attach(ctx, e).await
            }
            r @ Route::Mount(i, p) => {
                self.writable(&r)?;
                let e = self.mounts[i].fs.mknod(ctx, p, name, mode, rdev, umask).await?;
                self.mount_entry(i, e)
            }
        }
    }

    async fn link(&self, ctx: &Ctx, nodeid: u64, newparent: u64, newname: &[u8]) -> Result<Entry> {
        let (r, np) = self.same(nodeid, newparent)?;
        self.writable(&r)?;
        match r {
            Route::Root(n) => {
                let e = self.root.link(ctx, n, np, newname).await?;
                self.attach(ctx, e).await
            }
            Route::Mount(i, n) => {
                let e = self.mounts[i].fs.link(ctx, n, np, newname).await?;
                self.mount_entry(i, e)
            }
        }
    }

    async fn setxattr(&self, ctx: &Ctx, nodeid: u64, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        self.writable(&self.route(nodeid)?)?;
        by_node!(self, nodeid, |fs, n| fs.setxattr(ctx, n, name, value, flags))
    }

    async fn getxattr(&self, ctx: &Ctx, nodeid: u64, name: &[u8], size: u32) -> Result<Vec<u8>> {
        by_node!(self, nodeid, |fs, n| fs.getxattr(ctx, n, name, size))
    }

    async fn listxattr(&self, ctx: &Ctx, nodeid: u64, size: u32) -> Result<Vec<u8>> {
        by_node!(self, nodeid, |fs, n| fs.listxattr(ctx, n, size))
    }

    async fn removexattr(&self, ctx: &Ctx, nodeid: u64, name: &[u8]) -> Result<()> {
        self.writable(&self.route(nodeid)?)?;
        by_node!(self, nodeid, |fs, n| fs.removexattr(ctx, n, name))
    }

    async fn fallocate(&self, ctx: &Ctx, nodeid: u64, fh: u64, offset: u64, length: u64, mode: u32) -> Result<()> {
        self.writable(&self.route(nodeid)?)?;
        by_node!(self, nodeid, |fs, n| fs.fallocate(ctx, n, fh, offset, length, mode))
    }

    async fn syncfs(&self, ctx: &Ctx, nodeid: u64) -> Result<()> {
        by_node!(self, nodeid, |fs, n| fs.syncfs(ctx, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, StorageSettings};
    use crate::vfs::passthrough::{PassthroughFs, PassthroughOptions};
    use crate::vfs::ObjectFs;
    use std::os::unix::fs::MetadataExt;

    fn ctx() -> Ctx {
        Ctx::default()
    }

    fn setup(read_only: bool) -> (tempfile::TempDir, MountFs<PassthroughFs, ObjectFs>) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("vol")).unwrap();
        std::fs::write(d.path().join("file"), "host").unwrap();
        let md = std::fs::metadata(d.path().join("vol")).unwrap();
        let root = PassthroughFs::new(d.path(), PassthroughOptions::default()).unwrap();
        let cfg = Config::default_memory();
        let (fs, _) = crate::cli::build_object_fs(&StorageSettings::default(), &cfg).unwrap();
        let m = Mount { name: "vol".into(), point: MountPoint::key(md.dev(), md.ino()), fs, read_only };
        (d, MountFs::new(root, vec![m]))
    }

    #[tokio::test]
    async fn mount_point_routes_to_the_mount() {
        let (d, fs) = setup(false);
        fs.init(abi::FUSE_SUBMOUNTS);
        let v = fs.lookup(&ctx(), ROOT, b"vol").await.unwrap();
        assert_eq!(v.nodeid, global(0, ROOT));
        assert_ne!(v.attr.flags & abi::FUSE_ATTR_SUBMOUNT, 0);
        let (e, fh, _) = fs.create(&ctx(), v.nodeid, b"new", 0o644, libc::O_RDWR as u32, 0).await.unwrap();
        assert_eq!(e.nodeid >> SHIFT, 1, "a node of mount 0");
        assert_eq!(fs.write(&ctx(), e.nodeid, fh, 0, b"abc", 0).await.unwrap(), 3);
        fs.release(&ctx(), e.nodeid, fh, 0).await.unwrap();
        assert!(!d.path().join("vol/new").exists(), "written to the host directory");
        // The root's nodes stay the root's; across file systems: EXDEV.
        let f = fs.lookup(&ctx(), ROOT, b"file").await.unwrap();
        assert_eq!(f.nodeid >> SHIFT, 0);
        assert_eq!(fs.rename(&ctx(), ROOT, b"file", v.nodeid, b"file", 0).await.unwrap_err(), Errno::EXDEV);
        assert_eq!(fs.link(&ctx(), f.nodeid, v.nodeid, b"l").await.unwrap_err(), Errno::EXDEV);
        // Forgetting the mount root is harmless; it is found again.
        fs.forget(v.nodeid, 10);
        assert_eq!(fs.lookup(&ctx(), ROOT, b"vol").await.unwrap().nodeid, v.nodeid);
        assert!(fs.getattr(&ctx(), global(1, ROOT), None).await.is_err(), "no mount 1");
    }

    #[tokio::test]
    async fn read_only_mount_refuses_every_change() {
        let (_d, fs) = setup(true);
        fs.init(0);
        let v = fs.lookup(&ctx(), ROOT, b"vol").await.unwrap();
        assert_eq!(v.attr.flags & abi::FUSE_ATTR_SUBMOUNT, 0, "not announced without FUSE_SUBMOUNTS");
        let n = v.nodeid;
        assert_eq!(fs.create(&ctx(), n, b"x", 0o644, libc::O_WRONLY as u32, 0).await.unwrap_err(), Errno::EROFS);
        assert_eq!(fs.mkdir(&ctx(), n, b"d", 0o755, 0).await.unwrap_err(), Errno::EROFS);
        assert_eq!(fs.symlink(&ctx(), n, b"s", b"t").await.unwrap_err(), Errno::EROFS);
        assert_eq!(fs.unlink(&ctx(), n, b"x").await.unwrap_err(), Errno::EROFS);
        assert_eq!(
            fs.setattr(&ctx(), n, SetAttr { mode: Some(0o700), ..Default::default() }).await.unwrap_err(),
            Errno::EROFS
        );
        assert_eq!(fs.access(&ctx(), n, libc::W_OK as u32).await.unwrap_err(), Errno::EROFS);
        let (fh, _) = fs.opendir(&ctx(), n, 0).await.unwrap();
        fs.readdir(&ctx(), n, fh, 0, 4096, true).await.unwrap();
        fs.releasedir(&ctx(), n, fh).await.unwrap();
        // The passthrough beside it stays writable.
        let (e, fh, _) = fs.create(&ctx(), ROOT, b"ok", 0o644, libc::O_RDWR as u32, 0).await.unwrap();
        fs.release(&ctx(), e.nodeid, fh, 0).await.unwrap();
    }
}
