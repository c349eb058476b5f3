//! Fuzz target: Kata annotation parsing (`ovfs::kata::volumes`) over
//! arbitrary annotation maps against a host profile configuration with
//! credentials.
//!
//! Input: lines `key=value`; a key is taken as given when it starts with `!`
//! (the `!` removed), otherwise `io.ovfs.volume.` is put in front of it, so
//! most inputs reach the volume logic.
//!
//! Checked: no panic; a refusal never carries a credential of a profile (nor
//! any annotation value holding one of `#%~{}^|`, profile names aside,
//! unless the key text holds it);
//! an accepted volume keeps its profile's service and credentials exactly,
//! adds no option beyond root/bucket/endpoint, is read-only when its profile
//! is read-only and does not allow read_only, has an absolute source below
//! the placeholder root without `..`, an endpoint without user information,
//! and no two accepted volumes share a source.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ovfs::config::is_secret_key;
use ovfs::kata::{volumes, KataConfig, Override, PREFIX};

const SECRETS: [&str; 3] = ["AKIAFUZZACCESSKEY", "fuzzSecretValue0123456789", "fuzzSessionToken42"];

fn cfg() -> &'static KataConfig {
    static C: OnceLock<KataConfig> = OnceLock::new();
    C.get_or_init(|| {
        let text = format!(
            r#"
            [kata]
            placeholder_root = "/var/lib/ovfs/volumes"
            [profiles.open]
            type = "memory"
            allow = ["root", "bucket", "endpoint", "read_only"]
            [profiles.strict]
            type = "s3"
            bucket = "b1"
            region = "us-east-1"
            endpoint = "http://127.0.0.1:1"
            access_key_id = "{}"
            secret_access_key = "{}"
            session_token = "{}"
            root = "/pods"
            read_only = true
            allow = ["root"]
            [profiles.rw]
            type = "s3"
            bucket = "b2"
            region = "us-east-1"
            endpoint = "http://127.0.0.1:2"
            access_key_id = "{0}"
            secret_access_key = "{1}"
            read_only = false
            allow = ["bucket", "endpoint"]
            "#,
            SECRETS[0], SECRETS[1], SECRETS[2]
        );
        ovfs::config::Config::parse(&text).expect("fuzz profile config").kata
    })
}

/// The marked characters (`#%~{}^|`) a text holds, one bit each.
fn marks(s: &str) -> u8 {
    s.bytes().fold(0, |m, b| {
        m | match b {
            b'#' => 1,
            b'%' => 2,
            b'~' => 4,
            b'{' => 8,
            b'}' => 16,
            b'^' => 32,
            b'|' => 64,
            _ => 0,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut ann: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        let k = match k.strip_prefix('!') {
            Some(raw) => raw.to_string(),
            None => format!("{PREFIX}{k}"),
        };
        ann.insert(k, v.to_string());
    }
    let c = cfg();
    let (ok, refused) = volumes(&ann, c);

    let keys_text: String = ann.keys().cloned().collect::<Vec<_>>().join("\n");
    // Key text (whole keys, their volume names and key parts) may be quoted
    // in a refusal; it is removed before looking for values.
    let mut key_parts: Vec<&str> = Vec::new();
    for k in ann.keys() {
        key_parts.push(k);
        if let Some(rest) = k.strip_prefix(PREFIX) {
            key_parts.push(rest);
            key_parts.extend(rest.split('.'));
            // A volume name is what comes before the key's last part, and
            // may hold dots itself ("e.p{" of "e.p{.profile"): every
            // dot-bounded prefix and suffix of the rest is key text too.
            for (i, _) in rest.match_indices('.') {
                key_parts.push(&rest[..i]);
                key_parts.push(&rest[i + 1..]);
            }
        }
    }
    key_parts.retain(|p| !p.is_empty());
    key_parts.sort_by_key(|p| std::cmp::Reverse(p.len()));
    // What no refusal may carry, worked out once per input (not once per
    // refusal: the per-refusal form was quadratic and most of an execution):
    // credentials the input does not itself hold, and the marked annotation
    // values below.
    let secrets: Vec<&str> = SECRETS.iter().copied().filter(|s| !text.contains(s)).collect();
    // Profile names are echoed ("no profile `x`"); other values never.
    // Only values with a character no refusal text has are checked
    // (a value such as "missing" is in the fixed text).
    let mut quoted: Vec<String> = ann
        .iter()
        .filter(|(k, _)| k.ends_with(".profile"))
        .map(|(_, v)| v.as_str())
        .chain(key_parts.iter().copied())
        .map(|p| format!("`{p}`"))
        .collect();
    quoted.sort_by_key(|p| std::cmp::Reverse(p.len()));
    // Each value with the set of marked characters it holds (`marks`).
    let mut values: Vec<(&str, u8)> = Vec::new();
    if !refused.is_empty() {
        // The bytes of the key text: a value with another byte is not in it.
        let mut in_keys = [false; 256];
        for b in keys_text.bytes() {
            in_keys[b as usize] = true;
        }
        let in_key_text = |v: &str| v.bytes().all(|b| in_keys[b as usize]) && keys_text.contains(v);
        for (k, v) in &ann {
            let m = marks(v);
            if m != 0 && !k.ends_with(".profile") && !in_key_text(v) {
                let named = ann.iter().any(|(k2, v2)| k2.ends_with(".profile") && v2.contains(v.as_str()));
                if !named {
                    values.push((v, m));
                }
            }
        }
    }
    for r in &refused {
        let line = r.to_string();
        for s in &secrets {
            assert!(!line.contains(s), "refusal carries a profile credential: {line}");
        }
        // A value absent from the refusal text is not carried by it; only
        // then is the key text stripped (the stripping loop is quadratic and
        // was most of an execution when run for every refusal).
        // A line lacking one of a value's marked characters cannot hold
        // it: that byte test skips the substring search for almost every
        // (refusal, value) pair, which was most of an execution (profile of
        // session 5: `StrSearcher::new` and the comparison hooks under it).
        let line_marks = marks(&line);
        if !values.iter().any(|&(v, m)| m & !line_marks == 0 && line.contains(v)) {
            continue;
        }
        // Profile names, volume names and keys are echoed in quotes: a value
        // may match across the end of one and the quote after it (`{{{{` +
        // "`" holds the value "{`"), so the quoted forms go first.
        // Stripping only removes bytes, so a part with a byte the line does
        // not hold cannot occur in it at any step: skipping it changes
        // nothing and spares a substring search (most of an execution once
        // the key parts number in the hundreds).
        let mut present = [false; 256];
        for b in line.bytes() {
            present[b as usize] = true;
        }
        let may_occur = |p: &str| p.bytes().all(|b| present[b as usize]);
        let mut stripped = line.clone();
        for p in &quoted {
            if may_occur(p) {
                stripped = stripped.replace(p.as_str(), "");
            }
        }
        for p in &key_parts {
            if may_occur(p) {
                stripped = stripped.replace(p, "");
            }
        }
        for (v, _) in &values {
            assert!(!stripped.contains(v), "refusal carries an annotation value: {line}");
        }
    }
    let mut sources = HashSet::new();
    for v in &ok {
        let p = c.profiles.get(&v.profile).expect("accepted volume of a known profile");
        assert_eq!(v.storage.service, p.storage.service);
        for (k, pv) in &p.storage.options {
            if is_secret_key(k) {
                assert_eq!(v.storage.options.get(k), Some(pv), "credential {k} changed");
            }
        }
        for (k, vv) in &v.storage.options {
            if is_secret_key(k) {
                assert_eq!(p.storage.options.get(k), Some(vv), "credential {k} added");
            } else if p.storage.options.get(k) != Some(vv) {
                assert!(matches!(k.as_str(), "root" | "bucket" | "endpoint"), "option {k} changed");
                let o = match k.as_str() {
                    "root" => Override::Root,
                    "bucket" => Override::Bucket,
                    _ => Override::Endpoint,
                };
                assert!(p.allow.contains(&o), "option {k} changed without allow");
            }
        }
        if p.read_only && !p.allow.contains(&Override::ReadOnly) {
            assert!(v.read_only, "read-only profile served read-write");
        }
        assert!(v.source.is_absolute() && v.source.starts_with(&c.placeholder_root));
        assert!(!v.source.components().any(|x| matches!(x, std::path::Component::ParentDir)));
        if let Some(e) = v.storage.options.get("endpoint") {
            assert!(!e.contains('@'), "endpoint with user information");
        }
        assert!(sources.insert(v.source.clone()), "two volumes on one source");
    }
});
