//! The FUSE server mounted on the host through /dev/fuse, exercised with real
//! tools: a real source tree copied in and compared, and a script of POSIX
//! operations whose output must match the same script on tmpfs.

mod common;

use common::{bash, fs_config, is_mounted, memory_config, Mounted};
use std::path::Path;
use std::time::{Duration, Instant};

const TREE: &str = "/usr/include/linux";

fn copy_tree(m: &Mounted) {
    let n = bash(&format!("find {TREE} -type f | wc -l"), &m.mountpoint);
    let files: usize = String::from_utf8_lossy(&n.stdout).trim().parse().unwrap_or(0);
    assert!(files >= 300, "need a real tree with hundreds of files, {TREE} has {files}");
    let out = bash(&format!("cp -r {TREE} tree && diff -r {TREE} tree && find tree -type f | wc -l"), &m.mountpoint);
    assert!(
        out.status.success(),
        "copy/diff failed: {}{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.log_text()
    );
    let copied: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    assert_eq!(copied, files);
}

#[test]
fn copy_source_tree_memory() {
    let m = Mounted::start(&memory_config());
    copy_tree(&m);
}

#[test]
fn copy_source_tree_fs() {
    let root = tempfile::tempdir().unwrap();
    let m = Mounted::start(&fs_config(root.path()));
    copy_tree(&m);
    // The back-end directory holds the same plain files.
    let out = bash(&format!("diff -r {TREE} {}/tree", root.path().display()), root.path());
    assert!(out.status.success(), "back-end copy differs: {}", String::from_utf8_lossy(&out.stdout));
}

/// POSIX operations whose visible results must be the same as on tmpfs.
const OPS: &str = r#"
set -u
step() { echo "== $*"; }
step write; echo hello > f1; cat f1
step append; printf 'abc' >> f1; cat f1; echo; stat -c '%s' f1
step overwrite-middle; dd if=/dev/zero of=f1 bs=1 count=2 seek=1 conv=notrunc status=none; od -An -c f1
step truncate-up; truncate -s 100 f1; stat -c %s f1; od -An -c f1 | head -3
step truncate-down; truncate -s 2 f1; od -An -c f1
step mkdir-p; mkdir -p d1/d2; echo x > d1/d2/x; ls -R d1
step rename-dir; mv d1 d3; ls -R d3; cat d3/d2/x; ls d1 2>&1 | sed 's/.*: //'
step rename-file; mv f1 d3/moved; ls d3; ls f1 2>&1 | sed 's/.*: //'
step rename-overwrite; echo new > f2; mv f2 d3/moved; cat d3/moved
step rmdir-notempty; rmdir d3 2>&1 | sed 's/.*: //'; echo rc=$?
step unlink; rm d3/d2/x; rmdir d3/d2; ls d3
step unlink-missing; rm nonexist 2>&1 | sed 's/.*: //'
step mkdir-exists; mkdir d3 2>&1 | sed 's/.*: //'
step empty; : > empty; stat -c %s empty
step big; seq 1 100000 > big; wc -c < big; md5sum < big
step big-overwrite; printf 'XXXX' | dd of=big bs=1 seek=5000 conv=notrunc status=none; md5sum < big
step big-append; seq 1 10 >> big; md5sum < big; wc -c < big
step rename-over-empty-dir; mkdir e1 e2; mv -T e1 e2; ls -d e*
step rename-over-nonempty-dir; mkdir g1 g2; touch g2/x; mv -T g1 g2 2>&1 | sed 's/.*: //'
step open-unlinked; exec 3<big; rm big; head -c 20 <&3; exec 3<&-; ls big 2>&1 | sed 's/.*: //'
step write-read-same-fd; exec 4<>rw; echo abc >&4; exec 4<&-; cat rw
step listing; find . | sort
step sizes; find . -type f -printf '%p %s\n' | sort
"#;

fn ops_match_tmpfs(m: &Mounted) {
    let tmp = tempfile::tempdir().unwrap();
    let out = bash("mount -t tmpfs -o size=64m tmpfs . && echo ok", tmp.path());
    assert!(out.status.success(), "cannot mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
    let want = bash(OPS, tmp.path());
    let _ = std::process::Command::new("umount").arg("-l").arg(tmp.path()).status();
    let got = bash(OPS, &m.mountpoint);
    let (w, g) = (String::from_utf8_lossy(&want.stdout), String::from_utf8_lossy(&got.stdout));
    if w != g {
        let wl: Vec<&str> = w.lines().collect();
        let gl: Vec<&str> = g.lines().collect();
        let first = wl.iter().zip(gl.iter()).position(|(a, b)| a != b).unwrap_or(wl.len().min(gl.len()));
        panic!(
            "differs from tmpfs at line {first}:\n tmpfs: {:?}\n  ovfs: {:?}\n--- tmpfs ---\n{w}\n--- ovfs ---\n{g}\nstderr: {}\nlog:\n{}",
            wl.get(first),
            gl.get(first),
            String::from_utf8_lossy(&got.stderr),
            m.log_text()
        );
    }
}

#[test]
fn posix_ops_like_tmpfs_memory() {
    let m = Mounted::start(&memory_config());
    ops_match_tmpfs(&m);
}

#[test]
fn posix_ops_like_tmpfs_fs() {
    let root = tempfile::tempdir().unwrap();
    let m = Mounted::start(&fs_config(root.path()));
    ops_match_tmpfs(&m);
}

#[test]
fn unmounts_cleanly_on_sigterm() {
    let mut m = Mounted::start(&memory_config());
    std::fs::write(m.mountpoint.join("x"), b"1").unwrap();
    assert_eq!(m.stop(), Some(0), "log:\n{}", m.log_text());
    assert!(!common::is_mounted(&m.mountpoint));
}

/// `[[mounts]]` through `ovfs mount`: a synthetic read-only root holding
/// `/mem` and `/a/fs` (an intermediate directory), each its own file system.
#[test]
fn several_mounts_under_a_synthetic_root() {
    let root = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[[mounts]]\npath = \"/mem\"\n[mounts.storage_settings]\ntype = \"memory\"\n\n\
         [[mounts]]\npath = \"/a/fs\"\n[mounts.storage_settings]\ntype = \"fs\"\nroot = {:?}\n\n\
         [[mounts]]\npath = \"/ro\"\nread_only = true\n[mounts.storage_settings]\ntype = \"memory\"\n",
        root.path().display().to_string()
    );
    let m = Mounted::start(&cfg);
    let script = r#"
set -u
echo "root: $(ls | tr '\n' ' ')"
echo "a: $(ls a | tr '\n' ' ')"
echo hello > mem/f && cat mem/f
echo there > a/fs/g && cat a/fs/g
touch x 2>/dev/null && echo "root writable" || echo "root read-only"
touch ro/x 2>/dev/null && echo "ro writable" || echo "ro read-only"
mkdir -p mem/d/e && ls mem | tr '\n' ' ' && echo
mv mem/f a/fs/moved && echo "moved: $(cat a/fs/moved)" && ls mem | tr '\n' ' ' && echo
[ "$(stat -c %d mem)" != "$(stat -c %d a/fs)" ] && echo "separate devices" || echo "same device"
"#;
    let out = bash(script, &m.mountpoint);
    let text = String::from_utf8_lossy(&out.stdout);
    let want = "root: a mem ro \na: fs \nhello\nthere\nroot read-only\nro read-only\nd f \nmoved: hello\nd \n";
    assert!(
        out.status.success() && text.starts_with(want),
        "got:\n{text}\nstderr:\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log_text()
    );
    // The fs mount wrote plain files in its directory.
    assert_eq!(std::fs::read_to_string(root.path().join("g")).unwrap(), "there\n");
    assert_eq!(std::fs::read_to_string(root.path().join("moved")).unwrap(), "hello\n");
    eprintln!(
        "last line (FUSE submounts on the host are not split into devices): {}",
        text.lines().last().unwrap_or("")
    );
}

/// `[[mounts]]` inside a top-level `[storage_settings]` root (fs): the root
/// stays writable, the mount point needs no directory in the root store, and
/// names on mount paths are guarded.
#[test]
fn mounts_inside_a_storage_root() {
    let root = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[storage_settings]\ntype = \"fs\"\nroot = {:?}\n\n[[mounts]]\npath = \"/mem\"\n[mounts.storage_settings]\ntype = \"memory\"\n",
        root.path().display().to_string()
    );
    let m = Mounted::start(&cfg);
    let script = r#"
set -u
echo in-root > r && cat r
echo in-mem > mem/f && cat mem/f
mkdir mem 2>/dev/null && echo "mkdir mem ok" || echo "mkdir mem refused"
mv r mem 2>/dev/null; ls mem | tr '\n' ' '; echo
"#;
    let out = bash(script, &m.mountpoint);
    let text = String::from_utf8_lossy(&out.stdout);
    // `mv r mem` moves across file systems (copy + unlink): r ends up in the mount.
    let want = "in-root\nin-mem\nmkdir mem refused\nf r \n";
    assert!(
        out.status.success() && text == want,
        "got:\n{text}\nwant:\n{want}\nstderr:\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log_text()
    );
    assert!(!root.path().join("mem").exists(), "the mount wrote into the root store");
    assert!(!root.path().join("r").exists(), "moved out of the root store");
}

/// `[[mounts]]` changed while mounted (SIGHUP): a mount added appears and
/// serves, a removed one disappears, a live change to a mount is applied
/// to the running one, all without remounting.
#[test]
fn mounts_follow_the_config_on_reload() {
    let (r1, r2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let fs_mount = |path: &str, root: &Path, extra: &str| {
        format!(
            "[[mounts]]\npath = \"{path}\"\n[mounts.storage_settings]\ntype = \"fs\"\nroot = {:?}\n{extra}\n",
            root.display().to_string()
        )
    };
    let mem = "[[mounts]]\npath = \"/mem\"\n[mounts.storage_settings]\ntype = \"memory\"\n\n";
    let mut m = Mounted::start(&format!("{mem}{}", fs_mount("/a/fs", r1.path(), "")));
    let out = bash("echo one > mem/f && echo two > a/fs/g && ls | tr '\\n' ' '", &m.mountpoint);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a mem ", "log:\n{}", m.log_text());

    // Remove /mem, add /new on another directory, tune /a/fs (a live key).
    let cfg = m.dir.path().join("ovfs.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}{}",
            fs_mount("/a/fs", r1.path(), "[mounts.cache_settings]\nattr_timeout = \"3s\"\n"),
            fs_mount("/new", r2.path(), "")
        ),
    )
    .unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(m.child.id() as i32, libc::SIGHUP) }, 0);
    let t0 = Instant::now();
    while !m.log_text().contains("config reloaded") {
        assert!(t0.elapsed() < Duration::from_secs(20), "no reload; log:\n{}", m.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = m.log_text();
    let line = log.lines().find(|l| l.contains("config reloaded")).unwrap();
    assert!(line.contains("mounts./new.") && line.contains("mounts./mem.") && line.contains("attr_timeout"), "{line}");
    // The kernel may keep the old root entries for the synthetic TTL (1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let out = bash(
        "ls | tr '\\n' ' '; echo; echo three > new/h && cat new/h; cat a/fs/g; ls mem 2>/dev/null || echo 'mem gone'",
        &m.mountpoint,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text,
        "a new \nthree\ntwo\nmem gone\n",
        "stderr:\n{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log_text()
    );
    assert_eq!(std::fs::read_to_string(r2.path().join("h")).unwrap(), "three\n");
    assert!(m.log_text().contains("mount removed") && m.log_text().contains("mount attached"));
    assert!(is_mounted(&m.mountpoint), "still the same mount");
    m.stop();
}
