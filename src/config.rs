//! TOML configuration: parsing, defaults and validation, done once at start-up.
//!
//! The file has these sections, all optional:
//!
//! - `[socket_settings]`: vhost-user socket path, virtio-fs tag, queue count;
//! - `[cache_settings]`: data cache switches and attribute/entry TTLs;
//! - `[storage_settings]`: `type = "<OpenDAL scheme>"` plus the service's own
//!   OpenDAL option keys, passed through unchanged (TOML booleans and numbers
//!   are stringified). **If the section is absent the in-memory back-end is
//!   used** (handy for tests; nothing persists);
//! - `[backend_settings]`: retry/timeout policy, the POSIX defaults shown
//!   for objects that carry no mode/uid/gid metadata, and fault injection
//!   (`inject_*` keys: for testing; off by default);
//! - `[kata]`, `[profiles.NAME]`: Kata volumes (parsed by [`crate::kata`]);
//! - `[[mounts]]`: more back-ends attached at paths of the tree, each with
//!   its own `[mounts.storage_settings]` and optional
//!   `[mounts.cache_settings]` / `[mounts.backend_settings]` that override
//!   the top-level sections key by key ([`MountSettings`]). With mounts and
//!   no top-level `[storage_settings]`, the root is a small read-only
//!   directory holding the mount points (see [`crate::vfs::table`]).
//! - `[log_settings]`: `log_level` (error, warn, info, debug, trace, off).
//!
//! A running daemon re-reads its file on change and on SIGHUP
//! ([`crate::reload`]); which keys change live is listed there.
//!
//! Unknown sections and keys are refused, and so are keys the selected OpenDAL
//! service does not know (checked by [`crate::backend::Backend::build`], which
//! also builds the operator, without network I/O, as the last validation
//! step). Every [`ConfigError`] is one line naming the section/key, and never
//! contains the value of a credential key (see [`is_secret_key`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Value;

/// Maximum length of the virtio-fs tag (bytes), as defined by the virtio spec.
pub const MAX_TAG_LEN: usize = 36;
/// Maximum number of request queues accepted.
pub const MAX_REQUEST_QUEUES: usize = 16;
/// Maximum number of `[[mounts]]`.
pub const MAX_MOUNTS: usize = 64;

/// The whole configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub socket_settings: SocketSettings,
    pub cache_settings: CacheSettings,
    pub storage_settings: StorageSettings,
    pub backend_settings: BackendSettings,
    /// `[kata]` and `[profiles.*]` (see [`crate::kata`]).
    pub kata: crate::kata::KataConfig,
    /// `[log_settings] log_level`: `None` leaves the level to `--log-level`,
    /// `RUST_LOG` or the default (info).
    pub log_level: Option<String>,
    /// Whether the file had a top-level `[storage_settings]` (with mounts:
    /// it is the root; without one the root is a synthetic directory).
    pub has_root_storage: bool,
    /// `[[mounts]]`, in file order.
    pub mounts: Vec<MountSettings>,
}

/// One `[[mounts]]` entry, with the top-level cache and back-end settings
/// already merged in (its own keys win, key by key).
#[derive(Clone, Debug, PartialEq)]
pub struct MountSettings {
    /// Absolute, normalized (`/data`, `/a/b`; never `/`).
    pub path: String,
    pub storage_settings: StorageSettings,
    pub cache_settings: CacheSettings,
    pub backend_settings: BackendSettings,
    /// Every change answers EROFS.
    pub read_only: bool,
}

/// `[socket_settings]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketSettings {
    /// vhost-user socket path; `None` when the command line supplies it.
    pub socket_path: Option<PathBuf>,
    /// virtio-fs tag, 1..=36 bytes.
    pub tag: Option<String>,
    /// Number of request queues, 1..=16.
    pub num_request_queues: Option<usize>,
    /// DAX window size in bytes (a power of two, 2 MiB..1 TiB); `None`: no window.
    pub dax_window: Option<u64>,
    /// Which files get per-inode DAX (`-o dax=inode` in the guest).
    pub dax_policy: crate::vfs::dax::DaxPolicy,
}

/// `[cache_settings]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    pub enabled_cache: bool,
    pub enabled_cache_write_back: bool,
    pub enabled_cache_expiration: bool,
    /// Data cache TTL (humantime string such as `"60s"`, or integer seconds).
    pub cache_expiration_time: Duration,
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    pub negative_timeout: Duration,
    /// Bound on the data cache's memory (memfd pool) plus the staged bytes
    /// of files being written, bytes; a byte count or a string like
    /// `"256MiB"` (default 256 MiB, at least 4 MiB).
    pub memory_limit: usize,
    /// Staged (not yet uploaded) bytes allowed before writers wait for
    /// uploads; part of `memory_limit`. `None`: a quarter of `memory_limit`.
    pub dirty_limit: Option<usize>,
    /// With write-back on: how often dirty files are uploaded without a
    /// FLUSH/FSYNC (default 5 s).
    pub flush_interval: Duration,
    /// Largest readahead window per open file, bytes (0: no readahead;
    /// default 64 MiB).
    pub readahead_max: usize,
    /// How long a directory listing is reused for READDIR, LOOKUP and
    /// GETATTR of its entries (0: not at all, the default).
    pub dir_cache_ttl: Duration,
    /// Trust a listing's attributes on object stores whose listings carry no
    /// POSIX metadata (S3): `ls -l` needs no HEAD per entry, but mode/uid/gid
    /// stored as object metadata show as the defaults (default false).
    pub listing_attrs: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled_cache: true,
            enabled_cache_write_back: false,
            enabled_cache_expiration: true,
            cache_expiration_time: Duration::from_secs(60),
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            negative_timeout: Duration::from_secs(0),
            memory_limit: 256 << 20,
            dirty_limit: None,
            flush_interval: Duration::from_secs(5),
            readahead_max: 64 << 20,
            dir_cache_ttl: Duration::ZERO,
            listing_attrs: false,
        }
    }
}

/// `[storage_settings]`: the OpenDAL service and its options.
///
/// `Debug` redacts the values of credential keys.
#[derive(Clone, PartialEq, Eq)]
pub struct StorageSettings {
    /// OpenDAL scheme (`memory`, `fs`, `s3`, ...), from the key `type`.
    pub service: String,
    /// Every other key, with its OpenDAL name, value stringified.
    pub options: BTreeMap<String, String>,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings { service: "memory".to_string(), options: BTreeMap::new() }
    }
}

impl fmt::Debug for StorageSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted<'a>(&'a BTreeMap<String, String>);
        impl fmt::Debug for Redacted<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|(k, v)| {
                        let v: &str = if is_secret_key(k) { "<redacted>" } else { v };
                        (k, v)
                    }))
                    .finish()
            }
        }
        f.debug_struct("StorageSettings")
            .field("service", &self.service)
            .field("options", &Redacted(&self.options))
            .finish()
    }
}

/// `[backend_settings]`: how the OpenDAL operator is wrapped, POSIX defaults
/// for objects without metadata, and fault injection.
///
/// The `inject_*` keys are **for testing; off by default**. They make the
/// back-end slow or unreliable on purpose so that tests can check that a
/// stalled call does not hold up unrelated requests and that retries and
/// error paths behave. They never change what is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendSettings {
    /// Bound on a whole back-end operation (including retries).
    pub timeout: Duration,
    /// Bound on each IO step (one read/write/list call on a body).
    pub io_timeout: Duration,
    pub retry_max_times: usize,
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// Permission bits (no type bits), `"0644"` or an integer such as `0o644`.
    pub default_file_mode: u32,
    pub default_dir_mode: u32,
    pub default_uid: u32,
    pub default_gid: u32,
    /// Files up to this many bytes are uploaded with one PUT; larger ones as
    /// a multipart upload in parts of this size (default 8 MiB, at least
    /// 5 MiB, S3's smallest part). A byte count or a string like `"16MiB"`.
    pub part_size: usize,
    /// Most objects one directory rename may move (default 10,000); beyond
    /// it the rename answers EXDEV and tools fall back to copy + delete.
    pub rename_dir_limit: usize,
    /// For testing; off by default (0). Extra delay (`tokio::time::sleep`)
    /// before every public async back-end call (lookup, list, read, write,
    /// writer, create_dir, delete_file, remove_dir, rename_file, set_posix)
    /// whose path matches [`inject_latency_paths`](Self::inject_latency_paths).
    /// The delay counts against `timeout`, like a slow service would.
    pub inject_latency: Duration,
    /// For testing. Path prefix selecting the calls delayed by
    /// `inject_latency`: a call is delayed when its back-end path (relative,
    /// no leading `/`; `""` is the root) starts with this string (a plain
    /// string prefix: `"a"` matches `a`, `a/x` and `ab`). A rename matches
    /// if either side does. Empty (the default) matches every path. A leading
    /// `/` in the configured value is ignored.
    pub inject_latency_paths: String,
    /// For testing; off by default (0.0). Fraction, 0.0..=1.0, of OpenDAL
    /// calls (stat, create_dir, rename, reader open/read, writer
    /// write/copy/close, lister next, delete, copy) that fail with a
    /// temporary error *below* the retry layer: they are retried with the
    /// configured back-off, so most are absorbed; one surfaces only if every
    /// attempt fails.
    pub inject_error_rate: f64,
    /// For testing; off by default (0.0). Fraction, 0.0..=1.0, of the same
    /// OpenDAL calls that fail with a permanent error *above* the retry
    /// layer: each one surfaces as an error ([`crate::backend::ErrorKind::Unexpected`],
    /// EIO in the guest). 1.0 makes every back-end call fail.
    pub inject_error_rate_final: f64,
}

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings {
            timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(30),
            retry_max_times: 3,
            retry_min_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(2),
            default_file_mode: 0o644,
            default_dir_mode: 0o755,
            default_uid: 0,
            default_gid: 0,
            part_size: 8 << 20,
            rename_dir_limit: 10_000,
            inject_latency: Duration::ZERO,
            inject_latency_paths: String::new(),
            inject_error_rate: 0.0,
            inject_error_rate_final: 0.0,
        }
    }
}

/// A configuration error: one line, naming the section/key, no secret values.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        // Always one line.
        let msg: String = msg.into();
        let one_line = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        ConfigError(one_line)
    }

    /// The message without the `config: ` prefix.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config: {}", self.0)
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigError({:?})", self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Whether a storage option key holds a credential whose value must never be
/// shown: any key containing `secret`, `token`, `password`, `credential` or
/// `key` (e.g. `access_key_id`, `sse_customer_key`, `account_key`).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["secret", "token", "password", "credential", "key", "passwd", "auth"].iter().any(|w| k.contains(w))
}

impl Default for Config {
    fn default() -> Self {
        Config::default_memory()
    }
}

impl Config {
    /// Read and [`parse`](Config::parse) a file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    /// Parse and validate a TOML document, including the storage options
    /// against the selected OpenDAL service (builds the operator, no I/O
    /// beyond what the service's builder does locally, e.g. `fs` creates its
    /// root directory).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg = Config::parse_unchecked(text)?;
        crate::backend::Backend::build(&cfg.storage_settings, &cfg.backend_settings)
            .map_err(|e| ConfigError::new(format!("[storage_settings] {}", e.message())))?;
        for (i, m) in cfg.mounts.iter().enumerate() {
            crate::backend::Backend::build(&m.storage_settings, &m.backend_settings)
                .map_err(|e| ConfigError::new(format!("[mounts.{i}.storage_settings] {}", e.message())))?;
        }
        Ok(cfg)
    }

    /// Embedded default: memory back-end, defaults everywhere, no socket path.
    pub fn default_memory() -> Config {
        Config {
            socket_settings: SocketSettings::default(),
            cache_settings: CacheSettings::default(),
            storage_settings: StorageSettings::default(),
            backend_settings: BackendSettings::default(),
            kata: crate::kata::KataConfig::default(),
            log_level: None,
            has_root_storage: false,
            mounts: Vec::new(),
        }
    }

    /// The configuration one mount is served with: the whole file with the
    /// mount's storage, cache and back-end settings in place of the top-level ones.
    pub fn for_mount(&self, m: &MountSettings) -> Config {
        Config {
            storage_settings: m.storage_settings.clone(),
            cache_settings: m.cache_settings.clone(),
            backend_settings: m.backend_settings.clone(),
            mounts: Vec::new(),
            ..self.clone()
        }
    }

    /// Syntax, types and ranges; storage keys are only checked by `parse`.
    fn parse_unchecked(text: &str) -> Result<Config, ConfigError> {
        let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            match line {
                Some(l) => ConfigError::new(format!("line {l}: {}", e.message())),
                None => ConfigError::new(e.message().to_string()),
            }
        })?;

        let mut cfg = Config::default_memory();
        let mut mounts = None;
        for (section, value) in doc {
            if section == "mounts" {
                mounts = Some(value);
                continue;
            }
            let table = match value {
                Value::Table(t) => t,
                _ => return Err(ConfigError::new(format!("`{section}` must be a section ([{section}])"))),
            };
            match section.as_str() {
                "socket_settings" => cfg.socket_settings = parse_socket(table)?,
                "cache_settings" => cfg.cache_settings = parse_cache(table)?,
                "storage_settings" => {
                    cfg.storage_settings = parse_storage(table)?;
                    cfg.has_root_storage = true;
                }
                "backend_settings" => cfg.backend_settings = parse_backend(table)?,
                "kata" => cfg.kata.parse_kata(table)?,
                "profiles" => cfg.kata.parse_profiles(table)?,
                "log_settings" => cfg.log_level = parse_log(table)?,
                _ => {
                    return Err(ConfigError::new(format!(
                        "unknown section [{section}] (expected socket_settings, cache_settings, storage_settings, backend_settings, kata, profiles, log_settings, mounts)"
                    )))
                }
            }
        }
        // After the top-level sections: mounts inherit them.
        if let Some(v) = mounts {
            cfg.mounts = parse_mounts(v, &cfg.cache_settings, &cfg.backend_settings)?;
        }
        Ok(cfg)
    }
}

fn unknown_key(section: &str, key: &str) -> ConfigError {
    ConfigError::new(format!("unknown key `{key}` in [{section}]"))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn wrong_type(section: &str, key: &str, want: &str, v: &Value) -> ConfigError {
    ConfigError::new(format!("{section}.{key}: expected {want}, found {}", type_name(v)))
}

fn get_bool(section: &str, key: &str, v: &Value) -> Result<bool, ConfigError> {
    v.as_bool().ok_or_else(|| wrong_type(section, key, "a boolean", v))
}

fn get_u64(section: &str, key: &str, v: &Value) -> Result<u64, ConfigError> {
    match v {
        Value::Integer(i) => {
            u64::try_from(*i).map_err(|_| ConfigError::new(format!("{section}.{key}: must not be negative, got {i}")))
        }
        _ => Err(wrong_type(section, key, "an integer", v)),
    }
}

fn get_u32(section: &str, key: &str, v: &Value) -> Result<u32, ConfigError> {
    let n = get_u64(section, key, v)?;
    u32::try_from(n).map_err(|_| ConfigError::new(format!("{section}.{key}: {n} is out of range")))
}

fn get_usize(section: &str, key: &str, v: &Value) -> Result<usize, ConfigError> {
    let n = get_u64(section, key, v)?;
    usize::try_from(n).map_err(|_| ConfigError::new(format!("{section}.{key}: {n} is out of range")))
}

/// A size in bytes: an integer, or a string with a binary unit
/// (`"512KiB"`, `"8MiB"`, `"1GiB"`; `K`/`M`/`G` and `KB`/`MB`/`GB` mean the same).
fn get_size(section: &str, key: &str, v: &Value) -> Result<usize, ConfigError> {
    let bad = || ConfigError::new(format!("{section}.{key}: invalid size {v} (use bytes or e.g. \"8MiB\")"));
    let n: u64 = match v {
        Value::Integer(i) => u64::try_from(*i).map_err(|_| bad())?,
        Value::String(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let num: u64 = num.parse().map_err(|_| bad())?;
            let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                _ => return Err(bad()),
            };
            num.checked_mul(mul).ok_or_else(bad)?
        }
        _ => return Err(wrong_type(section, key, "a size (bytes or e.g. \"8MiB\")", v)),
    };
    usize::try_from(n).map_err(|_| bad())
}

/// A fraction in 0.0..=1.0 (a TOML float, or the integers 0 and 1).
fn get_fraction(section: &str, key: &str, v: &Value) -> Result<f64, ConfigError> {
    let f = match v {
        Value::Float(f) => *f,
        Value::Integer(i) => *i as f64,
        _ => return Err(wrong_type(section, key, "a number in 0.0..=1.0", v)),
    };
    if !(0.0..=1.0).contains(&f) {
        return Err(ConfigError::new(format!("{section}.{key}: must be within 0.0..=1.0, got {f}")));
    }
    Ok(f)
}

fn get_string(section: &str, key: &str, v: &Value) -> Result<String, ConfigError> {
    v.as_str().map(str::to_string).ok_or_else(|| wrong_type(section, key, "a string", v))
}

/// A humantime string (`"60s"`, `"1m 30s"`, `"250ms"`) or integer seconds.
fn get_duration(section: &str, key: &str, v: &Value) -> Result<Duration, ConfigError> {
    match v {
        Value::String(s) => humantime::parse_duration(s.trim())
            .map_err(|_| ConfigError::new(format!("{section}.{key}: invalid duration {s:?}"))),
        Value::Integer(_) => Ok(Duration::from_secs(get_u64(section, key, v)?)),
        _ => Err(wrong_type(section, key, "a duration string such as \"60s\"", v)),
    }
}

/// Permission bits: a string in octal (`"0644"`, `"644"`, `"0o644"`) or an
/// integer taken literally (write `0o644` in TOML for octal).
fn get_mode(section: &str, key: &str, v: &Value) -> Result<u32, ConfigError> {
    let mode = match v {
        Value::String(s) => {
            let t = s.trim();
            let digits = t.strip_prefix("0o").unwrap_or(t);
            if digits.is_empty() {
                return Err(ConfigError::new(format!("{section}.{key}: invalid octal mode {s:?}")));
            }
            u32::from_str_radix(digits, 8)
                .map_err(|_| ConfigError::new(format!("{section}.{key}: invalid octal mode {s:?}")))?
        }
        Value::Integer(_) => get_u32(section, key, v)?,
        _ => return Err(wrong_type(section, key, "an octal mode string such as \"0644\"", v)),
    };
    if mode > 0o7777 {
        return Err(ConfigError::new(format!("{section}.{key}: mode {mode:#o} has bits outside 0o7777")));
    }
    Ok(mode)
}

fn parse_socket(t: toml::Table) -> Result<SocketSettings, ConfigError> {
    const S: &str = "socket_settings";
    let mut s = SocketSettings::default();
    for (k, v) in &t {
        match k.as_str() {
            "socket_path" => {
                let p = get_string(S, k, v)?;
                if p.is_empty() {
                    return Err(ConfigError::new(format!("{S}.{k}: must not be empty")));
                }
                s.socket_path = Some(PathBuf::from(p));
            }
            "tag" => {
                let tag = get_string(S, k, v)?;
                if tag.is_empty() || tag.len() > MAX_TAG_LEN {
                    return Err(ConfigError::new(format!(
                        "{S}.{k}: must be 1..={MAX_TAG_LEN} bytes, got {}",
                        tag.len()
                    )));
                }
                s.tag = Some(tag);
            }
            "num_request_queues" => {
                let n = get_usize(S, k, v)?;
                if !(1..=MAX_REQUEST_QUEUES).contains(&n) {
                    return Err(ConfigError::new(format!("{S}.{k}: must be 1..={MAX_REQUEST_QUEUES}, got {n}")));
                }
                s.num_request_queues = Some(n);
            }
            "dax_window" => {
                let n = get_size(S, k, v)? as u64;
                crate::transport::vhost_user::check_dax_window(n)
                    .map_err(|e| ConfigError::new(format!("{S}.{k}: {e}")))?;
                s.dax_window = Some(n);
            }
            "dax_policy" => {
                s.dax_policy = crate::vfs::dax::DaxPolicy::parse(&get_string(S, k, v)?)
                    .map_err(|e| ConfigError::new(format!("{S}.{k}: {e}")))?;
            }
            _ => return Err(unknown_key(S, k)),
        }
    }
    Ok(s)
}

fn parse_cache(t: toml::Table) -> Result<CacheSettings, ConfigError> {
    parse_cache_onto("cache_settings", CacheSettings::default(), t)
}

/// `t`'s keys on top of `base` (a mount's section over the top-level one).
fn parse_cache_onto(section: &str, base: CacheSettings, t: toml::Table) -> Result<CacheSettings, ConfigError> {
    #[allow(non_snake_case)]
    let S = section;
    let mut c = base;
    for (k, v) in &t {
        match k.as_str() {
            "enabled_cache" => c.enabled_cache = get_bool(S, k, v)?,
            "enabled_cache_write_back" => c.enabled_cache_write_back = get_bool(S, k, v)?,
            "enabled_cache_expiration" => c.enabled_cache_expiration = get_bool(S, k, v)?,
            "cache_expiration_time" => c.cache_expiration_time = get_duration(S, k, v)?,
            "attr_timeout" => c.attr_timeout = get_duration(S, k, v)?,
            "entry_timeout" => c.entry_timeout = get_duration(S, k, v)?,
            "negative_timeout" => c.negative_timeout = get_duration(S, k, v)?,
            "memory_limit" => {
                c.memory_limit = get_size(S, k, v)?;
                if c.memory_limit < 4 << 20 {
                    return Err(ConfigError::new(format!("{S}.memory_limit: must be at least 4MiB")));
                }
            }
            "dirty_limit" => {
                let n = get_size(S, k, v)?;
                if n < 1 << 20 {
                    return Err(ConfigError::new(format!("{S}.dirty_limit: must be at least 1MiB")));
                }
                c.dirty_limit = Some(n);
            }
            "flush_interval" => {
                c.flush_interval = get_duration(S, k, v)?;
                if c.flush_interval.is_zero() {
                    return Err(ConfigError::new(format!("{S}.flush_interval: must be above 0")));
                }
            }
            "readahead_max" => c.readahead_max = get_size(S, k, v)?,
            "dir_cache_ttl" => c.dir_cache_ttl = get_duration(S, k, v)?,
            "listing_attrs" => c.listing_attrs = get_bool(S, k, v)?,
            _ => return Err(unknown_key(S, k)),
        }
    }
    if let Some(d) = c.dirty_limit {
        if d >= c.memory_limit {
            return Err(ConfigError::new(format!("{S}.dirty_limit: must be below memory_limit")));
        }
    }
    Ok(c)
}

fn parse_storage(t: toml::Table) -> Result<StorageSettings, ConfigError> {
    parse_storage_section("storage_settings", t)
}

/// A `type` + OpenDAL options table (`[storage_settings]`, `[profiles.NAME]`).
pub(crate) fn parse_storage_section(section: &str, t: toml::Table) -> Result<StorageSettings, ConfigError> {
    #[allow(non_snake_case)]
    let S = section;
    let mut service = None;
    let mut options = BTreeMap::new();
    for (k, v) in &t {
        if k == "type" {
            let ty = get_string(S, k, v)?;
            if ty.trim().is_empty() {
                return Err(ConfigError::new(format!("{S}.type: must not be empty")));
            }
            service = Some(ty.trim().to_ascii_lowercase());
            continue;
        }
        // Never echo the value: it may be a credential.
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Integer(i) => i.to_string(),
            Value::Boolean(b) => b.to_string(),
            Value::Float(f) => f.to_string(),
            _ => {
                return Err(ConfigError::new(format!(
                    "{S}.{k}: expected a string, number or boolean, found {}",
                    type_name(v)
                )))
            }
        };
        options.insert(k.clone(), s);
    }
    let service = service.ok_or_else(|| ConfigError::new(format!("[{S}] missing required key `type`")))?;
    Ok(StorageSettings { service, options })
}

/// Levels accepted by `[log_settings] log_level` (and `--log-level`).
pub const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

fn parse_log(t: toml::Table) -> Result<Option<String>, ConfigError> {
    const S: &str = "log_settings";
    let mut level = None;
    for (k, v) in &t {
        match k.as_str() {
            "log_level" => {
                let l = get_string(S, k, v)?.trim().to_ascii_lowercase();
                if !LOG_LEVELS.contains(&l.as_str()) {
                    return Err(ConfigError::new(format!("{S}.{k}: expected one of {}", LOG_LEVELS.join(", "))));
                }
                level = Some(l);
            }
            _ => return Err(unknown_key(S, k)),
        }
    }
    Ok(level)
}

fn parse_backend(t: toml::Table) -> Result<BackendSettings, ConfigError> {
    parse_backend_onto("backend_settings", BackendSettings::default(), t)
}

/// `t`'s keys on top of `base` (a mount's section over the top-level one).
fn parse_backend_onto(section: &str, base: BackendSettings, t: toml::Table) -> Result<BackendSettings, ConfigError> {
    #[allow(non_snake_case)]
    let S = section;
    let mut b = base;
    for (k, v) in &t {
        match k.as_str() {
            "timeout" => b.timeout = get_duration(S, k, v)?,
            "io_timeout" => b.io_timeout = get_duration(S, k, v)?,
            "retry_max_times" => b.retry_max_times = get_usize(S, k, v)?,
            "retry_min_delay" => b.retry_min_delay = get_duration(S, k, v)?,
            "retry_max_delay" => b.retry_max_delay = get_duration(S, k, v)?,
            "default_file_mode" => b.default_file_mode = get_mode(S, k, v)?,
            "default_dir_mode" => b.default_dir_mode = get_mode(S, k, v)?,
            "default_uid" => b.default_uid = get_u32(S, k, v)?,
            "default_gid" => b.default_gid = get_u32(S, k, v)?,
            "part_size" => b.part_size = get_size(S, k, v)?,
            "rename_dir_limit" => b.rename_dir_limit = get_usize(S, k, v)?,
            "inject_latency" => b.inject_latency = get_duration(S, k, v)?,
            "inject_latency_paths" => {
                let p = get_string(S, k, v)?;
                if p.contains('\0') {
                    return Err(ConfigError::new(format!("{S}.{k}: must not contain NUL")));
                }
                b.inject_latency_paths = p.trim_start_matches('/').to_string();
            }
            "inject_error_rate" => b.inject_error_rate = get_fraction(S, k, v)?,
            "inject_error_rate_final" => b.inject_error_rate_final = get_fraction(S, k, v)?,
            _ => return Err(unknown_key(S, k)),
        }
    }
    if b.timeout.is_zero() {
        return Err(ConfigError::new(format!("{S}.timeout: must be > 0")));
    }
    if b.io_timeout.is_zero() {
        return Err(ConfigError::new(format!("{S}.io_timeout: must be > 0")));
    }
    if !(5 << 20..=5 << 30).contains(&b.part_size) {
        return Err(ConfigError::new(format!("{S}.part_size: must be within 5MiB..=5GiB, got {}", b.part_size)));
    }
    if b.retry_min_delay > b.retry_max_delay {
        return Err(ConfigError::new(format!("{S}.retry_min_delay: must not exceed retry_max_delay")));
    }
    Ok(b)
}

/// A mount path: absolute, normalized, not `/`, each component 1..=255
/// bytes. Returned unchanged.
fn check_mount_path(key: &str, p: &str) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(ConfigError::new(format!("{key}: must be an absolute path such as \"/data\", got {p:?}")));
    }
    if p == "/" {
        return Err(ConfigError::new(format!(
            "{key}: must not be \"/\" (the root is [storage_settings] or a synthetic directory)"
        )));
    }
    if p.contains('\0') {
        return Err(ConfigError::new(format!("{key}: must not contain NUL")));
    }
    for c in p[1..].split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(ConfigError::new(format!(
                "{key}: must be normalized (no empty, `.` or `..` component, no trailing `/`), got {p:?}"
            )));
        }
        if c.len() > 255 {
            return Err(ConfigError::new(format!("{key}: a component is longer than 255 bytes")));
        }
    }
    Ok(p.to_string())
}

/// `[[mounts]]`: an array of tables, each with `path`, `read_only`,
/// `storage_settings` (required) and optional `cache_settings` /
/// `backend_settings` over the top-level ones.
fn parse_mounts(v: Value, cache: &CacheSettings, backend: &BackendSettings) -> Result<Vec<MountSettings>, ConfigError> {
    let Value::Array(list) = v else {
        return Err(ConfigError::new(format!(
            "mounts: expected an array of tables ([[mounts]]), found {}",
            type_name(&v)
        )));
    };
    if list.len() > MAX_MOUNTS {
        return Err(ConfigError::new(format!("mounts: at most {MAX_MOUNTS} mounts, got {}", list.len())));
    }
    let mut out: Vec<MountSettings> = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let s = format!("mounts.{i}");
        let Value::Table(t) = item else {
            return Err(ConfigError::new(format!("{s}: expected a table ([[mounts]]), found {}", type_name(&item))));
        };
        let mut path = None;
        let mut read_only = false;
        let mut storage = None;
        let mut cache_t = None;
        let mut backend_t = None;
        for (k, v) in t {
            match k.as_str() {
                "path" => path = Some(check_mount_path(&format!("{s}.path"), &get_string(&s, &k, &v)?)?),
                "read_only" => read_only = get_bool(&s, &k, &v)?,
                "storage_settings" | "cache_settings" | "backend_settings" => {
                    let Value::Table(sub) = v else {
                        return Err(ConfigError::new(format!(
                            "{s}.{k}: expected a section ([mounts.{k}]), found {}",
                            type_name(&v)
                        )));
                    };
                    match k.as_str() {
                        "storage_settings" => storage = Some(parse_storage_section(&format!("{s}.{k}"), sub)?),
                        "cache_settings" => cache_t = Some(sub),
                        _ => backend_t = Some(sub),
                    }
                }
                _ => return Err(unknown_key(&s, &k)),
            }
        }
        let path = path.ok_or_else(|| ConfigError::new(format!("[{s}] missing required key `path`")))?;
        let storage_settings = storage.ok_or_else(|| {
            ConfigError::new(format!("[{s}] ({path}) missing required section [mounts.storage_settings]"))
        })?;
        let cache_settings = match cache_t {
            Some(t) => parse_cache_onto(&format!("{s}.cache_settings"), cache.clone(), t)?,
            None => cache.clone(),
        };
        let backend_settings = match backend_t {
            Some(t) => parse_backend_onto(&format!("{s}.backend_settings"), backend.clone(), t)?,
            None => backend.clone(),
        };
        for (j, o) in out.iter().enumerate() {
            if o.path == path {
                return Err(ConfigError::new(format!("{s}.path: {path} is also mounts.{j}.path")));
            }
            let (outer, inner) = if path.len() < o.path.len() { (&path, &o.path) } else { (&o.path, &path) };
            if inner.starts_with(outer.as_str()) && inner.as_bytes()[outer.len()] == b'/' {
                return Err(ConfigError::new(format!(
                    "{s}.path: {path} and mounts.{j}.path {} are nested (a mount inside a mount is not supported)",
                    o.path
                )));
            }
        }
        out.push(MountSettings { path, storage_settings, cache_settings, backend_settings, read_only });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[socket_settings]
socket_path = "/tmp/vfsd.sock"

[cache_settings]
enabled_cache = true
enabled_cache_write_back = false
enabled_cache_expiration = true
cache_expiration_time = "60s"

[storage_settings]
type = "s3"
bucket = "test"
region = "us-east-1"
endpoint = "http://127.0.0.1:8333"
access_key_id = "admin"
secret_access_key = "adminsecret"
"#;

    fn err(text: &str) -> String {
        let e = Config::parse(text).expect_err("must be refused");
        let s = e.to_string();
        assert!(!s.contains('\n'), "multi-line error: {s}");
        assert!(s.starts_with("config: "), "{s}");
        s
    }

    fn assert_no_secret(s: &str) {
        assert!(!s.contains("adminsecret"), "secret leaked: {s}");
        assert!(!s.contains("\"admin\""), "access key leaked: {s}");
        assert!(!s.contains("tok3n"), "token leaked: {s}");
    }

    #[test]
    fn example_file_parses() {
        let cfg = Config::parse(EXAMPLE).expect("example parses");
        assert_eq!(cfg.socket_settings.socket_path.as_deref(), Some(Path::new("/tmp/vfsd.sock")));
        assert!(cfg.cache_settings.enabled_cache);
        assert!(!cfg.cache_settings.enabled_cache_write_back);
        assert_eq!(cfg.cache_settings.cache_expiration_time, Duration::from_secs(60));
        assert_eq!(cfg.cache_settings.attr_timeout, Duration::from_secs(1));
        assert_eq!(cfg.storage_settings.service, "s3");
        assert_eq!(cfg.storage_settings.options.get("bucket").map(String::as_str), Some("test"));
        assert_eq!(cfg.storage_settings.options.get("secret_access_key").map(String::as_str), Some("adminsecret"));
        assert!(!cfg.storage_settings.options.contains_key("type"));
        assert_eq!(cfg.backend_settings, BackendSettings::default());
        let dbg = format!("{cfg:?}");
        assert_no_secret(&dbg);
        assert!(dbg.contains("\"test\""), "non-secret values stay visible: {dbg}");
    }

    #[test]
    fn from_file_works() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("ovfs.toml");
        std::fs::write(&p, EXAMPLE).expect("write");
        let cfg = Config::from_file(&p).expect("parses");
        assert_eq!(cfg.storage_settings.service, "s3");
        let missing = Config::from_file(&dir.path().join("nope.toml")).expect_err("missing");
        assert!(missing.to_string().contains("cannot read"));
    }

    #[test]
    fn memory_and_fs_files() {
        let cfg = Config::parse("[storage_settings]\ntype = \"memory\"\n").expect("memory");
        assert_eq!(cfg.storage_settings.service, "memory");
        let cfg = Config::parse("").expect("empty file");
        assert_eq!(cfg, Config::default_memory());
        assert_eq!(cfg.storage_settings.service, "memory");
        assert!(cfg.socket_settings.socket_path.is_none());

        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let text = format!(
            "[storage_settings]\ntype = \"fs\"\nroot = {:?}\n\n[backend_settings]\ndefault_file_mode = \"0600\"\ndefault_dir_mode = 0o700\ndefault_uid = 1000\ntimeout = \"5s\"\nretry_max_times = 0\n",
            root.display().to_string()
        );
        let cfg = Config::parse(&text).expect("fs");
        assert_eq!(cfg.storage_settings.service, "fs");
        assert_eq!(cfg.backend_settings.default_file_mode, 0o600);
        assert_eq!(cfg.backend_settings.default_dir_mode, 0o700);
        assert_eq!(cfg.backend_settings.default_uid, 1000);
        assert_eq!(cfg.backend_settings.timeout, Duration::from_secs(5));
        assert_eq!(cfg.backend_settings.retry_max_times, 0);
        assert_eq!(cfg.backend_settings.part_size, 8 << 20);

        let e = err("[storage_settings]\ntype = \"fs\"\n");
        assert!(e.contains("requires `root`"), "{e}");
    }

    #[test]
    fn write_back_readahead_and_listing_keys() {
        let cfg = Config::parse(
            "[cache_settings]\nenabled_cache_write_back = true\nmemory_limit = \"128MiB\"\ndirty_limit = \"32MiB\"\nflush_interval = \"2s\"\nreadahead_max = \"16MiB\"\ndir_cache_ttl = \"3s\"\nlisting_attrs = true\n",
        )
        .expect("parses");
        let c = &cfg.cache_settings;
        assert!(c.enabled_cache_write_back);
        assert_eq!(c.dirty_limit, Some(32 << 20));
        assert_eq!(c.flush_interval, Duration::from_secs(2));
        assert_eq!(c.readahead_max, 16 << 20);
        assert_eq!(c.dir_cache_ttl, Duration::from_secs(3));
        assert!(c.listing_attrs);
        let d = CacheSettings::default();
        assert_eq!((d.dirty_limit, d.flush_interval, d.readahead_max), (None, Duration::from_secs(5), 64 << 20));
        let e = err("[cache_settings]\nmemory_limit = \"64MiB\"\ndirty_limit = \"64MiB\"\n");
        assert!(e.contains("dirty_limit"), "{e}");
        let e = err("[cache_settings]\nflush_interval = 0\n");
        assert!(e.contains("flush_interval"), "{e}");
    }

    #[test]
    fn socket_and_cache_settings() {
        let cfg = Config::parse(
            "[socket_settings]\ntag = \"myfs\"\nnum_request_queues = 4\n[cache_settings]\nattr_timeout = \"2s\"\nentry_timeout = 3\nnegative_timeout = \"500ms\"\n",
        )
        .expect("parses");
        assert_eq!(cfg.socket_settings.tag.as_deref(), Some("myfs"));
        assert_eq!(cfg.socket_settings.num_request_queues, Some(4));
        assert_eq!(cfg.cache_settings.attr_timeout, Duration::from_secs(2));
        assert_eq!(cfg.cache_settings.entry_timeout, Duration::from_secs(3));
        assert_eq!(cfg.cache_settings.negative_timeout, Duration::from_millis(500));
        let e = err("[socket_settings]\nnum_request_queues = 17\n");
        assert!(e.contains("socket_settings.num_request_queues"), "{e}");
        let e = err("[socket_settings]\nnum_request_queues = 0\n");
        assert!(e.contains("num_request_queues"), "{e}");
        let e = err(&format!("[socket_settings]\ntag = \"{}\"\n", "x".repeat(37)));
        assert!(e.contains("socket_settings.tag"), "{e}");
    }

    #[test]
    fn dax_settings() {
        let cfg = Config::parse("[socket_settings]\ndax_window = \"64MiB\"\ndax_policy = \"size>=1M\"\n").unwrap();
        assert_eq!(cfg.socket_settings.dax_window, Some(64 << 20));
        assert_eq!(cfg.socket_settings.dax_policy, crate::vfs::dax::DaxPolicy::MinSize(1 << 20));
        assert_eq!(Config::parse("").unwrap().socket_settings.dax_window, None);
        let e = err("[socket_settings]\ndax_window = \"3MiB\"\n");
        assert!(e.contains("socket_settings.dax_window"), "{e}");
        let e = err("[socket_settings]\ndax_policy = \"maybe\"\n");
        assert!(e.contains("socket_settings.dax_policy"), "{e}");
    }

    #[test]
    fn unknown_section() {
        let e = err("[sockets]\nsocket_path = \"/x\"\n");
        assert!(e.contains("unknown section [sockets]"), "{e}");
        let e = err("top_level = 1\n");
        assert!(e.contains("top_level"), "{e}");
    }

    #[test]
    fn unknown_key_in_each_section() {
        for (section, extra) in [
            ("socket_settings", ""),
            ("cache_settings", ""),
            ("backend_settings", ""),
            ("storage_settings", "type = \"memory\"\n"),
        ] {
            let e = err(&format!("[{section}]\n{extra}foo = 1\n"));
            if section == "storage_settings" {
                assert_eq!(e, "config: [storage_settings] unknown key `foo` for memory");
            } else {
                assert_eq!(e, format!("config: unknown key `foo` in [{section}]"));
            }
        }
    }

    #[test]
    fn unknown_storage_key() {
        let text = EXAMPLE.replace("bucket = \"test\"", "bucket = \"test\"\nbukket = \"x\"");
        let e = err(&text);
        assert!(e.contains("unknown key `bukket`"), "{e}");
        assert!(e.contains("[storage_settings]"), "{e}");
        assert_no_secret(&e);
        // OpenDAL's own aliases are accepted.
        let text = EXAMPLE.replace("bucket = \"test\"", "aws_bucket = \"test\"");
        Config::parse(&text).expect("alias accepted");
    }

    #[test]
    fn wrong_type() {
        let e = err("[cache_settings]\nenabled_cache = \"yes\"\n");
        assert_eq!(e, "config: cache_settings.enabled_cache: expected a boolean, found a string");
        let e = err("[socket_settings]\nsocket_path = 3\n");
        assert!(e.contains("socket_settings.socket_path"), "{e}");
        let e = err("[storage_settings]\ntype = \"memory\"\nroot = [1]\n");
        assert!(e.contains("storage_settings.root"), "{e}");
        let e = err("[backend_settings]\ndefault_file_mode = \"0988\"\n");
        assert!(e.contains("backend_settings.default_file_mode"), "{e}");
        let e = err("[backend_settings]\ndefault_uid = -1\n");
        assert!(e.contains("backend_settings.default_uid"), "{e}");
        // TOML syntax error: one line with a line number.
        let e = err("[cache_settings]\nenabled_cache = \n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn stringified_storage_values() {
        let cfg = Config::parse(
            "[storage_settings]\ntype = \"s3\"\nbucket = \"b\"\nregion = \"r\"\ndisable_config_load = true\n",
        )
        .expect("bools accepted");
        assert_eq!(cfg.storage_settings.options.get("disable_config_load").map(String::as_str), Some("true"));
    }

    #[test]
    fn bad_duration() {
        let e = err("[cache_settings]\ncache_expiration_time = \"abc\"\n");
        assert_eq!(e, "config: cache_settings.cache_expiration_time: invalid duration \"abc\"");
        let e = err("[backend_settings]\nretry_min_delay = \"5s\"\nretry_max_delay = \"1s\"\n");
        assert!(e.contains("retry_min_delay"), "{e}");
    }

    #[test]
    fn fault_injection_keys() {
        let d = BackendSettings::default();
        assert_eq!(d.inject_latency, Duration::ZERO);
        assert_eq!(d.inject_latency_paths, "");
        assert_eq!(d.inject_error_rate, 0.0);
        assert_eq!(d.inject_error_rate_final, 0.0);
        let cfg = Config::parse(
            "[backend_settings]\ninject_latency = \"2s\"\ninject_latency_paths = \"/slow/\"\ninject_error_rate = 0.25\ninject_error_rate_final = 1\n",
        )
        .expect("parses");
        let b = &cfg.backend_settings;
        assert_eq!(b.inject_latency, Duration::from_secs(2));
        assert_eq!(b.inject_latency_paths, "slow/", "leading / ignored");
        assert_eq!(b.inject_error_rate, 0.25);
        assert_eq!(b.inject_error_rate_final, 1.0);
        let cfg = Config::parse("[backend_settings]\ninject_latency = \"200ms\"\n").expect("ms");
        assert_eq!(cfg.backend_settings.inject_latency, Duration::from_millis(200));

        for (key, val) in [
            ("inject_error_rate", "1.5"),
            ("inject_error_rate", "-0.1"),
            ("inject_error_rate", "nan"),
            ("inject_error_rate_final", "2"),
            ("inject_error_rate_final", "inf"),
        ] {
            let e = err(&format!("[backend_settings]\n{key} = {val}\n"));
            assert!(e.starts_with(&format!("config: backend_settings.{key}: must be within 0.0..=1.0")), "{e}");
        }
        let e = err("[backend_settings]\ninject_error_rate = \"0.5\"\n");
        assert!(e.contains("backend_settings.inject_error_rate: expected a number"), "{e}");
        let e = err("[backend_settings]\ninject_latency = \"soon\"\n");
        assert!(e.contains("backend_settings.inject_latency: invalid duration"), "{e}");
        let e = err("[backend_settings]\ninject_latency_paths = 3\n");
        assert!(e.contains("backend_settings.inject_latency_paths"), "{e}");
    }

    #[test]
    fn missing_bucket() {
        let text = EXAMPLE.replace("bucket = \"test\"\n", "");
        let e = err(&text);
        assert_eq!(e, "config: [storage_settings] s3 requires `bucket`");
    }

    #[test]
    fn missing_type_and_unknown_type() {
        let e = err("[storage_settings]\nbucket = \"x\"\n");
        assert_eq!(e, "config: [storage_settings] missing required key `type`");
        let e = err("[storage_settings]\ntype = \"nosuch\"\n");
        assert!(e.contains("nosuch"), "{e}");
    }

    #[test]
    fn no_secret_in_any_output() {
        let secrets = [
            EXAMPLE.replace("bucket = \"test\"\n", ""),
            EXAMPLE.replace("bucket = \"test\"", "bucket = \"test\"\nbukket = \"x\""),
            EXAMPLE.replace("[cache_settings]", "[cache_settings]\nfoo = 1"),
            EXAMPLE.replace("secret_access_key = \"adminsecret\"", "secret_access_key = adminsecret"),
            EXAMPLE.replace("secret_access_key = \"adminsecret\"", "secret_access_key = [\"adminsecret\"]"),
            EXAMPLE.replace("region = \"us-east-1\"\n", "session_token = \"tok3n\"\nfoo_password = 1\n"),
            EXAMPLE.replace("type = \"s3\"", "type = \"adminsecret\""),
            EXAMPLE.replace(
                "endpoint = \"http://127.0.0.1:8333\"",
                "endpoint = \"\"\nenable_virtual_host_style = \"adminsecret\"",
            ),
        ];
        for text in &secrets {
            match Config::parse(text) {
                Ok(cfg) => {
                    assert_no_secret(&format!("{cfg:?}"));
                    assert_no_secret(&format!("{:?}", cfg.storage_settings));
                }
                Err(e) => {
                    // `type = "adminsecret"` is not a credential key; its
                    // value may be echoed as the unknown scheme name.
                    if !text.contains("type = \"adminsecret\"") {
                        assert_no_secret(&e.to_string());
                        assert_no_secret(&format!("{e:?}"));
                    }
                }
            }
        }
        let cfg = Config::parse(EXAMPLE).expect("parses");
        assert_no_secret(&format!("{cfg:?}"));
        assert_no_secret(&format!("{:#?}", cfg));
    }

    #[test]
    fn secret_key_detection() {
        for k in ["secret_access_key", "access_key_id", "session_token", "password", "sse_customer_key", "credential"] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["bucket", "region", "endpoint", "root"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }

    #[test]
    fn part_size_and_rename_limit() {
        let base = "[storage_settings]\ntype = \"memory\"\n[backend_settings]\n";
        let c = Config::parse(&format!("{base}part_size = \"16MiB\"\nrename_dir_limit = 5\n")).unwrap();
        assert_eq!(c.backend_settings.part_size, 16 << 20);
        assert_eq!(c.backend_settings.rename_dir_limit, 5);
        let c = Config::parse(&format!("{base}part_size = 6291456\n")).unwrap();
        assert_eq!(c.backend_settings.part_size, 6 << 20);
        for bad in ["\"1MiB\"", "\"lots\"", "\"8XB\"", "-1", "true"] {
            let e = Config::parse(&format!("{base}part_size = {bad}\n")).unwrap_err().to_string();
            assert!(e.contains("part_size") && !e.contains('\n'), "{bad}: {e}");
        }
    }
    #[test]
    fn mounts_inherit_and_override_key_by_key() {
        let text = r#"
[cache_settings]
attr_timeout = "5s"
memory_limit = "64MiB"
[backend_settings]
timeout = "20s"
retry_max_times = 7

[[mounts]]
path = "/data"
[mounts.storage_settings]
type = "memory"
[mounts.backend_settings]
timeout = "3s"
[mounts.cache_settings]
entry_timeout = "9s"

[[mounts]]
path = "/a/b"
read_only = true
[mounts.storage_settings]
type = "s3"
bucket = "b"
region = "r"
secret_access_key = "adminsecret"
"#;
        let cfg = Config::parse(text).expect("parses");
        assert!(!cfg.has_root_storage);
        assert_eq!(cfg.mounts.len(), 2);
        let (d, ab) = (&cfg.mounts[0], &cfg.mounts[1]);
        assert_eq!((d.path.as_str(), d.read_only), ("/data", false));
        assert_eq!(d.backend_settings.timeout, Duration::from_secs(3), "its own key");
        assert_eq!(d.backend_settings.retry_max_times, 7, "the top-level key");
        assert_eq!(d.cache_settings.entry_timeout, Duration::from_secs(9));
        assert_eq!(d.cache_settings.attr_timeout, Duration::from_secs(5));
        assert_eq!(d.cache_settings.memory_limit, 64 << 20);
        assert_eq!((ab.path.as_str(), ab.read_only), ("/a/b", true));
        assert_eq!(ab.storage_settings.service, "s3");
        assert_eq!(ab.backend_settings, cfg.backend_settings);
        assert_eq!(ab.cache_settings, cfg.cache_settings);
        let m = cfg.for_mount(ab);
        assert_eq!(m.storage_settings, ab.storage_settings);
        assert!(m.mounts.is_empty());
        assert_no_secret(&format!("{cfg:?}"));
        // A top-level storage section is the root.
        let cfg = Config::parse(&format!("[storage_settings]\ntype = \"memory\"\n{text}")).unwrap();
        assert!(cfg.has_root_storage);
        // Without mounts nothing changes.
        let cfg = Config::parse(EXAMPLE).unwrap();
        assert!(cfg.mounts.is_empty());
    }

    #[test]
    fn bad_mount_entries() {
        let mem = "[mounts.storage_settings]\ntype = \"memory\"\n";
        for (text, want) in [
            ("mounts = 3\n".to_string(), "mounts: expected an array"),
            (format!("[[mounts]]\npath = \"/x\"\n{mem}[mounts.backend_settings]\ntimeout = 0\n"), "mounts.0.backend_settings.timeout"),
            (format!("[[mounts]]\npath = \"/x\"\nread_only = \"yes\"\n{mem}"), "mounts.0.read_only"),
            (format!("[[mounts]]\npath = \"/x//y\"\n{mem}"), "mounts.0.path"),
            (format!("[[mounts]]\npath = \"/x/./y\"\n{mem}"), "mounts.0.path"),
            (format!("[[mounts]]\npath = \"/ab\"\n{mem}[[mounts]]\npath = \"/a\"\n{mem}[[mounts]]\npath = \"/ab/c\"\n{mem}"), "nested"),
            (format!("[[mounts]]\n{mem}"), "missing required key `path`"),
            ("[[mounts]]\npath = \"/x\"\n[mounts.storage_settings]\ntype = \"nosuch\"\n".to_string(), "[mounts.0.storage_settings]"),
        ] {
            let e = err(&text);
            assert!(e.contains(want), "{text}: {e}");
        }
        // Siblings that share a prefix are not nested.
        Config::parse(&format!("[[mounts]]\npath = \"/ab\"\n{mem}[[mounts]]\npath = \"/a\"\n{mem}")).unwrap();
    }
    #[test]
    fn webdav_and_http_services() {
        let cfg = Config::parse(
            "[storage_settings]\ntype = \"webdav\"\nendpoint = \"https://dav.example.com\"\nusername = \"u\"\npassword = \"adminsecret\"\nroot = \"/share\"\n",
        )
        .expect("webdav");
        assert_eq!(cfg.storage_settings.service, "webdav");
        assert_no_secret(&format!("{cfg:?}"));
        let e = err("[storage_settings]\ntype = \"webdav\"\nroot = \"/x\"\n");
        assert!(e.contains("webdav requires `endpoint`"), "{e}");
        let e = err("[storage_settings]\ntype = \"webdav\"\nendpoint = \"http://x\"\nbukket = 1\n");
        assert!(e.contains("unknown key `bukket`"), "{e}");
        let cfg = Config::parse(
            "[[mounts]]\npath = \"/www\"\nread_only = true\n[mounts.storage_settings]\ntype = \"http\"\nendpoint = \"https://example.com\"\nroot = \"/pub\"\n",
        )
        .expect("http");
        assert_eq!(cfg.mounts[0].storage_settings.service, "http");
    }
}
