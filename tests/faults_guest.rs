//! Back-end faults under a real guest: a Linux guest (QEMU TCG) works on ovfs
//! over S3 (a SeaweedFS instance of its own) while the daemon's fault layer
//! fails 10% of the OpenDAL calls below the retry layer
//! (`inject_error_rate = 0.1`, `retry_max_times = 2`, so a call surfaces as
//! EIO only when all three attempts fail), and then while the S3 server is
//! stopped for a few seconds and started again (`S3Server::pause` /
//! `resume`, same port and data).
//!
//! The guest (`tests/guest/scripts/faults.sh`) writes seeded pseudo-random
//! files (made on the host, shipped in the initramfs under `/data`) with
//! write + fsync + close, drops its caches, stats and reads them back
//! (`cmp`), lists, renames and deletes, and reports every operation as OK,
//! EIO or another error. Checked:
//! - no error other than EIO, and no read, stat or listing that succeeded
//!   with wrong bytes (`WRONG` lines);
//! - in the bucket (read with curl, no ovfs code): every file whose fsync
//!   returned holds exactly its bytes (under its new name after a rename),
//!   deleted files are gone, a write or rename or delete that got EIO left
//!   either the old state or the complete new one, never a torn object, and
//!   no other key exists;
//! - the outage: the guest got EIO while S3 was down, the daemon kept its pid
//!   and kept serving, and once S3 was back the guest's writes succeeded
//!   again (`RECOVERED`).
//!
//! The EIO counts per operation are printed (`OVFS_FAULT_ROUNDS`, default 2
//! in CI; the long form is e.g. 10). Needs root, QEMU, the guest kernel and
//! SeaweedFS (tests/tools/install-deps.sh).

#[path = "common/guest.rs"]
mod guest;
#[path = "common/s3.rs"]
mod s3;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::time::{Duration, Instant};

use guest::{read_lossy, require_guest_deps, serial, tail, BootOpts, Daemon, Work};
use s3::{pseudo_random, S3Server};

/// The files the guest writes: name (sorted order matters: the outage phase
/// uses the second) and size.
const FILES: [(&str, usize); 6] =
    [("a1k", 1024), ("b64k", 64 << 10), ("c300k", 300 << 10), ("d1m", 1 << 20), ("e3m", 3 << 20), ("f6m", 6 << 20)];
const PREFIX: &str = "faults";
const OUTAGE: Duration = Duration::from_secs(5);

/// What the bucket may hold under one name after the run.
#[derive(Clone, Debug)]
enum Expect {
    /// Exactly these bytes (fsync returned).
    Whole,
    /// Absent or exactly these bytes (an EIO on rename or delete); `empty`:
    /// also the empty object a create leaves (an EIO on write).
    Maybe(bool),
    Absent,
}

#[derive(Default, Debug)]
struct Counts {
    ok: u64,
    eio: u64,
}

fn wrong_bytes(got: &[u8], want: &[u8]) -> usize {
    got.iter().zip(want).filter(|(a, b)| a != b).count() + got.len().abs_diff(want.len())
}

fn proc_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| s.lines().any(|l| l.starts_with("State:") && !l.contains("zombie")))
        .unwrap_or(false)
}

#[test]
fn guest_workload_survives_faults_and_an_s3_outage() {
    require_guest_deps();
    let _g = serial();
    let rounds: usize = std::env::var("OVFS_FAULT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    // Every injected fault is one debug line of the fault layer (counted below).
    // Set before the daemon starts; this is the only test of this binary.
    std::env::set_var("RUST_LOG", "ovfs=info,ovfs::backend::faults=debug,opendal=error,warn");
    let server = S3Server::start();
    let client = server.client();
    let work = Work::new("faults_guest", "faults");

    // Seeded pseudo-random files, shipped in the initramfs.
    let data_dir = work.p("data");
    fs::create_dir_all(&data_dir).expect("mkdir data");
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut extra: Vec<OsString> = Vec::new();
    for (i, (name, size)) in FILES.iter().enumerate() {
        let bytes = pseudo_random(0xfa17 + i as u64, *size);
        let p = data_dir.join(name);
        fs::write(&p, &bytes).expect("write data file");
        extra.push("-f".into());
        extra.push(format!("{}:/data/{name}", p.display()).into());
        data.insert(name.to_string(), bytes);
    }
    let initrd = work.initramfs("faults", "faults.sh", &extra);

    let config = server.ovfs_config(&format!("/{PREFIX}"), "")
        + "\n[backend_settings]\ninject_error_rate = 0.1\nretry_max_times = 2\nretry_min_delay = \"10ms\"\n\
           retry_max_delay = \"100ms\"\npart_size = \"5MiB\"\n";
    let sock = work.sock("fs.sock");
    let daemon = Daemon::ovfs_config(&work, "ovfs", &sock, &config, &[]);
    let pid = daemon.pid().expect("daemon pid");
    let log_path = work.p("faults.log");

    // The outage: once the guest is in phase 2 and has written a file, stop
    // S3, wait, start it again, then tell the guest (a marker object).
    let outage = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let t0 = Instant::now();
            let deadline = Duration::from_secs(1800);
            let wait_for = |pat: &str| loop {
                if read_lossy(&log_path).lines().any(|l| l.starts_with(pat)) {
                    return true;
                }
                if t0.elapsed() > deadline || !proc_alive(pid) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if !wait_for("SYNCED o1 ") {
                return Err("the guest never reached the outage phase".to_string());
            }
            let t = Instant::now();
            server.pause();
            std::thread::sleep(OUTAGE);
            let alive_during = proc_alive(pid);
            server.resume();
            let down = t.elapsed();
            client.put(&format!("{PREFIX}/outage-over"), b"", &[]);
            eprintln!(
                "[faults_guest] S3 down for {:.1}s (paused {:?}, daemon alive: {alive_during})",
                down.as_secs_f64(),
                OUTAGE
            );
            if !wait_for("FAULTS-DONE") {
                return Err("the guest did not finish after the outage".to_string());
            }
            Ok((alive_during, proc_alive(pid), down))
        });
        let opts = BootOpts { timeout_s: 1800, ..BootOpts::default() };
        let boot =
            work.boot_with("faults", &initrd, &sock, &format!("ovfs.rounds={rounds} ovfs.recovery=3"), &daemon, &opts);
        (boot, watcher.join().expect("watcher thread"))
    });
    let (boot, watched) = outage;
    let context = || format!("{}\nconsole tail:\n{}", boot.context(), tail(&boot.log, 40));
    let (alive_during, alive_after, _down) = watched.unwrap_or_else(|e| panic!("{e}\n{}", context()));
    assert!(boot.status.success(), "guest failed: {}", context());
    assert_eq!(daemon.pid(), Some(pid), "same daemon process");
    assert!(alive_during && alive_after, "the daemon (pid {pid}) must stay up through the outage");

    // The guest's report.
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut outage_counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    let mut expect: BTreeMap<String, (Expect, String)> = BTreeMap::new();
    let mut phase2 = false;
    let mut recovered = None;
    for line in boot.lines().map(str::trim) {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["OUTAGE-READY"] => phase2 = true,
            ["OP", op, res, rest @ ..] => {
                let c = if phase2 { &mut outage_counts } else { &mut counts };
                let c = c.entry(op.to_string()).or_default();
                match *res {
                    "OK" => c.ok += 1,
                    "EIO" => c.eio += 1,
                    _ => problems.push(format!("guest: {op} {res} {}", rest.join(" "))),
                }
            }
            ["SYNCED", n, src] => {
                expect.insert(n.to_string(), (Expect::Whole, src.to_string()));
            }
            ["WRITE-EIO", n, src] => {
                expect.insert(n.to_string(), (Expect::Maybe(true), src.to_string()));
            }
            ["RENAMED", a, b] => {
                let e = expect.remove(*a).expect("RENAMED a written file");
                expect.insert(a.to_string(), (Expect::Absent, e.1.clone()));
                expect.insert(b.to_string(), e);
            }
            ["RENAME-EIO", a, b] => {
                let src = expect.get(*a).expect("RENAME-EIO of a written file").1.clone();
                expect.insert(a.to_string(), (Expect::Maybe(false), src.clone()));
                expect.insert(b.to_string(), (Expect::Maybe(false), src));
            }
            ["DELETED", n] => {
                let src = expect.get(*n).expect("DELETED a written file").1.clone();
                expect.insert(n.to_string(), (Expect::Absent, src));
            }
            ["DELETE-EIO", n] => {
                let src = expect.get(*n).expect("DELETE-EIO of a written file").1.clone();
                expect.insert(n.to_string(), (Expect::Maybe(false), src));
            }
            ["RECOVERED", ok, "of", tries] => recovered = Some((ok.parse::<u32>().unwrap_or(0), tries.to_string())),
            _ => {}
        }
    }
    assert!(boot.lines().any(|l| l.trim() == "FAULTS-DONE"), "the workload did not complete\n{}", context());

    // The bucket against the report.
    let mut wrong = 0usize;
    let mut checked = 0usize;
    for (name, (e, src)) in &expect {
        let key = format!("{PREFIX}/{name}");
        let got = client.get(&key);
        let want = &data[src];
        let ok = match (e, &got) {
            (Expect::Whole, Some(b)) => {
                let n = wrong_bytes(b, want);
                wrong += n;
                n == 0
            }
            (Expect::Whole, None) => false,
            (Expect::Maybe(_), None) | (Expect::Absent, None) => true,
            (Expect::Maybe(empty), Some(b)) => b == want || (*empty && b.is_empty()),
            (Expect::Absent, Some(_)) => false,
        };
        checked += 1;
        if !ok {
            problems.push(format!(
                "{key}: expected {e:?}, found {}",
                got.map_or("<absent>".to_string(), |b| format!("{} bytes", b.len()))
            ));
        }
    }
    for (key, _) in client.list(&format!("{PREFIX}/")) {
        let name = key.strip_prefix(&format!("{PREFIX}/")).unwrap_or(&key);
        if name != "outage-over" && !expect.contains_key(name) {
            problems.push(format!("{key}: an object the guest never wrote"));
        }
    }
    let show = |c: &BTreeMap<String, Counts>| {
        c.iter().map(|(op, c)| format!("{op} {} ok / {} EIO", c.ok, c.eio)).collect::<Vec<_>>().join(", ")
    };
    eprintln!("[faults_guest] 10% faults, {rounds} round(s): {}", show(&counts));
    eprintln!("[faults_guest] S3 outage: {}", show(&outage_counts));
    eprintln!(
        "[faults_guest] {checked} names checked in the bucket, {wrong} wrong bytes, recovery {recovered:?}, daemon pid {pid} up"
    );
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), context());
    assert_eq!(wrong, 0);
    let outage_eio: u64 = outage_counts.values().map(|c| c.eio).sum();
    assert!(outage_eio > 0, "the guest should have seen EIO while S3 was down: {}", show(&outage_counts));
    let (ok, tries) = recovered.unwrap_or_else(|| panic!("no RECOVERED line\n{}", context()));
    assert_eq!(ok, 3, "the workload must recover after S3 is back ({ok} of {tries} writes succeeded)");
    let written = counts.get("write").map_or(0, |c| c.ok);
    assert!(written >= FILES.len() as u64 * rounds as u64 / 2, "most writes succeed under 10% retried faults");
    let injected = read_lossy(&daemon.log)
        .lines()
        .filter(|l| l.contains("ovfs::backend::faults") && l.contains("injected fault"))
        .count();
    eprintln!("[faults_guest] faults injected below the retry layer: {injected}");
    assert!(injected > 0, "the fault layer injected nothing");
}
