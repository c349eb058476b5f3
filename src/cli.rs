//! Command line: the contract with whoever starts the daemon (a person, a
//! VMM's launcher, Kata's runtimes). Flags accept `--k=v` and `--k v`; when a
//! flag is repeated, the last one wins.
//!
//! `ovfs [--config FILE | --shared-dir DIR] (--socket-path S | --fd N)` serves
//! virtio-fs over vhost-user; `ovfs mount [--config FILE] MOUNTPOINT` mounts
//! the same server on the host through `/dev/fuse`.
//!
//! virtiofsd compatibility (Kata's two runtimes start the daemon with
//! virtiofsd's command lines, see docs/KATA.md): `-o a,b=c` legacy options are
//! rewritten to the long flags before parsing (`source=`, `cache=`,
//! `announce_submounts`, `xattr`, `config=`, ...); `--syslog`, `--cache`,
//! `--print-capabilities`, `-f` are served; flags that only tune virtiofsd's
//! own internals (`--sandbox`, `--seccomp`, `--thread-pool-size`,
//! `--inode-file-handles`, ...) are accepted with a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::backend::Backend;
use crate::cache::{BlockCache, CacheConfig, Pool};
use crate::config::{Config, MountSettings, StorageSettings};
use crate::fuse::{Server, ServerOptions};
use crate::kata;
use crate::metrics;
use crate::transport::fusedev::{self, FuseMount, MountOptions};
use crate::transport::vhost_user::{self, Listen, VhostUserOptions};
use crate::transport::RequestHandler;
use crate::vfs::mounts::{Mount, MountFs, MountPoint};
use crate::vfs::passthrough::{PassthroughFs, PassthroughOptions};
use crate::vfs::table::{MountSlot, MountTable};
use crate::vfs::ObjectFs;

/// Exit status for bad configuration or usage.
pub const EXIT_CONFIG: i32 = 2;

/// Read when no `--config` (or OVFS_CONFIG) is given and it exists.
pub const DEFAULT_CONFIG: &str = "/etc/ovfs/ovfs.toml";

#[derive(Parser, Debug)]
#[command(
    name = "ovfs",
    version,
    about = "virtio-fs over vhost-user, backed by Apache OpenDAL",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub common: Common,

    /// vhost-user socket to create and listen on (overrides [socket_settings]).
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<PathBuf>,

    /// An inherited, already listening vhost-user socket.
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,

    /// Device tag, for VMMs that take the config space from the back-end.
    #[arg(long)]
    pub tag: Option<String>,

    /// Number of request queues offered (besides the high-priority queue).
    #[arg(long, value_name = "N")]
    pub num_request_queues: Option<usize>,

    /// DAX window size (e.g. 64M; a power of two from 2 MiB to 1 TiB): offer the guest a
    /// shared-memory window it maps file ranges into (overrides
    /// [socket_settings] dax_window). See docs/DAX.md.
    #[arg(long, value_name = "SIZE", value_parser = parse_dax_window)]
    pub dax_window: Option<u64>,

    /// Keep serving the next VMM connection after one disconnects
    /// (by default the daemon exits, like virtiofsd).
    #[arg(long)]
    pub keep_serving: bool,

    /// Print the vhost-user back-end capabilities (JSON, as virtiofsd) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Deprecated spelling of --socket-path (virtiofsd).
    #[arg(long, value_name = "PATH", hide = true)]
    pub socket: Option<PathBuf>,

    #[command(flatten)]
    pub compat: Compat,
}

/// virtiofsd flags that tune only virtiofsd's own internals: accepted (so
/// Kata's command lines work unchanged) and reported with a warning.
#[derive(Args, Debug, Clone, Default)]
pub struct Compat {
    #[arg(long, value_name = "N", hide = true)]
    pub thread_pool_size: Option<String>,
    #[arg(long, value_name = "MODE", hide = true)]
    pub sandbox: Option<String>,
    #[arg(long, value_name = "ACTION", hide = true)]
    pub seccomp: Option<String>,
    #[arg(long, value_name = "WHEN", hide = true)]
    pub inode_file_handles: Option<String>,
    #[arg(long, value_name = "GROUP", hide = true)]
    pub socket_group: Option<String>,
    #[arg(long, value_name = "N", hide = true)]
    pub rlimit_nofile: Option<String>,
    #[arg(long, value_name = "CAPS", hide = true)]
    pub modcaps: Option<String>,
    #[arg(long, value_name = "MAP", hide = true)]
    pub xattrmap: Option<String>,
    #[arg(long, value_name = "MODE", hide = true, num_args = 0..=1, default_missing_value = "auto")]
    pub posix_acl: Option<String>,
    #[arg(long, hide = true)]
    pub allow_direct_io: bool,
    #[arg(long, hide = true)]
    pub allow_mmap: bool,
    #[arg(long, hide = true)]
    pub writeback: bool,
    #[arg(long, hide = true)]
    pub killpriv_v2: bool,
    #[arg(long, hide = true)]
    pub no_killpriv_v2: bool,
    #[arg(long, hide = true)]
    pub security_label: bool,
    #[arg(long, hide = true)]
    pub preserve_noatime: bool,
    #[arg(long, hide = true)]
    pub no_readdirplus: bool,
    #[arg(short = 'f', long = "foreground", hide = true)]
    pub foreground: bool,
}

impl Compat {
    /// The flags given that ovfs accepts but does not act on.
    fn ignored(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let opts: [(&'static str, bool); 17] = [
            ("--thread-pool-size", self.thread_pool_size.is_some()),
            ("--sandbox", self.sandbox.is_some()),
            ("--seccomp", self.seccomp.is_some()),
            ("--inode-file-handles", self.inode_file_handles.is_some()),
            ("--socket-group", self.socket_group.is_some()),
            ("--rlimit-nofile", self.rlimit_nofile.is_some()),
            ("--modcaps", self.modcaps.is_some()),
            ("--xattrmap", self.xattrmap.is_some()),
            ("--posix-acl", self.posix_acl.is_some()),
            ("--allow-direct-io", self.allow_direct_io),
            ("--allow-mmap", self.allow_mmap),
            ("--writeback", self.writeback),
            ("--killpriv-v2", self.killpriv_v2),
            ("--no-killpriv-v2", self.no_killpriv_v2),
            ("--security-label", self.security_label),
            ("--preserve-noatime", self.preserve_noatime),
            ("--no-readdirplus", self.no_readdirplus),
        ];
        for (name, given) in opts {
            if given {
                v.push(name);
            }
        }
        v
    }
}

/// virtiofsd's cache policies, mapped to the kernel's attribute/entry TTLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CachePolicy {
    /// No caching: every access asks the daemon.
    Never,
    /// Metadata only (same TTLs as auto here).
    Metadata,
    /// 1 s TTLs (the default).
    Auto,
    /// Long TTLs (1 day): only for trees no one else changes.
    Always,
}

impl CachePolicy {
    fn ttl(self) -> std::time::Duration {
        match self {
            CachePolicy::Never => std::time::Duration::ZERO,
            CachePolicy::Metadata | CachePolicy::Auto => std::time::Duration::from_secs(1),
            CachePolicy::Always => std::time::Duration::from_secs(86_400),
        }
    }
}

/// The JSON virtiofsd prints for `--print-capabilities` (QEMU's vhost-user
/// back-end descriptors read it). ovfs takes separate `--k v` options.
pub const CAPABILITIES_JSON: &str = "{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}";

/// Rewrite virtiofsd's legacy `-o a,b=c` options (also `-oa,b`) into long
/// flags. Unknown options are an error; options that only tune virtiofsd's
/// internals become warnings.
pub fn expand_legacy_options(args: Vec<std::ffi::OsString>) -> Result<(Vec<std::ffi::OsString>, Vec<String>), String> {
    let mut out = Vec::with_capacity(args.len());
    let mut warnings = Vec::new();
    let mut it = args.into_iter();
    if let Some(argv0) = it.next() {
        out.push(argv0);
    }
    while let Some(a) = it.next() {
        let Some(text) = a.to_str() else {
            out.push(a);
            continue;
        };
        let list = if text == "-o" {
            match it.next() {
                Some(v) => v.to_str().ok_or("-o: options must be UTF-8")?.to_string(),
                None => return Err("-o needs a value".into()),
            }
        } else if let Some(rest) = text.strip_prefix("-o").filter(|r| !r.is_empty() && !text.starts_with("--")) {
            rest.to_string()
        } else {
            out.push(a);
            continue;
        };
        for opt in list.split(',').filter(|o| !o.is_empty()) {
            let (k, v) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let flag = |name: &str| -> Vec<std::ffi::OsString> {
                match v {
                    Some(v) => vec![format!("--{name}").into(), v.into()],
                    None => vec![format!("--{name}").into()],
                }
            };
            match (k, v) {
                ("source", Some(_)) => out.extend(flag("shared-dir")),
                ("cache", Some(_)) => out.extend(flag("cache")),
                ("config", Some(_)) => out.extend(flag("config")),
                ("log_level", Some(_)) => out.extend(flag("log-level")),
                ("announce_submounts", None) => out.push("--announce-submounts".into()),
                ("no_announce_submounts", None) => out.push("--no-announce-submounts".into()),
                ("xattr", None) => out.push("--xattr".into()),
                ("no_xattr", None) => {}
                (
                    "flock" | "no_flock" | "posix_lock" | "no_posix_lock" | "writeback" | "no_writeback"
                    | "readdirplus" | "no_readdirplus" | "allow_direct_io" | "no_allow_direct_io" | "killpriv_v2"
                    | "no_killpriv_v2" | "posix_acl" | "no_posix_acl" | "security_label" | "no_security_label"
                    | "sandbox" | "seccomp" | "modcaps" | "timeout" | "thread_pool_size" | "xattrmap",
                    _,
                ) => warnings.push(format!("-o {opt}: virtiofsd option ignored by ovfs")),
                _ => return Err(format!("-o {opt}: unknown option")),
            }
        }
    }
    Ok((out, warnings))
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// TOML configuration file (default: /etc/ovfs/ovfs.toml when it exists;
    /// also settable with OVFS_CONFIG, so Kata's command lines stay unchanged).
    #[arg(long, global = true, value_name = "FILE", env = "OVFS_CONFIG")]
    pub config: Option<PathBuf>,

    /// OCI bundle whose config.json holds the pod annotations that choose
    /// volumes (default: the working directory, as Kata's shim sets it).
    #[arg(long, global = true, value_name = "DIR")]
    pub oci_bundle: Option<PathBuf>,

    /// Serve this host directory as a passthrough tree (full POSIX, as
    /// virtiofsd does; what Kata expects) instead of [storage_settings].
    #[arg(long, global = true, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,

    /// Serve --shared-dir through OpenDAL's fs service instead (object-store
    /// semantics, see docs/SEMANTICS.md), like `type = "fs"` in the config.
    #[arg(long, global = true)]
    pub opendal_fs: bool,

    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Debug logging (same as --log-level debug).
    #[arg(short = 'd', long = "debug", global = true)]
    pub debug: bool,

    /// Log to syslog (daemon facility) instead of stderr. The readiness line
    /// `Waiting for vhost-user socket connection...` still goes to stderr.
    #[arg(long, global = true)]
    pub syslog: bool,

    /// Cache policy (virtiofsd's): sets the kernel's attribute and entry
    /// TTLs, overriding [cache_settings] attr_timeout/entry_timeout.
    #[arg(long, global = true, value_enum, value_name = "POLICY")]
    pub cache: Option<CachePolicy>,

    /// Mark host mount points inside --shared-dir as submounts (passthrough).
    #[arg(long, global = true, overrides_with = "no_announce_submounts")]
    pub announce_submounts: bool,

    /// Do not mark host mount points as submounts.
    #[arg(long, global = true, overrides_with = "announce_submounts")]
    pub no_announce_submounts: bool,

    // --- passthrough (vfs::passthrough) ---
    /// Accepted for compatibility: --shared-dir is a passthrough by default.
    #[arg(long, global = true, hide = true)]
    pub passthrough: bool,

    /// With a passthrough --shared-dir: serve extended attributes (else ENOSYS).
    #[arg(long, global = true)]
    pub xattr: bool,

    /// Serve Prometheus metrics at this address: 127.0.0.1:PORT, [::1]:PORT,
    /// localhost:PORT or unix:/path (loopback only; off by default).
    #[arg(long, global = true, value_name = "ADDR")]
    pub metrics_addr: Option<crate::metrics::http::MetricsAddr>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount the file system on the host through /dev/fuse (foreground;
    /// SIGINT/SIGTERM unmount).
    Mount {
        /// Where to mount.
        mountpoint: PathBuf,
    },
}

fn init_logging(c: &Common) {
    let level = if c.debug { Some("debug".to_string()) } else { c.log_level.clone() };
    // OpenDAL logs every retry at WARN (with a backtrace when RUST_BACKTRACE
    // is set); ovfs logs the errors that matter itself, so OpenDAL is held to
    // ERROR unless a verbose level is asked for. A level stricter than WARN
    // applies to every crate.
    // Precedence: --log-level/-d, then [log_settings] log_level (applied
    // after the file is read, and on reload), then RUST_LOG, then info.
    let fallback = std::env::var("RUST_LOG").unwrap_or_else(|_| "ovfs=info,opendal=error,warn".to_string());
    let spec = match level.as_deref() {
        Some(l) => crate::reload::level_spec(l),
        None => fallback.clone(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("ovfs=info,opendal=error,warn"));
    use std::io::IsTerminal;
    // The filter is reloadable: a config reload may change the level.
    let set: crate::reload::SetFilter = if c.syslog {
        let b = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .without_time()
            .with_writer(|| SyslogWriter)
            .with_filter_reloading();
        let h = b.reload_handle();
        let _ = b.try_init();
        filter_setter(h)
    } else {
        let b = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .with_filter_reloading();
        let h = b.reload_handle();
        let _ = b.try_init();
        filter_setter(h)
    };
    crate::reload::install_log_control(crate::reload::LogControl { pinned: level.is_some(), fallback, set });
}

/// A [`crate::reload::SetFilter`] replacing the filter behind `h`.
fn filter_setter<S: 'static>(
    h: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> crate::reload::SetFilter {
    Box::new(move |spec| {
        let f = tracing_subscriber::EnvFilter::try_new(spec).map_err(|e| e.to_string())?;
        h.reload(f).map_err(|e| e.to_string())
    })
}

/// Sends each formatted log record to syslog(3).
struct SyslogWriter;

impl std::io::Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        static OPEN: std::sync::Once = std::sync::Once::new();
        OPEN.call_once(|| {
            // SAFETY: the ident is a static NUL-terminated string that lives
            // for the whole process, as openlog requires.
            unsafe { libc::openlog(c"ovfs".as_ptr(), libc::LOG_PID | libc::LOG_NDELAY, libc::LOG_DAEMON) };
        });
        let text = String::from_utf8_lossy(buf);
        let level = if text.contains("ERROR") {
            libc::LOG_ERR
        } else if text.contains("WARN") {
            libc::LOG_WARNING
        } else {
            libc::LOG_INFO
        };
        if let Ok(msg) = std::ffi::CString::new(text.trim_end().replace('\0', " ")) {
            // SAFETY: "%s" with one valid NUL-terminated string argument.
            unsafe { libc::syslog(level, c"%s".as_ptr(), msg.as_ptr()) };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Load the configuration named on the command line (or the embedded
/// default), with `--shared-dir` replacing the storage section.
pub fn load_config(c: &Common) -> Result<Config, String> {
    let default = Path::new(DEFAULT_CONFIG);
    let mut cfg = match &c.config {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
        None if default.exists() => Config::from_file(default).map_err(|e| e.to_string())?,
        None => Config::default_memory(),
    };
    if let Some(dir) = c.shared_dir.as_ref().filter(|_| c.opendal_fs) {
        let root = dir.to_str().ok_or_else(|| format!("--shared-dir {}: not UTF-8", dir.display()))?;
        if !dir.is_dir() {
            return Err(format!("--shared-dir {}: not a directory", dir.display()));
        }
        let mut options = std::collections::BTreeMap::new();
        options.insert("root".to_string(), root.to_string());
        cfg.storage_settings = StorageSettings { service: "fs".into(), options };
        cfg.has_root_storage = true;
    }
    if let Some(policy) = c.cache {
        cfg.cache_settings.attr_timeout = policy.ttl();
        cfg.cache_settings.entry_timeout = policy.ttl();
    }
    Ok(cfg)
}

/// The configuration file the daemon reads: `--config`/OVFS_CONFIG, else
/// the default file when it exists.
pub fn config_path(c: &Common) -> Option<PathBuf> {
    c.config.clone().or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()))
}

/// Reload the configuration file on change and on SIGHUP ([`crate::reload`]),
/// when the daemon was started from one. `root`: the object file system
/// served at the root (none for a passthrough tree).
fn start_reload(
    c: &Common,
    cfg: &Config,
    (root, mounts): (Option<crate::vfs::object::Tuner>, Option<Arc<MountServer>>),
    rt: &tokio::runtime::Runtime,
) {
    let Some(path) = config_path(c) else { return };
    let common = c.clone();
    let load: crate::reload::Loader = Box::new(move || load_config(&common));
    let mut r = crate::reload::Reloader::new(path, load, cfg.clone());
    if let Some(tuner) = root {
        r.add_target(Box::new(crate::reload::ObjectTarget {
            name: "root".into(),
            tuner,
            storage: None,
            profile: None,
        }));
    }
    r.add_target(Box::new(crate::reload::MountsTarget::new(mounts, build_mount_slot)));
    r.add_target(Box::new(crate::reload::LogTarget));
    crate::reload::spawn(rt.handle(), r);
}

/// Build one `[[mounts]]` entry's file system and attach it (for reloads).
fn build_mount_slot(
    table: &MountTable<ObjectFs, ObjectFs>,
    cfg: &Config,
    m: &MountSettings,
) -> Result<Arc<MountSlot<ObjectFs>>, String> {
    let (fs, backend) = build_mount(cfg, m)?;
    let slot = table.add_mount(&m.path, fs, m.read_only)?;
    observe_mount(&slot);
    check_later(&tokio::runtime::Handle::current(), format!("mount {}", m.path), backend);
    Ok(slot)
}

/// The file system and FUSE server for a configuration.
pub fn build_server(cfg: &Config) -> Result<(Arc<Server<ObjectFs>>, Backend), String> {
    let (fs, backend) = build_object_fs(&cfg.storage_settings, cfg)?;
    observe_fs("root", &fs, &backend);
    Ok((Arc::new(Server::new(fs, ServerOptions::default())), backend))
}

/// The server of a [`MountTable`] (reach the table with `filesystem()`).
pub use crate::reload::MountServer;

/// Back-ends to check in the background, each with a label for the log.
pub type Backends = Vec<(String, Backend)>;

/// The file system for a configuration with `[[mounts]]`: a
/// [`MountTable`] whose root is the top-level `[storage_settings]` if the
/// file has one, else a synthetic read-only directory, with each mount an
/// [`ObjectFs`] of its own (own back-end, timeouts, retries, cache, metrics
/// label = its path). Returns the back-ends to check, labelled.
pub fn build_mount_table(cfg: &Config) -> Result<(Arc<MountServer>, Backends), String> {
    let mut backends = Vec::new();
    let root = if cfg.has_root_storage {
        let (fs, backend) = build_object_fs(&cfg.storage_settings, cfg)?;
        observe_fs("root", &fs, &backend);
        backends.push(("storage_settings".to_string(), backend));
        Some(fs)
    } else {
        None
    };
    let table = MountTable::new(root);
    for m in &cfg.mounts {
        let (fs, backend) = build_mount(cfg, m)?;
        observe_mount(&table.add_mount(&m.path, fs, m.read_only)?);
        backends.push((format!("mount {}", m.path), backend));
    }
    Ok((Arc::new(Server::new(table, ServerOptions::default())), backends))
}

/// One `[[mounts]]` entry's file system (for [`MountTable::add_mount`]),
/// published in the metrics under its path. No network I/O.
pub fn build_mount(cfg: &Config, m: &MountSettings) -> Result<(ObjectFs, Backend), String> {
    let (fs, backend) =
        build_object_fs(&m.storage_settings, &cfg.for_mount(m)).map_err(|e| format!("mount {}: {e}", m.path))?;
    observe_fs(&m.path, &fs, &backend);
    Ok((fs, backend))
}

/// What [`build_handler`] made.
pub struct Built {
    /// What the transport serves.
    pub handler: Arc<dyn RequestHandler>,
    /// Back-ends to check in the background, labelled.
    pub backends: Backends,
    /// With `[[mounts]]`: the server of the mount table, for runtime changes
    /// (`mounts.filesystem().add_mount(..)` / `remove_mount(..)`, with
    /// [`build_mount`] making a new mount's file system).
    pub mounts: Option<Arc<MountServer>>,
    /// The root object file system's reload handle (none under a synthetic root).
    pub root: Option<crate::vfs::object::Tuner>,
}

/// Publish a mount's requests in flight and the requests it refused at its
/// bound (see [`MountTable`]) in the metrics, labelled with its path.
pub fn observe_mount(slot: &Arc<MountSlot<ObjectFs>>) {
    let m = metrics::global();
    let labels = format!("mount=\"{}\"", metrics::escape(&slot.path));
    let s = slot.clone();
    m.gauge("ovfs_mount_inflight", "Requests in flight on a [[mounts]] entry.", "gauge", &labels, move || {
        s.inflight() as f64
    });
    let s = slot.clone();
    m.gauge(
        "ovfs_mount_refused_total",
        "Requests answered EIO because the mount had too many in flight.",
        "counter",
        &labels,
        move || s.refused() as f64,
    );
}

/// The request handler for the object-store modes (not `--shared-dir`):
/// one [`ObjectFs`], or a [`MountTable`] with `[[mounts]]`.
pub fn build_handler(cfg: &Config) -> Result<Built, String> {
    if cfg.mounts.is_empty() {
        let (server, backend) = build_server(cfg)?;
        let root = Some(server.filesystem().tuner());
        return Ok(Built {
            handler: server,
            backends: vec![("storage_settings".to_string(), backend)],
            mounts: None,
            root,
        });
    }
    let (server, backends) = build_mount_table(cfg)?;
    for m in &cfg.mounts {
        tracing::info!(path = %m.path, scheme = %m.storage_settings.service, read_only = m.read_only, "mount configured");
    }
    let root = server.filesystem().root().map(|fs| fs.tuner());
    Ok(Built { handler: server.clone(), backends, mounts: Some(server), root })
}

/// An [`ObjectFs`] on `storage`, with the rest of `cfg` (POSIX defaults,
/// TTLs, data cache). No network I/O.
pub fn build_object_fs(storage: &StorageSettings, cfg: &Config) -> Result<(ObjectFs, Backend), String> {
    // The same mapping a reload applies to a running file system.
    build_object_fs_with(storage, cfg, crate::reload::object_fs_options(cfg))
}

/// [`build_object_fs`] with the file-system options given (the fuzz target
/// bounds `max_file_size`, which no configuration key sets).
pub fn build_object_fs_with(
    storage: &StorageSettings,
    cfg: &Config,
    opts: crate::vfs::ObjectFsOptions,
) -> Result<(ObjectFs, Backend), String> {
    let backend = Backend::build(storage, &cfg.backend_settings).map_err(|e| e.to_string())?;
    let c = &cfg.cache_settings;
    let mut fs = ObjectFs::new(backend.clone(), opts).with_dax_policy(cfg.socket_settings.dax_policy.clone());
    if c.enabled_cache {
        let pool =
            Pool::with_limit(c.memory_limit).map_err(|e| format!("cache: cannot create the memory pool: {e}"))?;
        let ttl = c.enabled_cache_expiration.then_some(c.cache_expiration_time);
        let cache =
            BlockCache::new(pool, CacheConfig { ttl, ..CacheConfig::default() }).map_err(|e| format!("cache: {e}"))?;
        fs = fs.with_cache(cache);
    }
    Ok((fs, backend))
}

/// Publish a mount's back-end calls and file-system counters in the metrics
/// registry (read at scrape time from atomics; nothing on the request path).
pub fn observe_fs(mount: &str, fs: &ObjectFs, backend: &Backend) {
    let m = metrics::global();
    m.add_backend(mount, backend.stats());
    let labels = format!("mount=\"{}\"", metrics::escape(mount));
    let o = fs.observer();
    type Read = fn(&crate::vfs::object::Observer) -> Option<f64>;
    let gauges: [(&str, &str, &'static str, Read); 10] = [
        ("ovfs_nodes", "Nodes the guest holds (looked up, not yet forgotten).", "gauge", |o| {
            o.counts().map(|c| c.0 as f64)
        }),
        ("ovfs_open_files", "Open file handles.", "gauge", |o| o.counts().map(|c| c.1 as f64)),
        ("ovfs_open_dirs", "Open directory handles.", "gauge", |o| o.counts().map(|c| c.2 as f64)),
        ("ovfs_dirty_bytes", "Staged bytes of files being written, not yet in the back-end.", "gauge", |o| {
            o.staged_bytes().map(|(used, _)| used as f64)
        }),
        ("ovfs_dirty_limit_bytes", "Staged bytes at which writers wait for uploads.", "gauge", |o| {
            o.staged_bytes().map(|(_, limit)| limit as f64)
        }),
        ("ovfs_cache_hits_total", "Data cache block hits.", "counter", |o| o.cache_counters().map(|c| c.0 as f64)),
        ("ovfs_cache_misses_total", "Data cache block misses.", "counter", |o| o.cache_counters().map(|c| c.1 as f64)),
        ("ovfs_cache_evictions_total", "Data cache blocks evicted.", "counter", |o| {
            o.cache_counters().map(|c| c.2 as f64)
        }),
        ("ovfs_cache_bytes", "Data cache pool bytes in use.", "gauge", |o| o.cache_counters().map(|c| c.3 as f64)),
        ("ovfs_cache_blocks", "Data cache blocks held (entries of its index).", "gauge", |o| {
            o.cache_entries().map(|n| n as f64)
        }),
    ];
    for (name, help, kind, read) in gauges {
        let o = o.clone();
        m.gauge(name, help, kind, &labels, move || read(&o).unwrap_or(0.0));
    }
}

/// Wrap `handler` in request metrics and serve them at `--metrics-addr`
/// (nothing when the flag is not given).
fn with_metrics(
    c: &Common,
    handler: Arc<dyn RequestHandler>,
    rt: &tokio::runtime::Runtime,
) -> Result<Arc<dyn RequestHandler>, String> {
    let Some(addr) = &c.metrics_addr else { return Ok(handler) };
    let endpoint = rt.block_on(async { metrics::http::Endpoint::bind(addr) }).map_err(|e| e.to_string())?;
    tracing::info!(addr = %addr, "metrics endpoint listening");
    rt.spawn(endpoint.run(metrics::global().clone()));
    // DAX window counters, read at scrape time (zero until a window is used).
    type Read = fn(&crate::fuse::dax::DaxStats) -> u64;
    let dax: [(&str, &str, &'static str, Read); 4] = [
        ("ovfs_dax_mappings", "DAX ranges mapped into the guest's window now.", "gauge", |d| d.live),
        ("ovfs_dax_setups_total", "SETUPMAPPING requests that mapped a range.", "counter", |d| d.setups),
        ("ovfs_dax_unmaps_total", "DAX ranges unmapped.", "counter", |d| d.unmaps),
        ("ovfs_dax_refused_total", "SETUPMAPPING/REMOVEMAPPING answered with an error.", "counter", |d| d.refused),
    ];
    for (name, help, kind, read) in dax {
        let h = handler.clone();
        metrics::global().gauge(name, help, kind, "", move || h.dax_stats().map_or(0.0, |d| read(&d) as f64));
    }
    Ok(metrics::MeteredHandler::new(handler, metrics::global().clone()))
}

/// Check a back-end in the background and log the outcome (no round trip
/// before serving: Kata gives the VM 10 s to start).
fn check_later(rt: &tokio::runtime::Handle, what: String, b: Backend) {
    rt.spawn(async move {
        match b.check().await {
            Ok(()) => tracing::info!(what = %what, scheme = b.scheme(), "back-end reachable"),
            Err(e) => tracing::error!(what = %what, scheme = b.scheme(), error = %e, "back-end check failed; requests will fail until it recovers"),
        }
    });
}

/// The Kata volumes the pod's annotations ask for, each an [`ObjectFs`]
/// mounted at its placeholder. Refused volumes are logged (one line each)
/// and left out; the rest of the sandbox is served.
pub fn kata_mounts(c: &Common, cfg: &Config, rt: &tokio::runtime::Handle) -> Vec<Mount<ObjectFs>> {
    let bundle = match &c.oci_bundle {
        Some(d) => d.clone(),
        None => match std::env::current_dir() {
            Ok(d) => d,
            Err(_) => return Vec::new(),
        },
    };
    let annotations = match kata::bundle_annotations(&bundle) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("pod annotations unreadable, no volumes mounted: {e}");
            return Vec::new();
        }
    };
    let (volumes, refused) = kata::volumes(&annotations, &cfg.kata);
    for r in refused {
        tracing::error!("{r}");
    }
    let mut mounts = Vec::new();
    for v in volumes {
        match build_object_fs(&v.storage, cfg) {
            Ok((fs, backend)) => {
                observe_fs(&v.name, &fs, &backend);
                tracing::info!(
                    volume = %v.name,
                    profile = %v.profile,
                    source = %v.source.display(),
                    scheme = backend.scheme(),
                    read_only = v.read_only,
                    "volume ready; served where its placeholder appears in the shared dir"
                );
                check_later(rt, format!("volume {}", v.name), backend);
                crate::reload::track_volume(&v.name, &v.profile, fs.tuner(), v.storage.clone());
                mounts.push(Mount { name: v.name, point: MountPoint::host_dir(v.source), fs, read_only: v.read_only });
            }
            Err(e) => {
                tracing::error!("{}", kata::Refusal { volume: v.name, reason: format!("profile `{}`: {e}", v.profile) })
            }
        }
    }
    mounts
}

// --- passthrough (vfs::passthrough) ---
/// `--shared-dir DIR`: DIR served by [`PassthroughFs`].
/// With pod annotations asking for volumes, they are attached inside it
/// ([`kata_mounts`], [`MountFs`]).
pub fn build_passthrough(
    c: &Common,
    cfg: &Config,
    rt: &tokio::runtime::Handle,
) -> Result<Arc<dyn RequestHandler>, String> {
    let dir = c.shared_dir.as_ref().ok_or("--passthrough needs --shared-dir DIR")?;
    let opts = PassthroughOptions {
        attr_timeout: cfg.cache_settings.attr_timeout,
        entry_timeout: cfg.cache_settings.entry_timeout,
        xattr: c.xattr,
        announce_submounts: c.announce_submounts && !c.no_announce_submounts,
    };
    let fs = PassthroughFs::new(dir, opts)
        .map_err(|e| format!("--shared-dir {}: {e}", dir.display()))?
        .with_dax_policy(cfg.socket_settings.dax_policy.clone());
    if !cfg.mounts.is_empty() {
        tracing::warn!("[[mounts]] are not served with --shared-dir (a passthrough tree); ignored");
    }
    let mounts = kata_mounts(c, cfg, rt);
    if mounts.is_empty() {
        return Ok(Arc::new(Server::new(fs, ServerOptions::default())));
    }
    Ok(Arc::new(Server::new(MountFs::new(fs, mounts), ServerOptions::default())))
}

/// `--dax-window SIZE`: bytes, or with a K/M/G (KiB/MiB/GiB) suffix.
fn parse_dax_window(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num.parse().map_err(|_| format!("invalid size {s:?} (e.g. 64M)"))?;
    let mul: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size {s:?} (e.g. 64M)")),
    };
    let n = num.checked_mul(mul).ok_or_else(|| format!("size {s:?} too large"))?;
    vhost_user::check_dax_window(n).map_err(|e| e.to_string())?;
    Ok(n)
}

/// Threads of the runtime's blocking pool: the `fs` service's file I/O
/// (OpenDAL runs every call there), DAX map requests, reload parsing. A fixed
/// set, all started with the runtime ([`runtime`]) and kept: a pool that grew
/// on demand started new threads (each with its stack and a malloc arena)
/// whenever a burst of requests met a busy pool, so the daemon's memory rose
/// with the highest concurrency seen long after start; calls beyond this many
/// wait for a free thread.
const BLOCKING_THREADS: usize = 64;
/// How long an idle blocking thread stays (tokio's default is 10 s): the set
/// started with the runtime is not churned by pauses in the load.
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ovfs-worker")
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .build()?;
    // Start the whole blocking pool now: each thread waits at the barrier
    // until all are running, so the pool cannot hand two of these to one
    // thread; a small allocation binds each thread's malloc arena too.
    let barrier = Arc::new(std::sync::Barrier::new(BLOCKING_THREADS));
    let started: Vec<_> = (0..BLOCKING_THREADS)
        .map(|_| {
            let b = barrier.clone();
            rt.spawn_blocking(move || {
                std::hint::black_box(vec![0u8; 64]);
                b.wait();
            })
        })
        .collect();
    rt.block_on(async {
        for h in started {
            h.await.map_err(std::io::Error::other)?;
        }
        Ok::<_, std::io::Error>(())
    })?;
    #[cfg(target_env = "gnu")]
    rt.spawn(trim_heap());
    Ok(rt)
}

/// How often freed heap memory is handed back to the kernel ([`trim_heap`]).
#[cfg(target_env = "gnu")]
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Give the pages glibc's malloc keeps free back to the kernel, every
/// [`TRIM_EVERY`]. The `ovfs` binary allocates through jemalloc
/// (src/main.rs), so this covers what still uses glibc's malloc: C code in
/// the process, and builds of this library without jemalloc (tests, fuzz
/// targets, other binaries). malloc returns memory to the system only from
/// the top of each arena; the free chunks a burst of concurrent requests
/// leaves inside the arenas stay resident. `malloc_trim(0)` releases every
/// whole free page of every arena; it takes each arena's lock for a walk of
/// its free lists (microseconds on this daemon's heaps). It does not undo
/// fragmentation (pages kept by one live chunk), which is why the binary
/// uses jemalloc (docs/SECURITY.md, "Load").
#[cfg(target_env = "gnu")]
async fn trim_heap() {
    let mut tick = tokio::time::interval(TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim has no preconditions; it only walks malloc's own state under its locks.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Entry point; returns the process exit status.
pub fn main() -> i32 {
    let (args, legacy_warnings) = match expand_legacy_options(std::env::args_os().collect()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ovfs: {e}");
            return EXIT_CONFIG;
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_CONFIG } else { 0 };
        }
    };
    if cli.print_capabilities {
        println!("{CAPABILITIES_JSON}");
        return 0;
    }
    init_logging(&cli.common);
    for w in legacy_warnings {
        tracing::warn!("{w}");
    }
    for flag in cli.compat.ignored() {
        tracing::warn!("{flag}: tunes virtiofsd's internals; ignored by ovfs");
    }
    let cfg = match load_config(&cli.common) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ovfs: {e}");
            return EXIT_CONFIG;
        }
    };
    if let Some(l) = &cfg.log_level {
        let _ = crate::reload::set_log_level(Some(l));
    }
    // Before any thread exists: every thread started later inherits it.
    if let Some(ns) = &cfg.kata.netns {
        if let Err(e) = kata::enter_netns(ns) {
            eprintln!("ovfs: {e}");
            return EXIT_CONFIG;
        }
        tracing::info!(netns = %ns.display(), "entered the network namespace for back-end traffic");
    }
    let rt = match runtime() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ovfs: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match &cli.command {
        Some(Command::Mount { mountpoint }) => run_mount(&cfg, &cli.common, mountpoint, &rt),
        None => run_vhost_user(&cli, &cfg, &rt),
    }
}

fn run_mount(cfg: &Config, common: &Common, mountpoint: &Path, rt: &tokio::runtime::Runtime) -> i32 {
    let mut reload = (None, None);
    let handler: Arc<dyn RequestHandler> = if common.passthrough || (common.shared_dir.is_some() && !common.opendal_fs)
    {
        match build_passthrough(common, cfg, rt.handle()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ovfs: {e}");
                return EXIT_CONFIG;
            }
        }
    } else {
        let Built { handler: server, backends, root, mounts } = match build_handler(cfg) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ovfs: {e}");
                return EXIT_CONFIG;
            }
        };
        if cfg.mounts.is_empty() {
            // Fail fast on an unusable back-end before mounting.
            for (_, backend) in &backends {
                if let Err(e) = rt.block_on(backend.check()) {
                    eprintln!("ovfs: back-end check failed: {e}");
                    return EXIT_CONFIG;
                }
            }
        } else {
            // With several mounts one that is down must not stop the others.
            for (what, b) in backends {
                check_later(rt.handle(), what, b);
            }
        }
        reload = (root, mounts);
        server
    };
    start_reload(common, cfg, reload, rt);
    let handler = match with_metrics(common, handler, rt) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ovfs: {e}");
            return EXIT_CONFIG;
        }
    };
    let mount = match FuseMount::mount(mountpoint, MountOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ovfs: mount {}: {e}", mountpoint.display());
            return 1;
        }
    };
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    let mp = mountpoint.to_path_buf();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("signal received; unmounting");
        if let Err(e) = fusedev::unmount(&mp) {
            tracing::error!(error = %e, "unmount failed");
        }
    });
    match mount.serve(handler, rt.handle().clone()) {
        Ok(()) => {
            tracing::info!("unmounted");
            0
        }
        Err(e) => {
            eprintln!("ovfs: /dev/fuse: {e}");
            let _ = fusedev::unmount(mountpoint);
            1
        }
    }
}

fn run_vhost_user(cli: &Cli, cfg: &Config, rt: &tokio::runtime::Runtime) -> i32 {
    let socket = cli.socket_path.clone().or_else(|| cli.socket.clone());
    let listen = match (cli.fd, socket.or_else(|| cfg.socket_settings.socket_path.clone())) {
        (Some(fd), _) => Listen::Fd(fd),
        (None, Some(p)) => Listen::SocketPath(p),
        (None, None) => {
            eprintln!("ovfs: no vhost-user socket: give --socket-path, --fd or [socket_settings] socket_path (or use `ovfs mount`)");
            return EXIT_CONFIG;
        }
    };
    let c = &cli.common;
    let mut reload = (None, None);
    let handler: Arc<dyn RequestHandler> = if c.passthrough || (c.shared_dir.is_some() && !c.opendal_fs) {
        match build_passthrough(&cli.common, cfg, rt.handle()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ovfs: {e}");
                return EXIT_CONFIG;
            }
        }
    } else {
        let Built { handler: server, backends, root, mounts } = match build_handler(cfg) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ovfs: {e}");
                return EXIT_CONFIG;
            }
        };
        // No back-end round trip before accepting (VMMs and Kata give little
        // time): check reachability in the background and log the outcome.
        for (what, b) in backends {
            check_later(rt.handle(), what, b);
        }
        reload = (root, mounts);
        server
    };
    start_reload(c, cfg, reload, rt);
    let handler = match with_metrics(c, handler, rt) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("ovfs: {e}");
            return EXIT_CONFIG;
        }
    };
    let opts = VhostUserOptions {
        tag: cli.tag.clone().or_else(|| cfg.socket_settings.tag.clone()),
        num_request_queues: cli.num_request_queues.or(cfg.socket_settings.num_request_queues).unwrap_or(1),
        keep_serving: cli.keep_serving,
        dax_window: cli.dax_window.or(cfg.socket_settings.dax_window),
        ..VhostUserOptions::default()
    };
    match vhost_user::serve(listen, handler, opts, rt.handle().clone()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ovfs: vhost-user: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> (Cli, Vec<String>) {
        let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.into()).collect();
        let (args, warnings) = expand_legacy_options(args).expect("legacy options");
        (Cli::try_parse_from(args).expect("parse"), warnings)
    }

    #[test]
    fn go_runtime_command_line() {
        let (c, w) = parse(&[
            "ovfs",
            "--syslog",
            "--cache=auto",
            "--shared-dir=/run/kata-containers/shared/sandboxes/sid/shared",
            "--fd=3",
            "--thread-pool-size=1",
            "--announce-submounts",
        ]);
        assert!(w.is_empty());
        assert!(c.common.syslog && c.common.announce_submounts);
        assert_eq!(c.common.cache, Some(CachePolicy::Auto));
        assert_eq!(c.fd, Some(3));
        assert_eq!(c.common.shared_dir.as_deref(), Some(Path::new("/run/kata-containers/shared/sandboxes/sid/shared")));
        assert_eq!(c.compat.ignored(), vec!["--thread-pool-size"]);
    }

    #[test]
    fn runtime_rs_command_line() {
        let (c, _) = parse(&[
            "ovfs",
            "--socket-path",
            "/run/kata/sid/root/virtiofsd.sock",
            "--shared-dir",
            "/run/kata-containers/shared/sandboxes/sid/ro",
            "--cache",
            "never",
            "--thread-pool-size=1",
            "-o",
            "announce_submounts",
            "--xattr",
        ]);
        assert_eq!(c.socket_path.as_deref(), Some(Path::new("/run/kata/sid/root/virtiofsd.sock")));
        assert_eq!(c.common.cache, Some(CachePolicy::Never));
        assert!(c.common.announce_submounts && c.common.xattr);
    }

    #[test]
    fn legacy_options_and_last_flag_wins() {
        let (c, w) =
            parse(&["ovfs", "-o", "source=/a,cache=always,xattr,flock", "--shared-dir", "/b", "-oconfig=/c.toml"]);
        assert_eq!(c.common.shared_dir.as_deref(), Some(Path::new("/b")), "the last --shared-dir wins");
        assert_eq!(c.common.cache, Some(CachePolicy::Always));
        assert_eq!(c.common.config.as_deref(), Some(Path::new("/c.toml")));
        assert!(c.common.xattr);
        assert_eq!(w.len(), 1, "flock is ignored with a warning: {w:?}");
        let (c, _) = parse(&["ovfs", "--cache", "never", "--cache=always", "--log-level", "info", "--log-level=debug"]);
        assert_eq!(c.common.cache, Some(CachePolicy::Always));
        assert_eq!(c.common.log_level.as_deref(), Some("debug"));
        let (c, _) = parse(&["ovfs", "--announce-submounts", "--no-announce-submounts"]);
        assert!(!c.common.announce_submounts || c.common.no_announce_submounts);
    }

    #[test]
    fn bad_legacy_options_are_refused() {
        for bad in [vec!["ovfs", "-o", "bogus"], vec!["ovfs", "-o"], vec!["ovfs", "-osource"]] {
            let args: Vec<std::ffi::OsString> = bad.iter().map(|a| a.into()).collect();
            assert!(expand_legacy_options(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mount_table_from_config_with_metrics() {
        let cfg = Config::parse(
            "[[mounts]]\npath = \"/metrics-a\"\n[mounts.storage_settings]\ntype = \"memory\"\n\
             [[mounts]]\npath = \"/metrics-b\"\nread_only = true\n[mounts.storage_settings]\ntype = \"memory\"\n",
        )
        .unwrap();
        let built = build_handler(&cfg).unwrap();
        let table = built.mounts.expect("a mount table");
        let paths: Vec<String> = table.filesystem().mounts().iter().map(|m| m.path.clone()).collect();
        assert_eq!(paths, ["/metrics-a", "/metrics-b"]);
        assert!(table.filesystem().root().is_none(), "no [storage_settings]: synthetic root");
        assert_eq!(built.backends.len(), 2);
        let text = metrics::global().render();
        for line in [
            "ovfs_mount_inflight{mount=\"/metrics-a\"} 0",
            "ovfs_mount_refused_total{mount=\"/metrics-b\"} 0",
            "ovfs_backend_calls_total{mount=\"/metrics-a\"",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        // Without mounts: one file system, no table.
        assert!(build_handler(&Config::default_memory()).unwrap().mounts.is_none());
    }

    #[test]
    fn capabilities_are_valid_json_of_type_fs() {
        let v = CAPABILITIES_JSON.replace(char::is_whitespace, "");
        assert_eq!(v, r#"{"type":"fs","features":["separate-options"]}"#);
    }
}
