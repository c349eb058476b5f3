//! Guests over S3: real Linux guests (QEMU TCG, the busybox initramfs of
//! `tests/guest/build-initramfs.sh`) mount `ovfs` serving a SeaweedFS bucket
//! (`tests/common/s3.rs`, one server per test binary, a key prefix per test)
//! and run the guest scripts `tests/guest/scripts/s3-*.sh` and pjdfstest;
//! what the guest did is then checked in the bucket with an S3 client that
//! shares no code with ovfs (curl --aws-sigv4).
//!
//! - `guest_s3_semantics`: mkdir -p, nested writes, mv of a directory of 100
//!   files, append to an existing object, a write in the middle of a 10 MiB
//!   object, truncate up and down, chmod 0600, ln -s, ls -l of 1000 objects;
//!   keys, bytes and `x-amz-meta-mode` checked in the bucket; a second boot
//!   on a fresh daemon still sees mode 600 and the symlink.
//! - `guest_s3_external_writer`: objects created, deleted and overwritten by
//!   another client are visible in the guest within TTL + 1 s (measured by
//!   the guest itself, see `tests/guest/scripts/s3-external.sh`).
//! - `guest_pjdfstest_s3`: pjdfstest in the guest; failures only those of
//!   `tests/pjdfstest/expected/guest-s3.txt`.
//!
//! A boot passes only if `run-guest.sh` exits 0 (it saw
//! `OVFS-GUEST-END rc=0`), the console has no `FAIL` line and every `PASS`
//! line the script prints on success is there. Guests are slow under TCG, so
//! the tests of this file take turns. Work files go to
//! `CARGO_TARGET_TMPDIR/guest-s3/<test>.*` and are kept when a test fails.
//! Needs what `tests/tools/install-deps.sh` installs (QEMU, the guest kernel,
//! busybox-static, SeaweedFS, pjdfstest, curl); runs as root.

#[path = "common/s3.rs"]
mod s3;

#[path = "common/mod.rs"]
mod common;
#[path = "common/guest.rs"]
mod guest;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use guest::{guest_dir, repo, secs, serial, Boot, BootOpts, Daemon, Work};
use s3::{pseudo_random, sha256, S3Client, S3Server};

const BOOT_TIMEOUT_S: u32 = 600;
/// pjdfstest over S3: every operation is one or more HTTP requests.
const PJDFSTEST_TIMEOUT_S: u32 = 1800;
const MIB: usize = 1 << 20;

fn find_exe(name: &str) -> PathBuf {
    guest::require_exe(name, name)
}

fn yes(word: &str, len: usize) -> Vec<u8> {
    format!("{word}\n").into_bytes().into_iter().cycle().take(len).collect()
}

// ---------------------------------------------------------------- daemon, boots (tests/common/guest.rs)

/// ovfs with this config, serving one VMM connection on the work's socket.
fn ovfs(w: &Work, name: &str, config: &str) -> Daemon {
    Daemon::ovfs_config(w, name, &w.sock("fs.sock"), config, &[])
}

/// One guest boot against the work's socket; returns when QEMU is gone.
fn boot(w: &Work, name: &str, initrd: &Path, cmdline: &str, daemon: &Daemon) -> Boot {
    boot_t(w, name, initrd, cmdline, daemon, BOOT_TIMEOUT_S)
}

fn boot_t(w: &Work, name: &str, initrd: &Path, cmdline: &str, daemon: &Daemon, timeout_s: u32) -> Boot {
    let o = BootOpts { timeout_s, ..BootOpts::default() };
    w.boot_with(name, initrd, &w.sock("fs.sock"), cmdline, daemon, &o)
}

fn pass_lines(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| format!("PASS {n}")).collect()
}

/// Collects failed host-side checks so that one run reports all of them.
#[derive(Default)]
struct Checks {
    fails: Vec<String>,
    n: usize,
}

impl Checks {
    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        self.n += 1;
        if !ok {
            let m = msg();
            eprintln!("CHECK FAILED: {m}");
            self.fails.push(m);
        }
    }

    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        let ok = got == want;
        self.check(ok, || format!("{what}: got {got:?}, want {want:?}"));
    }

    fn finish(self, test: &str, context: &str) {
        assert!(
            self.fails.is_empty(),
            "{test}: {} of {} host check(s) failed:\n- {}\n{context}",
            self.fails.len(),
            self.n,
            self.fails.join("\n- ")
        );
        eprintln!("[{test}] {} host checks passed", self.n);
    }
}

/// Byte view for messages: short text as is, else size and sha256.
fn show(b: Option<&[u8]>) -> String {
    match b {
        None => "<absent>".into(),
        Some(b) if b.len() <= 64 => format!("{:?}", String::from_utf8_lossy(b)),
        Some(b) => format!("{} bytes, sha256 {}", b.len(), sha256(b)),
    }
}

// ---------------------------------------------------------------- 1. semantics

/// What s3-semantics.sh phase 1 prints when every check passes.
const SEM_PASSES: &[&str] = &[
    "mkdir-p",
    "mkdir-p-dirs",
    "mkdir-p-again",
    "nested-f1",
    "nested-f2",
    "nested-f3",
    "nested-listing",
    "mv-src-count",
    "mv-dir",
    "mv-src-gone",
    "mv-dst-count",
    "mv-dst-contents",
    "append-before",
    "append",
    "mid-before-size",
    "mid-write",
    "mid-content",
    "mid-size",
    "truncate-up",
    "truncate-down",
    "truncate-up-size",
    "truncate-down-size",
    "truncate-up-content",
    "truncate-down-content",
    "truncate-up-zeros",
    "chmod-before",
    "chmod",
    "chmod-mode",
    "chmod-mode-uncached",
    "symlink",
    "readlink",
    "readlink-uncached",
    "symlink-type",
    "symlink-follow",
    "ls-l-lines",
    "ls-l-total",
    "ls-l-modes",
    "ls-l-names",
    "ls-l-first-last",
];

/// Offset and length of the guest's write into pre/mid10m.bin (s3-semantics.sh).
const MID_OFF: usize = 1220 * 4099;
const MID_LEN: usize = 4099;

#[test]
fn guest_s3_semantics() {
    let _g = serial();
    let srv = S3Server::shared();
    let c = srv.client();
    let w = Work::new("guest_s3_semantics", "guest-s3");
    const P: &str = "sem/";

    // objects the guest finds (PUT without metadata, like any other S3 client)
    let t = Instant::now();
    let many: Vec<String> = (0..1000).map(|i| format!("{P}many/o{i:04}")).collect();
    c.put_many(&many, b"obj\n");
    let append0 = b"line 1\nline 2\n".to_vec();
    let mid0 = pseudo_random(10, 10 * MIB);
    let tu0 = pseudo_random(11, 1048579);
    let td0 = pseudo_random(12, 1048579);
    c.put(&format!("{P}pre/append.txt"), &append0, &[]);
    c.put(&format!("{P}pre/mid10m.bin"), &mid0, &[]);
    c.put(&format!("{P}pre/trunc-up.bin"), &tu0, &[]);
    c.put(&format!("{P}pre/trunc-down.bin"), &td0, &[]);
    w.step("PUT 1004 objects", t);

    let config = srv.ovfs_config("/sem", "");
    let initrd = w.initramfs("sem", "s3-semantics.sh", &[]);
    let mut d = ovfs(&w, "sem1", &config);
    let b1 = boot(&w, "phase1", &initrd, "ovfs.phase=1", &d);
    b1.assert_passed(&[pass_lines(SEM_PASSES), vec!["s3-semantics: phase 1: all checks passed".into()]].concat());
    d.expect_exit_after_disconnect();
    for l in b1.tagged("TIME ") {
        eprintln!("[{}] guest {l}", w.name);
    }

    // ---- the bucket, read with curl
    let t = Instant::now();
    let mut ck = Checks::default();
    let shas = b1.sha_lines();
    let dst: Vec<String> = (0..100).map(|i| format!("dst/f{i:03}")).collect();
    let files: Vec<&str> = ["a/b/c/f1", "a/b/f2", "a/f3", "pre/append.txt", "pre/mid10m.bin"]
        .into_iter()
        .chain(["pre/trunc-up.bin", "pre/trunc-down.bin", "chmod.txt"])
        .chain(dst.iter().map(String::as_str))
        .collect();
    ck.eq("SHA lines", shas.keys().map(String::as_str).collect::<BTreeSet<_>>(), files.iter().copied().collect());

    // exact key set
    let listed: BTreeMap<String, u64> = c.list(P).into_iter().collect();
    let mut want: BTreeSet<String> = files.iter().map(|f| format!("{P}{f}")).collect();
    want.extend(many.iter().cloned());
    for m in ["a/", "a/b/", "a/b/c/", "dst/", "link"] {
        want.insert(format!("{P}{m}"));
    }
    let have: BTreeSet<String> = listed.keys().cloned().collect();
    ck.check(have == want, || {
        format!(
            "keys under {P}: extra {:?}, missing {:?}",
            have.difference(&want).collect::<Vec<_>>(),
            want.difference(&have).collect::<Vec<_>>()
        )
    });
    for m in ["a/", "a/b/", "a/b/c/", "dst/"] {
        ck.eq(&format!("size of marker {P}{m}"), listed.get(&format!("{P}{m}")).copied(), Some(0));
    }

    // bytes: the guest's SHA lines, and what the host expects independently of the guest
    let mut mid = mid0.clone();
    mid[MID_OFF..MID_OFF + MID_LEN].copy_from_slice(&yes("ovfs-patch", MID_LEN));
    let mut tu = tu0.clone();
    tu.resize(2_000_000, 0);
    let mut expect: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    expect.insert("a/b/c/f1".into(), b"nested c\n".to_vec());
    expect.insert("a/f3".into(), b"nested a\n".to_vec());
    expect.insert("pre/append.txt".into(), [append0.as_slice(), b"line 3 appended\n"].concat());
    expect.insert("pre/mid10m.bin".into(), mid);
    expect.insert("pre/trunc-up.bin".into(), tu);
    expect.insert("pre/trunc-down.bin".into(), td0[..1000].to_vec());
    expect.insert("chmod.txt".into(), b"secret\n".to_vec());
    for (i, f) in dst.iter().enumerate() {
        expect.insert(f.clone(), format!("file {i:03}\n").into_bytes());
    }
    for f in &files {
        let got = c.get(&format!("{P}{f}"));
        let gs = got.as_deref().map(sha256);
        ck.eq(&format!("sha256 of {P}{f} vs the guest's SHA line"), gs.as_deref(), shas.get(*f).map(String::as_str));
        if let Some(e) = expect.get(*f) {
            ck.check(got.as_deref() == Some(e.as_slice()), || {
                format!("bytes of {P}{f}: {}, want {}", show(got.as_deref()), show(Some(e)))
            });
        }
    }
    // moved away: nothing left under src/
    ck.eq("keys under sem/src/", c.list(&format!("{P}src/")), vec![]);

    // metadata (s3fs names, decimal st_mode)
    let mode = |key: &str| c.head(&format!("{P}{key}")).meta("mode").map(str::to_string);
    ck.eq("x-amz-meta-mode of chmod.txt (0100600)", mode("chmod.txt"), Some("33152".into()));
    ck.eq("x-amz-meta-mode of a/b/c/f1 (0100644)", mode("a/b/c/f1"), Some("33188".into()));
    ck.eq("x-amz-meta-mode of dst/f042 (moved, 0100644)", mode("dst/f042"), Some("33188".into()));
    let lh = c.head(&format!("{P}link"));
    ck.eq("x-amz-meta-mode of link (0120777)", lh.meta("mode"), Some("41471"));
    ck.check(lh.meta("mode").and_then(|m| m.parse::<u32>().ok()).is_some_and(|m| m & 0o170000 == 0o120000), || {
        format!("link: mode without S_IFLNK: {}", lh.metas())
    });
    ck.eq("content of link", c.get(&format!("{P}link")).as_deref(), Some(&b"a/b/c/f1"[..]));
    w.step("bucket checks", t);
    ck.finish(w.name, &b1.context());

    // ---- phase 2: a fresh daemon still shows mode 600 and the symlink
    let list = w.p("phase1.sha");
    fs::write(&list, shas.iter().map(|(p, h)| format!("SHA {p} {h}\n")).collect::<String>()).expect("write");
    let mut spec = list.into_os_string();
    spec.push(":/ovfs-expected.sha");
    let initrd2 = w.initramfs("sem2", "s3-semantics.sh", &["-f".into(), spec]);
    let mut d = ovfs(&w, "sem2", &config);
    let b2 = boot(&w, "phase2", &initrd2, "ovfs.phase=2", &d);
    let n = shas.len();
    b2.assert_passed(
        &[
            pass_lines(&[
                "remount-chmod-mode",
                "remount-file-mode",
                "remount-symlink-type",
                "remount-readlink",
                "remount-symlink-follow",
                "remount-dirs",
                "remount-dst-count",
                &format!("remount-sha ({n} files)"),
            ]),
            vec!["s3-semantics: phase 2: all checks passed".into()],
        ]
        .concat(),
    );
    d.expect_exit_after_disconnect();
    eprintln!("[{}] passed in {}", w.name, secs(w.started.elapsed()));
}

// ---------------------------------------------------------------- 2. external writer

/// The host side of s3-external.sh: waits for `req-N`, makes change N,
/// PUTs `ack-N`. Returns, per change, the time from seeing the request to
/// the change being made (its reaction time).
fn external_writer(c: S3Client, p: &'static str, done: Arc<AtomicBool>) -> Vec<(u32, Duration)> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(BOOT_TIMEOUT_S as u64);
    for n in 1..=4u32 {
        let req = format!("{p}req-{n}");
        loop {
            if c.head(&req).status == 200 {
                break;
            }
            if done.load(Ordering::Relaxed) || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        let t = Instant::now();
        match n {
            1 => c.put(&format!("{p}ext-new"), b"new object\n", &[]),
            2 => c.delete(&format!("{p}ext-del")),
            3 => c.put(&format!("{p}ext-over"), &yes("ovfs-new", 3000), &[]),
            _ => c.put(&format!("{p}ext-same"), &yes("ovfs-NEW", 1000), &[]),
        }
        let reaction = t.elapsed();
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        c.put(&format!("{p}ack-{n}"), format!("{ms}\n").as_bytes(), &[]);
        out.push((n, reaction));
    }
    out
}

#[test]
fn guest_s3_external_writer() {
    let _g = serial();
    let srv = S3Server::shared();
    let c = srv.client();
    let w = Work::new("guest_s3_external_writer", "guest-s3");
    const P: &str = "ext/";
    c.put(&format!("{P}ext-del"), b"delete me\n", &[]);
    c.put(&format!("{P}ext-over"), &yes("ovfs-old", 1000), &[]);
    c.put(&format!("{P}ext-same"), &yes("ovfs-old", 1000), &[]);

    let config = srv.ovfs_config("/ext", "attr_timeout = \"1s\"\nentry_timeout = \"1s\"");
    let initrd = w.initramfs("ext", "s3-external.sh", &[]);
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, done) = (c.clone(), done.clone());
        std::thread::spawn(move || external_writer(c, P, done))
    };
    let mut d = ovfs(&w, "ext", &config);
    // The guest's own limit is loose (its from_req includes the host's
    // reaction time, which a loaded machine stretches); the bound is judged
    // below, with the reaction taken out.
    let b = boot(&w, "ext", &initrd, "ovfs.ttl=1 ovfs.limit=8", &d);
    done.store(true, Ordering::Relaxed);
    let host = writer.join().expect("writer thread");
    for (n, t) in &host {
        eprintln!("[{}] host: change {n}: request seen -> change made in {}", w.name, secs(*t));
    }
    for l in b.tagged("DELAY ").into_iter().chain(b.tagged("INFO ")) {
        eprintln!("[{}] guest {l}", w.name);
    }
    b.assert_passed(
        &[
            pass_lines(&[
                "start-del-present",
                "start-over",
                "start-same",
                "start-new-absent",
                "ext-new-visible",
                "ext-new-content",
                "ext-new-listed",
                "del-cached",
                "ext-del-visible",
                "ext-del-unlisted",
                "over-cached",
                "ext-over-visible",
                "ext-over-final",
                "same-cached",
            ]),
            vec!["s3-external: all checks passed".into()],
        ]
        .concat(),
    );
    d.expect_exit_after_disconnect();

    // The bound, judged here: the change was made `reaction` after the host
    // saw the request, which was after the guest's t_req, so the true delay
    // (change made -> seen in the guest) is at most from_req - reaction; it
    // must be <= TTL + 1 s = 2 s for the three judged changes.
    let reaction: BTreeMap<u32, f64> = host.iter().map(|(n, t)| (*n, t.as_secs_f64())).collect();
    let delays: BTreeMap<String, (f64, f64)> = b
        .tagged("DELAY ")
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let v = |k: &str| f.iter().find_map(|x| x.strip_prefix(k)?.parse::<f64>().ok());
            Some((f.get(1)?.to_string(), (v("from_req=")?, v("from_ack=")?)))
        })
        .collect();
    for (n, what) in [(1, "new"), (2, "del"), (3, "over")] {
        let dl = delays.get(what);
        let r = reaction.get(&n).copied();
        let bound = dl.zip(r).map(|((req, _), r)| req - r);
        eprintln!("[{}] {what}: visible at most {bound:?} s after the change (from_req, from_ack {dl:?}, host reaction {r:?} s)", w.name);
        assert!(
            dl.is_some_and(|(req, ack)| ack <= req) && bound.is_some_and(|b| b <= 2.0),
            "[{}] DELAY {what}: {dl:?}, host reaction {r:?} s: from_req - reaction must be <= 2.0 s = TTL + 1 s\n{}",
            w.name,
            b.context()
        );
    }
    assert_eq!(host.len(), 4, "[{}] the host made {} of 4 changes", w.name, host.len());
    // the requests were written through the mount and the guest removed them
    assert!(c.list(&format!("{P}req-")).is_empty(), "req-N objects left in the bucket");
    eprintln!("[{}] passed in {}", w.name, secs(w.started.elapsed()));
}

// ---------------------------------------------------------------- 3. pjdfstest

/// A new pjdfstest failure of only these is retried once in a fresh guest
/// and must pass then.
use common::PJDFSTEST_RACY as RACY;

/// tests/guest/scripts/pjdfstest.sh, made to accept a work directory whose
/// `chmod 0755` fails when its mode is 0755 already: chmod of a directory
/// answers ENOTSUP on S3 (docs/SEMANTICS.md) and mkdir made it 0755 anyway.
/// When the script itself accepts that, it is used as it is.
fn pjdfstest_script(w: &Work) -> PathBuf {
    let orig = guest_dir().join("scripts/pjdfstest.sh");
    let text = fs::read_to_string(&orig).expect("read pjdfstest.sh");
    let strict = r#"! chmod 0755 "$d"; then"#;
    if !text.contains(strict) {
        return orig;
    }
    let p = w.p("pjdfstest.sh");
    fs::write(&p, text.replacen(strict, r#"! { chmod 0755 "$d" || [ "$(stat -c %a "$d")" = 755 ]; }; then"#, 1))
        .expect("write pjdfstest.sh");
    p
}

/// pjdfstest in the guest over ovfs on S3 (SeaweedFS); the failures must be
/// those listed, with their reasons, in tests/pjdfstest/expected/guest-s3.txt.
#[test]
fn guest_pjdfstest_s3() {
    let _g = serial();
    let srv = S3Server::shared();
    let w = Work::new("guest_pjdfstest_s3", "guest-s3");
    let expected = repo().join("tests/pjdfstest/expected/guest-s3.txt");
    assert!(expected.exists(), "{} missing", expected.display());
    let pjdfstest = find_exe("pjdfstest");
    let sleep = find_exe("sleep");
    let script = pjdfstest_script(&w);
    let initrd = w.initramfs("pjdfstest", &script, &["-b".into(), pjdfstest.into(), "-b".into(), sleep.into()]);

    // one pjdfstest boot on a fresh prefix, summarized:
    // (summary text, summarize.sh ok, [passed, failed, skipped], unexpected failures)
    let pjd = |name: &str, filter: &str, expected: Option<&Path>| {
        let config = srv.ovfs_config(&format!("/{name}"), "");
        let mut d = ovfs(&w, name, &config);
        let cmdline = if filter.is_empty() { String::new() } else { format!("ovfs.pjdfs_filter={filter}") };
        let b = boot_t(&w, name, &initrd, &cmdline, &d, PJDFSTEST_TIMEOUT_S);
        // pjdfstest 0.2.2 chmods every test's fresh directory to 0755 outside its
        // per-test panic handler: if that fails, the whole run dies at once (exit 101)
        assert!(
            !b.lines().any(|l| l == "PJDFSTEST-RC 101") || b.lines().any(|l| l.starts_with("Summary: ")),
            "[{}] {name}: pjdfstest aborted before its first test (exit 101, no output): it chmods each \
             test's directory to 0755, and chmod of a directory on S3 answers ENOTSUP\n{}",
            b.test,
            b.context()
        );
        b.assert_passed(&[]);
        assert!(
            b.lines().any(|l| l.starts_with("PJDFSTEST-RC ")),
            "[{}] no PJDFSTEST-RC line:\n{}",
            b.test,
            b.context()
        );
        d.expect_exit_after_disconnect();
        for l in b.tagged("TIME ") {
            eprintln!("[{}] {name}: guest {l}", w.name);
        }
        w.pjdfstest_summary(name, &b, expected)
    };

    let (text, ok, mut counts, unexpected) = pjd("pjd", "", Some(&expected));
    if !ok {
        let retry = !unexpected.is_empty() && unexpected.iter().all(|n| RACY.contains(&n.as_str()));
        assert!(retry, "[{}] new pjdfstest failures (or pjdfstest did not finish): {unexpected:#?}\n{text}", w.name);
        let (text2, ok2, c2, _) = pjd("pjd-retry", &unexpected.join(","), None);
        assert!(
            ok2 && c2[0] as usize >= unexpected.len() && c2[1] == 0,
            "[{}] {unexpected:?} failed again on retry:\n{text2}",
            w.name
        );
        eprintln!("[{}] FLAKY {unexpected:?}: failed, then passed on a retry", w.name);
        counts[0] += unexpected.len() as u64;
        counts[1] -= unexpected.len() as u64;
    }
    let line = format!("pjdfstest: {} passed, {} failed, {} skipped", counts[0], counts[1], counts[2]);
    eprintln!("[{}] ovfs on S3 (SeaweedFS): {line}", w.name);
    // the expected list holds no stale names: every listed test still fails
    let listed: BTreeSet<String> = fs::read_to_string(&expected)
        .expect("read expected")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !n.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert_eq!(
        counts[1] as usize,
        listed.len(),
        "[{}] {line}, but {} names listed in {}",
        w.name,
        listed.len(),
        expected.display()
    );
    assert!(counts[0] > 200, "[{}] pjdfstest ran too few tests: {line}", w.name);
    eprintln!("[{}] passed in {}", w.name, secs(w.started.elapsed()));
}
