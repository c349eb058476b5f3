//! The deb and rpm packages (`make package`, packaging/build.sh): the example
//! config they ship parses; the deb installs on this machine with `dpkg -i`,
//! its binary, capabilities and man page work, a real guest is served by the
//! installed `/usr/libexec/ovfs`, and it purges cleanly; the rpm's file list is
//! what the deb installs.
//!
//! The install test needs the packages built first (`make test` runs
//! `make package` before the tests) and root; `OVFS_SKIP_PACKAGE=1` skips it
//! for a plain `cargo test` without packages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).into_owned()
}

/// The files both packages install (directories left out).
const FILES: &[&str] = &[
    "/etc/ovfs/ovfs.toml",
    "/usr/bin/ovfs",
    "/usr/libexec/ovfs",
    "/usr/share/man/man1/ovfs.1.gz",
    "/usr/share/qemu/vhost-user/50-ovfs.json",
    "/usr/share/ovfs/kata/go-runtime/50-ovfs-qemu.toml",
    "/usr/share/ovfs/kata/go-runtime/50-ovfs-clh.toml",
    "/usr/share/ovfs/kata/runtime-rs/50-ovfs-qemu.toml",
    "/usr/share/ovfs/kata/runtime-rs/50-ovfs-clh.toml",
    "/usr/share/doc/ovfs/README.md",
    "/usr/share/doc/ovfs/docs/CONFIGURATION.md",
];

#[test]
fn shipped_example_config_parses() {
    let path = repo().join("packaging/ovfs.toml");
    ovfs::config::Config::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let json: String = std::fs::read_to_string(repo().join("packaging/50-ovfs.json")).unwrap();
    assert!(json.contains(r#""type": "fs""#) && json.contains(r#""binary": "/usr/libexec/ovfs""#), "{json}");
}

fn find_package(dir: &Path, suffix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ovfs") && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found.pop()
}

#[test]
fn deb_installs_serves_a_guest_and_purges_rpm_lists_the_same_files() {
    if std::env::var_os("OVFS_SKIP_PACKAGE").is_some_and(|v| v == "1") {
        eprintln!("OVFS_SKIP_PACKAGE=1: package install test skipped");
        return;
    }
    let dir = std::env::var_os("OVFS_PACKAGE_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target/package"));
    let (Some(deb), Some(rpm)) = (find_package(&dir, ".deb"), find_package(&dir, ".rpm")) else {
        panic!("no ovfs .deb and .rpm in {}: run `make package` first (or set OVFS_SKIP_PACKAGE=1)", dir.display());
    };
    assert!(nix::unistd::geteuid().is_root(), "installing the deb needs root");

    // The rpm installs exactly the deb's tree.
    let rpm_list = stdout(Command::new("rpm").arg("-qlp").arg(&rpm));
    let deb_list = stdout(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in FILES {
        assert!(rpm_list.lines().any(|l| l == *f), "rpm lacks {f}:\n{rpm_list}");
        assert!(deb_list.contains(&format!(".{f}")), "deb lacks {f}:\n{deb_list}");
    }
    let rpm_config = stdout(Command::new("rpm").args(["-qcp"]).arg(&rpm));
    assert_eq!(rpm_config.trim(), "/etc/ovfs/ovfs.toml", "rpm config files");

    // Install, use, purge.
    let _ = Command::new("dpkg").args(["--purge", "ovfs"]).output();
    run(Command::new("dpkg").arg("-i").arg(&deb));
    let installed = std::panic::catch_unwind(check_installed);
    let purge = Command::new("dpkg").args(["--purge", "ovfs"]).output().expect("dpkg --purge");
    if let Err(e) = installed {
        std::panic::resume_unwind(e);
    }
    assert!(purge.status.success(), "dpkg --purge ovfs: {}", String::from_utf8_lossy(&purge.stderr));
    for f in FILES {
        assert!(std::fs::symlink_metadata(f).is_err(), "{f} is still there after dpkg --purge");
    }
    assert!(!Path::new("/etc/ovfs").exists(), "/etc/ovfs is still there after dpkg --purge");
    let status = Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", "ovfs"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.is_empty() || status == "not-installed", "package state after purge: {status}");
}

fn check_installed() {
    let version = stdout(Command::new("/usr/libexec/ovfs").arg("--version"));
    assert_eq!(version.trim(), format!("ovfs {}", env!("CARGO_PKG_VERSION")));
    let via_link = stdout(Command::new("/usr/bin/ovfs").arg("--version"));
    assert_eq!(via_link, version);

    let caps = stdout(Command::new("/usr/libexec/ovfs").arg("--print-capabilities"));
    assert!(caps.trim_start().starts_with('{') && caps.contains("separate-options"), "capabilities: {caps}");

    let man = stdout(Command::new("man").args(["-P", "cat", "ovfs"]).env("MANWIDTH", "100"));
    assert!(man.contains("vhost") && man.contains("--shared-dir"), "man ovfs:\n{man}");

    let conffiles = stdout(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "ovfs"]));
    assert!(conffiles.contains("/etc/ovfs/ovfs.toml"), "conffiles: {conffiles}");
    // A real guest (QEMU, virtio-fs) served by the installed binary with the
    // installed example config: the guest harness's basic and remount boots.
    let daemon = "/usr/libexec/ovfs --config /etc/ovfs/ovfs.toml --socket-path {sock} --shared-dir {dir}";
    let out = Command::new(repo().join("tests/guest/with-virtiofsd.sh"))
        .args(["-D", daemon, "-T", "240"])
        .output()
        .expect("run tests/guest/with-virtiofsd.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "guest over the installed ovfs failed:\n{text}");
}
