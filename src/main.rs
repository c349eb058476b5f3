//! The `ovfs` binary: everything is in the library ([`ovfs::cli::main`]).
//!
//! The process allocator is jemalloc: under a long mixed load glibc's malloc
//! kept the daemon's resident memory creeping up (about 10% over ten minutes
//! after warm-up) while the live heap stayed flat — its arenas fragment, and
//! `malloc_trim` only returns whole free pages. jemalloc keeps allocations of
//! one size class together and hands unused pages back on a decay timer
//! (docs/SECURITY.md, "Load").

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (an operator's
/// `_RJEM_MALLOC_CONF` in the environment still overrides them): two
/// arenas (the daemon's threads mostly wait on I/O), thread caches only
/// for allocations up to 4 KiB, and unused pages handed back after 1 s
/// instead of 10 s. Measured in the 10-minute load run: resident anonymous
/// memory about 14 MiB and flat (+5% at most after warm-up), against about
/// 21 MiB with jemalloc's defaults and 7-9 MiB creeping up 9.8-13% with
/// glibc's malloc (docs/SECURITY.md, "Load").
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 63] = b"narenas:2,tcache_max:4096,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() {
    std::process::exit(ovfs::cli::main());
}
