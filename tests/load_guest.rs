//! Load: 64 concurrent guest processes (QEMU TCG, `tests/guest/scripts/load.sh`)
//! mix metadata and data operations on ovfs — create + write, stat, read back,
//! rename, readdir, unlink in a directory of their own and in one shared
//! directory — for `OVFS_LOAD_SECS` seconds (default 60 in CI; the long form
//! is 600). The back-end is a host directory (`--shared-dir DIR --opendal-fs`),
//! so the daemon's memory does not grow with stored data; its data cache is
//! bounded at 16 MiB (`memory_limit`) so that it is full, and evicting,
//! before warm-up ends. Checked:
//! - completion: every worker finishes and the guest reports no failed
//!   operation and no wrong byte (`LOAD-ERR`);
//! - no stuck request: the daemon's latency histogram (`--metrics-addr`,
//!   scraped from the host after the guest's LOAD-DONE) has no request above its 10 s bucket,
//!   nothing is in flight after the run, and the guest's watchdog saw every
//!   worker finish an iteration at least every 60 s (`STUCK`);
//! - flat memory: the daemon's resident anonymous memory (`RssAnon` in
//!   `/proc/PID/status`, sampled from the host every second) after warm-up
//!   stays within 10% of its value at the end of warm-up (long form,
//!   `OVFS_LOAD_SECS >= 300`; the 60 s CI form, whose 15 s warm-up is short
//!   under TCG, checks 40%: it catches a leak like the fs read buffers that
//!   grew 38-186% in that form, while a fixed daemon measures +13-18%).
//!   The value at the end of warm-up is the median of the samples in its
//!   last 30 s (half of it when shorter): the allocator (jemalloc,
//!   src/main.rs) hands unused pages back on a 1 s decay, so single samples
//!   move by a few hundred KiB. Not VmRSS: that also counts
//!   shared memory — the pages of the guest's RAM (a memfd the daemon maps)
//!   that requests touched, which follows the guest's page cache, and the
//!   data cache's memfd pool — not the daemon's heap; RssShmem is printed
//!   beside. Warm-up: the first quarter of the load (at least 15 s) after
//!   the guest printed `LOAD-START`; the last 5 s (workers winding down) are
//!   left out.
//!
//! Needs root, QEMU and the guest kernel (tests/tools/install-deps.sh).

#[path = "common/guest.rs"]
mod guest;

use std::ffi::OsString;
use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use guest::{read_lossy, require_guest_deps, serial, tail, BootOpts, Daemon, Work};

const PROCS: usize = 64;
/// Guest watchdog bound on one worker iteration (a liveness bound, not a speed one).
const STUCK_S: u64 = 60;

/// A number field of /proc/PID/status (`RssAnon`, `RssShmem`: KiB).
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn scrape(sock: &std::path::Path) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--unix-socket"])
        .arg(sock)
        .arg("http://localhost/metrics")
        .output()
        .expect("curl");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The sum of a gauge's samples over its label sets (`prefix` ends at `{`).
fn gauge_sum(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn proc_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| s.lines().any(|l| l.starts_with("State:") && !l.contains("zombie")))
        .unwrap_or(false)
}

/// Requests above the 10 s bucket, total requests, and in-flight requests.
fn slow_requests(metrics: &str) -> (u64, u64, u64) {
    let (mut over, mut total, mut in_flight) = (0u64, 0u64, 0u64);
    let mut le10 = 0u64;
    for l in metrics.lines() {
        let Some((k, v)) = l.rsplit_once(' ') else { continue };
        let v: f64 = v.parse().unwrap_or(0.0);
        if k.starts_with("ovfs_request_duration_seconds_bucket{") && k.ends_with("le=\"10\"}") {
            le10 += v as u64;
        } else if k.starts_with("ovfs_request_duration_seconds_bucket{") && k.ends_with("le=\"+Inf\"}") {
            total += v as u64;
        } else if k == "ovfs_requests_in_flight" {
            in_flight = v as u64;
        }
    }
    over += total - le10.min(total);
    (over, total, in_flight)
}

#[test]
fn guest_load_64_processes() {
    require_guest_deps();
    let _g = serial();
    let secs: u64 = std::env::var("OVFS_LOAD_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let work = Work::new("load_guest", "load");
    let initrd = work.initramfs("load", "load.sh", &[]);
    let share = work.share("share");
    let sock = work.sock("fs.sock");
    let msock = work.sock("metrics.sock");
    // The data cache bounded at 16 MiB: it fills within warm-up and then
    // evicts, so its index (heap) reaches its steady size too. With the
    // default 256 MiB it would still be filling after 10 minutes of this
    // workload, its index growing with it.
    let config = work.p("ovfs.toml");
    fs::write(&config, "[cache_settings]\nmemory_limit = \"16MiB\"\n\n[storage_settings]\ntype = \"memory\"\n")
        .expect("write config");
    let args: Vec<OsString> = vec![
        "--config".into(),
        config.into(),
        "--shared-dir".into(),
        share.clone().into(),
        "--opendal-fs".into(),
        "--metrics-addr".into(),
        format!("unix:{}", msock.display()).into(),
    ];
    let daemon = Daemon::ovfs(&work, "ovfs", &sock, &args);
    let pid = daemon.pid().expect("daemon pid");
    let log_path = work.p("load.log");

    // (seconds since LOAD-START, RssAnon KiB, RssShmem KiB), and the metrics scraped once the
    // guest reports LOAD-DONE (before it powers off and the daemon exits).
    let done = AtomicBool::new(false);
    let (boot, (samples, metrics, threads, blocks)) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut samples: Vec<(f64, u64, u64)> = Vec::new();
            // (seconds since LOAD-START, data cache blocks): the cache's index is heap.
            let mut blocks: Vec<(f64, u64)> = Vec::new();
            let mut threads: Vec<u64> = Vec::new();
            let mut start: Option<Instant> = None;
            let mut metrics = None;
            while !done.load(Ordering::Relaxed) {
                let log = read_lossy(&log_path);
                if start.is_none() && log.contains("LOAD-START") {
                    start = Some(Instant::now());
                }
                let finished = log.contains("LOAD-DONE");
                if let (Some(t0), false) = (start, finished) {
                    // RssAnon: the daemon's own memory. VmRSS also counts the
                    // pages of the guest's RAM (a shared memfd the daemon maps)
                    // that requests have touched, which grows with the guest's
                    // page cache, not with the daemon (reported apart).
                    if let Some(kib) = status_field(pid, "RssAnon") {
                        let shmem = status_field(pid, "RssShmem").unwrap_or(0);
                        samples.push((t0.elapsed().as_secs_f64(), kib, shmem));
                        threads.push(status_field(pid, "Threads").unwrap_or(0));
                    }
                }
                // The guest waits a few seconds after LOAD-DONE: scrape then.
                if start.is_some() && !matches!(metrics, Some((_, true))) && proc_alive(pid) {
                    if let Some(m) = scrape(&msock) {
                        if let (Some(t0), false) = (start, finished) {
                            blocks.push((t0.elapsed().as_secs_f64(), gauge_sum(&m, "ovfs_cache_blocks{")));
                        }
                        metrics = Some((m, finished));
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (samples, metrics, threads, blocks)
        });
        let opts = BootOpts { timeout_s: (secs + 900) as u32, ..BootOpts::default() };
        let cmdline = format!("ovfs.procs={PROCS} ovfs.secs={secs} ovfs.stuck={STUCK_S}");
        let boot = work.boot_with("load", &initrd, &sock, &cmdline, &daemon, &opts);
        done.store(true, Ordering::Relaxed);
        (boot, sampler.join().expect("sampler"))
    });
    let context = || format!("{}\nconsole tail:\n{}", boot.context(), tail(&boot.log, 40));
    assert!(boot.status.success(), "guest failed\n{}", context());

    // Completion and correctness.
    let errs: Vec<&str> = boot.lines().filter(|l| l.trim_start().starts_with("LOAD-ERR")).collect();
    let stuck: Vec<&str> = boot.lines().filter(|l| l.trim_start().starts_with("STUCK")).collect();
    let workers = boot.lines().filter(|l| l.trim_start().starts_with("LOAD-WORKER ")).count();
    let total: u64 = boot
        .lines()
        .find_map(|l| l.trim().strip_prefix("LOAD-DONE ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no LOAD-DONE\n{}", context()));
    assert!(errs.is_empty(), "{} failed operations:\n{}\n{}", errs.len(), errs.join("\n"), context());
    assert_eq!(workers, PROCS, "every worker finished");
    assert!(total >= PROCS as u64, "every worker did at least one iteration ({total} in all)");

    // No stuck request in the daemon.
    let (metrics, after_done) = metrics.unwrap_or_else(|| panic!("metrics not scraped\n{}", context()));
    assert!(after_done, "no metrics scrape after LOAD-DONE");
    let (over, requests, in_flight) = slow_requests(&metrics);
    // What the guest still holds at the end (grows with its inode cache).
    let gauges: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("ovfs_nodes{") || l.starts_with("ovfs_open_files{") || l.starts_with("ovfs_open_dirs{")
        })
        .collect();
    eprintln!("[load_guest] at LOAD-DONE: {}", gauges.join(", "));
    assert!(requests > 1000, "the metrics saw the load ({requests} requests)");

    // Flat memory after warm-up.
    let load_s = secs as f64;
    let warm = (load_s / 4.0).max(15.0);
    let post: Vec<u64> = samples.iter().filter(|(t, _, _)| *t >= warm && *t <= load_s - 5.0).map(|s| s.1).collect();
    assert!(post.len() >= 5, "too few RSS samples after warm-up: {samples:?}");
    let window = (warm / 2.0).min(30.0);
    let mut end_of_warm: Vec<u64> =
        samples.iter().filter(|(t, _, _)| *t >= warm - window && *t < warm).map(|s| s.1).collect();
    assert!(end_of_warm.len() >= 3, "too few RSS samples at the end of warm-up: {samples:?}");
    end_of_warm.sort_unstable();
    let base = end_of_warm[end_of_warm.len() / 2];
    let (min, max) = (*post.iter().min().unwrap(), *post.iter().max().unwrap());
    let growth = max as f64 / base as f64 - 1.0;
    eprintln!(
        "[load_guest] {PROCS} processes, {secs} s: {total} iterations, {requests} requests, {in_flight} in flight at \
         LOAD-DONE, {over} over 10 s; RssAnon after {warm:.0} s warm-up: {base} KiB at its end (median of its last \
         {window:.0} s), then min {min}, max {max} KiB \
         ({:+.1}%), {} samples; peak during warm-up {} KiB",
        growth * 100.0,
        post.len(),
        samples.iter().filter(|(t, _, _)| *t < warm).map(|s| s.1).max().unwrap_or(0)
    );
    let step = (samples.len() / 20).max(1);
    let series: Vec<String> = samples
        .iter()
        .step_by(step)
        .map(|(t, kib, th)| format!("{t:.0}s {} MiB (shmem {} MiB)", kib / 1024, th / 1024))
        .collect();
    eprintln!("[load_guest] RssAnon series: {}", series.join(", "));
    let th: Vec<String> = threads.iter().step_by(step).map(|n| n.to_string()).collect();
    eprintln!("[load_guest] daemon threads, same samples: {}", th.join(", "));
    let bstep = (blocks.len() / 20).max(1);
    let bs: Vec<String> = blocks.iter().step_by(bstep).map(|(t, n)| format!("{t:.0}s {n}")).collect();
    eprintln!("[load_guest] data cache blocks: {}", bs.join(", "));
    // The 10% bound needs a real warm-up: in the 60 s CI form (15 s warm-up
    // under TCG) RssAnon may still climb as the first bursts of concurrency
    // fill the allocator's arenas, so it checks 40%; the long form
    // (OVFS_LOAD_SECS >= 300) checks 10% (docs/SECURITY.md, "Load").
    let bound = if secs >= 300 { 0.10 } else { 0.40 };
    // Liveness, judged after the figures above are printed.
    assert!(
        stuck.is_empty(),
        "workers without progress for {STUCK_S} s (the daemon saw {over} requests over 10 s):\n{}",
        stuck.join("\n")
    );
    assert_eq!(over, 0, "requests slower than 10 s");
    assert!(
        growth <= bound,
        "RssAnon grew {:.1}% after warm-up (from {base} to {max} KiB; bound {:.0}%)",
        growth * 100.0,
        bound * 100.0
    );
    let _ = read_lossy(&daemon.log);
}
