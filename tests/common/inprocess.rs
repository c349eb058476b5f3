//! ovfs's vhost-user transport served in-process on a thread, for tests that
//! drive it with the in-process front-end (`ovfs::frontend`).

#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ovfs::config::Config;
use ovfs::frontend::{Frontend, FrontendOptions};
use ovfs::fuse::{Server, ServerOptions};
use ovfs::transport::vhost_user::{serve, Listen, VhostUserOptions};
use ovfs::transport::RequestHandler;
use ovfs::vfs::passthrough::{PassthroughFs, PassthroughOptions};

pub fn wait_for_socket(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "socket {} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One vhost-user device served on a thread until the front-end disconnects.
pub struct InProcess {
    pub socket: PathBuf,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl InProcess {
    pub fn start(handler: Arc<dyn RequestHandler>, request_queues: usize) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vfs.sock");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let opts = VhostUserOptions { num_request_queues: request_queues, ..Default::default() };
        let (path, handle) = (socket.clone(), rt.handle().clone());
        let thread = std::thread::spawn(move || serve(Listen::SocketPath(path), handler, opts, handle));
        wait_for_socket(&socket);
        InProcess { socket, thread: Some(thread), _rt: rt, _dir: dir }
    }

    pub fn memory(request_queues: usize) -> InProcess {
        let server = ovfs::cli::build_server(&Config::default_memory()).expect("memory server").0;
        Self::start(server, request_queues)
    }

    pub fn passthrough(root: &Path, request_queues: usize) -> InProcess {
        let fs = PassthroughFs::new(root, PassthroughOptions::default()).unwrap();
        Self::start(Arc::new(Server::new(fs, ServerOptions::default())), request_queues)
    }

    /// Whether the serving thread is still running.
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// After the front-end disconnected: `serve` must have returned cleanly.
    pub fn finish(mut self) {
        let r = self.thread.take().unwrap().join().expect("serve thread panicked");
        r.expect("serve returned an error");
    }
}

pub fn connect(socket: &Path, request_queues: usize) -> Frontend {
    let opts = FrontendOptions { request_queues, slots_per_queue: 64, queue_size: 128, ..Default::default() };
    Frontend::connect(socket, opts).expect("front-end connects")
}
