//! Guest tests: real Linux guests (QEMU TCG, the busybox initramfs of
//! `tests/guest/build-initramfs.sh`) mount `ovfs` with `mount -t virtiofs`
//! over vhost-user and run the guest scripts of `tests/guest/scripts/`.
//!
//! Every test fails, never skips, when something it needs is missing (QEMU,
//! the guest kernel, busybox-static, pjdfstest, virtiofsd 1.14, SeaweedFS):
//! run `tests/tools/install-deps.sh` first (CI does). A test passes only if
//! `run-guest.sh` saw the guest's `OVFS-GUEST-END rc=0` marker, the console
//! holds no `FAIL ` line and every `PASS` line the script prints on success
//! is there.
//!
//! Guests under TCG are slow and the machine may have few cores, so the tests
//! take turns (a static mutex) although cargo runs them on parallel threads.
//! Work files go to a temporary directory under `CARGO_TARGET_TMPDIR/guest`
//! (kept, and named on stderr, when a test fails); the initramfs base image
//! is cached there between runs. Sockets live in a short `/tmp` directory.
//!
//! `OVFS_GUEST_KEEP=1` keeps the work directories of passing tests too.
//! `OVFS_GUEST_STRESS_SECS=N` shortens `guest_eight_processes` while working
//! on it (the acceptance run uses the script's default, 60 s).

#[path = "common/mod.rs"]
mod common;
#[path = "common/guest.rs"]
mod guest;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest::*;

/// What basic.sh prints when every check passes.
fn basic_passes() -> Vec<String> {
    let names = [
        "ls",
        "mkdir-top",
        "mkdir-p",
        "mkdir-exists-fails",
        "write-f0",
        "write-f1",
        "write-f4k",
        "write-f1m",
        "write-big",
        "read-f0",
        "read-f1",
        "read-f4k",
        "read-f1m",
        "read-big",
        "size-f0",
        "size-f1m",
        "size-big",
        "readdir",
        "rename",
        "rename-old-gone",
        "rename-content",
        "rename-replace",
        "rename-replace-content",
        "rename-replace-src-gone",
        "unlink",
        "unlink-gone",
        "unlink-missing-fails",
        "rmdir",
        "rmdir-gone",
        "rmdir-enotempty",
        "rmdir-enotempty-kept",
        "rm-r-gone",
        "truncate-up",
        "truncate-up-size",
        "truncate-up-head",
        "truncate-up-zeros",
        "truncate-down",
        "truncate-down-size",
        "truncate-down-content",
        "truncate-zero",
        "truncate-zero-size",
        "append-small",
        "append-big",
        "overwrite-mid",
        "overwrite-mid-content",
        "overwrite-mid-size",
        "chmod",
        "chmod-mode",
        "sync",
    ];
    let mut v: Vec<String> = names.iter().map(|n| format!("PASS {n}")).collect();
    v.push("basic: all checks passed".into());
    v
}

/// basic.sh's big file is 64 MiB by default; generating and hashing it takes ~15 s of a
/// basic boot under TCG. guest_fs_backend keeps the default (as with-virtiofsd.sh); the memory
/// and S3 tests use 16 MiB, still two multipart parts at ovfs's 8 MiB part size.
const SMALL_BIG_FILE: &str = "ovfs.big_mib=16";

/// The files basic.sh leaves (MANIFEST entries) and its SHA lines.
const BASIC_FILES: usize = 9;
const BASIC_SHA_LINES: usize = BASIC_FILES + 2; // + DIRS, MANIFEST

fn assert_basic(b: &Boot) {
    b.assert_passed(&basic_passes());
    assert_eq!(b.sha_lines().len(), BASIC_SHA_LINES, "[{}] basic.sh SHA lines:\n{}", b.test, b.context());
}

/// remount.sh passed, checked every file against MANIFEST and against boot
/// 1's own SHA lines, and hashed the same contents boot 1 did.
fn assert_remount(b: &Boot, boot1: &Boot) {
    b.assert_passed(&lines(&[
        "PASS remount-manifest",
        "PASS remount-dirs",
        "PASS remount-files",
        &format!("PASS remount-sha ({BASIC_FILES} files)"),
        &format!("PASS remount-boot1-sha ({BASIC_SHA_LINES} files)"),
        "remount: all checks passed",
    ]));
    assert_eq!(b.sha_lines(), boot1.sha_lines(), "[{}] sha256 of every file: boot 2 vs boot 1", b.test);
}

// ---------------------------------------------------------------- S3 server

/// A SeaweedFS instance of tests/tools/s3-local.sh; stopped on drop.
struct S3Server {
    home: PathBuf,
    port: u16,
    script: PathBuf,
    path: OsString,
}

impl S3Server {
    fn start(work: &Work) -> S3Server {
        let pkg = std::env::var_os("S3_PKG").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/s3-local/pkg"));
        assert!(
            pkg.join("bin/weed").exists(),
            "SeaweedFS not installed ({}/bin/weed missing): {INSTALL}",
            pkg.display()
        );
        let home = work.p("s3");
        let script = repo().join("tests/tools/s3-local.sh");
        let base = 18333 + (std::process::id() % 400) as u16 * 3;
        let port = (0..200u16)
            .map(|i| base + i * 7)
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port for the S3 server");
        let s = S3Server { home, port, script, path: search_path() };
        let t = Instant::now();
        let out = s.cmd("start").env("S3_FRESH", "1").output().expect("run s3-local.sh start");
        assert!(
            out.status.success(),
            "s3-local.sh start on port {port} failed ({}): {}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&read_lossy(&s.home.join("weed.log")), 20)
        );
        work.step(&format!("SeaweedFS up on 127.0.0.1:{port}"), t);
        s
    }

    fn cmd(&self, verb: &str) -> Command {
        let mut c = Command::new(&self.script);
        c.arg(verb)
            .env("S3_HOME", &self.home)
            .env("S3_PORT", self.port.to_string())
            .env("PATH", &self.path)
            .stdin(Stdio::null());
        c
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.cmd("stop").output();
    }
}

// ---------------------------------------------------------------- tests

/// ovfs --shared-dir --opendal-fs (the OpenDAL fs back-end): basic.sh, the SHA lines checked against the directory
/// on the host, then remount.sh with a fresh daemon.
#[test]
fn guest_fs_backend() {
    let _g = serial();
    require_guest_deps();
    let w = Work::new("guest_fs_backend", "guest");
    let share = w.share("share");
    let sock = w.sock("fs.sock");
    let basic = w.initramfs("basic", "basic.sh", &[]);

    let mut d = Daemon::ovfs_dir(&w, "basic", &sock, &share);
    let b1 = w.boot("basic", &basic, &sock, "", &d);
    assert_basic(&b1);
    d.expect_exit_after_disconnect();
    w.verify(&b1, &[share.clone().into()]);

    let remount = w.remount_initramfs(&b1);
    let mut d = Daemon::ovfs_dir(&w, "remount", &sock, &share);
    let b2 = w.boot("remount", &remount, &sock, "", &d);
    assert_remount(&b2, &b1);
    d.expect_exit_after_disconnect();
}

/// ovfs on the memory back-end with --keep-serving: one daemon, two guests.
/// The second proves the tree survives a remount: there is no host view, so
/// its sha256s are compared with those the first guest printed.
#[test]
fn guest_memory_backend() {
    let _g = serial();
    require_guest_deps();
    let w = Work::new("guest_memory_backend", "guest");
    let sock = w.sock("mem.sock");
    let basic = w.initramfs("basic", "basic.sh", &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut d = Daemon::ovfs_config(
        &w,
        "memory",
        &sock,
        "[storage_settings]\ntype = \"memory\"\n",
        &["--keep-serving", "--metrics-addr", &metrics_addr],
    );

    // Scrape the metrics endpoint all through the first guest's workload.
    let scraping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let scraper = {
        let (addr, on) = (metrics_addr.clone(), scraping.clone());
        std::thread::spawn(move || scrape_while(&addr, &on))
    };
    let b1 = w.boot("basic", &basic, &sock, SMALL_BIG_FILE, &d);
    scraping.store(false, std::sync::atomic::Ordering::Relaxed);
    let (scrapes, slowest, last) = scraper.join().expect("scraper");
    assert_basic(&b1);
    check_metrics(scrapes, slowest, &last);
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.running(), "ovfs --keep-serving exited after the first guest:\n{}", tail(&read_lossy(&d.log), 30));

    let remount = w.remount_initramfs(&b1);
    let b2 = w.boot("remount", &remount, &sock, "", &d);
    assert_remount(&b2, &b1);
    assert!(d.running(), "ovfs --keep-serving exited after the second guest:\n{}", tail(&read_lossy(&d.log), 30));
    d.stop();
}

/// GET /metrics every 100 ms while `on`: (successful scrapes, slowest
/// scrape, the last body).
fn scrape_while(addr: &str, on: &std::sync::atomic::AtomicBool) -> (usize, Duration, String) {
    use std::io::{Read, Write};
    let (mut n, mut slowest, mut last) = (0usize, Duration::ZERO, String::new());
    while on.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        if let Ok(mut c) = std::net::TcpStream::connect(addr) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let mut body = String::new();
            if c.write_all(b"GET /metrics HTTP/1.1\r\nHost: ovfs\r\n\r\n").is_ok()
                && c.read_to_string(&mut body).is_ok()
                && body.starts_with("HTTP/1.1 200")
            {
                n += 1;
                slowest = slowest.max(t.elapsed());
                last = body;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (n, slowest, last)
}

/// The scrapes taken during basic.sh show the opcodes it used, with latency
/// buckets, and back-end calls of the mount.
fn check_metrics(scrapes: usize, slowest: Duration, last: &str) {
    assert!(scrapes >= 20, "only {scrapes} metrics scrapes succeeded during the guest workload");
    assert!(slowest < Duration::from_secs(5), "a scrape took {slowest:?}");
    let value = |prefix: &str| -> f64 {
        last.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    for op in ["INIT", "LOOKUP", "GETATTR", "CREATE", "WRITE", "READ", "FLUSH", "RELEASE", "MKDIR", "UNLINK"] {
        assert!(value(&format!("ovfs_requests_total{{opcode=\"{op}\"}}")) > 0.0, "no {op} counted:\n{last}");
        let inf = value(&format!("ovfs_request_duration_seconds_bucket{{opcode=\"{op}\",le=\"+Inf\"}}"));
        let fast = value(&format!("ovfs_request_duration_seconds_bucket{{opcode=\"{op}\",le=\"0.01\"}}"));
        assert!(inf > 0.0 && fast <= inf, "{op} latency buckets: le=0.01 {fast}, +Inf {inf}");
    }
    assert!(value("ovfs_request_errors_total{errno=\"ENOENT\"}") > 0.0, "LOOKUPs of new names fail with ENOENT");
    assert!(value("ovfs_backend_calls_total{mount=\"root\",op=\"write\"}") > 0.0, "back-end writes:\n{last}");
    eprintln!("metrics: {scrapes} scrapes during the guest workload, slowest {slowest:?}");
}

/// ovfs on S3 (a local SeaweedFS): basic.sh, every SHA line checked by
/// reading the objects with curl (SigV4), then remount.sh with a fresh daemon.
#[test]
fn guest_s3_backend() {
    let _g = serial();
    require_guest_deps();
    require_exe("curl", "curl");
    let w = Work::new("guest_s3_backend", "guest");
    let s3 = S3Server::start(&w);
    let config = format!(
        "[storage_settings]\ntype = \"s3\"\nbucket = \"test\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\naccess_key_id = \"admin\"\nsecret_access_key = \"adminsecret\"\n",
        s3.endpoint()
    );
    let sock = w.sock("s3.sock");
    let basic = w.initramfs("basic", "basic.sh", &[]);

    let mut d = Daemon::ovfs_config(&w, "s3-basic", &sock, &config, &[]);
    let b1 = w.boot("basic", &basic, &sock, SMALL_BIG_FILE, &d);
    assert_basic(&b1);
    d.expect_exit_after_disconnect();
    let cat = format!("{} s3-cat {}/test", script("external.sh").display(), s3.endpoint());
    w.verify(&b1, &["--cat".into(), cat.into()]);

    let remount = w.remount_initramfs(&b1);
    let mut d = Daemon::ovfs_config(&w, "s3-remount", &sock, &config, &[]);
    let b2 = w.boot("remount", &remount, &sock, "", &d);
    assert_remount(&b2, &b1);
    d.expect_exit_after_disconnect();
    drop(s3);
}

/// stress.sh over the fs back-end: eight guest processes writing and reading
/// their own files for 60 s; no hang, every check passed, and the files left
/// in the directory are the ones (and the contents) the guest reported.
#[test]
fn guest_eight_processes() {
    let _g = serial();
    require_guest_deps();
    const PROCS: usize = 8;
    const FILES_PER_PROC: usize = 3;
    let w = Work::new("guest_eight_processes", "guest");
    let share = w.share("share");
    let sock = w.sock("fs.sock");
    let initrd = w.initramfs("stress", "stress.sh", &[]);
    let cmdline = match std::env::var("OVFS_GUEST_STRESS_SECS") {
        Ok(s) => format!("ovfs.stress_procs={PROCS} ovfs.stress_secs={s}"),
        Err(_) => format!("ovfs.stress_procs={PROCS}"),
    };
    let mut d = Daemon::ovfs_dir(&w, "stress", &sock, &share);
    let b = w.boot("stress", &initrd, &sock, &cmdline, &d);

    b.assert_passed(&[]);
    let mut total = 0;
    for i in 0..PROCS {
        let n = b.pass_count(&format!("stress-worker-{i} "), " iterations");
        assert!(
            matches!(n, Some(n) if n > 0),
            "[{}] no `PASS stress-worker-{i} N iterations`:\n{}",
            b.test,
            b.context()
        );
        total += n.unwrap_or(0);
    }
    assert_eq!(
        b.pass_count("stress ", " iterations"),
        Some(total),
        "[{}] `PASS stress <total> iterations`:\n{}",
        b.test,
        b.context()
    );
    let shas = b.sha_lines();
    let nfiles = PROCS * FILES_PER_PROC;
    assert!(
        b.lines().any(|l| l == format!("STRESS-FILES {nfiles}")),
        "[{}] STRESS-FILES line:\n{}",
        b.test,
        b.context()
    );
    assert_eq!(shas.len(), nfiles, "[{}] SHA lines", b.test);
    eprintln!("[{}] {total} iterations by {PROCS} processes", b.test);
    d.expect_exit_after_disconnect();

    // the host directory holds exactly the files the guest reported, with its contents
    w.verify(&b, &[share.clone().into()]);
    let mut on_host = BTreeSet::new();
    for i in 0..PROCS {
        let sub = share.join(format!("stress/w{i}"));
        for e in fs::read_dir(&sub).unwrap_or_else(|e| panic!("{}: {e}", sub.display())) {
            let e = e.expect("readdir");
            on_host.insert(format!("stress/w{i}/{}", e.file_name().to_string_lossy()));
        }
    }
    let reported: BTreeSet<String> = shas.keys().cloned().collect();
    assert_eq!(on_host, reported, "files in {}/stress vs the guest's SHA lines", share.display());
}

/// A new pjdfstest failure of only these is retried once, in a fresh guest
/// and directory, and must pass then; any other new failure fails at once.
use common::PJDFSTEST_RACY as RACY;

/// pjdfstest in the guest over ovfs (OpenDAL fs back-end), over ovfs's
/// passthrough of the shared dir, and over virtiofsd 1.14, same guest image.
/// The fs back-end may fail only the tests listed in
/// tests/pjdfstest/expected/guest-fs.txt; the passthrough and virtiofsd must
/// fail none.
#[test]
fn guest_pjdfstest_fs_vs_virtiofsd() {
    let _g = serial();
    require_guest_deps();
    let pjdfstest = require_exe("pjdfstest", "pjdfstest 0.2.2");
    let virtiofsd = require_exe("virtiofsd", "virtiofsd 1.14");
    let v = Command::new(&virtiofsd).arg("--version").output().expect("virtiofsd --version");
    let v = String::from_utf8_lossy(&v.stdout).into_owned();
    assert!(v.trim().starts_with("virtiofsd 1.14."), "want virtiofsd 1.14, found `{}`: {INSTALL}", v.trim());
    let sleep = require_exe("sleep", "coreutils sleep");
    let expected = repo().join("tests/pjdfstest/expected/guest-fs.txt");
    assert!(expected.exists(), "{} missing", expected.display());

    let w = Work::new("guest_pjdfstest_fs_vs_virtiofsd", "guest");
    let initrd = w.initramfs("pjdfstest", "pjdfstest.sh", &["-b".into(), pjdfstest.into(), "-b".into(), sleep.into()]);
    let sock = w.sock("fs.sock");

    // One pjdfstest boot on a fresh directory, summarized: (summary text, exit ok, counts
    // passed/failed/skipped, names of unexpected failures).
    let pjd = |name: &str, start: &dyn Fn(&str, &Path) -> Daemon, filter: &str, expected: Option<&Path>| {
        let share = w.share(&format!("{name}-share"));
        let mut d = start(name, &share);
        let cmdline = if filter.is_empty() { String::new() } else { format!("ovfs.pjdfs_filter={filter}") };
        let b = w.boot(name, &initrd, &sock, &cmdline, &d);
        b.assert_passed(&[]);
        assert!(
            b.lines().any(|l| l.starts_with("PJDFSTEST-RC ")),
            "[{}] no PJDFSTEST-RC line:\n{}",
            b.test,
            b.context()
        );
        d.expect_exit_after_disconnect();
        w.pjdfstest_summary(name, &b, expected)
    };
    // pjdfstest, then one retry of the known-racy cases only (see RACY); returns the summary
    // line and the counts, the retried tests counted as passed.
    let run = |name: &str, start: &dyn Fn(&str, &Path) -> Daemon, expected: Option<&Path>| -> (String, [u64; 3]) {
        let (text, ok, mut counts, unexpected) = pjd(name, start, "", expected);
        if !ok {
            let retry = !unexpected.is_empty() && unexpected.iter().all(|n| RACY.contains(&n.as_str()));
            assert!(
                retry,
                "[{}] {name}: new pjdfstest failures (or pjdfstest did not finish): {unexpected:#?}\n{text}",
                w.name
            );
            let (text2, ok2, c2, _) = pjd(&format!("{name}-retry"), start, &unexpected.join(","), None);
            assert!(
                ok2 && c2[0] as usize >= unexpected.len() && c2[1] == 0,
                "[{}] {name}: {unexpected:?} failed again on retry:\n{text2}",
                w.name
            );
            eprintln!("[{}] {name}: FLAKY {unexpected:?}: failed, then passed on a retry", w.name);
            counts[0] += unexpected.len() as u64;
            counts[1] -= unexpected.len() as u64;
        }
        let line = format!("pjdfstest: {} passed, {} failed, {} skipped", counts[0], counts[1], counts[2]);
        (line, counts)
    };

    let ovfs_start = |name: &str, share: &Path| Daemon::ovfs_dir(&w, name, &sock, share);
    let (ovfs_line, ovfs) = run("pjdfstest-ovfs", &ovfs_start, Some(&expected));

    // The passthrough (Kata's shared dir): no failure allowed, as virtiofsd.
    let pt_start = |name: &str, share: &Path| {
        Daemon::ovfs(&w, name, &sock, &["--shared-dir".into(), share.into(), "--xattr".into()])
    };
    let (pt_line, pt) = run("pjdfstest-ovfs-passthrough", &pt_start, None);
    eprintln!("[{}] ovfs (passthrough): {pt_line}", w.name);
    assert_eq!(pt[1], 0, "the passthrough must pass pjdfstest without failures: {pt_line}");
    assert!(pt[0] >= 350, "the passthrough must pass at least 350 pjdfstest cases: {pt_line}");

    let vfsd_start = |name: &str, share: &Path| {
        let args: Vec<OsString> = vec![
            "--socket-path".into(),
            sock.clone().into(),
            "--shared-dir".into(),
            share.into(),
            "--sandbox".into(),
            "none".into(),
            "--cache".into(),
            "auto".into(),
        ];
        Daemon::start(&w, name, &virtiofsd, &args, &sock)
    };
    let (vfsd_line, vfsd) = run("pjdfstest-virtiofsd", &vfsd_start, None);

    eprintln!("[{}] ovfs (fs back-end): {ovfs_line}", w.name);
    eprintln!("[{}] virtiofsd {}: {vfsd_line}", w.name, v.trim().trim_start_matches("virtiofsd "));
    assert_eq!(vfsd[1], 0, "virtiofsd must pass pjdfstest without failures: {vfsd_line}");
    assert_eq!(
        ovfs.iter().sum::<u64>(),
        vfsd.iter().sum::<u64>(),
        "same pjdfstest, same number of tests: {ovfs_line} / {vfsd_line}"
    );
    assert!(ovfs[0] > 0 && vfsd[0] > 300, "pjdfstest ran too few tests: {ovfs_line} / {vfsd_line}");
}
