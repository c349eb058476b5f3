//! Acceptance: "Bad config files (unknown key, wrong type, missing bucket,
//! unreachable endpoint) each give one clear line and exit status 2 (or a
//! clear runtime error for reachability)".
//!
//! Runs the real binary, both as `ovfs mount --config BAD MOUNTPOINT` and as
//! `ovfs --config BAD --socket-path S`, at the default log level (no
//! `--log-level`: a stray log line on a config error counts as a defect).
//! Every s3 case carries `secret_access_key = "topsecretvalue"`, which must
//! never be printed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{is_mounted, ovfs_bin};

const SECRET: &str = "topsecretvalue";

/// An s3 storage section that builds (no network I/O at build time), with
/// an endpoint where nothing listens.
const S3: &str = r#"[storage_settings]
type = "s3"
bucket = "test"
region = "us-east-1"
endpoint = "http://127.0.0.1:1"
access_key_id = "admin"
secret_access_key = "topsecretvalue"
"#;

/// The configuration file from the project brief, verbatim.
const BRIEF_EXAMPLE: &str = r#"[socket_settings]
socket_path = "/tmp/vfsd.sock"

[cache_settings]
enabled_cache = true
enabled_cache_write_back = false
enabled_cache_expiration = true
cache_expiration_time = "60s"

[storage_settings]
type = "s3"
bucket = "test"
region = "us-east-1"
endpoint = "http://127.0.0.1:8333"
access_key_id = "admin"
secret_access_key = "adminsecret"
"#;

/// Quick failure for the reachability cases: no retries, short bounds.
const QUICK_BACKEND: &str = "[backend_settings]\nretry_max_times = 0\ntimeout = \"5s\"\nio_timeout = \"5s\"\n";

enum Mode {
    Mount,
    VhostUser,
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Kill (SIGKILL) our own child and reap it.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Run ovfs with the config at `cfg` (which may not exist) in `mode`; must
/// exit within 20 s.
fn run(dir: &Path, cfg: &Path, mode: Mode) -> Run {
    run_with(dir, cfg, mode, &[])
}

/// [`run`] with extra command-line arguments (before the mount point).
fn run_with(dir: &Path, cfg: &Path, mode: Mode, extra: &[&str]) -> Run {
    let mnt = dir.join("mnt");
    let sock = dir.join("vhost.sock");
    let _ = std::fs::create_dir(&mnt);
    let mut cmd = Command::new(ovfs_bin());
    match mode {
        Mode::Mount => cmd.arg("mount").arg("--config").arg(cfg).args(extra).arg(&mnt),
        Mode::VhostUser => cmd.arg("--config").arg(cfg).arg("--socket-path").arg(&sock).args(extra),
    };
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .env_remove("RUST_LOG")
        .spawn()
        .expect("spawn ovfs");
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if is_mounted(&mnt) {
            kill(&mut child);
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
            panic!("a bad config got mounted; stderr:\n{}", std::fs::read_to_string(&err_path).unwrap_or_default());
        }
        if t0.elapsed() > Duration::from_secs(20) {
            kill(&mut child);
            if is_mounted(&mnt) {
                let _ = Command::new("umount").arg("-l").arg(&mnt).status();
            }
            panic!(
                "ovfs did not exit within 20 s; stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t0.elapsed();
    assert!(!is_mounted(&mnt), "a bad config got mounted");
    assert!(!sock.exists(), "a bad config created the vhost-user socket");
    Run {
        code,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        took,
    }
}

/// Write `text` as a config file and check both modes refuse it with exit
/// status 2 and one stderr line containing every one of `needles`.
fn refused(name: &str, text: Option<&str>, needles: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg: PathBuf = dir.path().join(format!("{name}.toml"));
    if let Some(text) = text {
        std::fs::write(&cfg, text).expect("write config");
    }
    for mode in [Mode::Mount, Mode::VhostUser] {
        let what = match mode {
            Mode::Mount => "ovfs mount --config",
            Mode::VhostUser => "ovfs --config --socket-path",
        };
        let r = run(dir.path(), &cfg, mode);
        check_one_line(name, what, &r, needles);
    }
}

fn check_one_line(name: &str, what: &str, r: &Run, needles: &[&str]) {
    let n = r.stderr.lines().count();
    let head: Vec<&str> = r.stderr.lines().take(25).collect();
    let ctx = format!(
        "case `{name}` ({what}): exit {:?} after {:?}\nstderr ({n} lines{}):\n{}\nstdout:\n{}",
        r.code,
        r.took,
        if n > 25 { ", first 25 shown" } else { "" },
        head.join("\n"),
        r.stdout
    );
    assert_eq!(r.code, Some(2), "{ctx}");
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected exactly one non-empty stderr line; {ctx}");
    let line = lines[0];
    assert!(line.starts_with("ovfs: "), "{ctx}");
    for n in needles {
        assert!(line.contains(n), "the message does not name {n:?}; {ctx}");
    }
    assert!(!r.stderr.contains(SECRET) && !r.stdout.contains(SECRET), "secret leaked; {ctx}");
    assert!(r.stdout.trim().is_empty(), "unexpected stdout; {ctx}");
}

#[test]
fn unknown_section() {
    refused(
        "unknown_section",
        Some(&format!("{S3}\n[sockets]\nsocket_path = \"/x\"\n")),
        &["[sockets]", "unknown section"],
    );
}

#[test]
fn unknown_key_in_each_section() {
    for section in ["socket_settings", "cache_settings", "backend_settings"] {
        refused(&format!("unknown_key_{section}"), Some(&format!("{S3}\n[{section}]\nfoo = 1\n")), &["`foo`", section]);
    }
    refused("unknown_key_storage_settings", Some(&format!("{S3}foo = 1\n")), &["`foo`", "storage_settings"]);
}

#[test]
fn unknown_storage_key() {
    refused("bukket", Some(&format!("{S3}bukket = \"x\"\n")), &["`bukket`", "storage_settings"]);
}

#[test]
fn wrong_type() {
    refused(
        "wrong_type",
        Some(&format!("{S3}\n[cache_settings]\nenabled_cache = \"yes\"\n")),
        &["cache_settings.enabled_cache", "boolean"],
    );
}

#[test]
fn bad_duration() {
    refused(
        "bad_duration",
        Some(&format!("{S3}\n[cache_settings]\ncache_expiration_time = \"abc\"\n")),
        &["cache_settings.cache_expiration_time", "duration"],
    );
}

#[test]
fn missing_type() {
    refused("missing_type", Some(&S3.replace("type = \"s3\"\n", "")), &["`type`", "storage_settings"]);
}

#[test]
fn s3_without_bucket() {
    refused("no_bucket", Some(&S3.replace("bucket = \"test\"\n", "")), &["`bucket`", "s3", "storage_settings"]);
}

#[test]
fn fs_without_root() {
    refused("no_root", Some("[storage_settings]\ntype = \"fs\"\n"), &["`root`", "fs", "storage_settings"]);
}

#[test]
fn not_toml() {
    let line = format!("line {}", S3.lines().count() + 1);
    refused("not_toml", Some(&format!("{S3}this is not toml\n")), &[&line]);
}

#[test]
fn missing_file() {
    refused("does_not_exist", None, &["does_not_exist.toml", "cannot read"]);
}

/// `ovfs mount` checks the back-end before mounting: an unreachable endpoint
/// is one line, exit status 2, quickly.
#[test]
fn unreachable_endpoint_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("unreachable.toml");
    std::fs::write(&cfg, format!("{S3}\n{QUICK_BACKEND}")).expect("write config");
    let r = run(dir.path(), &cfg, Mode::Mount);
    eprintln!("unreachable endpoint: mount refused after {:?}", r.took);
    check_one_line("unreachable", "ovfs mount --config", &r, &["back-end check failed", "s3"]);
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
}

/// Same with the default retry policy (3 retries, back-off 100 ms..2 s): it
/// still fails within a few seconds with one line, even though OpenDAL's retry
/// layer logs each retry. `--log-level error` is passed (allowed by the
/// acceptance brief); retry warnings must not reach stderr.
///
/// KNOWN DEFECT at the time of writing: OpenDAL's `will retry List` warnings
/// (multi-line, with a backtrace when RUST_BACKTRACE is set) are printed
/// before the error line, because the log filter is `ovfs=<level>,warn`
/// (src/cli.rs `init_logging`), which lets every other crate's warnings
/// through whatever `--log-level` says.
#[test]
fn unreachable_endpoint_mount_default_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("unreachable.toml");
    std::fs::write(&cfg, S3).expect("write config");
    let r = run_with(dir.path(), &cfg, Mode::Mount, &["--log-level", "error"]);
    eprintln!("unreachable endpoint, default retries: mount refused after {:?}", r.took);
    check_one_line(
        "unreachable (default retries)",
        "ovfs mount --config --log-level error",
        &r,
        &["back-end check failed", "s3"],
    );
    assert!(r.took < Duration::from_secs(15), "took {:?}", r.took);
}

/// A local HTTP server answering every request with `404 Not Found` and
/// `body`; returns its port. The thread lives until the test process exits.
fn http_404_server(body: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 8192];
            let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// `ovfs mount` against an endpoint whose every answer is 404 with `body`.
fn mount_against_404(name: &str, body: &'static str) {
    let port = http_404_server(body);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("404.toml");
    let text = S3.replace("127.0.0.1:1", &format!("127.0.0.1:{port}"));
    std::fs::write(&cfg, format!("{text}\n{QUICK_BACKEND}")).expect("write config");
    let r = run(dir.path(), &cfg, Mode::Mount);
    eprintln!("{name}: exit {:?}, stderr: {}", r.code, r.stderr.trim());
    check_one_line(name, "ovfs mount --config", &r, &["back-end check failed", "s3"]);
}

/// A bucket that does not exist (S3's `404 NoSuchBucket`): `ovfs mount`
/// checks the back-end before mounting and refuses it.
#[test]
fn nonexistent_bucket_mount() {
    mount_against_404(
        "nonexistent bucket",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>test</BucketName></Error>",
    );
}

/// An endpoint that is an HTTP server but not S3 (plain `404`, empty body):
/// must be refused too, rather than mounting a file system on which every
/// write fails.
///
/// KNOWN DEFECT at the time of writing: `Backend::check` (src/backend/mod.rs)
/// treats a NotFound answer to its root listing as success, so the mount
/// goes ahead (`ls` shows an empty root, `touch x` fails with ENOENT).
#[test]
fn non_s3_endpoint_mount() {
    mount_against_404("non-S3 endpoint (plain 404)", "");
}

/// Start `ovfs --config CFG --socket-path S`; wait until stderr contains
/// every one of `needles`; returns (child, stderr so far, socket path).
fn serve_until(dir: &Path, cfg: &Path, needles: &[&str]) -> (Child, String, PathBuf) {
    let sock = dir.join("vhost.sock");
    let err_path = dir.join("stderr");
    let mut child = Command::new(ovfs_bin())
        .arg("--config")
        .arg(cfg)
        .arg("--socket-path")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .env_remove("RUST_LOG")
        .spawn()
        .expect("spawn ovfs");
    let t0 = Instant::now();
    loop {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        if needles.iter().all(|n| err.contains(n)) {
            return (child, err, sock);
        }
        if let Some(st) = child.try_wait().expect("wait") {
            panic!("ovfs exited ({st}) before printing {needles:?}; stderr:\n{err}");
        }
        if t0.elapsed() > Duration::from_secs(15) {
            kill(&mut child);
            panic!("ovfs did not print {needles:?} within 15 s; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The vhost-user daemon does not wait for the back-end before accepting (by
/// design): an unreachable endpoint is a clear runtime error line, and the
/// daemon keeps waiting for the VMM.
#[test]
fn unreachable_endpoint_vhost_user_is_a_runtime_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("unreachable.toml");
    std::fs::write(&cfg, format!("{S3}\n{QUICK_BACKEND}")).expect("write config");
    let (mut child, err, sock) =
        serve_until(dir.path(), &cfg, &["Waiting for vhost-user socket connection...", "back-end check failed"]);
    let still_running = child.try_wait().expect("wait").is_none();
    kill(&mut child);
    assert!(still_running, "daemon exited; stderr:\n{err}");
    assert!(sock.exists(), "socket not created; stderr:\n{err}");
    assert!(!err.contains(SECRET), "secret leaked:\n{err}");
    let failures: Vec<&str> = err.lines().filter(|l| l.contains("back-end check failed")).collect();
    assert_eq!(failures.len(), 1, "stderr:\n{err}");
    assert!(failures[0].contains("s3"), "stderr:\n{err}");
}

/// The configuration file from the project brief is accepted: the daemon gets
/// as far as waiting for the VMM (`--socket-path` overrides its socket path).
#[test]
fn brief_example_config_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("ovfs.toml");
    std::fs::write(&cfg, BRIEF_EXAMPLE).expect("write config");
    let (mut child, err, sock) = serve_until(dir.path(), &cfg, &["Waiting for vhost-user socket connection..."]);
    let still_running = child.try_wait().expect("wait").is_none();
    let socket_created = sock.exists();
    kill(&mut child);
    assert!(still_running, "daemon exited; stderr:\n{err}");
    assert!(socket_created, "socket not created; stderr:\n{err}");
    assert!(!err.contains("adminsecret"), "secret leaked:\n{err}");
    assert!(!err.contains("config:"), "config refused:\n{err}");
}

/// A `[[mounts]]` entry at `path` on the unreachable s3 endpoint (with the secret).
fn s3_mount(path: &str) -> String {
    format!("[[mounts]]\npath = \"{path}\"\n{}", S3.replace("[storage_settings]", "[mounts.storage_settings]"))
}

const MEM_MOUNT: &str = "[[mounts]]\npath = \"/mem\"\n[mounts.storage_settings]\ntype = \"memory\"\n";

#[test]
fn bad_mounts() {
    let cases: [(&str, String, &[&str]); 10] = [
        ("relative", s3_mount("data"), &["mounts.0.path", "absolute"]),
        ("not_normalized", s3_mount("/a/../b"), &["mounts.0.path", "normalized"]),
        ("trailing_slash", s3_mount("/a/"), &["mounts.0.path", "normalized"]),
        ("root", s3_mount("/"), &["mounts.0.path"]),
        ("duplicate", format!("{}{}", s3_mount("/a"), s3_mount("/a")), &["mounts.1.path", "mounts.0.path"]),
        ("nested", format!("{}{}", s3_mount("/a"), s3_mount("/a/b")), &["mounts.1.path", "nested"]),
        ("no_storage", "[[mounts]]\npath = \"/a\"\nread_only = true\n".into(), &["mounts.0", "storage_settings"]),
        ("unknown_key", format!("{MEM_MOUNT}[[mounts]]\npath = \"/b\"\nfoo = 1\n"), &["`foo`", "mounts.1"]),
        ("storage_key", format!("{MEM_MOUNT}{}bukket = \"x\"\n", s3_mount("/b")), &["`bukket`", "mounts.1"]),
        (
            "cache_type",
            format!("{MEM_MOUNT}[mounts.cache_settings]\nattr_timeout = true\n"),
            &["mounts.0.cache_settings.attr_timeout"],
        ),
    ];
    for (name, text, needles) in cases {
        refused(&format!("mounts_{name}"), Some(&text), needles);
    }
    let many: String = (0..65).map(|i| MEM_MOUNT.replace("/mem", &format!("/m{i}"))).collect();
    refused("mounts_too_many", Some(&many), &["mounts", "at most 64"]);
}

/// Three mounts, one of them on an endpoint where nothing listens: the
/// daemon starts, logs one check failure naming that mount only, and keeps
/// waiting for the VMM.
#[test]
fn mounts_with_one_unreachable_back_end_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("mounts.toml");
    let fs_root = dir.path().join("fsroot");
    let text = format!(
        "{}[mounts.backend_settings]\nretry_max_times = 0\ntimeout = \"3s\"\n{MEM_MOUNT}[[mounts]]\npath = \"/a/fs\"\nread_only = true\n[mounts.storage_settings]\ntype = \"fs\"\nroot = {:?}\n",
        s3_mount("/s3"),
        fs_root.display().to_string()
    );
    std::fs::write(&cfg, text).expect("write config");
    let (mut child, err, _sock) =
        serve_until(dir.path(), &cfg, &["Waiting for vhost-user socket connection...", "back-end check failed"]);
    std::thread::sleep(Duration::from_millis(500));
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or(err);
    let still_running = child.try_wait().expect("wait").is_none();
    kill(&mut child);
    assert!(still_running, "daemon exited; stderr:\n{err}");
    assert!(!err.contains(SECRET), "secret leaked:\n{err}");
    let failures: Vec<&str> = err.lines().filter(|l| l.contains("back-end check failed")).collect();
    assert_eq!(failures.len(), 1, "stderr:\n{err}");
    assert!(failures[0].contains("mount /s3"), "stderr:\n{err}");
    for p in ["/s3", "/mem", "/a/fs"] {
        assert!(err.contains(&format!("path={p}")), "mount {p} not logged; stderr:\n{err}");
    }
}
