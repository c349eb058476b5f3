//! Several mounts with isolated failures (issue 8, acceptance 1): a real
//! Linux guest (QEMU TCG) mounts one ovfs daemon serving four `[[mounts]]`
//! under a synthetic root: `/s3` on SeaweedFS, `/fs` on a host directory,
//! `/mem` in memory, and `/hang`, an S3 endpoint that accepts connections
//! and never answers (8 guest reads stall there until the mount's timeout
//! while `/fs` and `/mem` are worked on; the reads end with EIO). While the guest works, this test stops SeaweedFS
//! (`S3Server::pause`: connections refused, same port and data kept), then
//! starts it again; the guest script `tests/guest/scripts/mounts.sh` checks
//! that reads under `/s3` fail with EIO within the mount's configured
//! timeout, that `/fs` and `/mem` are read, written and listed in the same
//! outage window, and that `/s3` serves again afterwards with nothing
//! restarted. Guest and host coordinate through files in the fs mount.
//! Timings (guest /proc/uptime) are printed, not judged, except the EIO
//! bound. One boot; its own SeaweedFS instance (it is stopped).
//! Needs what tests/tools/install-deps.sh installs; runs as root.

#[path = "common/guest.rs"]
mod guest;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest::{serial, BootOpts, Daemon, Work};
use s3::{S3Server, ACCESS_KEY, BUCKET, REGION, SECRET_KEY};

/// The S3 mount's back-end timeout (whole operation, retries included).
const S3_TIMEOUT_S: u64 = 4;
/// The hung mount's timeout: longer, so that the fs and memory work surely
/// runs while its reads are stalled (and each mount has its own policy).
const HANG_TIMEOUT_S: u64 = 8;

const PASSES: &[&str] = &[
    "root-listing",
    "s3-before",
    "s3-listing",
    "fs-write",
    "mem-write",
    "root-readonly",
    "fs-mem-before",
    "fs-mem-hang",
    "hang-overlap",
    "hang-eio-in-time",
    "s3-eio",
    "s3-eio-in-time",
    "s3-ls-eio",
    "fs-mem-outage",
    "fs-read-outage",
    "mem-read-outage",
    "root-listing-outage",
    "s3-still-down",
    "s3-back-read",
    "s3-back-ls",
    "s3-back-write",
    "s3-back-readback",
];

fn config(srv: &S3Server, fs_dir: &Path, hang_port: u16) -> String {
    format!(
        r#"[cache_settings]
attr_timeout = "1s"
entry_timeout = "1s"

[[mounts]]
path = "/s3"
[mounts.storage_settings]
type = "s3"
bucket = "{BUCKET}"
region = "{REGION}"
endpoint = "{endpoint}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
root = "/mounts"
[mounts.backend_settings]
timeout = "{S3_TIMEOUT_S}s"
io_timeout = "2s"
retry_max_times = 2
retry_min_delay = "100ms"
retry_max_delay = "500ms"

[[mounts]]
path = "/fs"
[mounts.storage_settings]
type = "fs"
root = "{fs}"
[mounts.cache_settings]
entry_timeout = "0s"
attr_timeout = "0s"

[[mounts]]
path = "/mem"
[mounts.storage_settings]
type = "memory"

[[mounts]]
path = "/hang"
[mounts.storage_settings]
type = "s3"
bucket = "{BUCKET}"
region = "{REGION}"
endpoint = "http://127.0.0.1:{hang_port}"
access_key_id = "{ACCESS_KEY}"
secret_access_key = "{SECRET_KEY}"
[mounts.backend_settings]
timeout = "{HANG_TIMEOUT_S}s"
io_timeout = "2s"
retry_max_times = 2
retry_min_delay = "100ms"
retry_max_delay = "500ms"
"#,
        endpoint = srv.endpoint(),
        fs = fs_dir.display()
    )
}

/// Wait for `p` to exist (the guest made it); false when `stop` is set or
/// after `limit`.
fn wait_file(p: &Path, stop: &AtomicBool, limit: Duration) -> bool {
    let t = Instant::now();
    while !p.exists() {
        if stop.load(Ordering::Relaxed) || t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// A TCP port that accepts connections and never answers (a hung server).
fn blackhole() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

fn time_of(lines: &[String], name: &str) -> Option<f64> {
    let key = format!("TIME {name}=");
    lines.iter().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse().ok())
}

#[test]
fn guest_mounts_isolated_outage() {
    let _g = serial();
    guest::require_guest_deps();
    let w = Work::new("guest_mounts_isolated_outage", "guest-mounts");
    let srv = Arc::new(S3Server::start());
    let c = srv.client();
    c.put("mounts/before.txt", b"hello from s3\n", &[]);
    c.put("mounts/unread.txt", b"not read before the outage\n", &[]);
    c.put("mounts/dir/x", b"x\n", &[]);
    let fs_dir = w.share("fsmount");
    let hang_port = blackhole();
    let d = Daemon::ovfs_config(&w, "ovfs", &w.sock("fs.sock"), &config(&srv, &fs_dir, hang_port), &[]);
    let initrd = w.initramfs("mounts", "mounts.sh", &[]);

    // The host side of the outage, driven by files the guest makes in /fs.
    let stop = Arc::new(AtomicBool::new(false));
    let host = {
        let (srv, stop, dir) = (srv.clone(), stop.clone(), fs_dir.clone());
        std::thread::spawn(move || -> Result<(Duration, Duration), String> {
            let long = Duration::from_secs(900);
            if !wait_file(&dir.join("ready-outage"), &stop, long) {
                return Err("the guest never asked for the outage".into());
            }
            let t = Instant::now();
            srv.pause();
            let stopping = t.elapsed();
            std::fs::write(dir.join("outage-started"), b"").map_err(|e| e.to_string())?;
            let t = Instant::now();
            if !wait_file(&dir.join("outage-done"), &stop, long) {
                srv.resume();
                return Err("the guest never finished its outage checks".into());
            }
            let outage = t.elapsed();
            srv.resume();
            std::fs::write(dir.join("resumed"), b"").map_err(|e| e.to_string())?;
            Ok((stopping, outage))
        })
    };
    let o = BootOpts { timeout_s: 900, ..BootOpts::default() };
    let boot = w.boot_with(
        "boot",
        &initrd,
        &w.sock("fs.sock"),
        &format!("ovfs.s3timeout={S3_TIMEOUT_S} ovfs.hangtimeout={HANG_TIMEOUT_S}"),
        &d,
        &o,
    );
    stop.store(true, Ordering::Relaxed);
    let host = host.join().expect("host thread");
    let passes: Vec<String> = PASSES.iter().map(|p| format!("PASS {p}")).collect();
    boot.assert_passed(&passes);
    let (stopping, outage) = host.unwrap_or_else(|e| panic!("host side: {e}\n{}", boot.context()));

    // What the guest did, seen from outside.
    assert_eq!(c.get("mounts/after.txt").as_deref(), Some(&b"written after the outage\n"[..]), "{}", boot.context());
    let from_guest = std::fs::read_to_string(fs_dir.join("from-guest")).unwrap_or_default();
    assert_eq!(from_guest, "written in fs\n");
    let daemon_log = guest::read_lossy(&d.log);
    assert!(!daemon_log.contains(SECRET_KEY), "secret in the daemon log");

    let lines: Vec<String> = boot.lines().map(str::to_string).collect();
    let t = |n| time_of(&lines, n).map_or("?".to_string(), |v| format!("{v:.2} s"));
    eprintln!(
        "[guest_mounts_isolated_outage] S3 stop took {:.1} s; outage window {:.1} s; EIO under /s3 after {} \
         (configured timeout {S3_TIMEOUT_S} s); fs+mem work before the outage {}, during it {}, during 8 stalled reads on /hang {} \
         (they failed with EIO after at most {}, timeout {HANG_TIMEOUT_S} s); /s3 back after {}",
        stopping.as_secs_f64(),
        outage.as_secs_f64(),
        t("s3-eio"),
        t("fs-mem-before"),
        t("fs-mem-outage"),
        t("fs-mem-hang"),
        t("hang-eio-max"),
        t("s3-back"),
    );
    drop(d);
}
