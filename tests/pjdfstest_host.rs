//! pjdfstest 0.2.2 over the host /dev/fuse mount of the fs and the memory
//! back-ends. Known failures (object-store semantics: no hard links, no
//! directory times, ...) are listed with their reasons in
//! tests/pjdfstest/expected/; any other failure fails the test. The counts are
//! printed (run with --nocapture) and recorded in docs/SEMANTICS.md.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{fs_config, memory_config, Mounted};

fn run(m: &Mounted, expected: &str) {
    // pjdfstest's unprivileged users must be able to reach the mount.
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(format!("{repo}/tests/pjdfstest/run-host.sh"))
        .arg("-e")
        .arg(format!("{repo}/tests/pjdfstest/expected/{expected}"))
        .arg(&m.mountpoint)
        .env("OVFS_WORK", work.path())
        .output()
        .expect("run-host.sh (install pjdfstest with tests/tools/install-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().rev().find(|l| l.starts_with("pjdfstest: ") && l.contains(" passed, ")).unwrap_or("");
    eprintln!("{expected}: {summary}");
    assert!(
        out.status.success() && !summary.is_empty(),
        "pjdfstest over {expected}: unexpected failures\n{stdout}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log_text()
    );
}

#[test]
fn host_fs() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = Mounted::start(&fs_config(root.path()));
    run(&m, "host-fs.txt");
}

#[test]
fn host_memory() {
    let m = Mounted::start(&memory_config());
    run(&m, "host-memory.txt");
}
