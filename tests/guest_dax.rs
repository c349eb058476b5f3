//! DAX in a real guest: QEMU 11.1 (trixie-backports, run in the trixie chroot
//! that `tests/tools/trixie-qemu.sh` builds and caches under `.work/`) under
//! TCG, with the generic `vhost-user-test-device-pci` (virtio-id 26), the
//! trixie cloud kernel, and ovfs started with `--dax-window 64M`. The guest
//! mounts with `-o dax=always` (the kernel refuses that without a working
//! window) and runs `tests/guest/scripts/dax.sh`:
//!
//! - dmesg shows the window (`virtiofs virtio0: Cache len: 0x4000000 ...`);
//! - the sha256 of `big.bin`, read through the window, is the back-end's;
//! - `w.bin` is created with plain writes, overwritten in place (writable
//!   DAX mapping), written through mmap + msync + fsync (`tests/guest/dax-mmap.c`,
//!   built statically here), read back, and read again after a remount
//!   (a second boot; the memory case: after a cache drop in the same boot).
//!
//! The host then checks the back-end's `w.bin` byte for byte against what
//! the guest wrote, and the daemon's log for the SETUPMAPPING counts (so a
//! guest that silently fell back to FUSE READ/WRITE fails the test).
//!
//! Cases: the object-store file system over OpenDAL's `fs` service and over
//! S3 (SeaweedFS, `tests/common/s3.rs`), the passthrough file system, and the
//! memory back-end. The memory back-end starts empty and dies with the daemon,
//! so that case is one boot: the guest writes `big.bin` itself (in place
//! through writable DAX mappings), runs the same steps, then drops its caches
//! (the files' inodes are evicted: FORGET and REMOVEMAPPING reach the daemon)
//! and reads `big.bin` and `w.bin` back through the window, compared by
//! sha256 with what the host computes. There is no host view of a memory
//! back-end; what the host checks instead, from the daemon's metrics
//! (`--metrics-addr`, scraped while the guest waits on the console), is that
//! after the drop nothing is dirty and the back-end took the writes, and that
//! the rereads fetched from the back-end.
//! The test fails (never skips) when the chroot cannot be built; it needs
//! root, network on first use (~450 MB download, then cached), gcc, and what
//! `tests/tools/install-deps.sh` installs. Guests take turns.

#[path = "common/s3.rs"]
mod s3;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use s3::{pseudo_random, sha256, S3Server};

const MIB: usize = 1 << 20;
const TAG: &str = "myfs";
static GUEST: Mutex<()> = Mutex::new(());

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cached trixie chroot with QEMU 11.1 (built on first use).
fn chroot() -> PathBuf {
    let out = Command::new(repo().join("tests/tools/trixie-qemu.sh")).output().expect("run trixie-qemu.sh");
    assert!(
        out.status.success(),
        "cannot build the trixie chroot with QEMU 11.1 needed for the DAX guest test \
         (tests/tools/trixie-qemu.sh; needs root, debootstrap and network on first use): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn chroot_kernel(root: &Path) -> String {
    let mut ks: Vec<String> = fs::read_dir(root.join("boot"))
        .expect("chroot /boot")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
        .collect();
    ks.sort();
    format!("/boot/{}", ks.last().expect("no cloud kernel in the chroot"))
}

/// What the guest script should leave in `w.bin`.
fn expected_w(big: &[u8]) -> Vec<u8> {
    let mut w = big[..4 * MIB].to_vec();
    w[MIB..MIB + 65536].fill(b'X');
    w[3 * MIB..3 * MIB + 18].copy_from_slice(b"hello-through-mmap");
    w
}

enum Store<'a> {
    /// ObjectFs over OpenDAL's fs service rooted at the data dir.
    ObjectFsDir,
    /// ObjectFs over S3, objects under this key prefix.
    S3(&'a S3Server, String),
    /// PassthroughFs of the data dir.
    Passthrough,
    /// ObjectFs over OpenDAL's memory service (one boot, see the module note).
    Memory,
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One test's files, inside the chroot's /tmp (QEMU sees them at `inside`).
struct Case<'a> {
    name: &'a str,
    store: Store<'a>,
    root: PathBuf,
    kernel: String,
    work: PathBuf,
    inside: PathBuf,
    data: PathBuf,
}

impl Case<'_> {
    /// Start ovfs with a 64 MiB window on the case's back-end; logs to `log`.
    fn daemon(&self, log: &Path) -> Daemon {
        let sock = self.work.join("ovfs.sock");
        let _ = fs::remove_file(&sock);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ovfs"));
        cmd.arg("--socket-path").arg(&sock).args(["--tag", TAG, "--dax-window", "64M", "--log-level", "info"]);
        let cfg = self.work.join("ovfs.toml");
        match &self.store {
            Store::ObjectFsDir => {
                fs::write(&cfg, format!("[storage_settings]\ntype = \"fs\"\nroot = \"{}\"\n", self.data.display()))
                    .unwrap();
                cmd.arg("--config").arg(&cfg);
            }
            Store::S3(s3, prefix) => {
                fs::write(&cfg, s3.ovfs_config(prefix, "")).unwrap();
                cmd.arg("--config").arg(&cfg);
            }
            Store::Passthrough => {
                cmd.arg("--shared-dir").arg(&self.data);
            }
            Store::Memory => {
                fs::write(&cfg, "[storage_settings]\ntype = \"memory\"\n").unwrap();
                cmd.arg("--config").arg(&cfg).arg("--metrics-addr").arg(format!("unix:{}", self.metrics().display()));
            }
        }
        let d = Daemon(cmd.stderr(fs::File::create(log).unwrap()).spawn().expect("start ovfs"));
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(t0.elapsed() < Duration::from_secs(20), "ovfs did not create its socket; log:\n{}", read(log));
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    fn metrics(&self) -> PathBuf {
        self.work.join("metrics.sock")
    }

    /// Boot the guest against a fresh daemon; returns (console, daemon log, seconds).
    /// Each `DAX-WAIT NAME` line the guest prints calls `on_wait(NAME)`, then
    /// the guest gets a line on its console and goes on.
    fn boot(&self, phase: &str, params: &str, on_wait: &mut dyn FnMut(&str)) -> (String, String, f64) {
        let log = self.work.join(format!("ovfs-{phase}.log"));
        let mut daemon = self.daemon(&log);
        let console = self.work.join(format!("console-{phase}.log"));
        // QEMU 11.1 inside the chroot (a private mount namespace for /dev and /proc).
        let qemu = format!(
            "qemu-system-x86_64 -accel tcg -m 1024M -smp 2 -nodefaults -no-user-config -display none -monitor none \
             -serial stdio -no-reboot -kernel {k} -initrd {i}/initrd.gz \
             -append 'console=ttyS0 panic=-1 quiet ovfs.tag={TAG} ovfs.mntopts=dax=always ovfs.phase={phase} {params}' \
             -object memory-backend-memfd,id=mem,size=1024M,share=on -numa node,memdev=mem \
             -chardev socket,id=char0,path={i}/ovfs.sock \
             -device vhost-user-test-device-pci,chardev=char0,virtio-id=26,num_vqs=2,config_size=40,vq_size=1024",
            k = self.kernel,
            i = self.inside.display()
        );
        let r = self.root.display();
        let script = format!("mount --bind /dev {r}/dev && mount -t proc proc {r}/proc && exec chroot {r} {qemu}");
        let t0 = Instant::now();
        let mut qemu = Command::new("timeout")
            .args(["-k", "10", "600", "unshare", "--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(fs::File::create(&console).unwrap())
            .stderr(fs::File::create(self.work.join(format!("qemu-{phase}.err"))).unwrap())
            .spawn()
            .expect("run qemu");
        let mut waits_seen = 0;
        let status = loop {
            if let Some(st) = qemu.try_wait().unwrap() {
                break st;
            }
            let waits: Vec<String> =
                read(&console).lines().filter_map(|l| l.trim().strip_prefix("DAX-WAIT ").map(str::to_string)).collect();
            for w in &waits[waits_seen..] {
                on_wait(w);
                let _ = writeln!(qemu.stdin.as_mut().unwrap(), "go");
            }
            waits_seen = waits.len();
            std::thread::sleep(Duration::from_millis(200));
        };
        let secs = t0.elapsed().as_secs_f64();
        // The daemon exits when QEMU disconnects.
        let t1 = Instant::now();
        while daemon.0.try_wait().unwrap().is_none() && t1.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = daemon.0.kill();
        let _ = daemon.0.wait();
        let con = read(&console);
        let dlog = read(&log);
        if !con.contains("OVFS-GUEST-END rc=0") || !con.contains("DAX-OK") {
            panic!(
                "[{}/{phase}] guest failed (qemu {status:?}, {secs:.1}s; work dir {} kept):\nqemu stderr: {}\nconsole:\n{con}\novfs log:\n{dlog}",
                self.name,
                self.work.display(),
                read(&self.work.join(format!("qemu-{phase}.err"))),
            );
        }
        (con, dlog, secs)
    }
}

fn run_case(name: &str, store: Store<'_>, big_len: usize) {
    let _turn = GUEST.lock().unwrap_or_else(|p| p.into_inner());
    let root = chroot();
    let kernel = chroot_kernel(&root);
    let tmpdir = tempfile::Builder::new().prefix(&format!("ovfs-dax-{name}-")).tempdir_in(root.join("tmp")).unwrap();
    let inside = Path::new("/tmp").join(tmpdir.path().file_name().unwrap());
    let work = tmpdir.path().to_path_buf();
    // Kept when the test fails (for the logs); removed at the end on success.
    std::mem::forget(tmpdir);
    let data = work.join("data");
    fs::create_dir(&data).unwrap();
    let case = Case { name, store, root, kernel, work: work.clone(), inside, data: data.clone() };

    // Guest helper and initramfs.
    let helper = work.join("dax-mmap");
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&helper)
        .arg(repo().join("tests/guest/dax-mmap.c"))
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc -static dax-mmap.c failed (needs gcc and libc6-dev)");
    let st = Command::new(repo().join("tests/guest/build-initramfs.sh"))
        .arg("-o")
        .arg(work.join("initrd.gz"))
        .arg("-s")
        .arg(repo().join("tests/guest/scripts/dax.sh"))
        .arg("-b")
        .arg(&helper)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "build-initramfs failed");

    // The back-end's big file (the memory case's guest writes it itself).
    let seed = 0xDA7 + big_len as u64;
    let big = pseudo_random(seed, big_len);
    let big_sha = sha256(&big);
    let mut params = format!("ovfs.bigsha={big_sha}");
    match &case.store {
        Store::S3(s3, prefix) => s3.client().put(&format!("{prefix}/big.bin"), &big, &[]),
        Store::Memory => params.push_str(&format!(" ovfs.gen={seed}:{big_len}")),
        _ => fs::write(data.join("big.bin"), &big).unwrap(),
    }

    // Memory case: metrics at the guest's two waits (after the cache drop, after the rereads).
    let mut snaps: Vec<(String, String)> = Vec::new();
    let metrics = case.metrics();
    let (con, dlog, secs) = case.boot("write", &params, &mut |w| snaps.push((w.to_string(), scrape(&metrics))));
    let line = |prefix: &str| con.lines().find(|l| l.contains(prefix)).unwrap_or("").trim().to_string();
    let dmesg = line("DAX-DMESG:");
    assert!(dmesg.contains("Cache len: 0x4000000"), "[{name}] window not 64 MiB: {dmesg}");
    assert!(line("DAX-SHA big.bin").ends_with(&big_sha), "[{name}] big.bin sha");

    // Back-end bytes of w.bin.
    let want = expected_w(&big);
    let want_sha = sha256(&want);
    assert!(line("DAX-SHA w.bin").ends_with(&want_sha), "[{name}] guest's w.bin sha");
    let got = match &case.store {
        Store::S3(s3, prefix) => s3.client().get(&format!("{prefix}/w.bin")).expect("w.bin in the bucket"),
        Store::Memory => {
            check_memory(name, &con, &snaps, &big_sha, &want_sha);
            // The DAX counters of the metrics endpoint saw the window in use.
            let last = snaps.last().map(|s| s.1.as_str()).unwrap_or("");
            let value =
                |k: &str| last.lines().find_map(|l| l.strip_prefix(k)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
            assert!(
                value("ovfs_dax_setups_total ") > 0.0 && value("ovfs_dax_refused_total ") == 0.0,
                "[{name}] DAX counters in the metrics:\n{}",
                last.lines().filter(|l| l.starts_with("ovfs_dax")).collect::<Vec<_>>().join("\n")
            );
            want.clone()
        }
        _ => fs::read(data.join("w.bin")).expect("w.bin in the back-end"),
    };
    assert!(got == want, "[{name}] w.bin in the back-end differs ({} bytes, want {})", got.len(), want.len());

    // The guest really used the window.
    let (mut setups, mut writable) = (0u64, 0u64);
    for l in dlog.lines().filter(|l| l.contains("DAX session:")) {
        let n: Vec<u64> = l
            .split("DAX session:")
            .nth(1)
            .unwrap_or("")
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect();
        if n.len() >= 2 {
            setups += n[0];
            writable += n[1];
        }
    }
    let min_setups = (big_len / (2 * MIB)) as u64;
    assert!(setups >= min_setups, "[{name}] only {setups} SETUPMAPPING (want >= {min_setups}); log:\n{dlog}");
    assert!(writable >= 1, "[{name}] no writable mapping; log:\n{dlog}");

    if matches!(case.store, Store::Memory) {
        eprintln!(
            "[{name}] OK ({secs:.1}s, one boot): {dmesg}; big.bin {} MiB written by the guest, sha256 {big_sha} \
             read through DAX before and after a cache drop; w.bin {want_sha} after it; \
             {setups} SETUPMAPPING ({writable} writable)",
            big_len / MIB
        );
        let _ = fs::remove_dir_all(&work);
        return;
    }

    // Second boot, fresh daemon: read back through DAX from the back-end.
    let (con2, _, secs2) = case.boot("verify", &format!("ovfs.wsha={want_sha}"), &mut |_| {});
    assert!(con2.contains(&format!("DAX-SHA-REMOUNT w.bin {want_sha}")), "[{name}] w.bin after remount");
    eprintln!(
        "[{name}] OK ({secs:.1}s + {secs2:.1}s): {dmesg}; big.bin {} MiB sha256 {big_sha} read through DAX; \
         w.bin {want_sha} in the back-end and after a remount; {setups} SETUPMAPPING ({writable} writable)",
        big_len / MIB
    );
    let _ = fs::remove_dir_all(&work);
}

/// GET /metrics from the daemon's unix socket (the body; empty on failure).
fn scrape(sock: &Path) -> String {
    let mut body = String::new();
    if let Ok(mut c) = std::os::unix::net::UnixStream::connect(sock) {
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        if c.write_all(b"GET /metrics HTTP/1.1\r\nHost: ovfs\r\n\r\n").is_ok() {
            let _ = c.read_to_string(&mut body);
        }
    }
    body
}

fn metric_opt(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn metric(body: &str, name: &str) -> f64 {
    metric_opt(body, name).unwrap_or_else(|| panic!("no metric {name} in:\n{body}"))
}

/// Memory case: the rereads after the cache drop have the written bytes, and
/// the metrics scraped at the guest's waits show the data was in the back-end
/// (nothing dirty) by the drop and the rereads fetched it from there.
fn check_memory(name: &str, con: &str, snaps: &[(String, String)], big_sha: &str, w_sha: &str) {
    assert!(con.contains(&format!("DAX-SHA-REREAD big.bin {big_sha}")), "[{name}] big.bin reread");
    assert!(con.contains(&format!("DAX-SHA-REREAD w.bin {w_sha}")), "[{name}] w.bin reread");
    let names: Vec<&str> = snaps.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(names, ["dropped", "reread"], "[{name}] the guest's waits");
    let (at_drop, at_end) = (&snaps[0].1, &snaps[1].1);
    let calls = |body: &str, op: &str| metric(body, &format!("ovfs_backend_calls_total{{mount=\"root\",op=\"{op}\"}}"));
    assert_eq!(metric(at_drop, "ovfs_dirty_bytes{mount=\"root\"}"), 0.0, "[{name}] dirty after the cache drop");
    let writes = calls(at_drop, "write");
    assert!(writes >= 2.0, "[{name}] {writes} back-end writes for big.bin and w.bin by the cache drop");
    let reads = calls(at_end, "read") - calls(at_drop, "read");
    assert!(reads >= 2.0, "[{name}] the rereads after the cache drop made {reads} back-end reads (want >= 2)");
    assert_eq!(calls(at_end, "write"), writes, "[{name}] rereads wrote to the back-end");
    eprintln!(
        "[{name}] metrics: {writes} back-end writes by the cache drop, dirty 0; {reads} back-end reads for the rereads; \
         cache hits {} misses {}",
        metric_opt(at_end, "ovfs_cache_hits_total{mount=\"root\"}").unwrap_or(-1.0),
        metric_opt(at_end, "ovfs_cache_misses_total{mount=\"root\"}").unwrap_or(-1.0)
    );
}

fn read(p: &Path) -> String {
    String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned()
}

#[test]
fn guest_dax_object_fs() {
    run_case("objectfs", Store::ObjectFsDir, 64 * MIB);
}

#[test]
fn guest_dax_passthrough() {
    run_case("passthrough", Store::Passthrough, 16 * MIB);
}

#[test]
fn guest_dax_memory() {
    run_case("memory", Store::Memory, 64 * MIB);
}

#[test]
fn guest_dax_s3() {
    let s3 = S3Server::shared();
    run_case("s3", Store::S3(&s3, "dax".to_string()), 64 * MIB);
}
