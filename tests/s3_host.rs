//! ovfs on a real S3 server (SeaweedFS on loopback), mounted on the host
//! through /dev/fuse, checked from outside with an independent S3 client
//! (curl) and a peer file system (Debian's s3fs): crash atomicity of uploads,
//! metadata compatibility with s3fs, visibility of other writers within the
//! TTLs, and what lands in the bucket (keys, bytes, `x-amz-meta-*`).
//!
//! Needs root, /dev/fuse, curl, s3fs and SeaweedFS (tests/tools/install-deps.sh).
//! Every test uses its own key prefix (`root`) of one shared server.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{bash, is_mounted, Mounted};
use s3::{pseudo_random, sha256, sha256_file, S3Server};

const MIB: usize = 1 << 20;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn umask() -> u32 {
    let st = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    st.lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0o022)
}

/// Run a bash script; panic with its output (and the daemon log) on failure.
fn sh(script: &str, cwd: &Path, log: &dyn Fn() -> String) -> String {
    let out = bash(script, cwd);
    assert!(
        out.status.success(),
        "script failed in {}:\n{script}\nstdout:\n{}\nstderr:\n{}\nlog (tail):\n{}",
        cwd.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&log(), 40)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Run a bash script; (success, stdout + stderr).
fn sh_try(script: &str, cwd: &Path) -> (bool, String) {
    let out = bash(script, cwd);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// Collects failed checks so that one run reports all of them.
#[derive(Default)]
struct Checks {
    fails: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            let m = msg();
            eprintln!("CHECK FAILED: {m}");
            self.fails.push(m);
        }
    }

    fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        let ok = got == want;
        self.check(ok, || format!("{what}: got {got:?}, want {want:?}"));
    }

    fn finish(self, test: &str) {
        assert!(self.fails.is_empty(), "{test}: {} failed check(s):\n- {}", self.fails.len(), self.fails.join("\n- "));
    }
}

// ---------------------------------------------------------------------------
// 1. SIGKILL during write/close never leaves a torn object.
// ---------------------------------------------------------------------------

/// Copy `src` over `dst` with `tool`: `dd` (GNU dd opens the output, dup2s it
/// onto stdout and closes the first descriptor: a FLUSH before the first
/// write, like a shell's `> file`) or `cp` (open, write, one close).
fn spawn_writer(tool: &str, src: &Path, dst: &Path) -> Child {
    let mut c = Command::new(tool);
    if tool == "dd" {
        c.arg(format!("if={}", src.display())).arg(format!("of={}", dst.display())).args(["bs=1M", "status=none"]);
    } else {
        c.arg(src).arg(dst);
    }
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn dd")
}

/// Wait for a child, killing it after `limit`; its exit success.
fn wait_child(c: &mut Child, limit: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return st.success();
        }
        if t0.elapsed() > limit {
            let _ = c.kill();
            let _ = c.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// When to SIGKILL the daemon: when the writer's file offset reaches this
/// fraction of the file (W), or this many ms after its last write (C: the
/// writer is in its final close(), i.e. the upload).
#[derive(Debug, Clone, Copy)]
enum KillAt {
    W(f64),
    C(u64),
}
use KillAt::{C, W};

/// The offset of `pid`'s descriptor open on `path` (/proc/PID/fdinfo).
fn fd_pos(pid: u32, path: &Path) -> Option<u64> {
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if std::fs::read_link(e.path()).ok().as_deref() == Some(path) {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy())).ok()?;
            return info.lines().find_map(|l| l.strip_prefix("pos:")).and_then(|v| v.trim().parse().ok());
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    A,
    B,
    Absent,
    /// A 0-byte object: neither version (the truncation of `open(O_TRUNC)`
    /// uploaded at an early close).
    Empty,
}

#[test]
fn sigkill_mid_write_never_tears() {
    let srv = S3Server::shared();
    let s3c = srv.client();
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("A.bin");
    let b = work.path().join("B.bin");
    std::fs::write(&a, pseudo_random(0xA, 32 * MIB)).unwrap();
    std::fs::write(&b, pseudo_random(0xB, 32 * MIB)).unwrap();
    let (ha, hb) = (sha256_file(&a), sha256_file(&b));
    assert_ne!(ha, hb);
    let cfg = srv.ovfs_config("/t1", "");
    let got = work.path().join("got.bin");
    let outcome = |key: &str| -> (Option<Outcome>, String) {
        match s3c.get_to_file(key, &got) {
            404 => (Some(Outcome::Absent), "absent".into()),
            200 => {
                let h = sha256_file(&got);
                let len = std::fs::metadata(&got).map(|m| m.len()).unwrap_or(0);
                let o = if h == ha {
                    Some(Outcome::A)
                } else if h == hb {
                    Some(Outcome::B)
                } else if len == 0 {
                    Some(Outcome::Empty)
                } else {
                    None
                };
                (o, format!("{len} bytes, sha256 {h}"))
            }
            c => (None, format!("HTTP {c}")),
        }
    };

    // Baseline: an undisturbed overwrite must end as B (its duration is printed).
    s3c.put_file("t1/big", &a, &[]);
    let t_write = {
        let m = Mounted::start(&cfg);
        let t0 = Instant::now();
        let mut dd = spawn_writer("dd", &b, &m.mountpoint.join("big"));
        assert!(wait_child(&mut dd, Duration::from_secs(60)), "undisturbed dd failed; log:\n{}", m.log_text());
        t0.elapsed()
    };
    let (o, desc) = outcome("t1/big");
    assert_eq!(o, Some(Outcome::B), "undisturbed overwrite: bucket holds {desc}");
    eprintln!("sigkill: undisturbed 32 MiB overwrite (write + close/upload) took {t_write:?}");

    // Kill moments, relative to the writer's progress (read from
    // /proc/PID/fdinfo of its descriptor on the mounted file) so that they
    // land where they matter whatever the machine's speed: during the write
    // at some fraction of the 32 MiB, or a delay after the last write
    // returned (the writer is then in close(): FLUSH, i.e. the upload). A
    // per-run jitter of up to 10 ms on the delays probes different moments.
    let jitter = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() % 10_000) as u64 / 1000;
    let full = 32 * MIB as u64;
    let overwrite_plan = [W(0.1), W(0.5), W(0.9), C(0), C(20), C(50), C(100), C(200), C(400), C(1000)];
    let new_plan = [W(0.5), C(0), C(30), C(80), C(200), C(600)];
    let plan: [(&str, &str, &str, &str, &[KillAt]); 4] = [
        ("dd", "overwrite", "t1/big", "big", &overwrite_plan),
        ("dd", "new", "t1/new", "new", &new_plan),
        ("cp", "overwrite", "t1/big", "big", &overwrite_plan),
        ("cp", "new", "t1/new", "new", &new_plan),
    ];
    let mut failures = Vec::new();
    let mut counts: BTreeMap<(&str, &str, Outcome), usize> = BTreeMap::new();
    for (tool, variant, key, name, kills) in plan {
        for (k, at) in kills.iter().enumerate() {
            if variant == "overwrite" {
                s3c.put_file(key, &a, &[]);
            } else {
                s3c.delete(key);
            }
            let mut m = Mounted::start(&cfg);
            let target = m.mountpoint.join(name);
            let t0 = Instant::now();
            let mut w = spawn_writer(tool, &b, &target);
            // Wait for the moment (or the writer's end, or 30 s).
            let mut written_at: Option<Instant> = None;
            let mut pos = 0;
            loop {
                if !matches!(w.try_wait(), Ok(None)) || t0.elapsed() > Duration::from_secs(30) {
                    break;
                }
                // close() takes the descriptor out of the table before the
                // FLUSH: a writer alive without it is in close().
                let now_pos = fd_pos(w.id(), &target);
                if let Some(p) = now_pos {
                    pos = p;
                }
                match *at {
                    W(f) if pos as f64 >= f * full as f64 => break,
                    C(ms) => {
                        if (pos >= full || (pos > 0 && now_pos.is_none())) && written_at.is_none() {
                            written_at = Some(Instant::now());
                        }
                        if written_at.is_some_and(|t| t.elapsed() >= Duration::from_millis(ms + jitter)) {
                            break;
                        }
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            // Writer done before the kill: its close returned, so B must be stored.
            let done_before = matches!(w.try_wait(), Ok(Some(st)) if st.success());
            let _ = m.child.kill();
            let killed_at = t0.elapsed();
            let _ = m.child.wait();
            let w_ok = wait_child(&mut w, Duration::from_secs(20));
            drop(m); // umount -l of the dead mount
            std::thread::sleep(Duration::from_millis(300));
            let (o, desc) = outcome(key);
            eprintln!(
                "sigkill {tool} {variant} round {k}: kill at {at:?} = {:>4} ms after start ({pos} bytes written), \
                 {tool} {} -> {desc} ({o:?})",
                killed_at.as_millis(),
                if done_before {
                    "had finished"
                } else if w_ok {
                    "finished"
                } else {
                    "failed"
                }
            );
            let allowed = if variant == "overwrite" { [Outcome::A, Outcome::B] } else { [Outcome::Absent, Outcome::B] };
            match o {
                Some(o) if allowed.contains(&o) => {
                    *counts.entry((tool, variant, o)).or_default() += 1;
                    if done_before && o != Outcome::B {
                        failures.push(format!(
                            "{tool} {variant} round {k}: close() had returned success before the kill, yet the bucket holds {o:?}"
                        ));
                    }
                }
                _ => {
                    if let Some(o) = o {
                        *counts.entry((tool, variant, o)).or_default() += 1;
                    }
                    failures.push(format!(
                        "{tool} {variant} round {k} (kill at {at:?}, {killed_at:?} after start): torn object: {desc}"
                    ))
                }
            }
        }
    }
    eprintln!("sigkill outcomes: {counts:?}");
    // Nothing else was left in the bucket (no temporary or partial objects).
    let keys: Vec<String> = s3c.list("t1/").into_iter().map(|(k, _)| k).collect();
    for k in &keys {
        if k != "t1/big" && k != "t1/new" {
            failures.push(format!("unexpected key left in the bucket: {k}"));
        }
    }
    assert!(failures.is_empty(), "sigkill: {}\noutcomes: {counts:?}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// 2. Cross-tool: ovfs and s3fs read each other's bytes, modes and symlinks.
// ---------------------------------------------------------------------------

/// A Debian s3fs mount of `bucket:/prefix`; unmounted on drop.
struct S3fs {
    mp: PathBuf,
    dir: tempfile::TempDir,
}

impl S3fs {
    fn mount(srv: &S3Server, prefix: &str) -> S3fs {
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().join("mnt");
        std::fs::create_dir(&mp).unwrap();
        let pw = dir.path().join("passwd");
        std::fs::write(&pw, format!("{}:{}\n", s3::ACCESS_KEY, s3::SECRET_KEY)).unwrap();
        let _ = Command::new("chmod").arg("600").arg(&pw).status();
        let out = Command::new("s3fs")
            .arg(format!("{}:/{prefix}", s3::BUCKET))
            .arg(&mp)
            .args(["-o", &format!("url={}", srv.endpoint())])
            .args(["-o", "use_path_request_style", "-o", "sigv4", "-o", &format!("endpoint={}", s3::REGION)])
            .args(["-o", &format!("passwd_file={}", pw.display()), "-o", "allow_other"])
            .args(["-o", "stat_cache_expire=1", "-o", "dbglevel=warn"])
            .args(["-o", &format!("logfile={}", dir.path().join("s3fs.log").display())])
            .output()
            .expect("run s3fs (tests/tools/install-deps.sh installs it)");
        assert!(out.status.success(), "s3fs failed: {}", String::from_utf8_lossy(&out.stderr));
        let t0 = Instant::now();
        while !is_mounted(&mp) {
            assert!(t0.elapsed() < Duration::from_secs(20), "s3fs did not mount");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3fs { mp, dir }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s3fs.log")).unwrap_or_default()
    }
}

impl Drop for S3fs {
    fn drop(&mut self) {
        if is_mounted(&self.mp) {
            let ok = Command::new("umount").arg(&self.mp).status().map(|s| s.success()).unwrap_or(false);
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.mp).status();
            }
        }
    }
}

/// `stat -c FMT` of each name, one line per name.
fn stat_all(dir: &Path, fmt: &str, names: &[&str]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for n in names {
        let (ok, out) = sh_try(&format!("stat -c '{fmt}' '{n}'"), dir);
        m.insert(n.to_string(), if ok { out.trim().to_string() } else { format!("ERROR {}", out.trim()) });
    }
    m
}

#[test]
fn cross_tool_s3fs() {
    let srv = S3Server::shared();
    let s3c = srv.client();
    let mut c = Checks::default();
    let um = umask();
    let work = tempfile::tempdir().unwrap();
    let big = pseudo_random(0x2, 3 * MIB + 12345);
    std::fs::write(work.path().join("big"), &big).unwrap();
    let m = Mounted::start(&srv.ovfs_config("/t2", ""));
    let mlog = || m.log_text();

    // Written through ovfs.
    sh(
        &format!(
            "set -e
             printf 'only-owner\\n' > o600; chmod 0600 o600
             cp {w}/big o751; chmod 0751 o751
             printf 'umask-default\\n' > odef
             ln -s o600 olink
             mkdir -m 0700 o700dir
             printf 'inside\\n' > o700dir/inner; chmod 0640 o700dir/inner",
            w = work.path().display()
        ),
        &m.mountpoint,
        &mlog,
    );
    let ovfs_files: Vec<(&str, Vec<u8>, u32)> = vec![
        ("o600", b"only-owner\n".to_vec(), 0o600),
        ("o751", big.clone(), 0o751),
        ("odef", b"umask-default\n".to_vec(), 0o666 & !um),
        ("o700dir/inner", b"inside\n".to_vec(), 0o640),
    ];
    let ovfs_mtimes = stat_all(&m.mountpoint, "%Y", &["o600", "o751", "odef", "o700dir/inner"]);
    let ovfs_dir_mode_at_mkdir = stat_all(&m.mountpoint, "%a", &["o700dir"]);

    let fs = S3fs::mount(&srv, "t2");
    let flog = || fs.log_text();
    for (name, data, mode) in &ovfs_files {
        let got = std::fs::read(fs.mp.join(name)).ok();
        c.check(got.as_deref() == Some(&data[..]), || {
            format!("s3fs reads ovfs's {name}: {:?} bytes, want {} bytes", got.as_ref().map(|g| g.len()), data.len())
        });
        let st = stat_all(&fs.mp, "%a %F %Y", &[name]);
        let want = format!("{mode:o} regular file {}", ovfs_mtimes[*name]);
        c.check(st[*name] == want, || {
            format!(
                "s3fs `stat -c '%a %F %Y'` of ovfs's {name}: {:?}, want {want:?}; HEAD t2/{name}: {}",
                st[*name],
                s3c.head(&format!("t2/{name}")).metas()
            )
        });
    }
    let st = stat_all(&fs.mp, "%F", &["olink"]);
    c.eq("s3fs type of ovfs's symlink olink", st["olink"].as_str(), "symbolic link");
    let rl = std::fs::read_link(fs.mp.join("olink")).ok();
    c.eq("s3fs readlink of ovfs's olink", rl, Some(PathBuf::from("o600")));
    let st = stat_all(&fs.mp, "%a %F", &["o700dir"]);
    c.check(st["o700dir"].ends_with(" directory"), || format!("s3fs sees ovfs's o700dir as {:?}", st["o700dir"]));
    let dir_head = s3c.head("t2/o700dir/");
    eprintln!(
        "cross_tool: directory made by ovfs `mkdir -m 0700`: ovfs said {:?} right after mkdir, s3fs shows {:?}; \
         HEAD t2/o700dir/: HTTP {} meta [{}]",
        ovfs_dir_mode_at_mkdir["o700dir"],
        st["o700dir"],
        dir_head.status,
        dir_head.metas()
    );

    // Written through s3fs.
    sh(
        &format!(
            "set -e
             printf 's3fs-data\\n' > s640; chmod 0640 s640
             cp {w}/big s700; chmod 0700 s700
             printf 'plain\\n' > sdef
             ln -s s640 slink
             mkdir sdir
             printf 'deeper\\n' > sdir/inner; chmod 0604 sdir/inner",
            w = work.path().display()
        ),
        &fs.mp,
        &flog,
    );
    let s3fs_files: Vec<(&str, Vec<u8>, u32)> = vec![
        ("s640", b"s3fs-data\n".to_vec(), 0o640),
        ("s700", big.clone(), 0o700),
        ("sdef", b"plain\n".to_vec(), 0o666 & !um),
        ("sdir/inner", b"deeper\n".to_vec(), 0o604),
    ];
    let s3fs_mtimes = stat_all(&fs.mp, "%Y", &["s640", "s700", "sdef", "sdir/inner"]);
    for (name, data, mode) in &s3fs_files {
        let h = s3c.head(&format!("t2/{name}"));
        eprintln!("cross_tool: s3fs wrote {name}: HEAD meta [{}]", h.metas());
        let got = std::fs::read(m.mountpoint.join(name)).ok();
        c.check(got.as_deref() == Some(&data[..]), || {
            format!("ovfs reads s3fs's {name}: {:?} bytes, want {} bytes", got.as_ref().map(|g| g.len()), data.len())
        });
        let st = stat_all(&m.mountpoint, "%a %F %Y", &[name]);
        let want = format!("{mode:o} regular file {}", s3fs_mtimes[*name]);
        c.check(st[*name] == want, || {
            format!(
                "ovfs `stat -c '%a %F %Y'` of s3fs's {name}: {:?}, want {want:?}; HEAD meta [{}]",
                st[*name],
                h.metas()
            )
        });
    }
    let h = s3c.head("t2/slink");
    let st = stat_all(&m.mountpoint, "%F", &["slink"]);
    c.check(st["slink"] == "symbolic link", || {
        format!("ovfs type of s3fs's symlink slink: {:?}; HEAD meta [{}]", st["slink"], h.metas())
    });
    let rl = std::fs::read_link(m.mountpoint.join("slink")).ok();
    c.eq("ovfs readlink of s3fs's slink", rl, Some(PathBuf::from("s640")));
    let st = stat_all(&m.mountpoint, "%a %F", &["sdir"]);
    c.check(st["sdir"].ends_with(" directory"), || format!("ovfs sees s3fs's sdir as {:?}", st["sdir"]));
    let fs_st = stat_all(&fs.mp, "%a", &["sdir"]);
    let dir_head = s3c.head("t2/sdir/");
    eprintln!(
        "cross_tool: directory made by s3fs `mkdir`: s3fs shows {:?}, ovfs shows {:?}; HEAD t2/sdir/: HTTP {} meta [{}]",
        fs_st["sdir"],
        st["sdir"],
        dir_head.status,
        dir_head.metas()
    );
    drop(fs);
    c.finish("cross_tool_s3fs");
}

// ---------------------------------------------------------------------------
// 3. Another writer's PUT/DELETE/overwrite is visible within TTL + 1 s.
// ---------------------------------------------------------------------------

/// Poll `cond` every 10 ms for up to `limit`; the time it first held.
fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if cond() {
            return Some(t0.elapsed());
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn external_writer_visible_within_ttl() {
    let srv = S3Server::shared();
    let s3c = srv.client();
    let ttl = Duration::from_secs(1);
    let bound = ttl + Duration::from_secs(1);
    let m = Mounted::start(&srv.ovfs_config("/t3", "attr_timeout = \"1s\"\nentry_timeout = \"1s\""));
    let mp = m.mountpoint.clone();
    let mut c = Checks::default();
    let mut report = Vec::new();
    // Give up polling well after the bound, so that a miss is measured too.
    let give_up = Duration::from_secs(6);

    // A new object: the mount has just looked the name up and got ENOENT.
    let p_new = mp.join("created");
    assert!(std::fs::metadata(&p_new).is_err());
    let v_new = pseudo_random(0x31, 4321);
    s3c.put("t3/created", &v_new, &[]);
    let d = poll(give_up, || std::fs::metadata(&p_new).is_ok());
    report.push(format!("created: stat ok after {d:?}"));
    c.check(d.is_some_and(|d| d <= bound), || format!("PUT by curl: visible after {d:?}, bound {bound:?}"));
    c.eq("created: bytes", std::fs::read(&p_new).ok(), Some(v_new));

    // A deleted object, whose entry and attributes the kernel holds.
    let p_del = mp.join("deleted");
    s3c.put("t3/deleted", b"to be deleted\n", &[]);
    assert!(poll(give_up, || std::fs::metadata(&p_del).is_ok()).is_some(), "deleted: never appeared");
    assert_eq!(std::fs::read(&p_del).unwrap(), b"to be deleted\n");
    // A read invalidates atime, so the next stat would ask the daemon at
    // once: stat now, so that the kernel holds fresh attributes for the TTL.
    assert!(std::fs::metadata(&p_del).is_ok());
    s3c.delete("t3/deleted");
    let d = poll(give_up, || std::fs::metadata(&p_del).err().is_some_and(|e| e.raw_os_error() == Some(libc::ENOENT)));
    report.push(format!("deleted: ENOENT after {d:?}"));
    c.check(d.is_some_and(|d| d <= bound), || format!("DELETE by curl: gone after {d:?}, bound {bound:?}"));

    // An overwrite with a different size, the old bytes read (page cache).
    let p_ow = mp.join("overwritten");
    let old = pseudo_random(0x32, 100_000);
    let new = pseudo_random(0x33, 150_001);
    s3c.put("t3/overwritten", &old, &[]);
    assert!(poll(give_up, || std::fs::metadata(&p_ow).is_ok()).is_some(), "overwritten: never appeared");
    assert_eq!(std::fs::read(&p_ow).unwrap(), old);
    assert_eq!(std::fs::metadata(&p_ow).unwrap().len(), old.len() as u64);
    s3c.put("t3/overwritten", &new, &[]);
    let t0 = Instant::now();
    let d_size = poll(give_up, || std::fs::metadata(&p_ow).is_ok_and(|m| m.len() == new.len() as u64));
    let d_bytes = poll(give_up.saturating_sub(t0.elapsed()), || std::fs::read(&p_ow).is_ok_and(|b| b == new))
        .map(|_| t0.elapsed());
    report.push(format!("overwritten (size change): new size after {d_size:?}, new bytes after {d_bytes:?}"));
    c.check(d_size.is_some_and(|d| d <= bound), || format!("overwrite: new size after {d_size:?}, bound {bound:?}"));
    c.check(d_bytes.is_some_and(|d| d <= bound), || format!("overwrite: new bytes after {d_bytes:?}, bound {bound:?}"));

    // An overwrite keeping the size (only the bytes and mtime change).
    let p_same = mp.join("samesize");
    let old = pseudo_random(0x34, 65_536);
    let new = pseudo_random(0x35, 65_536);
    s3c.put("t3/samesize", &old, &[]);
    assert!(poll(give_up, || std::fs::metadata(&p_same).is_ok()).is_some(), "samesize: never appeared");
    assert_eq!(std::fs::read(&p_same).unwrap(), old);
    assert!(std::fs::metadata(&p_same).is_ok());
    s3c.put("t3/samesize", &new, &[]);
    let d = poll(give_up, || std::fs::read(&p_same).is_ok_and(|b| b == new));
    report.push(format!("overwritten (same size): new bytes after {d:?}"));
    c.check(d.is_some_and(|d| d <= bound), || format!("same-size overwrite: new bytes after {d:?}, bound {bound:?}"));

    eprintln!("visibility (attr/entry TTL {ttl:?}, bound {bound:?}):\n  {}", report.join("\n  "));
    drop(m);
    c.finish("external_writer_visible_within_ttl");
}

// ---------------------------------------------------------------------------
// 4. What the bucket holds after ordinary POSIX work through the mount.
// ---------------------------------------------------------------------------

#[test]
fn metadata_in_the_bucket() {
    let srv = S3Server::shared();
    let s3c = srv.client();
    let cfg = srv.ovfs_config("/t4", "");
    let mut c = Checks::default();
    let um = umask();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let t_start = now_secs();

    // Local model of every file's bytes.
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let deep = pseudo_random(0x41, 777);
    let f = b"the file f\n".to_vec();
    let ten = pseudo_random(0x42, 10 * MIB);
    let patch = pseudo_random(0x43, 70_001);
    let seek_blocks = 777usize; // dd bs=4096
    std::fs::write(w.join("deep"), &deep).unwrap();
    std::fs::write(w.join("f"), &f).unwrap();
    std::fs::write(w.join("ten"), &ten).unwrap();
    std::fs::write(w.join("patch"), &patch).unwrap();

    let mut m = Mounted::start(&cfg);
    let t0 = Instant::now();
    sh(
        &format!(
            "set -e
             mkdir -p a/b/c
             cp {w}/deep a/b/c/deep.txt
             cp {w}/f f; chmod 0600 f
             ln -s f l
             mkdir src
             for i in $(seq -w 0 99); do printf 'file %s\\n' $i > src/f$i; done
             chmod 0604 src/f07
             mv src dst
             test ! -e src; test \"$(ls dst | wc -l)\" = 100
             printf 'line1\\n' > app.txt; chmod 0604 app.txt; printf 'line2\\n' >> app.txt
             dd if={w}/ten of=ten.bin bs=1M status=none; chmod 0640 ten.bin
             dd if={w}/patch of=ten.bin bs=4096 seek={seek_blocks} conv=notrunc status=none
             head -c 1000 {w}/ten > tu; truncate -s 5000 tu
             head -c 1000 {w}/ten > td; truncate -s 100 td",
            w = w.display()
        ),
        &m.mountpoint,
        &|| m.log_text(),
    );
    let t_ops = t0.elapsed();
    model.insert("a/b/c/deep.txt".into(), deep);
    model.insert("f".into(), f.clone());
    model.insert("l".into(), b"f".to_vec());
    for i in 0..100 {
        model.insert(format!("dst/f{i:02}"), format!("file {i:02}\n").into_bytes());
    }
    model.insert("app.txt".into(), b"line1\nline2\n".to_vec());
    let mut ten_m = ten.clone();
    let off = seek_blocks * 4096;
    ten_m[off..off + patch.len()].copy_from_slice(&patch);
    model.insert("ten.bin".into(), ten_m.clone());
    let mut tu = ten[..1000].to_vec();
    tu.resize(5000, 0);
    model.insert("tu".into(), tu);
    model.insert("td".into(), ten[..100].to_vec());

    // Keys: the files plus the markers of the directories made by mkdir.
    let t0 = Instant::now();
    let listed: BTreeMap<String, u64> = s3c.list("t4/").into_iter().collect();
    let mut want_keys: BTreeSet<String> = model.keys().map(|k| format!("t4/{k}")).collect();
    for d in ["a/", "a/b/", "a/b/c/", "dst/"] {
        want_keys.insert(format!("t4/{d}"));
    }
    let got_keys: BTreeSet<String> = listed.keys().cloned().collect();
    c.check(got_keys == want_keys, || {
        format!(
            "ListObjectsV2 t4/: missing {:?}, unexpected {:?}",
            want_keys.difference(&got_keys).collect::<Vec<_>>(),
            got_keys.difference(&want_keys).collect::<Vec<_>>()
        )
    });

    // Bytes and metadata of every file object.
    let file_mode = |perm: u32| (0o100000 | perm).to_string();
    let mut want_mode: BTreeMap<&str, String> = BTreeMap::new();
    for k in model.keys() {
        want_mode.insert(k.as_str(), file_mode(0o666 & !um));
    }
    want_mode.insert("f", file_mode(0o600));
    want_mode.insert("dst/f07", file_mode(0o604));
    want_mode.insert("app.txt", file_mode(0o604));
    want_mode.insert("ten.bin", file_mode(0o640));
    want_mode.insert("l", (0o120000 | 0o777).to_string());
    for (k, data) in &model {
        let key = format!("t4/{k}");
        let got = s3c.get(&key);
        let (gs, ws) = (got.as_deref().map(sha256), sha256(data));
        c.check(gs.as_deref() == Some(ws.as_str()), || {
            format!(
                "bytes of {key}: sha256 {gs:?} ({:?} bytes), model {ws} ({} bytes)",
                got.map(|g| g.len()),
                data.len()
            )
        });
        let h = s3c.head(&key);
        c.eq(
            &format!("x-amz-meta-mode of {key} [{}]", h.metas()),
            h.meta("mode"),
            Some(want_mode[k.as_str()].as_str()),
        );
        c.eq(&format!("x-amz-meta-uid of {key}"), h.meta("uid"), Some("0"));
        c.eq(&format!("x-amz-meta-gid of {key}"), h.meta("gid"), Some("0"));
        let mt: Option<u64> = h.meta("mtime").and_then(|v| v.parse().ok());
        c.check(mt.is_some_and(|t| t + 5 >= t_start && t <= now_secs() + 5), || {
            format!("x-amz-meta-mtime of {key}: {:?}, want a time of this run (>= {t_start})", h.meta("mtime"))
        });
    }
    let l_mode: Option<u32> = s3c.head("t4/l").meta("mode").and_then(|v| v.parse().ok());
    c.check(l_mode.is_some_and(|m| m & 0o170000 == 0o120000), || format!("symlink l: mode {l_mode:?} lacks S_IFLNK"));
    for d in ["a/", "a/b/c/", "dst/"] {
        let h = s3c.head(&format!("t4/{d}"));
        eprintln!("metadata: marker t4/{d}: HTTP {} meta [{}]", h.status, h.metas());
    }
    let t_check = t0.elapsed();

    // 1000 objects put by another program (curl), then a fresh mount.
    let many: Vec<String> = (0..1000).map(|i| format!("t4/many/k{i:04}")).collect();
    let t0 = Instant::now();
    s3c.put_many(&many, b"data\n");
    let t_put = t0.elapsed();
    m.stop();
    drop(m);
    let m = Mounted::start(&cfg);
    let mp = m.mountpoint.clone();
    let st = stat_all(&mp, "%a", &["f", "ten.bin", "dst/f07", "app.txt", "tu", "td"]);
    c.eq("after remount: stat -c %a f", st["f"].as_str(), "600");
    c.eq("after remount: stat -c %a ten.bin", st["ten.bin"].as_str(), "640");
    c.eq("after remount: stat -c %a dst/f07", st["dst/f07"].as_str(), "604");
    c.eq("after remount: stat -c %a app.txt", st["app.txt"].as_str(), "604");
    c.eq("after remount: readlink l", std::fs::read_link(mp.join("l")).ok(), Some(PathBuf::from("f")));
    for k in ["ten.bin", "tu", "td", "app.txt"] {
        let got = std::fs::read(mp.join(k)).ok().map(|b| sha256(&b));
        c.eq(&format!("after remount: sha256 of {k}"), got, Some(sha256(&model[k])));
    }
    let t0 = Instant::now();
    let (ok, out) = sh_try("ls -l many", &mp);
    let t_ls = t0.elapsed();
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with("total ")).collect();
    let names: BTreeSet<&str> = lines.iter().filter_map(|l| l.split_whitespace().last()).collect();
    let want_names: BTreeSet<String> = (0..1000).map(|i| format!("k{i:04}")).collect();
    c.check(
        ok && lines.len() == 1000 && names.len() == 1000 && want_names.iter().all(|n| names.contains(n.as_str())),
        || {
            format!(
                "ls -l many: ok={ok}, {} lines, {} distinct names; first lines:\n{}",
                lines.len(),
                names.len(),
                tail(&out, 5)
            )
        },
    );
    let want_line = format!("{} 1 root root 5 ", mode_string(0o644));
    let bad: Vec<&&str> = lines.iter().filter(|l| !l.starts_with(&want_line)).take(3).collect();
    c.check(bad.is_empty(), || format!("ls -l many: lines not starting with {want_line:?}: {bad:?}"));

    // A listing holding a symlink (`ls -l` is READDIRPLUS + lstat per entry).
    let (ok, out) = sh_try("ls -l", &mp);
    let l_line = out.lines().find(|l| l.ends_with(" l -> f"));
    c.check(ok && l_line.is_some_and(|l| l.starts_with("lrwxrwxrwx")), || {
        format!("`ls -l` of a directory holding the symlink l (stored as s3fs does): ok={ok}, output:\n{out}")
    });
    let (ok, out) = sh_try("stat -c '%a %F' f l", &mp);
    c.check(ok && out == "600 regular file\n777 symbolic link\n", || format!("stat f l after `ls -l`: ok={ok}: {out}"));

    eprintln!(
        "metadata_in_the_bucket: ops through the mount {t_ops:?}, bucket checks {t_check:?}, \
         1000 curl PUTs {t_put:?}, `ls -l` of 1000 objects after remount {t_ls:?}"
    );
    drop(m);
    c.finish("metadata_in_the_bucket");
}

/// `ls -l`'s permission string of a regular file with these bits.
fn mode_string(perm: u32) -> String {
    let mut s = String::from("-");
    for shift in [6, 3, 0] {
        let b = (perm >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}
