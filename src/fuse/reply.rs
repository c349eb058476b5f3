//! Reply encoding: a `fuse_out_header` followed by the body.

use super::abi::{fuse_dirent, fuse_direntplus, fuse_entry_out, fuse_out_header, Pod};
use super::filesystem::{DirEntry, Errno};

/// An error reply.
pub fn error(unique: u64, err: Errno) -> Vec<u8> {
    let h = fuse_out_header { len: std::mem::size_of::<fuse_out_header>() as u32, error: -err.0, unique };
    h.as_bytes().to_vec()
}

/// A success reply made of several body parts.
pub fn ok_parts(unique: u64, parts: &[&[u8]]) -> Vec<u8> {
    let hlen = std::mem::size_of::<fuse_out_header>();
    let body: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(hlen + body);
    let h = fuse_out_header { len: (hlen + body) as u32, error: 0, unique };
    out.extend_from_slice(h.as_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// A success reply whose body is one ABI struct.
pub fn ok<T: Pod>(unique: u64, body: &T) -> Vec<u8> {
    ok_parts(unique, &[body.as_bytes()])
}

/// A success reply with an empty body.
pub fn empty(unique: u64) -> Vec<u8> {
    ok_parts(unique, &[])
}

fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Size one entry takes in a READDIR (`plus == false`) or READDIRPLUS reply.
pub fn dirent_size(name_len: usize, plus: bool) -> usize {
    let head = if plus { std::mem::size_of::<fuse_direntplus>() } else { std::mem::size_of::<fuse_dirent>() };
    pad8(head + name_len)
}

/// Append one directory entry to `buf` if it fits within `max` bytes in total.
/// Returns false (and leaves `buf` unchanged) when it does not fit.
pub fn push_dirent(buf: &mut Vec<u8>, max: usize, e: &DirEntry, plus: bool) -> bool {
    let size = dirent_size(e.name.len(), plus);
    if buf.len() + size > max {
        return false;
    }
    let start = buf.len();
    let dirent = fuse_dirent { ino: e.ino, off: e.offset, namelen: e.name.len() as u32, typ: e.typ };
    if plus {
        let entry_out = match &e.entry {
            Some(en) => en.to_abi(),
            // ".", ".." and entries the file system could not stat: a zero
            // nodeid tells the kernel not to instantiate an inode.
            None => fuse_entry_out::default(),
        };
        buf.extend_from_slice(fuse_direntplus { entry_out, dirent }.as_bytes());
    } else {
        buf.extend_from_slice(dirent.as_bytes());
    }
    buf.extend_from_slice(&e.name);
    buf.resize(start + size, 0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_layout() {
        let r = error(42, Errno::ENOENT);
        assert_eq!(r.len(), 16);
        let h = fuse_out_header::from_prefix(&r).unwrap();
        assert_eq!((h.len, h.error, h.unique), (16, -libc::ENOENT, 42));
    }

    #[test]
    fn dirents_are_padded_and_bounded() {
        let e = DirEntry { ino: 5, offset: 1, typ: libc::DT_REG as u32, name: b"abc".to_vec(), entry: None };
        let mut buf = Vec::new();
        assert!(push_dirent(&mut buf, 32, &e, false));
        assert_eq!(buf.len(), 32); // 24 + 3 -> 32
        assert!(!push_dirent(&mut buf, 63, &e, false));
        assert_eq!(buf.len(), 32);
        let mut buf = Vec::new();
        assert!(push_dirent(&mut buf, 4096, &e, true));
        assert_eq!(buf.len(), 160);
    }
}
