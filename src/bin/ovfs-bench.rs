//! `ovfs-bench`: benchmarks that print ratios against peers measured in the
//! same run.
//!
//! `ovfs-bench daemon`: the daemon alone, without a guest. Each run starts one
//! fresh daemon at a time (ovfs passthrough, ovfs over OpenDAL's fs service,
//! virtiofsd with its default thread pool and with `--thread-pool-size=16`)
//! on the same tmpfs directory, alternating the order run by run, and drives it
//! through the in-process vhost-user front-end (`ovfs::frontend`): GETATTR,
//! LOOKUP+CREATE, 4 KiB and 1 MiB READ of cached data at each depth. Raw
//! results go to a JSON-lines file, medians and ratios to stdout.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ovfs::frontend::workload::{self, Limits, Workload};
use ovfs::frontend::{Frontend, FrontendOptions};

#[derive(Parser)]
#[command(name = "ovfs-bench", about = "ovfs benchmarks (ratios against peers run in the same session)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The daemon alone: ovfs and virtiofsd driven by an in-process front-end.
    Daemon(DaemonArgs),
}

#[derive(Parser)]
struct DaemonArgs {
    /// JSON-lines file for the raw results (overwritten).
    #[arg(long, default_value = "bench/results/daemon.jsonl")]
    out: PathBuf,
    /// Runs per daemon (medians over these).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Requests in flight, comma-separated.
    #[arg(long, default_value = "1,16", value_delimiter = ',')]
    depths: Vec<usize>,
    /// Daemons to run, comma-separated (ovfs-passthrough, ovfs-opendal-fs,
    /// virtiofsd, virtiofsd-pool16).
    #[arg(long, default_value = "ovfs-passthrough,ovfs-opendal-fs,virtiofsd,virtiofsd-pool16", value_delimiter = ',')]
    daemons: Vec<String>,
    /// Parent of the shared directory (a tmpfs).
    #[arg(long, default_value = "/dev/shm")]
    tmpfs: PathBuf,
    /// Size of the data file the READ workloads read, in MiB.
    #[arg(long, default_value_t = 64)]
    file_mib: u64,
    /// Most LOOKUP+CREATE operations per measurement (open handles and inodes).
    #[arg(long, default_value_t = 8000)]
    max_creates: u64,
    /// The ovfs binary (default: `ovfs` next to this binary, built first).
    #[arg(long)]
    ovfs: Option<PathBuf>,
    /// Do not run `cargo build --bin ovfs` before starting.
    #[arg(long)]
    no_build: bool,
    /// The virtiofsd binary (default: ~/.cargo/bin/virtiofsd, then PATH).
    #[arg(long)]
    virtiofsd: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Daemon(a) => daemon(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ovfs-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A daemon under test.
struct Spec {
    name: String,
    bin: PathBuf,
    args: Vec<String>,
}

impl Spec {
    fn command(&self, socket: &Path, shared: &Path) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(&self.args).arg("--socket-path").arg(socket).arg("--shared-dir").arg(shared);
        c
    }
}

fn ovfs_binary(a: &DaemonArgs) -> io::Result<PathBuf> {
    if let Some(p) = &a.ovfs {
        return Ok(p.clone());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| io::Error::other("no directory for the current binary"))?;
    if !a.no_build {
        if let (Some(cargo), Some(manifest)) = (option_env!("CARGO"), option_env!("CARGO_MANIFEST_DIR")) {
            let release = dir.file_name().is_some_and(|n| n == "release");
            eprintln!("ovfs-bench: cargo build{} --bin ovfs", if release { " --release" } else { "" });
            let mut c = Command::new(cargo);
            c.args(["build", "--quiet", "--bin", "ovfs", "--manifest-path"])
                .arg(Path::new(manifest).join("Cargo.toml"));
            if release {
                c.arg("--release");
            }
            if !c.status()?.success() {
                return Err(io::Error::other("cargo build --bin ovfs failed"));
            }
        }
    }
    let p = dir.join("ovfs");
    if !p.exists() {
        return Err(io::Error::other(format!("{} missing: build it or pass --ovfs", p.display())));
    }
    Ok(p)
}

fn virtiofsd_binary(a: &DaemonArgs) -> io::Result<PathBuf> {
    if let Some(p) = &a.virtiofsd {
        return Ok(p.clone());
    }
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/virtiofsd"));
    if let Some(p) = home.filter(|p| p.exists()) {
        return Ok(p);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("virtiofsd")).find(|p| p.exists()))
        .ok_or_else(|| io::Error::other("virtiofsd not found (tests/tools/install-deps.sh installs it)"))
}

fn specs(a: &DaemonArgs) -> io::Result<Vec<Spec>> {
    let mut out = Vec::new();
    let cache = ["--cache".to_string(), "auto".to_string()];
    for name in &a.daemons {
        let spec = match name.as_str() {
            "ovfs-passthrough" => Spec { name: name.clone(), bin: ovfs_binary(a)?, args: cache.to_vec() },
            "ovfs-opendal-fs" => {
                let mut args = cache.to_vec();
                args.push("--opendal-fs".into());
                Spec { name: name.clone(), bin: ovfs_binary(a)?, args }
            }
            "virtiofsd" | "virtiofsd-pool16" => {
                let mut args = vec!["--sandbox=none".to_string()];
                args.extend(cache.iter().cloned());
                if name == "virtiofsd-pool16" {
                    args.push("--thread-pool-size=16".into());
                }
                Spec { name: name.clone(), bin: virtiofsd_binary(a)?, args }
            }
            other => return Err(io::Error::other(format!("unknown daemon {other}"))),
        };
        out.push(spec);
    }
    if out.is_empty() {
        return Err(io::Error::other("no daemons"));
    }
    Ok(out)
}

/// A running daemon; killed on drop if it did not exit by itself.
struct Running {
    child: Child,
}

impl Running {
    fn start(spec: &Spec, socket: &Path, shared: &Path, log: &Path) -> io::Result<Running> {
        let _ = std::fs::remove_file(socket);
        let child = spec
            .command(socket, shared)
            .stdout(Stdio::null())
            .stderr(File::create(log)?)
            .env("RUST_LOG", "warn")
            .spawn()
            .map_err(|e| io::Error::other(format!("{}: {e}", spec.bin.display())))?;
        let mut r = Running { child };
        let t0 = Instant::now();
        while !socket.exists() {
            if let Some(st) = r.child.try_wait()? {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(io::Error::other(format!("{} exited ({st}) before listening:\n{log}", spec.name)));
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(io::Error::other(format!("{} did not listen within 20 s", spec.name)));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(r)
    }

    /// Wait for the daemon to exit after the front-end disconnected.
    fn finish(mut self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Sample {
    workload: Workload,
    depth: usize,
    daemon: String,
    run: usize,
    value: f64,
}

fn json_line(s: &Sample) -> String {
    format!(
        "{{\"suite\":\"daemon\",\"workload\":\"{}\",\"depth\":{},\"daemon\":\"{}\",\"run\":{},\"value\":{:.1},\"unit\":\"{}\"}}",
        s.workload.name(),
        s.depth,
        s.daemon,
        s.run,
        s.value,
        s.workload.unit()
    )
}

/// One daemon, one run: every workload at every depth.
fn one_run(a: &DaemonArgs, spec: &Spec, shared: &Path, work: &Path, run: usize) -> io::Result<Vec<Sample>> {
    let socket = work.join(format!("{}.sock", spec.name));
    let log = work.join(format!("{}-{run}.log", spec.name));
    let daemon = Running::start(spec, &socket, shared, &log)?;
    let opts = FrontendOptions { request_queues: 1, queue_size: 256, slots_per_queue: 64, ..Default::default() };
    let mut fe = Frontend::connect(&socket, opts)?;
    let dir = format!("create-{}-{run}", spec.name);
    let mut s = workload::prepare(&mut fe, a.file_mib << 20, &dir)?;
    let mut out = Vec::new();
    for w in Workload::ALL {
        for &depth in &a.depths {
            let max_ops = if w == Workload::LookupCreate { a.max_creates } else { u64::MAX };
            let limits = Limits { duration: Duration::from_secs_f64(a.seconds), max_ops };
            let m = workload::run(&mut fe, &mut s, w, depth, limits)
                .map_err(|e| io::Error::other(format!("{} {} depth {depth}: {e}", spec.name, w.name())))?;
            eprintln!(
                "  run {run} {:<17} {:<13} depth {depth:>2}: {:>10.1} {} ({} ops)",
                spec.name,
                w.name(),
                m.value,
                w.unit(),
                m.ops
            );
            out.push(Sample { workload: w, depth, daemon: spec.name.clone(), run, value: m.value });
        }
    }
    drop(fe);
    daemon.finish();
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The scratch directory on the tmpfs, removed at the end.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn daemon(a: DaemonArgs) -> io::Result<()> {
    if a.runs == 0 || a.depths.is_empty() {
        return Err(io::Error::other("need at least one run and one depth"));
    }
    let specs = specs(&a)?;
    let work = WorkDir(a.tmpfs.join(format!("ovfs-bench-{}", std::process::id())));
    std::fs::create_dir(&work.0)?;
    let shared = work.0.join("shared");
    std::fs::create_dir(&shared)?;
    // The data file, written once on the tmpfs; every daemon reads the same one.
    {
        let mut f = File::create(shared.join(workload::DATA_FILE))?;
        let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        for _ in 0..a.file_mib {
            f.write_all(&block)?;
        }
    }
    let logs = work.0.join("logs");
    std::fs::create_dir(&logs)?;
    let t0 = Instant::now();
    eprintln!(
        "ovfs-bench daemon: {} runs x {} daemons on {} ({} s per measurement)",
        a.runs,
        specs.len(),
        shared.display(),
        a.seconds
    );
    let mut samples = Vec::new();
    for run in 1..=a.runs {
        // Alternate the order run by run.
        for i in 0..specs.len() {
            let spec = &specs[(i + run - 1) % specs.len()];
            samples.extend(one_run(&a, spec, &shared, &logs, run)?);
        }
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = io::BufWriter::new(File::create(&a.out)?);
    for s in &samples {
        writeln!(out, "{}", json_line(s))?;
    }
    out.flush()?;
    eprintln!("raw results: {} ({:.0} s)", a.out.display(), t0.elapsed().as_secs_f64());
    report(&a, &specs, &samples);
    Ok(())
}

fn report(a: &DaemonArgs, specs: &[Spec], samples: &[Sample]) {
    let med = |w: Workload, depth: usize, d: &str| {
        median(
            samples.iter().filter(|s| s.workload == w && s.depth == depth && s.daemon == d).map(|s| s.value).collect(),
        )
    };
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    println!("\nDaemon alone, medians of {} runs (ratios: ovfs / virtiofsd)", a.runs);
    print!("{:<14} {:>5}", "workload", "depth");
    for n in &names {
        print!(" {n:>17}");
    }
    println!("  unit   ratios");
    for w in Workload::ALL {
        for &depth in &a.depths {
            print!("{:<14} {depth:>5}", w.name());
            for n in &names {
                print!(" {:>17.1}", med(w, depth, n));
            }
            print!("  {:<6}", w.unit());
            let vd = med(w, depth, "virtiofsd");
            let vd16 = med(w, depth, "virtiofsd-pool16");
            let best = vd.max(vd16);
            for o in ["ovfs-passthrough", "ovfs-opendal-fs"] {
                let v = med(w, depth, o);
                if v.is_nan() {
                    continue;
                }
                let short = o.trim_start_matches("ovfs-");
                if !vd.is_nan() {
                    print!(" {short}/vfsd {:.2}x", v / vd);
                }
                if !best.is_nan() && !vd16.is_nan() {
                    print!(" {short}/best-vfsd {:.2}x", v / best);
                }
            }
            println!();
        }
    }
    println!("\nAcceptance targets (issue 5; reported, not asserted):");
    for (w, target) in [(Workload::Getattr, 1.5), (Workload::Read1m, 1.0)] {
        for &depth in &a.depths {
            let o = med(w, depth, "ovfs-passthrough");
            let best = med(w, depth, "virtiofsd").max(med(w, depth, "virtiofsd-pool16"));
            if o.is_nan() || best.is_nan() {
                continue;
            }
            let r = o / best;
            println!(
                "  {:<8} depth {depth:>2}: ovfs-passthrough / best virtiofsd = {r:.2}x (target >= {target:.1}x) {}",
                w.name(),
                if r >= target { "MET" } else { "NOT MET" }
            );
        }
    }
}
