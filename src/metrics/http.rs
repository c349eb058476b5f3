//! The metrics endpoint (`--metrics-addr`): a minimal HTTP/1.x server that
//! answers `GET /metrics` with [`Metrics::render`] and closes the connection.
//!
//! It listens on loopback TCP (`127.0.0.1:PORT`, `[::1]:PORT`,
//! `localhost:PORT`) or on a unix socket (`unix:/path`); any other address is
//! refused, so the endpoint is never reachable from outside the host (nor from
//! a guest). Each connection is its own task with a short deadline; a slow or
//! hostile client cannot hold up requests or other scrapes.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Metrics;

/// Largest request head read from a client.
const MAX_HEAD: usize = 8 * 1024;
/// A client must send its request and take the answer within this.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// Where the endpoint listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "{a}"),
            MetricsAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("metrics address `unix:` needs a socket path".into());
            }
            return Ok(MetricsAddr::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = if let Some(port) = s.strip_prefix("localhost:") {
            let port: u16 = port.parse().map_err(|_| format!("metrics address `{s}`: bad port"))?;
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)
        } else {
            s.parse().map_err(|_| {
                format!("metrics address `{s}`: expected 127.0.0.1:PORT, [::1]:PORT, localhost:PORT or unix:/path")
            })?
        };
        if !addr.ip().is_loopback() {
            return Err(format!("metrics address `{s}` is not loopback; use 127.0.0.1, ::1 or a unix socket"));
        }
        Ok(MetricsAddr::Tcp(addr))
    }
}

/// A bound endpoint; [`Endpoint::run`] serves it until the task is dropped.
pub enum Endpoint {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

impl Endpoint {
    /// Bind the address (a stale unix socket file is replaced). Must be called
    /// inside a tokio runtime.
    pub fn bind(addr: &MetricsAddr) -> io::Result<Endpoint> {
        let wrap = |e: io::Error| io::Error::new(e.kind(), format!("metrics endpoint {addr}: {e}"));
        match addr {
            MetricsAddr::Tcp(a) => {
                let l = std::net::TcpListener::bind(a).map_err(wrap)?;
                l.set_nonblocking(true).map_err(wrap)?;
                Ok(Endpoint::Tcp(tokio::net::TcpListener::from_std(l).map_err(wrap)?))
            }
            MetricsAddr::Unix(p) => {
                if std::fs::symlink_metadata(p).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    let _ = std::fs::remove_file(p);
                }
                let l = std::os::unix::net::UnixListener::bind(p).map_err(wrap)?;
                l.set_nonblocking(true).map_err(wrap)?;
                Ok(Endpoint::Unix(tokio::net::UnixListener::from_std(l).map_err(wrap)?, p.clone()))
            }
        }
    }

    /// The bound TCP address (for port 0), if TCP.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Tcp(l) => l.local_addr().ok(),
            Endpoint::Unix(..) => None,
        }
    }

    /// Accept and answer scrapes forever.
    pub async fn run(self, metrics: Arc<Metrics>) {
        loop {
            match &self {
                Endpoint::Tcp(l) => match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(answer(s, metrics.clone()));
                    }
                    Err(e) => accept_failed(e).await,
                },
                Endpoint::Unix(l, _) => match l.accept().await {
                    Ok((s, _)) => {
                        tokio::spawn(answer(s, metrics.clone()));
                    }
                    Err(e) => accept_failed(e).await,
                },
            }
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Endpoint::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn accept_failed(e: io::Error) {
    tracing::warn!("metrics endpoint: accept failed: {e}");
    // EMFILE and friends: do not spin.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serve one connection: one request, one answer, close.
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, metrics: Arc<Metrics>) {
    let _ = tokio::time::timeout(CLIENT_DEADLINE, async {
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            if head.len() >= MAX_HEAD {
                break;
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n.min(MAX_HEAD - head.len())]),
            }
        }
        let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let line = String::from_utf8_lossy(line);
        let mut words = line.split_whitespace();
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        let (status, body) = match (method, path) {
            ("GET", "/metrics") | ("HEAD", "/metrics") => ("200 OK", metrics.render()),
            ("GET", _) | ("HEAD", _) => ("404 Not Found", "not found: try /metrics\n".to_string()),
            _ => ("405 Method Not Allowed", "only GET /metrics\n".to_string()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes()).await;
        if method != "HEAD" {
            let _ = s.write_all(body.as_bytes()).await;
        }
        let _ = s.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!("127.0.0.1:9100".parse::<MetricsAddr>().unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!("localhost:9".parse::<MetricsAddr>().unwrap().to_string(), "127.0.0.1:9");
        assert!("[::1]:9100".parse::<MetricsAddr>().is_ok());
        assert_eq!("unix:/run/m.sock".parse::<MetricsAddr>().unwrap(), MetricsAddr::Unix("/run/m.sock".into()));
        for bad in ["0.0.0.0:9100", "10.0.0.1:80", "[::]:1", "unix:", "localhost:x", "example.com:80", ""] {
            let e = bad.parse::<MetricsAddr>().unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
    }

    async fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_over_tcp_and_unix() {
        let m = Arc::new(Metrics::new());
        m.observe(3, 10, 0);
        let ep = Endpoint::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = ep.local_addr().unwrap();
        let task = tokio::spawn(ep.run(m.clone()));
        let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("ovfs_requests_total{opcode=\"GETATTR\"} 1"), "{r}");
        assert!(get(addr, "GET / HTTP/1.0\r\n\r\n").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.0\r\n\r\n").await.starts_with("HTTP/1.1 405"));
        // A client that sends garbage forever is cut off at MAX_HEAD and answered.
        let junk = "x".repeat(MAX_HEAD * 2);
        assert!(get(addr, &junk).await.starts_with("HTTP/1.1 405"));
        // An idle client does not stop others from being served.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await.contains("ovfs_metrics_scrapes_total"));
        task.abort();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let ep = Endpoint::bind(&MetricsAddr::Unix(path.clone())).unwrap();
        let task = tokio::spawn(ep.run(m));
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.contains("ovfs_requests_total"), "{out}");
        task.abort();
    }
}
