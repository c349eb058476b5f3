//! Model-based property tests of `ObjectFs` (docs/SEMANTICS.md).
//!
//! Random sequences of file-system operations run against the real
//! `ObjectFs` (the `Filesystem` trait methods, called directly with
//! `Ctx { uid: 0, gid: 0, .. }`, every path resolved with LOOKUP from the root
//! and every reference FORGOTTEN again) and, in parallel, against a tiny model
//! (`BTreeMap<path, file bytes + mode | directory>`). After EVERY step:
//!
//! - the step's result (Ok or the errno) equals the model's expectation;
//! - the whole tree seen through the file system (OPENDIR/READDIR[PLUS] of
//!   every directory, LOOKUP + GETATTR of every entry, OPEN + READ of every
//!   file) equals the model: names, kinds, permission bits, sizes, bytes;
//!   READDIRPLUS attributes and d_type agree with LOOKUP, GETATTR with LOOKUP;
//! - on memory, when no handle is open, the back-end itself (listed and read
//!   directly through `Backend`) equals the model too, so every change the
//!   file system acknowledged is durable, not only visible.
//!
//! At the end of a sequence every handle is closed and the file system must
//! be back to one live node (the root) and no open handles.
//!
//! Operations (names from {a, b, c}, depth <= 2, so collisions are frequent):
//! create (O_EXCL or not, O_TRUNC or not, optional write, handle kept open or
//! released), write at an offset (open/write/flush/release, or handle kept),
//! open without writing, writes / ftruncate / reads / fsync / close through a
//! kept handle, truncate by path, rename (files and directories, plain and
//! RENAME_NOREPLACE), mkdir, rmdir, unlink, chmod, readdir of a path, and
//! changes made behind the file system's back with `Backend` (write a file,
//! delete a file, make a directory marker). External changes are only
//! generated for paths no handle is open on (SEMANTICS.md lets an open file
//! diverge from its object) and never create the "file and directory of the
//! same name" situation.
//!
//! Tests:
//! - `memory_model`: `OVFS_MODEL_CASES` sequences (default 10,000) against a
//!   fresh memory back-end each, on `OVFS_MODEL_THREADS` threads (default 2).
//! - `s3_model`: `OVFS_MODEL_S3_CASES` sequences (default 200) against the S3
//!   server at `OVFS_TEST_S3_ENDPOINT`, each under its own random `root`.
//!   Without that variable the test fails with instructions, unless
//!   `OVFS_SKIP_S3=1`.
//!
//! A sequence is 0-3 setup steps (mkdir, create + write) and 4-12 (memory)
//! or 5-12 (S3) random operations. A failure prints the shrunk (minimal)
//! sequence with concrete paths and the first check that failed;
//! `PROPTEST_RNG_SEED` makes a run reproducible, `OVFS_MODEL_STATS=1` prints
//! how often each operation ended in each outcome.
//!
//! Product bugs these tests found (zero-length write past EOF, chmod of an
//! open file undone, SETATTR on an unlinked open file, rename over an open
//! file) are fixed; the `regression_*` tests replay their minimal sequences.
//! The one remaining skip is documented behaviour (S3 MKDIR reply mode, see
//! docs/SEMANTICS.md); `OVFS_MODEL_STRICT=1` turns it off.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ovfs::backend::{Backend, EntryKind, PosixMeta};
use ovfs::cli::build_server;
use ovfs::config::{Config, StorageSettings};
use ovfs::fuse::abi::RENAME_NOREPLACE;
use ovfs::fuse::{Ctx, Errno, Filesystem, Server, SetAttr};
use ovfs::vfs::ObjectFs;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

const NAMES: [&str; 3] = ["a", "b", "c"];
const DEFAULT_FILE_PERM: u32 = 0o644;
const DEFAULT_DIR_PERM: u32 = 0o755;
/// Most handles kept open at once.
const MAX_HANDLES: usize = 3;
const ROOT: u64 = 1;

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

/// Bytes shown as a string in failure reports.
#[derive(Clone, PartialEq, Eq)]
struct D(Vec<u8>);

impl fmt::Debug for D {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A mode shown in octal.
#[derive(Clone, Copy, PartialEq, Eq)]
struct M(u32);

impl fmt::Debug for M {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

/// Operations over paths of type `P`: generated with [`P`] (literal paths or
/// picks among what exists), executed with resolved `String` paths.
#[derive(Clone, Debug)]
enum Op<Path = String> {
    /// CREATE (O_CREAT|O_RDWR [|O_EXCL] [|O_TRUNC]), optional write, then
    /// FLUSH+RELEASE or keep the handle.
    Create {
        path: Path,
        mode: M,
        excl: bool,
        trunc: bool,
        write: Option<(u64, D)>,
        keep: bool,
    },
    /// LOOKUP + OPEN(O_RDWR) + WRITE, then FLUSH+RELEASE or keep the handle.
    Write {
        path: Path,
        off: u64,
        data: D,
        keep: bool,
    },
    /// LOOKUP + OPEN(O_RDWR), handle kept (nothing written yet).
    Open {
        path: Path,
    },
    /// WRITE through kept handle number `h` (modulo the number open).
    HWrite {
        h: usize,
        off: u64,
        data: D,
    },
    /// SETATTR(size, fh) through a kept handle (ftruncate).
    HTrunc {
        h: usize,
        size: u64,
    },
    /// READ the whole file through a kept handle.
    HRead {
        h: usize,
    },
    /// FSYNC a kept handle: the back-end object must then equal the model.
    HFsync {
        h: usize,
    },
    /// FLUSH + RELEASE a kept handle (a close).
    HClose {
        h: usize,
    },
    /// SETATTR(size) by path (truncate(2)).
    Truncate {
        path: Path,
        size: u64,
    },
    Rename {
        from: Path,
        to: Path,
        noreplace: bool,
    },
    Mkdir {
        path: Path,
        mode: M,
    },
    Rmdir {
        path: Path,
    },
    Unlink {
        path: Path,
    },
    /// SETATTR(mode).
    Chmod {
        path: Path,
        mode: M,
    },
    /// OPENDIR + READDIR of a path (names compared with the model).
    Readdir {
        path: Path,
    },
    /// `Backend::write` behind the file system's back.
    ExtWrite {
        path: Path,
        data: D,
    },
    /// `Backend::delete_file` behind the file system's back.
    ExtDelete {
        path: Path,
    },
    /// `Backend::create_dir` behind the file system's back.
    ExtMkdir {
        path: Path,
    },
}

/// A path as generated: a literal from {a, b, c} x depth <= 2, the k-th
/// existing path of the model (modulo their number), or a name in the k-th
/// existing directory (the root included), so that most operations hit
/// something while collisions stay frequent.
#[derive(Clone)]
enum P {
    Lit(String),
    Pick(usize),
    In(usize, usize),
}

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            P::Lit(s) => write!(f, "{s:?}"),
            P::Pick(k) => write!(f, "existing#{k}"),
            P::In(k, n) => write!(f, "dir#{k}/{}", NAMES[*n]),
        }
    }
}

fn lit_s() -> impl Strategy<Value = String> {
    (0..NAMES.len(), prop::option::weighted(0.4, 0..NAMES.len())).prop_map(|(a, b)| match b {
        None => NAMES[a].to_string(),
        Some(b) => format!("{}/{}", NAMES[a], NAMES[b]),
    })
}

fn path_s() -> impl Strategy<Value = P> {
    prop_oneof![
        3 => lit_s().prop_map(P::Lit),
        4 => (0..64usize).prop_map(P::Pick),
        3 => (0..64usize, 0..NAMES.len()).prop_map(|(k, n)| P::In(k, n)),
    ]
}

impl<A: Clone> Op<A> {
    /// The same operation with every path mapped through `f`.
    fn map<B>(&self, mut f: impl FnMut(&A) -> B) -> Op<B> {
        match self {
            Op::Create { path, mode, excl, trunc, write, keep } => {
                Op::Create { path: f(path), mode: *mode, excl: *excl, trunc: *trunc, write: write.clone(), keep: *keep }
            }
            Op::Write { path, off, data, keep } => {
                Op::Write { path: f(path), off: *off, data: data.clone(), keep: *keep }
            }
            Op::Open { path } => Op::Open { path: f(path) },
            Op::HWrite { h, off, data } => Op::HWrite { h: *h, off: *off, data: data.clone() },
            Op::HTrunc { h, size } => Op::HTrunc { h: *h, size: *size },
            Op::HRead { h } => Op::HRead { h: *h },
            Op::HFsync { h } => Op::HFsync { h: *h },
            Op::HClose { h } => Op::HClose { h: *h },
            Op::Truncate { path, size } => Op::Truncate { path: f(path), size: *size },
            Op::Rename { from, to, noreplace } => Op::Rename { from: f(from), to: f(to), noreplace: *noreplace },
            Op::Mkdir { path, mode } => Op::Mkdir { path: f(path), mode: *mode },
            Op::Rmdir { path } => Op::Rmdir { path: f(path) },
            Op::Unlink { path } => Op::Unlink { path: f(path) },
            Op::Chmod { path, mode } => Op::Chmod { path: f(path), mode: *mode },
            Op::Readdir { path } => Op::Readdir { path: f(path) },
            Op::ExtWrite { path, data } => Op::ExtWrite { path: f(path), data: data.clone() },
            Op::ExtDelete { path } => Op::ExtDelete { path: f(path) },
            Op::ExtMkdir { path } => Op::ExtMkdir { path: f(path) },
        }
    }
}

fn data_s() -> impl Strategy<Value = D> {
    prop::collection::vec(b'a'..=b'h', 0..8).prop_map(D)
}

fn mode_s() -> impl Strategy<Value = M> {
    prop::sample::select(vec![0o600, 0o644, 0o640, 0o700, 0o755, 0o751, 0o4755]).prop_map(M)
}

fn op_s() -> impl Strategy<Value = Op<P>> {
    let h = 0..MAX_HANDLES;
    prop_oneof![
        4 => (path_s(), mode_s(), any::<bool>(), prop::bool::weighted(0.2), prop::option::of((0..10u64, data_s())), prop::bool::weighted(0.5))
            .prop_map(|(path, mode, excl, trunc, write, keep)| Op::Create { path, mode, excl, trunc, write, keep }),
        3 => (path_s(), 0..12u64, data_s(), prop::bool::weighted(0.5))
            .prop_map(|(path, off, data, keep)| Op::Write { path, off, data, keep }),
        2 => path_s().prop_map(|path| Op::Open { path }),
        2 => (h.clone(), 0..12u64, data_s()).prop_map(|(h, off, data)| Op::HWrite { h, off, data }),
        1 => (h.clone(), 0..14u64).prop_map(|(h, size)| Op::HTrunc { h, size }),
        1 => h.clone().prop_map(|h| Op::HRead { h }),
        1 => h.clone().prop_map(|h| Op::HFsync { h }),
        2 => h.prop_map(|h| Op::HClose { h }),
        2 => (path_s(), 0..14u64).prop_map(|(path, size)| Op::Truncate { path, size }),
        5 => (path_s(), path_s(), prop::bool::weighted(0.3)).prop_map(|(from, to, noreplace)| Op::Rename { from, to, noreplace }),
        4 => (path_s(), mode_s()).prop_map(|(path, mode)| Op::Mkdir { path, mode }),
        2 => path_s().prop_map(|path| Op::Rmdir { path }),
        2 => path_s().prop_map(|path| Op::Unlink { path }),
        2 => (path_s(), mode_s()).prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => path_s().prop_map(|path| Op::Readdir { path }),
        2 => (path_s(), data_s()).prop_map(|(path, data)| Op::ExtWrite { path, data }),
        1 => path_s().prop_map(|path| Op::ExtDelete { path }),
        1 => path_s().prop_map(|path| Op::ExtMkdir { path }),
    ]
}

/// One sequence: the operations plus how the tree walk reads directories.
#[derive(Clone, Debug)]
struct Case {
    ops: Vec<Op<P>>,
    /// READDIRPLUS (true) or READDIR in the tree walks.
    plus: bool,
    /// Reply budget per READDIR call (small budgets exercise the cookies).
    budget: u32,
}

/// A few MKDIR / CREATE+WRITE steps that give a sequence something to work
/// on (they are ordinary, checked steps of the sequence).
fn init_s() -> impl Strategy<Value = Vec<Op<P>>> {
    let one = prop_oneof![
        (lit_s(), mode_s()).prop_map(|(p, mode)| Op::Mkdir { path: P::Lit(p), mode }),
        (lit_s(), mode_s(), data_s()).prop_map(|(p, mode, d)| Op::Create {
            path: P::Lit(p),
            mode,
            excl: false,
            trunc: false,
            write: Some((0, d)),
            keep: false
        }),
    ];
    prop::collection::vec(one, 0..=3)
}

fn case_s(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Case> {
    (init_s(), prop::collection::vec(op_s(), len), any::<bool>(), prop::sample::select(vec![200u32, 400, 4096]))
        .prop_map(|(mut ops, body, plus, budget)| {
            ops.extend(body);
            Case { ops, plus, budget }
        })
}

// ---------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum MNode {
    File {
        data: Vec<u8>,
        perm: u32,
    },
    /// `marker`: a `dir/` marker object exists; a directory without one is
    /// implied by the keys below it and vanishes with the last of them.
    Dir {
        perm: u32,
        marker: bool,
    },
}

#[derive(Clone, Debug)]
struct Model {
    tree: BTreeMap<String, MNode>,
    /// Directories keep a mode (memory: side table). On S3 a directory marker
    /// carries no metadata: directories show the default and chmod on them
    /// answers ENOTSUP, except a chmod to that default (a no-op).
    dir_meta: bool,
    /// Implied directories outlive their last child (see [`Flavor`]).
    implied_dirs_persist: bool,
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn under(path: &str, dir: &str) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// Acceptable outcomes of one operation.
type Expect = Vec<Result<(), Errno>>;

fn ok() -> Expect {
    vec![Ok(())]
}

fn err(e: Errno) -> Expect {
    vec![Err(e)]
}

impl Model {
    fn new(dir_meta: bool, implied_dirs_persist: bool) -> Model {
        Model { tree: BTreeMap::new(), dir_meta, implied_dirs_persist }
    }

    fn get(&self, path: &str) -> Option<&MNode> {
        self.tree.get(path)
    }

    fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || matches!(self.get(path), Some(MNode::Dir { .. }))
    }

    fn is_file(&self, path: &str) -> bool {
        matches!(self.get(path), Some(MNode::File { .. }))
    }

    /// ENOENT / ENOTDIR of walking to the directory that holds `path`.
    fn parent_ok(&self, path: &str) -> Result<(), Errno> {
        let parent = parent_of(path);
        if parent.is_empty() {
            return Ok(());
        }
        let mut cur = String::new();
        for comp in parent.split('/') {
            cur = join(&cur, comp);
            match self.get(&cur) {
                None => return Err(Errno::ENOENT),
                Some(MNode::File { .. }) => return Err(Errno::ENOTDIR),
                Some(MNode::Dir { .. }) => {}
            }
        }
        Ok(())
    }

    /// Walk to `path` itself.
    fn resolve(&self, path: &str) -> Result<&MNode, Errno> {
        self.parent_ok(path)?;
        self.get(path).ok_or(Errno::ENOENT)
    }

    fn children(&self, dir: &str) -> Vec<String> {
        self.tree
            .keys()
            .filter(|p| parent_of(p) == dir && !p.is_empty())
            .map(|p| p.rsplit('/').next().unwrap().to_string())
            .collect()
    }

    fn has_children(&self, dir: &str) -> bool {
        self.tree.keys().any(|p| under(p, dir))
    }

    fn dir_perm(&self, perm: u32) -> u32 {
        if self.dir_meta {
            perm & 0o7777
        } else {
            DEFAULT_DIR_PERM
        }
    }

    /// Implied directories without children vanish, up to the root.
    fn prune(&mut self, mut dir: String) {
        while !dir.is_empty() {
            match self.get(&dir) {
                Some(MNode::Dir { marker: false, .. }) if !self.has_children(&dir) => {
                    self.tree.remove(&dir);
                    dir = parent_of(&dir).to_string();
                }
                _ => return,
            }
        }
    }

    fn remove(&mut self, path: &str) {
        self.tree.remove(path);
        self.prune(parent_of(path).to_string());
    }

    /// Missing ancestors of `path` become implied directories.
    fn imply_ancestors(&mut self, path: &str) {
        let mut cur = parent_of(path).to_string();
        while !cur.is_empty() {
            let marker = self.implied_dirs_persist;
            self.tree.entry(cur.clone()).or_insert(MNode::Dir { perm: DEFAULT_DIR_PERM, marker });
            cur = parent_of(&cur).to_string();
        }
    }

    fn file_mut(&mut self, path: &str) -> &mut Vec<u8> {
        match self.tree.get_mut(path) {
            Some(MNode::File { data, .. }) => data,
            other => panic!("model: {path} is not a file: {other:?}"),
        }
    }

    /// POSIX rename(2) outcome.
    fn expect_rename(&self, from: &str, to: &str, noreplace: bool) -> Expect {
        if let Err(e) = self.parent_ok(from).and_then(|_| self.parent_ok(to)) {
            return err(e);
        }
        let Some(src) = self.get(from) else { return err(Errno::ENOENT) };
        if from == to {
            // Linux answers EEXIST for RENAME_NOREPLACE onto itself before
            // the file system is asked; ObjectFs may answer either.
            return if noreplace { vec![Err(Errno::EEXIST), Ok(())] } else { ok() };
        }
        let src_dir = matches!(src, MNode::Dir { .. });
        if src_dir && under(to, from) {
            return err(Errno::EINVAL);
        }
        if let Some(dst) = self.get(to) {
            if noreplace {
                return err(Errno::EEXIST);
            }
            match (src_dir, dst) {
                (false, MNode::Dir { .. }) => return err(Errno::EISDIR),
                (true, MNode::File { .. }) => return err(Errno::ENOTDIR),
                (true, MNode::Dir { .. }) if self.has_children(to) => return err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        ok()
    }

    /// Apply a rename the model allowed (from != to).
    fn rename(&mut self, from: &str, to: &str) {
        self.tree.remove(to);
        let moved: Vec<(String, MNode)> = self
            .tree
            .iter()
            .filter(|(p, _)| p.as_str() == from || under(p, from))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect();
        for (p, n) in moved {
            self.tree.remove(&p);
            let newp = format!("{to}{}", &p[from.len()..]);
            let n = match n {
                // A directory rename recreates every directory with a marker.
                MNode::Dir { perm, .. } => MNode::Dir { perm, marker: true },
                f => f,
            };
            self.tree.insert(newp, n);
        }
        self.prune(parent_of(from).to_string());
    }
}

// ---------------------------------------------------------------------------
// What the file system shows
// ---------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq)]
enum Seen {
    File { perm: u32, data: Vec<u8> },
    Dir { perm: u32 },
}

impl fmt::Debug for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::File { perm, data } => write!(f, "file 0o{perm:o} {:?}", D(data.clone())),
            Seen::Dir { perm } => write!(f, "dir 0o{perm:o}"),
        }
    }
}

fn expected_tree(m: &Model) -> BTreeMap<String, Seen> {
    m.tree
        .iter()
        .map(|(p, n)| {
            let s = match n {
                MNode::File { data, perm } => Seen::File { perm: *perm, data: data.clone() },
                MNode::Dir { perm, .. } => Seen::Dir { perm: *perm },
            };
            (p.clone(), s)
        })
        .collect()
}

fn diff(what: &str, want: &BTreeMap<String, Seen>, got: &BTreeMap<String, Seen>) -> Option<String> {
    if want == got {
        return None;
    }
    let mut s = format!("{what} differs from the model:\n");
    let keys: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    for k in keys {
        match (want.get(k), got.get(k)) {
            (Some(w), Some(g)) if w == g => {}
            (w, g) => s.push_str(&format!("  {k}: model {w:?}, got {g:?}\n")),
        }
    }
    Some(s)
}

macro_rules! check {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A handle kept open across steps.
#[derive(Debug)]
struct Handle {
    nodeid: u64,
    fh: u64,
    /// Where the model keeps its bytes; `None` once unlinked or replaced by a
    /// rename (the bytes then live in `Harness::orphans`, shared by every
    /// handle on the same node, as an unlinked inode's are).
    path: Option<String>,
}

struct Harness {
    server: Arc<Server<ObjectFs>>,
    backend: Backend,
    model: Model,
    handles: Vec<Handle>,
    ctx: Ctx,
    plus: bool,
    budget: u32,
    /// Compare the back-end with the model after every step without open
    /// handles (else only at the end).
    backend_each_step: bool,
    /// Attributes from READDIRPLUS are complete (memory; not S3).
    listing_has_posix: bool,
    log: Vec<String>,
    /// Open nodes whose shared open state holds staged bytes (created,
    /// written or truncated while open); only used to aim a KNOWN BUG skip.
    staged: BTreeSet<u64>,
    /// Bytes of open files that lost their name, by node id.
    orphans: BTreeMap<u64, Vec<u8>>,
}

fn errno_name(e: Errno) -> String {
    let n = match e.0 {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EPERM => "EPERM",
        libc::EOPNOTSUPP => "ENOTSUP",
        libc::EXDEV => "EXDEV",
        _ => return format!("errno {}", e.0),
    };
    n.to_string()
}

fn show(r: &Result<(), Errno>) -> String {
    match r {
        Ok(()) => "Ok".into(),
        Err(e) => errno_name(*e),
    }
}

fn show_expect(e: &Expect) -> String {
    e.iter().map(show).collect::<Vec<_>>().join(" or ")
}

impl Harness {
    fn fs(&self) -> &ObjectFs {
        self.server.filesystem()
    }

    /// LOOKUP every component of `path` from the root; the references taken
    /// are pushed on `refs` (the caller forgets them).
    async fn resolve(&self, path: &str, refs: &mut Vec<u64>) -> Result<u64, Errno> {
        self.resolve_kind(path, refs).await.map(|(id, _)| id)
    }

    /// Node id and S_IFMT bits (from LOOKUP) of `path`.
    async fn resolve_kind(&self, path: &str, refs: &mut Vec<u64>) -> Result<(u64, u32), Errno> {
        let mut id = ROOT;
        let mut fmt = libc::S_IFDIR;
        if path.is_empty() {
            return Ok((id, fmt));
        }
        for comp in path.split('/') {
            let e = self.fs().lookup(&self.ctx, id, comp.as_bytes()).await?;
            refs.push(e.nodeid);
            id = e.nodeid;
            fmt = e.attr.mode & libc::S_IFMT;
        }
        Ok((id, fmt))
    }

    /// Like [`resolve`](Self::resolve) for a directory that will hold a
    /// name: ENOTDIR when it is not a directory (the kernel's path walk
    /// fails there before the file system is asked anything else).
    async fn resolve_dir(&self, path: &str, refs: &mut Vec<u64>) -> Result<u64, Errno> {
        let (id, fmt) = self.resolve_kind(path, refs).await?;
        if fmt != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        Ok(id)
    }

    fn forget_all(&self, refs: &mut Vec<u64>) {
        for id in refs.drain(..) {
            self.fs().forget(id, 1);
        }
    }

    fn handle_on(&self, path: &str) -> bool {
        self.handles.iter().any(|h| h.path.as_deref() == Some(path))
    }

    /// Handles on `path` or below it lose their name (unlink / replaced).
    fn orphan(&mut self, path: &str) {
        for h in self.handles.iter_mut() {
            if h.path.as_deref() == Some(path) {
                if let Some(MNode::File { data, .. }) = self.model.tree.get(path) {
                    self.orphans.insert(h.nodeid, data.clone());
                }
                h.path = None;
            }
        }
    }

    fn handle_data(&self, i: usize) -> Vec<u8> {
        let h = &self.handles[i];
        match &h.path {
            Some(p) => match self.model.get(p) {
                Some(MNode::File { data, .. }) => data.clone(),
                other => panic!("model: handle path {p} is {other:?}"),
            },
            None => self.orphans.get(&h.nodeid).cloned().expect("orphan bytes"),
        }
    }

    fn handle_data_mut(&mut self, i: usize) -> &mut Vec<u8> {
        match self.handles[i].path.clone() {
            Some(p) => self.model.file_mut(&p),
            None => self.orphans.get_mut(&self.handles[i].nodeid).expect("orphan bytes"),
        }
    }

    /// The back-end object at `path` must hold the model's bytes and mode
    /// (checked right after a durability point).
    async fn check_durable(&self, path: &str) -> Result<(), String> {
        let Some(MNode::File { data, perm }) = self.model.get(path) else {
            return Ok(());
        };
        let meta = self.backend.lookup(path).await.map_err(|e| format!("durability: back-end lookup {path}: {e}"))?;
        check!(meta.kind == EntryKind::File, "durability: back-end {path} is {:?}", meta.kind);
        let got =
            self.backend.read(path, 0, 1 << 20).await.map_err(|e| format!("durability: back-end read {path}: {e}"))?;
        check!(
            got.as_ref() == data.as_slice(),
            "durability: back-end {path} holds {:?}, model {:?}",
            D(got.to_vec()),
            D(data.clone())
        );
        let bperm = meta.posix.mode.map(|m| m & 0o7777).unwrap_or(DEFAULT_FILE_PERM);
        check!(bperm == *perm, "durability: back-end {path} mode 0o{bperm:o}, model 0o{perm:o}");
        Ok(())
    }

    fn close_idx(&self, i: usize) -> usize {
        i % self.handles.len()
    }

    /// FLUSH + RELEASE (as close(2) does) and forget the handle's reference.
    async fn close(&mut self, i: usize) -> Result<(), String> {
        let h = self.handles.remove(i);
        if !self.handles.iter().any(|o| o.nodeid == h.nodeid) {
            self.staged.remove(&h.nodeid);
            self.orphans.remove(&h.nodeid);
        }
        let fr = self.fs().flush(&self.ctx, h.nodeid, h.fh).await;
        let rr = self.fs().release(&self.ctx, h.nodeid, h.fh, 0).await;
        self.fs().forget(h.nodeid, 1);
        check!(fr.is_ok(), "FLUSH of handle on {:?}: {:?}", h.path, fr);
        check!(rr.is_ok(), "RELEASE of handle on {:?}: {:?}", h.path, rr);
        if let Some(p) = &h.path {
            self.check_durable(p).await?;
        }
        Ok(())
    }

    /// Keep a handle, or close it when too many are open.
    async fn keep_or_close(&mut self, h: Handle, keep: bool) -> Result<(), String> {
        self.handles.push(h);
        if !keep || self.handles.len() > MAX_HANDLES {
            let i = self.handles.len() - 1;
            self.close(i).await?;
        }
        Ok(())
    }

    fn compare(&self, what: &str, expect: &Expect, got: &Result<(), Errno>) -> Result<(), String> {
        let op = what.split([' ', '(']).next().unwrap_or(what);
        tally(&format!("{op} -> {}", show(got)));
        check!(expect.contains(got), "{what}: expected {}, got {}", show_expect(expect), show(got));
        Ok(())
    }

    /// Run one step; Err describes the first divergence.
    async fn step(&mut self, op: &Op) -> Result<(), String> {
        let ctx = self.ctx;
        let name = format!("{op:?}");
        let name = name.split([' ', '{']).next().unwrap_or("").to_string();
        let nh = self.handles.len();
        let before = self.model.tree.clone();
        tally(&format!("step {name}{}", if nh > 0 { " (handles open)" } else { "" }));
        let mut refs = Vec::new();
        let r = self.step_inner(op, &ctx, &mut refs).await;
        self.forget_all(&mut refs);
        if name.starts_with("Ext") {
            tally(&format!("{name} {}", if before == self.model.tree { "skipped" } else { "applied" }));
        }
        r
    }

    async fn step_inner(&mut self, op: &Op, ctx: &Ctx, refs: &mut Vec<u64>) -> Result<(), String> {
        match op {
            Op::Create { path, mode, excl, trunc, write, keep } => {
                let expect = match self.model.parent_ok(path) {
                    Err(e) => err(e),
                    Ok(()) => match self.model.get(path) {
                        Some(MNode::Dir { .. }) if *excl => vec![Err(Errno::EEXIST), Err(Errno::EISDIR)],
                        Some(MNode::Dir { .. }) => err(Errno::EISDIR),
                        Some(MNode::File { .. }) if *excl => err(Errno::EEXIST),
                        _ => ok(),
                    },
                };
                let mut flags = libc::O_CREAT | libc::O_RDWR;
                if *excl {
                    flags |= libc::O_EXCL;
                }
                if *trunc {
                    flags |= libc::O_TRUNC;
                }
                let r = match self.resolve_dir(parent_of(path), refs).await {
                    Err(e) => Err(e),
                    Ok(pid) => {
                        let name = path.rsplit('/').next().unwrap();
                        self.fs().create(ctx, pid, name.as_bytes(), libc::S_IFREG | mode.0, flags as u32, 0).await
                    }
                };
                let got = r.as_ref().map(|_| ()).map_err(|e| *e);
                self.compare("CREATE", &expect, &got)?;
                let Ok((entry, fh, _)) = r else { return Ok(()) };
                if *trunc || !self.model.is_file(path) {
                    self.staged.insert(entry.nodeid);
                }
                match self.model.get(path) {
                    Some(MNode::File { .. }) => {
                        if *trunc {
                            self.model.file_mut(path).clear();
                        }
                    }
                    _ => {
                        self.model.tree.insert(path.clone(), MNode::File { data: Vec::new(), perm: mode.0 & 0o7777 });
                    }
                }
                let Some(MNode::File { data, perm }) = self.model.get(path) else { unreachable!() };
                check!(
                    entry.attr.mode == libc::S_IFREG | perm && entry.attr.size == data.len() as u64,
                    "CREATE {path}: entry mode 0o{:o} size {}, model 0o{:o} size {}",
                    entry.attr.mode,
                    entry.attr.size,
                    libc::S_IFREG | perm,
                    data.len()
                );
                let h = Handle { nodeid: entry.nodeid, fh, path: Some(path.clone()) };
                self.handles.push(h);
                let i = self.handles.len() - 1;
                if let Some((off, d)) = write {
                    self.write_handle(i, *off, &d.0).await?;
                }
                let h = self.handles.pop().unwrap();
                self.keep_or_close(h, *keep).await
            }
            Op::Write { path, off, data, keep } => {
                let Some(h) = self.open_path(path, ctx, refs).await? else { return Ok(()) };
                self.handles.push(h);
                let i = self.handles.len() - 1;
                self.write_handle(i, *off, &data.0).await?;
                let h = self.handles.pop().unwrap();
                self.keep_or_close(h, *keep).await
            }
            Op::Open { path } => {
                let Some(h) = self.open_path(path, ctx, refs).await? else { return Ok(()) };
                self.keep_or_close(h, true).await
            }
            Op::HWrite { h, off, data } => {
                if self.handles.is_empty() {
                    return Ok(());
                }
                let i = self.close_idx(*h);
                self.write_handle(i, *off, &data.0).await
            }
            Op::HTrunc { h, size } => {
                if self.handles.is_empty() {
                    return Ok(());
                }
                let i = self.close_idx(*h);
                let (nodeid, fh) = (self.handles[i].nodeid, self.handles[i].fh);
                self.staged.insert(nodeid);
                let sa = SetAttr { size: Some(*size), fh: Some(fh), ..Default::default() };
                let r = self.fs().setattr(ctx, nodeid, sa).await;
                let what = format!("ftruncate (SETATTR size {size} fh) of handle on {:?}", self.handles[i].path);
                match r {
                    Ok((attr, _)) => {
                        check!(attr.size == *size, "{what}: returned size {}", attr.size);
                    }
                    Err(e) => {
                        // Fixed bug (regression guard; the skip is off): SETATTR on the node of an open
                        // file that was unlinked or renamed over answers
                        // ENOENT (ObjectFs::setattr resolves the node with
                        // `node()`, which refuses unlinked nodes), where
                        // POSIX ftruncate on an open fd succeeds.
                        if e == Errno::ENOENT && self.handles[i].path.is_none() && known_bug_orphan_setattr() {
                            return Ok(());
                        }
                        return Err(format!("{what}: {}", errno_name(e)));
                    }
                }
                self.handle_data_mut(i).resize(*size as usize, 0);
                Ok(())
            }
            Op::HRead { h } => {
                if self.handles.is_empty() {
                    return Ok(());
                }
                let i = self.close_idx(*h);
                let (nodeid, fh) = (self.handles[i].nodeid, self.handles[i].fh);
                let want = self.handle_data(i);
                let got = self.fs().read(ctx, nodeid, fh, 0, 1 << 16).await;
                let what = format!("READ through handle on {:?}", self.handles[i].path);
                match got {
                    Ok(g) => {
                        check!(g == want, "{what}: got {:?}, model {:?}", D(g), D(want));
                    }
                    Err(e) => return Err(format!("{what}: {}", errno_name(e))),
                }
                // fstat agrees.
                let ga = self.fs().getattr(ctx, nodeid, Some(fh)).await;
                match ga {
                    Ok((a, _)) => {
                        check!(a.size == want.len() as u64, "{what}: fstat size {}, model {}", a.size, want.len())
                    }
                    Err(e) => {
                        return Err(format!("GETATTR(fh) of handle on {:?}: {}", self.handles[i].path, errno_name(e)))
                    }
                }
                Ok(())
            }
            Op::HFsync { h } => {
                if self.handles.is_empty() {
                    return Ok(());
                }
                let i = self.close_idx(*h);
                let (nodeid, fh) = (self.handles[i].nodeid, self.handles[i].fh);
                let r = self.fs().fsync(ctx, nodeid, fh, false).await;
                check!(r.is_ok(), "FSYNC of handle on {:?}: {:?}", self.handles[i].path, r);
                if let Some(p) = self.handles[i].path.clone() {
                    self.check_durable(&p).await?;
                }
                Ok(())
            }
            Op::HClose { h } => {
                if self.handles.is_empty() {
                    return Ok(());
                }
                let i = self.close_idx(*h);
                self.close(i).await
            }
            Op::Truncate { path, size } => {
                let expect = match self.model.resolve(path) {
                    Err(e) => err(e),
                    Ok(MNode::Dir { .. }) => err(Errno::EISDIR),
                    Ok(MNode::File { .. }) => ok(),
                };
                let r = match self.resolve(path, refs).await {
                    Err(e) => Err(e),
                    Ok(id) => {
                        if self.handles.iter().any(|h| h.nodeid == id) {
                            self.staged.insert(id);
                        }
                        let sa = SetAttr { size: Some(*size), ..Default::default() };
                        self.fs().setattr(ctx, id, sa).await.map(|(a, _)| a)
                    }
                };
                let got = r.as_ref().map(|_| ()).map_err(|e| *e);
                self.compare(&format!("truncate {path} {size}"), &expect, &got)?;
                if let Ok(a) = r {
                    check!(a.size == *size, "truncate {path} {size}: returned size {}", a.size);
                    self.model.file_mut(path).resize(*size as usize, 0);
                    // truncate(2) by path is a durability point here (no fh).
                    self.check_durable(path).await?;
                }
                Ok(())
            }
            Op::Rename { from, to, noreplace } => {
                if from != to
                    && !*noreplace
                    && self.model.is_file(to)
                    && self.handle_on(to)
                    && known_bug_rename_over_open()
                {
                    // Fixed bug (regression guard; the skip is off): renaming a file over a file that
                    // is open leaves the open file's state as it was (not
                    // staged, not marked unlinked): its handle then reads
                    // the bytes of the file renamed over it, FSTAT (GETATTR
                    // with fh) answers ENOENT, and a write through it loads
                    // the new file's bytes. Skipped unless strict.
                    tally("rename skipped (known bug: target open)");
                    return Ok(());
                }
                let expect = self.model.expect_rename(from, to, *noreplace);
                let r = async {
                    let fp = self.resolve_dir(parent_of(from), refs).await?;
                    let tp = self.resolve_dir(parent_of(to), refs).await?;
                    let fname = from.rsplit('/').next().unwrap();
                    let tname = to.rsplit('/').next().unwrap();
                    let flags = if *noreplace { RENAME_NOREPLACE } else { 0 };
                    self.fs().rename(ctx, fp, fname.as_bytes(), tp, tname.as_bytes(), flags).await
                }
                .await;
                let what = format!("rename{} {from} -> {to}", if *noreplace { "(NOREPLACE)" } else { "" });
                self.compare(&what, &expect, &r)?;
                if r.is_ok() && from != to {
                    if self.model.is_file(to) {
                        self.orphan(to);
                    }
                    for h in self.handles.iter_mut() {
                        if let Some(p) = h.path.clone() {
                            if p == *from || under(&p, from) {
                                h.path = Some(format!("{to}{}", &p[from.len()..]));
                            }
                        }
                    }
                    self.model.rename(from, to);
                }
                Ok(())
            }
            Op::Mkdir { path, mode } => {
                let expect = match self.model.parent_ok(path) {
                    Err(e) => err(e),
                    Ok(()) if self.model.get(path).is_some() => err(Errno::EEXIST),
                    Ok(()) => ok(),
                };
                let r = match self.resolve_dir(parent_of(path), refs).await {
                    Err(e) => Err(e),
                    Ok(pid) => {
                        let name = path.rsplit('/').next().unwrap();
                        self.fs().mkdir(ctx, pid, name.as_bytes(), libc::S_IFDIR | mode.0, 0).await
                    }
                };
                let got = r.as_ref().map(|_| ()).map_err(|e| *e);
                self.compare(&format!("mkdir {path}"), &expect, &got)?;
                if let Ok(entry) = r {
                    refs.push(entry.nodeid);
                    let perm = self.model.dir_perm(mode.0);
                    self.model.tree.insert(path.clone(), MNode::Dir { perm, marker: true });
                    // The entry MKDIR returns (cached by the kernel for
                    // entry_timeout) agrees with what GETATTR shows later.
                    if entry.attr.mode != libc::S_IFDIR | perm && !known_bug_s3_mkdir_mode(&self.model) {
                        return Err(format!(
                            "mkdir {path}: entry mode 0o{:o}, model (and later GETATTR) 0o{:o}",
                            entry.attr.mode,
                            libc::S_IFDIR | perm
                        ));
                    }
                }
                Ok(())
            }
            Op::Rmdir { path } => {
                let expect = match self.model.parent_ok(path) {
                    Err(e) => err(e),
                    Ok(()) => match self.model.get(path) {
                        None => err(Errno::ENOENT),
                        Some(MNode::File { .. }) => err(Errno::ENOTDIR),
                        Some(MNode::Dir { .. }) if self.model.has_children(path) => err(Errno::ENOTEMPTY),
                        Some(MNode::Dir { .. }) => ok(),
                    },
                };
                let r = match self.resolve_dir(parent_of(path), refs).await {
                    Err(e) => Err(e),
                    Ok(pid) => self.fs().rmdir(ctx, pid, path.rsplit('/').next().unwrap().as_bytes()).await,
                };
                self.compare(&format!("rmdir {path}"), &expect, &r)?;
                if r.is_ok() {
                    self.model.remove(path);
                }
                Ok(())
            }
            Op::Unlink { path } => {
                let expect = match self.model.parent_ok(path) {
                    Err(e) => err(e),
                    Ok(()) => match self.model.get(path) {
                        None => err(Errno::ENOENT),
                        Some(MNode::Dir { .. }) => err(Errno::EISDIR),
                        Some(MNode::File { .. }) => ok(),
                    },
                };
                let r = match self.resolve_dir(parent_of(path), refs).await {
                    Err(e) => Err(e),
                    Ok(pid) => self.fs().unlink(ctx, pid, path.rsplit('/').next().unwrap().as_bytes()).await,
                };
                self.compare(&format!("unlink {path}"), &expect, &r)?;
                if r.is_ok() {
                    self.orphan(path);
                    self.model.remove(path);
                }
                Ok(())
            }
            Op::Chmod { path, mode } => {
                let open_unstaged = self
                    .handles
                    .iter()
                    .any(|h| h.path.as_deref() == Some(path.as_str()) && !self.staged.contains(&h.nodeid));
                if open_unstaged && known_bug_chmod_open() {
                    // Fixed bug (regression guard; the skip is off): chmod of a file that is open but
                    // has no staged bytes yet is persisted with set_posix,
                    // but the open state keeps the mode read at OPEN; the
                    // next upload from that state (a write then close or
                    // fsync) writes the old mode back.
                    tally("chmod skipped (known bug: open, unstaged)");
                    return Ok(());
                }
                let expect = match self.model.resolve(path) {
                    Err(e) => err(e),
                    // S3: a chmod to the mode the directory shows anyway
                    // (the default 0755) is an accepted no-op; others ENOTSUP.
                    Ok(MNode::Dir { .. }) if !self.model.dir_meta && mode.0 & 0o7777 != 0o755 => err(Errno::ENOTSUP),
                    Ok(_) => ok(),
                };
                let r = match self.resolve(path, refs).await {
                    Err(e) => Err(e),
                    Ok(id) => {
                        let sa = SetAttr { mode: Some(mode.0), ..Default::default() };
                        self.fs().setattr(ctx, id, sa).await.map(|(a, _)| a)
                    }
                };
                let got = r.as_ref().map(|_| ()).map_err(|e| *e);
                self.compare(&format!("chmod {path} {mode:?}"), &expect, &got)?;
                if let Ok(a) = r {
                    let perm = mode.0 & 0o7777;
                    check!(a.mode & 0o7777 == perm, "chmod {path} {mode:?}: returned mode 0o{:o}", a.mode);
                    match self.model.tree.get_mut(path) {
                        Some(MNode::File { perm: p, .. }) => *p = perm,
                        // Memory: setting attributes of an implied directory
                        // gives it a marker.
                        Some(MNode::Dir { perm: p, marker }) => {
                            *p = perm;
                            // (S3's no-op chmod writes nothing.)
                            if self.model.dir_meta {
                                *marker = true;
                            }
                        }
                        None => unreachable!(),
                    }
                    if !self.handle_on(path) {
                        self.check_durable(path).await?;
                    }
                }
                Ok(())
            }
            Op::Readdir { path } => {
                let expect = match self.model.resolve(path) {
                    Err(e) => err(e),
                    Ok(MNode::File { .. }) => err(Errno::ENOTDIR),
                    Ok(MNode::Dir { .. }) => ok(),
                };
                let r = match self.resolve(path, refs).await {
                    Err(e) => Err(e),
                    Ok(id) => self.list(id, false).await,
                };
                let got = r.as_ref().map(|_| ()).map_err(|e| *e);
                self.compare(&format!("readdir {path}"), &expect, &got)?;
                if let Ok(list) = r {
                    let got: Vec<String> = list.iter().map(|(n, _, _)| n.clone()).collect();
                    let want = self.model.children(path);
                    check!(got == want, "readdir {path}: {got:?}, model {want:?}");
                }
                Ok(())
            }
            Op::ExtWrite { path, data } => {
                // Only where the result is well defined: not over a
                // directory, not below a file, not under an open handle.
                let mut cur = parent_of(path).to_string();
                while !cur.is_empty() {
                    if self.model.is_file(&cur) {
                        return Ok(());
                    }
                    cur = parent_of(&cur).to_string();
                }
                if self.model.is_dir(path) || self.handle_on(path) {
                    return Ok(());
                }
                self.backend
                    .write(path, Bytes::from(data.0.clone()), &PosixMeta::default())
                    .await
                    .map_err(|e| format!("external write {path}: {e}"))?;
                self.model.imply_ancestors(path);
                self.model.tree.insert(path.clone(), MNode::File { data: data.0.clone(), perm: DEFAULT_FILE_PERM });
                Ok(())
            }
            Op::ExtDelete { path } => {
                if !self.model.is_file(path) || self.handle_on(path) {
                    return Ok(());
                }
                self.backend.delete_file(path).await.map_err(|e| format!("external delete {path}: {e}"))?;
                self.model.remove(path);
                Ok(())
            }
            Op::ExtMkdir { path } => {
                let mut cur = parent_of(path).to_string();
                while !cur.is_empty() {
                    if self.model.is_file(&cur) {
                        return Ok(());
                    }
                    cur = parent_of(&cur).to_string();
                }
                if self.model.get(path).is_some() {
                    return Ok(());
                }
                self.backend.create_dir(path).await.map_err(|e| format!("external mkdir {path}: {e}"))?;
                self.model.imply_ancestors(path);
                self.model.tree.insert(path.clone(), MNode::Dir { perm: DEFAULT_DIR_PERM, marker: true });
                Ok(())
            }
        }
    }

    /// LOOKUP + OPEN(O_RDWR) of `path`, compared with the model; the
    /// lookup reference moves to the returned handle.
    async fn open_path(&mut self, path: &str, ctx: &Ctx, refs: &mut Vec<u64>) -> Result<Option<Handle>, String> {
        let expect = match self.model.resolve(path) {
            Err(e) => err(e),
            Ok(MNode::Dir { .. }) => err(Errno::EISDIR),
            Ok(MNode::File { .. }) => ok(),
        };
        let r = match self.resolve(path, refs).await {
            Err(e) => Err(e),
            Ok(id) => self.fs().open(ctx, id, libc::O_RDWR as u32).await.map(|(fh, _)| (id, fh)),
        };
        let got = r.as_ref().map(|_| ()).map_err(|e| *e);
        self.compare(&format!("open {path}"), &expect, &got)?;
        let Ok((nodeid, fh)) = r else { return Ok(None) };
        // The last lookup reference now belongs to the handle.
        refs.pop();
        Ok(Some(Handle { nodeid, fh, path: Some(path.to_string()) }))
    }

    async fn write_handle(&mut self, i: usize, off: u64, data: &[u8]) -> Result<(), String> {
        if data.is_empty() && known_bug_empty_write() {
            // Fixed bug (regression guard; the skip is off): a zero-length WRITE past EOF sets the
            // staged size to the offset without growing the memfd
            // (Staged::write), so the file then reports that size and every
            // READ / FLUSH of it fails with EIO. Skipped unless
            // OVFS_MODEL_STRICT=1.
            return Ok(());
        }
        let (nodeid, fh) = (self.handles[i].nodeid, self.handles[i].fh);
        self.staged.insert(nodeid);
        let r = self.fs().write(&self.ctx, nodeid, fh, off, data, libc::O_RDWR as u32).await;
        let what = format!("WRITE {} bytes at {off} through handle on {:?}", data.len(), self.handles[i].path);
        match r {
            Ok(n) => check!(n as usize == data.len(), "{what}: wrote {n}"),
            Err(e) => return Err(format!("{what}: {}", errno_name(e))),
        }
        if data.is_empty() {
            // POSIX: writing nothing changes nothing (not even the size).
            return Ok(());
        }
        let buf = self.handle_data_mut(i);
        let end = off as usize + data.len();
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[off as usize..end].copy_from_slice(data);
        Ok(())
    }

    /// OPENDIR + READDIR[PLUS] until the end + RELEASEDIR: (name, d_type,
    /// READDIRPLUS entry) without "." and "..", in listing order.
    async fn list(&self, id: u64, plus: bool) -> Result<Vec<(String, u32, Option<ovfs::fuse::Entry>)>, Errno> {
        let fs = self.fs();
        let (fh, _) = fs.opendir(&self.ctx, id, 0).await?;
        let mut out = Vec::new();
        let mut dots = 0;
        let mut off = 0;
        let r = loop {
            let v = match fs.readdir(&self.ctx, id, fh, off, self.budget, plus).await {
                Ok(v) => v,
                Err(e) => break Err(e),
            };
            let Some(last) = v.last() else { break Ok(()) };
            off = last.offset;
            for e in v {
                let name = String::from_utf8(e.name).expect("utf-8 name");
                if name == "." || name == ".." {
                    dots += 1;
                    continue;
                }
                out.push((name, e.typ, e.entry));
            }
        };
        let rr = fs.releasedir(&self.ctx, id, fh).await;
        if let Err(e) = r {
            for (_, _, en) in &out {
                if let Some(en) = en {
                    fs.forget(en.nodeid, 1);
                }
            }
            return Err(e);
        }
        rr?;
        assert_eq!(dots, 2, "a listing carries . and .. once each");
        Ok(out)
    }

    /// Walk the whole tree through the file system.
    async fn walk_fs(&self) -> Result<BTreeMap<String, Seen>, String> {
        let fs = self.fs();
        let ctx = &self.ctx;
        let mut out = BTreeMap::new();
        let mut refs = Vec::new();
        let mut stack = vec![(ROOT, String::new())];
        let r: Result<(), String> = async {
            while let Some((id, dir)) = stack.pop() {
                let list =
                    self.list(id, self.plus).await.map_err(|e| format!("walk: readdir {dir:?}: {}", errno_name(e)))?;
                let mut seen_names = BTreeSet::new();
                for (name, typ, plus_entry) in list {
                    let path = join(&dir, &name);
                    check!(seen_names.insert(name.clone()), "walk: {path} listed twice");
                    let e = fs.lookup(ctx, id, name.as_bytes()).await;
                    if let Some(pe) = &plus_entry {
                        refs.push(pe.nodeid);
                    }
                    let e = e.map_err(|e| format!("walk: {path} listed but LOOKUP answers {}", errno_name(e)))?;
                    refs.push(e.nodeid);
                    let a = e.attr;
                    check!(a.ino == e.nodeid, "walk: {path}: ino {} != nodeid {}", a.ino, e.nodeid);
                    let fmt = a.mode & libc::S_IFMT;
                    let want_typ = if fmt == libc::S_IFDIR { libc::DT_DIR } else { libc::DT_REG } as u32;
                    // Where a listing carries no POSIX metadata (S3) a file
                    // may be a symlink or FIFO for all the listing knows:
                    // DT_UNKNOWN (and no READDIRPLUS entry) is right there.
                    let untyped_ok = !self.listing_has_posix && fmt != libc::S_IFDIR;
                    check!(
                        typ == want_typ || (untyped_ok && typ == libc::DT_UNKNOWN as u32),
                        "walk: {path}: d_type {typ}, LOOKUP mode 0o{:o}",
                        a.mode
                    );
                    check!(
                        !self.plus || plus_entry.is_some() || typ == libc::DT_UNKNOWN as u32,
                        "walk: {path}: READDIRPLUS gave no entry for a typed name"
                    );
                    let second_opinion = plus_entry.is_some();
                    if let Some(pe) = plus_entry {
                        check!(
                            pe.nodeid == e.nodeid,
                            "walk: {path}: READDIRPLUS nodeid {} != LOOKUP {}",
                            pe.nodeid,
                            e.nodeid
                        );
                        check!(
                            pe.attr.mode & libc::S_IFMT == fmt && pe.attr.size == a.size,
                            "walk: {path}: READDIRPLUS mode 0o{:o} size {}, LOOKUP mode 0o{:o} size {}",
                            pe.attr.mode,
                            pe.attr.size,
                            a.mode,
                            a.size
                        );
                        if self.listing_has_posix {
                            check!(
                                pe.attr.mode == a.mode,
                                "walk: {path}: READDIRPLUS mode 0o{:o}, LOOKUP 0o{:o}",
                                pe.attr.mode,
                                a.mode
                            );
                        }
                    }
                    // A second opinion on LOOKUP's attributes: READDIRPLUS's
                    // (above) in plus walks, GETATTR's in the others (both
                    // in every walk would double the cost of the walks).
                    if !second_opinion {
                        let (ga, _) = fs
                            .getattr(ctx, e.nodeid, None)
                            .await
                            .map_err(|er| format!("walk: {path}: GETATTR {}", errno_name(er)))?;
                        check!(
                            ga.mode == a.mode && ga.size == a.size && ga.uid == 0 && ga.gid == 0,
                            "walk: {path}: GETATTR mode 0o{:o} size {} uid {} gid {}, LOOKUP mode 0o{:o} size {}",
                            ga.mode,
                            ga.size,
                            ga.uid,
                            ga.gid,
                            a.mode,
                            a.size
                        );
                    }
                    let perm = a.mode & 0o7777;
                    match fmt {
                        libc::S_IFDIR => {
                            out.insert(path.clone(), Seen::Dir { perm });
                            stack.push((e.nodeid, path));
                        }
                        libc::S_IFREG => {
                            let (fh, _) = fs
                                .open(ctx, e.nodeid, libc::O_RDONLY as u32)
                                .await
                                .map_err(|er| format!("walk: {path}: OPEN {}", errno_name(er)))?;
                            let data = fs.read(ctx, e.nodeid, fh, 0, 1 << 16).await;
                            let rel = fs.release(ctx, e.nodeid, fh, 0).await;
                            let data = data.map_err(|er| format!("walk: {path}: READ {}", errno_name(er)))?;
                            rel.map_err(|er| format!("walk: {path}: RELEASE {}", errno_name(er)))?;
                            check!(
                                data.len() as u64 == a.size,
                                "walk: {path}: read {} bytes, size {}",
                                data.len(),
                                a.size
                            );
                            out.insert(path, Seen::File { perm, data });
                        }
                        other => return Err(format!("walk: {path}: unexpected type 0o{other:o}")),
                    }
                }
            }
            Ok(())
        }
        .await;
        for id in refs {
            fs.forget(id, 1);
        }
        r.map(|_| out)
    }

    /// Walk the back-end directly (what survives the daemon).
    async fn walk_backend(&self) -> Result<BTreeMap<String, Seen>, String> {
        let mut out = BTreeMap::new();
        let mut stack = vec![String::new()];
        while let Some(dir) = stack.pop() {
            let list = self.backend.list(&dir).await.map_err(|e| format!("back-end list {dir:?}: {e}"))?;
            for e in list {
                let path = join(&dir, &e.name);
                let meta = self.backend.lookup(&path).await.map_err(|e| format!("back-end lookup {path}: {e}"))?;
                match meta.kind {
                    EntryKind::Dir => {
                        let perm = meta.posix.mode.map(|m| m & 0o7777).unwrap_or(DEFAULT_DIR_PERM);
                        out.insert(path.clone(), Seen::Dir { perm });
                        stack.push(path);
                    }
                    EntryKind::File => {
                        let perm = meta.posix.mode.map(|m| m & 0o7777).unwrap_or(DEFAULT_FILE_PERM);
                        let data = self
                            .backend
                            .read(&path, 0, 1 << 20)
                            .await
                            .map_err(|e| format!("back-end read {path}: {e}"))?;
                        out.insert(path, Seen::File { perm, data: data.to_vec() });
                    }
                }
            }
        }
        Ok(out)
    }

    async fn check_tree(&self, backend_too: bool) -> Result<(), String> {
        let want = expected_tree(&self.model);
        let got = self.walk_fs().await?;
        if let Some(d) = diff("tree through the file system", &want, &got) {
            return Err(d);
        }
        if backend_too {
            let got = self.walk_backend().await?;
            if let Some(d) = diff("back-end (all handles closed)", &want, &got) {
                return Err(d);
            }
        }
        Ok(())
    }

    /// The concrete path a generated path stands for, given the model now.
    fn pick(&self, p: &P) -> String {
        match p {
            P::Lit(s) => s.clone(),
            P::Pick(k) => {
                let paths: Vec<&String> = self.model.tree.keys().collect();
                if paths.is_empty() {
                    NAMES[k % NAMES.len()].to_string()
                } else {
                    paths[k % paths.len()].clone()
                }
            }
            P::In(k, n) => {
                let mut dirs = vec![String::new()];
                dirs.extend(
                    self.model
                        .tree
                        .iter()
                        .filter(|(p, n)| matches!(n, MNode::Dir { .. }) && !p.contains('/'))
                        .map(|(p, _)| p.clone()),
                );
                join(&dirs[k % dirs.len()], NAMES[*n])
            }
        }
    }

    /// The operations run so far, with concrete paths.
    fn replay(&self) -> String {
        let mut s = String::from("sequence run (concrete paths):\n");
        for (i, l) in self.log.iter().enumerate() {
            s.push_str(&format!("  {i}: {l}\n"));
        }
        s
    }

    async fn run(&mut self, ops: &[Op<P>]) -> Result<(), String> {
        self.check_tree(true).await.map_err(|e| format!("initial state: {e}"))?;
        for (n, gop) in ops.iter().enumerate() {
            let op = gop.map(|p| self.pick(p));
            self.log.push(format!("{op:?}"));
            let before = self.model.tree.clone();
            let r = match self.step(&op).await {
                Ok(()) => {
                    // The walk through the file system sees the back-end
                    // directly (no caches) except for open files; the direct
                    // back-end walk adds modes and durability, so it runs
                    // after steps that changed something.
                    let backend_too = self.backend_each_step && self.handles.is_empty() && before != self.model.tree;
                    self.check_tree(backend_too).await
                }
                Err(e) => Err(e),
            };
            r.map_err(|e| format!("{}failed at step {n} {op:?}:\n{e}", self.replay()))?;
        }
        while !self.handles.is_empty() {
            self.close(0).await.map_err(|e| format!("{}final close: {e}", self.replay()))?;
        }
        self.check_tree(true).await.map_err(|e| format!("{}after closing every handle: {e}", self.replay()))?;
        let counts = self.fs().counts();
        if counts != (1, 0, 0) {
            return Err(format!(
                "{}after the sequence: (nodes, file handles, dir handles) = {counts:?}, want (1, 0, 0)",
                self.replay()
            ));
        }
        Ok(())
    }
}

/// Outcome counts per operation, printed after a run (coverage evidence).
static STATS: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn tally(key: &str) {
    *STATS.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_string()).or_default() += 1;
}

thread_local! {
    /// Strict on this thread (the `known_bug_*` reproductions).
    static STRICT_HERE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `OVFS_MODEL_STRICT=1` (or a comma-separated list of bug names:
/// empty_write, chmod_open, orphan_setattr, rename_over_open, s3_mkdir_mode)
/// turns the
/// KNOWN BUG skips into failures.
fn strict(bug: &str) -> bool {
    if STRICT_HERE.with(|c| c.get()) {
        return true;
    }
    std::env::var("OVFS_MODEL_STRICT").map(|v| v == "1" || v.split(',').any(|b| b.trim() == bug)).unwrap_or(false)
}

/// Fixed bug (regression guard; the skip is off): chmod of an open file without staged bytes is
/// undone by the next upload from the open state.
fn known_bug_chmod_open() -> bool {
    // Fixed; the skip stays available for bisecting (OVFS_MODEL_STRICT is now the default).
    false
}

/// Fixed bug (regression guard; the skip is off): rename over an open file: the open file then shows
/// the new file's bytes and its FSTAT answers ENOENT.
fn known_bug_rename_over_open() -> bool {
    // Fixed; the skip stays available for bisecting (OVFS_MODEL_STRICT is now the default).
    false
}

/// Fixed bug (regression guard; the skip is off): a zero-length WRITE past EOF corrupts the staged
/// file (size grows, memfd does not: READ/FLUSH then fail with EIO).
fn known_bug_empty_write() -> bool {
    // Fixed; the skip stays available for bisecting (OVFS_MODEL_STRICT is now the default).
    false
}

/// Fixed bug (regression guard; the skip is off): SETATTR(size, fh) on an open file that was unlinked
/// or renamed over answers ENOENT.
fn known_bug_orphan_setattr() -> bool {
    // Fixed; the skip stays available for bisecting (OVFS_MODEL_STRICT is now the default).
    false
}

/// DOCUMENTED (docs/SEMANTICS.md): on S3, MKDIR's reply carries the requested
/// mode while the marker stores none, so GETATTR then shows the default 0755
/// (kept so that `mkdir -m MODE` does not fail on its follow-up chmod).
fn known_bug_s3_mkdir_mode(m: &Model) -> bool {
    !m.dir_meta && !strict("s3_mkdir_mode")
}

// ---------------------------------------------------------------------------
// Runners
// ---------------------------------------------------------------------------

fn env_usize(key: &str, default: usize) -> usize {
    match std::env::var(key) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{key}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

fn quiet_backend_settings(cfg: &mut Config) {
    cfg.backend_settings.retry_min_delay = Duration::from_millis(10);
    cfg.backend_settings.retry_max_delay = Duration::from_millis(200);
}

/// One back-end set-up and what the model must know about it.
struct Flavor {
    cfg: Config,
    /// Directories keep their mode (memory) or not (S3 markers).
    dir_meta: bool,
    /// Compare the back-end itself after every changing step.
    backend_each_step: bool,
    /// The server keeps a parent directory of a key after the key is
    /// deleted (SeaweedFS's filer does: `x/` becomes an object), so implied
    /// directories behave like ones with a marker.
    implied_dirs_persist: bool,
}

async fn run_case(f: &Flavor, case: &Case) -> Result<(), String> {
    let (cfg, dir_meta, backend_each_step) = (&f.cfg, f.dir_meta, f.backend_each_step);
    let (server, backend) = build_server(cfg).map_err(|e| format!("build_server: {e}"))?;
    let listing_has_posix = backend.caps().listing_has_posix;
    let mut h = Harness {
        server,
        backend,
        model: Model::new(dir_meta, f.implied_dirs_persist),
        handles: Vec::new(),
        ctx: Ctx { uid: 0, gid: 0, ..Default::default() },
        plus: case.plus,
        budget: case.budget,
        backend_each_step,
        listing_has_posix,
        log: Vec::new(),
        staged: BTreeSet::new(),
        orphans: BTreeMap::new(),
    };
    h.run(&case.ops).await
}

/// proptest cannot shrink a sequence below the generated minimum length:
/// drop single operations while the sequence still fails (any failure).
fn minimize(
    rt: &tokio::runtime::Runtime,
    make: &dyn Fn() -> Flavor,
    mut case: Case,
    mut reason: String,
) -> (Case, String) {
    let mut i = 0;
    while i < case.ops.len() {
        let mut c = case.clone();
        c.ops.remove(i);
        match rt.block_on(run_case(&make(), &c)) {
            Err(r) => {
                case = c;
                reason = r;
            }
            Ok(()) => i += 1,
        }
    }
    (case, reason)
}

/// Run `cases` sequences on `threads` threads, each with its own proptest
/// runner (shrinking included); panics with the minimal failing sequence.
fn run_model(
    name: &str,
    cases: usize,
    threads: usize,
    len: std::ops::RangeInclusive<usize>,
    max_shrink: Duration,
    make: impl Fn() -> Flavor + Send + Sync + 'static,
) {
    let start = Instant::now();
    let make = Arc::new(make);
    let threads = threads.max(1).min(cases.max(1));
    let seed_base: u64 = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7));
    eprintln!("{name}: {cases} sequences on {threads} threads, seed {seed_base} (PROPTEST_RNG_SEED to repeat)");
    let mut joins = Vec::new();
    for t in 0..threads {
        let n = cases / threads + usize::from(t < cases % threads);
        let make = make.clone();
        let len = len.clone();
        joins.push(std::thread::spawn(move || -> Result<(), String> {
            let rt = runtime();
            let config = PtConfig {
                cases: n as u32,
                failure_persistence: None,
                max_shrink_time: max_shrink.as_millis() as u32,
                max_shrink_iters: 100_000,
                ..PtConfig::default()
            };
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&seed_base.wrapping_add(t as u64 * 0x9e37_79b9).to_le_bytes());
            let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
            let mut runner = TestRunner::new_with_rng(config, rng);
            let r = runner.run(&case_s(len), |case| rt.block_on(run_case(&make(), &case)).map_err(TestCaseError::fail));
            match r {
                Ok(()) => Ok(()),
                Err(TestError::Fail(reason, case)) => {
                    let (case, reason) = minimize(&rt, &*make, case, reason.to_string());
                    Err(format!(
                        "minimal failing case (walks use plus={}, budget={}):\n{reason}",
                        case.plus, case.budget
                    ))
                }
                Err(TestError::Abort(reason)) => Err(format!("aborted: {reason}")),
            }
        }));
    }
    let mut failures = Vec::new();
    for j in joins {
        match j.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("a runner thread panicked".into()),
        }
    }
    eprintln!("{name}: {cases} sequences in {:.1} s", start.elapsed().as_secs_f64());
    if std::env::var("OVFS_MODEL_STATS").is_ok() {
        for (k, v) in STATS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            eprintln!("  {k}: {v}");
        }
    }
    if !failures.is_empty() {
        panic!("{name}: {} runner(s) failed\n\n{}", failures.len(), failures.join("\n\n"));
    }
}

/// At least 10,000 sequences (default) against fresh memory back-ends, the
/// back-end compared with the model after every step without open handles.
#[test]
fn memory_model() {
    let cases = env_usize("OVFS_MODEL_CASES", 10_000);
    let threads = env_usize("OVFS_MODEL_THREADS", 2);
    run_model("memory_model", cases, threads, 4..=12, Duration::from_secs(60), || {
        let mut cfg = Config::default();
        quiet_backend_settings(&mut cfg);
        Flavor { cfg, dir_meta: true, backend_each_step: true, implied_dirs_persist: false }
    });
}

const S3_HOWTO: &str = "s3_model needs an S3 server: start SeaweedFS with\n\
     \n    tests/tools/s3-local.sh start      # 127.0.0.1:8333, bucket `test`, keys admin / adminsecret\n\
     \nand run with\n\
     \n    OVFS_TEST_S3_ENDPOINT=http://127.0.0.1:8333 OVFS_TEST_S3_BUCKET=test \\\n\
     \x20       OVFS_TEST_S3_ACCESS_KEY_ID=admin OVFS_TEST_S3_SECRET_ACCESS_KEY=adminsecret \\\n\
     \x20       cargo test --test model s3_model\n\
     \n(stop it with `tests/tools/s3-local.sh stop`), or set OVFS_SKIP_S3=1 to skip this test.";

/// At least 200 sequences (default) against a real S3 server, each under its
/// own random root prefix.
#[test]
fn s3_model() {
    let Ok(endpoint) = std::env::var("OVFS_TEST_S3_ENDPOINT") else {
        if std::env::var("OVFS_SKIP_S3").map(|v| v == "1").unwrap_or(false) {
            eprintln!("s3_model: skipped (OVFS_SKIP_S3=1)");
            return;
        }
        panic!("OVFS_TEST_S3_ENDPOINT is not set.\n{S3_HOWTO}");
    };
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let bucket = var("OVFS_TEST_S3_BUCKET", "test");
    let ak = var("OVFS_TEST_S3_ACCESS_KEY_ID", "");
    let sk = var("OVFS_TEST_S3_SECRET_ACCESS_KEY", "");
    let cases = env_usize("OVFS_MODEL_S3_CASES", 200);
    let threads = env_usize("OVFS_MODEL_S3_THREADS", 4);
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let each = std::env::var("OVFS_MODEL_S3_BACKEND_EACH_STEP").map(|v| v == "1").unwrap_or(false);
    let ep = endpoint.clone();
    let config = move |root: &str| {
        let mut cfg = Config::default();
        quiet_backend_settings(&mut cfg);
        cfg.storage_settings = StorageSettings {
            service: "s3".into(),
            options: [
                ("bucket", bucket.as_str()),
                ("region", "us-east-1"),
                ("endpoint", ep.as_str()),
                ("access_key_id", ak.as_str()),
                ("secret_access_key", sk.as_str()),
                ("root", root),
                ("disable_config_load", "true"),
                ("disable_ec2_metadata", "true"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        cfg
    };
    // Does this server keep `x/` once its last key `x/y` is deleted?
    // (SeaweedFS does; AWS S3 does not.) The model follows the server.
    let implied_dirs_persist = {
        let cfg = config(&format!("/ovfs-model-{run_id}-probe/"));
        let b = Backend::build(&cfg.storage_settings, &cfg.backend_settings).expect("s3 back-end");
        runtime().block_on(async {
            b.check().await.unwrap_or_else(|e| panic!("S3 server at {endpoint} not usable: {e}\n{S3_HOWTO}"));
            b.write("x/y", Bytes::from_static(b"1"), &PosixMeta::default()).await.expect("probe write");
            b.delete_file("x/y").await.expect("probe delete");
            let kept = matches!(b.lookup("x").await, Ok(m) if m.kind == EntryKind::Dir);
            if kept {
                let _ = b.remove_dir("x").await;
            }
            kept
        })
    };
    eprintln!("s3_model: implied directories outlive their last key on this server: {implied_dirs_persist}");
    run_model("s3_model", cases, threads, 5..=12, Duration::from_secs(300), move || {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let cfg = config(&format!("/ovfs-model-{run_id}-{n}/"));
        Flavor { cfg, dir_meta: false, backend_each_step: each, implied_dirs_persist }
    });
}

// ---------------------------------------------------------------------------
// Regression tests: the minimal sequences with which the model tests found
// (now fixed) bugs, run strictly.
// ---------------------------------------------------------------------------

fn lit(s: &str) -> P {
    P::Lit(s.to_string())
}

fn create(path: &str, data: &[u8], keep: bool) -> Op<P> {
    Op::Create { path: lit(path), mode: M(0o600), excl: false, trunc: false, write: Some((0, D(data.to_vec()))), keep }
}

/// Run `ops` strictly (every KNOWN BUG skip off) against memory.
fn reproduce(ops: Vec<Op<P>>) {
    STRICT_HERE.with(|c| c.set(true));
    let mut cfg = Config::default();
    quiet_backend_settings(&mut cfg);
    let case = Case { ops, plus: false, budget: 4096 };
    let f = Flavor { cfg, dir_meta: true, backend_each_step: true, implied_dirs_persist: false };
    if let Err(e) = runtime().block_on(run_case(&f, &case)) {
        panic!("{e}");
    }
}

/// A zero-length WRITE past EOF: the size becomes the offset but the memfd
/// does not grow; READ and FLUSH then fail with EIO.
#[test]
fn regression_empty_write_past_eof() {
    reproduce(vec![create("a", b"", false), Op::Write { path: lit("a"), off: 1, data: D(vec![]), keep: false }]);
}

/// chmod of an open file that has no staged bytes is undone by the next
/// upload from its open state (here: the truncate's).
#[test]
fn regression_chmod_while_open() {
    reproduce(vec![
        create("a", b"xy", false),
        Op::Open { path: lit("a") },
        Op::Chmod { path: lit("a"), mode: M(0o640) },
        Op::Truncate { path: lit("a"), size: 1 },
    ]);
}

/// ftruncate (SETATTR size + fh) on an open file that was unlinked: ENOENT.
#[test]
fn regression_ftruncate_unlinked_open_file() {
    reproduce(vec![create("a", b"xy", true), Op::Unlink { path: lit("a") }, Op::HTrunc { h: 0, size: 1 }]);
}

/// rename b -> a while a is open: the handle on the old a reads b's bytes
/// and its FSTAT answers ENOENT.
#[test]
fn regression_rename_over_open_file() {
    reproduce(vec![
        create("a", b"old", false),
        create("b", b"new!", false),
        Op::Open { path: lit("a") },
        Op::Rename { from: lit("b"), to: lit("a"), noreplace: false },
        Op::HRead { h: 0 },
    ]);
}
