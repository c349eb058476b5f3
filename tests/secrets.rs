//! Credentials never leak: ovfs runs on a real S3 server (SeaweedFS) at the
//! most verbose log level through a busy session (writes, reads, listings,
//! xattrs, errors, a back-end that stops answering, bad configurations), and
//! the secret key is looked for in everything a person or the guest can see:
//! every log line, `--print-capabilities`, the metrics endpoint, error
//! messages, file contents, names and xattrs under the mount.
//!
//! Needs root, /dev/fuse and SeaweedFS (tests/tools/install-deps.sh).

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bash, is_mounted, ovfs_bin};
use s3::{S3Server, SECRET_KEY};

/// Every place a leak was found, so one run reports all of them.
#[derive(Default)]
struct Leaks(Vec<String>);

impl Leaks {
    fn scan(&mut self, what: &str, text: &str) {
        for (n, line) in text.lines().enumerate() {
            if line.contains(SECRET_KEY) {
                self.0.push(format!("{what}, line {}: {line}", n + 1));
            }
        }
    }
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mount(cfg: &Path, mnt: &Path, log: &Path, extra: &[&str]) -> Daemon {
    let child = Command::new(ovfs_bin())
        .args(["--log-level", "trace"])
        .args(extra)
        .arg("--config")
        .arg(cfg)
        .arg("mount")
        .arg(mnt)
        .stdout(std::fs::File::create(log.with_extension("stdout")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn ovfs");
    let t0 = Instant::now();
    while !is_mounted(mnt) {
        assert!(t0.elapsed() < Duration::from_secs(20), "no mount; log:\n{}", std::fs::read_to_string(log).unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon { child }
}

fn unmount(mut d: Daemon, mnt: &Path) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while matches!(d.child.try_wait(), Ok(None)) && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_mounted(mnt) {
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
    }
}

fn out_text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn the_secret_key_appears_nowhere() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let mut leaks = Leaks::default();

    // 1. A busy session at trace level.
    let cfg = dir.path().join("ovfs.toml");
    std::fs::write(&cfg, server.ovfs_config("secrets", "")).unwrap();
    assert!(std::fs::read_to_string(&cfg).unwrap().contains(SECRET_KEY), "the config carries the secret");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let log = dir.path().join("ovfs.log");
    let d = mount(&cfg, &mnt, &log, &[]);
    let script = r#"
        set -u
        mkdir -p a/b && echo hello > a/b/f && cat a/b/f
        dd if=/dev/urandom of=big bs=1M count=12 status=none && sha256sum big
        ls -laR . ; stat a/b/f nope 2>&1
        chmod 600 a/b/f; chown 1:1 a/b/f; touch -d @1000000000 a/b/f
        ln -s a/b/f link && readlink link
        getfattr -d -m - a/b/f link big 2>&1
        setfattr -n user.k -v v a/b/f 2>&1; getfattr -d -m - a/b/f 2>&1
        mv a/b/f a/g; rm -f big; rmdir a/b; cat a/missing 2>&1
        cat /proc/mounts | grep -i ovfs
        find . -type f -exec cat {} + | strings
        true
    "#;
    let o = bash(script, &mnt);
    leaks.scan("guest-visible output (contents, names, xattrs, errors)", &out_text(&o));
    assert!(o.status.success(), "session script: {}", out_text(&o));
    unmount(d, &mnt);
    let trace = std::fs::read_to_string(&log).unwrap();
    assert!(trace.lines().count() > 50, "a trace-level log of the session: {} lines", trace.lines().count());
    leaks.scan("trace log of the busy session", &trace);
    leaks.scan("stdout of the busy session", &std::fs::read_to_string(log.with_extension("stdout")).unwrap());

    // 2. The back-end stops answering: errors and retries are logged.
    let dead = dir.path().join("dead.toml");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = server.ovfs_config("secrets", "").replace(&server.endpoint(), &format!("http://127.0.0.1:{port}"));
    std::fs::write(&dead, text + "\n[backend_settings]\ntimeout = \"3s\"\nretry_max_times = 1\n").unwrap();
    let dead_log = dir.path().join("dead.log");
    let o = Command::new(ovfs_bin())
        .args(["--log-level", "trace", "--config"])
        .arg(&dead)
        .arg("mount")
        .arg(dir.path().join("mnt"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    std::fs::write(&dead_log, out_text(&o)).unwrap();
    assert!(out_text(&o).contains("127.0.0.1"), "the dead back-end is reported: {}", out_text(&o));
    leaks.scan("log of a daemon whose back-end is down", &out_text(&o));

    // 3. Refused configurations that carry the secret.
    for (name, extra) in [
        ("unknown key", "\n[storage_settings_typo]\nx = 1\n".to_string()),
        ("bad value", "\n[cache_settings]\nmemory_limit = \"lots\"\n".to_string()),
    ] {
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, server.ovfs_config("secrets", "") + &extra).unwrap();
        let o = Command::new(ovfs_bin())
            .args(["--config"])
            .arg(&p)
            .arg("--socket-path")
            .arg("/tmp/x.sock")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{name}: refused");
        leaks.scan(&format!("error for a config with a {name}"), &out_text(&o));
    }

    // 4. --print-capabilities, --help, --version with the config given.
    for args in [&["--print-capabilities"][..], &["--help"], &["--version"]] {
        let o = Command::new(ovfs_bin()).arg("--config").arg(&cfg).args(args).output().unwrap();
        leaks.scan(&format!("ovfs {}", args.join(" ")), &out_text(&o));
    }

    // 5. What ended up in the bucket (keys and object metadata).
    let listing = server.client().list("secrets/");
    assert!(!listing.is_empty(), "the session wrote objects");
    for (key, _) in &listing {
        leaks.scan(&format!("bucket key {key}"), key);
        leaks.scan(&format!("metadata of {key}"), &server.client().head(key).metas());
    }

    assert!(leaks.0.is_empty(), "the secret key leaked:\n{}", leaks.0.join("\n"));
    // The check can fail: the secret really is in the files we were given.
    let mut probe = Leaks::default();
    probe.scan("the config itself", &std::fs::read_to_string(&cfg).unwrap());
    assert_eq!(probe.0.len(), 1, "the scanner finds the secret where it is");
}
