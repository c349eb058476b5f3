//! DAX policy shared by the file systems: which files the guest should access
//! through the DAX window when it mounts with `-o dax=inode` (the server sets
//! FUSE_ATTR_DAX on their attributes). With `-o dax=always` the guest uses
//! DAX for every regular file and ignores the policy.
//!
//! Forms (config `socket_settings.dax_policy`): `"all"`, `"none"`,
//! `"size>=SIZE"` (files of at least SIZE bytes, e.g. `"size>=1MiB"`) and
//! `"pattern:GLOB"` (paths matching GLOB, where `*` matches any run of
//! characters including `/` and `?` one character; e.g. `"pattern:*.bin"`).
//! The passthrough file system knows no paths: a pattern selects nothing there.

use std::fmt;

/// Which regular files get FUSE_ATTR_DAX.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DaxPolicy {
    /// Every regular file.
    #[default]
    All,
    /// No file (the guest can still force DAX with `-o dax=always`).
    None,
    /// Files at least this large.
    MinSize(u64),
    /// Files whose path (relative to the root, no leading `/`) matches.
    Pattern(String),
}

impl DaxPolicy {
    /// Parse the config form (see the module docs).
    pub fn parse(s: &str) -> Result<DaxPolicy, String> {
        let t = s.trim();
        match t {
            "all" => return Ok(DaxPolicy::All),
            "none" => return Ok(DaxPolicy::None),
            _ => {}
        }
        if let Some(size) = t.strip_prefix("size>=") {
            return parse_size(size.trim())
                .map(DaxPolicy::MinSize)
                .ok_or_else(|| format!("invalid size in DAX policy {s:?} (e.g. \"size>=1MiB\")"));
        }
        if let Some(p) = t.strip_prefix("pattern:") {
            if p.is_empty() {
                return Err(format!("empty pattern in DAX policy {s:?}"));
            }
            return Ok(DaxPolicy::Pattern(p.to_string()));
        }
        Err(format!("invalid DAX policy {s:?} (expected all, none, size>=SIZE or pattern:GLOB)"))
    }

    /// Does a regular file at `path` (if known) of `size` bytes get DAX?
    pub fn wants(&self, path: Option<&str>, size: u64) -> bool {
        match self {
            DaxPolicy::All => true,
            DaxPolicy::None => false,
            DaxPolicy::MinSize(min) => size >= *min,
            DaxPolicy::Pattern(p) => path.is_some_and(|path| glob(p.as_bytes(), path.as_bytes())),
        }
    }
}

impl fmt::Display for DaxPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaxPolicy::All => write!(f, "all"),
            DaxPolicy::None => write!(f, "none"),
            DaxPolicy::MinSize(n) => write!(f, "size>={n}"),
            DaxPolicy::Pattern(p) => write!(f, "pattern:{p}"),
        }
    }
}

fn parse_size(t: &str) -> Option<u64> {
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num.parse().ok()?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    num.checked_mul(mul)
}

/// `*` = any run (including `/`), `?` = one byte; iterative with one
/// backtrack point, so hostile names cannot make it exponential.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        assert_eq!(DaxPolicy::parse("all").unwrap(), DaxPolicy::All);
        assert_eq!(DaxPolicy::parse(" none ").unwrap(), DaxPolicy::None);
        assert_eq!(DaxPolicy::parse("size>=1MiB").unwrap(), DaxPolicy::MinSize(1 << 20));
        assert_eq!(DaxPolicy::parse("pattern:*.bin").unwrap(), DaxPolicy::Pattern("*.bin".into()));
        assert!(DaxPolicy::parse("size>=x").is_err());
        assert!(DaxPolicy::parse("pattern:").is_err());
        assert!(DaxPolicy::parse("some").is_err());
        let p = DaxPolicy::MinSize(100);
        assert!(p.wants(None, 100) && !p.wants(None, 99));
        let p = DaxPolicy::parse("pattern:data/*.bin").unwrap();
        assert!(p.wants(Some("data/a/b.bin"), 0));
        assert!(!p.wants(Some("data/a/b.bim"), 0));
        assert!(!p.wants(None, 1 << 30));
        assert!(glob(b"a?c", b"abc") && !glob(b"a?c", b"ac"));
        assert!(glob(b"*", b"") && glob(b"**x*", b"yyxz"));
        assert!(!glob(b"*a*a*a*a*a*b", &[b'a'; 64]));
    }
}
