//! Hot reload of the configuration file: watch it, re-read it on change and
//! on SIGHUP, validate the whole file, work out what changed, refuse what
//! cannot change live, apply the rest, and log one line either way.
//!
//! How a change is noticed: a task polls the file once a second (its content,
//! read whole: a config file is small). Polling rather than inotify because it
//! also sees an editor's write-to-temporary-then-rename and a symlink swapped
//! by a configuration manager (Kubernetes ConfigMaps), needs no extra crate,
//! and costs one small read a second. A changed content is re-read after
//! 200 ms until two reads agree, so a file caught half-written is not taken.
//! SIGHUP reloads at once. Reloads are serialized by one task, which owns the
//! configuration in force.
//!
//! What one reload does ([`Reloader::reload`]):
//! 1. parse and validate the whole file with the same code as at start
//!    (the same command-line overrides applied). A broken file is refused
//!    with one line ([`crate::config::ConfigError`] carries no secret value);
//! 2. [`diff`] the new configuration against the one in force, key by key
//!    (`section.key`);
//! 3. refuse the whole reload if any changed key cannot change live
//!    ([`classify`]), or if a [`Target`] refuses it in its check; nothing of
//!    that reload is applied and the old configuration stays in force;
//! 4. otherwise apply it to every target and log one info line naming the
//!    changed keys (names only, never values).
//!
//! A [`Target`] is one thing a reload changes: the root [`crate::vfs::ObjectFs`]
//! and its back-end ([`ObjectTarget`]), each Kata volume (the same with the
//! volume's fixed storage), and the log level ([`LogTarget`]). Other parts (a
//! mount table that adds and removes mounts) plug in as one more target: its
//! `check` sees the old and new configuration and may refuse; its `apply`
//! runs after every check passed.
//!
//! Locks: none held across `.await`; the reload task's state is its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::config::{is_secret_key, Config, MountSettings};
use crate::vfs::object::Tuner;
use crate::vfs::table::{MountSlot, MountTable};
use crate::vfs::{ObjectFs, ObjectFsOptions};

/// Whether a changed key can be applied to a running daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Applied live.
    Live,
    /// Needs a restart: a reload changing it is refused whole.
    Restart,
}

/// Storage option names (and OpenDAL aliases) that say *which* data is
/// served: changing them is not a credential/endpoint change but another
/// file system, so it needs a restart.
const IDENTITY_KEYS: &[&str] = &["bucket", "aws_bucket", "aws_bucket_name", "bucket_name", "root", "atomic_write_dir"];

/// The class of a flattened key (`section.key`, `profiles.NAME.key`).
pub fn classify(key: &str) -> Class {
    let (section, rest) = key.split_once('.').unwrap_or((key, ""));
    match section {
        "socket_settings" => Class::Restart,
        "cache_settings" => match rest {
            // The block cache is created at start or not at all.
            "enabled_cache" => Class::Restart,
            _ => Class::Live,
        },
        "storage_settings" => {
            if rest == "type" || IDENTITY_KEYS.iter().any(|k| rest.eq_ignore_ascii_case(k)) {
                Class::Restart
            } else {
                Class::Live
            }
        }
        "backend_settings" => match rest {
            // A streaming upload's parts are cut at this size while it runs.
            "part_size" => Class::Restart,
            _ => Class::Live,
        },
        "log_settings" => Class::Live,
        // Adding, removing and changing mounts is live; [`MountsTarget`]
        // re-creates a mount whose identity changed and may refuse.
        "mounts" => Class::Live,
        // Whether the root is a file system or synthetic: fixed at start.
        "root_storage" => Class::Restart,
        // netns is entered before any thread starts; volumes are resolved
        // from the pod's annotations and the profiles once, at start. A
        // profile's credentials are the exception: attached volumes of that
        // profile take the new ones (pods never set credentials).
        "profiles" if is_secret_key(key.rsplit('.').next().unwrap_or("")) => Class::Live,
        "kata" | "profiles" => Class::Restart,
        _ => Class::Restart,
    }
}

/// Every key of `cfg` with a comparable rendering of its value (`section.key`
/// -> value). Values are only compared, never shown: credentials are in here.
pub fn flatten(cfg: &Config) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: String, v: String| {
        m.insert(k, v);
    };
    let s = &cfg.socket_settings;
    put("socket_settings.socket_path".into(), format!("{:?}", s.socket_path));
    put("socket_settings.tag".into(), format!("{:?}", s.tag));
    put("socket_settings.num_request_queues".into(), format!("{:?}", s.num_request_queues));
    put("socket_settings.dax_window".into(), format!("{:?}", s.dax_window));
    put("socket_settings.dax_policy".into(), format!("{:?}", s.dax_policy));
    for (k, v) in flat_cache(&cfg.cache_settings) {
        put(format!("cache_settings.{k}"), v);
    }
    put("storage_settings.type".into(), cfg.storage_settings.service.clone());
    for (k, v) in &cfg.storage_settings.options {
        put(format!("storage_settings.{k}"), v.clone());
    }
    for (k, v) in flat_backend(&cfg.backend_settings) {
        put(format!("backend_settings.{k}"), v);
    }
    put("kata.netns".into(), format!("{:?}", cfg.kata.netns));
    put("kata.placeholder_root".into(), format!("{:?}", cfg.kata.placeholder_root));
    for (name, p) in &cfg.kata.profiles {
        put(format!("profiles.{name}.type"), p.storage.service.clone());
        put(format!("profiles.{name}.read_only"), format!("{:?}", p.read_only));
        put(format!("profiles.{name}.allow"), format!("{:?}", p.allow));
        for (k, v) in &p.storage.options {
            put(format!("profiles.{name}.{k}"), v.clone());
        }
    }
    put("log_settings.log_level".into(), format!("{:?}", cfg.log_level));
    // With [[mounts]]: whether the root is the top-level storage or synthetic.
    put("root_storage.present".into(), format!("{:?}", cfg.has_root_storage));
    for mnt in &cfg.mounts {
        let p = format!("mounts.{}", mnt.path);
        put(format!("{p}.read_only"), format!("{:?}", mnt.read_only));
        put(format!("{p}.storage_settings.type"), mnt.storage_settings.service.clone());
        for (k, v) in &mnt.storage_settings.options {
            put(format!("{p}.storage_settings.{k}"), v.clone());
        }
        for (k, v) in flat_cache(&mnt.cache_settings) {
            put(format!("{p}.cache_settings.{k}"), v);
        }
        for (k, v) in flat_backend(&mnt.backend_settings) {
            put(format!("{p}.backend_settings.{k}"), v);
        }
    }
    m
}

/// `[cache_settings]` keys with comparable renderings of their values.
fn flat_cache(c: &crate::config::CacheSettings) -> [(&'static str, String); 13] {
    [
        ("enabled_cache", format!("{:?}", c.enabled_cache)),
        ("enabled_cache_write_back", format!("{:?}", c.enabled_cache_write_back)),
        ("enabled_cache_expiration", format!("{:?}", c.enabled_cache_expiration)),
        ("cache_expiration_time", format!("{:?}", c.cache_expiration_time)),
        ("attr_timeout", format!("{:?}", c.attr_timeout)),
        ("entry_timeout", format!("{:?}", c.entry_timeout)),
        ("negative_timeout", format!("{:?}", c.negative_timeout)),
        ("memory_limit", format!("{:?}", c.memory_limit)),
        ("dirty_limit", format!("{:?}", c.dirty_limit)),
        ("flush_interval", format!("{:?}", c.flush_interval)),
        ("readahead_max", format!("{:?}", c.readahead_max)),
        ("dir_cache_ttl", format!("{:?}", c.dir_cache_ttl)),
        ("listing_attrs", format!("{:?}", c.listing_attrs)),
    ]
}

/// `[backend_settings]` keys with comparable renderings of their values.
fn flat_backend(b: &crate::config::BackendSettings) -> [(&'static str, String); 15] {
    [
        ("timeout", format!("{:?}", b.timeout)),
        ("io_timeout", format!("{:?}", b.io_timeout)),
        ("retry_max_times", format!("{:?}", b.retry_max_times)),
        ("retry_min_delay", format!("{:?}", b.retry_min_delay)),
        ("retry_max_delay", format!("{:?}", b.retry_max_delay)),
        ("default_file_mode", format!("{:?}", b.default_file_mode)),
        ("default_dir_mode", format!("{:?}", b.default_dir_mode)),
        ("default_uid", format!("{:?}", b.default_uid)),
        ("default_gid", format!("{:?}", b.default_gid)),
        ("part_size", format!("{:?}", b.part_size)),
        ("rename_dir_limit", format!("{:?}", b.rename_dir_limit)),
        ("inject_latency", format!("{:?}", b.inject_latency)),
        ("inject_latency_paths", format!("{:?}", b.inject_latency_paths)),
        ("inject_error_rate", format!("{:?}", b.inject_error_rate)),
        ("inject_error_rate_final", format!("{:?}", b.inject_error_rate_final)),
    ]
}

/// The keys whose values differ between `old` and `new` (added and removed
/// keys included), sorted.
pub fn diff(old: &Config, new: &Config) -> Vec<String> {
    let (a, b) = (flatten(old), flatten(new));
    let mut keys: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
        .collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() && old != new {
        // A field [`flatten`] does not list yet: never ignored silently.
        keys.push(UNLISTED.to_string());
    }
    keys
}

/// Stands for a change in a part of [`Config`] that [`flatten`] does not
/// list; [`classify`] makes it restart-only.
pub const UNLISTED: &str = "(a setting the reload does not know)";

/// `key`, marked when its value is a credential (the value is never shown
/// anyway; the mark tells the reader why).
fn show_key(key: &str) -> String {
    let last = key.rsplit('.').next().unwrap_or(key);
    if is_secret_key(last) {
        format!("{key} (secret)")
    } else {
        key.to_string()
    }
}

/// One thing a reload changes. `check` runs for every target before any
/// `apply`: a refusal there refuses the whole reload.
pub trait Target: Send + Sync {
    /// What this target is, for log lines (`root`, `volume data`, `log`).
    fn name(&self) -> String;
    /// `Err(reason)` (one line, no secret values) refuses the reload.
    fn check(&self, old: &Config, new: &Config) -> Result<(), String>;
    /// Apply `new`. Only called after every target's `check` passed; an
    /// error here is logged (the target keeps what it could not change).
    fn apply(&self, old: &Config, new: &Config) -> Result<(), String>;
}

/// The [`ObjectFsOptions`] a configuration gives an object-store file system
/// (the same mapping as at start, [`crate::cli::build_object_fs`]).
pub fn object_fs_options(cfg: &Config) -> ObjectFsOptions {
    let b = &cfg.backend_settings;
    ObjectFsOptions {
        file_mode: b.default_file_mode,
        dir_mode: b.default_dir_mode,
        uid: b.default_uid,
        gid: b.default_gid,
        part_size: b.part_size,
        rename_dir_limit: b.rename_dir_limit,
        ..Default::default()
    }
    .with_cache_settings(&cfg.cache_settings)
}

/// A running [`crate::vfs::ObjectFs`] and its back-end: cache knobs, TTLs,
/// POSIX defaults, retry/timeout policy and the operator (credentials,
/// endpoint, other service options).
pub struct ObjectTarget {
    pub name: String,
    pub tuner: Tuner,
    /// Fixed storage (a Kata volume's, resolved at start); `None`: the
    /// configuration's `[storage_settings]`.
    pub storage: Option<crate::config::StorageSettings>,
    /// The Kata profile of a volume: its credential keys follow the
    /// profile's in the file.
    pub profile: Option<String>,
}

impl ObjectTarget {
    /// The storage this target serves under `cfg`.
    pub fn storage(&self, cfg: &Config) -> crate::config::StorageSettings {
        let Some(fixed) = &self.storage else { return cfg.storage_settings.clone() };
        let mut s = fixed.clone();
        if let Some(p) = self.profile.as_ref().and_then(|p| cfg.kata.profiles.get(p)) {
            s.options.retain(|k, _| !is_secret_key(k));
            s.options.extend(
                p.storage.options.iter().filter(|(k, _)| is_secret_key(k)).map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        s
    }

    fn backend_changed(&self, old: &Config, new: &Config) -> bool {
        self.storage(old) != self.storage(new) || old.backend_settings != new.backend_settings
    }
}

impl Target for ObjectTarget {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn check(&self, old: &Config, new: &Config) -> Result<(), String> {
        if let Some(max) = self.tuner.max_memory_limit() {
            if new.cache_settings.memory_limit > max {
                return Err(format!(
                    "cache_settings.memory_limit: above the {max} bytes the cache was created with (needs a restart)"
                ));
            }
        }
        if self.backend_changed(old, new) {
            self.tuner.check_backend(&self.storage(new), &new.backend_settings)?;
        }
        Ok(())
    }

    fn apply(&self, old: &Config, new: &Config) -> Result<(), String> {
        let c = &new.cache_settings;
        let ttl = c.enabled_cache_expiration.then_some(c.cache_expiration_time);
        self.tuner.apply(object_fs_options(new), ttl, c.memory_limit);
        if self.backend_changed(old, new) {
            self.tuner.reconfigure_backend(&self.storage(new), &new.backend_settings)?;
        }
        Ok(())
    }
}

/// The mount table of a daemon: the server of a [`MountTable`] of object
/// file systems.
pub type MountServer = crate::fuse::Server<MountTable<ObjectFs, ObjectFs>>;

/// Builds one `[[mounts]]` entry's file system and attaches it to the table
/// ([`crate::cli`] supplies it: it also wires metrics and the background
/// reachability check).
pub type MountBuilder =
    fn(&MountTable<ObjectFs, ObjectFs>, &Config, &MountSettings) -> Result<Arc<MountSlot<ObjectFs>>, String>;

/// `[[mounts]]` changes on a running mount table, without touching the guest
/// connection:
/// - a mount whose path is new is built and attached;
/// - a mount whose path is gone is removed (its node ids answer ESTALE; files
///   open on it are still uploaded at close, see [`MountTable`]);
/// - a mount whose identity changed (service type, bucket, root, read-only,
///   whether it has a data cache, part size) is removed and attached again:
///   the guest sees a new file system at that path;
/// - any other change to a mount (credentials, endpoint, cache knobs, TTLs,
///   timeouts) is applied live to its file system, as [`ObjectTarget`] does
///   for the root.
///
/// A daemon started without `[[mounts]]` serves one file system, not a
/// table: a reload that adds mounts is refused (restart to apply).
pub struct MountsTarget {
    server: Option<Arc<MountServer>>,
    build: MountBuilder,
}

impl MountsTarget {
    pub fn new(server: Option<Arc<MountServer>>, build: MountBuilder) -> MountsTarget {
        MountsTarget { server, build }
    }

    fn slot(&self, path: &str) -> Option<Arc<MountSlot<ObjectFs>>> {
        let server = self.server.as_ref()?;
        server.filesystem().mounts().into_iter().find(|s| s.path == path)
    }

    /// The live part of a mount's change, as an [`ObjectTarget`] over the
    /// mount's own configuration.
    fn live(&self, m: &MountSettings) -> Option<ObjectTarget> {
        let slot = self.slot(&m.path)?;
        Some(ObjectTarget { name: format!("mount {}", m.path), tuner: slot.fs.tuner(), storage: None, profile: None })
    }
}

/// Whether a mount changed into another file system (see [`MountsTarget`]).
fn identity_changed(a: &MountSettings, b: &MountSettings) -> bool {
    let ident = |m: &MountSettings| {
        let mut v: Vec<(String, String)> = m
            .storage_settings
            .options
            .iter()
            .filter(|(k, _)| IDENTITY_KEYS.iter().any(|i| k.eq_ignore_ascii_case(i)))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        v.sort();
        (
            m.storage_settings.service.clone(),
            v,
            m.read_only,
            m.cache_settings.enabled_cache,
            m.backend_settings.part_size,
        )
    };
    ident(a) != ident(b)
}

impl Target for MountsTarget {
    fn name(&self) -> String {
        "mounts".into()
    }

    fn check(&self, old: &Config, new: &Config) -> Result<(), String> {
        if old.mounts == new.mounts {
            return Ok(());
        }
        if self.server.is_none() {
            return Err("the daemon was started without [[mounts]]; restart to serve mounts".into());
        }
        for m in &new.mounts {
            let before = old.mounts.iter().find(|o| o.path == m.path);
            match before {
                Some(o) if o == m => {}
                Some(o) if !identity_changed(o, m) => {
                    if let Some(t) = self.live(m) {
                        t.check(&old.for_mount(o), &new.for_mount(m)).map_err(|e| format!("mount {}: {e}", m.path))?;
                    }
                }
                // New, or re-created: the back-end must build (no network I/O).
                _ => {
                    crate::backend::Backend::build(&m.storage_settings, &m.backend_settings)
                        .map_err(|e| format!("mount {}: {e}", m.path))?;
                }
            }
        }
        Ok(())
    }

    fn apply(&self, old: &Config, new: &Config) -> Result<(), String> {
        let Some(server) = &self.server else { return Ok(()) };
        let table = server.filesystem();
        let mut errors = Vec::new();
        for o in &old.mounts {
            let gone = match new.mounts.iter().find(|m| m.path == o.path) {
                None => true,
                Some(m) => identity_changed(o, m),
            };
            if gone && table.remove_mount(&o.path).is_some() {
                tracing::info!(path = %o.path, "mount removed");
            }
        }
        for m in &new.mounts {
            let before = old.mounts.iter().find(|o| o.path == m.path);
            if self.slot(&m.path).is_none() {
                // New, re-created, or not attached by an earlier reload.
                match (self.build)(table, new, m) {
                    Ok(_) => tracing::info!(path = %m.path, scheme = %m.storage_settings.service, "mount attached"),
                    Err(e) => errors.push(e),
                }
            } else if let (Some(o), Some(t)) = (before.filter(|o| *o != m), self.live(m)) {
                if let Err(e) = t.apply(&old.for_mount(o), &new.for_mount(m)) {
                    errors.push(format!("mount {}: {e}", m.path));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// Sets the process's log filter: installed by the command line
/// ([`install_log_control`]) when logging starts.
pub struct LogControl {
    /// `--log-level`/`-d` given: the file's `log_level` does not apply.
    pub pinned: bool,
    /// The filter used when the file sets no level (`RUST_LOG` or the default).
    pub fallback: String,
    /// Replace the filter with a `tracing_subscriber::EnvFilter` spec.
    pub set: SetFilter,
}

/// Replaces the log filter with a `tracing_subscriber::EnvFilter` spec.
pub type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_CONTROL: OnceLock<LogControl> = OnceLock::new();

/// Register the log filter control (once per process; later calls are ignored).
pub fn install_log_control(c: LogControl) {
    let _ = LOG_CONTROL.set(c);
}

/// The filter spec for a level name: ovfs at that level, OpenDAL (which logs
/// every retry at WARN) one step quieter, other crates at WARN; a level
/// stricter than WARN applies to every crate.
pub fn level_spec(level: &str) -> String {
    match level {
        l @ ("error" | "off") => l.to_string(),
        l @ ("debug" | "trace") => format!("ovfs={l},opendal=warn,warn"),
        l => format!("ovfs={l},opendal=error,warn"),
    }
}

/// Apply the file's `log_level` (`None`: back to `RUST_LOG`/the default),
/// unless the command line pinned the level. Returns false when the command
/// line pinned it (nothing changed); true otherwise (also when no logging
/// was set up, as in unit tests: there is nothing to change).
pub fn set_log_level(level: Option<&str>) -> Result<bool, String> {
    let Some(c) = LOG_CONTROL.get() else { return Ok(true) };
    if c.pinned {
        return Ok(false);
    }
    let spec = level.map(level_spec).unwrap_or_else(|| c.fallback.clone());
    (c.set)(&spec)?;
    Ok(true)
}

/// The log level (`[log_settings] log_level`).
pub struct LogTarget;

impl Target for LogTarget {
    fn name(&self) -> String {
        "log".into()
    }

    fn check(&self, _old: &Config, _new: &Config) -> Result<(), String> {
        Ok(())
    }

    fn apply(&self, old: &Config, new: &Config) -> Result<(), String> {
        if old.log_level != new.log_level && !set_log_level(new.log_level.as_deref())? {
            tracing::info!("log_settings.log_level changed; --log-level on the command line takes precedence");
        }
        Ok(())
    }
}

/// Object file systems registered while the daemon is built (Kata volumes),
/// picked up by [`Reloader::new`].
static TRACKED: Mutex<Vec<ObjectTarget>> = Mutex::new(Vec::new());

/// Register a Kata volume's file system for reloads: its storage stays the
/// one resolved at start except the credential keys, which follow its
/// profile's; cache and back-end settings follow the file.
pub fn track_volume(name: &str, profile: &str, tuner: Tuner, storage: crate::config::StorageSettings) {
    TRACKED.lock().unwrap_or_else(|p| p.into_inner()).push(ObjectTarget {
        name: format!("volume {name}"),
        tuner,
        storage: Some(storage),
        profile: Some(profile.to_string()),
    });
}

/// What one reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file holds the configuration in force.
    Unchanged,
    /// Applied; the changed keys.
    Applied(Vec<String>),
    /// Refused (one line); the old configuration stays in force.
    Refused(String),
}

/// Reads the configuration (the same code and command-line overrides as at
/// start).
pub type Loader = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Owns the configuration in force and the targets.
pub struct Reloader {
    path: PathBuf,
    load: Loader,
    current: Config,
    targets: Vec<Box<dyn Target>>,
}

impl Reloader {
    /// `current`: the configuration in force (as loaded at start). Kata
    /// volumes registered with [`track_volume`] are added as targets.
    pub fn new(path: PathBuf, load: Loader, current: Config) -> Reloader {
        let mut targets: Vec<Box<dyn Target>> = Vec::new();
        for t in TRACKED.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            targets.push(Box::new(t));
        }
        Reloader { path, load, current, targets }
    }

    /// Add a target (the coordinator's mount table, for instance).
    pub fn add_target(&mut self, t: Box<dyn Target>) {
        self.targets.push(t);
    }

    /// The configuration in force.
    pub fn current(&self) -> &Config {
        &self.current
    }

    /// Re-read the file and apply what changed, or refuse it whole. Logs one
    /// line (info when applied, error when refused; debug when unchanged).
    pub fn reload(&mut self, why: &str) -> Outcome {
        let out = self.plan_and_apply();
        let path = self.path.display();
        match &out {
            Outcome::Unchanged => tracing::debug!(path = %path, trigger = why, "config reload: no change"),
            Outcome::Applied(keys) => {
                let keys: Vec<String> = keys.iter().map(|k| show_key(k)).collect();
                tracing::info!(path = %path, trigger = why, "config reloaded; changed: {}", keys.join(", "))
            }
            Outcome::Refused(reason) => tracing::error!(
                path = %path,
                trigger = why,
                "config reload refused, the running configuration stays in force: {reason}"
            ),
        }
        out
    }

    fn plan_and_apply(&mut self) -> Outcome {
        let new = match (self.load)() {
            Ok(c) => c,
            Err(e) => return Outcome::Refused(e),
        };
        let keys = diff(&self.current, &new);
        if keys.is_empty() {
            return Outcome::Unchanged;
        }
        let fixed: Vec<String> = keys.iter().filter(|k| classify(k) == Class::Restart).map(|k| show_key(k)).collect();
        if !fixed.is_empty() {
            return Outcome::Refused(format!("cannot change while running (restart to apply): {}", fixed.join(", ")));
        }
        for t in &self.targets {
            if let Err(e) = t.check(&self.current, &new) {
                return Outcome::Refused(format!("{}: {e}", t.name()));
            }
        }
        for t in &self.targets {
            if let Err(e) = t.apply(&self.current, &new) {
                tracing::error!(target_name = %t.name(), "config reload: could not apply: {e}");
            }
        }
        self.current = new;
        Outcome::Applied(keys)
    }
}

/// How often the file is polled.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Start reloading on SIGHUP and on changes of the file, on `rt`. Returns
/// at once; the tasks live as long as the runtime.
pub fn spawn(rt: &tokio::runtime::Handle, mut reloader: Reloader) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let path = reloader.path.clone();
    let hup = tx.clone();
    // Installed before this returns: from then on SIGHUP reloads (its
    // default action would end the process).
    let signal = {
        let _rt = rt.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    };
    rt.spawn(async move {
        let mut s = match signal {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install the SIGHUP handler; reload on SIGHUP is off");
                return;
            }
        };
        while s.recv().await.is_some() {
            if hup.send("SIGHUP").await.is_err() {
                break;
            }
        }
    });
    rt.spawn(async move {
        let mut last = tokio::fs::read(&path).await.ok();
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let mut now = tokio::fs::read(&path).await.ok();
            if now == last || now.is_none() {
                // A file missing for a moment (replaced by rename) is
                // not a change; a deleted file keeps the config in force.
                continue;
            }
            // Settle: two reads 200 ms apart must agree.
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let again = tokio::fs::read(&path).await.ok();
                if again == now {
                    break;
                }
                now = again;
            }
            last = now;
            if tx.send("file changed").await.is_err() {
                break;
            }
        }
    });
    rt.spawn(async move {
        tracing::info!(path = %reloader.path.display(), "config reload on change and SIGHUP enabled");
        while let Some(why) = rx.recv().await {
            // Parsing builds operators (no I/O but some CPU): off the async threads.
            reloader = match tokio::task::spawn_blocking(move || {
                reloader.reload(why);
                reloader
            })
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "config reload task failed; reload is off from now on");
                    break;
                }
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn cfg(text: &str) -> Config {
        Config::parse(text).expect("valid config")
    }

    const S3: &str = "[storage_settings]\ntype = \"s3\"\nbucket = \"b\"\nregion = \"r\"\nendpoint = \"http://127.0.0.1:1\"\naccess_key_id = \"AK1\"\nsecret_access_key = \"SK1\"\n";

    #[test]
    fn diff_names_changed_keys_only() {
        let a = cfg(S3);
        assert!(diff(&a, &a).is_empty());
        let b = cfg(&S3.replace("AK1", "AK2").replace("SK1", "SK2").replace("127.0.0.1:1", "127.0.0.1:2"));
        assert_eq!(
            diff(&a, &b),
            vec!["storage_settings.access_key_id", "storage_settings.endpoint", "storage_settings.secret_access_key"]
        );
        let c = cfg(&format!("{S3}[cache_settings]\ncache_expiration_time = \"5s\"\nattr_timeout = 1\n"));
        assert_eq!(diff(&a, &c), vec!["cache_settings.cache_expiration_time"], "attr_timeout 1 s is the default");
        let d = cfg(&format!("{S3}session_token = \"T\"\n"));
        assert_eq!(diff(&a, &d), vec!["storage_settings.session_token"], "an added key");
        assert_eq!(diff(&d, &a), vec!["storage_settings.session_token"], "a removed key");
        let mut e = a.clone();
        e.kata
            .profiles
            .insert("p".into(), crate::kata::Profile { storage: Default::default(), read_only: true, allow: vec![] });
        assert!(diff(&a, &e).contains(&"profiles.p.type".to_string()));
        assert_eq!(classify(UNLISTED), Class::Restart);
    }

    #[test]
    fn classes() {
        for k in [
            "storage_settings.access_key_id",
            "storage_settings.secret_access_key",
            "storage_settings.endpoint",
            "storage_settings.region",
            "cache_settings.cache_expiration_time",
            "cache_settings.attr_timeout",
            "cache_settings.memory_limit",
            "cache_settings.dir_cache_ttl",
            "backend_settings.timeout",
            "backend_settings.retry_max_times",
            "log_settings.log_level",
            "profiles.p.secret_access_key",
            "profiles.p.access_key_id",
        ] {
            assert_eq!(classify(k), Class::Live, "{k}");
        }
        for k in [
            "socket_settings.socket_path",
            "socket_settings.tag",
            "socket_settings.num_request_queues",
            "socket_settings.dax_window",
            "kata.netns",
            "profiles.p.endpoint",
            "profiles.p.bucket",
            "storage_settings.type",
            "storage_settings.bucket",
            "storage_settings.root",
            "cache_settings.enabled_cache",
            "backend_settings.part_size",
            "nosuch.key",
        ] {
            assert_eq!(classify(k), Class::Restart, "{k}");
        }
    }

    #[test]
    fn every_flattened_key_is_classified_on_purpose() {
        // Keys of a full config: each is either live or restart; none
        // falls through to the catch-all by accident.
        let text = format!(
            "{S3}[log_settings]\nlog_level = \"debug\"\n[kata]\nnetns = \"/x\"\n\
             [[mounts]]\npath = \"/m\"\n[mounts.storage_settings]\ntype = \"memory\"\n"
        );
        let keys = flatten(&cfg(&text));
        assert!(keys.contains_key("mounts./m.cache_settings.attr_timeout"));
        for k in keys.keys() {
            let section = k.split('.').next().unwrap();
            assert!(
                [
                    "socket_settings",
                    "cache_settings",
                    "storage_settings",
                    "backend_settings",
                    "kata",
                    "log_settings",
                    "root_storage",
                    "mounts"
                ]
                .contains(&section),
                "{k}"
            );
        }
    }

    /// A Reloader over an in-memory "file".
    fn reloader(text: &Arc<Mutex<String>>) -> Reloader {
        let t = text.clone();
        let load: Loader = Box::new(move || Config::parse(&t.lock().unwrap()).map_err(|e| e.to_string()));
        let current = load().unwrap();
        Reloader { path: "mem.toml".into(), load, current, targets: Vec::new() }
    }

    #[test]
    fn broken_file_and_fixed_keys_are_refused_whole() {
        let text = Arc::new(Mutex::new(S3.to_string()));
        let mut r = reloader(&text);
        assert_eq!(r.reload("test"), Outcome::Unchanged);

        // Broken: one line, no secret, nothing applied.
        *text.lock().unwrap() = S3.replace("SK1", "SK2").replace("bucket = \"b\"\n", "bucket = \"b\"\nbukket = 1\n");
        let Outcome::Refused(msg) = r.reload("test") else { panic!("must be refused") };
        assert!(!msg.contains('\n') && msg.contains("bukket") && !msg.contains("SK2"), "{msg}");
        assert_eq!(r.current().storage_settings.options["secret_access_key"], "SK1");

        // A live change mixed with a restart-only one: refused whole.
        *text.lock().unwrap() = format!("{}[socket_settings]\ntag = \"other\"\n", S3.replace("SK1", "SK2"));
        let Outcome::Refused(msg) = r.reload("test") else { panic!("must be refused") };
        assert!(msg.contains("socket_settings.tag") && !msg.contains("SK2"), "{msg}");
        assert!(!msg.contains("secret_access_key"), "only the fixed keys are named: {msg}");
        assert_eq!(r.current().storage_settings.options["secret_access_key"], "SK1");

        // Live only: applied, keys named.
        *text.lock().unwrap() =
            format!("{}[cache_settings]\ncache_expiration_time = \"2s\"\n", S3.replace("SK1", "SK2"));
        assert_eq!(
            r.reload("test"),
            Outcome::Applied(vec![
                "cache_settings.cache_expiration_time".into(),
                "storage_settings.secret_access_key".into()
            ])
        );
        assert_eq!(r.current().storage_settings.options["secret_access_key"], "SK2");
        assert_eq!(show_key("storage_settings.secret_access_key"), "storage_settings.secret_access_key (secret)");
    }

    struct Refuser;
    impl Target for Refuser {
        fn name(&self) -> String {
            "refuser".into()
        }
        fn check(&self, _: &Config, new: &Config) -> Result<(), String> {
            if new.cache_settings.attr_timeout > Duration::from_secs(5) {
                Err("too long".into())
            } else {
                Ok(())
            }
        }
        fn apply(&self, _: &Config, _: &Config) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn a_target_check_refuses_before_any_apply() {
        let text = Arc::new(Mutex::new(String::new()));
        let mut r = reloader(&text);
        let (fs, _) = crate::cli::build_object_fs(&Default::default(), &Config::default_memory()).unwrap();
        r.add_target(Box::new(ObjectTarget { name: "root".into(), tuner: fs.tuner(), storage: None, profile: None }));
        r.add_target(Box::new(Refuser));
        *text.lock().unwrap() = "[cache_settings]\nattr_timeout = 9\nentry_timeout = 3\n".into();
        let Outcome::Refused(msg) = r.reload("test") else { panic!("refused") };
        assert!(msg.contains("refuser: too long"), "{msg}");
        assert_eq!(fs.tuner().options().unwrap().entry_timeout, Duration::from_secs(1), "nothing applied");
        *text.lock().unwrap() = "[cache_settings]\nattr_timeout = 4\nentry_timeout = 3\ncache_expiration_time = 7\nmemory_limit = \"64MiB\"\n".into();
        assert!(matches!(r.reload("test"), Outcome::Applied(_)));
        let o = fs.tuner().options().unwrap();
        assert_eq!((o.attr_timeout, o.entry_timeout), (Duration::from_secs(4), Duration::from_secs(3)));
        assert_eq!(fs.tuner().cache_ttl(), Some(Some(Duration::from_secs(7))), "the block cache's TTL");
        assert_eq!(fs.staged_bytes().1, 16 << 20, "dirty limit: a quarter of the new 64 MiB");
        // A bigger cache than the one created at start needs a restart.
        *text.lock().unwrap() = "[cache_settings]\nmemory_limit = \"1GiB\"\n".into();
        let Outcome::Refused(msg) = r.reload("test") else { panic!("refused") };
        assert!(msg.contains("memory_limit"), "{msg}");
    }

    #[test]
    fn backend_swap_keeps_the_service_and_refuses_another() {
        let a = cfg(S3);
        let (fs, backend) = crate::cli::build_object_fs(&a.storage_settings, &a).unwrap();
        let t = ObjectTarget { name: "root".into(), tuner: fs.tuner(), storage: None, profile: None };
        let b = cfg(&S3.replace("AK1", "AK2"));
        t.check(&a, &b).expect("credentials change");
        t.apply(&a, &b).expect("applied");
        assert_eq!(backend.scheme(), "s3");
        let mut c = b.clone();
        c.storage_settings = Default::default();
        assert!(t.check(&b, &c).is_err(), "s3 -> memory refused by the back-end too");
    }

    #[test]
    fn a_volume_takes_its_profiles_new_credentials_only() {
        let prof = |ak: &str, ep: &str| {
            format!(
                "[profiles.p]\ntype = \"s3\"\nbucket = \"b\"\nregion = \"r\"\nendpoint = \"{ep}\"\naccess_key_id = \"{ak}\"\nsecret_access_key = \"S\"\nallow = [\"root\"]\n"
            )
        };
        let a = cfg(&prof("AK1", "http://127.0.0.1:1"));
        let vol_storage = {
            let mut s = a.kata.profiles["p"].storage.clone();
            s.options.insert("root".into(), "/pod-chose-this".into());
            s
        };
        let (fs, _) = crate::cli::build_object_fs(&vol_storage, &a).unwrap();
        let t = ObjectTarget {
            name: "volume v".into(),
            tuner: fs.tuner(),
            storage: Some(vol_storage.clone()),
            profile: Some("p".into()),
        };
        let b = cfg(&prof("AK2", "http://127.0.0.1:1"));
        assert_eq!(diff(&a, &b), vec!["profiles.p.access_key_id"]);
        let s = t.storage(&b);
        assert_eq!(s.options["access_key_id"], "AK2", "the profile's new key");
        assert_eq!(s.options["root"], "/pod-chose-this", "the pod's override stays");
        t.check(&a, &b).expect("check");
        t.apply(&a, &b).expect("apply");
        // Another endpoint in the profile: restart-only (attached volumes keep theirs).
        let c = cfg(&prof("AK2", "http://127.0.0.1:2"));
        assert_eq!(classify(&diff(&b, &c)[0]), Class::Restart);
    }

    /// Attach a mount without the daemon's extras (metrics of the slot,
    /// background reachability check).
    fn attach(
        t: &MountTable<ObjectFs, ObjectFs>,
        cfg: &Config,
        m: &MountSettings,
    ) -> Result<Arc<MountSlot<ObjectFs>>, String> {
        let (fs, _) = crate::cli::build_mount(cfg, m)?;
        t.add_mount(&m.path, fs, m.read_only)
    }

    fn mount(path: &str, storage: &str, extra: &str) -> String {
        format!("[[mounts]]\npath = \"{path}\"\n{extra}[mounts.storage_settings]\n{storage}\n")
    }

    #[test]
    fn mounts_are_added_removed_recreated_and_tuned_live() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let fs_at = |d: &tempfile::TempDir| format!("type = \"fs\"\nroot = \"{}\"", d.path().display());
        let a = mount("/a", "type = \"memory\"", "");
        let a_tuned = format!("{a}[mounts.cache_settings]\nattr_timeout = 5\n");
        let text = Arc::new(Mutex::new(format!("{a}{}", mount("/b", &fs_at(&d1), ""))));
        let mut r = reloader(&text);
        let (server, _) = crate::cli::build_mount_table(r.current()).unwrap();
        r.add_target(Box::new(MountsTarget::new(Some(server.clone()), attach)));
        let table = server.filesystem();
        let paths = || table.mounts().iter().map(|s| s.path.clone()).collect::<Vec<_>>();
        let slot = |p: &str| table.mounts().into_iter().find(|s| s.path == p).unwrap();
        let (a0, b0) = (slot("/a"), slot("/b"));

        // A live change of one mount: the same file system, tuned.
        *text.lock().unwrap() = format!("{a_tuned}{}", mount("/b", &fs_at(&d1), ""));
        let Outcome::Applied(keys) = r.reload("test") else { panic!("applied") };
        assert_eq!(keys, vec!["mounts./a.cache_settings.attr_timeout".to_string()]);
        assert!(Arc::ptr_eq(&slot("/a"), &a0) && Arc::ptr_eq(&slot("/b"), &b0));
        assert_eq!(slot("/a").fs.tuner().options().unwrap().attr_timeout, Duration::from_secs(5));

        // Another root for /b: a new file system at the same path.
        *text.lock().unwrap() = format!("{a_tuned}{}", mount("/b", &fs_at(&d2), ""));
        assert!(matches!(r.reload("test"), Outcome::Applied(_)));
        assert!(!Arc::ptr_eq(&slot("/b"), &b0), "re-created");
        assert!(Arc::ptr_eq(&slot("/a"), &a0), "untouched");

        // Added and removed.
        *text.lock().unwrap() =
            format!("{}{}", mount("/b", &fs_at(&d2), ""), mount("/c", "type = \"memory\"", "read_only = true\n"));
        assert!(matches!(r.reload("test"), Outcome::Applied(_)));
        assert_eq!(paths(), vec!["/b".to_string(), "/c".to_string()]);
        assert!(slot("/c").read_only);

        // A new mount whose back-end cannot be built: refused whole.
        let before = r.current().clone();
        *text.lock().unwrap() = format!(
            "{}{}{}",
            mount("/b", &fs_at(&d2), ""),
            mount("/c", "type = \"memory\"", "read_only = true\n"),
            mount("/d", "type = \"fs\"", "")
        );
        let Outcome::Refused(msg) = r.reload("test") else { panic!("refused") };
        assert!(msg.contains("/d") || msg.contains("root"), "{msg}");
        assert_eq!(r.current(), &before);
        assert_eq!(paths(), vec!["/b".to_string(), "/c".to_string()]);
    }

    #[test]
    fn mounts_cannot_be_added_to_a_daemon_without_a_table() {
        let text = Arc::new(Mutex::new(String::new()));
        let mut r = reloader(&text);
        r.add_target(Box::new(MountsTarget::new(None, attach)));
        *text.lock().unwrap() = mount("/a", "type = \"memory\"", "");
        let Outcome::Refused(msg) = r.reload("test") else { panic!("refused") };
        assert!(msg.contains("without [[mounts]]"), "{msg}");
    }
}
