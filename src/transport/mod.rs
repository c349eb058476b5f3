//! Transports: where FUSE requests come from and replies go to.
//!
//! A transport knows nothing about FUSE semantics: it moves request bytes to a
//! [`RequestHandler`] and reply bytes back, running each request as its own task
//! so replies complete out of order.

use std::sync::Arc;

use futures::future::BoxFuture;

pub mod fusedev;
pub mod vhost_user;

/// The FUSE server as a transport sees it.
pub trait RequestHandler: Send + Sync + 'static {
    /// Handle one FUSE request: `req` holds the whole request (`fuse_in_header`
    /// followed by its body), exactly as read from one descriptor chain's readable
    /// part or one `/dev/fuse` read. Resolves to the reply bytes
    /// (`fuse_out_header` + body), or `None` for requests that take no reply
    /// (FORGET, BATCH_FORGET, and requests whose header could not even be read).
    /// Never panics on any input.
    fn handle(self: Arc<Self>, req: Vec<u8>) -> BoxFuture<'static, Option<Vec<u8>>>;

    /// The transport has a DAX window: serve FUSE_SETUPMAPPING /
    /// FUSE_REMOVEMAPPING through `mapper`. Returns false when the handler
    /// cannot (the transport then offers no window).
    fn enable_dax(&self, mapper: Arc<dyn crate::fuse::dax::DaxMapper>) -> bool {
        let _ = mapper;
        false
    }

    /// DAX counters and live mappings, once a window is in use (metrics).
    fn dax_stats(&self) -> Option<crate::fuse::dax::DaxStats> {
        None
    }
}
