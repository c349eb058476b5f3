//! The in-process vhost-user front-end (src/frontend) against real daemons:
//! ovfs served in-process (memory back-end and passthrough of a tempdir) and
//! virtiofsd when installed (~/.cargo/bin/virtiofsd, tests/tools/install-deps.sh).
//! Also a smoke run of the `ovfs-bench daemon` workloads so they cannot rot.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ovfs::config::Config;
use ovfs::frontend::workload::{self, Limits, Workload};
use ovfs::frontend::{Frontend, FrontendOptions, DEFAULT_INIT_FLAGS};
use ovfs::fuse::abi::{self, Opcode, Pod, FUSE_ROOT_ID};
use ovfs::fuse::client;
use ovfs::fuse::{Server, ServerOptions};
use ovfs::transport::vhost_user::{serve, Listen, VhostUserOptions};
use ovfs::transport::RequestHandler;
use ovfs::vfs::passthrough::{PassthroughFs, PassthroughOptions};

fn wait_for_socket(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "socket {} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// ovfs's vhost-user transport serving `handler` on a thread.
struct InProcess {
    socket: PathBuf,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl InProcess {
    fn start(handler: Arc<dyn RequestHandler>, request_queues: usize) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vfs.sock");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let opts = VhostUserOptions { num_request_queues: request_queues, ..Default::default() };
        let (path, handle) = (socket.clone(), rt.handle().clone());
        let thread = std::thread::spawn(move || serve(Listen::SocketPath(path), handler, opts, handle));
        wait_for_socket(&socket);
        InProcess { socket, thread: Some(thread), _rt: rt, _dir: dir }
    }

    fn memory(request_queues: usize) -> InProcess {
        let server = ovfs::cli::build_server(&Config::default_memory()).expect("memory server").0;
        Self::start(server, request_queues)
    }

    fn passthrough(root: &Path, request_queues: usize) -> InProcess {
        let fs = PassthroughFs::new(root, PassthroughOptions::default()).unwrap();
        Self::start(Arc::new(Server::new(fs, ServerOptions::default())), request_queues)
    }

    /// After the front-end disconnected: `serve` must have returned cleanly.
    fn finish(mut self) {
        let r = self.thread.take().unwrap().join().expect("serve thread panicked");
        r.expect("serve returned an error");
    }
}

fn connect(socket: &Path, request_queues: usize) -> Frontend {
    let opts = FrontendOptions { request_queues, slots_per_queue: 64, queue_size: 128, ..Default::default() };
    Frontend::connect(socket, opts).expect("front-end connects")
}

fn call(fe: &mut Frontend, req: &[u8]) -> client::Reply {
    fe.fuse(req).expect("a FUSE reply")
}

fn entry(r: &client::Reply) -> abi::fuse_entry_out {
    assert_eq!(r.errno, 0, "entry reply failed");
    abi::fuse_entry_out::from_prefix(&r.body).expect("entry_out")
}

/// INIT, LOOKUP, CREATE, WRITE, READ, GETATTR, READDIR through the front-end.
fn exercise(fe: &mut Frontend) {
    let init = fe.init(DEFAULT_INIT_FLAGS).expect("INIT");
    assert_eq!(init.major, 7);
    assert!(init.max_write >= 4096);

    let u = fe.unique();
    assert_eq!(call(fe, &client::lookup(u, FUSE_ROOT_ID, "missing")).errno, libc::ENOENT);

    let u = fe.unique();
    let r = call(fe, &client::create(u, FUSE_ROOT_ID, "hello.txt", 0o100644, libc::O_RDWR as u32));
    assert_eq!(r.unique, u);
    let e = entry(&r);
    let o = abi::fuse_open_out::from_prefix(&r.body[std::mem::size_of::<abi::fuse_entry_out>()..]).unwrap();

    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let u = fe.unique();
    let r = call(fe, &client::write(u, e.nodeid, o.fh, 0, &data));
    assert_eq!(r.errno, 0);
    assert_eq!(r.get::<abi::fuse_write_out>().unwrap().size as usize, data.len());

    let u = fe.unique();
    let r = fe.fuse_with_capacity(&client::read(u, e.nodeid, o.fh, 0, 128 << 10), 16 + (128 << 10)).unwrap();
    assert_eq!(r.errno, 0);
    assert_eq!(r.body, data, "READ returns what WRITE wrote");
    let u = fe.unique();
    let r = fe.fuse_with_capacity(&client::read(u, e.nodeid, o.fh, 99_990, 4096), 16 + 4096).unwrap();
    assert_eq!(r.body, &data[99_990..]);

    let u = fe.unique();
    let r = call(fe, &client::getattr(u, e.nodeid));
    assert_eq!(r.errno, 0);
    let a = r.get::<abi::fuse_attr_out>().unwrap().attr;
    assert_eq!(a.size, data.len() as u64);
    assert_eq!(a.mode & libc::S_IFMT, libc::S_IFREG);

    let u = fe.unique();
    let again = entry(&call(fe, &client::lookup(u, FUSE_ROOT_ID, "hello.txt")));
    assert_eq!(again.nodeid, e.nodeid);
    let u = fe.unique();
    assert_eq!(call(fe, &client::release(u, e.nodeid, o.fh)).errno, 0);

    let u = fe.unique();
    entry(&call(fe, &client::mkdir(u, FUSE_ROOT_ID, "sub", 0o755)));
    let u = fe.unique();
    let r = call(fe, &client::opendir(u, FUSE_ROOT_ID));
    assert_eq!(r.errno, 0);
    let dfh = r.get::<abi::fuse_open_out>().unwrap().fh;
    let u = fe.unique();
    let r = call(fe, &client::readdir(u, FUSE_ROOT_ID, dfh, 0, 4096, false));
    assert_eq!(r.errno, 0);
    let names = client::dirent_names(&r.body);
    for want in ["hello.txt", "sub"] {
        assert!(names.iter().any(|n| n == want), "READDIR lists {want}: {names:?}");
    }
    let u = fe.unique();
    assert_eq!(call(fe, &client::releasedir(u, FUSE_ROOT_ID, dfh)).errno, 0);
}

/// 64 requests in flight over every request queue: GETATTRs and READs of
/// distinct ranges, each reply matched to its request by token and unique.
/// Returns how many completions arrived out of submission order.
fn many_in_flight(fe: &mut Frontend) -> usize {
    let u = fe.unique();
    let r = call(fe, &client::create(u, FUSE_ROOT_ID, "many.dat", 0o100644, libc::O_RDWR as u32));
    let e = entry(&r);
    let o = abi::fuse_open_out::from_prefix(&r.body[std::mem::size_of::<abi::fuse_entry_out>()..]).unwrap();
    let data: Vec<u8> = (0..64 * 4096u32).map(|i| (i / 4096 + i % 13) as u8).collect();
    let u = fe.unique();
    assert_eq!(call(fe, &client::write(u, e.nodeid, o.fh, 0, &data)).errno, 0);

    let queues: Vec<usize> = (1..fe.num_queues()).collect();
    let mut expect = std::collections::HashMap::new();
    for i in 0..64usize {
        let u = fe.unique();
        let (req, cap) = if i % 2 == 0 {
            (client::getattr(u, e.nodeid), 256)
        } else {
            (client::read(u, e.nodeid, o.fh, (i * 4096) as u64, 4096), 16 + 4096)
        };
        let q = queues[i % queues.len()];
        let token = fe.submit(q, &req, cap).expect("submit");
        expect.insert(token, (i, u, q));
    }
    let total: usize = queues.iter().map(|&q| fe.in_flight(q)).sum();
    assert_eq!(total, 64, "64 requests in flight at once");
    let mut order = Vec::new();
    while !expect.is_empty() {
        for c in fe.wait(&queues).expect("completions") {
            let (i, u, q) = expect.remove(&c.token).expect("each token completes once");
            assert_eq!(c.queue, q);
            let r = c.fuse().expect("well-formed reply");
            assert_eq!((r.unique, r.errno), (u, 0));
            if i % 2 == 0 {
                assert_eq!(r.get::<abi::fuse_attr_out>().unwrap().attr.size, data.len() as u64);
            } else {
                assert_eq!(r.body, &data[i * 4096..(i + 1) * 4096], "READ {i} has its own range");
            }
            order.push(i);
        }
    }
    let u = fe.unique();
    assert_eq!(call(fe, &client::release(u, e.nodeid, o.fh)).errno, 0);
    order.windows(2).filter(|w| w[0] > w[1]).count()
}

#[test]
fn ovfs_memory_backend() {
    let d = InProcess::memory(1);
    let mut fe = connect(&d.socket, 1);
    let cfg = fe.config().expect("GET_CONFIG");
    assert_eq!(cfg.num_request_queues, 1);
    assert!(fe.event_idx(), "EVENT_IDX negotiated");
    exercise(&mut fe);
    drop(fe);
    d.finish();
}

#[test]
fn ovfs_passthrough() {
    let root = tempfile::tempdir().unwrap();
    let d = InProcess::passthrough(root.path(), 2);
    let mut fe = connect(&d.socket, 2);
    exercise(&mut fe);
    assert_eq!(std::fs::read(root.path().join("hello.txt")).unwrap().len(), 100_000, "the write reached the directory");
    many_in_flight(&mut fe);
    drop(fe);
    d.finish();
}

/// Delays every fourth GETATTR so later requests overtake it.
struct Delayed(Arc<dyn RequestHandler>);

impl RequestHandler for Delayed {
    fn handle(self: Arc<Self>, req: Vec<u8>) -> BoxFuture<'static, Option<Vec<u8>>> {
        let inner = self.0.clone();
        Box::pin(async move {
            if let Some(h) = abi::fuse_in_header::from_prefix(&req) {
                if h.opcode == Opcode::Getattr as u32 && h.unique % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            inner.handle(req).await
        })
    }
}

#[test]
fn sixty_four_in_flight_over_two_queues_complete_out_of_order() {
    let server = ovfs::cli::build_server(&Config::default_memory()).unwrap().0;
    let d = InProcess::start(Arc::new(Delayed(server)), 2);
    let mut fe = connect(&d.socket, 2);
    fe.init(DEFAULT_INIT_FLAGS).unwrap();
    let overtaken = many_in_flight(&mut fe);
    assert!(overtaken > 0, "delayed requests completed after later ones");
    drop(fe);
    d.finish();
}

/// A daemon that corrupts the used ring (simulated by writing it from this
/// side): an error, never a panic or an access outside guest memory.
#[test]
fn corrupt_used_ring_is_an_error_not_a_crash() {
    let d = InProcess::memory(1);
    let mut fe = connect(&d.socket, 1);
    fe.init(DEFAULT_INIT_FLAGS).unwrap();
    let (_, _, used) = fe.ring_offsets(1).unwrap();
    // A completion of a descriptor that is not in flight.
    fe.memory()
        .store_u16(used + 2, fe.memory().load_u16(used + 2, Ordering::Acquire).unwrap() + 1, Ordering::Release)
        .unwrap();
    let mut out = Vec::new();
    let e = fe.poll(1, &mut out).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    assert!(fe.submit(1, &client::getattr(100, 1), 256).is_err(), "a broken queue takes no more requests");
    drop(fe);
    d.finish();

    // An absurd used length is clamped to the buffer: the copy stays in bounds.
    let d = InProcess::memory(1);
    let mut fe = connect(&d.socket, 1);
    fe.init(DEFAULT_INIT_FLAGS).unwrap();
    let (_, _, used) = fe.ring_offsets(1).unwrap();
    let size = fe.options().queue_size as usize;
    let idx = fe.memory().load_u16(used + 2, Ordering::Acquire).unwrap();
    fe.submit(1, &client::forget(102, 1, 1), 64).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // FORGET takes no reply: the daemon completed it with length 0; claim 4 GiB.
    let elem = used + 4 + 8 * (idx as usize % size);
    fe.memory().write(elem + 4, &u32::MAX.to_le_bytes()).unwrap();
    let c = fe.wait(&[1]).unwrap();
    assert_eq!(c[0].used_len, u32::MAX);
    assert_eq!(c[0].reply.len(), 64, "copy clamped to the reply buffer");
    drop(fe);
    d.finish();
}

#[test]
fn bench_workloads_smoke() {
    let root = tempfile::tempdir().unwrap();
    let d = InProcess::passthrough(root.path(), 1);
    let mut fe = connect(&d.socket, 1);
    let mut s = workload::prepare(&mut fe, 4 << 20, "bench-smoke").expect("prepare");
    let limits = Limits { duration: Duration::from_secs(5), max_ops: 24 };
    for w in Workload::ALL {
        for depth in [1, 16] {
            let m = workload::run(&mut fe, &mut s, w, depth, limits).unwrap_or_else(|e| panic!("{w:?}: {e}"));
            assert_eq!(m.ops, 24, "{w:?} at depth {depth}");
            assert!(m.value > 0.0);
        }
    }
    let created = std::fs::read_dir(root.path().join("bench-smoke")).unwrap().count();
    assert_eq!(created, 48, "LOOKUP+CREATE made its files");
    drop(fe);
    d.finish();
}

fn virtiofsd() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/virtiofsd");
    p.exists().then_some(p)
}

struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Virtiofsd {
    fn start(bin: &Path, shared: &Path) -> Virtiofsd {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vfsd.sock");
        let child = Command::new(bin)
            .args(["--sandbox=none", "--cache", "auto", "--socket-path"])
            .arg(&socket)
            .arg("--shared-dir")
            .arg(shared)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn virtiofsd");
        wait_for_socket(&socket);
        Virtiofsd { child, socket, _dir: dir }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn virtiofsd_when_installed() {
    let Some(bin) = virtiofsd() else {
        eprintln!("virtiofsd not installed (tests/tools/install-deps.sh): skipped");
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let d = Virtiofsd::start(&bin, root.path());
    let mut fe = connect(&d.socket, 1);
    exercise(&mut fe);
    assert_eq!(std::fs::read(root.path().join("hello.txt")).unwrap().len(), 100_000);
    many_in_flight(&mut fe);
    drop(fe);

    let d = Virtiofsd::start(&bin, root.path());
    let mut fe = connect(&d.socket, 1);
    let mut s = workload::prepare(&mut fe, 4 << 20, "bench-smoke").expect("prepare");
    let limits = Limits { duration: Duration::from_secs(5), max_ops: 24 };
    for w in Workload::ALL {
        let m = workload::run(&mut fe, &mut s, w, 16, limits).unwrap_or_else(|e| panic!("{w:?}: {e}"));
        assert_eq!(m.ops, 24);
    }
}
