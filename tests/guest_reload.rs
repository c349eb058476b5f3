//! Hot reload with a guest connected (issue 8, acceptance 2): a real Linux
//! guest (QEMU TCG) reads a file from ovfs serving a SeaweedFS bucket in a
//! loop, checking its bytes every time, while the test edits the daemon's
//! config file to rotate ovfs's S3 credentials (the old key is revoked on the
//! server, and a request with it is shown to fail) and to change a cache TTL;
//! then makes an invalid edit, which is refused with one line while the
//! guest goes on reading on the old configuration. See
//! `tests/guest/scripts/s3-reload.sh` for the guest side and the protocol
//! (objects written through the mount, so writes with the old and the new
//! key are exercised too).
//!
//! The server is a dedicated SeaweedFS instance whose keys come from an
//! identities file re-read on SIGHUP (`S3Server::start_with_identities`).
//! Work files go to `CARGO_TARGET_TMPDIR/guest-reload/`. Needs what
//! tests/tools/install-deps.sh installs; runs as root.

#[path = "common/s3.rs"]
mod s3;

#[path = "common/guest.rs"]
mod guest;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use guest::{secs, serial, BootOpts, Daemon, Work};
use s3::{pseudo_random, sha256, S3Client, S3Server, BUCKET, REGION};

const OLD: (&str, &str) = ("ovfsold", "oldsecretvalue");
const NEW: (&str, &str) = ("ovfsnew", "newsecretvalue");
const P: &str = "rl/";

fn config(endpoint: &str, key: (&str, &str), cache_expiration: &str, extra: &str) -> String {
    format!(
        "[cache_settings]\nattr_timeout = \"1s\"\nentry_timeout = \"1s\"\ncache_expiration_time = \"{cache_expiration}\"\n{extra}\n\
         [storage_settings]\ntype = \"s3\"\nbucket = \"{BUCKET}\"\nregion = \"{REGION}\"\nendpoint = \"{endpoint}\"\n\
         access_key_id = \"{}\"\nsecret_access_key = \"{}\"\nroot = \"/rl\"\n\n\
         [backend_settings]\ntimeout = \"20s\"\n",
        key.0, key.1
    )
}

/// Replace the file as editors do (write a sibling, rename it over).
fn edit(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    fs::write(&tmp, text).expect("write config");
    fs::rename(&tmp, path).expect("rename config");
}

/// Wait for the guest to write `key`; gives up when the guest is gone.
fn wait_object(c: &S3Client, key: &str, limit: Duration, guest_gone: &dyn Fn() -> bool) {
    let t = Instant::now();
    while c.head(key).status != 200 {
        assert!(t.elapsed() < limit, "the guest did not write {key} within {limit:?}");
        assert!(!guest_gone() || c.head(key).status == 200, "the guest ended without writing {key}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait for a daemon log line containing `what` among the lines after the
/// first `after`; returns it.
fn wait_log(log: &Path, what: &str, after: usize, limit: Duration) -> String {
    let t = Instant::now();
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text.lines().skip(after).find(|l| l.contains(what)) {
            return l.to_string();
        }
        assert!(t.elapsed() < limit, "no daemon log line with {what:?} within {limit:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_lines(log: &Path) -> usize {
    fs::read_to_string(log).unwrap_or_default().lines().count()
}

#[test]
fn guest_reads_through_credential_rotation_and_refused_edit() {
    let _g = serial();
    let srv = S3Server::start_with_identities(&[OLD]);
    let c = srv.client();
    let w = Work::new("guest_reload", "guest-reload");
    assert_eq!(srv.key_status(OLD.0, OLD.1), 200, "the old key works at start");
    assert_eq!(srv.key_status(NEW.0, NEW.1), 403, "the new key does not exist yet");

    let data = pseudo_random(42, 1 << 20);
    c.put(&format!("{P}data.bin"), &data, &[]);
    let sha = sha256(&data);

    let initrd = w.initramfs("reload", "s3-reload.sh", &[]);
    let sock = w.sock("fs.sock");
    let d = Daemon::ovfs_config(&w, "reload", &sock, &config(&srv.endpoint(), OLD, "1s", ""), &[]);
    let cfg = w.p("reload.toml");
    let log = d.log.clone();

    // The guest boots in its own thread; the host side runs the protocol.
    let cmdline = format!("ovfs.sha={sha} ovfs.before=3 ovfs.after=3");
    let (b, applied, refused) = std::thread::scope(|scope| {
        let boot = scope.spawn(|| {
            let o = BootOpts { timeout_s: 900, ..BootOpts::default() };
            w.boot_with("reload", &initrd, &sock, &cmdline, &d, &o)
        });
        let limit = Duration::from_secs(600);
        let gone = || boot.is_finished();
        wait_object(&c, &format!("{P}ready"), limit, &gone);
        let t = Instant::now();
        // Rotation as an operator does it: add the new key, switch the
        // daemon, revoke the old key.
        srv.set_identities(&[OLD, NEW], &[]);
        let n = log_lines(&log);
        edit(&cfg, &config(&srv.endpoint(), NEW, "3s", ""));
        let applied = wait_log(&log, "config reloaded", n, Duration::from_secs(30));
        let took = t.elapsed();
        srv.set_identities(&[NEW], &[OLD]);
        assert_eq!(srv.key_status(OLD.0, OLD.1), 403, "a request with the old key fails after the revocation");
        assert_eq!(srv.key_status(NEW.0, NEW.1), 200);
        eprintln!("[{}] rotation: key added -> daemon reloaded in {}; old key now refused (403)", w.name, secs(took));
        c.put(&format!("{P}rotated"), b"1\n", &[]);
        wait_object(&c, &format!("{P}rotated-ok"), limit, &gone);

        // An invalid edit: refused with one line, the config in force stays.
        let n = log_lines(&log);
        edit(&cfg, &config(&srv.endpoint(), NEW, "3s", "memory_limit = \"lots\""));
        let refused = wait_log(&log, "config reload refused", n, Duration::from_secs(30));
        c.put(&format!("{P}refused"), b"1\n", &[]);
        wait_object(&c, &format!("{P}done"), limit, &gone);
        (boot.join().expect("boot thread"), applied, refused)
    });

    for l in b.tagged("READS ").into_iter().chain(b.tagged("READ-ERROR")) {
        eprintln!("[{}] guest {l}", w.name);
    }
    b.assert_passed(&[
        "PASS rotated-seen".to_string(),
        "PASS refused-seen".to_string(),
        "s3-reload: all checks passed".to_string(),
    ]);
    let reads = b.tagged("PASS reads-all-ok").first().cloned().unwrap_or_default();
    eprintln!("[{}] guest {reads}", w.name);

    // The daemon's log: one reload line naming the keys (no values), one
    // refusal line, no secret anywhere, no failed request.
    let text = fs::read_to_string(&log).unwrap_or_default();
    for k in [
        "storage_settings.access_key_id (secret)",
        "storage_settings.secret_access_key (secret)",
        "cache_settings.cache_expiration_time",
    ] {
        assert!(applied.contains(k), "reload line lacks {k}: {applied}");
    }
    assert!(refused.contains("ERROR") && refused.contains("cache_settings.memory_limit"), "{refused}");
    let reload_lines: Vec<&str> = text.lines().filter(|l| l.contains("config reload")).collect();
    assert_eq!(reload_lines.len(), 3, "enabled + applied + refused:\n{}", reload_lines.join("\n"));
    for s in [OLD.1, NEW.1] {
        assert!(!text.contains(s), "a secret value is in the daemon log");
    }
    assert!(
        !text.lines().any(|l| l.contains("ERROR") && !l.contains("config reload refused")),
        "an error in the daemon log:\n{text}"
    );
    eprintln!("[{}] passed in {}", w.name, secs(w.started.elapsed()));
    let mut d = d;
    d.expect_exit_after_disconnect();
}
