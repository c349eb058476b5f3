//! kata-sim: ovfs started exactly as Kata's two runtimes start a virtio-fs
//! daemon, serving a real Linux guest (QEMU TCG) that uses the device as a
//! Kata guest does. See /work/shared/KATA.md, docs/KATA.md.
//!
//! `kata_sim_go_then_rs` (two boots, one SeaweedFS):
//! 1. Go runtime: the test creates and listens on the vhost-user socket and
//!    passes it as fd 3; the working directory is the sandbox bundle whose
//!    `config.json` carries the pod annotations; argv is
//!    `--syslog --cache=auto --shared-dir=<dir> --fd=3 --thread-pool-size=1
//!    --announce-submounts`; the host config comes from OVFS_CONFIG (argv
//!    unchanged). After the daemon started, the test bind-mounts a host
//!    directory and the volume's hostPath placeholder into the shared dir (as
//!    Kata does). QEMU with Kata's device line (`tag=kataShared`,
//!    `queue-size=1024`, RAM `memory-backend-file,mem-path=/dev/shm,share=on`
//!    with `-numa node,memdev=mem`) boots `tests/guest/scripts/kata.sh`, which
//!    mounts at `/run/kata-containers/shared/containers/` and checks a
//!    container rootfs (a static busybox that runs from the mount, symlinks,
//!    modes, owners), the bind mount made after start, escapes that fail, and
//!    writes + fsyncs a file in the annotated volume. On `KATA-SYNCED` the test
//!    SIGKILLs the daemon (as Kata stops it) and reads the object straight
//!    from S3: every fsync'd byte is there. A canary next to the shared dir is
//!    watched with inotify: never opened or changed.
//! 2. runtime-rs: `--socket-path S --shared-dir D --cache auto
//!    --thread-pool-size=1 -o announce_submounts`; the test waits for the
//!    stderr readiness line before starting QEMU (as runtime-rs does); the
//!    guest finds the phase-1 file in the volume and writes another.

#[path = "common/bind.rs"]
mod bind;
#[path = "common/guest.rs"]
mod guest;
#[path = "common/s3.rs"]
mod s3;

use bind::Bind;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use guest::{read_lossy, require_guest_deps, serial, tail, BootOpts, Daemon, Work};

const SID: &str = "5a1dbox0123456789";
const CID: &str = "c0ffee0123456789";
const VOL_DIR: &str = "c0ffee0123456789-8f1e2d3c4b5a6978-data";
const HOSTVOL_DIR: &str = "c0ffee0123456789-1234abcd5678ef90-config";

fn kata_boot() -> BootOpts {
    BootOpts { tag: "kataShared", kata_mem: true, timeout_s: 240 }
}

/// A container rootfs under `shared/<cid>/rootfs`, as Kata bind-mounts it.
fn rootfs(shared: &Path) {
    let r = shared.join(CID).join("rootfs");
    for d in ["bin", "etc", "home/user", "tmp"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    fs::set_permissions(r.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("busybox", r.join("bin/sh")).unwrap();
    symlink("/bin/busybox", r.join("bin/ls")).unwrap();
    fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n").unwrap();
    fs::write(r.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    chown(r.join("etc/shadow"), Some(0), Some(42)).unwrap();
    fs::set_permissions(r.join("etc/shadow"), fs::Permissions::from_mode(0o600)).unwrap();
    chown(r.join("home/user"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(r.join("home/user"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(r.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
}

fn inotify(paths: &[&Path]) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: plain syscall; the fd is owned below.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: inotify_init1 returned a fresh fd nothing else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    for p in paths {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: valid fd and NUL-terminated path.
        assert!(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_ALL_EVENTS) } >= 0);
    }
    fd
}

fn inotify_pending(fd: &std::os::fd::OwnedFd) -> isize {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    // SAFETY: buf is valid for writes of its length.
    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }.max(0)
}

fn yes(word: &str, len: usize) -> Vec<u8> {
    format!("{word}\n").into_bytes().into_iter().cycle().take(len).collect()
}

#[test]
fn kata_sim_go_then_rs() {
    let _g = serial();
    require_guest_deps();
    let srv = s3::S3Server::shared();
    let c = srv.client();
    let w = Work::new("kata_sim_go_then_rs", "kata-sim");
    let run = format!("run{}", std::process::id());

    // Host side of a sandbox.
    let sandbox = w.p(&format!("run/kata-containers/shared/sandboxes/{SID}"));
    let shared = sandbox.join("shared");
    fs::create_dir_all(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
    rootfs(&shared);
    let canary = sandbox.join("canary");
    fs::write(&canary, "host secret\n").unwrap();
    symlink("../canary", shared.join("escape-rel")).unwrap();
    symlink(&canary, shared.join("escape-abs")).unwrap();
    let hostvol = w.p("hostvol");
    fs::create_dir_all(&hostvol).unwrap();
    fs::write(hostvol.join("greeting"), "bound after start").unwrap();
    let placeholders = w.p("var/lib/ovfs/volumes");
    let placeholder = placeholders.join("pod-a-data");
    fs::create_dir_all(&placeholder).unwrap();

    // Host config (profiles) and the sandbox bundle (annotations).
    let config = w.p("ovfs.toml");
    fs::write(
        &config,
        format!(
            "[kata]\nplaceholder_root = \"{}\"\n\n[profiles.team-a]\ntype = \"s3\"\nbucket = \"{}\"\nregion = \"{}\"\n\
             endpoint = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\nroot = \"/kata-sim\"\n\
             allow = [\"root\"]\n",
            placeholders.display(),
            s3::BUCKET,
            s3::REGION,
            srv.endpoint(),
            s3::ACCESS_KEY,
            s3::SECRET_KEY
        ),
    )
    .unwrap();
    let bundle = w.p(&format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{SID}"));
    fs::create_dir_all(&bundle).unwrap();
    let annotations = [
        ("io.kubernetes.cri.sandbox-id", SID.to_string()),
        ("io.kubernetes.cri.sandbox-name", "pod-a".to_string()),
        ("io.kubernetes.cri.sandbox-namespace", "default".to_string()),
        ("io.ovfs.volume.data.profile", "team-a".to_string()),
        ("io.ovfs.volume.data.source", placeholder.display().to_string()),
        ("io.ovfs.volume.data.root", run.clone()),
    ];
    let ann: Vec<String> = annotations.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
    fs::write(
        bundle.join("config.json"),
        format!(
            "{{\"ociVersion\": \"1.0.2\", \"root\": {{\"path\": \"rootfs\"}}, \"annotations\": {{{}}}}}",
            ann.join(", ")
        ),
    )
    .unwrap();
    let initrd = w.initramfs("kata", "kata.sh", &[]);
    let cmdline = format!("ovfs.cid={CID} ovfs.vol={VOL_DIR} ovfs.hostvol={HOSTVOL_DIR}");

    // ---- 1. Go runtime
    let sock = w.sock("vhost-fs.sock");
    let _ = fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind the vhost-user socket");
    let log = w.p("go.daemon.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ovfs"));
    cmd.args([
        "--syslog".to_string(),
        "--cache=auto".to_string(),
        format!("--shared-dir={}", shared.display()),
        "--fd=3".to_string(),
        "--thread-pool-size=1".to_string(),
        "--announce-submounts".to_string(),
    ])
    .current_dir(&bundle)
    .env("OVFS_CONFIG", &config)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(fs::File::create(&log).unwrap());
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let lfd = listener.as_raw_fd();
        // SAFETY: between fork and exec only dup2/fcntl (async-signal-safe)
        // run; they put the listening socket at fd 3 without CLOEXEC.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself keeps CLOEXEC: clear it instead.
                let r = if lfd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(lfd, 3) };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().expect("spawn ovfs (Go runtime argv)");
    drop(listener);
    let mut d = Daemon::from_child("ovfs (Go runtime argv)", child, log.clone());
    // Kata bind-mounts container volumes into the shared dir after the daemon started.
    let _b1 = Bind::new(&hostvol, &shared.join(HOSTVOL_DIR));
    let _b2 = Bind::new(&placeholder, &shared.join(VOL_DIR));
    let watch = inotify(&[&canary, &sandbox]);

    let b1 = std::thread::scope(|scope| {
        let boot = scope.spawn(|| {
            w.boot_with("go", &initrd, &sock, &format!("{cmdline} ovfs.phase=1"), &d_log(&log), &kata_boot())
        });
        // On KATA-SYNCED: SIGKILL, as Kata stops the daemon.
        let t0 = Instant::now();
        let console = w.p("go.log");
        loop {
            if read_lossy(&console).lines().any(|l| l.trim_end() == "KATA-SYNCED") {
                break;
            }
            if boot.is_finished() || t0.elapsed() > Duration::from_secs(400) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        d.kill9();
        boot.join().unwrap()
    });
    b1.assert_passed(&guest::lines(&[
        "PASS kata-mount",
        "PASS rootfs-exec",
        "PASS rootfs-exec-via-symlink",
        "PASS rootfs-symlink-rel",
        "PASS rootfs-symlink-abs",
        "PASS rootfs-shadow-mode",
        "PASS rootfs-home-mode",
        "PASS rootfs-tmp-sticky",
        "PASS rootfs-passwd",
        "PASS hostvol-visible",
        "PASS escape-rel-fails",
        "PASS escape-abs-fails",
        "PASS escape-dotdot-fails",
        "PASS volume-is-a-dir",
        "PASS volume-write-fsync",
        "PASS volume-ls",
        "KATA-SYNCED",
    ]));
    // Every fsync'd byte is in the bucket, read by a client that is not ovfs.
    let want = yes("kata-sim", 300_000);
    let key = format!("kata-sim/{run}/fsynced.txt");
    let got = c.get(&key);
    assert!(
        got.as_deref() == Some(&want[..]),
        "after SIGKILL, s3://{}/{key}: {:?} bytes, want {} (the fsync'd file)\n{}",
        s3::BUCKET,
        got.as_ref().map(|g| g.len()),
        want.len(),
        b1.context()
    );
    assert_eq!(b1.sha_lines().get("fsynced.txt"), Some(&s3::sha256(&want)), "guest's view");
    assert!(!placeholder.join("fsynced.txt").exists(), "written into the placeholder instead of S3");
    assert_eq!(inotify_pending(&watch), 0, "the canary (or its directory) was touched");
    let dlog = read_lossy(&log);
    assert!(dlog.contains("Waiting for vhost-user socket connection"), "readiness line on stderr under --syslog");

    // ---- 2. runtime-rs
    let sock2 = w.sock("virtiofsd.sock");
    let log2 = w.p("rs.daemon.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ovfs"))
        .arg("--socket-path")
        .arg(&sock2)
        .arg("--shared-dir")
        .arg(&shared)
        .args(["--cache", "auto", "--thread-pool-size=1", "-o", "announce_submounts"])
        .current_dir(&bundle)
        .env("OVFS_CONFIG", &config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ovfs (runtime-rs argv)");
    // runtime-rs starts the VMM only after this line on stderr.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log2c = log2.clone();
    std::thread::spawn(move || {
        let mut out = fs::File::create(&log2c).unwrap();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            use std::io::Write;
            let _ = writeln!(out, "{line}");
            if !sent && line.contains("Waiting for vhost-user socket connection") {
                let _ = tx.send(());
                sent = true;
            }
        }
    });
    let mut d2 = Daemon::from_child("ovfs (runtime-rs argv)", child, log2.clone());
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("no readiness line on stderr within 10 s:\n{}", tail(&read_lossy(&log2), 20)));
    let b2 = w.boot_with("rs", &initrd, &sock2, &format!("{cmdline} ovfs.phase=2"), &d2, &kata_boot());
    b2.assert_passed(&guest::lines(&[
        "PASS kata-mount",
        "PASS rootfs-exec",
        "PASS hostvol-visible",
        "PASS volume-phase2-write",
    ]));
    assert_eq!(b2.sha_lines().get("fsynced.txt"), Some(&s3::sha256(&want)), "phase-1 file seen by the second guest");
    assert_eq!(c.get(&format!("kata-sim/{run}/phase2.txt")).as_deref(), Some(&b"second\n"[..]));
    d2.expect_exit_after_disconnect();
    assert_eq!(inotify_pending(&watch), 0, "the canary (or its directory) was touched");
    assert_eq!(fs::read(&canary).unwrap(), b"host secret\n");
}

/// The daemon log path for a boot's context (the daemon itself is managed by the caller).
fn d_log(log: &Path) -> Daemon {
    Daemon { what: "log".into(), child: None, log: log.to_path_buf() }
}
