//! Fuzz target: arbitrary bytes as a sequence of FUSE requests, decoded and
//! dispatched by the real server over the memory back-end.
//!
//! Input format: a stream of [u16 little-endian length][bytes] records; each
//! record is one request buffer. The session is initialised first, so the
//! fuzzer reaches every opcode's decoder and the file system behind it.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ovfs::fuse::{client, Server};
use ovfs::vfs::ObjectFs;

struct State {
    rt: tokio::runtime::Runtime,
    server: Arc<Server<ObjectFs>>,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let cfg = ovfs::config::Config::default_memory();
        let server = rt.block_on(async { ovfs::cli::build_server(&cfg).expect("server").0 });
        rt.block_on(server.dispatch(&client::init(2, u64::MAX)));
        State { rt, server }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = state();
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
