//! Entry point for the descriptor-chain fuzz target (`fuzz/fuzz_targets/vring_chains.rs`),
//! built only with the `fuzzing` feature: one split virtqueue laid out by the
//! caller in guest memory is drained the way the device drains it — pop a
//! chain, check it and copy its request out (`device::parse_request`), write a
//! reply into its writable part (`device::write_reply`, or the device's EIO
//! reply for a rejected chain) and put it in the used ring. No tokio, no
//! vhost-user socket: only the code that touches guest memory.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::device::{eio_reply, parse_request, write_reply};

/// What happened to one chain.
#[derive(Debug)]
pub struct ChainOutcome {
    pub head: u16,
    /// The request copied out, when the chain was accepted.
    pub request: Option<Vec<u8>>,
    /// Length put in the used ring.
    pub used_len: u32,
    /// Every writable descriptor (address, length) of the chain, indirect
    /// tables followed, as the chain walk sees them.
    pub writable: Vec<(u64, u32)>,
}

/// Drain a split queue of `size` entries (descriptor table, available and
/// used rings at the given guest addresses). Each accepted request is
/// answered with `reply(request)`. At most `max_chains` chains are popped.
/// Returns `None` when the queue cannot be set up (bad size or alignment).
pub fn drain_queue(
    mem: &Arc<GuestMemoryMmap<()>>,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    max_chains: usize,
    mut reply: impl FnMut(&[u8]) -> Option<Vec<u8>>,
) -> Option<Vec<ChainOutcome>> {
    let mut queue = Queue::new(size).ok()?;
    queue.try_set_size(size).ok()?;
    queue.try_set_desc_table_address(GuestAddress(desc)).ok()?;
    queue.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
    queue.try_set_used_ring_address(GuestAddress(used)).ok()?;
    queue.set_ready(true);
    let mut out = Vec::new();
    while out.len() < max_chains {
        let Some(chain) = queue.pop_descriptor_chain(mem.clone()) else { break };
        let head = chain.head_index();
        let writable = chain.clone().filter(|d| d.is_write_only()).map(|d| (d.addr().0, d.len())).collect();
        let (request, used_len) = match parse_request(mem, &chain) {
            Ok((req, unique)) => {
                let used_len = match reply(&req) {
                    Some(r) => write_reply(mem, chain, &r, Some(unique), 0, head),
                    None => 0,
                };
                (Some(req), used_len)
            }
            Err(rejected) => {
                let used_len = match rejected.unique {
                    Some(u) => write_reply(mem, chain, &eio_reply(u), Some(u), 0, head),
                    None => 0,
                };
                (None, used_len)
            }
        };
        // The ring may be anywhere the guest said: an error here is the
        // guest's, the device logs it and goes on.
        let _ = queue.add_used(&**mem, head, used_len);
        out.push(ChainOutcome { head, request, used_len, writable });
    }
    Some(out)
}
