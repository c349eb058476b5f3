//! A local S3 server (SeaweedFS, started with `tests/tools/s3-local.sh`) on a
//! free loopback port, shared by the tests of one test binary, and an S3
//! client independent of ovfs and OpenDAL: `curl --aws-sigv4`.
//!
//! Use from a test file with `#[path = "common/s3.rs"] mod s3;`.
//!
//! [`S3Server::shared`] starts the server on first use and stops it (Drop)
//! when the last test holding it is done; a small watchdog process also stops
//! it if the test binary is killed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

pub const BUCKET: &str = "test";
pub const ACCESS_KEY: &str = "admin";
pub const SECRET_KEY: &str = "adminsecret";
pub const REGION: &str = "us-east-1";

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/s3-local.sh")
}

/// A running SeaweedFS instance; stopped on drop.
pub struct S3Server {
    pub port: u16,
    home: tempfile::TempDir,
}

static SHARED: Mutex<Weak<S3Server>> = Mutex::new(Weak::new());

fn port_free(p: u32) -> bool {
    p < 65536 && TcpListener::bind(("127.0.0.1", p as u16)).is_ok()
}

impl S3Server {
    /// The instance shared by the tests of this binary (started if none runs).
    pub fn shared() -> Arc<S3Server> {
        let mut g = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = g.upgrade() {
            return s;
        }
        let s = Arc::new(S3Server::start());
        *g = Arc::downgrade(&s);
        s
    }

    /// Start a fresh instance on a free port (tries a few ports).
    pub fn start() -> S3Server {
        S3Server::start_inner(None)
    }

    /// A fresh instance; with `identities`, its access keys come from that
    /// identities JSON (written to the server's home, `S3_IAM_CONFIG`).
    fn start_inner(identities: Option<String>) -> S3Server {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() ^ std::process::id();
        let mut last_err = String::new();
        for attempt in 0..8u32 {
            // SeaweedFS also binds port + 10000 (gRPC): keep both free.
            let port = 20000 + (seed.wrapping_add(attempt.wrapping_mul(7919)) % 9000);
            if !port_free(port) || !port_free(port + 10000) {
                continue;
            }
            let home = tempfile::Builder::new().prefix("ovfs-s3-").tempdir().expect("tempdir");
            let mut cmd = Command::new("bash");
            cmd.arg(script())
                .arg("start")
                .env("S3_HOME", home.path())
                .env("S3_PORT", port.to_string())
                .env("S3_FRESH", "1")
                .stdin(Stdio::null());
            if let Some(json) = &identities {
                let ids = home.path().join("identities.json");
                std::fs::write(&ids, json).expect("write identities");
                cmd.env("S3_IAM_CONFIG", &ids);
            }
            let out = cmd.output().expect("run s3-local.sh");
            if out.status.success() {
                let s = S3Server { port: port as u16, home };
                s.spawn_watchdog();
                return s;
            }
            last_err = format!(
                "port {port}: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(home.path().join("weed.log")).unwrap_or_default()
            );
            S3Server::stop_at(home.path(), port as u16);
        }
        panic!("could not start SeaweedFS (tests/tools/install-deps.sh installs it): {last_err}");
    }

    /// Stops the server if this test process dies without running Drop.
    fn spawn_watchdog(&self) {
        let pid = std::process::id();
        let pidfile = self.home.path().join("weed.pid");
        let sh = format!(
            "while kill -0 {pid} 2>/dev/null && [ -f '{p}' ]; do sleep 1; done; \
             if [ -f '{p}' ]; then w=$(cat '{p}'); kill -TERM \"$w\" 2>/dev/null; sleep 3; kill -KILL \"$w\" 2>/dev/null; fi",
            p = pidfile.display()
        );
        let _ = Command::new("setsid")
            .arg("sh")
            .arg("-c")
            .arg(sh)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn stop_at(home: &Path, port: u16) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .env("S3_HOME", home)
            .env("S3_PORT", port.to_string())
            .stdin(Stdio::null())
            .output();
    }

    /// Stop the server (an outage), keeping its data, port and home;
    /// [`S3Server::resume`] starts it again. Nothing answers on the port
    /// in between (connections are refused).
    pub fn pause(&self) {
        S3Server::stop_at(self.home.path(), self.port);
    }

    /// Start the server again after [`S3Server::pause`], on the same port,
    /// with the same data; panics if it does not come up.
    pub fn resume(&self) {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("start")
            .env("S3_HOME", self.home.path())
            .env("S3_PORT", self.port.to_string())
            // Keep the data: tests/tools/with-s3.sh exports S3_FRESH=1 to
            // every test, which would wipe it.
            .env("S3_FRESH", "0")
            .stdin(Stdio::null());
        let ids = self.home.path().join("identities.json");
        if ids.exists() {
            cmd.env("S3_IAM_CONFIG", &ids);
        }
        let out = cmd.output().expect("run s3-local.sh");
        assert!(
            out.status.success(),
            "SeaweedFS did not come back on port {}: {}{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.spawn_watchdog();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> S3Client {
        S3Client { endpoint: self.endpoint(), bucket: BUCKET.to_string() }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.home.path().join("weed.log")).unwrap_or_default()
    }

    /// An ovfs config for this server: s3 back-end under `root` (a key
    /// prefix such as `"/t1"`), with extra `[cache_settings]` lines.
    pub fn ovfs_config(&self, root: &str, cache_settings: &str) -> String {
        format!(
            "[cache_settings]\n{cache_settings}\n\n[storage_settings]\ntype = \"s3\"\nbucket = \"{BUCKET}\"\n\
             region = \"{REGION}\"\nendpoint = \"{}\"\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key = \"{SECRET_KEY}\"\nroot = \"{root}\"\n",
            self.endpoint()
        )
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        S3Server::stop_at(self.home.path(), self.port);
    }
}

/// Percent-encoding for S3 query values and keys (`/` kept in keys).
pub fn pct(s: &str, keep_slash: bool) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => o.push(b as char),
            b'/' if keep_slash => o.push('/'),
            _ => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let i = xml.find(&open)? + open.len();
    let j = xml[i..].find(&close)? + i;
    Some(&xml[i..j])
}

/// sha256 of bytes, hex (coreutils `sha256sum`).
pub fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sha256sum");
    {
        let mut i = c.stdin.take().unwrap();
        i.write_all(data).expect("write to sha256sum");
    }
    let out = c.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// sha256 of a file, hex.
pub fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// An S3 client made of `curl --aws-sigv4` calls (no ovfs/OpenDAL code).
#[derive(Clone)]
pub struct S3Client {
    pub endpoint: String,
    pub bucket: String,
}

/// Status and response headers (names lower-cased) of a HEAD.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
}

impl Head {
    /// `x-amz-meta-<name>`.
    pub fn meta(&self, name: &str) -> Option<&str> {
        self.headers.get(&format!("x-amz-meta-{}", name.to_ascii_lowercase())).map(String::as_str)
    }

    /// Every `x-amz-meta-*` header, for messages.
    pub fn metas(&self) -> String {
        self.headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-amz-meta-"))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl S3Client {
    fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "120", "--aws-sigv4", &format!("aws:amz:{REGION}:s3")])
            .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .stdin(Stdio::null());
        c
    }

    pub fn url(&self, key: &str) -> String {
        format!("{}/{}/{}", self.endpoint, self.bucket, pct(key, true))
    }

    fn run(&self, mut c: Command, what: &str) -> Output {
        let out = c.output().unwrap_or_else(|e| panic!("curl {what}: {e}"));
        assert!(out.status.success(), "curl {what} failed: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn code(out: &Output) -> u16 {
        // `-w %{http_code}` is the last thing on stdout.
        let s = String::from_utf8_lossy(&out.stdout);
        s.trim().rsplit('\n').next().unwrap_or("").trim().parse().unwrap_or(0)
    }

    /// PUT the contents of a local file, with `x-amz-meta-*` headers.
    pub fn put_file(&self, key: &str, file: &Path, meta: &[(&str, &str)]) {
        let mut c = self.curl();
        c.arg("-T").arg(file).args(["-o", "/dev/null", "-w", "%{http_code}"]);
        for (k, v) in meta {
            c.arg("-H").arg(format!("x-amz-meta-{k}: {v}"));
        }
        c.arg(self.url(key));
        let out = self.run(c, &format!("PUT {key}"));
        let code = S3Client::code(&out);
        assert_eq!(code, 200, "PUT {key}: HTTP {code}");
    }

    /// PUT bytes.
    pub fn put(&self, key: &str, data: &[u8], meta: &[(&str, &str)]) {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(f.path(), data).expect("write body");
        self.put_file(key, f.path(), meta);
    }

    /// PUT the same body under many keys, in one curl run.
    pub fn put_many(&self, keys: &[String], data: &[u8]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let body = dir.path().join("body");
        std::fs::write(&body, data).expect("write body");
        let mut cfg = String::new();
        for k in keys {
            cfg.push_str(&format!(
                "upload-file = \"{}\"\nurl = \"{}\"\noutput = \"/dev/null\"\n",
                body.display(),
                self.url(k)
            ));
        }
        let cfgp = dir.path().join("curl.cfg");
        std::fs::write(&cfgp, cfg).expect("write curl config");
        let mut c = self.curl();
        c.arg("-K").arg(&cfgp).args(["-w", "%{http_code}\n"]);
        let out = self.run(c, "PUT (many)");
        let codes = String::from_utf8_lossy(&out.stdout);
        let ok = codes.lines().filter(|l| l.trim() == "200").count();
        assert_eq!(ok, keys.len(), "PUT of {} keys: HTTP codes {codes}", keys.len());
    }

    /// GET into a local file; returns the HTTP status (200, 404, ...).
    pub fn get_to_file(&self, key: &str, file: &Path) -> u16 {
        let mut c = self.curl();
        c.arg("-o").arg(file).args(["-w", "%{http_code}"]).arg(self.url(key));
        S3Client::code(&self.run(c, &format!("GET {key}")))
    }

    /// GET: `None` on 404.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        match self.get_to_file(key, f.path()) {
            200 => Some(std::fs::read(f.path()).expect("read body")),
            404 => None,
            c => {
                panic!("GET {key}: HTTP {c}: {}", String::from_utf8_lossy(&std::fs::read(f.path()).unwrap_or_default()))
            }
        }
    }

    /// HEAD: status and headers.
    pub fn head(&self, key: &str) -> Head {
        let mut c = self.curl();
        c.arg("-I").arg(self.url(key));
        let out = self.run(c, &format!("HEAD {key}"));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut headers = BTreeMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        Head { status, headers }
    }

    /// DELETE (204 also for a missing key on S3).
    pub fn delete(&self, key: &str) {
        let mut c = self.curl();
        c.args(["-X", "DELETE", "-o", "/dev/null", "-w", "%{http_code}"]).arg(self.url(key));
        let code = S3Client::code(&self.run(c, &format!("DELETE {key}")));
        assert!(code == 204 || code == 200, "DELETE {key}: HTTP {code}");
    }

    /// ListObjectsV2 of every key under `prefix` (all pages): (key, size).
    pub fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // SigV4 wants the query parameters sorted; curl signs them as given.
            let mut q = String::new();
            if let Some(t) = &token {
                q.push_str(&format!("continuation-token={}&", pct(t, false)));
            }
            q.push_str(&format!("list-type=2&prefix={}", pct(prefix, false)));
            let mut c = self.curl();
            c.arg(format!("{}/{}?{q}", self.endpoint, self.bucket));
            let out = self.run(c, &format!("LIST {prefix}"));
            let xml = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(xml.contains("<ListBucketResult"), "LIST {prefix}: {xml}");
            for part in xml.split("<Contents>").skip(1) {
                let k = tag(part, "Key").map(xml_unescape).expect("Key in Contents");
                let size = tag(part, "Size").and_then(|s| s.parse().ok()).unwrap_or(0);
                keys.push((k, size));
            }
            match (tag(&xml, "IsTruncated"), tag(&xml, "NextContinuationToken")) {
                (Some("true"), Some(t)) => token = Some(xml_unescape(t)),
                _ => break,
            }
        }
        keys
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------- identities (key rotation)

/// The identities JSON of a server started with [`S3Server::start_with_identities`]:
/// the admin key ([`ACCESS_KEY`], which the test's own client uses) plus `keys`.
fn identities_json(keys: &[(&str, &str)]) -> String {
    let cred = |ak: &str, sk: &str| format!("{{\"accessKey\":\"{ak}\",\"secretKey\":\"{sk}\"}}");
    let actions = "\"actions\":[\"Admin\",\"Read\",\"Write\",\"List\",\"Tagging\"]";
    let mut ids = vec![format!("{{\"name\":\"admin\",\"credentials\":[{}],{actions}}}", cred(ACCESS_KEY, SECRET_KEY))];
    if !keys.is_empty() {
        let creds: Vec<String> = keys.iter().map(|(a, s)| cred(a, s)).collect();
        ids.push(format!("{{\"name\":\"app\",\"credentials\":[{}],{actions}}}", creds.join(",")));
    }
    format!("{{\"identities\":[{}]}}\n", ids.join(","))
}

impl S3Server {
    /// A fresh instance whose access keys come from an identities file
    /// (`-s3.config`, see tests/tools/s3-local.sh): the admin key plus
    /// `keys`. [`S3Server::set_identities`] changes them on the running server.
    pub fn start_with_identities(keys: &[(&str, &str)]) -> S3Server {
        S3Server::start_inner(Some(identities_json(keys)))
    }

    /// Replace the non-admin keys of a server started with
    /// [`S3Server::start_with_identities`] (SIGHUP makes SeaweedFS re-read
    /// the file) and wait until the server answers accordingly: every key
    /// of `keys` works and every key of `revoked` is refused (403).
    pub fn set_identities(&self, keys: &[(&str, &str)], revoked: &[(&str, &str)]) {
        let ids = self.home.path().join("identities.json");
        std::fs::write(&ids, identities_json(keys)).expect("write identities");
        let pid = std::fs::read_to_string(self.home.path().join("weed.pid")).expect("weed.pid");
        let ok = Command::new("kill").arg("-HUP").arg(pid.trim()).status().expect("kill").success();
        assert!(ok, "SIGHUP to weed {}", pid.trim());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let good = keys.iter().all(|(a, s)| self.key_status(a, s) == 200)
                && revoked.iter().all(|(a, s)| self.key_status(a, s) == 403);
            if good {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "SeaweedFS did not take the new identities");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// HTTP status of a signed HEAD of the bucket with this key pair
    /// (200: the key works; 403: refused).
    pub fn key_status(&self, access_key: &str, secret_key: &str) -> u16 {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I", "--aws-sigv4", "aws:amz:us-east-1:s3"])
            .arg("--user")
            .arg(format!("{access_key}:{secret_key}"))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .arg(format!("{}/{BUCKET}", self.endpoint()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }
}
