//! Fuzz target: arbitrary bytes as a sequence of FUSE requests, decoded and
//! dispatched by the real server over the memory back-end.
//!
//! Input format: a stream of [u16 little-endian length][bytes] records; each
//! record is one request buffer. The session is initialised first, so the
//! fuzzer reaches every opcode's decoder and the file system behind it.
//!
//! State: one tokio runtime and one server (memory back-end, default cache)
//! serve many inputs, so files and nodes made by one input are there for the
//! next (as in a guest session). Every `RESET_EVERY` inputs the runtime, the
//! server and its back-end are dropped and built afresh: the back-end holds
//! whatever the inputs wrote, and without the reset it grew past libFuzzer's
//! 2 GiB RSS limit after ~0.9 M inputs. The server is built with
//! `cli::build_object_fs_with` + `Server::new` (not `cli::build_server`), so
//! a rebuild registers nothing in the process-wide metrics registry.
//!
//! Files are bounded to `MAX_FILE` (EFBIG beyond, the same check as the
//! daemon's 1 TiB default): the memory back-end keeps every byte of an
//! uploaded object in RAM, so one WRITE or SETATTR far past EOF followed by
//! FLUSH made a sparse file of hundreds of GiB and an upload that streamed
//! it into memory (the 2.2 GiB out-of-memory stop at 0.73 M executions).
//!
//! Checked: no panic; every reply's header length is its length.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ovfs::fuse::{client, Server, ServerOptions};
use ovfs::vfs::ObjectFs;

/// Inputs served by one server before it is rebuilt. At max_len 4096 an input
/// writes at most a few KiB that stay, so this bounds the back-end's data to
/// tens of MiB.
const RESET_EVERY: u32 = 4096;

/// Largest file an input may make (see the module note).
const MAX_FILE: u64 = 16 << 20;

struct State {
    rt: tokio::runtime::Runtime,
    server: Arc<Server<ObjectFs>>,
    served: u32,
}

fn fresh() -> State {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let cfg = ovfs::config::Config::default_memory();
    let server = rt.block_on(async {
        let mut opts = ovfs::reload::object_fs_options(&cfg);
        opts.max_file_size = MAX_FILE;
        let (fs, _backend) = ovfs::cli::build_object_fs_with(&cfg.storage_settings, &cfg, opts).expect("memory fs");
        Arc::new(Server::new(fs, ServerOptions::default()))
    });
    rt.block_on(server.dispatch(&client::init(2, u64::MAX)));
    State { rt, server, served: 0 }
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|s| s.served >= RESET_EVERY) {
            // Drop the old runtime (and every task on it) before building anew.
            *slot = None;
            *slot = Some(fresh());
        }
        let s = slot.as_mut().expect("state");
        s.served += 1;
        let mut rest = data;
        let mut n = 0;
        while rest.len() >= 2 && n < 64 {
            let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            rest = &rest[2..];
            let take = len.min(rest.len());
            let req = &rest[..take];
            rest = &rest[take..];
            n += 1;
            if let Some(reply) = s.rt.block_on(s.server.dispatch(req)) {
                // Every reply is well formed: its header's length is its length.
                assert!(reply.len() >= 16);
                let len = u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]) as usize;
                assert_eq!(len, reply.len());
            }
        }
        // Re-initialise when the input sent DESTROY, so later inputs still reach the fs.
        s.rt.block_on(s.server.dispatch(&client::init(2, u64::MAX)));
    });
});
