//! DAX without a guest: the FUSE server with a DAX mapper that maps into a
//! real window of this process (a reserved address range; each SHMEM_MAP is
//! an `mmap(MAP_SHARED | MAP_FIXED)` of the fd the file system handed out,
//! each UNMAP puts the reservation back), over the memory back-end. The
//! window's bytes are compared with the back-end's object, writes through the
//! window are checked to reach READ and the back-end (FSYNC, REMOVEMAPPING,
//! after RELEASE), and hostile requests get errno replies without any map.
//! Like QEMU, the mapper refuses a map over a live mapping, so the server must
//! unmap first (overlaps, read-only to writable upgrades).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ovfs::backend::Backend;
use ovfs::config::Config;
use ovfs::frontend::dax::DaxWindow;
use ovfs::fuse::abi::{self, Pod};
use ovfs::fuse::client::{self, Reply};
use ovfs::fuse::dax::DaxMapper;
use ovfs::fuse::Server;
use ovfs::vfs::ObjectFs;

const MIB: u64 = 1 << 20;
const WINDOW: u64 = 16 * MIB;
const R: u64 = abi::FUSE_SETUPMAPPING_FLAG_READ;
const W: u64 = abi::FUSE_SETUPMAPPING_FLAG_WRITE;

/// The front-end's window (a reservation of this process, mapped the way a
/// VMM maps SHMEM_MAP requests and refusing what QEMU refuses), with the
/// epoch the server's mapper reports.
struct Window {
    win: DaxWindow,
    epoch: AtomicU64,
}

impl Window {
    fn new(len: u64) -> Arc<Window> {
        Arc::new(Window { win: DaxWindow::new(len).expect("reserve a window"), epoch: AtomicU64::new(1) })
    }

    fn read(&self, off: u64, n: usize) -> Vec<u8> {
        self.win.read(off, n).expect("reading an unmapped part of the window")
    }

    fn write(&self, off: u64, data: &[u8]) {
        assert!(self.win.write(off, data), "writing where no writable mapping is");
    }

    fn live(&self) -> Vec<(u64, u64, bool)> {
        self.win.live()
    }

    fn maps(&self) -> u64 {
        self.win.counts().0
    }

    fn unmaps(&self) -> u64 {
        self.win.counts().1
    }

    /// The VMM reset the device or reconnected: every mapping is gone.
    fn reset(&self) {
        self.win.reset().unwrap();
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

impl DaxMapper for Window {
    fn window_len(&self) -> u64 {
        self.win.len()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn map(&self, fd: BorrowedFd<'_>, fd_offset: u64, moffset: u64, len: u64, writable: bool) -> std::io::Result<()> {
        self.win.map(fd.as_raw_fd(), fd_offset, moffset, len, writable)
    }

    fn unmap(&self, moffset: u64, len: u64) -> std::io::Result<()> {
        self.win.unmap(moffset, len)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_eq!(self.win.counts().2, 0, "the server sent a map or unmap the VMM refuses");
        }
    }
}

struct Rig {
    s: Arc<Server<ObjectFs>>,
    backend: Backend,
    win: Arc<Window>,
    unique: AtomicU64,
}

impl Rig {
    async fn new() -> Rig {
        let (s, backend) = ovfs::cli::build_server(&Config::default_memory()).unwrap();
        let win = Window::new(WINDOW);
        s.enable_dax(win.clone());
        let rig = Rig { s, backend, win, unique: AtomicU64::new(2) };
        let r = rig.call(&client::init(rig.next(), abi::FUSE_MAP_ALIGNMENT | abi::FUSE_HAS_INODE_DAX)).await;
        assert_eq!(r.errno, 0);
        let out: abi::fuse_init_out = r.get().unwrap();
        assert_ne!(out.flags as u64 & abi::FUSE_MAP_ALIGNMENT, 0);
        assert_eq!(out.map_alignment, 12);
        assert_ne!(out.flags2 as u64 & (abi::FUSE_HAS_INODE_DAX >> 32), 0);
        rig
    }

    fn next(&self) -> u64 {
        self.unique.fetch_add(2, Ordering::Relaxed)
    }

    async fn call(&self, req: &[u8]) -> Reply {
        Reply::parse(&self.s.dispatch(req).await.expect("a reply")).expect("well-formed reply")
    }

    async fn errno(&self, req: &[u8]) -> i32 {
        self.call(req).await.errno
    }

    /// Create `name` with `data` through FUSE; returns its node id.
    async fn file(&self, name: &str, data: &[u8]) -> u64 {
        let r = self.call(&client::create(self.next(), 1, name, 0o644, libc::O_RDWR as u32)).await;
        assert_eq!(r.errno, 0);
        let e: abi::fuse_entry_out = r.get().unwrap();
        let o: abi::fuse_open_out = abi::fuse_open_out::from_prefix(&r.body[128..]).unwrap();
        for (i, c) in data.chunks(1 << 20).enumerate() {
            let w = client::write(self.next(), e.nodeid, o.fh, (i << 20) as u64, c);
            assert_eq!(self.errno(&w).await, 0);
        }
        assert_eq!(self.errno(&client::release(self.next(), e.nodeid, o.fh)).await, 0);
        e.nodeid
    }

    async fn open(&self, nodeid: u64, flags: i32) -> u64 {
        let r = self.call(&client::open(self.next(), nodeid, flags as u32)).await;
        assert_eq!(r.errno, 0);
        r.get::<abi::fuse_open_out>().unwrap().fh
    }

    async fn setup(&self, nodeid: u64, foffset: u64, len: u64, flags: u64, moffset: u64) -> i32 {
        self.errno(&client::setupmapping(self.next(), nodeid, foffset, len, flags, moffset)).await
    }

    async fn remove(&self, ranges: &[(u64, u64)]) -> i32 {
        self.errno(&client::removemapping(self.next(), ranges.len() as u32, ranges)).await
    }

    async fn object(&self, path: &str) -> Vec<u8> {
        self.backend.read(path, 0, u64::MAX / 2).await.unwrap().to_vec()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_read_upgrade_write_back() {
    let rig = Rig::new().await;
    let data = pattern((5 * MIB) as usize, 7);
    let ino = rig.file("f.bin", &data).await;
    let fh = rig.open(ino, libc::O_RDONLY).await;

    // Read-only mapping of [2 MiB, 4 MiB) at window offset 4 MiB: the object's bytes.
    assert_eq!(rig.setup(ino, 2 * MIB, 2 * MIB, R, 4 * MIB).await, 0);
    assert_eq!(rig.win.live(), vec![(4 * MIB, 2 * MIB, false)]);
    assert!(rig.win.read(4 * MIB, (2 * MIB) as usize) == data[(2 * MIB) as usize..(4 * MIB) as usize]);
    // The last range reaches past EOF: readable (no SIGBUS), zeros after EOF.
    assert_eq!(rig.setup(ino, 4 * MIB, 2 * MIB, R, 0).await, 0);
    let tail = rig.win.read(0, (2 * MIB) as usize);
    assert!(tail[..MIB as usize] == data[(4 * MIB) as usize..]);
    assert!(tail[MIB as usize..].iter().all(|&b| b == 0));

    // Upgrade the first mapping to writable: unmapped first, then mapped writable.
    let unmaps = rig.win.unmaps();
    assert_eq!(rig.setup(ino, 2 * MIB, 2 * MIB, R | W, 4 * MIB).await, 0);
    assert_eq!(rig.win.unmaps(), unmaps + 1);
    assert!(rig.win.live().contains(&(4 * MIB, 2 * MIB, true)));

    // A write through the window is what FUSE READ sees, and FSYNC uploads it.
    rig.win.write(4 * MIB + 100, b"written-through-dax");
    let r = rig.call(&client::read(rig.next(), ino, fh, 2 * MIB + 100, 19)).await;
    assert_eq!(r.body, b"written-through-dax");
    assert_eq!(rig.errno(&client::fsync(rig.next(), ino, fh)).await, 0);
    let obj = rig.object("f.bin").await;
    assert_eq!(obj.len(), data.len());
    assert_eq!(&obj[(2 * MIB + 100) as usize..(2 * MIB + 119) as usize], b"written-through-dax");

    // And a FUSE WRITE is visible in the window (same memory).
    let wfh = rig.open(ino, libc::O_RDWR).await;
    assert_eq!(rig.errno(&client::write(rig.next(), ino, wfh, 3 * MIB, b"via-fuse-write")).await, 0);
    assert_eq!(rig.win.read(5 * MIB, 14), b"via-fuse-write");

    // Close every handle: the mappings stay (the guest keeps them), and a
    // later write through the window reaches the back-end at REMOVEMAPPING.
    assert_eq!(rig.errno(&client::release(rig.next(), ino, wfh)).await, 0);
    assert_eq!(rig.errno(&client::release(rig.next(), ino, fh)).await, 0);
    assert_eq!(rig.s.filesystem().dax_mappings(ino), 2);
    rig.win.write(4 * MIB, b"after-close");
    assert_eq!(rig.remove(&[(4 * MIB, 2 * MIB), (0, 2 * MIB)]).await, 0);
    assert!(rig.win.live().is_empty());
    assert_eq!(rig.s.filesystem().dax_mappings(ino), 0);
    let obj = rig.object("f.bin").await;
    assert_eq!(&obj[(2 * MIB) as usize..(2 * MIB + 11) as usize], b"after-close");
    assert_eq!(&obj[(3 * MIB) as usize..(3 * MIB + 14) as usize], b"via-fuse-write");
    assert_eq!(obj.len(), data.len(), "mapping past EOF did not grow the file");
    let st = rig.s.dax().unwrap().stats();
    assert_eq!((st.setups, st.writable_setups, st.live), (3, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_errnos_and_map_nothing() {
    let rig = Rig::new().await;
    let ino = rig.file("h.bin", &pattern(100_000, 1)).await;
    let maps = || rig.win.maps();
    let before = maps();
    let einval = [
        (ino, 0, 2 * MIB, R, WINDOW),             // starts at the window's end
        (ino, 0, 2 * MIB, R, WINDOW - MIB),       // ends past it
        (ino, 0, 4 * MIB, R, u64::MAX - MIB + 1), // overflows
        (ino, 0, 0, R, 0),                        // empty
        (ino, 0, 2 * MIB, R, 100),                // unaligned moffset
        (ino, 7, 2 * MIB, R, 0),                  // unaligned foffset
        (ino, 0, 2 * MIB + 1, R, 0),              // unaligned len
        (ino, u64::MAX - 4095, 2 * MIB, R, 0),    // foffset + len overflows
        (ino, 0, 2 * MIB, 1 << 5, 0),             // unknown flag
        (1, 0, 2 * MIB, R, 0),                    // a directory
    ];
    for (n, f, l, fl, m) in einval {
        assert_eq!(rig.setup(n, f, l, fl, m).await, libc::EINVAL, "setup({n}, {f}, {l}, {fl}, {m})");
    }
    assert_eq!(rig.setup(12345, 0, 2 * MIB, R, 0).await, libc::ENOENT);
    assert_eq!(maps(), before, "nothing was mapped");
    // Short and oversized REMOVEMAPPING bodies, ranges outside the window.
    assert_eq!(rig.errno(&client::removemapping(rig.next(), 3, &[(0, 2 * MIB)])).await, libc::EINVAL);
    assert_eq!(rig.errno(&client::removemapping(rig.next(), 257, &vec![(0, 4096); 257])).await, libc::EINVAL);
    assert_eq!(rig.remove(&[(WINDOW, 2 * MIB)]).await, libc::EINVAL);
    assert_eq!(rig.remove(&[(u64::MAX - 4095, 8192)]).await, libc::EINVAL);
    // Removing what is not mapped is fine.
    assert_eq!(rig.remove(&[(0, 2 * MIB)]).await, 0);

    // Overlaps: a new mapping replaces whatever it overlaps (unmapped first).
    assert_eq!(rig.setup(ino, 0, 4 * MIB, R, 0).await, 0);
    assert_eq!(rig.setup(ino, 0, 2 * MIB, R, 2 * MIB).await, 0);
    assert_eq!(rig.win.live(), vec![(2 * MIB, 2 * MIB, false)]);
    assert_eq!(rig.setup(ino, 0, 2 * MIB, R, 12 * MIB).await, 0);
    // A REMOVEMAPPING range that overlaps part of a mapping removes it whole.
    assert_eq!(rig.remove(&[(3 * MIB, 4096)]).await, 0);
    assert_eq!(rig.win.live(), vec![(12 * MIB, 2 * MIB, false)]);
    assert_eq!(rig.s.filesystem().dax_mappings(ino), 1);

    // The server still serves.
    assert_eq!(rig.errno(&client::getattr(rig.next(), ino)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_under_a_mapping_and_device_reset() {
    let rig = Rig::new().await;
    let data = pattern((3 * MIB) as usize, 9);
    let ino = rig.file("t.bin", &data).await;
    assert_eq!(rig.setup(ino, 2 * MIB, 2 * MIB, R | W, 0).await, 0);
    // Truncate to 1 MiB while mapped: the window stays readable (the memfd
    // keeps its length); the bytes past EOF read as zeros.
    let s = abi::fuse_setattr_in { valid: abi::FATTR_SIZE, size: MIB, ..Default::default() };
    let req = client::request(abi::Opcode::Setattr, rig.next(), ino, &[s.as_bytes()]);
    assert_eq!(rig.errno(&req).await, 0);
    assert!(rig.win.read(0, (2 * MIB) as usize).iter().all(|&b| b == 0));
    assert_eq!(rig.object("t.bin").await.len() as u64, MIB);

    // The VMM reconnected: the window is gone; the next INIT releases the
    // old table's pins instead of unmapping them.
    rig.win.reset();
    assert_eq!(rig.call(&client::init(rig.next(), abi::FUSE_MAP_ALIGNMENT)).await.errno, 0);
    assert_eq!(rig.s.filesystem().dax_mappings(ino), 0);
    assert!(rig.s.dax().unwrap().mappings().is_empty());
    assert_eq!(rig.setup(ino, 2 * MIB, 2 * MIB, R | W, 0).await, 0);
    // A device reset without a new INIT: the next SETUPMAPPING forgets the
    // old table (no unmap sent for it) and releases its pins.
    rig.win.reset();
    let unmaps = rig.win.unmaps();
    assert_eq!(rig.setup(ino, 0, 2 * MIB, R, 0).await, 0);
    assert_eq!(rig.win.unmaps(), unmaps, "stale mappings are not unmapped again");
    assert_eq!(rig.s.filesystem().dax_mappings(ino), 1);
    assert_eq!(rig.s.dax().unwrap().mappings().len(), 1);
    assert!(rig.win.read(0, (MIB) as usize) == data[..MIB as usize]);

    // DESTROY unmaps everything.
    let req = client::request(abi::Opcode::Destroy, rig.next(), 0, &[]);
    assert_eq!(rig.errno(&req).await, 0);
    assert!(rig.win.live().is_empty());
}

#[tokio::test]
async fn without_a_window_nothing_changes() {
    let (s, _) = ovfs::cli::build_server(&Config::default_memory()).unwrap();
    let r = Reply::parse(&s.dispatch(&client::init(2, abi::FUSE_MAP_ALIGNMENT)).await.unwrap()).unwrap();
    let out: abi::fuse_init_out = r.get().unwrap();
    assert_eq!(out.flags as u64 & abi::FUSE_MAP_ALIGNMENT, 0);
    assert_eq!(out.map_alignment, 0);
    let r = Reply::parse(&s.dispatch(&client::setupmapping(4, 1, 0, 2 * MIB, R, 0)).await.unwrap()).unwrap();
    assert_eq!(r.errno, libc::ENOSYS);
}
