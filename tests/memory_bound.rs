//! The daemon's memory stays bounded by `memory_limit` (+ 64 MiB) while a
//! large file is written sequentially and read back through a host mount
//! (`ovfs mount` over the OpenDAL fs service).
//!
//! Memory is sampled every 50 ms from /proc/PID: anonymous and file-backed
//! resident pages (`RssAnon` + `RssFile` from /proc/PID/status, cross-checked
//! with /proc/PID/smaps_rollup) plus every memfd the process holds, mapped or
//! not (the cache pool and the staging files), counted by its allocated
//! blocks (`stat` through /proc/PID/fd). Mapped memfd pages are counted once.
//!
//! 1 GiB by default; `OVFS_MEMORY_BOUND_GIB=4` for the long form.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bash, Mounted};

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    vm_rss: u64,
    rss_shmem: u64,
    anon_file: u64,
    memfd: u64,
}

impl Sample {
    /// Resident memory with each memfd page counted once, mapped or not.
    fn total(&self) -> u64 {
        self.anon_file + self.memfd
    }
}

fn status_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn sample(pid: u32) -> Option<Sample> {
    use std::os::unix::fs::MetadataExt;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let mut s = Sample {
        vm_rss: status_kib(&status, "VmRSS:"),
        rss_shmem: status_kib(&status, "RssShmem:"),
        anon_file: status_kib(&status, "RssAnon:") + status_kib(&status, "RssFile:"),
        memfd: 0,
    };
    // smaps_rollup's Rss must agree with VmRSS (both in kB, sampled apart).
    let rollup_rss = status_kib(&rollup, "Rss:");
    assert!(rollup_rss == 0 || rollup_rss.abs_diff(s.vm_rss) < 64 * MIB, "{rollup_rss} vs {}", s.vm_rss);
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else { continue };
        if target.to_string_lossy().starts_with("/memfd:") {
            if let Ok(m) = std::fs::metadata(fd.path()) {
                s.memfd += m.blocks() * 512;
            }
        }
    }
    Some(s)
}

fn run(m: &Mounted, script: &str, cwd: &Path) -> String {
    let out = bash(script, cwd);
    assert!(
        out.status.success(),
        "{script}: {}{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.log_text()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sequential_write_then_read_stays_under_memory_limit() {
    let gib: u64 = std::env::var("OVFS_MEMORY_BOUND_GIB").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let limit = 128 * MIB;
    let root = tempfile::tempdir_in("/var/tmp").unwrap();
    let config = format!(
        "[cache_settings]\nmemory_limit = \"128MiB\"\n[storage_settings]\ntype = \"fs\"\nroot = \"{}\"\n",
        root.path().display()
    );
    let m = Mounted::start(&config);
    let pid = m.child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(Mutex::new((Sample::default(), Sample::default())));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(s) = sample(pid) {
                    let mut p = peak.lock().unwrap();
                    if s.total() > p.0.total() {
                        p.0 = s;
                    }
                    if s.vm_rss > p.1.vm_rss {
                        p.1 = s;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let src = tempfile::tempdir_in("/var/tmp").unwrap();
    let sum_w = run(&m, &format!("head -c {gib}G /dev/urandom > src && md5sum src | cut -d' ' -f1"), src.path());
    let before = sample(pid).unwrap();
    let t0 = Instant::now();
    // Written through the mount, sequentially, in 1 MiB writes; FLUSH at close.
    run(&m, &format!("dd if={}/src of=big bs=1M status=none", src.path().display()), &m.mountpoint);
    let write_time = t0.elapsed();
    let after_write = sample(pid).unwrap();
    let backend_sum = run(&m, "md5sum big | cut -d' ' -f1", root.path());
    assert_eq!(sum_w, backend_sum, "back-end file differs");
    let t1 = Instant::now();
    // Read back through the daemon (O_DIRECT: no kernel page cache).
    let sum_r = run(&m, "dd if=big bs=1M iflag=direct status=none | md5sum | cut -d' ' -f1", &m.mountpoint);
    let read_time = t1.elapsed();
    assert_eq!(sum_w, sum_r, "read back differs");
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let (peak_total, peak_rss) = *peak.lock().unwrap();
    let mb = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "memory bound, {gib} GiB: write {:.1} s, read {:.1} s; at start {:.0} MiB, after the write {:.0} MiB; \
         peak anon+file+memfd {:.0} MiB (VmRSS {:.0}, RssShmem {:.0}, memfd {:.0}); peak VmRSS {:.0} MiB; limit {:.0} MiB",
        write_time.as_secs_f64(),
        read_time.as_secs_f64(),
        mb(before.total()),
        mb(after_write.total()),
        mb(peak_total.total()),
        mb(peak_total.vm_rss),
        mb(peak_total.rss_shmem),
        mb(peak_total.memfd),
        mb(peak_rss.vm_rss),
        mb(limit),
    );
    assert!(peak_total.total() < limit + 64 * MIB, "daemon memory peaked at {peak_total:?}");
    assert!(peak_rss.vm_rss < limit + 64 * MIB, "VmRSS peaked at {peak_rss:?}");
    // The read went through the cache pool: its memfd memory was used.
    assert!(peak_total.memfd > 16 * MIB, "cache not used: {peak_total:?}");
}
