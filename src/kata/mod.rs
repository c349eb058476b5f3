//! Kata Containers: which OpenDAL back-ends a pod gets, and where.
//!
//! The host configuration (`/etc/ovfs/ovfs.toml`, `--config`, or
//! `OVFS_CONFIG`) defines named profiles under `[profiles.NAME]`: an OpenDAL
//! service with its credentials, plus what a pod may change (`allow`). A pod
//! asks for a volume with annotations in the OCI bundle's `config.json` (the
//! working directory the Kata shim gives the daemon, or `--oci-bundle DIR`):
//!
//! ```text
//! io.ovfs.volume.<name>.profile = <profile>        (required)
//! io.ovfs.volume.<name>.source  = <host directory> (required: the hostPath placeholder)
//! io.ovfs.volume.<name>.root    = <prefix below the profile's root>   (if allowed)
//! io.ovfs.volume.<name>.read_only = true|false     (true always; false only if allowed)
//! io.ovfs.volume.<name>.bucket / .endpoint         (only if the profile allows)
//! ```
//!
//! Annotations never carry credentials: a key that looks like one (see
//! [`crate::config::is_secret_key`]), an unknown key, a change the profile does
//! not allow, an unknown profile or a source outside `[kata] placeholder_root`
//! refuses that volume with one log line (values are never logged); the rest
//! of the sandbox is served.
//!
//! How a volume lands on a bucket: the pod mounts a hostPath directory (the
//! placeholder, under `placeholder_root`) and names it in `.source`. Kata
//! bind-mounts that directory into the shared directory; a bind mount has
//! the same (device, inode) as its source, so [`crate::vfs::mounts::MountFs`]
//! recognises it wherever it appears in the tree and serves the volume's
//! back-end there instead of the (empty) host directory.
//!
//! `[kata] netns` names a network namespace file entered by [`enter_netns`]
//! before any thread starts (the Go runtime starts the daemon inside the
//! pod's network namespace; back-end traffic must leave from the host's).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use toml::Value;

use crate::config::{is_secret_key, ConfigError, StorageSettings};

/// The annotation prefix ovfs reads.
pub const PREFIX: &str = "io.ovfs.volume.";
/// Default `[kata] placeholder_root`.
pub const DEFAULT_PLACEHOLDER_ROOT: &str = "/var/lib/ovfs/volumes";

/// What a pod may override in a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Override {
    Root,
    ReadOnly,
    Bucket,
    Endpoint,
}

impl Override {
    fn parse(s: &str) -> Option<Override> {
        match s {
            "root" => Some(Override::Root),
            "read_only" => Some(Override::ReadOnly),
            "bucket" => Some(Override::Bucket),
            "endpoint" => Some(Override::Endpoint),
            _ => None,
        }
    }
}

/// `[profiles.NAME]`: a back-end a pod may pick by name.
#[derive(Clone, PartialEq, Eq)]
pub struct Profile {
    /// Service and options (credentials included), as `[storage_settings]`.
    pub storage: StorageSettings,
    /// Volumes of this profile are read-only unless a pod may and does say otherwise.
    pub read_only: bool,
    pub allow: Vec<Override>,
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // StorageSettings' Debug redacts credentials.
        f.debug_struct("Profile")
            .field("storage", &self.storage)
            .field("read_only", &self.read_only)
            .field("allow", &self.allow)
            .finish()
    }
}

/// `[kata]` and `[profiles.*]` of the host configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KataConfig {
    /// Network namespace file to enter for back-end traffic.
    pub netns: Option<PathBuf>,
    /// Placeholders (`.source`) must be below this directory.
    pub placeholder_root: PathBuf,
    pub profiles: BTreeMap<String, Profile>,
}

impl Default for KataConfig {
    fn default() -> Self {
        KataConfig { netns: None, placeholder_root: PathBuf::from(DEFAULT_PLACEHOLDER_ROOT), profiles: BTreeMap::new() }
    }
}

impl KataConfig {
    /// Parse the `[kata]` section.
    pub fn parse_kata(&mut self, t: toml::Table) -> Result<(), ConfigError> {
        for (k, v) in t {
            let s = v.as_str().ok_or_else(|| ConfigError::new(format!("kata.{k}: expected a string")))?;
            match k.as_str() {
                "netns" => self.netns = Some(PathBuf::from(s)),
                "placeholder_root" => {
                    if !s.starts_with('/') {
                        return Err(ConfigError::new("kata.placeholder_root: must be an absolute path"));
                    }
                    self.placeholder_root = PathBuf::from(s);
                }
                _ => {
                    return Err(ConfigError::new(format!(
                        "unknown key `{k}` in [kata] (expected netns, placeholder_root)"
                    )))
                }
            }
        }
        Ok(())
    }

    /// Parse `[profiles]` (a table of `[profiles.NAME]` tables). Each
    /// profile's storage options are checked by building its operator (no I/O).
    pub fn parse_profiles(&mut self, t: toml::Table) -> Result<(), ConfigError> {
        for (name, v) in t {
            if !valid_name(&name) {
                return Err(ConfigError::new(format!("[profiles.{name}]: a profile name is 1-63 of [A-Za-z0-9_-]")));
            }
            let Value::Table(mut pt) = v else {
                return Err(ConfigError::new(format!("profiles.{name}: must be a section ([profiles.{name}])")));
            };
            let read_only = match pt.remove("read_only") {
                None => false,
                Some(Value::Boolean(b)) => b,
                Some(_) => return Err(ConfigError::new(format!("profiles.{name}.read_only: expected a boolean"))),
            };
            let mut allow = Vec::new();
            match pt.remove("allow") {
                None => {}
                Some(Value::Array(a)) => {
                    for x in a {
                        let o = x.as_str().and_then(Override::parse).ok_or_else(|| {
                            ConfigError::new(format!(
                                "profiles.{name}.allow: entries are \"root\", \"read_only\", \"bucket\", \"endpoint\""
                            ))
                        })?;
                        allow.push(o);
                    }
                }
                Some(_) => return Err(ConfigError::new(format!("profiles.{name}.allow: expected an array"))),
            }
            let storage = crate::config::parse_storage_section(&format!("profiles.{name}"), pt)?;
            crate::backend::Backend::build(&storage, &crate::config::BackendSettings::default())
                .map_err(|e| ConfigError::new(format!("[profiles.{name}] {}", e.message())))?;
            self.profiles.insert(name, Profile { storage, read_only, allow });
        }
        Ok(())
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One volume a pod asked for, resolved against its profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub profile: String,
    /// The placeholder directory (host path, as given).
    pub source: PathBuf,
    /// The back-end to serve (profile options with the pod's overrides).
    pub storage: StorageSettings,
    pub read_only: bool,
}

/// A volume refused, with the reason (one line, no values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub volume: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "volume `{}` refused: {}; the volume is not mounted (the rest of the sandbox is served)",
            self.volume, self.reason
        )
    }
}

/// Read the pod annotations from an OCI bundle (`DIR/config.json`). A bundle
/// without `config.json` has none.
pub fn bundle_annotations(dir: &Path) -> Result<HashMap<String, String>, String> {
    let path = dir.join("config.json");
    if !path.exists() {
        return Ok(HashMap::new());
    }
    let spec = oci_spec::runtime::Spec::load(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(spec.annotations().clone().unwrap_or_default())
}

/// The volumes the annotations ask for: accepted ones and refusals.
pub fn volumes(annotations: &HashMap<String, String>, cfg: &KataConfig) -> (Vec<Volume>, Vec<Refusal>) {
    // name -> key -> value
    let mut asked: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in annotations {
        let Some(rest) = k.strip_prefix(PREFIX) else { continue };
        let Some((name, key)) = rest.rsplit_once('.') else {
            refused
                .entry(rest.to_string())
                .or_insert_with(|| format!("annotation `{k}`: expected {PREFIX}<volume>.<key>"));
            continue;
        };
        asked.entry(name.to_string()).or_default().insert(key.to_string(), v.clone());
    }
    let mut ok = Vec::new();
    for (name, keys) in asked {
        if refused.contains_key(&name) {
            continue;
        }
        match resolve(&name, &keys, cfg) {
            Ok(v) => ok.push(v),
            Err(reason) => {
                refused.insert(name, reason);
            }
        }
    }
    // Two volumes on one placeholder: the mount point would be ambiguous.
    let mut seen: HashMap<PathBuf, String> = HashMap::new();
    let mut kept = Vec::new();
    for v in ok {
        if let Some(first) = seen.get(&v.source) {
            refused.insert(v.name.clone(), format!("same source as volume `{first}`"));
            continue;
        }
        seen.insert(v.source.clone(), v.name.clone());
        kept.push(v);
    }
    let refusals = refused.into_iter().map(|(volume, reason)| Refusal { volume, reason }).collect();
    (kept, refusals)
}

fn resolve(name: &str, keys: &BTreeMap<String, String>, cfg: &KataConfig) -> Result<Volume, String> {
    let ann = |key: &str| format!("{PREFIX}{name}.{key}");
    if !valid_name(name) {
        return Err(format!("volume name `{name}` is not 1-63 of [A-Za-z0-9_-]"));
    }
    // Credentials first: the clearest reason wins.
    if let Some(k) = keys.keys().find(|k| is_secret_key(k)) {
        return Err(format!("annotation `{}` sets a credential; annotations can never set credentials", ann(k)));
    }
    for k in keys.keys() {
        if !matches!(k.as_str(), "profile" | "source" | "root" | "read_only" | "readonly" | "bucket" | "endpoint") {
            return Err(format!(
                "annotation `{}`: unknown key (expected profile, source, root, read_only, bucket, endpoint)",
                ann(k)
            ));
        }
    }
    let pname = keys.get("profile").ok_or_else(|| format!("annotation `{}` missing", ann("profile")))?;
    let profile = cfg.profiles.get(pname).ok_or_else(|| format!("no profile `{pname}` in the host configuration"))?;
    let allowed = |o: Override| profile.allow.contains(&o);
    let mut storage = profile.storage.clone();

    let source = keys.get("source").ok_or_else(|| format!("annotation `{}` missing", ann("source")))?;
    let source = PathBuf::from(source);
    if !source.is_absolute() || source.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(format!("annotation `{}`: must be an absolute path without `..`", ann("source")));
    }
    if !source.starts_with(&cfg.placeholder_root) {
        return Err(format!(
            "annotation `{}`: placeholder must be below {} ([kata] placeholder_root)",
            ann("source"),
            cfg.placeholder_root.display()
        ));
    }

    let mut read_only = profile.read_only;
    let ro = keys.get("read_only").or_else(|| keys.get("readonly"));
    if let Some(v) = ro {
        match v.as_str() {
            "true" | "1" | "yes" => read_only = true,
            "false" | "0" | "no" => {
                if profile.read_only && !allowed(Override::ReadOnly) {
                    return Err(format!(
                        "annotation `{}`: profile `{pname}` is read-only and does not allow read_only",
                        ann("read_only")
                    ));
                }
                read_only = false;
            }
            _ => return Err(format!("annotation `{}`: expected true or false", ann("read_only"))),
        }
    }

    if let Some(r) = keys.get("root") {
        if !allowed(Override::Root) {
            return Err(format!("annotation `{}`: profile `{pname}` does not allow root", ann("root")));
        }
        let rel = r.trim_matches('/');
        let bad = rel.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            || rel.bytes().any(|b| b.is_ascii_control() || b == b'\\');
        if rel.is_empty() || bad {
            return Err(format!("annotation `{}`: a relative prefix of plain path components", ann("root")));
        }
        let base = storage.options.get("root").cloned().unwrap_or_default();
        let joined = format!("{}/{rel}/", base.trim_end_matches('/'));
        let joined = if joined.starts_with('/') { joined } else { format!("/{joined}") };
        storage.options.insert("root".into(), joined);
    }
    if let Some(b) = keys.get("bucket") {
        if !allowed(Override::Bucket) {
            return Err(format!("annotation `{}`: profile `{pname}` does not allow bucket", ann("bucket")));
        }
        let okb = (3..=63).contains(&b.len())
            && b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
        if !okb {
            return Err(format!("annotation `{}`: not a valid bucket name", ann("bucket")));
        }
        storage.options.insert("bucket".into(), b.clone());
    }
    if let Some(e) = keys.get("endpoint") {
        if !allowed(Override::Endpoint) {
            return Err(format!("annotation `{}`: profile `{pname}` does not allow endpoint", ann("endpoint")));
        }
        let scheme_ok = e.starts_with("http://") || e.starts_with("https://");
        // `user:password@host` would smuggle credentials in.
        if !scheme_ok || e.contains('@') || e.bytes().any(|c| c.is_ascii_whitespace() || c.is_ascii_control()) {
            return Err(format!(
                "annotation `{}`: an http(s) URL without user information (annotations can never set credentials)",
                ann("endpoint")
            ));
        }
        storage.options.insert("endpoint".into(), e.clone());
    }
    Ok(Volume { name: name.to_string(), profile: pname.clone(), source, storage, read_only })
}

/// Enter the network namespace named by `path` (e.g. `/proc/1/ns/net`) on
/// the calling thread. Called before any other thread exists, so every
/// thread the daemon starts afterwards (tokio workers, hence every back-end
/// socket) is in it. Unix sockets and files do not depend on it.
pub fn enter_netns(path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).map_err(|e| format!("[kata] netns {}: {e}", path.display()))?;
    // SAFETY: setns on an fd we own for the duration of the call.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(format!("[kata] netns {}: setns: {}", path.display(), std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> KataConfig {
        let mut c = KataConfig::default();
        let t: toml::Table = r#"
            [open]
            type = "memory"
            allow = ["root", "bucket", "endpoint", "read_only"]
            [strict]
            type = "s3"
            bucket = "b1"
            region = "us-east-1"
            endpoint = "http://127.0.0.1:1"
            access_key_id = "AK"
            secret_access_key = "SK"
            root = "/pods"
            read_only = true
            allow = ["root"]
        "#
        .parse()
        .unwrap();
        c.parse_profiles(t).unwrap();
        c
    }

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_volume_with_allowed_overrides() {
        let a = ann(&[
            ("io.ovfs.volume.data.profile", "strict"),
            ("io.ovfs.volume.data.source", "/var/lib/ovfs/volumes/x"),
            ("io.ovfs.volume.data.root", "team/a"),
            ("io.kubernetes.cri.sandbox-id", "abc"),
        ]);
        let (v, r) = volumes(&a, &cfg());
        assert!(r.is_empty(), "{r:?}");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].storage.options["root"], "/pods/team/a/");
        assert_eq!(v[0].storage.options["bucket"], "b1");
        assert!(v[0].read_only);
    }

    #[test]
    fn refusals() {
        let c = cfg();
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("secret_access_key", "x")], "annotations can never set credentials"),
            (&[("access_key_id", "x")], "annotations can never set credentials"),
            (&[("bucket", "other")], "does not allow bucket"),
            (&[("endpoint", "http://evil:9000")], "does not allow endpoint"),
            (&[("read_only", "false")], "is read-only"),
            (&[("root", "../x")], "plain path components"),
            (&[("region", "x")], "unknown key"),
        ];
        for (extra, want) in cases {
            let mut a = ann(&[
                ("io.ovfs.volume.v.profile", "strict"),
                ("io.ovfs.volume.v.source", "/var/lib/ovfs/volumes/v"),
                ("io.ovfs.volume.ok.profile", "open"),
                ("io.ovfs.volume.ok.source", "/var/lib/ovfs/volumes/ok"),
            ]);
            for (k, v) in extra.iter() {
                a.insert(format!("io.ovfs.volume.v.{k}"), v.to_string());
            }
            let (v, r) = volumes(&a, &c);
            assert_eq!(v.len(), 1, "the other volume is kept: {extra:?}");
            assert_eq!(v[0].name, "ok");
            assert_eq!(r.len(), 1);
            let line = r[0].to_string();
            assert!(line.contains(want), "{extra:?}: {line}");
            assert!(!line.contains("\"x\"") && !line.contains("evil"), "values never logged: {line}");
        }
        // Open profile: endpoint with user info is refused, bucket is checked.
        for (k, v, want) in [
            ("endpoint", "http://AK:SK@host", "without user information"),
            ("bucket", "A_B", "not a valid bucket"),
            ("source", "/etc", "placeholder must be below"),
            ("source", "/var/lib/ovfs/volumes/../../../etc", "without `..`"),
        ] {
            let a = ann(&[
                ("io.ovfs.volume.o.profile", "open"),
                ("io.ovfs.volume.o.source", "/var/lib/ovfs/volumes/o"),
                (&format!("io.ovfs.volume.o.{k}"), v),
            ]);
            let (vs, r) = volumes(&a, &c);
            assert!(vs.is_empty());
            assert!(r[0].reason.contains(want), "{k}={v}: {}", r[0]);
        }
        let (vs, r) = volumes(&ann(&[("io.ovfs.volume.z.profile", "nope"), ("io.ovfs.volume.z.source", "/x")]), &c);
        assert!(vs.is_empty() && r[0].reason.contains("no profile `nope`"));
        let (vs, r) = volumes(
            &ann(&[
                ("io.ovfs.volume.a.profile", "open"),
                ("io.ovfs.volume.a.source", "/var/lib/ovfs/volumes/same"),
                ("io.ovfs.volume.b.profile", "open"),
                ("io.ovfs.volume.b.source", "/var/lib/ovfs/volumes/same"),
            ]),
            &c,
        );
        assert_eq!((vs.len(), vs[0].name.as_str()), (1, "a"));
        assert!(r[0].volume == "b" && r[0].reason.contains("same source"));
    }

    #[test]
    fn bundle_config_json_is_read_with_oci_spec() {
        let d = tempfile::tempdir().unwrap();
        assert!(bundle_annotations(d.path()).unwrap().is_empty());
        let json = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
            "annotations":{"io.ovfs.volume.d.profile":"open","io.kubernetes.cri.sandbox-id":"s"}}"#;
        std::fs::write(d.path().join("config.json"), json).unwrap();
        let a = bundle_annotations(d.path()).unwrap();
        assert_eq!(a["io.ovfs.volume.d.profile"], "open");
        std::fs::write(d.path().join("config.json"), "{not json").unwrap();
        assert!(bundle_annotations(d.path()).is_err());
    }

    #[test]
    fn profile_config_errors() {
        let mut c = KataConfig::default();
        let bad: toml::Table = "[p]\ntype = \"memory\"\nallow = [\"access_key_id\"]\n".parse().unwrap();
        assert!(c.parse_profiles(bad).is_err());
        let bad: toml::Table = "[p]\ntype = \"s3\"\nbogus = 1\nbucket=\"b\"\n".parse().unwrap();
        assert!(c.parse_profiles(bad).unwrap_err().to_string().contains("bogus"));
        let mut t = toml::Table::new();
        t.insert("netns".into(), Value::String("/proc/1/ns/net".into()));
        c.parse_kata(t).unwrap();
        assert_eq!(c.netns.as_deref(), Some(Path::new("/proc/1/ns/net")));
    }
}
