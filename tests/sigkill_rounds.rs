//! SIGKILL durability with a real guest: a Linux guest (QEMU TCG) writes files
//! on ovfs over S3 (SeaweedFS) in a loop, each with write + fsync + close
//! (`tests/guest/scripts/sigkill.sh`), while the host SIGKILLs the daemon at a
//! random moment (as Kata stops it), round after round, with a fresh daemon
//! and guest each round. After every round the bucket is read with an
//! independent S3 client:
//! - every file whose fsync returned in the guest (`SYNCED`) is in the bucket
//!   whole, byte for byte, or was replaced by a later complete version;
//! - no object is torn: each one is exactly one version the guest wrote (or
//!   the empty object a `create` leaves before its first flush);
//! - a file whose fsync did not return is either its old version or absent.
//!
//! Rounds: `OVFS_SIGKILL_ROUNDS` (default 3 in CI; the long form is 20).
//! Needs root, QEMU, the guest kernel and SeaweedFS (tests/tools/install-deps.sh).

#[path = "common/guest.rs"]
mod guest;
#[path = "common/s3.rs"]
mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest::{read_lossy, require_guest_deps, serial, tail, BootOpts, Daemon, Work};
use s3::{pseudo_random, sha256, S3Server};

/// What the guest said about one file name, in console order.
#[derive(Default, Debug)]
struct History {
    /// sha256 of every version a write started for.
    started: Vec<String>,
    /// Index into `started` of the last version whose fsync returned.
    last_synced: Option<usize>,
}

fn parse(console: &str) -> BTreeMap<String, History> {
    let mut files: BTreeMap<String, History> = BTreeMap::new();
    for line in console.lines().map(str::trim) {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["WRITING", name, sha, _size] => files.entry(name.to_string()).or_default().started.push(sha.to_string()),
            ["SYNCED", name, sha, _size] => {
                let h = files.entry(name.to_string()).or_default();
                let i = h.started.iter().rposition(|s| s == sha).expect("SYNCED after its WRITING");
                h.last_synced = Some(i);
            }
            _ => {}
        }
    }
    files
}

#[test]
fn sigkill_rounds_lose_no_fsynced_byte() {
    require_guest_deps();
    let _g = serial();
    let rounds: usize = std::env::var("OVFS_SIGKILL_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let server = S3Server::start();
    let client = server.client();
    let work = Work::new("sigkill_rounds", "sigkill");
    let initrd = work.initramfs("sigkill", "sigkill.sh", &[]);
    let prefix = "sigkill";
    let config = server.ovfs_config(&format!("/{prefix}"), "");
    // Versions of `over` that completed in earlier rounds stay valid contents.
    let mut over_versions: Vec<String> = Vec::new();
    let mut over_last_synced: Option<String> = None;
    let (mut synced_total, mut killed_mid_write) = (0usize, 0usize);

    for round in 0..rounds {
        let sock = work.sock(&format!("r{round}"));
        let daemon = Daemon::ovfs_config(&work, &format!("r{round}"), &sock, &config, &[]);
        let pid = daemon.pid().expect("daemon pid");
        // Kill after a random number of completed fsyncs, plus a random delay,
        // so the kill lands anywhere: mid-write, mid-upload, between files.
        let rnd = pseudo_random(round as u64 + 7, 2);
        let target_synced = 1 + (rnd[0] as usize % 5);
        let extra_ms = (rnd[1] as u64 * 8) % 2000;
        let log_path = work.p(&format!("round{round}.log"));
        let stop = Arc::new(AtomicBool::new(false));
        let killer = {
            let (log_path, stop) = (log_path.clone(), stop.clone());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(600) {
                    let n = read_lossy(&log_path).lines().filter(|l| l.starts_with("SYNCED ")).count();
                    if n >= target_synced {
                        std::thread::sleep(Duration::from_millis(extra_ms));
                        // SAFETY: kill(2) on the daemon child we started (reaped later by kill9).
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                false
            })
        };
        let opts = BootOpts { timeout_s: 300, ..BootOpts::default() };
        let boot = work.boot_with(
            &format!("round{round}"),
            &initrd,
            &sock,
            &format!("ovfs.round={round} ovfs.stall=10"),
            &daemon,
            &opts,
        );
        stop.store(true, Ordering::Relaxed);
        let killed = killer.join().expect("killer thread");
        let mut daemon = daemon;
        daemon.kill9();
        assert!(killed, "round {round}: the guest never reached {target_synced} fsyncs\n{}", boot.context());
        assert!(
            boot.lines().any(|l| l.starts_with("GUEST-STALLED")),
            "round {round}: the guest should have stalled on the killed daemon\n{}",
            boot.context()
        );

        // The bucket against what the guest reported.
        let files = parse(&boot.log);
        let objects: BTreeMap<String, u64> = client.list(&format!("{prefix}/")).into_iter().collect();
        let mut problems = Vec::new();
        let mut round_synced = 0;
        let empty = sha256(b"");
        for (name, h) in &files {
            let key = format!("{prefix}/{name}");
            let got = client.get(&key).map(|b| sha256(&b));
            // Contents the object may hold at all: a version the guest wrote,
            // or empty (a CREATE or an O_TRUNC open before the upload).
            let mut valid: BTreeSet<&String> = h.started.iter().collect();
            valid.insert(&empty);
            if name == "over" {
                valid.extend(over_versions.iter());
            }
            if let Some(sha) = &got {
                if !valid.contains(sha) {
                    problems.push(format!("{key}: torn or foreign content {sha}"));
                }
            }
            // Durability: the last fsync'd version, or a newer one (possibly
            // still empty when a later O_TRUNC open was cut short).
            let floor: Option<(&String, &[String])> = match h.last_synced {
                Some(i) => Some((&h.started[i], &h.started[i + 1..])),
                None if name == "over" => over_last_synced.as_ref().map(|prev| (prev, &h.started[..])),
                None => None,
            };
            if let Some((kept, newer)) = floor {
                if h.last_synced.is_some() {
                    round_synced += 1;
                }
                let ok = match &got {
                    Some(sha) => sha == kept || newer.contains(sha) || (!newer.is_empty() && *sha == empty),
                    None => false,
                };
                if !ok {
                    problems.push(format!("{key}: fsync'd version {kept} lost (found {got:?})"));
                }
            } else if got.as_ref().is_some_and(|sha| *sha != empty) {
                killed_mid_write += 1;
            }
        }
        if let Some(h) = files.get("over") {
            over_versions.extend(h.started.iter().cloned());
            if let Some(i) = h.last_synced {
                over_last_synced = Some(h.started[i].clone());
            }
        }
        // No object the guest never wrote this round or before.
        for key in objects.keys() {
            let name = key.strip_prefix(&format!("{prefix}/")).unwrap_or(key);
            let earlier =
                name.strip_prefix('r').and_then(|r| r.split('-').next()).and_then(|r| r.parse::<usize>().ok());
            if name != "over" && !files.contains_key(name) && earlier.is_none_or(|r| r >= round) {
                problems.push(format!("{key}: unexpected object"));
            }
        }
        synced_total += round_synced;
        eprintln!(
            "round {round}: {} files written, {round_synced} fsync'd, kill after {target_synced} fsyncs + {extra_ms} ms",
            files.len()
        );
        assert!(
            problems.is_empty(),
            "round {round}: {}\nconsole tail:\n{}\ndaemon log tail:\n{}",
            problems.join("\n"),
            tail(&boot.log, 30),
            tail(&read_lossy(&daemon.log), 30)
        );
        assert!(round_synced >= target_synced.min(2), "round {round}: the guest fsync'd files before the kill");
    }
    eprintln!(
        "{rounds} SIGKILL rounds: {synced_total} fsync'd files all intact, {killed_mid_write} unsynced files found \
         complete or empty, no torn objects"
    );
}
