//! DAX over real vhost-user and real split rings, without a guest: ovfs
//! (memory back-end, `dax_window` 16 MiB) served in-process, driven by the
//! in-process front-end (`ovfs::frontend`) with `dax: true`, which negotiates
//! SHMEM + BACKEND_REQ, reserves the window GET_SHMEM_CONFIG announces and
//! serves the daemon's SHMEM_MAP / UNMAP requests into it (refusing, like
//! QEMU, maps over live mappings and outside the window). INIT, CREATE,
//! WRITE, LOOKUP, OPEN, SETUPMAPPING and REMOVEMAPPING travel the rings; the
//! window's bytes are compared with the back-end's object.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ovfs::backend::Backend;
use ovfs::config::Config;
use ovfs::frontend::{Frontend, FrontendOptions, DEFAULT_INIT_FLAGS};
use ovfs::fuse::abi::{self, Pod};
use ovfs::fuse::client;
use ovfs::transport::vhost_user::{serve, Listen, VhostUserOptions};

const MIB: u64 = 1 << 20;
const WINDOW: u64 = 16 * MIB;
const R: u64 = abi::FUSE_SETUPMAPPING_FLAG_READ;
const W: u64 = abi::FUSE_SETUPMAPPING_FLAG_WRITE;

struct Daemon {
    socket: PathBuf,
    backend: Backend,
    rt: tokio::runtime::Runtime,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

fn start(dax_window: Option<u64>) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vfs.sock");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (server, backend) = ovfs::cli::build_server(&Config::default_memory()).unwrap();
    let opts = VhostUserOptions { dax_window, tag: Some("myfs".into()), ..Default::default() };
    let (path, handle) = (socket.clone(), rt.handle().clone());
    let thread = std::thread::spawn(move || serve(Listen::SocketPath(path), server, opts, handle));
    let t0 = Instant::now();
    while !socket.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    Daemon { socket, backend, rt, thread: Some(thread), _dir: dir }
}

impl Daemon {
    fn object(&self, path: &str) -> Vec<u8> {
        self.rt.block_on(self.backend.read(path, 0, u64::MAX / 2)).unwrap().to_vec()
    }

    fn finish(mut self) {
        let r = self.thread.take().unwrap().join().expect("serve thread panicked");
        r.expect("serve returned an error");
    }
}

fn connect(d: &Daemon) -> Frontend {
    let opts = FrontendOptions { slots_per_queue: 16, queue_size: 64, dax: true, ..Default::default() };
    Frontend::connect(&d.socket, opts).expect("front-end connects")
}

fn errno(fe: &mut Frontend, req: &[u8]) -> i32 {
    fe.fuse(req).expect("a reply").errno
}

fn setup(fe: &mut Frontend, ino: u64, foffset: u64, len: u64, flags: u64, moffset: u64) -> i32 {
    let u = fe.unique();
    errno(fe, &client::setupmapping(u, ino, foffset, len, flags, moffset))
}

fn remove(fe: &mut Frontend, ranges: &[(u64, u64)]) -> i32 {
    let u = fe.unique();
    errno(fe, &client::removemapping(u, ranges.len() as u32, ranges))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13) ^ (i >> 9) as u8).collect()
}

#[test]
fn dax_over_real_rings() {
    let d = start(Some(WINDOW));
    let mut fe = connect(&d);
    assert_eq!(fe.dax_window().expect("a DAX window").len(), WINDOW);
    let out = fe.init(DEFAULT_INIT_FLAGS | abi::FUSE_MAP_ALIGNMENT).unwrap();
    assert_eq!(out.map_alignment, 12);

    // A 3 MiB file written through FUSE, then looked up and opened like a guest would.
    let data = pattern((3 * MIB) as usize);
    let u = fe.unique();
    let r = fe.fuse(&client::create(u, 1, "d.bin", 0o644, libc::O_RDWR as u32)).unwrap();
    assert_eq!(r.errno, 0);
    let ino = abi::fuse_entry_out::from_prefix(&r.body).unwrap().nodeid;
    let fh = abi::fuse_open_out::from_prefix(&r.body[128..]).unwrap().fh;
    for (i, c) in data.chunks(MIB as usize).enumerate() {
        let u = fe.unique();
        assert_eq!(errno(&mut fe, &client::write(u, ino, fh, i as u64 * MIB, c)), 0);
    }
    let u = fe.unique();
    assert_eq!(errno(&mut fe, &client::release(u, ino, fh)), 0);
    let u = fe.unique();
    let r = fe.fuse(&client::lookup(u, 1, "d.bin")).unwrap();
    assert_eq!(abi::fuse_entry_out::from_prefix(&r.body).unwrap().nodeid, ino);
    let u = fe.unique();
    let r = fe.fuse(&client::open(u, ino, libc::O_RDWR as u32)).unwrap();
    let fh = abi::fuse_open_out::from_prefix(&r.body).unwrap().fh;

    // Map [0, 2 MiB) read-only at window offset 6 MiB: the object's bytes.
    assert_eq!(setup(&mut fe, ino, 0, 2 * MIB, R, 6 * MIB), 0);
    let win = fe.dax_window().unwrap();
    assert_eq!(win.live(), vec![(6 * MIB, 2 * MIB, false)]);
    let obj = d.object("d.bin");
    assert!(win.read(6 * MIB, (2 * MIB) as usize).unwrap() == obj[..(2 * MIB) as usize]);
    assert!(!win.write(6 * MIB, b"x"), "read-only mapping");

    // Upgrade to writable (the daemon unmaps first: the window refuses overlaps).
    assert_eq!(setup(&mut fe, ino, 0, 2 * MIB, R | W, 6 * MIB), 0);
    let win = fe.dax_window().unwrap();
    assert_eq!(win.live(), vec![(6 * MIB, 2 * MIB, true)]);
    let (maps, unmaps, refused) = win.counts();
    assert_eq!((maps, unmaps, refused), (2, 1, 0));
    assert!(win.write(6 * MIB + 4096, b"stored-in-the-window"));
    let u = fe.unique();
    assert_eq!(errno(&mut fe, &client::fsync(u, ino, fh)), 0);
    assert_eq!(&d.object("d.bin")[4096..4096 + 20], b"stored-in-the-window");
    // READ over the rings sees the window's store too.
    let u = fe.unique();
    let r = fe.fuse_with_capacity(&client::read(u, ino, fh, 4096, 20), 16 + 20).unwrap();
    assert_eq!(r.body, b"stored-in-the-window");

    // Overlapping and hostile requests: errnos, nothing mapped out of place.
    assert_eq!(setup(&mut fe, ino, 2 * MIB, 2 * MIB, R, 0), 0);
    assert_eq!(setup(&mut fe, ino, 0, 4 * MIB, R, 0), 0, "replaces the overlapped mapping");
    assert_eq!(setup(&mut fe, ino, 0, 2 * MIB, R, WINDOW), libc::EINVAL);
    assert_eq!(setup(&mut fe, ino, 0, 4 * MIB, R, WINDOW - 2 * MIB), libc::EINVAL);
    assert_eq!(setup(&mut fe, ino, 0, 2 * MIB, R, 4097), libc::EINVAL);
    let u = fe.unique();
    assert_eq!(errno(&mut fe, &client::removemapping(u, 257, &vec![(0, 4096); 257])), libc::EINVAL);
    assert_eq!(remove(&mut fe, &[(WINDOW, 4096)]), libc::EINVAL);
    let win = fe.dax_window().unwrap();
    assert_eq!(win.live(), vec![(0, 4 * MIB, false), (6 * MIB, 2 * MIB, true)]);
    assert_eq!(win.counts().2, 0, "the daemon never sent a map the window had to refuse");
    let obj = d.object("d.bin");
    let mapped = win.read(0, (4 * MIB) as usize).unwrap();
    assert!(mapped[..(3 * MIB) as usize] == obj[..]);
    assert!(mapped[(3 * MIB) as usize..].iter().all(|&b| b == 0), "past EOF reads zeros");

    // Unmap everything; close; the staged copy is dropped. A new mapping
    // (nothing of the file left in the daemon's memory) loads it again from
    // the back-end.
    assert_eq!(remove(&mut fe, &[(0, 4 * MIB), (6 * MIB, 2 * MIB)]), 0);
    assert!(fe.dax_window().unwrap().live().is_empty());
    let u = fe.unique();
    assert_eq!(errno(&mut fe, &client::release(u, ino, fh)), 0);
    assert_eq!(setup(&mut fe, ino, 2 * MIB, 2 * MIB, R, 10 * MIB), 0);
    let again = fe.dax_window().unwrap().read(10 * MIB, MIB as usize).unwrap();
    assert!(again == d.object("d.bin")[(2 * MIB) as usize..]);
    let u = fe.unique();
    assert_eq!(errno(&mut fe, &client::getattr(u, ino)), 0, "the daemon still serves");
    drop(fe);
    d.finish();
}

#[test]
fn no_window_without_the_option() {
    let d = start(None);
    let mut fe = connect(&d);
    assert!(fe.dax_window().is_none(), "no SHMEM offered without dax_window");
    let out = fe.init(DEFAULT_INIT_FLAGS | abi::FUSE_MAP_ALIGNMENT).unwrap();
    assert_eq!(out.map_alignment, 0);
    assert_eq!(setup(&mut fe, 1, 0, 2 * MIB, R, 0), libc::ENOSYS);
    drop(fe);
    d.finish();
}

#[test]
fn repeated_upgrades_and_downgrades_unmap_first() {
    // The window refuses any map over a live one (as QEMU does): every
    // re-mapping of the same range must be preceded by its unmap.
    let d = start(Some(WINDOW));
    let mut fe = connect(&d);
    fe.init(DEFAULT_INIT_FLAGS | abi::FUSE_MAP_ALIGNMENT).unwrap();
    let data = pattern(4096);
    let u = fe.unique();
    let r = fe.fuse(&client::create(u, 1, "s.bin", 0o644, libc::O_RDWR as u32)).unwrap();
    let ino = abi::fuse_entry_out::from_prefix(&r.body).unwrap().nodeid;
    let fh = abi::fuse_open_out::from_prefix(&r.body[128..]).unwrap().fh;
    let u = fe.unique();
    assert_eq!(errno(&mut fe, &client::write(u, ino, fh, 0, &data)), 0);
    for i in 0..8 {
        assert_eq!(setup(&mut fe, ino, 0, 2 * MIB, if i % 2 == 0 { R } else { R | W }, 0), 0);
    }
    assert_eq!(fe.dax_window().unwrap().live().len(), 1);
    assert_eq!(fe.dax_window().unwrap().counts(), (8, 7, 0));
    assert!(fe.dax_window().unwrap().read(0, 4096).unwrap() == data);
    drop(fe);
    d.finish();
}
