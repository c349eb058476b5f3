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
//! HTTP-level faults: the same daemon serves a second mount, `/px` (key prefix
//! `faults-px/`), whose S3 traffic goes through a fault-injecting proxy
//! (`tests/common/faultproxy.rs`): 10% of the HTTP requests get a connection
//! reset, a 503 `SlowDown` answer or an answer held 4 s, a third each, with no
//! fault layer in the daemon. The mount's `io_timeout` (2 s) must turn a slow
//! answer into a retry, not a hang. The guest runs `OVFS_PROXY_ROUNDS`
//! (default 1) lean rounds there on the files up to 1 MiB, before the outage;
//! the same checks apply (no wrong byte in the guest, the bucket read straight
//! from SeaweedFS, EIO only), and the proxy's counts are printed.
//! A first test checks the proxy itself with curl: each kind of fault at rate
//! 1 does what it says.
//!
//! The EIO counts per operation are printed (`OVFS_FAULT_ROUNDS`, default 2
//! in CI; the long form is e.g. 10). Needs root, QEMU, the guest kernel and
//! SeaweedFS (tests/tools/install-deps.sh).

#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/guest.rs"]
mod guest;
#[path = "common/s3.rs"]
mod s3;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::time::{Duration, Instant};

use faultproxy::{FaultCounts, FaultProxy, FaultSpec};
use guest::{read_lossy, require_guest_deps, serial, tail, BootOpts, Daemon, Work};
use s3::{pseudo_random, S3Server};

/// The files the guest writes: name (sorted order matters: the outage phase
/// uses the second) and size.
const FILES: [(&str, usize); 6] =
    [("a1k", 1024), ("b64k", 64 << 10), ("c300k", 300 << 10), ("d1m", 1 << 20), ("e3m", 3 << 20), ("f6m", 6 << 20)];
const PREFIX: &str = "faults";
const OUTAGE: Duration = Duration::from_secs(5);
/// The mount behind the fault-injecting proxy, and its key prefix.
const PX_MOUNT: &str = "px";
const PX_PREFIX: &str = "faults-px";
/// How long the proxy holds a slowed answer; the mount's `io_timeout` is half.
const SLOW_BY: Duration = Duration::from_secs(4);

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

/// The `/px` mount: the same bucket under [`PX_PREFIX`] through the proxy at
/// `endpoint`; no fault layer of its own (the proxy's faults only), the same
/// retry policy as the root, and a per-request timeout under [`SLOW_BY`].
fn px_mount_toml(endpoint: &str) -> String {
    format!(
        "\n[[mounts]]\npath = \"/{PX_MOUNT}\"\n[mounts.storage_settings]\ntype = \"s3\"\nbucket = \"{}\"\n\
         region = \"{}\"\nendpoint = \"{endpoint}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\
         root = \"/{PX_PREFIX}\"\n[mounts.backend_settings]\ninject_error_rate = 0.0\nio_timeout = \"{}ms\"\n\
         timeout = \"30s\"\n",
        s3::BUCKET,
        s3::REGION,
        s3::ACCESS_KEY,
        s3::SECRET_KEY,
        SLOW_BY.as_millis() / 2
    )
}

/// Check the keys under `prefix/` against the guest's report: exact bytes
/// where fsync returned, old or new state where an operation got EIO, nothing
/// the guest did not write (but `extra` names). Returns (names checked, wrong bytes).
fn check_bucket(
    client: &s3::S3Client,
    prefix: &str,
    extra: &[&str],
    expect: &BTreeMap<String, (Expect, String)>,
    data: &BTreeMap<String, Vec<u8>>,
    problems: &mut Vec<String>,
) -> (usize, usize) {
    let mut wrong = 0usize;
    let mut checked = 0usize;
    for (name, (e, src)) in expect {
        let key = format!("{prefix}/{name}");
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
    for (key, _) in client.list(&format!("{prefix}/")) {
        let name = key.strip_prefix(&format!("{prefix}/")).unwrap_or(&key);
        if !extra.contains(&name) && !expect.contains_key(name) {
            problems.push(format!("{key}: an object the guest never wrote"));
        }
    }
    (checked, wrong)
}

#[test]
fn guest_workload_survives_faults_and_an_s3_outage() {
    require_guest_deps();
    let _g = serial();
    let rounds: usize = std::env::var("OVFS_FAULT_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let px_rounds: usize = std::env::var("OVFS_PROXY_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    // Every injected fault is one debug line of the fault layer (counted below).
    // Set before the daemon starts; this is the only test of this binary.
    std::env::set_var("RUST_LOG", "ovfs=info,ovfs::backend::faults=debug,opendal=error,warn");
    let server = S3Server::start();
    let proxy = FaultProxy::start(server.port, FaultSpec::even(0.1, SLOW_BY));
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
           retry_max_delay = \"100ms\"\npart_size = \"5MiB\"\n"
        + &px_mount_toml(&proxy.endpoint());
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
        let boot = work.boot_with(
            "faults",
            &initrd,
            &sock,
            &format!("ovfs.rounds={rounds} ovfs.pxrounds={px_rounds} ovfs.recovery=3"),
            &daemon,
            &opts,
        );
        (boot, watcher.join().expect("watcher thread"))
    });
    let (boot, watched) = outage;
    let context = || format!("{}\nconsole tail:\n{}", boot.context(), tail(&boot.log, 40));
    let (alive_during, alive_after, _down) = watched.unwrap_or_else(|e| panic!("{e}\n{}", context()));
    assert!(boot.status.success(), "guest failed: {}", context());
    assert_eq!(daemon.pid(), Some(pid), "same daemon process");
    assert!(alive_during && alive_after, "the daemon (pid {pid}) must stay up through the outage");

    // The guest's report: OP lines per phase, expectations per key prefix.
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut px_counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut outage_counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    let mut expect: BTreeMap<String, (Expect, String)> = BTreeMap::new();
    let mut px_expect: BTreeMap<String, (Expect, String)> = BTreeMap::new();
    let (mut phase2, mut in_px) = (false, false);
    let mut recovered = None;
    for line in boot.lines().map(str::trim) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let expect = if in_px { &mut px_expect } else { &mut expect };
        match w.as_slice() {
            ["OUTAGE-READY"] => phase2 = true,
            ["PROXY-START"] => in_px = true,
            ["PROXY-DONE"] => in_px = false,
            ["OP", op, res, rest @ ..] => {
                let c = if phase2 {
                    &mut outage_counts
                } else if in_px {
                    &mut px_counts
                } else {
                    &mut counts
                };
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
    if px_rounds > 0 {
        assert!(boot.lines().any(|l| l.trim() == "PROXY-DONE"), "the proxied round did not complete\n{}", context());
    }

    // The bucket against the report, read straight from SeaweedFS.
    let (checked, wrong) = check_bucket(&client, PREFIX, &["outage-over"], &expect, &data, &mut problems);
    let (px_checked, px_wrong) = check_bucket(&client, PX_PREFIX, &[], &px_expect, &data, &mut problems);
    let px = proxy.counts();
    let show = |c: &BTreeMap<String, Counts>| {
        c.iter().map(|(op, c)| format!("{op} {} ok / {} EIO", c.ok, c.eio)).collect::<Vec<_>>().join(", ")
    };
    eprintln!("[faults_guest] 10% faults, {rounds} round(s): {}", show(&counts));
    eprintln!(
        "[faults_guest] HTTP faults through the proxy, {px_rounds} round(s): {}; proxy: {} requests, {} forwarded, \
         {} resets, {} slow ({SLOW_BY:?}), {} answered 503, {} upstream errors",
        show(&px_counts),
        px.requests,
        px.forwarded,
        px.resets,
        px.slowed,
        px.unavailable,
        px.upstream_errors
    );
    eprintln!("[faults_guest] S3 outage: {}", show(&outage_counts));
    eprintln!(
        "[faults_guest] {checked} + {px_checked} names checked in the bucket, {} wrong bytes, recovery {recovered:?}, \
         daemon pid {pid} up",
        wrong + px_wrong
    );
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), context());
    assert_eq!(wrong + px_wrong, 0);
    if px_rounds > 0 {
        let px_written = px_counts.get("write").map_or(0, |c| c.ok);
        assert!(px_written > 0, "writes through the proxy succeed: {}", show(&px_counts));
        assert!(px.resets + px.slowed + px.unavailable > 0, "the proxy injected no fault: {px:?}");
    }
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

/// A minimal HTTP/1.1 server for the proxy's own test: answers every request
/// (keep-alive) with `got N` (N: the body's length). Returns its port.
fn tiny_http_server() -> u16 {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut w = c.try_clone().expect("clone");
                let mut r = BufReader::new(c);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    let text = format!("got {len}");
                    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}", text.len());
                    if w.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// curl through the proxy: (exit code, HTTP status, body, seconds).
fn curl(url: &str, args: &[&str]) -> (i32, String, String, f64) {
    let t = Instant::now();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-H", "Expect:", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (out.status.code().unwrap_or(-1), code.to_string(), body.to_string(), t.elapsed().as_secs_f64())
}

#[test]
fn fault_proxy_does_what_it_says() {
    let upstream = tiny_http_server();
    let proxy = FaultProxy::start(upstream, FaultSpec::none());
    let url = format!("{}/x", proxy.endpoint());
    let only = |reset: f64, slow: f64, unavailable: f64| FaultSpec {
        reset,
        slow,
        unavailable,
        slow_by: Duration::from_millis(1500),
        seed: 7,
    };

    // No faults: bodies are framed and forwarded, a connection carries several requests.
    let body = tempfile::NamedTempFile::new().expect("temp");
    fs::write(body.path(), pseudo_random(1, 100_000)).expect("write body");
    let (rc, code, text, _) = curl(&url, &["-T", &body.path().display().to_string()]);
    assert_eq!((rc, code.as_str(), text.as_str()), (0, "200", "got 100000"));
    let out = std::process::Command::new("curl").args(["-sS", &url, &url]).output().expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got 0got 0", "two requests on one connection");
    let c = proxy.counts();
    assert_eq!((c.requests, c.forwarded), (3, 3), "{c:?}");

    // Reset: curl sees the connection reset (exit 56: receive failure), nothing forwarded.
    proxy.set_spec(only(1.0, 0.0, 0.0));
    let (rc, code, _, _) = curl(&url, &[]);
    assert_eq!((rc, code.as_str()), (56, "000"), "a reset");
    // 503, with the body consumed first.
    proxy.set_spec(only(0.0, 0.0, 1.0));
    let (rc, code, text, _) = curl(&url, &["-T", &body.path().display().to_string()]);
    assert_eq!((rc, code.as_str()), (0, "503"));
    assert!(text.contains("SlowDown"), "{text}");
    // Slow: the answer comes, 1.5 s late.
    proxy.set_spec(only(0.0, 1.0, 0.0));
    let (rc, code, text, secs) = curl(&url, &[]);
    assert_eq!((rc, code.as_str(), text.as_str()), (0, "200", "got 0"));
    assert!(secs >= 1.4, "answer held {secs:.2} s");
    // A client that gives up first (curl --max-time 0.5) gets no answer.
    let out = std::process::Command::new("curl").args(["-sS", "--max-time", "0.5", &url]).output().expect("curl");
    assert_eq!(out.status.code(), Some(28), "curl timed out");

    let c = proxy.counts();
    assert_eq!(
        c,
        FaultCounts { requests: 7, forwarded: 5, resets: 1, slowed: 2, unavailable: 1, upstream_errors: 0 },
        "counts"
    );
    // The mix: about `rate` of many requests, each kind present.
    proxy.set_spec(FaultSpec::even(0.3, Duration::ZERO));
    for _ in 0..60 {
        let _ = curl(&url, &["--max-time", "5"]);
    }
    let d = proxy.counts();
    let faults = (d.resets - c.resets) + (d.slowed - c.slowed) + (d.unavailable - c.unavailable);
    assert_eq!(d.requests - c.requests, 60);
    assert!((6..=36).contains(&faults), "about 18 of 60 faulted: {faults} ({d:?})");
    assert!(d.resets > c.resets && d.slowed > c.slowed && d.unavailable > c.unavailable, "{d:?}");
}
