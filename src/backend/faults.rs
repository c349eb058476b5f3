//! Fault injection for tests: an OpenDAL layer that fails a fraction of
//! calls, configured by `inject_error_rate` / `inject_error_rate_final` in
//! `[backend_settings]` (for testing; off by default, and not installed at
//! all when the rate is 0).
//!
//! OpenDAL's own `ChaosLayer` (feature `layers-chaos`) only fails reads, so it
//! does not cover stat/list/write/delete; this layer does. It is installed
//! twice in the stack built by [`super::Backend::build`]:
//!
//! - *below* `RetryLayer` with temporary errors (`inject_error_rate`): the
//!   retry layer retries them with its back-off, so most are absorbed;
//! - *above* `RetryLayer` with permanent errors (`inject_error_rate_final`):
//!   they surface to the caller as `Unexpected` (EIO in the guest).
//!
//! A fault is decided *before* the wrapped call, so a failed attempt has no
//! side effect and retrying it is always sound. Points that may fail: stat,
//! create_dir, rename, reader open/read, read-stream chunks, writer
//! write/copy_from/close, lister next, deleter delete/close, copier
//! next/close. Abort paths never fail (they are clean-up). The decision uses a
//! lock-free SplitMix64 sequence, so the layer holds no lock at all.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use opendal::raw::*;
use opendal::*;

/// Shared state of one installed fault layer.
pub(super) struct FaultState {
    rate: f64,
    /// Temporary errors (retried by a retry layer above) or permanent ones.
    temporary: bool,
    rng: AtomicU64,
    injected: AtomicU64,
}

impl fmt::Debug for FaultState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultState")
            .field("rate", &self.rate)
            .field("temporary", &self.temporary)
            .field("injected", &self.injected())
            .finish()
    }
}

impl FaultState {
    pub(super) fn new(rate: f64, temporary: bool) -> Arc<FaultState> {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0x5eed);
        Arc::new(FaultState {
            rate: if rate.is_finite() { rate.clamp(0.0, 1.0) } else { 0.0 },
            temporary,
            rng: AtomicU64::new(seed),
            injected: AtomicU64::new(0),
        })
    }

    /// Faults injected so far.
    pub(super) fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// A uniform sample in [0, 1) (SplitMix64).
    fn sample(&self) -> f64 {
        let mut z = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `Err` with an injected fault for a `rate` fraction of calls.
    fn roll(&self, what: &'static str) -> Result<()> {
        if self.rate <= 0.0 || self.sample() >= self.rate {
            return Ok(());
        }
        let n = self.injected.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(op = what, temporary = self.temporary, total = n, "injected fault");
        let e = if self.temporary {
            Error::new(ErrorKind::Unexpected, "injected fault (inject_error_rate)").set_temporary()
        } else {
            Error::new(ErrorKind::Unexpected, "injected fault (inject_error_rate_final)").set_persistent()
        };
        Err(e.with_operation(what))
    }
}

/// The layer; see the module notes.
#[derive(Clone, Debug)]
pub(super) struct FaultLayer {
    state: Arc<FaultState>,
}

impl FaultLayer {
    pub(super) fn new(state: Arc<FaultState>) -> FaultLayer {
        FaultLayer { state }
    }
}

impl Layer for FaultLayer {
    fn apply_service(&self, inner: Servicer) -> Servicer {
        Arc::new(FaultService { inner, state: self.state.clone() })
    }
}

#[derive(Debug)]
struct FaultService {
    inner: Servicer,
    state: Arc<FaultState>,
}

/// Wraps an inner reader/writer/lister/deleter/copier.
struct Faulty<T> {
    inner: T,
    state: Arc<FaultState>,
}

impl<T> Faulty<T> {
    fn new(inner: T, state: &Arc<FaultState>) -> Faulty<T> {
        Faulty { inner, state: state.clone() }
    }
}

impl Service for FaultService {
    type Reader = Faulty<oio::Reader>;
    type Writer = Faulty<oio::Writer>;
    type Lister = Faulty<oio::Lister>;
    type Deleter = Faulty<oio::Deleter>;
    type Copier = Faulty<oio::Copier>;
    type Composer = oio::Composer;

    fn info(&self) -> ServiceInfo {
        self.inner.info()
    }

    fn capability(&self) -> Capability {
        self.inner.capability()
    }

    fn compose(&self, ctx: &OperationContext, to: &str, args: OpCompose) -> Result<Self::Composer> {
        self.inner.compose(ctx, to, args)
    }

    async fn create_dir(&self, ctx: &OperationContext, path: &str, args: OpCreateDir) -> Result<RpCreateDir> {
        self.state.roll("create_dir")?;
        self.inner.create_dir(ctx, path, args).await
    }

    async fn stat(&self, ctx: &OperationContext, path: &str, args: OpStat) -> Result<RpStat> {
        self.state.roll("stat")?;
        self.inner.stat(ctx, path, args).await
    }

    fn read(&self, ctx: &OperationContext, path: &str, args: OpRead) -> Result<Self::Reader> {
        self.inner.read(ctx, path, args).map(|r| Faulty::new(r, &self.state))
    }

    fn write(&self, ctx: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
        self.inner.write(ctx, path, args).map(|w| Faulty::new(w, &self.state))
    }

    fn copy(&self, ctx: &OperationContext, from: &str, to: &str, args: OpCopy) -> Result<Self::Copier> {
        self.inner.copy(ctx, from, to, args).map(|c| Faulty::new(c, &self.state))
    }

    fn list(&self, ctx: &OperationContext, path: &str, args: OpList) -> Result<Self::Lister> {
        self.inner.list(ctx, path, args).map(|l| Faulty::new(l, &self.state))
    }

    fn delete(&self, ctx: &OperationContext) -> Result<Self::Deleter> {
        self.inner.delete(ctx).map(|d| Faulty::new(d, &self.state))
    }

    async fn rename(&self, ctx: &OperationContext, from: &str, to: &str, args: OpRename) -> Result<RpRename> {
        self.state.roll("rename")?;
        self.inner.rename(ctx, from, to, args).await
    }

    async fn restore(&self, ctx: &OperationContext, path: &str, args: OpRestore) -> Result<RpRestore> {
        self.inner.restore(ctx, path, args).await
    }

    async fn presign(&self, ctx: &OperationContext, path: &str, args: OpPresign) -> Result<RpPresign> {
        self.inner.presign(ctx, path, args).await
    }
}

impl oio::Read for Faulty<oio::Reader> {
    async fn open(&self, range: BytesRange) -> Result<(RpRead, Box<dyn oio::ReadStreamDyn>)> {
        self.state.roll("read")?;
        let (rp, stream) = self.inner.open(range).await?;
        let stream: Box<dyn oio::ReadStreamDyn> = Box::new(Faulty::new(stream, &self.state));
        Ok((rp, stream))
    }

    async fn read(&self, range: BytesRange) -> Result<(RpRead, Buffer)> {
        self.state.roll("read")?;
        self.inner.read(range).await
    }
}

impl oio::ReadStream for Faulty<Box<dyn oio::ReadStreamDyn>> {
    async fn read(&mut self) -> Result<Buffer> {
        self.state.roll("read")?;
        self.inner.read().await
    }
}

impl oio::Write for Faulty<oio::Writer> {
    async fn write(&mut self, bs: Buffer) -> Result<()> {
        self.state.roll("write")?;
        self.inner.write(bs).await
    }

    async fn copy_from(&mut self, path: &str, args: OpRead, range: BytesRange) -> Result<()> {
        self.state.roll("copy_from")?;
        self.inner.copy_from(path, args, range).await
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.state.roll("close")?;
        self.inner.close().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

impl oio::List for Faulty<oio::Lister> {
    async fn next(&mut self) -> Result<Option<oio::Entry>> {
        self.state.roll("list")?;
        self.inner.next().await
    }
}

impl oio::Delete for Faulty<oio::Deleter> {
    async fn delete(&mut self, path: &str, args: OpDelete) -> Result<()> {
        self.state.roll("delete")?;
        self.inner.delete(path, args).await
    }

    async fn close(&mut self) -> Result<()> {
        self.state.roll("delete")?;
        self.inner.close().await
    }
}

impl oio::Copy for Faulty<oio::Copier> {
    async fn next(&mut self) -> Result<Option<usize>> {
        self.state.roll("copy")?;
        self.inner.next().await
    }

    async fn close(&mut self) -> Result<Metadata> {
        self.state.roll("copy")?;
        self.inner.close().await
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}
