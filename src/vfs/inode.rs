//! The inode table: nodeid <-> path, with the kernel's lookup counts.
//!
//! Node ids are never reused within a daemon's life (a u64 counter), so the
//! generation number is constant per table; it changes when the table is
//! rebuilt (a new session after a reconnect), which is what the kernel needs to
//! tell a recycled id from the old one. A path that changes kind (file replaced
//! by a directory behind our back) gets a fresh node id. One std mutex guards
//! the table; it is never held across `.await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fuse::abi::FUSE_ROOT_ID;

/// What kind of node a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket or device node: the S_IFMT bits.
    Special(u32),
}

impl Kind {
    /// The S_IFMT bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Special(bits) => bits & libc::S_IFMT,
        }
    }

    /// The DT_* type for directory entries.
    pub fn dirent_type(self) -> u32 {
        (match self.type_bits() {
            libc::S_IFDIR => libc::DT_DIR,
            libc::S_IFLNK => libc::DT_LNK,
            libc::S_IFIFO => libc::DT_FIFO,
            libc::S_IFSOCK => libc::DT_SOCK,
            libc::S_IFCHR => libc::DT_CHR,
            libc::S_IFBLK => libc::DT_BLK,
            _ => libc::DT_REG,
        }) as u32
    }
}

#[derive(Debug)]
struct Node {
    path: String,
    kind: Kind,
    lookups: u64,
    /// Still reachable by its path (false after unlink/rmdir/replace).
    linked: bool,
}

#[derive(Debug)]
struct Inner {
    by_id: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
}

/// nodeid <-> path map with lookup counts.
#[derive(Debug)]
pub struct InodeTable {
    inner: Mutex<Inner>,
    generation: u64,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    pub fn new() -> Self {
        let mut by_id = HashMap::new();
        by_id.insert(FUSE_ROOT_ID, Node { path: String::new(), kind: Kind::Dir, lookups: 1, linked: true });
        let mut by_path = HashMap::new();
        by_path.insert(String::new(), FUSE_ROOT_ID);
        let generation = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1);
        InodeTable { inner: Mutex::new(Inner { by_id, by_path, next: FUSE_ROOT_ID + 1 }), generation }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The path and kind of a live node; `None` for ids never handed out or
    /// already forgotten, and for nodes that lost their path.
    pub fn get(&self, id: u64) -> Option<(String, Kind)> {
        let g = self.lock();
        let n = g.by_id.get(&id)?;
        n.linked.then(|| (n.path.clone(), n.kind))
    }

    /// Like [`get`](Self::get) but also for unlinked nodes (open files).
    pub fn get_any(&self, id: u64) -> Option<(String, Kind, bool)> {
        let g = self.lock();
        g.by_id.get(&id).map(|n| (n.path.clone(), n.kind, n.linked))
    }

    /// Node id currently at `path`, if any (no reference taken).
    pub fn id_of(&self, path: &str) -> Option<u64> {
        self.lock().by_path.get(path).copied()
    }

    /// Find or create the node for `path` and take one lookup reference.
    pub fn lookup(&self, path: &str, kind: Kind) -> u64 {
        let mut g = self.lock();
        if let Some(&id) = g.by_path.get(path) {
            if let Some(n) = g.by_id.get_mut(&id) {
                if n.kind == kind {
                    n.lookups += 1;
                    return id;
                }
                // Same name, different kind: the old node loses its path.
                n.linked = false;
            }
        }
        let id = g.next;
        g.next += 1;
        g.by_id.insert(id, Node { path: path.to_string(), kind, lookups: 1, linked: true });
        g.by_path.insert(path.to_string(), id);
        id
    }

    /// Drop `n` lookup references; the node is freed at zero (never the root).
    pub fn forget(&self, id: u64, n: u64) {
        if id == FUSE_ROOT_ID {
            return;
        }
        let mut g = self.lock();
        let Some(node) = g.by_id.get_mut(&id) else { return };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            let path = std::mem::take(&mut node.path);
            let linked = node.linked;
            g.by_id.remove(&id);
            if linked && g.by_path.get(&path) == Some(&id) {
                g.by_path.remove(&path);
            }
        }
    }

    /// The node at `path` no longer has a name (unlink, rmdir).
    pub fn unlink(&self, path: &str) {
        let mut g = self.lock();
        if let Some(id) = g.by_path.remove(path) {
            if let Some(n) = g.by_id.get_mut(&id) {
                n.linked = false;
            }
        }
    }

    /// Move `from` (and everything below it) to `to`. A node that was at `to`
    /// loses its name.
    pub fn rename(&self, from: &str, to: &str) {
        let mut g = self.lock();
        if let Some(old) = g.by_path.remove(to) {
            if let Some(n) = g.by_id.get_mut(&old) {
                n.linked = false;
            }
        }
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = g
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, &id)| (p.clone(), id))
            .collect();
        for (p, id) in moved {
            g.by_path.remove(&p);
            let newp = format!("{to}{}", &p[from.len()..]);
            if let Some(n) = g.by_id.get_mut(&id) {
                n.path = newp.clone();
            }
            g.by_path.insert(newp, id);
        }
    }

    /// Number of live nodes (tests, metrics).
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_forget_cycle() {
        let t = InodeTable::new();
        let a = t.lookup("a", Kind::File);
        assert_eq!(t.lookup("a", Kind::File), a);
        assert_eq!(t.get(a), Some(("a".into(), Kind::File)));
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.id_of("a"), None);
        let b = t.lookup("a", Kind::File);
        assert_ne!(a, b, "ids are never reused");
        t.forget(FUSE_ROOT_ID, 100);
        assert!(t.get(FUSE_ROOT_ID).is_some(), "root is never freed");
        t.forget(9999, 1); // unknown id: no effect
    }

    #[test]
    fn kind_change_gets_new_id() {
        let t = InodeTable::new();
        let a = t.lookup("x", Kind::File);
        let b = t.lookup("x", Kind::Dir);
        assert_ne!(a, b);
        assert!(t.get(a).is_none());
        assert_eq!(t.get_any(a).map(|x| x.2), Some(false));
        t.forget(a, 1);
        assert!(t.get_any(a).is_none());
        assert_eq!(t.id_of("x"), Some(b));
    }

    #[test]
    fn rename_moves_descendants() {
        let t = InodeTable::new();
        let d = t.lookup("d", Kind::Dir);
        let f = t.lookup("d/f", Kind::File);
        let g = t.lookup("d/sub/g", Kind::File);
        let other = t.lookup("dx", Kind::File);
        let victim = t.lookup("e", Kind::Dir);
        t.rename("d", "e");
        assert_eq!(t.get(d).unwrap().0, "e");
        assert_eq!(t.get(f).unwrap().0, "e/f");
        assert_eq!(t.get(g).unwrap().0, "e/sub/g");
        assert_eq!(t.get(other).unwrap().0, "dx");
        assert!(t.get(victim).is_none());
        assert_eq!(t.id_of("d"), None);
    }

    #[test]
    fn unlink_keeps_node_until_forgotten() {
        let t = InodeTable::new();
        let f = t.lookup("f", Kind::File);
        t.unlink("f");
        assert!(t.get(f).is_none());
        assert_eq!(t.get_any(f), Some(("f".into(), Kind::File, false)));
        let g = t.lookup("f", Kind::File);
        assert_ne!(f, g);
        t.forget(f, 1);
        assert_eq!(t.id_of("f"), Some(g), "forgetting the old node keeps the new mapping");
    }
}
