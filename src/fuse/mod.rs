//! The FUSE protocol, independent of transport and storage.
//!
//! `abi` holds the kernel's structs; `request` decodes a request buffer with a
//! bounds check on every read; `reply` encodes replies; `dax` keeps the DAX window's
//! mapping table; `filesystem` is the
//! trait a file system implements; `server` decodes, dispatches and encodes.
//! Nothing here names OpenDAL or virtio types.

pub mod abi;
pub mod client;
pub mod dax;
pub mod filesystem;
pub mod reply;
pub mod request;
pub mod server;

pub use filesystem::{Ctx, DirEntry, Entry, Errno, Filesystem, SetAttr, TimeSpec};
pub use server::{Server, ServerOptions};
