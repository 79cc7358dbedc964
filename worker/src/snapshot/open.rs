//! Opening a built-in snapshotter at a directory: one of the local drivers (kernel overlayfs,
//! fuse-overlayfs, full copies), chosen by [`Backend`] (`auto` through the probe mount of
//! `probe.rs`), or the stargz snapshotter with its two-level chunk cache. The OCI worker
//! (`worker/src/oci_worker/`) and the snapshotter daemon (`worker/src/daemon/`) both open
//! theirs here.

use super::native::Native;
use super::overlay::Overlay;
use super::stargz::holder::Holder;
use super::stargz::lazy::LazyOptions;
use super::stargz::{RemoteSource, Stargz};
use super::{io, Backend, LocalSnapshotter, Result, SnapshotError, Snapshotter};
use stargaze_fs::cache::{ChunkCache, DiskCache, MemoryCache};
use stargaze_fs::fetcher::FetchOptions;
use stargaze_fs::remote::RegistryClient;
use std::path::Path;
use std::sync::Arc;

/// Opens the local (non-lazy) snapshotter `backend` at `root` (created); `auto` is resolved
/// by a probe mount in `root`, and `stargz` is refused (it needs a registry client: see
/// [`open_stargz`]).
pub fn open_local(backend: Backend, root: &Path) -> Result<Arc<dyn Snapshotter>> {
    stargaze_fs::sys::private_dir(root).map_err(io(format!("creating {}", root.display())))?;
    let (backend, why) = backend.resolve(root);
    tracing::info!(snapshotter = %backend, %why, root = %root.display(), "local snapshotter");
    Ok(match backend {
        Backend::Overlayfs => Arc::new(LocalSnapshotter::open(root, Overlay::kernel())?),
        Backend::FuseOverlayfs => Arc::new(LocalSnapshotter::open(root, Overlay::fuse())?),
        Backend::Native => Arc::new(LocalSnapshotter::open(root, Native)?),
        Backend::Stargz | Backend::Auto => {
            return Err(SnapshotError::InvalidArgument(format!(
                "{backend} is not a local snapshotter"
            )))
        }
    })
}

/// Opens the stargz snapshotter at `root`, reading layers with `client` through `disk` and a
/// memory cache of `memory_mib` MiB for the chunks the disk cache could not take; lazy reads
/// are served on `rt`, and `holder` (when given) keeps the FUSE connections across restarts.
pub fn open_stargz(
    root: &Path,
    client: Arc<RegistryClient>,
    disk: DiskCache,
    memory_mib: u64,
    lazy: LazyOptions,
    rt: &tokio::runtime::Handle,
    holder: Option<Holder>,
) -> Result<Arc<Stargz>> {
    let source = RemoteSource {
        client,
        cache: Arc::new(ChunkCache::new(
            Some(MemoryCache::new(memory_mib.saturating_mul(1 << 20))),
            Some(disk),
        )),
        fetch: FetchOptions::default(),
        lazy,
    };
    Ok(Arc::new(Stargz::open_with(
        root,
        source,
        rt.clone(),
        holder,
    )?))
}
