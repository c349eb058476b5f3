//! A fault-injecting HTTP/1.1 proxy for tests: it sits between a client (the
//! daemon's S3 back-end) and a server (the test SeaweedFS) and, per request,
//! at configurable rates:
//! - resets the connection (`SO_LINGER` 0, then close: the client reads RST)
//!   after receiving the request head, before anything reaches the server;
//! - answers slowly: forwards the request at once but holds the server's
//!   answer for `slow_by` (a client with a shorter per-request timeout gives
//!   up and retries; the server did execute the request, as with a slow
//!   network on the way back);
//! - answers `503 Service Unavailable` (an S3 `SlowDown` error body) itself
//!   and closes the connection, the server never seeing the request;
//! - otherwise forwards the request unchanged and relays the answer.
//!
//! Requests are framed by parsing only the client's side (request line,
//! headers, `Content-Length` or chunked body); answers are copied back byte
//! for byte. HTTP/1.1 clients send the next request on a connection only
//! after reading the previous answer, which is what makes a fault at a
//! request boundary well defined. The choice is drawn from a seeded
//! generator; every decision is counted ([`FaultProxy::counts`]).
//!
//! Use from a test file with `#[path = "common/faultproxy.rs"] mod faultproxy;`.
//! Runs on a tokio runtime of its own, so the tests stay synchronous.

#![allow(dead_code)]

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Per-request fault rates (each in 0..=1, their sum at most 1) and the delay
/// of a slow answer.
#[derive(Clone, Debug)]
pub struct FaultSpec {
    pub reset: f64,
    pub slow: f64,
    pub unavailable: f64,
    pub slow_by: Duration,
    pub seed: u64,
}

impl FaultSpec {
    /// `rate` of all requests faulted, split evenly between reset, slow and 503.
    pub fn even(rate: f64, slow_by: Duration) -> FaultSpec {
        FaultSpec { reset: rate / 3.0, slow: rate / 3.0, unavailable: rate / 3.0, slow_by, seed: 0x5eed_fa17 }
    }

    /// No faults: a plain forwarding proxy.
    pub fn none() -> FaultSpec {
        FaultSpec { reset: 0.0, slow: 0.0, unavailable: 0.0, slow_by: Duration::ZERO, seed: 1 }
    }
}

/// What the proxy did, request by request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Request heads received.
    pub requests: u64,
    /// Forwarded unchanged (slow ones included).
    pub forwarded: u64,
    pub resets: u64,
    pub slowed: u64,
    pub unavailable: u64,
    /// Forwarding failed (server down or gone): the client's connection was reset.
    pub upstream_errors: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    forwarded: AtomicU64,
    resets: AtomicU64,
    slowed: AtomicU64,
    unavailable: AtomicU64,
    upstream_errors: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Pass,
    Reset,
    Slow,
    Unavailable,
}

struct Shared {
    upstream: u16,
    spec: Mutex<FaultSpec>,
    rng: Mutex<u64>,
    counts: Counters,
}

impl Shared {
    fn roll(&self) -> Fault {
        let spec = self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let x = {
            // xorshift64*: a deterministic sequence per seed.
            let mut s = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            *s ^= *s >> 12;
            *s ^= *s << 25;
            *s ^= *s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        };
        if x < spec.reset {
            Fault::Reset
        } else if x < spec.reset + spec.slow {
            Fault::Slow
        } else if x < spec.reset + spec.slow + spec.unavailable {
            Fault::Unavailable
        } else {
            Fault::Pass
        }
    }

    fn slow_by(&self) -> Duration {
        self.spec.lock().unwrap_or_else(|p| p.into_inner()).slow_by
    }
}

/// A running proxy on a loopback port; stopped on drop.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `127.0.0.1:upstream`.
    pub fn start(upstream: u16, spec: FaultSpec) -> FaultProxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("faultproxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let seed = spec.seed.max(1);
        let shared =
            Arc::new(Shared { upstream, spec: Mutex::new(spec), rng: Mutex::new(seed), counts: Counters::default() });
        let listener = rt.block_on(TcpListener::bind(("127.0.0.1", 0))).expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let sh = shared.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                tokio::spawn(serve(client, sh.clone()));
            }
        });
        FaultProxy { port, shared, rt: Some(rt) }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Change the rates from now on (e.g. [`FaultSpec::none`] to stop faulting).
    pub fn set_spec(&self, spec: FaultSpec) {
        *self.shared.spec.lock().unwrap_or_else(|p| p.into_inner()) = spec;
    }

    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counts;
        FaultCounts {
            requests: c.requests.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            slowed: c.slowed.load(Ordering::Relaxed),
            unavailable: c.unavailable.load(Ordering::Relaxed),
            upstream_errors: c.upstream_errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Close `s` with RST instead of FIN.
fn set_linger_zero(s: &TcpStream) {
    let lg = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `s` owns a live socket descriptor for the duration of the
    // call; `lg` is a valid `linger` and its exact size is passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lg as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt(SO_LINGER): {}", std::io::Error::last_os_error());
}

/// The client's side of one connection: buffered bytes not yet consumed.
struct ClientIn {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
}

impl ClientIn {
    /// Read more; false at EOF.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.rd.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n > 0)
    }

    /// The next request head (through the blank line); None at a clean EOF.
    async fn head(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(Some(self.buf.drain(..i + 4).collect()));
            }
            if self.buf.len() > 1 << 20 {
                return Err(std::io::Error::other("request head over 1 MiB"));
            }
            if !self.fill().await? {
                return if self.buf.is_empty() { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
            }
        }
    }

    /// Pass the next `n` bytes to `out` (None: drop them).
    async fn pass(&mut self, mut n: u64, mut out: Option<&mut OwnedWriteHalf>) -> std::io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let k = (n.min(self.buf.len() as u64)) as usize;
            if let Some(o) = out.as_deref_mut() {
                o.write_all(&self.buf[..k]).await?;
            }
            self.buf.drain(..k);
            n -= k as u64;
        }
        Ok(())
    }

    /// The next CRLF-terminated line (with its CRLF).
    async fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                return Ok(self.buf.drain(..i + 2).collect());
            }
            if self.buf.len() > 64 * 1024 {
                return Err(std::io::Error::other("chunk line over 64 KiB"));
            }
            if !self.fill().await? {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Pass (or drop) the body the head announces.
    async fn body(&mut self, framing: Framing, mut out: Option<&mut OwnedWriteHalf>) -> std::io::Result<()> {
        match framing {
            Framing::Length(n) => self.pass(n, out).await,
            Framing::Chunked => loop {
                let line = self.line().await?;
                if let Some(o) = out.as_deref_mut() {
                    o.write_all(&line).await?;
                }
                let text = String::from_utf8_lossy(&line);
                let hex = text.trim().split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(hex, 16).map_err(|_| std::io::Error::other("bad chunk size"))?;
                if size == 0 {
                    // Trailers up to the blank line.
                    loop {
                        let t = self.line().await?;
                        if let Some(o) = out.as_deref_mut() {
                            o.write_all(&t).await?;
                        }
                        if t == b"\r\n" {
                            return Ok(());
                        }
                    }
                }
                self.pass(size + 2, out.as_deref_mut()).await?;
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Framing {
    Length(u64),
    Chunked,
}

/// Body framing and whether the client waits for `100 Continue`.
fn parse_head(head: &[u8]) -> (Framing, bool) {
    let text = String::from_utf8_lossy(head);
    let mut framing = Framing::Length(0);
    let mut expect = false;
    for l in text.split("\r\n").skip(1) {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => {
                if let (Framing::Length(_), Ok(n)) = (framing, v.parse()) {
                    framing = Framing::Length(n);
                }
            }
            "transfer-encoding" if v.contains("chunked") => framing = Framing::Chunked,
            "expect" if v == "100-continue" => expect = true,
            _ => {}
        }
    }
    (framing, expect)
}

const SLOW_DOWN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                         <Message>injected by the test proxy</Message></Error>";

/// The server's side, opened at the first forwarded request: its write half
/// and the task copying its answers to the client.
struct Upstream {
    wr: OwnedWriteHalf,
    copy: tokio::task::JoinHandle<()>,
    /// Milliseconds to hold the next answer (taken by the copy task).
    delay: Arc<AtomicU64>,
}

async fn serve(client: TcpStream, sh: Arc<Shared>) {
    let (rd, cw) = client.into_split();
    let cw = Arc::new(tokio::sync::Mutex::new(cw));
    let mut cin = ClientIn { rd, buf: Vec::new() };
    let mut up: Option<Upstream> = None;
    let end = |up: Option<Upstream>| {
        if let Some(u) = up {
            u.copy.abort();
        }
    };
    loop {
        let head = match cin.head().await {
            Ok(Some(h)) => h,
            _ => return end(up),
        };
        sh.counts.requests.fetch_add(1, Ordering::Relaxed);
        let (framing, expect) = parse_head(&head);
        let fault = sh.roll();
        match fault {
            Fault::Reset => {
                sh.counts.resets.fetch_add(1, Ordering::Relaxed);
                return reset(cin, cw, up).await;
            }
            Fault::Unavailable => {
                sh.counts.unavailable.fetch_add(1, Ordering::Relaxed);
                // Take the body first (unless the client waits for 100 Continue)
                // so the client reads the answer, not a broken pipe.
                if !expect && cin.body(framing, None).await.is_err() {
                    return end(up);
                }
                end(up);
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{SLOW_DOWN}",
                    SLOW_DOWN.len()
                );
                let mut w = cw.lock().await;
                let _ = w.write_all(answer.as_bytes()).await;
                let _ = w.shutdown().await;
                return;
            }
            Fault::Slow => {
                sh.counts.slowed.fetch_add(1, Ordering::Relaxed);
            }
            Fault::Pass => {}
        }
        if up.is_none() {
            match TcpStream::connect(("127.0.0.1", sh.upstream)).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let (mut ur, uw) = s.into_split();
                    let cw2 = cw.clone();
                    let delay = Arc::new(AtomicU64::new(0));
                    let delay2 = delay.clone();
                    let copy = tokio::spawn(async move {
                        let mut tmp = vec![0u8; 64 * 1024];
                        loop {
                            let n = match ur.read(&mut tmp).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            // The first bytes of an answer to a slowed request.
                            let ms = delay2.swap(0, Ordering::Relaxed);
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            if cw2.lock().await.write_all(&tmp[..n]).await.is_err() {
                                return;
                            }
                        }
                        // The server closed: so does the client's side.
                        let _ = cw2.lock().await.shutdown().await;
                    });
                    up = Some(Upstream { wr: uw, copy, delay });
                }
                Err(_) => {
                    sh.counts.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    return reset(cin, cw, up).await;
                }
            }
        }
        let u = up.as_mut().expect("upstream connected");
        if fault == Fault::Slow {
            // Set before the request goes out: the copy task is idle until
            // the answer starts (no pipelining).
            u.delay.store(sh.slow_by().as_millis().max(1) as u64, Ordering::Relaxed);
        }
        let sent = async {
            u.wr.write_all(&head).await?;
            cin.body(framing, Some(&mut u.wr)).await
        };
        if sent.await.is_err() {
            sh.counts.upstream_errors.fetch_add(1, Ordering::Relaxed);
            return reset(cin, cw, up).await;
        }
        sh.counts.forwarded.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reset the client's connection: stop relaying, set `SO_LINGER` 0 and close.
async fn reset(cin: ClientIn, cw: Arc<tokio::sync::Mutex<OwnedWriteHalf>>, up: Option<Upstream>) {
    if let Some(u) = up {
        u.copy.abort();
        let _ = u.copy.await;
    }
    let w = match Arc::try_unwrap(cw) {
        Ok(m) => m.into_inner(),
        Err(_) => return, // cannot happen once the copy task is gone; a FIN then
    };
    if let Ok(s) = cin.rd.reunite(w) {
        set_linger_zero(&s);
        drop(s);
    }
}
