//! Opening a built-in snapshotter at a directory: one of the local drivers (kernel overlayfs,
//! fuse-overlayfs, full copies), chosen by name or by the `auto` probe of [`super::probe`],
//! or the stargz snapshotter with its two-level chunk cache. The OCI worker
//! (`worker/src/oci_worker/`) and the snapshotter daemon (`worker/src/daemon/`) both open
//! theirs here.

use super::native::Native;
use super::overlay::Overlay;
use super::probe::{choose, Choice};
use super::stargz::holder::Holder;
use super::stargz::lazy::LazyOptions;
use super::stargz::{RemoteSource, Stargz};
use super::{io, LocalSnapshotter, Result, Snapshotter};
use stargaze_fs::cache::{ChunkCache, DiskCache, MemoryCache};
use stargaze_fs::remote::fetcher::FetchOptions;
use stargaze_fs::remote::RegistryClient;
use std::path::Path;
use std::sync::Arc;

/// A local (non-lazy) snapshotter driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalDriver {
    /// Kernel overlayfs.
    Overlayfs,
    /// The fuse-overlayfs program.
    FuseOverlayfs,
    /// Full copies (works anywhere).
    Native,
}

impl LocalDriver {
    /// The snapshotter's name (`overlayfs`, `fuse-overlayfs`, `native`).
    pub fn name(self) -> &'static str {
        match self {
            LocalDriver::Overlayfs => "overlayfs",
            LocalDriver::FuseOverlayfs => "fuse-overlayfs",
            LocalDriver::Native => "native",
        }
    }

    /// `auto`: the first driver whose test mount works in `dir` (created), and why.
    pub fn probe(dir: &Path) -> Result<(LocalDriver, String)> {
        stargaze_fs::sys::private_dir(dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(match choose(dir) {
            Choice::Overlayfs => (
                LocalDriver::Overlayfs,
                "auto: a test overlay mounted".to_string(),
            ),
            Choice::FuseOverlayfs { because } => {
                (LocalDriver::FuseOverlayfs, format!("auto: {because}"))
            }
            Choice::Native { because } => (LocalDriver::Native, format!("auto: {because}")),
        })
    }
}

/// Opens the local snapshotter `driver` at `root` (created).
pub fn open_local(driver: LocalDriver, root: &Path) -> Result<Arc<dyn Snapshotter>> {
    Ok(match driver {
        LocalDriver::Overlayfs => Arc::new(LocalSnapshotter::open(root, Overlay::kernel())?),
        LocalDriver::FuseOverlayfs => Arc::new(LocalSnapshotter::open(root, Overlay::fuse())?),
        LocalDriver::Native => Arc::new(LocalSnapshotter::open(root, Native)?),
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
