//! Metrics: what the daemon is doing, in the Prometheus text format.
//!
//! Everything here is lock-free on the request path: counters and histogram
//! buckets are atomics, indexed by FUSE opcode or errno number, so recording a
//! request costs a few relaxed atomic adds and a scrape never blocks a request.
//! Requests are observed by [`MeteredHandler`], a [`RequestHandler`] wrapper
//! that reads only the opcode of the request header and the error of the reply
//! header. Back-end calls are counted per mount in a [`BackendStats`] that the
//! back-end module bumps. Other parts (cache, write-back, DAX) publish values
//! through gauge callbacks registered with [`Metrics::gauge`]; those are run
//! only while rendering a scrape and must be cheap.
//!
//! The endpoint itself (`--metrics-addr`, loopback TCP or a unix socket) is in
//! [`http`].

pub mod http;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;

use crate::fuse::abi::Opcode;
use crate::transport::RequestHandler;

/// Opcodes are numbered below this (FUSE_STATX = 52; CUSE_INIT = 4096 is
/// counted as "other").
const OPCODES: usize = 64;
/// errno values are below this on Linux (EHWPOISON = 133).
const ERRNOS: usize = 134;
/// Upper bounds of the latency buckets, in microseconds (`+Inf` on top).
const BUCKETS_US: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 10_000_000];

/// Per-opcode request counters and latency histogram.
struct OpStats {
    count: AtomicU64,
    /// Sum of latencies in microseconds.
    sum_us: AtomicU64,
    /// Non-cumulative bucket counts; the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
}

impl OpStats {
    fn new() -> Self {
        OpStats {
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

type GaugeFn = Box<dyn Fn() -> f64 + Send + Sync>;

struct Gauge {
    name: String,
    help: String,
    /// Rendered label set, e.g. `mount="data"` (may be empty).
    labels: String,
    kind: &'static str,
    value: GaugeFn,
}

/// The daemon's metrics registry; cheap to share (`Arc`).
pub struct Metrics {
    /// Index = opcode number; the last slot counts unknown opcodes.
    ops: Vec<OpStats>,
    errors: Vec<AtomicU64>,
    /// Requests whose header could not be read at all.
    malformed: AtomicU64,
    /// Requests being served right now.
    in_flight: AtomicU64,
    backends: Mutex<Vec<(String, Arc<BackendStats>)>>,
    gauges: Mutex<Vec<Gauge>>,
    scrapes: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            ops: (0..=OPCODES).map(|_| OpStats::new()).collect(),
            errors: (0..ERRNOS).map(|_| AtomicU64::new(0)).collect(),
            malformed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            backends: Mutex::new(Vec::new()),
            gauges: Mutex::new(Vec::new()),
            scrapes: AtomicU64::new(0),
        }
    }

    /// Record one served request: `opcode` from its header, how long it took,
    /// and the errno of the reply (0 for success or no reply).
    pub fn observe(&self, opcode: u32, micros: u64, errno: i32) {
        let slot = if (opcode as usize) < OPCODES { opcode as usize } else { OPCODES };
        let op = &self.ops[slot];
        op.count.fetch_add(1, Ordering::Relaxed);
        op.sum_us.fetch_add(micros, Ordering::Relaxed);
        let b = BUCKETS_US.iter().position(|&le| micros <= le).unwrap_or(BUCKETS_US.len());
        op.buckets[b].fetch_add(1, Ordering::Relaxed);
        if errno > 0 {
            let e = (errno as usize).min(ERRNOS - 1);
            self.errors[e].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests of `opcode` seen so far (tests, logs).
    pub fn requests(&self, opcode: u32) -> u64 {
        let slot = if (opcode as usize) < OPCODES { opcode as usize } else { OPCODES };
        self.ops[slot].count.load(Ordering::Relaxed)
    }

    /// Register the back-end call counters of one mount (by its name).
    pub fn add_backend(&self, mount: &str, stats: Arc<BackendStats>) {
        let mut b = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        b.retain(|(m, _)| m != mount);
        b.push((mount.to_string(), stats));
    }

    /// Register a value read at scrape time. `kind` is "gauge" or "counter";
    /// `labels` is a rendered label set such as `mount="data"` or "". The
    /// callback runs on the scrape task: it must not block.
    pub fn gauge(
        &self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &str,
        value: impl Fn() -> f64 + Send + Sync + 'static,
    ) {
        let mut g = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|x| !(x.name == name && x.labels == labels));
        g.push(Gauge {
            name: name.to_string(),
            help: help.to_string(),
            labels: labels.to_string(),
            kind,
            value: Box::new(value),
        });
    }

    /// Remove the gauges registered with these labels (a mount went away).
    pub fn remove_labelled(&self, labels: &str) {
        self.gauges.lock().unwrap_or_else(|p| p.into_inner()).retain(|x| x.labels != labels);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("# HELP ovfs_requests_total FUSE requests served, by opcode.\n");
        out.push_str("# TYPE ovfs_requests_total counter\n");
        for (i, op) in self.ops.iter().enumerate() {
            let n = op.count.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "ovfs_requests_total{{opcode=\"{}\"}} {n}", opcode_name(i));
            }
        }
        out.push_str("# HELP ovfs_request_duration_seconds Time from request to reply, by opcode.\n");
        out.push_str("# TYPE ovfs_request_duration_seconds histogram\n");
        for (i, op) in self.ops.iter().enumerate() {
            let count = op.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let name = opcode_name(i);
            let mut cumulative = 0u64;
            for (b, le) in BUCKETS_US.iter().enumerate() {
                cumulative += op.buckets[b].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "ovfs_request_duration_seconds_bucket{{opcode=\"{name}\",le=\"{}\"}} {cumulative}",
                    *le as f64 / 1e6
                );
            }
            cumulative += op.buckets[BUCKETS_US.len()].load(Ordering::Relaxed);
            let _ = writeln!(out, "ovfs_request_duration_seconds_bucket{{opcode=\"{name}\",le=\"+Inf\"}} {cumulative}");
            let sum = op.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "ovfs_request_duration_seconds_sum{{opcode=\"{name}\"}} {sum}");
            // The count line repeats the cumulative total so the histogram is
            // self-consistent even while requests are being recorded.
            let _ = writeln!(out, "ovfs_request_duration_seconds_count{{opcode=\"{name}\"}} {cumulative}");
        }
        out.push_str("# HELP ovfs_request_errors_total Error replies, by errno.\n");
        out.push_str("# TYPE ovfs_request_errors_total counter\n");
        for (e, c) in self.errors.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(out, "ovfs_request_errors_total{{errno=\"{}\"}} {n}", errno_name(e as i32));
            }
        }
        out.push_str("# HELP ovfs_malformed_requests_total Requests whose header could not be read.\n");
        out.push_str("# TYPE ovfs_malformed_requests_total counter\n");
        let _ = writeln!(out, "ovfs_malformed_requests_total {}", self.malformed.load(Ordering::Relaxed));
        out.push_str("# HELP ovfs_requests_in_flight Requests being served.\n");
        out.push_str("# TYPE ovfs_requests_in_flight gauge\n");
        let _ = writeln!(out, "ovfs_requests_in_flight {}", self.in_flight.load(Ordering::Relaxed));

        let backends: Vec<(String, Arc<BackendStats>)> =
            self.backends.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        out.push_str("# HELP ovfs_backend_calls_total Back-end operations, by mount and operation.\n");
        out.push_str("# TYPE ovfs_backend_calls_total counter\n");
        for (mount, s) in &backends {
            for (op, calls, _) in s.snapshot() {
                let _ = writeln!(out, "ovfs_backend_calls_total{{mount=\"{}\",op=\"{op}\"}} {calls}", escape(mount));
            }
        }
        out.push_str("# HELP ovfs_backend_errors_total Failed back-end operations (after retries).\n");
        out.push_str("# TYPE ovfs_backend_errors_total counter\n");
        for (mount, s) in &backends {
            for (op, _, errors) in s.snapshot() {
                let _ = writeln!(out, "ovfs_backend_errors_total{{mount=\"{}\",op=\"{op}\"}} {errors}", escape(mount));
            }
        }

        let gauges = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        let mut seen: Vec<&str> = Vec::new();
        for g in gauges.iter() {
            if !seen.contains(&g.name.as_str()) {
                seen.push(&g.name);
                let _ = writeln!(out, "# HELP {} {}", g.name, g.help);
                let _ = writeln!(out, "# TYPE {} {}", g.name, g.kind);
                for h in gauges.iter().filter(|h| h.name == g.name) {
                    let v = (h.value)();
                    if h.labels.is_empty() {
                        let _ = writeln!(out, "{} {v}", h.name);
                    } else {
                        let _ = writeln!(out, "{}{{{}}} {v}", h.name, h.labels);
                    }
                }
            }
        }
        out.push_str("# HELP ovfs_metrics_scrapes_total Scrapes of this endpoint.\n");
        out.push_str("# TYPE ovfs_metrics_scrapes_total counter\n");
        let _ = writeln!(out, "ovfs_metrics_scrapes_total {}", self.scrapes.load(Ordering::Relaxed));
        out
    }
}

/// The process-wide registry (the daemon has one; tests may share it).
pub fn global() -> &'static Arc<Metrics> {
    static GLOBAL: std::sync::OnceLock<Arc<Metrics>> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Metrics::new()))
}

/// Escape a label value (backslash, quote, newline).
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn opcode_name(slot: usize) -> String {
    match Opcode::from_u32(slot as u32) {
        Some(op) if slot < OPCODES => format!("{op:?}").to_ascii_uppercase(),
        _ if slot < OPCODES => format!("OP{slot}"),
        _ => "OTHER".to_string(),
    }
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINTR => "EINTR",
        libc::ECANCELED => "ECANCELED",
        _ => return format!("E{e}"),
    };
    name.to_string()
}

/// Operations the back-end counts (index into [`BackendStats`]).
pub const BACKEND_OPS: [&str; 10] =
    ["stat", "list", "read", "write", "create_dir", "delete", "remove_dir", "rename", "set_meta", "other"];

/// Back-end calls and failures of one mount, bumped by the back-end module.
#[derive(Default)]
pub struct BackendStats {
    calls: [AtomicU64; BACKEND_OPS.len()],
    errors: [AtomicU64; BACKEND_OPS.len()],
}

impl BackendStats {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn index(op: &str) -> usize {
        BACKEND_OPS.iter().position(|o| *o == op).unwrap_or(BACKEND_OPS.len() - 1)
    }

    /// Count one call of `op` (one of [`BACKEND_OPS`]; anything else is
    /// "other"), failed or not.
    pub fn record(&self, op: &str, ok: bool) {
        let i = Self::index(op);
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (op, calls, errors) for every operation.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, u64)> {
        BACKEND_OPS
            .iter()
            .enumerate()
            .map(|(i, op)| (*op, self.calls[i].load(Ordering::Relaxed), self.errors[i].load(Ordering::Relaxed)))
            .collect()
    }

    /// Total calls and errors over all operations.
    pub fn totals(&self) -> (u64, u64) {
        self.snapshot().iter().fold((0, 0), |(c, e), (_, calls, errors)| (c + calls, e + errors))
    }
}

/// A [`RequestHandler`] that records every request in [`Metrics`] and passes
/// it on unchanged.
pub struct MeteredHandler {
    inner: Arc<dyn RequestHandler>,
    metrics: Arc<Metrics>,
}

impl MeteredHandler {
    pub fn new(inner: Arc<dyn RequestHandler>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(MeteredHandler { inner, metrics })
    }
}

/// Decrements the in-flight gauge however the request ends (a dropped future
/// when the front-end goes away included).
struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RequestHandler for MeteredHandler {
    fn handle(self: Arc<Self>, req: Vec<u8>) -> BoxFuture<'static, Option<Vec<u8>>> {
        // fuse_in_header: len u32, opcode u32, ... (little-endian on every
        // platform virtio-fs runs on; the transport checked nothing).
        let opcode = req.get(4..8).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let inner = self.inner.clone();
        Box::pin(async move {
            let Some(opcode) = opcode else {
                self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
                return inner.handle(req).await;
            };
            self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
            let _guard = InFlight(self.metrics.clone());
            let start = Instant::now();
            let reply = inner.handle(req).await;
            // fuse_out_header: len u32, error i32 (negative errno), unique u64.
            let errno = reply
                .as_deref()
                .and_then(|r| r.get(4..8))
                .map(|b| -i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            let micros = start.elapsed().as_micros().min(u64::MAX as u128) as u64;
            self.metrics.observe(opcode, micros, errno);
            reply
        })
    }

    fn enable_dax(&self, mapper: Arc<dyn crate::fuse::dax::DaxMapper>) -> bool {
        self.inner.enable_dax(mapper)
    }

    fn dax_stats(&self) -> Option<crate::fuse::dax::DaxStats> {
        self.inner.dax_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;
    impl RequestHandler for Echo {
        fn handle(self: Arc<Self>, req: Vec<u8>) -> BoxFuture<'static, Option<Vec<u8>>> {
            Box::pin(async move {
                // Reply ENOENT to LOOKUP, success to everything else.
                let op = u32::from_le_bytes(req.get(4..8)?.try_into().unwrap());
                let err: i32 = if op == 1 { -libc::ENOENT } else { 0 };
                let mut r = 16u32.to_le_bytes().to_vec();
                r.extend_from_slice(&err.to_le_bytes());
                r.extend_from_slice(&[0u8; 8]);
                Some(r)
            })
        }
    }

    fn header(opcode: u32) -> Vec<u8> {
        let mut h = 40u32.to_le_bytes().to_vec();
        h.extend_from_slice(&opcode.to_le_bytes());
        h.resize(40, 0);
        h
    }

    #[tokio::test]
    async fn counts_opcodes_errors_and_latency() {
        let m = Arc::new(Metrics::new());
        let h = MeteredHandler::new(Arc::new(Echo), m.clone());
        for _ in 0..3 {
            h.clone().handle(header(3)).await;
        }
        h.clone().handle(header(1)).await;
        h.clone().handle(header(9999)).await;
        assert!(h.clone().handle(vec![1, 2]).await.is_none());
        assert_eq!(m.requests(3), 3);
        assert_eq!(m.requests(1), 1);
        let text = m.render();
        assert!(text.contains("ovfs_requests_total{opcode=\"GETATTR\"} 3"), "{text}");
        assert!(text.contains("ovfs_requests_total{opcode=\"LOOKUP\"} 1"), "{text}");
        assert!(text.contains("ovfs_requests_total{opcode=\"OTHER\"} 1"), "{text}");
        assert!(text.contains("ovfs_request_errors_total{errno=\"ENOENT\"} 1"), "{text}");
        assert!(text.contains("ovfs_request_duration_seconds_bucket{opcode=\"GETATTR\",le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("ovfs_request_duration_seconds_count{opcode=\"GETATTR\"} 3"), "{text}");
        assert!(text.contains("ovfs_malformed_requests_total 1"), "{text}");
        assert!(text.contains("ovfs_requests_in_flight 0"), "{text}");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new();
        m.observe(15, 40, 0);
        m.observe(15, 3_000, 0);
        m.observe(15, 20_000_000, 0);
        let text = m.render();
        assert!(text.contains("opcode=\"READ\",le=\"0.00005\"} 1"), "{text}");
        assert!(text.contains("opcode=\"READ\",le=\"0.005\"} 2"), "{text}");
        assert!(text.contains("opcode=\"READ\",le=\"10\"} 2"), "{text}");
        assert!(text.contains("opcode=\"READ\",le=\"+Inf\"} 3"), "{text}");
    }

    #[test]
    fn backend_stats_and_gauges() {
        let m = Metrics::new();
        let s = BackendStats::new();
        s.record("read", true);
        s.record("read", false);
        s.record("weird", true);
        m.add_backend("da\"ta", s.clone());
        m.gauge("ovfs_cache_hits_total", "Cache hits.", "counter", "mount=\"data\"", || 7.0);
        let text = m.render();
        assert!(text.contains("ovfs_backend_calls_total{mount=\"da\\\"ta\",op=\"read\"} 2"), "{text}");
        assert!(text.contains("ovfs_backend_errors_total{mount=\"da\\\"ta\",op=\"read\"} 1"), "{text}");
        assert!(text.contains("ovfs_backend_calls_total{mount=\"da\\\"ta\",op=\"other\"} 1"), "{text}");
        assert!(text.contains("# TYPE ovfs_cache_hits_total counter"), "{text}");
        assert!(text.contains("ovfs_cache_hits_total{mount=\"data\"} 7"), "{text}");
        assert_eq!(s.totals(), (3, 1));
        m.remove_labelled("mount=\"data\"");
        assert!(!m.render().contains("ovfs_cache_hits_total{"));
    }

    #[test]
    fn out_of_range_errno_and_opcode_do_not_panic() {
        let m = Metrics::new();
        m.observe(u32::MAX, u64::MAX, i32::MAX);
        m.observe(63, 0, 133);
        let text = m.render();
        assert!(text.contains("opcode=\"OTHER\""), "{text}");
        assert!(text.contains("opcode=\"OP63\""), "{text}");
    }
}
