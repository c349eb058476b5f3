//! Hot reload on the host, with the real binary (`ovfs --config F
//! --socket-path S`, no VMM needed: the reload tasks run while the daemon
//! waits for its VMM): SIGHUP reloads at once, a changed file is picked up
//! by the poll, a broken file and a restart-only change are refused with one
//! line each and change nothing, the log level follows `[log_settings]`, and
//! no secret value is ever printed.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ovfs_bin;

const SECRET: &str = "topsecretvalue";
const SECRET2: &str = "rotatedsecretvalue";

fn config(dir: &Path, secret: &str, extra: &str) -> String {
    format!(
        "[storage_settings]\ntype = \"s3\"\nbucket = \"test\"\nregion = \"us-east-1\"\n\
         endpoint = \"http://127.0.0.1:1\"\naccess_key_id = \"admin\"\nsecret_access_key = \"{secret}\"\n\
         [backend_settings]\nretry_max_times = 0\ntimeout = \"2s\"\n{extra}\n# {}\n",
        dir.display()
    )
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, cfg: &Path) -> Daemon {
        Daemon::start_with(dir, cfg, &[], "config reload on change and SIGHUP enabled")
    }

    /// With extra arguments; ready when the log shows `ready`.
    fn start_with(dir: &Path, cfg: &Path, extra: &[&str], ready: &str) -> Daemon {
        let log = dir.join("ovfs.log");
        let err = std::fs::File::create(&log).unwrap();
        let child = Command::new(ovfs_bin())
            .arg("--config")
            .arg(cfg)
            .arg("--socket-path")
            .arg(dir.join("vhost.sock"))
            .args(extra)
            .env_remove("RUST_LOG")
            .env_remove("OVFS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn ovfs");
        let d = Daemon { child, log };
        d.wait_for(ready, 0);
        d
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Wait until the log has more than `after` lines and one of the new
    /// lines contains `what`; returns that line.
    fn wait_for(&self, what: &str, after: usize) -> String {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Some(l) = self.text().lines().skip(after).find(|l| l.contains(what)) {
                return l.to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no log line with {what:?} after line {after}; log:\n{}", self.text());
    }

    fn lines(&self) -> usize {
        self.text().lines().count()
    }

    fn hup(&self) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGHUP)
            .expect("SIGHUP");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replace the file the way editors do: write a sibling, rename it over.
fn replace(cfg: &Path, text: &str) {
    let tmp = cfg.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, cfg).unwrap();
}

#[test]
fn sighup_and_file_change_reload_refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ovfs.toml");
    std::fs::write(&cfg, config(dir.path(), SECRET, "")).unwrap();
    let d = Daemon::start(dir.path(), &cfg);

    // 1. SIGHUP right after an in-place write: applied at once (the poll
    //    would need at least 200 ms more to settle).
    let n = d.lines();
    std::fs::write(&cfg, config(dir.path(), SECRET2, "[cache_settings]\ncache_expiration_time = \"5s\"\n")).unwrap();
    let t0 = Instant::now();
    d.hup();
    let line = d.wait_for("config reloaded", n);
    let took = t0.elapsed();
    assert!(line.contains("trigger=\"SIGHUP\"") || line.contains("trigger=SIGHUP"), "{line}");
    assert!(line.contains("cache_settings.cache_expiration_time"), "{line}");
    assert!(line.contains("storage_settings.secret_access_key (secret)"), "{line}");
    eprintln!("SIGHUP -> reloaded in {took:?}");

    // 2. A broken file: one ERROR line, nothing applied.
    let n = d.lines();
    replace(&cfg, &config(dir.path(), SECRET, "[cache_settings]\ncache_expiration_time = \"soon\"\n"));
    let line = d.wait_for("config reload refused", n);
    assert!(line.contains("ERROR") && line.contains("cache_settings.cache_expiration_time"), "{line}");
    std::thread::sleep(Duration::from_millis(300));
    let reload_lines = d.text().lines().skip(n).filter(|l| l.contains("ovfs::reload")).count();
    assert_eq!(reload_lines, 1, "one line per refused reload:\n{}", d.text());

    // 3. A live change mixed with a restart-only one: refused whole, naming
    //    only the restart-only key.
    let n = d.lines();
    replace(&cfg, &config(dir.path(), SECRET, "[socket_settings]\ntag = \"other\"\n"));
    let line = d.wait_for("config reload refused", n);
    assert!(line.contains("socket_settings.tag") && !line.contains("secret_access_key"), "{line}");

    // 4. Back to a valid live change (after the refusals, the config in
    //    force is still the one of step 1: the secret and the TTL change).
    let n = d.lines();
    replace(&cfg, &config(dir.path(), SECRET, "[log_settings]\nlog_level = \"debug\"\n"));
    let line = d.wait_for("config reloaded", n);
    assert!(line.contains("trigger=\"file changed\""), "{line}");
    for k in ["cache_settings.cache_expiration_time", "storage_settings.secret_access_key", "log_settings.log_level"] {
        assert!(line.contains(k), "{k}: {line}");
    }
    // The level is now debug: an unchanged SIGHUP logs a debug line.
    let n = d.lines();
    d.hup();
    let line = d.wait_for("config reload: no change", n);
    assert!(line.contains("DEBUG"), "{line}");

    let all = d.text();
    assert!(!all.contains(SECRET) && !all.contains(SECRET2), "a secret value was logged:\n{all}");
}

#[test]
fn log_level_on_the_command_line_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ovfs.toml");
    // The file asks for debug; --log-level warn pins the level.
    std::fs::write(&cfg, config(dir.path(), SECRET, "[log_settings]\nlog_level = \"debug\"\n")).unwrap();
    let d = Daemon::start_with(dir.path(), &cfg, &["--log-level", "warn"], "Waiting for vhost-user socket connection");
    // A refused reload (ERROR) shows; an applied one (INFO) and the
    // unchanged SIGHUP (DEBUG) do not.
    std::fs::write(
        &cfg,
        config(dir.path(), SECRET, "[log_settings]\nlog_level = \"trace\"\n[socket_settings]\ntag = \"x\"\n"),
    )
    .unwrap();
    d.hup();
    d.wait_for("config reload refused", 0);
    std::fs::write(&cfg, config(dir.path(), SECRET, "[log_settings]\nlog_level = \"trace\"\n")).unwrap();
    d.hup();
    std::thread::sleep(Duration::from_millis(1500));
    d.hup();
    std::thread::sleep(Duration::from_millis(500));
    let text = d.text();
    assert!(
        !text.contains(" INFO ") && !text.contains("DEBUG") && !text.contains("TRACE"),
        "level not pinned:\n{text}"
    );

    // Without the flag, the file's level applies from the start.
    drop(d);
    std::fs::write(&cfg, config(dir.path(), SECRET, "[log_settings]\nlog_level = \"error\"\n")).unwrap();
    let d = Daemon::start_with(dir.path(), &cfg, &[], "Waiting for vhost-user socket connection");
    std::fs::write(
        &cfg,
        config(dir.path(), SECRET, "[log_settings]\nlog_level = \"error\"\n[socket_settings]\ntag = \"x\"\n"),
    )
    .unwrap();
    d.hup();
    d.wait_for("config reload refused", 0);
    let text = d.text();
    assert!(!text.contains(" INFO "), "the file's level (error) applies at start:\n{text}");
}
