//! With the trixie guest kernel (Linux 6.12), whose virtio-fs driver spreads
//! requests over several request queues, a guest on 2 vCPUs with 2 request
//! queues sends requests on more than one queue, and ovfs serves them all.
//! ovfs logs the requests taken from each queue when the VMM disconnects.

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn requests_arrive_on_more_than_one_queue() {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(repo().join("tests/tools/trixie-kernel.sh")).output().expect("run trixie-kernel.sh");
    assert!(
        out.status.success(),
        "cannot get the trixie kernel (run tests/tools/install-deps.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kernel = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let initrd = work.path().join("mq.gz");
    let st = Command::new(repo().join("tests/guest/build-initramfs.sh"))
        .arg("-o")
        .arg(&initrd)
        .arg("-s")
        .arg(repo().join("tests/guest/scripts/multiqueue.sh"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "build-initramfs failed");
    let share = work.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let sock = work.path().join("ovfs.sock");
    let log = work.path().join("ovfs.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_ovfs"))
        .arg("--socket-path")
        .arg(&sock)
        .arg("--shared-dir")
        .arg(&share)
        .arg("--num-request-queues")
        .arg("2")
        .arg("--log-level")
        .arg("info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let console = work.path().join("console.log");
    let guest = Command::new(repo().join("tests/guest/run-guest.sh"))
        .args(["-k", &kernel, "-t", "myfs", "-q", "2", "-c", "2", "-Q", "-T", "300"])
        .arg("-i")
        .arg(&initrd)
        .arg("-s")
        .arg(&sock)
        .arg("-l")
        .arg(&console)
        .status()
        .unwrap();
    // The daemon exits when the VMM disconnects.
    let t0 = std::time::Instant::now();
    while daemon.try_wait().unwrap().is_none() && t0.elapsed().as_secs() < 20 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = daemon.kill();
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(guest.success(), "guest failed; console:\n{console_text}\nlog:\n{log_text}");
    assert!(console_text.contains("PASS multiqueue 40 files"), "console:\n{console_text}");
    let line = log_text
        .lines()
        .find(|l| l.contains("requests per queue:"))
        .unwrap_or_else(|| panic!("no per-queue summary in the log:\n{log_text}"));
    let counts: Vec<u64> = line
        .split("requests per queue:")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|kv| kv.split('=').nth(1).and_then(|v| v.parse().ok()).unwrap_or(0))
        .collect();
    eprintln!("requests per queue (q0 = high priority): {counts:?}");
    assert_eq!(counts.len(), 3, "1 high-priority + 2 request queues: {line}");
    let used = counts[1..].iter().filter(|&&n| n > 0).count();
    assert!(used >= 2, "requests arrived on only {used} request queue(s): {line}");
}
