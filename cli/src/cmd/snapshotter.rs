//! `stargaze snapshotter serve`: the containerd snapshots gRPC service on a unix socket, for a
//! containerd `proxy_plugins` entry (a drop-in for `containerd-stargz-grpc`). Runs until
//! SIGTERM/SIGINT, then stops serving and unmounts what it mounted; snapshots stay.

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use stargaze_fs::cache::{ChunkCache, DiskCache, MemoryCache};
use stargaze_fs::fuse::FsOptions;
use stargaze_fs::layer::BackgroundOptions;
use stargaze_fs::remote::fetcher::FetchOptions;
use stargaze_worker::snapshot::native::Native;
use stargaze_worker::snapshot::overlay::Overlay;
use stargaze_worker::snapshot::probe::{choose, Choice};
use stargaze_worker::snapshot::stargz::lazy::LazyOptions;
use stargaze_worker::snapshot::stargz::{RemoteSource, Stargz};
use stargaze_worker::snapshot::{LocalSnapshotter, Snapshotter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `stargaze snapshotter …`
#[derive(Args)]
pub struct SnapshotterArgs {
    #[command(subcommand)]
    command: SnapshotterCommand,
}

#[derive(Subcommand)]
enum SnapshotterCommand {
    /// Serve containerd's snapshots API on a unix socket.
    Serve(ServeArgs),
}

/// Which snapshotter backs the service.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Backend {
    /// overlayfs with lazily mounted eStargz layers (containerd's remote-snapshot flow).
    Stargz,
    /// Kernel overlayfs.
    Overlayfs,
    /// The fuse-overlayfs program.
    FuseOverlayfs,
    /// Full copies (works anywhere).
    Native,
    /// overlayfs, else fuse-overlayfs, else native, by a probe mount.
    Auto,
}

#[derive(Args)]
struct ServeArgs {
    /// Unix socket to listen on.
    #[arg(long, default_value = "/run/stargaze/snapshotter.sock")]
    address: PathBuf,
    /// Directory for snapshots and the metadata store.
    #[arg(long, default_value = "/var/lib/stargaze/snapshotter")]
    root: PathBuf,
    /// Backend.
    #[arg(long, value_enum, default_value = "stargz")]
    backend: Backend,
    /// Disk chunk cache directory (stargz; default ROOT/cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Disk chunk cache size cap, in MiB.
    #[arg(long, default_value_t = 10240)]
    cache_mib: u64,
    /// Memory chunk cache size, in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Do not prefetch the files before the prefetch landmark.
    #[arg(long)]
    no_prefetch: bool,
    /// Do not fetch the rest of the layers in the background.
    #[arg(long)]
    no_background_fetch: bool,
    /// Background fetch rate limit, MiB/s.
    #[arg(long, default_value_t = 64)]
    background_mib_per_sec: u64,
    #[command(flatten)]
    registry: super::remote::RegistryFlags,
}

/// Runs the subcommand.
pub fn run(a: SnapshotterArgs) -> anyhow::Result<()> {
    match a.command {
        SnapshotterCommand::Serve(s) => serve(s),
    }
}

/// Opens a local (non-lazy) snapshotter for `backend` at `root`.
pub fn open_local(backend: Backend, root: &Path) -> anyhow::Result<Arc<dyn Snapshotter>> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let backend = match backend {
        Backend::Auto => match choose(root) {
            Choice::Overlayfs => Backend::Overlayfs,
            Choice::FuseOverlayfs { .. } => Backend::FuseOverlayfs,
            Choice::Native { .. } => Backend::Native,
        },
        b => b,
    };
    let ctx = || format!("opening the snapshotter at {}", root.display());
    Ok(match backend {
        Backend::FuseOverlayfs => {
            Arc::new(LocalSnapshotter::open(root, Overlay::fuse()).with_context(ctx)?)
        }
        Backend::Native => Arc::new(LocalSnapshotter::open(root, Native).with_context(ctx)?),
        _ => Arc::new(LocalSnapshotter::open(root, Overlay::kernel()).with_context(ctx)?),
    })
}

fn open_stargz(a: &ServeArgs, rt: &tokio::runtime::Runtime) -> anyhow::Result<Arc<Stargz>> {
    std::fs::create_dir_all(&a.root).with_context(|| format!("creating {}", a.root.display()))?;
    let cache_dir = a.cache_dir.clone().unwrap_or_else(|| a.root.join("cache"));
    let disk = DiskCache::open(&cache_dir, a.cache_mib << 20)
        .with_context(|| format!("opening the chunk cache {}", cache_dir.display()))?;
    let source = RemoteSource {
        client: Arc::new(a.registry.client()?),
        cache: Arc::new(ChunkCache::new(
            Some(MemoryCache::new(a.memory_mib << 20)),
            Some(disk),
        )),
        fetch: FetchOptions::default(),
        lazy: LazyOptions {
            fs: FsOptions::default(),
            prefetch: !a.no_prefetch,
            background: (!a.no_background_fetch).then_some(BackgroundOptions {
                rate: a.background_mib_per_sec.max(1) << 20,
                ..BackgroundOptions::default()
            }),
        },
    };
    let s = Stargz::open(&a.root, source, rt.handle().clone())
        .with_context(|| format!("opening the stargz snapshotter at {}", a.root.display()))?;
    Ok(Arc::new(s))
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // Opening may remount lazy layers, which waits on registries: before entering the runtime.
    let stargz = match a.backend {
        Backend::Stargz => Some(open_stargz(&a, &rt)?),
        _ => None,
    };
    let snapshotter: Arc<dyn Snapshotter> = match &stargz {
        Some(s) => s.clone(),
        None => open_local(a.backend, &a.root)?,
    };
    let served = rt.block_on(async {
        println!(
            "stargaze snapshotter: {} snapshots in {} on unix://{}",
            snapshotter.name(),
            a.root.display(),
            a.address.display()
        );
        stargaze_worker::grpc::serve(&a.address, snapshotter, super::registry::wait_for_signal())
            .await
            .context("serving")?;
        anyhow::Ok(())
    });
    if let Some(s) = &stargz {
        let c = s.counters();
        s.unmount_all();
        println!(
            "stargaze snapshotter: stopped; {} layers mounted lazily, {} fell back to a normal pull, {} remounted",
            c.lazy_mounts.load(std::sync::atomic::Ordering::Relaxed),
            c.fallbacks.load(std::sync::atomic::Ordering::Relaxed),
            c.remounts.load(std::sync::atomic::Ordering::Relaxed)
        );
    } else {
        println!("stargaze snapshotter: stopped");
    }
    served
}
