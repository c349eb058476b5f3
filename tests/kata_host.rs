//! Kata volumes on the host (fast: no guest): `ovfs mount --shared-dir` with
//! the pod annotations of an OCI bundle, through /dev/fuse.
//!
//! - refused annotations (credentials, an endpoint or bucket the profile does
//!   not allow) give one clear log line each, and the rest of the sandbox
//!   (passthrough tree and the other volume) is still served;
//! - `[kata] netns`: the daemon started inside an isolated network namespace
//!   (as the Go runtime does) reaches S3 through the namespace it names.
//!
//! Needs root (bind mounts, `ip netns`), /dev/fuse and, for the netns test,
//! SeaweedFS (tests/tools/install-deps.sh).

#[path = "common/bind.rs"]
mod bind;
mod common;
#[path = "common/s3.rs"]
mod s3;

use bind::Bind;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{is_mounted, ovfs_bin};

/// `ovfs mount` of a shared dir, with OVFS_CONFIG and a bundle as cwd.
struct KataMount {
    child: Child,
    mnt: PathBuf,
    log: PathBuf,
}

impl KataMount {
    fn start(prefix: &[&str], config: &Path, bundle: &Path, shared: &Path, mnt: &Path, log: &Path) -> KataMount {
        let (program, pre): (PathBuf, Vec<&str>) = match prefix.split_first() {
            Some((p, rest)) => (PathBuf::from(p), rest.to_vec()),
            None => (ovfs_bin(), vec![]),
        };
        let mut c = Command::new(program);
        c.args(pre);
        if !prefix.is_empty() {
            c.arg(ovfs_bin());
        }
        let child = c
            .args(["mount", "--shared-dir"])
            .arg(shared)
            .arg(mnt)
            .env("OVFS_CONFIG", config)
            .current_dir(bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn ovfs");
        let m = KataMount { child, mnt: mnt.to_path_buf(), log: log.to_path_buf() };
        let t0 = Instant::now();
        while !is_mounted(mnt) {
            assert!(t0.elapsed() < Duration::from_secs(20), "ovfs did not mount; log:\n{}", m.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for KataMount {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn bundle(dir: &Path, annotations: &[(&str, String)]) {
    let ann: Vec<String> = annotations.iter().map(|(k, v)| format!("{k:?}: {v:?}")).collect();
    let json = format!(
        "{{\"ociVersion\": \"1.0.2\", \"root\": {{\"path\": \"rootfs\"}}, \"annotations\": {{{}}}}}",
        ann.join(", ")
    );
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.json"), json).unwrap();
}

#[test]
fn refused_annotations_leave_the_sandbox_served() {
    let t = tempfile::tempdir().unwrap();
    let p = |s: &str| t.path().join(s);
    let (shared, mnt, ph, store) = (p("shared"), p("mnt"), p("placeholders"), p("store"));
    for d in [&shared, &mnt, &store] {
        fs::create_dir_all(d).unwrap();
    }
    for v in ["good", "creds", "endpoint", "bucket"] {
        fs::create_dir_all(ph.join(v)).unwrap();
    }
    fs::write(shared.join("hosts"), "127.0.0.1 localhost\n").unwrap();
    let config = p("ovfs.toml");
    fs::write(
        &config,
        format!(
            "[kata]\nplaceholder_root = \"{}\"\n\n[profiles.local]\ntype = \"fs\"\nroot = \"{}\"\nallow = [\"root\"]\n",
            ph.display(),
            store.display()
        ),
    )
    .unwrap();
    let src = |v: &str| ph.join(v).to_string_lossy().into_owned();
    bundle(
        &p("bundle"),
        &[
            ("io.kubernetes.cri.sandbox-id", "sid".into()),
            ("io.ovfs.volume.good.profile", "local".into()),
            ("io.ovfs.volume.good.source", src("good")),
            ("io.ovfs.volume.good.root", "pod-a".into()),
            ("io.ovfs.volume.creds.profile", "local".into()),
            ("io.ovfs.volume.creds.source", src("creds")),
            ("io.ovfs.volume.creds.secret_access_key", "SHOULD-NOT-APPEAR".into()),
            ("io.ovfs.volume.endpoint.profile", "local".into()),
            ("io.ovfs.volume.endpoint.source", src("endpoint")),
            ("io.ovfs.volume.endpoint.endpoint", "http://evil.example:9000".into()),
            ("io.ovfs.volume.bucket.profile", "local".into()),
            ("io.ovfs.volume.bucket.source", src("bucket")),
            ("io.ovfs.volume.bucket.bucket", "other-bucket".into()),
        ],
    );
    let m = KataMount::start(&[], &config, &p("bundle"), &shared, &mnt, &p("ovfs.log"));
    // Kata bind-mounts volumes into the shared dir after the daemon started.
    let _b1 = Bind::new(&ph.join("good"), &shared.join("cid-0123-data"));
    let _b2 = Bind::new(&ph.join("creds"), &shared.join("cid-0123-creds"));

    // Passthrough still served.
    assert_eq!(fs::read_to_string(mnt.join("hosts")).unwrap(), "127.0.0.1 localhost\n");
    // The good volume is the fs profile's store under root pod-a, not the placeholder.
    fs::write(mnt.join("cid-0123-data/written.txt"), "to the back-end\n").unwrap();
    assert_eq!(fs::read_to_string(store.join("pod-a/written.txt")).unwrap(), "to the back-end\n");
    assert!(!ph.join("good/written.txt").exists(), "written into the placeholder instead of the volume");
    // The refused one is not attached: the placeholder's (empty) host dir.
    assert_eq!(fs::read_dir(mnt.join("cid-0123-creds")).unwrap().count(), 0);

    let log = m.log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("refused")).collect();
    assert_eq!(refused.len(), 3, "one line per refused volume:\n{log}");
    let line = |v: &str| refused.iter().find(|l| l.contains(&format!("volume `{v}` refused"))).copied();
    assert!(line("creds").is_some_and(|l| l.contains("annotations can never set credentials")), "{log}");
    assert!(line("endpoint").is_some_and(|l| l.contains("does not allow endpoint")), "{log}");
    assert!(line("bucket").is_some_and(|l| l.contains("does not allow bucket")), "{log}");
    assert!(!log.contains("SHOULD-NOT-APPEAR") && !log.contains("evil.example"), "values logged:\n{log}");
    assert!(line("good").is_none());
}

fn have(program: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().is_ok_and(|o| o.status.success())
}

/// A network namespace (loopback down: nothing reachable) removed on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn netns_for_backend_traffic() {
    assert!(have("ip"), "`ip` (iproute2) missing: run tests/tools/install-deps.sh");
    let server = s3::S3Server::shared();
    let c = server.client();
    let t = tempfile::tempdir().unwrap();
    let p = |s: &str| t.path().join(s);
    let (shared, mnt, ph) = (p("shared"), p("mnt"), p("placeholders"));
    for d in [&shared, &mnt, &ph.join("vol")] {
        fs::create_dir_all(d).unwrap();
    }
    let ns = Netns(format!("ovfs-test-{}", std::process::id()));
    assert!(Command::new("ip").args(["netns", "add", &ns.0]).status().unwrap().success(), "ip netns add (root)");
    // The test's own namespace: where the S3 server listens.
    let host_ns = format!("/proc/{}/ns/net", std::process::id());
    let profile = |netns: &str| {
        format!(
            "[kata]\nplaceholder_root = \"{}\"\n{netns}\n[backend_settings]\ntimeout = \"5s\"\nretry_max_times = 0\n\n\
             [profiles.s3]\ntype = \"s3\"\nbucket = \"{}\"\nregion = \"{}\"\nendpoint = \"{}\"\n\
             access_key_id = \"{}\"\nsecret_access_key = \"{}\"\nroot = \"/netns\"\nallow = [\"root\"]\n",
            ph.display(),
            s3::BUCKET,
            s3::REGION,
            server.endpoint(),
            s3::ACCESS_KEY,
            s3::SECRET_KEY
        )
    };
    bundle(
        &p("bundle"),
        &[
            ("io.ovfs.volume.vol.profile", "s3".into()),
            ("io.ovfs.volume.vol.source", ph.join("vol").to_string_lossy().into_owned()),
            ("io.ovfs.volume.vol.root", format!("run{}", std::process::id())),
        ],
    );
    let _b = Bind::new(&ph.join("vol"), &shared.join("vol"));
    // nsenter enters only the network namespace (`ip netns exec` would also
    // unshare the mount namespace, hiding the FUSE mount from the test).
    let netarg = format!("--net=/var/run/netns/{}", ns.0);
    let exec = ["nsenter", netarg.as_str()];

    // Without [kata] netns the back-end is unreachable from the pod's namespace.
    fs::write(p("plain.toml"), profile("")).unwrap();
    {
        let _m = KataMount::start(&exec, &p("plain.toml"), &p("bundle"), &shared, &mnt, &p("plain.log"));
        let r = fs::write(mnt.join("vol/x"), "x");
        assert!(r.is_err(), "S3 reachable from an isolated namespace: the test proves nothing");
    }
    // With it, the same daemon reaches S3 and the file lands in the bucket.
    fs::write(p("netns.toml"), profile(&format!("netns = \"{host_ns}\""))).unwrap();
    let m = KataMount::start(&exec, &p("netns.toml"), &p("bundle"), &shared, &mnt, &p("netns.log"));
    fs::write(mnt.join("vol/hello.txt"), "through the host namespace\n")
        .unwrap_or_else(|e| panic!("write through the netns: {e}; log:\n{}", m.log()));
    let key = format!("netns/run{}/hello.txt", std::process::id());
    assert_eq!(c.get(&key).as_deref(), Some(&b"through the host namespace\n"[..]), "{}", m.log());
    assert!(m.log().contains("entered the network namespace"), "{}", m.log());
}

/// pjdfstest on the host mount of a Kata shared dir with a volume attached:
/// every request goes through the mount table (`MountFs`), and the
/// passthrough part must still pass everything (as virtiofsd: 350 passed,
/// 0 failed, 48 skipped).
#[test]
fn pjdfstest_passthrough_with_a_volume_attached() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let p = |s: &str| t.path().join(s);
    let (shared, mnt, ph) = (p("shared"), p("mnt"), p("placeholders"));
    for d in [&shared, &mnt, &ph.join("vol")] {
        fs::create_dir_all(d).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::write(
        p("ovfs.toml"),
        format!("[kata]\nplaceholder_root = \"{}\"\n[profiles.mem]\ntype = \"memory\"\n", ph.display()),
    )
    .unwrap();
    bundle(
        &p("bundle"),
        &[
            ("io.ovfs.volume.vol.profile", "mem".into()),
            ("io.ovfs.volume.vol.source", ph.join("vol").to_string_lossy().into_owned()),
        ],
    );
    let _b = Bind::new(&ph.join("vol"), &shared.join("vol"));
    let m = KataMount::start(&[], &p("ovfs.toml"), &p("bundle"), &shared, &mnt, &p("ovfs.log"));
    // The volume is attached (a memory file system, not the host directory).
    fs::write(mnt.join("vol/probe"), "x").unwrap();
    assert!(!ph.join("vol/probe").exists(), "volume not attached:\n{}", m.log());

    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{repo}/tests/pjdfstest/run-host.sh"))
        .arg(&mnt)
        .env("OVFS_WORK", p("work"))
        .output()
        .expect("run-host.sh (install pjdfstest with tests/tools/install-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().rev().find(|l| l.starts_with("pjdfstest: ") && l.contains(" passed, ")).unwrap_or("");
    eprintln!("passthrough with a volume attached: {summary}");
    let passed: u64 = summary.strip_prefix("pjdfstest: ").and_then(|r| r.split(' ').next()?.parse().ok()).unwrap_or(0);
    assert!(
        out.status.success() && summary.contains(" 0 failed") && passed >= 350,
        "pjdfstest over the passthrough with a volume attached: {summary}\n{stdout}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
}
