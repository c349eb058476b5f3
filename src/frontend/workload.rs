//! The "daemon alone" benchmark workloads, run through a [`Frontend`]: GETATTR,
//! LOOKUP+CREATE, 4 KiB and 1 MiB READ of cached data, with `depth` requests
//! in flight. Kept in the library (not in the `ovfs-bench` binary) so a test
//! can run them for a handful of operations and they cannot rot.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use super::{Completion, Frontend};
use crate::fuse::abi::{self, Pod, FUSE_ROOT_ID};
use crate::fuse::client;

/// Name of the data file the READ workloads read.
pub const DATA_FILE: &str = "ovfs-bench.dat";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// GETATTR of the data file.
    Getattr,
    /// LOOKUP of a new name (ENOENT) then CREATE of it, as `open(O_CREAT)` does;
    /// the handles are released (untimed) after the measurement.
    LookupCreate,
    /// 4 KiB READs walking the data file.
    Read4k,
    /// 1 MiB READs walking the data file.
    Read1m,
}

impl Workload {
    pub const ALL: [Workload; 4] = [Workload::Getattr, Workload::LookupCreate, Workload::Read4k, Workload::Read1m];

    /// Name in the results (`workload` field).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Getattr => "getattr",
            Workload::LookupCreate => "lookup_create",
            Workload::Read4k => "read_4k",
            Workload::Read1m => "read_1m",
        }
    }

    /// Unit of [`Measurement::value`].
    pub fn unit(self) -> &'static str {
        match self {
            Workload::Getattr | Workload::LookupCreate => "ops/s",
            Workload::Read4k | Workload::Read1m => "MB/s",
        }
    }

    fn read_size(self) -> u32 {
        match self {
            Workload::Read4k => 4096,
            _ => 1 << 20,
        }
    }
}

/// When a measurement stops: after `duration` or `max_ops`, whichever first.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub duration: Duration,
    pub max_ops: u64,
}

/// One measurement.
#[derive(Clone, Copy, Debug)]
pub struct Measurement {
    pub ops: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// ops/s or MB/s (10^6 bytes), per the workload's unit.
    pub value: f64,
}

/// The FUSE session state the workloads need (after [`prepare`]).
pub struct Session {
    pub file: u64,
    pub fh: u64,
    pub file_size: u64,
    /// Directory the LOOKUP+CREATE workload creates in.
    pub dir: u64,
    created: u64,
    request_queues: Vec<usize>,
}

fn fuse_err(what: &str, errno: i32) -> io::Error {
    io::Error::other(format!("{what}: errno {errno}"))
}

fn check(what: &str, r: &client::Reply) -> io::Result<()> {
    if r.errno != 0 {
        return Err(fuse_err(what, r.errno));
    }
    Ok(())
}

/// INIT, then find (or create and fill) [`DATA_FILE`] of `file_size` bytes in
/// the root, open it, read it once whole (so it is cached), and make a fresh
/// directory `dir_name` for creates.
pub fn prepare(fe: &mut Frontend, file_size: u64, dir_name: &str) -> io::Result<Session> {
    let init = fe.init(super::DEFAULT_INIT_FLAGS)?;
    let chunk = (init.max_write.max(4096) as u64).min(1 << 20);
    let u = fe.unique();
    let r = fe.fuse(&client::lookup(u, FUSE_ROOT_ID, DATA_FILE))?;
    let (file, fh) = if r.errno == libc::ENOENT {
        let u = fe.unique();
        let r = fe.fuse(&client::create(u, FUSE_ROOT_ID, DATA_FILE, 0o100644, libc::O_RDWR as u32))?;
        check("CREATE data file", &r)?;
        let e = abi::fuse_entry_out::from_prefix(&r.body).ok_or_else(|| io::Error::other("short CREATE reply"))?;
        let o = abi::fuse_open_out::from_prefix(&r.body[std::mem::size_of::<abi::fuse_entry_out>()..])
            .ok_or_else(|| io::Error::other("short CREATE reply"))?;
        let data: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
        let mut off = 0;
        while off < file_size {
            let n = chunk.min(file_size - off) as usize;
            let u = fe.unique();
            let r = fe.fuse(&client::write(u, e.nodeid, o.fh, off, &data[..n]))?;
            check("WRITE data file", &r)?;
            off += n as u64;
        }
        (e.nodeid, o.fh)
    } else {
        check("LOOKUP data file", &r)?;
        let e = abi::fuse_entry_out::from_prefix(&r.body).ok_or_else(|| io::Error::other("short LOOKUP reply"))?;
        let u = fe.unique();
        let r = fe.fuse(&client::open(u, e.nodeid, libc::O_RDONLY as u32))?;
        check("OPEN data file", &r)?;
        let o = abi::fuse_open_out::from_prefix(&r.body).ok_or_else(|| io::Error::other("short OPEN reply"))?;
        (e.nodeid, o.fh)
    };
    let u = fe.unique();
    let r = fe.fuse(&client::getattr(u, file))?;
    check("GETATTR data file", &r)?;
    let a = r.get::<abi::fuse_attr_out>().ok_or_else(|| io::Error::other("short GETATTR reply"))?;
    if a.attr.size < file_size {
        return Err(io::Error::other(format!("{DATA_FILE} has {} bytes, {file_size} wanted", a.attr.size)));
    }
    // Pre-read once: the READ workloads measure cached data.
    let mut off = 0;
    while off < file_size {
        let n = (1u64 << 20).min(file_size - off) as u32;
        let u = fe.unique();
        let r = fe.fuse_with_capacity(&client::read(u, file, fh, off, n), 16 + n as usize)?;
        check("READ data file", &r)?;
        if r.body.len() != n as usize {
            return Err(io::Error::other(format!("pre-read at {off}: {} bytes, {n} wanted", r.body.len())));
        }
        off += n as u64;
    }
    let u = fe.unique();
    let r = fe.fuse(&client::mkdir(u, FUSE_ROOT_ID, dir_name, 0o755))?;
    check("MKDIR", &r)?;
    let dir = abi::fuse_entry_out::from_prefix(&r.body).ok_or_else(|| io::Error::other("short MKDIR reply"))?.nodeid;
    let request_queues = (1..fe.num_queues()).collect();
    Ok(Session { file, fh, file_size, dir, created: 0, request_queues })
}

/// What one in-flight operation is waiting for.
#[derive(Clone, Copy)]
enum Stage {
    Getattr,
    Lookup(u64),
    Create,
    Read(u32),
}

/// Run `w` with `depth` operations in flight (spread over the request queues)
/// until `limits`; replies are checked (errno, sizes), a wrong one is an error.
pub fn run(fe: &mut Frontend, s: &mut Session, w: Workload, depth: usize, limits: Limits) -> io::Result<Measurement> {
    let depth = depth.max(1);
    let queues = s.request_queues.clone();
    let read_size = w.read_size();
    let reads = matches!(w, Workload::Read4k | Workload::Read1m);
    // READ replies are checked by their header; copying 1 MiB out per reply
    // would measure the front-end.
    fe.set_reply_copy_limit(if reads { Frontend::FUSE_OUT_HEADER } else { usize::MAX });
    let mut pending: HashMap<u64, Stage> = HashMap::new();
    let mut created: Vec<(u64, u64)> = Vec::new();
    let mut next_offset = 0u64;
    let (mut started, mut ops, mut bytes) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    let deadline = t0 + limits.duration;
    let mut rr = 0usize;

    // Issue the first request of a new operation on the next queue.
    macro_rules! start_op {
        () => {{
            let q = queues[rr % queues.len()];
            rr += 1;
            started += 1;
            let u = fe.unique();
            let (req, stage, cap) = match w {
                Workload::Getattr => (client::getattr(u, s.file), Stage::Getattr, 256),
                Workload::LookupCreate => {
                    s.created += 1;
                    let name = format!("f{}", s.created);
                    (client::lookup(u, s.dir, &name), Stage::Lookup(s.created), 256)
                }
                Workload::Read4k | Workload::Read1m => {
                    if next_offset + read_size as u64 > s.file_size {
                        next_offset = 0;
                    }
                    let off = next_offset;
                    next_offset += read_size as u64;
                    (client::read(u, s.file, s.fh, off, read_size), Stage::Read(read_size), 16 + read_size as usize)
                }
            };
            let token = fe.submit(q, &req, cap)?;
            pending.insert(token, stage);
        }};
    }

    for _ in 0..depth.min(limits.max_ops.max(1) as usize) {
        start_op!();
    }
    while !pending.is_empty() {
        let done: Vec<Completion> = fe.wait(&queues)?;
        for c in done {
            let stage = pending.remove(&c.token).ok_or_else(|| io::Error::other("completion for an unknown token"))?;
            let (len, errno) = out_header(&c)?;
            let finished = match stage {
                Stage::Getattr => {
                    if errno != 0 {
                        return Err(fuse_err("GETATTR", errno));
                    }
                    true
                }
                Stage::Lookup(n) => {
                    if errno != libc::ENOENT {
                        return Err(io::Error::other(format!("LOOKUP of a new name: errno {errno}, ENOENT wanted")));
                    }
                    let u = fe.unique();
                    let name = format!("f{n}");
                    let req = client::create(u, s.dir, &name, 0o100644, (libc::O_RDWR | libc::O_CREAT) as u32);
                    let token = fe.submit(c.queue, &req, 512)?;
                    pending.insert(token, Stage::Create);
                    false
                }
                Stage::Create => {
                    if errno != 0 {
                        return Err(fuse_err("CREATE", errno));
                    }
                    let e = abi::fuse_entry_out::from_prefix(&c.reply[16..])
                        .ok_or_else(|| io::Error::other("short CREATE reply"))?;
                    let o =
                        abi::fuse_open_out::from_prefix(&c.reply[16 + std::mem::size_of::<abi::fuse_entry_out>()..])
                            .ok_or_else(|| io::Error::other("short CREATE reply"))?;
                    created.push((e.nodeid, o.fh));
                    true
                }
                Stage::Read(n) => {
                    if errno != 0 {
                        return Err(fuse_err("READ", errno));
                    }
                    if len != 16 + n as usize {
                        return Err(io::Error::other(format!("READ of {n} returned {} bytes", len.saturating_sub(16))));
                    }
                    bytes += n as u64;
                    true
                }
            };
            if finished {
                ops += 1;
                if started < limits.max_ops && Instant::now() < deadline {
                    start_op!();
                }
            }
        }
    }
    let elapsed = t0.elapsed();
    fe.set_reply_copy_limit(usize::MAX);
    release_all(fe, &queues, &created)?;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let value = if reads { bytes as f64 / secs / 1e6 } else { ops as f64 / secs };
    Ok(Measurement { ops, bytes, elapsed, value })
}

/// (length, errno) from a completion's FUSE reply header, checked against the
/// used length.
fn out_header(c: &Completion) -> io::Result<(usize, i32)> {
    let h =
        abi::fuse_out_header::from_prefix(&c.reply).ok_or_else(|| io::Error::other("reply shorter than a header"))?;
    if h.len as usize != c.used_len as usize {
        return Err(io::Error::other(format!("reply header says {} bytes, used ring {}", h.len, c.used_len)));
    }
    Ok((h.len as usize, -h.error))
}

/// RELEASE and FORGET what LOOKUP+CREATE made (untimed), a few in flight.
fn release_all(fe: &mut Frontend, queues: &[usize], created: &[(u64, u64)]) -> io::Result<()> {
    let mut reqs = Vec::with_capacity(created.len() * 2);
    for &(node, fh) in created {
        let u = fe.unique();
        reqs.push((client::release(u, node, fh), 256));
        let u = fe.unique();
        reqs.push((client::forget(u, node, 1), 0));
    }
    let mut in_flight = 0usize;
    let mut it = reqs.into_iter();
    let mut next = it.next();
    let mut rr = 0usize;
    while next.is_some() || in_flight > 0 {
        while let Some((req, cap)) = next.take() {
            let q = queues[rr % queues.len()];
            match fe.submit(q, &req, cap) {
                Ok(_) => {
                    rr += 1;
                    in_flight += 1;
                    next = it.next();
                    if in_flight >= 16 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    next = Some((req, cap));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if in_flight > 0 {
            for c in fe.wait(queues)? {
                in_flight -= 1;
                if c.used_len > 0 {
                    let (_, errno) = out_header(&c)?;
                    if errno != 0 {
                        return Err(fuse_err("RELEASE", errno));
                    }
                }
            }
        }
    }
    Ok(())
}
