//! ovfs: a vhost-user virtio-fs daemon whose storage is Apache OpenDAL.
//!
//! Layers, top to bottom: `transport` (vhost-user virtqueues, host `/dev/fuse`)
//! feeds raw FUSE requests to `fuse` (ABI, decoding, dispatch), which calls the
//! file-system layer `vfs` (inodes, handles, object-store POSIX mapping), which
//! talks to `backend` (the only module that names OpenDAL types).
//! See docs/ARCHITECTURE.md.

pub mod backend;
pub mod cache;
pub mod cli;
pub mod config;
pub mod frontend;
pub mod fuse;
pub mod kata;
pub mod memfd;
pub mod metrics;
pub mod reload;
pub mod transport;
pub mod vfs;
