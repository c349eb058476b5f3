//! The file-system layer: what the guest's POSIX calls mean on a back-end.
//!
//! `inode` maps node ids to paths with lookup counts; `handle` keeps open
//! file and directory handles; `staging` holds the bytes of files being
//! written until a durability point uploads them; `dax` is the per-inode
//! DAX policy; `object` is the POSIX
//! mapping onto an object store (any OpenDAL service through `backend`);
//! `passthrough` serves a host directory; `mounts` attaches file systems
//! inside another (Kata volumes inside the passthrough tree).
//! `errno` is the one mapping from back-end errors to errno values.

pub mod dax;
pub mod handle;
pub mod inode;
pub mod mounts;
pub mod object;
pub mod passthrough;
pub mod staging;
pub mod table;

use crate::backend::ErrorKind;
use crate::fuse::Errno;

pub use object::{ObjectFs, ObjectFsOptions};

/// The one mapping from back-end errors to errno. Anything not known to mean
/// something else is EIO, never ENOENT.
pub fn errno(kind: ErrorKind) -> Errno {
    match kind {
        ErrorKind::NotFound => Errno::ENOENT,
        ErrorKind::PermissionDenied => Errno::EACCES,
        ErrorKind::AlreadyExists => Errno::EEXIST,
        ErrorKind::IsDirectory => Errno::EISDIR,
        ErrorKind::NotDirectory => Errno::ENOTDIR,
        ErrorKind::NotEmpty => Errno::ENOTEMPTY,
        ErrorKind::Unsupported => Errno::ENOTSUP,
        ErrorKind::InvalidInput => Errno::EINVAL,
        ErrorKind::ConditionNotMatch | ErrorKind::RateLimited | ErrorKind::Timeout | ErrorKind::Unexpected => {
            Errno::EIO
        }
    }
}

impl From<crate::backend::Error> for Errno {
    fn from(e: crate::backend::Error) -> Errno {
        let n = errno(e.kind);
        if n == Errno::EIO {
            tracing::warn!(error = %e, "back-end error");
        } else {
            tracing::debug!(error = %e, "back-end error");
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_is_eio_never_enoent() {
        for k in [ErrorKind::Unexpected, ErrorKind::Timeout, ErrorKind::RateLimited, ErrorKind::ConditionNotMatch] {
            assert_eq!(errno(k), Errno::EIO);
        }
        assert_eq!(errno(ErrorKind::NotFound), Errno::ENOENT);
        assert_eq!(errno(ErrorKind::NotEmpty), Errno::ENOTEMPTY);
    }
}
