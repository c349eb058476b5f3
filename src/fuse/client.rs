//! The kernel's side of the protocol, for tests, fuzzing and benchmarks:
//! encode requests the way the Linux FUSE driver does and decode replies.
//! Nothing in the daemon's request path uses it.

use super::abi::{self, Opcode, Pod};

/// Encode one request: header + body parts. `len` is computed.
pub fn request(op: Opcode, unique: u64, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let h = abi::fuse_in_header {
        len: (std::mem::size_of::<abi::fuse_in_header>() + body) as u32,
        opcode: op as u32,
        unique,
        nodeid,
        uid: 0,
        gid: 0,
        pid: 1,
        total_extlen: 0,
        padding: 0,
    };
    let mut v = h.as_bytes().to_vec();
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

/// A NUL-terminated name.
pub fn cname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// INIT as a 7.41 kernel sends it, offering `flags` (bits 32.. go to flags2).
pub fn init(unique: u64, flags: u64) -> Vec<u8> {
    let i = abi::fuse_init_in {
        major: 7,
        minor: 41,
        max_readahead: 128 << 10,
        flags: (flags as u32) | abi::FUSE_INIT_EXT as u32,
        flags2: (flags >> 32) as u32,
        ..Default::default()
    };
    request(Opcode::Init, unique, 0, &[i.as_bytes()])
}

pub fn lookup(unique: u64, parent: u64, name: &str) -> Vec<u8> {
    request(Opcode::Lookup, unique, parent, &[&cname(name)])
}

pub fn getattr(unique: u64, nodeid: u64) -> Vec<u8> {
    request(Opcode::Getattr, unique, nodeid, &[abi::fuse_getattr_in::default().as_bytes()])
}

pub fn create(unique: u64, parent: u64, name: &str, mode: u32, flags: u32) -> Vec<u8> {
    let c = abi::fuse_create_in { flags, mode, umask: 0, open_flags: 0 };
    request(Opcode::Create, unique, parent, &[c.as_bytes(), &cname(name)])
}

pub fn mkdir(unique: u64, parent: u64, name: &str, mode: u32) -> Vec<u8> {
    let m = abi::fuse_mkdir_in { mode, umask: 0 };
    request(Opcode::Mkdir, unique, parent, &[m.as_bytes(), &cname(name)])
}

pub fn open(unique: u64, nodeid: u64, flags: u32) -> Vec<u8> {
    request(Opcode::Open, unique, nodeid, &[abi::fuse_open_in { flags, open_flags: 0 }.as_bytes()])
}

pub fn opendir(unique: u64, nodeid: u64) -> Vec<u8> {
    request(Opcode::Opendir, unique, nodeid, &[abi::fuse_open_in::default().as_bytes()])
}

pub fn read(unique: u64, nodeid: u64, fh: u64, offset: u64, size: u32) -> Vec<u8> {
    let r = abi::fuse_read_in { fh, offset, size, ..Default::default() };
    request(Opcode::Read, unique, nodeid, &[r.as_bytes()])
}

pub fn readdir(unique: u64, nodeid: u64, fh: u64, offset: u64, size: u32, plus: bool) -> Vec<u8> {
    let r = abi::fuse_read_in { fh, offset, size, ..Default::default() };
    let op = if plus { Opcode::Readdirplus } else { Opcode::Readdir };
    request(op, unique, nodeid, &[r.as_bytes()])
}

pub fn write(unique: u64, nodeid: u64, fh: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let w = abi::fuse_write_in { fh, offset, size: data.len() as u32, ..Default::default() };
    request(Opcode::Write, unique, nodeid, &[w.as_bytes(), data])
}

pub fn flush(unique: u64, nodeid: u64, fh: u64) -> Vec<u8> {
    request(Opcode::Flush, unique, nodeid, &[abi::fuse_flush_in { fh, ..Default::default() }.as_bytes()])
}

pub fn fsync(unique: u64, nodeid: u64, fh: u64) -> Vec<u8> {
    request(Opcode::Fsync, unique, nodeid, &[abi::fuse_fsync_in { fh, ..Default::default() }.as_bytes()])
}

pub fn release(unique: u64, nodeid: u64, fh: u64) -> Vec<u8> {
    request(Opcode::Release, unique, nodeid, &[abi::fuse_release_in { fh, ..Default::default() }.as_bytes()])
}

/// FUSE_SETUPMAPPING as fs/fuse/dax.c sends it (`fh` is always u64::MAX).
pub fn setupmapping(unique: u64, nodeid: u64, foffset: u64, len: u64, flags: u64, moffset: u64) -> Vec<u8> {
    let m = abi::fuse_setupmapping_in { fh: u64::MAX, foffset, len, flags, moffset };
    request(Opcode::SetupMapping, unique, nodeid, &[m.as_bytes()])
}

/// FUSE_REMOVEMAPPING of `(moffset, len)` ranges; `count` is what the header claims.
pub fn removemapping(unique: u64, count: u32, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut body = abi::fuse_removemapping_in { count }.as_bytes().to_vec();
    for &(moffset, len) in ranges {
        body.extend_from_slice(abi::fuse_removemapping_one { moffset, len }.as_bytes());
    }
    request(Opcode::RemoveMapping, unique, 0, &[&body])
}

pub fn forget(unique: u64, nodeid: u64, nlookup: u64) -> Vec<u8> {
    request(Opcode::Forget, unique, nodeid, &[abi::fuse_forget_in { nlookup }.as_bytes()])
}

/// A decoded reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub unique: u64,
    /// 0 or a positive errno.
    pub errno: i32,
    pub body: Vec<u8>,
}

impl Reply {
    /// Decode a reply; `None` when it is malformed (length mismatch).
    pub fn parse(buf: &[u8]) -> Option<Reply> {
        let h = abi::fuse_out_header::from_prefix(buf)?;
        if h.len as usize != buf.len() {
            return None;
        }
        Some(Reply { unique: h.unique, errno: -h.error, body: buf[16..].to_vec() })
    }

    /// The body as one ABI struct.
    pub fn get<T: Pod>(&self) -> Option<T> {
        T::from_prefix(&self.body)
    }
}

pub fn releasedir(unique: u64, nodeid: u64, fh: u64) -> Vec<u8> {
    request(Opcode::Releasedir, unique, nodeid, &[abi::fuse_release_in { fh, ..Default::default() }.as_bytes()])
}

/// Names in a READDIR reply body (`fuse_dirent` records, 8-byte aligned);
/// stops at the first malformed record.
pub fn dirent_names(body: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    let mut off = 0usize;
    let head = std::mem::size_of::<abi::fuse_dirent>();
    while let Some(d) = body.get(off..).and_then(abi::fuse_dirent::from_prefix) {
        let start = off + head;
        let Some(name) = body.get(start..start + d.namelen as usize) else { break };
        names.push(String::from_utf8_lossy(name).into_owned());
        off = (start + d.namelen as usize).next_multiple_of(8);
    }
    names
}
