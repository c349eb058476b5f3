//! Back-end storage through Apache OpenDAL: the only module that names
//! OpenDAL types.
//!
//! It owns operator construction from [`StorageSettings`] (with strict checking
//! of the service's option keys, see `strict.rs`), the layer stack (retry with
//! exponential back-off and jitter, per-attempt timeouts, a concurrency limit),
//! the capability probe, and a small POSIX-oriented surface over the operator:
//! lookup / list / read / write / streaming writer / mkdir / unlink / rmdir /
//! rename / set_posix. OpenDAL breaks its API between minor versions, so the
//! surface is kept small and everything OpenDAL-specific stays in here.
//!
//! Object-store mapping (gcsfuse style): the key is the path, `/` separates
//! directories, a directory is a `dir/` marker object or is implied by any key
//! under `dir/`, and a directory wins over a file object of the same name. On
//! services with real directories (`fs`, see [`Caps::native_dirs`]) they are
//! used directly. POSIX attributes are stored as s3fs-compatible user metadata
//! (`mode`, `uid`, `gid`, `mtime`, decimal strings) where the service supports
//! user metadata.
//!
//! On `fs`, POSIX attributes live in `user.*` xattrs (OpenDAL's fs service
//! maps user metadata to them). The back-end reads them directly for listed
//! entries (so `list` returns the same `posix` as `lookup`, see
//! [`Caps::listing_has_posix`]) and writes them in place for `set_posix` and
//! `create_dir_with` (files and directories, no content rewrite). File
//! contents are read from the local file directly too (one `pread` of the
//! file's real size on the blocking pool; see `Backend::direct_read_path`),
//! except when fault injection is configured.
//!
//! The `memory` service stores no user metadata, but it lives entirely in
//! this process, so the back-end keeps its POSIX attributes beside it in a
//! side table in the same process: data and attributes live and die
//! together (both are gone when the daemon exits), so nothing can go stale
//! across restarts. The table is keyed by OpenDAL key (`file`, `dir/`, so a
//! file and a directory of the same name do not share attributes) and
//! mirrors what an object store with user metadata does: `write`, a
//! streaming writer's `close` and `create_dir_with` replace the stored
//! attributes (a PUT replaces metadata on S3), `set_posix` updates them in
//! place (files and directories), `lookup` and `list` return them (in the
//! user-metadata encoding, so `mtime` in whole seconds, as on fs and S3),
//! `delete_file` / `remove_dir` drop them and `rename_file` moves them. Each
//! OpenDAL call and its table update run under an async gate (exclusive for
//! mutations, shared for lookups and listings), and the table is only
//! updated after the OpenDAL call succeeded, so concurrent calls see data
//! and attributes change together.
//!
//! Fault injection for tests (`inject_*` in `[backend_settings]`, off by
//! default): a latency before every public async call whose path matches a
//! prefix, and error layers below and above the retry layer (`faults.rs`).
//!
//! Paths are relative (`""` is the root), never start or end with `/`; odd
//! input yields [`ErrorKind::InvalidInput`], never a panic. No error message
//! carries a credential: messages are built from OpenDAL's message and source
//! chain and every configured secret value is scrubbed from them.

mod faults;
mod strict;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::TryStreamExt;
use opendal::layers::{ConcurrentLimitLayer, RetryLayer, TimeoutLayer};
use opendal::options::{CopyOptions, ListOptions, ReadOptions, RenameOptions, WriteOptions};
use opendal::{Capability, Configurator, EntryMode, Operator};

use crate::config::{is_secret_key, BackendSettings, StorageSettings};
use faults::{FaultLayer, FaultState};

/// Kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
}

/// POSIX attributes persisted as user metadata (s3fs names and encodings).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PosixMeta {
    /// Full `st_mode` including the file-type bits, as s3fs stores it.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Stored as whole seconds since the epoch.
    pub mtime: Option<SystemTime>,
}

impl PosixMeta {
    fn is_empty(&self) -> bool {
        self.mode.is_none() && self.uid.is_none() && self.gid.is_none() && self.mtime.is_none()
    }

    fn to_pairs(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if let Some(m) = self.mode {
            v.push(("mode".to_string(), m.to_string()));
        }
        if let Some(u) = self.uid {
            v.push(("uid".to_string(), u.to_string()));
        }
        if let Some(g) = self.gid {
            v.push(("gid".to_string(), g.to_string()));
        }
        if let Some(t) = self.mtime {
            let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            v.push(("mtime".to_string(), secs.to_string()));
        }
        v
    }

    fn from_metadata(md: &opendal::Metadata) -> PosixMeta {
        let Some(um) = md.user_metadata() else {
            return PosixMeta::default();
        };
        PosixMeta::from_lookup(|k| um.get(k).map(str::to_string))
    }

    /// Decode from a key -> value lookup (s3fs names and encodings).
    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> PosixMeta {
        let num = |k: &str| get(k).and_then(|s| s.trim().parse::<u32>().ok());
        PosixMeta {
            mode: num("mode"),
            uid: num("uid"),
            gid: num("gid"),
            mtime: get("mtime").as_deref().and_then(parse_mtime),
        }
    }
}

/// xattr namespace OpenDAL's fs service stores user metadata in.
const XATTR_USER_PREFIX: &str = "user.";

/// POSIX attributes from the `user.*` xattrs of a local path (fs service).
/// Missing, unreadable or unsupported xattrs read as absent.
fn read_posix_xattrs(path: &Path) -> PosixMeta {
    PosixMeta::from_lookup(|k| {
        xattr::get(path, format!("{XATTR_USER_PREFIX}{k}")).ok().flatten().and_then(|v| String::from_utf8(v).ok())
    })
}

/// Store the set fields of `posix` as `user.*` xattrs of a local path, in
/// place (fs service).
fn write_posix_xattrs(path: &Path, posix: &PosixMeta) -> std::io::Result<()> {
    for (k, v) in posix.to_pairs() {
        xattr::set(path, format!("{XATTR_USER_PREFIX}{k}"), v.as_bytes())?;
    }
    Ok(())
}

/// Map a local I/O error (fs xattr calls) to an [`ErrorKind`].
fn io_error_kind(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as I;
    match e.kind() {
        I::NotFound => ErrorKind::NotFound,
        I::PermissionDenied | I::ReadOnlyFilesystem => ErrorKind::PermissionDenied,
        I::Unsupported => ErrorKind::Unsupported,
        I::NotADirectory => ErrorKind::NotDirectory,
        I::TimedOut => ErrorKind::Timeout,
        _ if e.raw_os_error() == Some(libc::ENOTSUP) => ErrorKind::Unsupported,
        _ => ErrorKind::Unexpected,
    }
}

/// `[offset, end)` of the local file `local`, cut at its size, read on the
/// blocking pool (`Backend::read` on fs).
async fn read_local(local: PathBuf, offset: u64, end: u64) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let task = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&local)?;
        let md = f.metadata()?;
        if md.is_dir() {
            return Err(std::io::Error::from_raw_os_error(libc::EISDIR));
        }
        let stop = end.min(md.len());
        if offset >= stop {
            return Ok(Bytes::new());
        }
        let want = usize::try_from(stop - offset).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break, // truncated meanwhile: short
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        Ok(Bytes::from(buf))
    });
    task.await.map_err(std::io::Error::other)?
}

/// s3fs writes integer seconds; accept an optional fractional part too.
fn parse_mtime(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let secs: u64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let padded = format!("{digits:0<9}");
        nanos = padded.parse().ok()?;
    }
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Metadata of a file or directory.
#[derive(Clone, Debug)]
pub struct Meta {
    pub kind: EntryKind,
    /// Content length for files, 0 for directories.
    pub size: u64,
    /// Last-modified time reported by the service, if any.
    pub mtime: Option<SystemTime>,
    pub etag: Option<String>,
    /// POSIX attributes from user metadata. Always filled by
    /// [`Backend::lookup`]; filled by [`Backend::list`] only where
    /// [`Caps::listing_has_posix`] (fs: read from xattrs; memory: from the
    /// in-process side table; S3 listings carry no user metadata, so listed
    /// entries have none there).
    pub posix: PosixMeta,
}

impl Meta {
    fn dir() -> Meta {
        Meta { kind: EntryKind::Dir, size: 0, mtime: None, etag: None, posix: PosixMeta::default() }
    }

    fn from_od(md: &opendal::Metadata, kind: EntryKind) -> Meta {
        Meta {
            kind,
            size: if kind == EntryKind::File { md.content_length() } else { 0 },
            mtime: md.last_modified().map(SystemTime::from),
            etag: md.etag().map(str::to_string),
            posix: PosixMeta::from_metadata(md),
        }
    }
}

/// One directory entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// One path component.
    pub name: String,
    pub meta: Meta,
}

/// What the service can do, in the terms the file system needs.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Write with user metadata (POSIX attributes can be persisted). True on
    /// memory too, where they are kept in an in-process side table.
    pub user_metadata: bool,
    /// Server-side rename (else rename is copy + delete).
    pub native_rename: bool,
    /// Server-side copy.
    pub copy: bool,
    /// Real directories (fs-like): no markers, mkdir/rmdir are native.
    pub native_dirs: bool,
    /// Conditional create (`If-None-Match: *`).
    pub write_if_not_exists: bool,
    /// Multipart / multi-call streaming upload.
    pub write_multi: bool,
    pub read: bool,
    pub write: bool,
    pub list: bool,
    pub delete: bool,
    /// [`Backend::list`] returns complete POSIX metadata for every entry, so
    /// READDIRPLUS attributes are as good as LOOKUP's and may be cached:
    /// true on fs (xattrs read per entry), on memory (from the side table)
    /// and on services without user metadata (there is nothing to return);
    /// false on S3 and other object stores (ListObjectsV2 returns no user
    /// metadata).
    pub listing_has_posix: bool,
}

/// Error categories; the vfs maps them to errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    PermissionDenied,
    AlreadyExists,
    IsDirectory,
    NotDirectory,
    NotEmpty,
    Unsupported,
    ConditionNotMatch,
    RateLimited,
    InvalidInput,
    Timeout,
    Unexpected,
}

/// A back-end error: a kind plus a one-line message free of secrets.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    msg: String,
}

impl Error {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Error {
        let msg: String = msg.into();
        let msg = if msg.contains(['\n', '\r']) {
            msg.split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
        } else {
            msg
        };
        Error { kind, msg }
    }

    /// The message (one line, without the kind).
    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.msg, self.kind)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidInput, msg)
}

/// Exhaustive mapping of OpenDAL error kinds. Only a definite not-found maps
/// to `NotFound`; anything unknown is `Unexpected`.
fn map_kind(e: &opendal::Error) -> ErrorKind {
    use opendal::ErrorKind as K;
    match e.kind() {
        K::NotFound => ErrorKind::NotFound,
        K::PermissionDenied => ErrorKind::PermissionDenied,
        K::AlreadyExists => ErrorKind::AlreadyExists,
        K::IsADirectory => ErrorKind::IsDirectory,
        K::NotADirectory => ErrorKind::NotDirectory,
        K::Unsupported => ErrorKind::Unsupported,
        K::ConditionNotMatch => ErrorKind::ConditionNotMatch,
        K::RateLimited => ErrorKind::RateLimited,
        K::ConfigInvalid | K::IsSameFile | K::RangeNotSatisfied => ErrorKind::InvalidInput,
        K::Conflict => ErrorKind::Unexpected,
        K::Unexpected => {
            if let Some(k) = io_kind(e) {
                k
            } else if e.message().contains("timeout reached") {
                // TimeoutLayer reports Unexpected with this message.
                ErrorKind::Timeout
            } else {
                ErrorKind::Unexpected
            }
        }
        _ => ErrorKind::Unexpected,
    }
}

/// OpenDAL maps most `std::io` errors (ENOTDIR, ENOTEMPTY, ...) to
/// `Unexpected`; recover the precise kind from the source chain.
fn io_kind(e: &opendal::Error) -> Option<ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as I;
            return match io.kind() {
                I::NotADirectory => Some(ErrorKind::NotDirectory),
                I::IsADirectory => Some(ErrorKind::IsDirectory),
                I::DirectoryNotEmpty => Some(ErrorKind::NotEmpty),
                I::TimedOut => Some(ErrorKind::Timeout),
                I::InvalidFilename => Some(ErrorKind::InvalidInput),
                I::ReadOnlyFilesystem => Some(ErrorKind::PermissionDenied),
                _ => None,
            };
        }
        cur = err.source();
    }
    None
}

/// Services known to have real directories.
const NATIVE_DIR_SCHEMES: &[&str] =
    &["fs", "hdfs", "hdfs-native", "sftp", "webdav", "ftp", "azdls", "compfs", "monoiofs"];

/// Services compiled in with strict option checking. To add a service:
/// enable its `services-*` feature in Cargo.toml and add a line here.
struct ServiceDef {
    scheme: &'static str,
    /// Required keys, each with the aliases OpenDAL accepts for it.
    required: &'static [&'static [&'static str]],
    build: BuildFn,
}

const SERVICES: &[ServiceDef] = &[
    ServiceDef { scheme: "memory", required: &[], build: build_typed::<opendal::services::MemoryConfig> },
    ServiceDef { scheme: "fs", required: &[&["root"]], build: build_typed::<opendal::services::FsConfig> },
    ServiceDef {
        scheme: "s3",
        required: &[&["bucket", "aws_bucket", "aws_bucket_name", "bucket_name"]],
        build: build_typed::<opendal::services::S3Config>,
    },
    ServiceDef { scheme: "webdav", required: &[&["endpoint"]], build: build_typed::<opendal::services::WebdavConfig> },
    ServiceDef { scheme: "http", required: &[&["endpoint"]], build: build_typed::<opendal::services::HttpConfig> },
];

type BuildFn = fn(&[(String, String)]) -> std::result::Result<Operator, BuildError>;

enum BuildError {
    UnknownKeys(Vec<String>),
    Invalid(String),
    OpenDal(opendal::Error),
}

fn build_typed<C: Configurator>(opts: &[(String, String)]) -> std::result::Result<Operator, BuildError> {
    let (cfg, ignored) = strict::deserialize_strict::<C>(opts);
    if !ignored.is_empty() {
        return Err(BuildError::UnknownKeys(ignored));
    }
    let cfg = cfg.map_err(BuildError::Invalid)?;
    Operator::from_config(cfg).map_err(BuildError::OpenDal)
}

/// Largest range a single writer `copy_from` accepts.
const MAX_COPY_PART: u64 = 5 * 1024 * 1024 * 1024;
/// Reads at or beyond this offset are treated as past EOF.
const MAX_SANE_OFFSET: u64 = i64::MAX as u64;
/// Chunk size for streaming multipart uploads.
const WRITER_CHUNK: usize = 8 * 1024 * 1024;
/// Concurrent part uploads per streaming writer.
const WRITER_CONCURRENT: usize = 4;
/// Concurrent HTTP requests per back-end.
const HTTP_CONCURRENCY: usize = 64;
/// Concurrent operations per back-end (open readers/writers/listers hold a
/// permit for their whole life, so this is deliberately large).
const OP_CONCURRENCY: usize = 1024;

/// A handle to one OpenDAL operator; cheap to clone.
#[derive(Clone)]
pub struct Backend {
    inner: Arc<Inner>,
}

struct Inner {
    /// What a reload may replace ([`Backend::reconfigure`]): the operator
    /// with its layers, the timeout, the secrets to scrub, fault injection.
    /// Each call loads it once (a lock-free `ArcSwap` load), so a call that
    /// started before a swap finishes on the operator it started with.
    live: arc_swap::ArcSwap<Live>,
    scheme: String,
    cap: Capability,
    caps: Caps,
    /// Stage writes in a temporary sibling and rename it into place (fs
    /// without `atomic_write_dir` writes in place, so is not atomic).
    staged: bool,
    /// The canonical local root on `fs` (xattrs are read/written there).
    fs_root: Option<PathBuf>,
    /// POSIX attributes of the `memory` service (see the module doc).
    side: Option<SideTable>,
    /// Calls and failures per operation, for the metrics endpoint.
    stats: Arc<crate::metrics::BackendStats>,
    /// Test hook: told of each completed call ([`Backend::record_calls`]).
    recorder: std::sync::OnceLock<Recorder>,
}

/// The part of a [`Backend`] a configuration reload replaces.
struct Live {
    op: Operator,
    timeout: Duration,
    /// Configured credential values, scrubbed from every message.
    secrets: Vec<String>,
    /// `inject_latency`: delay before each public async call (test only).
    latency: Duration,
    /// `inject_latency_paths`: only paths starting with it are delayed.
    latency_prefix: String,
    /// Fault layers below / above the retry layer, when installed.
    faults_retried: Option<Arc<FaultState>>,
    faults_final: Option<Arc<FaultState>>,
}

/// Receives `(operation, path)` after each successful back-end call: `lookup`,
/// `list`, `read`, `write` (one PUT), `part` (a streaming writer accepted a
/// chunk), `close` (a streaming upload completed). For tests and metrics.
pub type Recorder = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// In-process POSIX attributes of the `memory` service, keyed by OpenDAL key
/// (`file`, `dir/`).
#[derive(Default)]
struct SideTable {
    /// Orders each OpenDAL call with its table update: held exclusively by
    /// mutations (from before their OpenDAL call until after the table
    /// update) and shared by lookups and listings. An async lock; the
    /// table's std mutex below is never held across an `.await`.
    gate: tokio::sync::RwLock<()>,
    map: std::sync::Mutex<HashMap<String, PosixMeta>>,
}

impl SideTable {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, PosixMeta>> {
        // The map is consistent after every statement: poison is harmless.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &str) -> PosixMeta {
        self.map().get(key).cloned().unwrap_or_default()
    }

    /// Replace the attributes of `key` (empty: none stored). They are kept
    /// exactly as user metadata would keep them (the s3fs encoding, so
    /// `mtime` in whole seconds): memory behaves like fs and S3.
    fn put(&self, key: &str, posix: &PosixMeta) {
        let pairs: HashMap<String, String> = posix.to_pairs().into_iter().collect();
        let stored = PosixMeta::from_lookup(|k| pairs.get(k).cloned());
        let mut m = self.map();
        if stored.is_empty() {
            m.remove(key);
        } else {
            m.insert(key.to_string(), stored);
        }
    }

    fn remove(&self, key: &str) {
        self.map().remove(key);
    }
}

/// Overlay the set fields of `update` on `base` (unset fields keep theirs).
fn merge_posix(base: &mut PosixMeta, update: &PosixMeta) {
    if update.mode.is_some() {
        base.mode = update.mode;
    }
    if update.uid.is_some() {
        base.uid = update.uid;
    }
    if update.gid.is_some() {
        base.gid = update.gid;
    }
    if update.mtime.is_some() {
        base.mtime = update.mtime;
    }
}

/// Name prefix of temporary siblings used by staged writes; hidden from
/// listings.
const TMP_PREFIX: &str = ".ovfs-tmp~";

/// A fresh temporary sibling of `path` (same directory, short fixed-size name).
fn tmp_sibling(path: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    match path.rsplit_once('/') {
        Some((parent, _)) => format!("{parent}/{TMP_PREFIX}{pid}-{nanos}-{seq}"),
        None => format!("{TMP_PREFIX}{pid}-{nanos}-{seq}"),
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("scheme", &self.inner.scheme)
            .field("caps", &self.inner.caps)
            .finish_non_exhaustive()
    }
}

fn redact_with(secrets: &[String], msg: String) -> String {
    let mut msg = msg;
    for s in secrets {
        if !s.is_empty() && msg.contains(s.as_str()) {
            msg = msg.replace(s.as_str(), "<redacted>");
        }
    }
    msg
}

/// One line: OpenDAL's kind, message and source chain (no context: context
/// may carry request details).
fn describe(e: &opendal::Error) -> String {
    let mut s = format!("{} ({})", e.message(), e.kind());
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut depth = 0;
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
        depth += 1;
        if depth > 4 {
            break;
        }
    }
    s
}

/// The OpenDAL key of a file or directory `path` (not the root).
fn entry_key(path: &str, kind: EntryKind) -> String {
    match kind {
        EntryKind::File => path.to_string(),
        EntryKind::Dir => format!("{path}/"),
    }
}

fn dir_key(path: &str) -> String {
    if path.is_empty() {
        "/".to_string()
    } else {
        format!("{path}/")
    }
}

fn check_path(path: &str, allow_root: bool) -> Result<()> {
    if path.is_empty() {
        return if allow_root { Ok(()) } else { Err(invalid("the root is not a valid target for this operation")) };
    }
    let bad = path.starts_with('/')
        || path.ends_with('/')
        || path.contains('\0')
        || path.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(invalid(format!("invalid path {path:?}")));
    }
    Ok(())
}

impl Backend {
    /// Build the operator for `storage` (no network I/O). Unknown schemes,
    /// unknown option keys and missing required keys are `InvalidInput`
    /// naming the scheme/key; credential values never appear in messages.
    pub fn build(storage: &StorageSettings, settings: &BackendSettings) -> Result<Backend> {
        opendal::init_default_registry();
        let scheme = storage.service.trim().to_ascii_lowercase();
        let secrets: Vec<String> =
            storage.options.iter().filter(|(k, v)| is_secret_key(k) && !v.is_empty()).map(|(_, v)| v.clone()).collect();
        let redact = |m: String| redact_with(&secrets, m);
        let opts: Vec<(String, String)> = storage.options.iter().map(|(k, v)| (k.clone(), v.clone())).collect();

        let op = match SERVICES.iter().find(|d| d.scheme == scheme) {
            Some(def) => {
                for alts in def.required {
                    let present = opts
                        .iter()
                        .any(|(k, v)| alts.iter().any(|a| k.eq_ignore_ascii_case(a)) && !v.trim().is_empty());
                    if !present {
                        return Err(invalid(format!("{scheme} requires `{}`", alts[0])));
                    }
                }
                match (def.build)(&opts) {
                    Ok(op) => op,
                    Err(BuildError::UnknownKeys(keys)) => {
                        // Report the key as written by the user.
                        let keys: Vec<String> = keys
                            .iter()
                            .map(|k| {
                                opts.iter()
                                    .find(|(o, _)| o.eq_ignore_ascii_case(k))
                                    .map(|(o, _)| o.clone())
                                    .unwrap_or_else(|| k.clone())
                            })
                            .map(|k| format!("`{k}`"))
                            .collect();
                        let noun = if keys.len() == 1 { "key" } else { "keys" };
                        return Err(invalid(format!("unknown {noun} {} for {scheme}", keys.join(", "))));
                    }
                    Err(BuildError::Invalid(m)) => {
                        return Err(invalid(redact(format!("{scheme}: invalid option: {m}"))))
                    }
                    Err(BuildError::OpenDal(e)) => return Err(invalid(redact(format!("{scheme}: {}", describe(&e))))),
                }
            }
            None => {
                let registered = opendal::OperatorRegistry::get().schemes();
                if !registered.contains(&scheme) {
                    let mut known: Vec<&str> = SERVICES.iter().map(|d| d.scheme).collect();
                    known.sort_unstable();
                    return Err(invalid(format!(
                        "unknown storage type `{scheme}` (compiled in: {})",
                        known.join(", ")
                    )));
                }
                // Registered but without a typed entry above: build through the
                // registry; option keys cannot be checked strictly.
                tracing::warn!(
                    scheme = %scheme,
                    "storage options for this service are not checked for unknown keys"
                );
                Operator::via_iter(&scheme, opts).map_err(|e| invalid(redact(format!("{scheme}: {}", describe(&e)))))?
            }
        };

        let max_delay = settings.retry_max_delay.max(settings.retry_min_delay);
        let io_timeout = if settings.io_timeout.is_zero() { Duration::from_secs(30) } else { settings.io_timeout };
        let timeout = if settings.timeout.is_zero() { Duration::from_secs(60) } else { settings.timeout };
        // The fs root as the service resolved it (canonical), before layering.
        let fs_root = (scheme == "fs").then(|| PathBuf::from(op.info().root()));
        // Innermost first: concurrency limit, per-attempt timeout, injected
        // temporary faults (test only), retry, injected final faults (test
        // only). The whole-operation bound (`timeout`) is applied around each
        // call.
        let faults_retried =
            (settings.inject_error_rate > 0.0).then(|| FaultState::new(settings.inject_error_rate, true));
        let faults_final =
            (settings.inject_error_rate_final > 0.0).then(|| FaultState::new(settings.inject_error_rate_final, false));
        let mut op = op
            .layer(ConcurrentLimitLayer::new(OP_CONCURRENCY).with_http_concurrent_limit(HTTP_CONCURRENCY))
            .layer(TimeoutLayer::new().with_timeout(io_timeout.min(timeout)).with_io_timeout(io_timeout));
        if let Some(f) = &faults_retried {
            op = op.layer(FaultLayer::new(f.clone()));
        }
        op = op.layer(
            RetryLayer::new()
                .with_jitter()
                .with_min_delay(settings.retry_min_delay)
                .with_max_delay(max_delay)
                .with_max_times(settings.retry_max_times),
        );
        if let Some(f) = &faults_final {
            op = op.layer(FaultLayer::new(f.clone()));
        }
        if faults_retried.is_some() || faults_final.is_some() || !settings.inject_latency.is_zero() {
            tracing::warn!(
                scheme = %scheme,
                latency = ?settings.inject_latency,
                latency_paths = %settings.inject_latency_paths,
                error_rate = settings.inject_error_rate,
                error_rate_final = settings.inject_error_rate_final,
                "fault injection is enabled (for testing only)"
            );
        }

        let cap = op.info().capability();
        let native_dirs = NATIVE_DIR_SCHEMES.contains(&scheme.as_str());
        let staged =
            scheme == "fs" && cap.rename && !storage.options.keys().any(|k| k.eq_ignore_ascii_case("atomic_write_dir"));
        let side = (scheme == "memory").then(SideTable::default);
        let caps = Caps {
            user_metadata: cap.write_with_user_metadata || side.is_some(),
            native_rename: cap.rename,
            copy: cap.copy,
            native_dirs,
            write_if_not_exists: cap.write_with_if_not_exists,
            write_multi: cap.write_can_multi,
            read: cap.read,
            write: cap.write,
            list: cap.list,
            delete: cap.delete,
            listing_has_posix: fs_root.is_some() || side.is_some() || !cap.write_with_user_metadata,
        };
        let live = Live {
            op,
            timeout,
            secrets,
            latency: settings.inject_latency,
            latency_prefix: settings.inject_latency_paths.trim_start_matches('/').to_string(),
            faults_retried,
            faults_final,
        };
        Ok(Backend {
            inner: Arc::new(Inner {
                live: arc_swap::ArcSwap::from_pointee(live),
                scheme,
                cap,
                caps,
                staged,
                fs_root,
                side,
                stats: crate::metrics::BackendStats::new(),
                recorder: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Install a [`Recorder`] (once; false if one is already installed).
    pub fn record_calls(&self, recorder: Recorder) -> bool {
        self.inner.recorder.set(recorder).is_ok()
    }

    fn note(&self, op: &'static str, path: &str) {
        if let Some(r) = self.inner.recorder.get() {
            r(op, path);
        }
    }

    /// Same as [`Backend::build`] from a whole [`crate::config::Config`].
    pub fn from_config(cfg: &crate::config::Config) -> Result<Backend> {
        Backend::build(&cfg.storage_settings, &cfg.backend_settings)
    }

    /// The OpenDAL scheme (`s3`, `fs`, `memory`, ...).
    pub fn scheme(&self) -> &str {
        &self.inner.scheme
    }

    pub fn caps(&self) -> Caps {
        self.inner.caps
    }

    /// Call and failure counters of this back-end (shared by its clones).
    pub fn stats(&self) -> Arc<crate::metrics::BackendStats> {
        self.inner.stats.clone()
    }

    /// The current operator (a cheap clone; a reload swaps in another).
    fn op(&self) -> Operator {
        self.inner.live.load().op.clone()
    }

    /// Replace the operator (credentials, endpoint and other service
    /// options) and the retry/timeout/fault-injection policy with ones built
    /// from `storage` and `settings`, atomically: calls already running
    /// finish on the operator they started with, later calls use the new
    /// one. Nothing else changes (statistics, the memory service's side
    /// table, the recorder). No network I/O.
    ///
    /// Refused (`InvalidInput`, nothing changed) when the new options select
    /// another service, another local root or anything else that changes
    /// what the file system sees ([`Caps`], capabilities, staging): those
    /// need a restart. The memory service keeps its data in the operator, so
    /// it is never rebuilt.
    pub fn reconfigure(&self, storage: &StorageSettings, settings: &BackendSettings) -> Result<()> {
        self.reconfigure_inner(storage, settings, true)
    }

    /// Whether [`Backend::reconfigure`] would accept these settings (it
    /// builds the operator, without network I/O, and changes nothing).
    pub fn check_reconfigure(&self, storage: &StorageSettings, settings: &BackendSettings) -> Result<()> {
        self.reconfigure_inner(storage, settings, false)
    }

    fn reconfigure_inner(&self, storage: &StorageSettings, settings: &BackendSettings, commit: bool) -> Result<()> {
        let fresh = Backend::build(storage, settings)?;
        let (a, b) = (&self.inner, &fresh.inner);
        if a.scheme != b.scheme {
            return Err(invalid(format!(
                "the storage type cannot change while running ({} -> {})",
                a.scheme, b.scheme
            )));
        }
        let old = a.live.load_full();
        if a.side.is_some() {
            // The memory service's data lives in its operator: keep it (and
            // its retry/fault layers); only the timeout and latency change.
            if old.op.info().root() != b.live.load().op.info().root() {
                return Err(invalid("memory: `root` cannot change while running (the data lives in the operator)"));
            }
            if !commit {
                return Ok(());
            }
            let n = b.live.load();
            a.live.store(Arc::new(Live {
                op: old.op.clone(),
                timeout: n.timeout,
                secrets: n.secrets.clone(),
                latency: n.latency,
                latency_prefix: n.latency_prefix.clone(),
                faults_retried: old.faults_retried.clone(),
                faults_final: old.faults_final.clone(),
            }));
            return Ok(());
        }
        let same = format!("{:?}", a.caps) == format!("{:?}", b.caps)
            && format!("{:?}", a.cap) == format!("{:?}", b.cap)
            && a.staged == b.staged
            && a.fs_root == b.fs_root;
        if !same {
            return Err(invalid(format!(
                "the new {} options change the service's capabilities or root; a restart is needed",
                a.scheme
            )));
        }
        if commit {
            a.live.store(b.live.load_full());
        }
        Ok(())
    }

    /// The memory service's attribute table, if this is memory.
    fn side(&self) -> Option<&SideTable> {
        self.inner.side.as_ref()
    }

    /// Exclusive side-table gate for a mutation (memory only).
    async fn side_excl(&self) -> Option<tokio::sync::RwLockWriteGuard<'_, ()>> {
        match self.side() {
            Some(s) => Some(s.gate.write().await),
            None => None,
        }
    }

    /// Shared side-table gate for a lookup or listing (memory only).
    async fn side_shared(&self) -> Option<tokio::sync::RwLockReadGuard<'_, ()>> {
        match self.side() {
            Some(s) => Some(s.gate.read().await),
            None => None,
        }
    }

    /// Side-table update (no-op off memory): replace the attributes of `key`.
    fn side_put(&self, key: &str, posix: &PosixMeta) {
        if let Some(s) = self.side() {
            s.put(key, posix);
        }
    }

    /// Side-table update (no-op off memory): give file `to` the attributes of
    /// file `from` (as a server-side copy keeps user metadata).
    fn side_copy(&self, from: &str, to: &str) {
        if let Some(s) = self.side() {
            let p = s.get(from);
            s.put(to, &p);
        }
    }

    /// Side-table update (no-op off memory): drop the attributes of `key`.
    fn side_remove(&self, key: &str) {
        if let Some(s) = self.side() {
            s.remove(key);
        }
    }

    /// Faults injected so far by `inject_error_rate` (below the retry layer,
    /// so mostly absorbed by retries) and by `inject_error_rate_final`; for
    /// tests. `(0, 0)` when fault injection is off.
    pub fn injected_faults(&self) -> (u64, u64) {
        let n = |f: &Option<Arc<FaultState>>| f.as_ref().map_or(0, |f| f.injected());
        let live = self.inner.live.load();
        (n(&live.faults_retried), n(&live.faults_final))
    }

    /// `inject_latency` (test only): sleep when any of `paths` starts with
    /// `inject_latency_paths` (or that prefix is empty).
    async fn inject_delay(&self, paths: &[&str]) {
        let (d, hit) = {
            let live = self.inner.live.load();
            let pre = live.latency_prefix.as_str();
            (live.latency, pre.is_empty() || paths.iter().any(|p| p.starts_with(pre)))
        };
        if !d.is_zero() && hit {
            tokio::time::sleep(d).await;
        }
    }

    /// The local path of `path` on fs (`path` already checked).
    fn local_path(&self, path: &str) -> Option<PathBuf> {
        self.inner.fs_root.as_ref().map(|root| if path.is_empty() { root.clone() } else { root.join(path) })
    }

    /// Write `posix` as xattrs of the local file/dir `local` (fs), off the
    /// async threads.
    async fn set_xattrs(&self, what: &str, path: &str, local: PathBuf, posix: &PosixMeta) -> Result<()> {
        let posix = posix.clone();
        let r = tokio::task::spawn_blocking(move || write_posix_xattrs(&local, &posix)).await;
        let scheme = &self.inner.scheme;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::new(io_error_kind(&e), format!("{scheme} {what} `{path}`: {e}"))),
            Err(e) => Err(Error::new(ErrorKind::Unexpected, format!("{scheme} {what} `{path}`: {e}"))),
        }
    }

    /// Convert an OpenDAL error, naming the operation and path.
    fn err(&self, what: &str, path: &str, e: opendal::Error) -> Error {
        let msg = format!("{} {what} `{path}`: {}", self.inner.scheme, describe(&e));
        Error::new(map_kind(&e), redact_with(&self.inner.live.load().secrets, msg))
    }

    /// Bound a whole operation (retries included) by the configured timeout.
    /// Also counts the call for the metrics: "not found" and "already
    /// exists" answers are normal outcomes, not failures.
    async fn deadline<T>(&self, what: &str, path: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let limit = self.inner.live.load().timeout;
        let result = match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{} {what} `{path}`: timed out after {limit:?}", self.inner.scheme),
            )),
        };
        let op = match what {
            "check" | "lookup" => "stat",
            "writer" => "write",
            "delete_file" => "delete",
            "set_posix" => "set_meta",
            other => other,
        };
        let failed = matches!(&result, Err(e) if !matches!(e.kind, ErrorKind::NotFound | ErrorKind::AlreadyExists));
        self.inner.stats.record(op, !failed);
        result
    }

    /// Capability check plus one cheap round trip (list the root, limit 1).
    pub async fn check(&self) -> Result<()> {
        let c = &self.inner.cap;
        let missing: Vec<&str> =
            [("read", c.read), ("write", c.write), ("list", c.list), ("delete", c.delete), ("stat", c.stat)]
                .iter()
                .filter(|(_, ok)| !ok)
                .map(|(n, _)| *n)
                .collect();
        if !missing.is_empty() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{} lacks required capabilities: {}", self.inner.scheme, missing.join(", ")),
            ));
        }
        self.deadline("check", "", async {
            let opts = ListOptions { limit: Some(1), ..Default::default() };
            let first = match self.op().lister_options("/", opts).await {
                Ok(mut l) => l.try_next().await.map(|_| ()),
                Err(e) => Err(e),
            };
            // A root that answers "not found" (no such bucket, or an endpoint
            // that is not the service at all) is as unusable as one that
            // does not answer.
            first.map_err(|e| {
                let msg =
                    format!("{} back-end unusable (listing its root failed): {}", self.inner.scheme, describe(&e));
                Error::new(map_kind(&e), redact_with(&self.inner.live.load().secrets, msg))
            })
        })
        .await
    }

    /// First entry of a non-recursive listing of `key` (`dir/`), if any.
    async fn first_entry(&self, key: &str) -> opendal::Result<Option<opendal::Entry>> {
        let opts = ListOptions { limit: Some(1), ..Default::default() };
        let mut lister = self.op().lister_options(key, opts).await?;
        lister.try_next().await
    }

    async fn probe(&self, path: &str) -> Result<(Meta, Option<opendal::Metadata>)> {
        if path.is_empty() {
            return Ok((Meta::dir(), None));
        }
        if self.inner.caps.native_dirs {
            let md = self.op().stat(path).await.map_err(|e| self.err("stat", path, e))?;
            return Ok(if md.is_dir() {
                (Meta::from_od(&md, EntryKind::Dir), None)
            } else {
                (Meta::from_od(&md, EntryKind::File), Some(md))
            });
        }
        let key = dir_key(path);
        let op = self.op();
        let (head, first) = futures::join!(op.stat(path), self.first_entry(&key));
        match first {
            Ok(Some(entry)) => {
                // The directory wins. Its marker (if listed first) gives mtime.
                let mut meta = Meta::dir();
                if entry.path() == key {
                    meta.mtime = entry.metadata().last_modified().map(SystemTime::from);
                    meta.etag = entry.metadata().etag().map(str::to_string);
                }
                return Ok((meta, None));
            }
            Ok(None) => {}
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {}
            Err(e) => return Err(self.err("list", &key, e)),
        }
        match head {
            Ok(md) if md.is_dir() => Ok((Meta::from_od(&md, EntryKind::Dir), None)),
            Ok(md) => Ok((Meta::from_od(&md, EntryKind::File), Some(md))),
            Err(e) => Err(self.err("stat", path, e)),
        }
    }

    /// Metadata of `path` (`""` is the root directory). A directory (marker,
    /// implied by a key below it, or a real directory) wins over a file object
    /// with the same name. On object stores the HEAD of `path` and a 1-key
    /// listing of `path/` run concurrently. On memory `posix` comes from the
    /// side table.
    pub async fn lookup(&self, path: &str) -> Result<Meta> {
        check_path(path, true)?;
        self.deadline("lookup", path, async {
            self.inject_delay(&[path]).await;
            let _gate = self.side_shared().await;
            let (mut meta, _) = self.probe(path).await?;
            if let Some(side) = self.side() {
                if !path.is_empty() {
                    meta.posix = side.get(&entry_key(path, meta.kind));
                }
            }
            self.note("lookup", path);
            Ok(meta)
        })
        .await
    }

    /// Immediate children of `dir`, sorted by name, metadata from the listing
    /// (no per-entry HEAD). `posix` is filled where
    /// [`Caps::listing_has_posix`]: on fs from each entry's xattrs (one
    /// blocking-pool task per listing), on memory from the side table; on
    /// object stores it is empty. A name present both as file and directory
    /// is reported once, as a directory. A directory that does not exist
    /// lists as empty on object stores.
    pub async fn list(&self, dir: &str) -> Result<Vec<Entry>> {
        check_path(dir, true)?;
        let key = dir_key(dir);
        let prefix = if dir.is_empty() { "" } else { key.as_str() };
        self.deadline("list", dir, async {
            self.inject_delay(&[dir]).await;
            let _gate = self.side_shared().await;
            let mut out: BTreeMap<String, Entry> = BTreeMap::new();
            let mut lister =
                self.op().lister_options(&key, ListOptions::default()).await.map_err(|e| self.err("list", &key, e))?;
            while let Some(entry) = lister.try_next().await.map_err(|e| self.err("list", &key, e))? {
                let Some(rel) = entry.path().strip_prefix(prefix) else {
                    continue;
                };
                let (name, below) = match rel.split_once('/') {
                    Some((n, _)) => (n, true),
                    None => (rel, false),
                };
                if name.is_empty() || name == "." || name == ".." {
                    continue; // the directory's own marker, or an unusable key
                }
                if self.inner.staged && name.starts_with(TMP_PREFIX) {
                    continue; // an in-flight staged write
                }
                let md = entry.metadata();
                let kind = if below || md.is_dir() {
                    EntryKind::Dir
                } else if md.mode() == EntryMode::FILE {
                    EntryKind::File
                } else {
                    continue; // neither file nor directory (socket, fifo, ...)
                };
                let mut meta = Meta::from_od(md, kind);
                meta.posix = PosixMeta::default();
                match out.get(name) {
                    Some(existing) if existing.meta.kind == EntryKind::Dir => {}
                    _ => {
                        out.insert(name.to_string(), Entry { name: name.to_string(), meta });
                    }
                }
            }
            drop(lister);
            let mut entries: Vec<Entry> = out.into_values().collect();
            if let Some(local) = self.local_path(dir) {
                entries = fill_posix_from_xattrs(local, entries).await?;
            }
            if let Some(side) = self.side() {
                let map = side.map();
                for e in entries.iter_mut() {
                    let key = entry_key(&format!("{prefix}{}", e.name), e.meta.kind);
                    if let Some(p) = map.get(&key) {
                        e.meta.posix = p.clone();
                    }
                }
            }
            self.note("list", dir);
            Ok(entries)
        })
        .await
    }

    /// Where `read` goes straight to the local file: on `fs` unless fault
    /// injection is on (the faults sit in OpenDAL's layers). OpenDAL's fs
    /// reader takes each buffer from a pool of 16 kept per operator, sized
    /// to the range asked (a 2 MiB cache block even for a 4 KiB file) and
    /// handed back as a slice of it: the pooled buffers grew to 2-4 MiB and
    /// stayed, and the pool filled up with each new peak of concurrent
    /// reads, so the daemon's memory kept rising under steady load
    /// (tests/load_guest.rs; docs/SECURITY.md, "Load"). A direct read
    /// allocates what the file holds and frees it with the reply.
    fn direct_read_path(&self, path: &str) -> Option<PathBuf> {
        let live = self.inner.live.load();
        if live.faults_retried.is_some() || live.faults_final.is_some() {
            return None;
        }
        self.local_path(path)
    }

    /// A local I/O error (fs) as an [`Error`], naming the operation and path.
    fn io_err(&self, what: &str, path: &str, e: std::io::Error) -> Error {
        let kind = if e.raw_os_error() == Some(libc::EISDIR) { ErrorKind::IsDirectory } else { io_error_kind(&e) };
        Error::new(kind, format!("{} {what} `{path}`: {e}", self.inner.scheme))
    }

    /// Read up to `len` bytes at `offset`; short (or empty) at/after EOF.
    pub async fn read(&self, path: &str, offset: u64, len: u64) -> Result<Bytes> {
        check_path(path, false)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset.saturating_add(len).min(MAX_SANE_OFFSET);
        self.deadline("read", path, async {
            self.inject_delay(&[path]).await;
            if let Some(local) = self.direct_read_path(path) {
                let data = read_local(local, offset, end).await.map_err(|e| self.io_err("read", path, e))?;
                self.note("read", path);
                return Ok(data);
            }
            let opts = ReadOptions { range: (offset..end).into(), ..Default::default() };
            // Offsets beyond i64::MAX are past any real EOF (and make pread
            // fail with EINVAL): go straight to the size check.
            if offset < MAX_SANE_OFFSET {
                match self.op().read_options(path, opts).await {
                    Ok(buf) => {
                        self.note("read", path);
                        return Ok(buf.to_bytes());
                    }
                    Err(e) if is_short_read(&e) => {}
                    Err(e) => return Err(self.err("read", path, e)),
                }
            }
            // The range crosses EOF: clamp to the current size and retry.
            let md = self.op().stat(path).await.map_err(|e| self.err("stat", path, e))?;
            if md.is_dir() {
                return Err(Error::new(
                    ErrorKind::IsDirectory,
                    format!("{} read `{path}`: is a directory", self.inner.scheme),
                ));
            }
            let size = md.content_length();
            if offset >= size {
                return Ok(Bytes::new());
            }
            let opts = ReadOptions { range: (offset..end.min(size)).into(), ..Default::default() };
            let data = self.op().read_options(path, opts).await.map_err(|e| self.err("read", path, e))?;
            self.note("read", path);
            Ok(data.to_bytes())
        })
        .await
    }

    fn write_options(&self, posix: &PosixMeta) -> WriteOptions {
        let mut o = WriteOptions::default();
        if self.inner.cap.write_with_user_metadata && !posix.is_empty() {
            o.user_metadata = Some(posix.to_pairs().into_iter().collect());
        }
        o
    }

    /// One atomic PUT replacing `path`. POSIX attributes are stored as user
    /// metadata when the service supports it (on memory in the side table),
    /// silently dropped otherwise. Like an S3 PUT, the write replaces the
    /// stored attributes: an empty `posix` leaves the object without any.
    pub async fn write(&self, path: &str, data: Bytes, posix: &PosixMeta) -> Result<()> {
        check_path(path, false)?;
        let opts = self.write_options(posix);
        self.deadline("write", path, self.write_inner(path, data, posix, opts)).await?;
        self.note("write", path);
        Ok(())
    }

    async fn write_inner(&self, path: &str, data: Bytes, posix: &PosixMeta, opts: WriteOptions) -> Result<()> {
        {
            self.inject_delay(&[path]).await;
            if let Some(_gate) = self.side_excl().await {
                self.op().write_options(path, data, opts).await.map_err(|e| self.err("write", path, e))?;
                self.side_put(path, posix);
                return Ok(());
            }
            if self.inner.staged {
                let tmp = tmp_sibling(path);
                let r = match self.op().write_options(&tmp, data, opts).await {
                    Ok(_) => self.op().rename(&tmp, path).await,
                    Err(e) => Err(e),
                };
                return match r {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let _ = self.op().delete(&tmp).await;
                        Err(self.err("write", path, e))
                    }
                };
            }
            self.op().write_options(path, data, opts).await.map(|_| ()).map_err(|e| self.err("write", path, e))
        }
    }

    /// Streaming upload (multipart on S3, in chunks of at least 8 MiB); the
    /// object becomes visible at [`ObjectWriter::close`]. Not bounded by the
    /// whole-operation timeout (each call is bounded by `io_timeout`). On
    /// memory `posix` replaces the side-table attributes at close.
    pub async fn writer(&self, path: &str, posix: &PosixMeta) -> Result<ObjectWriter> {
        check_path(path, false)?;
        let mut opts = self.write_options(posix);
        let cap = &self.inner.cap;
        if cap.write_can_multi {
            if let Some(min) = cap.write_multi_min_size {
                let mut chunk = WRITER_CHUNK.max(min);
                if let Some(max) = cap.write_multi_max_size {
                    chunk = chunk.min(max);
                }
                opts.chunk = Some(chunk);
                opts.concurrent = WRITER_CONCURRENT;
            }
        }
        let staging = self.inner.staged.then(|| tmp_sibling(path));
        let key = staging.as_deref().unwrap_or(path);
        let w = self
            .deadline("writer", path, async {
                self.inject_delay(&[path]).await;
                self.op().writer_options(key, opts).await.map_err(|e| self.err("writer", path, e))
            })
            .await?;
        Ok(ObjectWriter { inner: w, path: path.to_string(), staging, posix: posix.clone(), backend: self.clone() })
    }

    /// Create a directory without POSIX attributes; see
    /// [`Backend::create_dir_with`].
    pub async fn create_dir(&self, path: &str) -> Result<()> {
        self.create_dir_with(path, &PosixMeta::default()).await
    }

    /// Create a directory: a `path/` marker object on object stores, a real
    /// (recursive) mkdir on fs. Does not check for an existing entry.
    ///
    /// `posix` is stored where the service can: on fs as `user.*` xattrs of
    /// the new directory (after mkdir; a failure there fails the call but
    /// leaves the directory); on memory in the side table, replacing what
    /// was stored for the directory. On object stores nothing is stored:
    /// OpenDAL's `create_dir` takes no options and refuses writes to `dir/`
    /// paths, so a marker cannot carry user metadata (directories there show
    /// the configured defaults).
    pub async fn create_dir_with(&self, path: &str, posix: &PosixMeta) -> Result<()> {
        check_path(path, false)?;
        let key = dir_key(path);
        self.deadline("create_dir", path, async {
            self.inject_delay(&[path]).await;
            if let Some(_gate) = self.side_excl().await {
                self.op().create_dir(&key).await.map_err(|e| self.err("create_dir", &key, e))?;
                self.side_put(&key, posix);
                return Ok(());
            }
            self.op().create_dir(&key).await.map_err(|e| self.err("create_dir", &key, e))?;
            match self.local_path(path) {
                Some(local) if !posix.is_empty() => self.set_xattrs("create_dir", path, local, posix).await,
                _ => Ok(()),
            }
        })
        .await
    }

    /// Delete a file; `NotFound` if absent (checked first, since most
    /// services' delete is idempotent), `IsDirectory` for a real directory.
    pub async fn delete_file(&self, path: &str) -> Result<()> {
        check_path(path, false)?;
        self.deadline("delete_file", path, async {
            self.inject_delay(&[path]).await;
            let _gate = self.side_excl().await;
            let md = self.op().stat(path).await.map_err(|e| self.err("stat", path, e))?;
            if md.is_dir() {
                return Err(Error::new(
                    ErrorKind::IsDirectory,
                    format!("{} delete `{path}`: is a directory", self.inner.scheme),
                ));
            }
            self.op().delete(path).await.map_err(|e| self.err("delete", path, e))?;
            self.side_remove(path);
            Ok(())
        })
        .await
    }

    /// Remove an empty directory: `NotEmpty` if any key exists under `path/`
    /// other than its own marker; `NotFound` if neither marker nor children
    /// exist; `NotDirectory` if `path` is a file.
    pub async fn remove_dir(&self, path: &str) -> Result<()> {
        check_path(path, false)?;
        let key = dir_key(path);
        self.deadline("remove_dir", path, async {
            self.inject_delay(&[path]).await;
            let _gate = self.side_excl().await;
            if self.inner.caps.native_dirs {
                let md = self.op().stat(path).await.map_err(|e| self.err("stat", path, e))?;
                if !md.is_dir() {
                    return Err(Error::new(
                        ErrorKind::NotDirectory,
                        format!("{} rmdir `{path}`: not a directory", self.inner.scheme),
                    ));
                }
            }
            let opts = ListOptions { limit: Some(2), ..Default::default() };
            let mut lister = self.op().lister_options(&key, opts).await.map_err(|e| self.err("list", &key, e))?;
            let mut marker = false;
            for _ in 0..2 {
                match lister.try_next().await {
                    Ok(Some(e)) if e.path() == key => marker = true,
                    Ok(Some(_)) => {
                        return Err(Error::new(
                            ErrorKind::NotEmpty,
                            format!("{} rmdir `{path}`: directory not empty", self.inner.scheme),
                        ))
                    }
                    Ok(None) => break,
                    Err(e) if e.kind() == opendal::ErrorKind::NotFound => break,
                    Err(e) => return Err(self.err("list", &key, e)),
                }
            }
            drop(lister);
            if marker || self.inner.caps.native_dirs {
                self.op().delete(&key).await.map_err(|e| self.err("delete", &key, e))?;
                self.side_remove(&key);
                return Ok(());
            }
            // Nothing under `path/`: a file, or nothing at all.
            match self.op().stat(path).await {
                Ok(_) => Err(Error::new(
                    ErrorKind::NotDirectory,
                    format!("{} rmdir `{path}`: not a directory", self.inner.scheme),
                )),
                Err(e) => Err(self.err("stat", path, e)),
            }
        })
        .await
    }

    /// Rename a file: native rename when the service has it, else server-side
    /// copy + delete (or read + write + delete without copy). With
    /// `noreplace`, `AlreadyExists` if `to` exists: conditional rename/copy/
    /// write where the service supports it, else a check first (racy).
    /// POSIX attributes move with the file (on memory: in the side table).
    pub async fn rename_file(&self, from: &str, to: &str, noreplace: bool) -> Result<()> {
        check_path(from, false)?;
        check_path(to, false)?;
        let exists_err =
            || Error::new(ErrorKind::AlreadyExists, format!("{} rename to `{to}`: target exists", self.inner.scheme));
        let cond = |e: Error| {
            if matches!(e.kind, ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists) {
                exists_err()
            } else {
                e
            }
        };
        self.deadline("rename", from, async {
            self.inject_delay(&[from, to]).await;
            let _gate = self.side_excl().await;
            if from == to {
                // POSIX: renaming a file onto itself does nothing.
                let (meta, _) = self.probe(from).await?;
                if meta.kind == EntryKind::Dir {
                    return Err(Error::new(
                        ErrorKind::IsDirectory,
                        format!("{} rename `{from}`: is a directory", self.inner.scheme),
                    ));
                }
                return if noreplace { Err(exists_err()) } else { Ok(()) };
            }
            let cap = &self.inner.cap;
            let check_first = |native_cond: bool| noreplace && !native_cond;

            if self.inner.caps.native_rename {
                if check_first(cap.rename_with_if_not_exists) && self.exists(to).await? {
                    return Err(exists_err());
                }
                let opts = RenameOptions { if_not_exists: noreplace && cap.rename_with_if_not_exists };
                self.op().rename_options(from, to, opts).await.map_err(|e| cond(self.err("rename", from, e)))?;
                self.side_copy(from, to);
                self.side_remove(from);
                return Ok(());
            }

            if self.inner.caps.copy {
                if check_first(cap.copy_with_if_not_exists) && self.exists(to).await? {
                    return Err(exists_err());
                }
                let opts =
                    CopyOptions { if_not_exists: noreplace && cap.copy_with_if_not_exists, ..Default::default() };
                self.op().copy_options(from, to, opts).await.map_err(|e| cond(self.err("copy", from, e)))?;
                self.side_copy(from, to);
            } else {
                if check_first(cap.write_with_if_not_exists) && self.exists(to).await? {
                    return Err(exists_err());
                }
                let md = self.op().stat(from).await.map_err(|e| self.err("stat", from, e))?;
                if md.is_dir() {
                    return Err(Error::new(
                        ErrorKind::IsDirectory,
                        format!("{} rename `{from}`: is a directory", self.inner.scheme),
                    ));
                }
                let data = self.op().read(from).await.map_err(|e| self.err("read", from, e))?;
                let mut opts =
                    WriteOptions { if_not_exists: noreplace && cap.write_with_if_not_exists, ..Default::default() };
                if self.inner.cap.write_with_user_metadata {
                    if let Some(um) = md.user_metadata() {
                        let m: HashMap<String, String> =
                            um.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                        if !m.is_empty() {
                            opts.user_metadata = Some(m);
                        }
                    }
                }
                self.op().write_options(to, data, opts).await.map_err(|e| cond(self.err("write", to, e)))?;
                self.side_copy(from, to);
            }
            self.op().delete(from).await.map_err(|e| self.err("delete", from, e))?;
            self.side_remove(from);
            Ok(())
        })
        .await
    }

    /// Whether a file or directory named `path` exists.
    async fn exists(&self, path: &str) -> Result<bool> {
        match self.probe(path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Persist mode/uid/gid/mtime (fields that are `None` keep their stored
    /// value; other user metadata is kept).
    ///
    /// On fs the `user.*` xattrs are set in place, on files and directories
    /// alike (the content is not touched). On memory the side table is
    /// updated, for files and directories (an implied directory gets a
    /// marker first, so its attributes live exactly as long as it does);
    /// `NotFound` if `path` does not exist. Elsewhere: `Unsupported` without
    /// user metadata support and for directories, and the object is
    /// rewritten: server-side (multipart upload-part-copy onto itself) where
    /// the service supports writer-side copy (S3), else by read + write.
    pub async fn set_posix(&self, path: &str, posix: &PosixMeta) -> Result<()> {
        check_path(path, false)?;
        if let Some(local) = self.local_path(path) {
            return self
                .deadline("set_posix", path, async {
                    self.inject_delay(&[path]).await;
                    // Through OpenDAL first: a precise NotFound, and the
                    // injected faults apply as to any other call.
                    self.op().stat(path).await.map_err(|e| self.err("stat", path, e))?;
                    if posix.is_empty() {
                        return Ok(());
                    }
                    self.set_xattrs("set_posix", path, local, posix).await
                })
                .await;
        }
        if let Some(side) = self.side() {
            return self
                .deadline("set_posix", path, async {
                    self.inject_delay(&[path]).await;
                    let _gate = self.side_excl().await;
                    let (meta, _) = self.probe(path).await?;
                    let key = entry_key(path, meta.kind);
                    if meta.kind == EntryKind::Dir {
                        self.op().create_dir(&key).await.map_err(|e| self.err("create_dir", &key, e))?;
                    }
                    let mut p = side.get(&key);
                    merge_posix(&mut p, posix);
                    side.put(&key, &p);
                    Ok(())
                })
                .await;
        }
        if !self.inner.caps.user_metadata {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{} does not support user metadata", self.inner.scheme),
            ));
        }
        self.deadline("set_posix", path, async {
            self.inject_delay(&[path]).await;
            let (meta, md) = self.probe(path).await?;
            let Some(md) = md else {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("{} set_posix `{path}`: not supported on directories", self.inner.scheme),
                ));
            };
            let mut um: HashMap<String, String> = md
                .user_metadata()
                .map(|u| u.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
                .unwrap_or_default();
            um.extend(posix.to_pairs());
            let mut opts = WriteOptions { user_metadata: Some(um), ..Default::default() };
            if let Some(ct) = md.content_type() {
                opts.content_type = Some(ct.to_string());
            }
            let size = meta.size;
            let cap = &self.inner.cap;

            if cap.write_can_copy_from && size > 0 {
                return self.copy_into(path, path, size, opts).await;
            }
            if self.inner.caps.native_rename && size > 0 {
                let tmp = tmp_sibling(path);
                if let Err(e) = self.copy_into(path, &tmp, size, opts).await {
                    let _ = self.op().delete(&tmp).await;
                    return Err(e);
                }
                return self.op().rename(&tmp, path).await.map_err(|e| self.err("rename", &tmp, e));
            }
            let data = self.op().read(path).await.map_err(|e| self.err("read", path, e))?;
            self.op().write_options(path, data, opts).await.map(|_| ()).map_err(|e| self.err("write", path, e))
        })
        .await
    }

    /// Write `to` with `opts` from the bytes `0..size` of `from`, through the
    /// writer's `copy_from` (native part copy on S3, streamed otherwise).
    async fn copy_into(&self, from: &str, to: &str, size: u64, opts: WriteOptions) -> Result<()> {
        let mut w = self.op().writer_options(to, opts).await.map_err(|e| self.err("writer", to, e))?;
        let mut off = 0;
        while off < size {
            let end = (off + MAX_COPY_PART).min(size);
            if let Err(e) = w.copy_from(from, off..end).await {
                let _ = w.abort().await;
                return Err(self.err("copy_from", from, e));
            }
            off = end;
        }
        match w.close().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let _ = w.abort().await;
                Err(self.err("close", to, e))
            }
        }
    }
}

/// Fill `posix` of each entry of a local directory `dir` from its xattrs
/// (fs), off the async threads. An entry that vanished keeps empty `posix`.
async fn fill_posix_from_xattrs(dir: PathBuf, mut entries: Vec<Entry>) -> Result<Vec<Entry>> {
    if entries.is_empty() {
        return Ok(entries);
    }
    let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    let posix =
        tokio::task::spawn_blocking(move || names.iter().map(|n| read_posix_xattrs(&dir.join(n))).collect::<Vec<_>>())
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, format!("fs list: reading xattrs: {e}")))?;
    for (e, p) in entries.iter_mut().zip(posix) {
        e.meta.posix = p;
    }
    Ok(entries)
}

/// Whether a bounded read failed only because the range crosses EOF.
fn is_short_read(e: &opendal::Error) -> bool {
    e.kind() == opendal::ErrorKind::RangeNotSatisfied
        || (e.kind() == opendal::ErrorKind::Unexpected && e.message().contains("reader got too little data"))
}

/// A streaming upload; see [`Backend::writer`]. Dropping it without `close`
/// abandons the upload (an S3 multipart upload is left for the bucket's
/// lifecycle rules; call `abort` to clean up eagerly).
pub struct ObjectWriter {
    inner: opendal::Writer,
    path: String,
    /// Temporary sibling being written, renamed to `path` at close.
    staging: Option<String>,
    /// Attributes for the memory side table, stored at close.
    posix: PosixMeta,
    backend: Backend,
}

impl fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectWriter").field("path", &self.path).finish_non_exhaustive()
    }
}

impl ObjectWriter {
    /// Append `data` to the upload.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let r = self.inner.write(data).await;
        r.map_err(|e| self.backend.err("write", &self.path, e))?;
        self.backend.note("part", &self.path);
        Ok(())
    }

    /// Complete the upload; the object becomes visible (on memory, with its
    /// attributes: the side table is updated under the gate, after the
    /// close succeeded).
    pub async fn close(mut self) -> Result<()> {
        let backend = self.backend.clone();
        let _gate = backend.side_excl().await;
        let op = backend.op();
        let r = match self.inner.close().await {
            Ok(_) => match &self.staging {
                Some(tmp) => op.rename(tmp, &self.path).await,
                None => Ok(()),
            },
            Err(e) => {
                let _ = self.inner.abort().await;
                Err(e)
            }
        };
        match r {
            Ok(()) => {
                backend.side_put(&self.path, &self.posix);
                backend.note("close", &self.path);
                Ok(())
            }
            Err(e) => {
                if let Some(tmp) = &self.staging {
                    let _ = op.delete(tmp).await;
                }
                Err(self.backend.err("close", &self.path, e))
            }
        }
    }

    /// Abandon the upload and clean up uploaded parts.
    pub async fn abort(mut self) -> Result<()> {
        if let Some(tmp) = self.staging.take() {
            // fs cannot abort in place; drop the writer and its file.
            drop(self.inner);
            return self.backend.op().delete(&tmp).await.map_err(|e| self.backend.err("abort", &self.path, e));
        }
        let r = self.inner.abort().await;
        r.map_err(|e| self.backend.err("abort", &self.path, e))
    }
}

#[cfg(test)]
mod tests;
