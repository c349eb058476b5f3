//! The guest harness shared by the guest test files (`#[path =
//! "common/guest.rs"] mod guest;`): a test's work directory ([`Work`]), the
//! vhost-user daemons it starts ([`Daemon`]) and the outcome of one QEMU boot
//! of the busybox initramfs of `tests/guest/build-initramfs.sh` ([`Boot`]).
//!
//! Guests under TCG are slow and the machine may have few cores, so the tests
//! of one binary take turns ([`serial`]). Work files go to a temporary
//! directory under `CARGO_TARGET_TMPDIR/<group>` (kept, and named on stderr,
//! when a test fails, or always with `OVFS_GUEST_KEEP=1`); the initramfs base
//! image is cached there between runs. Sockets live in a short `/tmp`
//! directory.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub static GUESTS: Mutex<()> = Mutex::new(());

/// One guest test at a time (a failed test must not poison the others).
pub fn serial() -> MutexGuard<'static, ()> {
    GUESTS.lock().unwrap_or_else(|e| e.into_inner())
}

pub const INSTALL: &str = "run tests/tools/install-deps.sh (CI runs it before the tests)";
/// Per boot; the slowest boot (pjdfstest, stress) takes ~1.5 min.
pub const BOOT_TIMEOUT_S: u32 = 420;

/// How [`Work::boot_with`] runs QEMU.
pub struct BootOpts {
    pub timeout_s: u32,
    /// virtio-fs tag.
    pub tag: &'static str,
    /// Guest RAM as Kata gives it: memory-backend-file on /dev/shm, share=on.
    pub kata_mem: bool,
}

impl Default for BootOpts {
    fn default() -> Self {
        BootOpts { timeout_s: BOOT_TIMEOUT_S, tag: "myfs", kata_mem: false }
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn guest_dir() -> PathBuf {
    repo().join("tests/guest")
}

pub fn script(name: &str) -> PathBuf {
    guest_dir().join("scripts").join(name)
}

/// PATH for the helper scripts: the caller's, plus cargo's bin directory
/// (where install-deps.sh puts pjdfstest and virtiofsd).
pub fn search_path() -> OsString {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(c) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(c).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    for d in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        dirs.push(PathBuf::from(d));
    }
    std::env::join_paths(dirs).expect("PATH")
}

pub fn find_exe(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&search_path())
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

pub fn require_exe(name: &str, what: &str) -> PathBuf {
    find_exe(name).unwrap_or_else(|| panic!("{what} ({name}) not found: {INSTALL}"))
}

/// QEMU, the guest kernel and busybox-static: what every guest test needs.
pub fn require_guest_deps() {
    require_exe("qemu-system-x86_64", "QEMU");
    let kernel = fs::read_dir("/boot")
        .map(|d| {
            d.filter_map(|e| e.ok()).any(|e| {
                e.file_name().to_string_lossy().starts_with("vmlinuz-")
                    && e.file_name().to_string_lossy().ends_with("-cloud-amd64")
            })
        })
        .unwrap_or(false);
    assert!(kernel, "no guest kernel /boot/vmlinuz-*-cloud-amd64: {INSTALL}");
    assert!(Path::new("/bin/busybox").exists(), "no /bin/busybox (busybox-static): {INSTALL}");
}

pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn read_lossy(p: &Path) -> String {
    fs::read(p).map(|b| String::from_utf8_lossy(&b).replace('\r', "")).unwrap_or_default()
}

// ---------------------------------------------------------------- work dir

/// A test's work directory and socket directory; kept when the test fails.
pub struct Work {
    pub name: &'static str,
    pub dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
    pub socks: tempfile::TempDir,
    /// OVFS_WORK for the scripts: shared, so the initramfs base is cached.
    pub shared: PathBuf,
    pub started: Instant,
}

impl Work {
    /// Work files under `CARGO_TARGET_TMPDIR/<group>/<name>.*`.
    pub fn new(name: &'static str, group: &str) -> Work {
        let shared = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(group);
        fs::create_dir_all(&shared).unwrap_or_else(|e| panic!("mkdir {}: {e}", shared.display()));
        let dir = tempfile::Builder::new().prefix(&format!("{name}.")).tempdir_in(&shared).expect("work dir");
        // unix socket paths are limited to 108 bytes
        let socks = tempfile::Builder::new().prefix("ovfs-guest.").tempdir_in("/tmp").expect("socket dir");
        let path = dir.path().to_path_buf();
        eprintln!("[{name}] work dir {}", path.display());
        Work { name, dir: Some(dir), path, socks, shared, started: Instant::now() }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn sock(&self, name: &str) -> PathBuf {
        self.socks.path().join(name)
    }

    /// A fresh 0755 directory for a back-end.
    pub fn share(&self, rel: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let d = self.p(rel);
        fs::create_dir_all(&d).expect("mkdir share");
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod share");
        d
    }

    pub fn step(&self, what: &str, t: Instant) {
        eprintln!("[{}] {what}: {} (test so far {})", self.name, secs(t.elapsed()), secs(self.started.elapsed()));
    }

    /// A command with the scripts' environment.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("PATH", search_path()).env("OVFS_WORK", &self.shared).stdin(Stdio::null());
        c
    }

    pub fn run(&self, what: &str, c: &mut Command) -> Output {
        c.output().unwrap_or_else(|e| panic!("[{}] {what}: cannot run: {e}", self.name))
    }

    /// build-initramfs.sh with a test script and extra arguments (-b, -f).
    /// `test_script`: a name in tests/guest/scripts, or a path.
    pub fn initramfs(&self, name: &str, test_script: impl AsRef<Path>, extra: &[OsString]) -> PathBuf {
        let test_script = guest_dir().join("scripts").join(test_script.as_ref());
        let t = Instant::now();
        let out_path = self.p(&format!("{name}.cpio.gz"));
        let out = self.run(
            "build-initramfs.sh",
            self.cmd(guest_dir().join("build-initramfs.sh"))
                .arg("-o")
                .arg(&out_path)
                .arg("-s")
                .arg(&test_script)
                .args(extra),
        );
        assert!(
            out.status.success(),
            "[{}] build-initramfs.sh {} failed ({}): {}\n{INSTALL}",
            self.name,
            test_script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        self.step(&format!("initramfs {name}"), t);
        out_path
    }

    /// The initramfs for a second boot after basic.sh: remount.sh plus the
    /// SHA lines boot 1 printed, as /ovfs-expected.sha.
    pub fn remount_initramfs(&self, boot1: &Boot) -> PathBuf {
        let list = self.p("boot1.sha");
        let text: String = boot1.sha_lines().iter().map(|(p, h)| format!("SHA {p} {h}\n")).collect();
        fs::write(&list, text).expect("write boot1.sha");
        let mut spec = list.into_os_string();
        spec.push(":/ovfs-expected.sha");
        self.initramfs("remount", "remount.sh", &["-f".into(), spec])
    }

    /// One guest boot against the socket (tag `myfs`, memfd RAM, 2 vCPUs,
    /// 1 GiB); returns when QEMU is gone.
    pub fn boot(&self, name: &str, initrd: &Path, sock: &Path, cmdline: &str, daemon: &Daemon) -> Boot {
        self.boot_with(name, initrd, sock, cmdline, daemon, &BootOpts::default())
    }

    pub fn boot_with(
        &self,
        name: &str,
        initrd: &Path,
        sock: &Path,
        cmdline: &str,
        daemon: &Daemon,
        o: &BootOpts,
    ) -> Boot {
        let t = Instant::now();
        let log = self.p(&format!("{name}.log"));
        let mut c = self.cmd(guest_dir().join("run-guest.sh"));
        c.arg("-i").arg(initrd).arg("-s").arg(sock).args(["-t", o.tag, "-c", "2", "-m", "1024", "-Q"]);
        c.arg("-T").arg(o.timeout_s.to_string()).arg("-l").arg(&log);
        if o.kata_mem {
            c.arg("--kata-mem");
        }
        if !cmdline.is_empty() {
            c.arg("-a").arg(cmdline);
        }
        let out = self.run("run-guest.sh", &mut c);
        let b = Boot {
            test: self.name,
            name: name.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            log: read_lossy(&log),
            log_path: log,
            daemon_log: daemon.log.clone(),
        };
        self.step(&format!("boot {name} ({})", b.status), t);
        b
    }

    /// verify.sh: every SHA line of the boot against the back-end (a
    /// directory, or `--cat CMD`); returns the number of files that match.
    pub fn verify(&self, boot: &Boot, backend: &[OsString]) -> usize {
        let t = Instant::now();
        let out = self.run("verify.sh", self.cmd(script("verify.sh")).arg(&boot.log_path).args(backend));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "[{}] verify.sh {} failed ({}):\n{text}", self.name, boot.name, out.status);
        let want = boot.sha_lines().len();
        let matched =
            text.lines().find_map(|l| l.split("back-end: ").nth(1)).and_then(|r| r.strip_suffix(" differ")).and_then(
                |r| {
                    let (ok, bad) = r.split_once(" files match, ")?;
                    Some((ok.parse::<usize>().ok()?, bad.parse::<usize>().ok()?))
                },
            );
        assert_eq!(matched, Some((want, 0)), "[{}] verify.sh must match all {want} SHA lines:\n{text}", self.name);
        self.step(&format!("host verify of {want} SHA lines of {}", boot.name), t);
        want
    }
}

impl Work {
    /// tests/pjdfstest/summarize.sh over a pjdfstest boot's console log, with
    /// an optional expected-failures file; the output is kept as
    /// `<name>.summary`. Returns (the output, whether summarize.sh succeeded,
    /// [passed, failed, skipped], the names of unexpected failures).
    pub fn pjdfstest_summary(
        &self,
        name: &str,
        b: &Boot,
        expected: Option<&Path>,
    ) -> (String, bool, [u64; 3], Vec<String>) {
        let mut c = self.cmd(repo().join("tests/pjdfstest/summarize.sh"));
        if let Some(e) = expected {
            c.arg("-e").arg(e);
        }
        let out = self.run("summarize.sh", c.arg(&b.log_path));
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        fs::write(self.p(&format!("{name}.summary")), &text).expect("write summary");
        let summary = text.lines().rfind(|l| l.starts_with("pjdfstest: ") && l.ends_with(" skipped")).unwrap_or("");
        let counts: Vec<u64> = summary
            .strip_prefix("pjdfstest: ")
            .map(|r| r.split(", ").filter_map(|p| p.split(' ').next()?.parse().ok()).collect())
            .unwrap_or_default();
        let counts: [u64; 3] = counts
            .try_into()
            .unwrap_or_else(|_| panic!("[{}] {name}: no summary line ({}):\n{text}", self.name, out.status));
        // "pjdfstest: FAILED a::b::c: reason" -> "a::b::c"
        let unexpected: Vec<String> = text
            .lines()
            .filter(|l| !l.ends_with("(expected)"))
            .filter_map(|l| Some(l.strip_prefix("pjdfstest: FAILED ")?.split(": ").next()?.to_string()))
            .collect();
        eprintln!("[{}] {name}: {summary}", self.name);
        (text, out.status.success(), counts, unexpected)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let keep = std::env::var_os("OVFS_GUEST_KEEP").is_some_and(|v| v == "1");
        if std::thread::panicking() || keep {
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                let why = if keep { "OVFS_GUEST_KEEP=1" } else { "FAILED" };
                eprintln!("[{}] {why}: work files (console and daemon logs) kept in {}", self.name, p.display());
            }
        }
    }
}

// ---------------------------------------------------------------- daemons

/// A vhost-user daemon (ovfs or virtiofsd); stopped on drop.
pub struct Daemon {
    pub what: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(work: &Work, name: &str, program: &Path, args: &[OsString], sock: &Path) -> Daemon {
        let _ = fs::remove_file(sock);
        let log = work.p(&format!("{name}.daemon.log"));
        let child = work
            .cmd(program)
            .args(args)
            .stdout(Stdio::from(fs::File::create(&log).expect("daemon log")))
            .stderr(Stdio::from(fs::OpenOptions::new().append(true).open(&log).expect("daemon log")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Daemon { what: format!("{name} ({})", program.display()), child: Some(child), log }
    }

    /// ovfs with the given arguments, after `--socket-path SOCK`.
    pub fn ovfs(work: &Work, name: &str, sock: &Path, args: &[OsString]) -> Daemon {
        let mut a: Vec<OsString> = vec!["--socket-path".into(), sock.into()];
        a.extend_from_slice(args);
        Daemon::start(work, name, Path::new(env!("CARGO_BIN_EXE_ovfs")), &a, sock)
    }

    pub fn ovfs_dir(work: &Work, name: &str, sock: &Path, dir: &Path) -> Daemon {
        Daemon::ovfs(work, name, sock, &["--shared-dir".into(), dir.into(), "--opendal-fs".into()])
    }

    pub fn ovfs_config(work: &Work, name: &str, sock: &Path, config: &str, extra: &[&str]) -> Daemon {
        let cfg = work.p(&format!("{name}.toml"));
        fs::write(&cfg, config).expect("write config");
        let mut a: Vec<OsString> = vec!["--config".into(), cfg.into()];
        a.extend(extra.iter().map(OsString::from));
        Daemon::ovfs(work, name, sock, &a)
    }

    /// A daemon started by the caller (e.g. with an inherited socket).
    pub fn from_child(what: &str, child: Child, log: PathBuf) -> Daemon {
        Daemon { what: what.to_string(), child: Some(child), log }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL (as Kata stops the daemon) and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Wait up to `d` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, d: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + d;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        let Some(c) = self.child.as_mut() else { return };
        if let Ok(None) = c.try_wait() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// A daemon serving one VMM connection must exit once QEMU is gone, like virtiofsd.
    pub fn expect_exit_after_disconnect(&mut self) {
        let s = self.wait_exit(Duration::from_secs(15));
        let log = read_lossy(&self.log);
        assert!(
            s.is_some(),
            "{} still running 15 s after the VMM disconnected (no --keep-serving); log:\n{}",
            self.what,
            tail(&log, 30)
        );
        self.stop();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- boots

/// The outcome of one guest boot.
pub struct Boot {
    pub test: &'static str,
    pub name: String,
    pub status: ExitStatus,
    pub stderr: String,
    pub log: String,
    pub log_path: PathBuf,
    pub daemon_log: PathBuf,
}

impl Boot {
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.log.lines().map(str::trim_end)
    }

    pub fn context(&self) -> String {
        format!(
            "run-guest.sh: {}\n--- console log {} (tail):\n{}\n--- daemon log {} (tail):\n{}",
            self.stderr.trim(),
            self.log_path.display(),
            tail(&self.log, 60),
            self.daemon_log.display(),
            tail(&read_lossy(&self.daemon_log), 20)
        )
    }

    /// run-guest.sh exit 0, the end marker with rc=0, no FAIL line, and
    /// every one of `passes` as a whole line.
    pub fn assert_passed(&self, passes: &[String]) {
        let fails: Vec<&str> = self.lines().filter(|l| l.starts_with("FAIL")).collect();
        assert!(
            self.status.success() && self.lines().any(|l| l == "OVFS-GUEST-END rc=0") && fails.is_empty(),
            "[{}] guest boot {} failed: run-guest.sh {}, FAIL lines: {fails:#?}\n{}",
            self.test,
            self.name,
            self.status,
            self.context()
        );
        let have: BTreeSet<&str> = self.lines().collect();
        let missing: Vec<&String> = passes.iter().filter(|p| !have.contains(p.as_str())).collect();
        assert!(
            missing.is_empty(),
            "[{}] guest boot {}: expected lines missing: {missing:#?}\n{}",
            self.test,
            self.name,
            self.context()
        );
    }

    /// `SHA <path> <sha256>` lines, by path.
    pub fn sha_lines(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for l in self.lines() {
            let w: Vec<&str> = l.split(' ').collect();
            if w.len() == 3 && w[0] == "SHA" && w[2].len() == 64 && w[2].bytes().all(|b| b.is_ascii_hexdigit()) {
                if let Some(old) = m.insert(w[1].to_string(), w[2].to_string()) {
                    panic!("[{}] boot {}: two SHA lines for {} ({old}, {})", self.test, self.name, w[1], w[2]);
                }
            }
        }
        m
    }

    /// Lines starting with `prefix` (e.g. "TIME ", "DELAY ").
    pub fn tagged(&self, prefix: &str) -> Vec<String> {
        self.lines().filter(|l| l.starts_with(prefix)).map(str::to_string).collect()
    }

    /// The number in the line `PASS <prefix><n><suffix>`.
    pub fn pass_count(&self, prefix: &str, suffix: &str) -> Option<u64> {
        self.lines().find_map(|l| l.strip_prefix("PASS ")?.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
    }
}

pub fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
