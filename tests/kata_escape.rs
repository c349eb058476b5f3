//! The guest tries to leave Kata's shared directory and fails every time.
//!
//! Hostile FUSE requests go straight into the server ovfs builds for Kata
//! (`--shared-dir` passthrough with an annotated volume attached, as
//! `cli::build_passthrough` makes it): `..`, `.`, names with `/`, empty names,
//! relative and absolute symlinks pointing outside used as directories, opened,
//! truncated, chmod'ed, linked and renamed through, forged node ids and file
//! handles. A canary directory outside the shared directory is watched with
//! inotify (open, read, write, attribute change, create, delete) and compared
//! (content, mode, size, times, link count) before and after: nothing may touch
//! it. (A guest kernel resolves `..` at its mount root and symlink targets
//! itself; what reaches the daemon is exactly these requests.)

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use ovfs::fuse::abi::{self, Opcode, Pod};
use ovfs::fuse::client::{self, Reply};
use ovfs::transport::RequestHandler;

struct S {
    h: Arc<dyn RequestHandler>,
    unique: u64,
}

impl S {
    async fn call(&mut self, req: Vec<u8>) -> Reply {
        self.unique += 1;
        let mut req = req;
        req[8..16].copy_from_slice(&self.unique.to_le_bytes());
        let out = self.h.clone().handle(req).await.expect("a reply");
        Reply::parse(&out).expect("well-formed reply")
    }

    async fn errno(&mut self, req: Vec<u8>) -> i32 {
        self.call(req).await.errno
    }

    async fn lookup(&mut self, parent: u64, name: &str) -> Result<abi::fuse_entry_out, i32> {
        let r = self.call(client::lookup(0, parent, name)).await;
        if r.errno != 0 {
            return Err(r.errno);
        }
        Ok(r.get().unwrap())
    }
}

fn req(op: Opcode, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
    client::request(op, 0, nodeid, parts)
}

fn setattr(nodeid: u64, valid: u32, mode: u32, size: u64) -> Vec<u8> {
    let s = abi::fuse_setattr_in { valid, mode, size, ..Default::default() };
    req(Opcode::Setattr, nodeid, &[s.as_bytes()])
}

/// Everything about the canary a change would show.
fn fingerprint(p: &Path) -> (Vec<u8>, u32, u64, i64, i64, i64, i64, u64) {
    let m = fs::symlink_metadata(p).unwrap();
    (fs::read(p).unwrap(), m.mode(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.nlink())
}

struct Inotify(std::os::fd::OwnedFd);

impl Inotify {
    fn watch(paths: &[&Path]) -> Inotify {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: inotify_init1 returned a fresh fd that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        for p in paths {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: valid fd and NUL-terminated path.
            let w = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_ALL_EVENTS) };
            assert!(w >= 0, "inotify_add_watch {}", p.display());
        }
        Inotify(fd)
    }

    /// Bytes of pending events (0: nothing happened).
    fn pending(&self) -> isize {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 4096];
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        n.max(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_cannot_leave_the_shared_dir() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    let shared = t.path().join("sandboxes/sid/shared");
    let ph = t.path().join("placeholders");
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(&shared).unwrap();
    fs::create_dir_all(ph.join("vol")).unwrap();
    let canary = outside.join("canary");
    fs::write(&canary, "do not touch\n").unwrap();
    let canary_abs = canary.to_str().unwrap().to_string();
    std::os::unix::fs::symlink("../../../outside/canary", shared.join("rel")).unwrap();
    std::os::unix::fs::symlink(&canary_abs, shared.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../..", shared.join("updir")).unwrap();
    std::os::unix::fs::symlink(outside.to_str().unwrap(), shared.join("absdir")).unwrap();
    fs::write(shared.join("file"), "inside\n").unwrap();
    // The volume's placeholder, as if bind-mounted in by Kata (a symlink to
    // it would be a symlink; use the placeholder's identity via a bind).
    let bind = shared.join("vol");
    fs::create_dir(&bind).unwrap();
    assert!(std::process::Command::new("mount")
        .arg("--bind")
        .arg(ph.join("vol"))
        .arg(&bind)
        .status()
        .unwrap()
        .success());
    struct Unbind(std::path::PathBuf);
    impl Drop for Unbind {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unbind = Unbind(bind.clone());

    let cfg_path = t.path().join("ovfs.toml");
    fs::write(
        &cfg_path,
        format!("[kata]\nplaceholder_root = \"{}\"\n[profiles.mem]\ntype = \"memory\"\n", ph.display()),
    )
    .unwrap();
    let bundle = t.path().join("bundle");
    fs::create_dir(&bundle).unwrap();
    fs::write(
        bundle.join("config.json"),
        format!(
            r#"{{"ociVersion":"1.0.2","annotations":{{"io.ovfs.volume.vol.profile":"mem","io.ovfs.volume.vol.source":"{}"}}}}"#,
            ph.join("vol").display()
        ),
    )
    .unwrap();
    let cli = ovfs::cli::Cli::try_parse_from([
        "ovfs",
        "--shared-dir",
        shared.to_str().unwrap(),
        "--config",
        cfg_path.to_str().unwrap(),
        "--oci-bundle",
        bundle.to_str().unwrap(),
        "--xattr",
        "--fd",
        "3",
    ])
    .unwrap();
    let cfg = ovfs::cli::load_config(&cli.common).unwrap();
    let h = ovfs::cli::build_passthrough(&cli.common, &cfg, &tokio::runtime::Handle::current()).unwrap();
    let mut s = S { h, unique: 0 };
    assert_eq!(s.errno(client::init(1, abi::FUSE_SUBMOUNTS)).await, 0);

    let before = fingerprint(&canary);
    let dir_before = fs::metadata(&outside).unwrap().ctime_nsec();
    let ino = Inotify::watch(&[&canary, &outside]);

    let root = abi::FUSE_ROOT_ID;
    // Names that are not one component.
    for name in ["..", ".", "../outside", "../../../outside/canary", "a/b", "/etc", "", &canary_abs] {
        assert!(s.lookup(root, name).await.is_err(), "lookup {name:?} must fail");
        let m = abi::fuse_mkdir_in { mode: 0o755, umask: 0 };
        assert_ne!(s.errno(req(Opcode::Mkdir, root, &[m.as_bytes(), &client::cname(name)])).await, 0, "mkdir {name:?}");
        assert_ne!(s.errno(client::create(0, root, name, 0o644, libc::O_RDWR as u32)).await, 0, "create {name:?}");
        let target = client::cname("x");
        assert_ne!(
            s.errno(req(Opcode::Symlink, root, &[&client::cname(name), &target])).await,
            0,
            "symlink named {name:?}"
        );
    }

    // Symlinks pointing outside: they are nodes of their own, never followed.
    for link in ["rel", "abs", "updir", "absdir"] {
        let e = s.lookup(root, link).await.expect(link);
        assert_eq!(e.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{link} is seen as a symlink");
        let n = e.nodeid;
        assert!(s.lookup(n, "canary").await.is_err(), "lookup through {link}");
        for flags in [libc::O_RDONLY, libc::O_WRONLY | libc::O_TRUNC, libc::O_RDWR | libc::O_APPEND] {
            assert_ne!(s.errno(client::open(0, n, flags as u32)).await, 0, "open {link} {flags:#o}");
        }
        assert_ne!(s.errno(client::opendir(0, n)).await, 0, "opendir {link}");
        assert_ne!(s.errno(client::create(0, n, "new", 0o644, libc::O_RDWR as u32)).await, 0, "create in {link}");
        assert_ne!(s.errno(client::mkdir(0, n, "new", 0o755)).await, 0, "mkdir in {link}");
        let mk = abi::fuse_mknod_in { mode: libc::S_IFIFO | 0o644, ..Default::default() };
        assert_ne!(s.errno(req(Opcode::Mknod, n, &[mk.as_bytes(), &client::cname("fifo")])).await, 0);
        assert_ne!(s.errno(req(Opcode::Unlink, n, &[&client::cname("canary")])).await, 0, "unlink via {link}");
        // Truncate and chmod of the symlink node must not reach the target.
        let _ = s.errno(setattr(n, abi::FATTR_SIZE, 0, 0)).await;
        let _ = s.errno(setattr(n, abi::FATTR_MODE, 0o777, 0)).await;
        let mut x = client::cname("user.x");
        x.extend_from_slice(b"v");
        let sx = abi::fuse_setxattr_in { size: 1, ..Default::default() };
        let _ = s.errno(req(Opcode::Setxattr, n, &[sx.as_bytes(), &x])).await;
        // Rename into / link into the symlink as if it were a directory.
        let rn = abi::fuse_rename_in { newdir: n };
        assert_ne!(
            s.errno(req(Opcode::Rename, root, &[rn.as_bytes(), &client::cname("file"), &client::cname("canary")]))
                .await,
            0,
            "rename into {link}"
        );
        let f = s.lookup(root, "file").await.unwrap();
        let ln = abi::fuse_link_in { oldnodeid: f.nodeid };
        assert_ne!(s.errno(req(Opcode::Link, n, &[ln.as_bytes(), &client::cname("canary2")])).await, 0);
        // READLINK only returns the text.
        let r = s.call(req(Opcode::Readlink, n, &[])).await;
        assert_eq!(r.errno, 0);
    }
    // Rename / link a symlink to names that are not one component.
    let rn = abi::fuse_rename_in { newdir: root };
    for newname in ["../canary", "../../x", "a/b"] {
        assert_ne!(
            s.errno(req(Opcode::Rename, root, &[rn.as_bytes(), &client::cname("rel"), &client::cname(newname)])).await,
            0
        );
    }

    // The volume: its root is a different file system; no way up or across.
    let v = s.lookup(root, "vol").await.expect("volume");
    assert_ne!(v.nodeid >> 48, 0, "vol is served by the volume's file system");
    assert_ne!(v.attr.flags & abi::FUSE_ATTR_SUBMOUNT, 0, "announced as a submount");
    assert!(s.lookup(v.nodeid, "..").await.is_err());
    let rn = abi::fuse_rename_in { newdir: v.nodeid };
    assert_eq!(
        s.errno(req(Opcode::Rename, root, &[rn.as_bytes(), &client::cname("file"), &client::cname("file")])).await,
        libc::EXDEV
    );

    // Forged node ids and handles.
    for id in [0u64, 999_999, (1 << 48), (2 << 48) | 1, (u64::MAX >> 16 << 48) | 5, u64::MAX] {
        assert_ne!(s.errno(client::getattr(0, id)).await, 0, "getattr {id:#x}");
        assert_ne!(s.errno(client::lookup(0, id, "canary")).await, 0, "lookup in {id:#x}");
    }
    let f = s.lookup(root, "file").await.unwrap();
    assert_eq!(s.errno(client::read(0, f.nodeid, 12345, 0, 10)).await, libc::EBADF);
    assert_eq!(s.errno(client::write(0, f.nodeid, 12345, 0, b"x")).await, libc::EBADF);

    // The same server still serves the tree.
    let r = s.call(client::open(0, f.nodeid, libc::O_RDONLY as u32)).await;
    assert_eq!(r.errno, 0);
    let fh = r.get::<abi::fuse_open_out>().unwrap().fh;
    let r = s.call(client::read(0, f.nodeid, fh, 0, 100)).await;
    assert_eq!(r.body, b"inside\n");

    // First (reading the canary below makes events of its own).
    assert_eq!(ino.pending(), 0, "inotify saw the canary or its directory touched");
    assert_eq!(fingerprint(&canary), before, "the canary changed");
    assert_eq!(fs::metadata(&outside).unwrap().ctime_nsec(), dir_before, "the canary's directory changed");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "something was created outside");
    assert!(!t.path().join("sandboxes/sid/x").exists() && !t.path().join("canary").exists());
}
