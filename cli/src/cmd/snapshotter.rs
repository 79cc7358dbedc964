//! `stargaze snapshotter serve`: the containerd snapshots gRPC service on a unix socket, for a
//! containerd `proxy_plugins` entry (a drop-in for `containerd-stargz-grpc`). Runs until
//! SIGTERM/SIGINT, then stops serving and unmounts what it mounted; snapshots stay.

use anyhow::Context;
use clap::{Args, Subcommand};
use stargaze_fs::cache::{ChunkCache, DiskCache, MemoryCache};
use stargaze_fs::fetcher::FetchOptions;
use stargaze_fs::fuse::FsOptions;
use stargaze_fs::layer::BackgroundOptions;
use stargaze_fs::remote::{ClientOptions, RegistryClient};
use stargaze_worker::config::SnapshotterConfig;
use stargaze_worker::snapshot::native::Native;
use stargaze_worker::snapshot::overlay::Overlay;
use stargaze_worker::snapshot::stargz::holder::Holder;
use stargaze_worker::snapshot::stargz::lazy::LazyOptions;
use stargaze_worker::snapshot::stargz::{RemoteSource, Stargz};
use stargaze_worker::snapshot::{Backend, LocalSnapshotter, Snapshotter};
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
    Serve(Box<ServeArgs>),
}

#[derive(Args)]
struct ServeArgs {
    /// Unix socket to listen on.
    #[arg(long, default_value = "/run/stargaze/snapshotter.sock")]
    address: PathBuf,
    /// Numeric group whose members may use the socket too (it is then 0660 and owned by the
    /// group, like containerd's `[grpc] gid`); otherwise only root may (0600).
    #[arg(long, value_name = "GID")]
    group: Option<u32>,
    /// Directory for snapshots and the metadata store.
    #[arg(long, default_value = "/var/lib/stargaze/snapshotter")]
    root: PathBuf,
    /// Backend: stargz (overlayfs with lazily mounted eStargz layers, containerd's
    /// remote-snapshot flow), overlayfs, fuse-overlayfs (the program), native (full copies,
    /// works anywhere), or auto (overlayfs, else fuse-overlayfs, else native, by a probe mount).
    #[arg(long, default_value = "stargz")]
    backend: Backend,
    /// Config file in containerd-stargz-grpc's config.toml format (default:
    /// /etc/stargaze/snapshotter.toml when it exists). Flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Prometheus metrics on ADDR (`GET /metrics`), e.g. 127.0.0.1:8234.
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Disk chunk cache directory (stargz; default ROOT/cache).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Disk chunk cache size cap, in MiB [default: 10240].
    #[arg(long)]
    cache_mib: Option<u64>,
    /// Memory chunk cache size, in MiB, for chunks the disk cache could not take [default: 256].
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Do not prefetch the files before the prefetch landmark.
    #[arg(long)]
    no_prefetch: bool,
    /// Do not fetch the rest of the layers in the background.
    #[arg(long)]
    no_background_fetch: bool,
    /// Background fetch rate limit, MiB/s [default: 64].
    #[arg(long)]
    background_mib_per_sec: Option<u64>,
    /// Read fully fetched files through FUSE even where the kernel has passthrough.
    #[arg(long)]
    no_passthrough: bool,
    #[command(flatten)]
    hosts: super::remote::HostFlags,
}

/// Runs the subcommand.
pub fn run(a: SnapshotterArgs) -> anyhow::Result<()> {
    match a.command {
        SnapshotterCommand::Serve(s) => serve(*s),
    }
}

/// Opens a local (non-lazy) snapshotter for `backend` at `root`.
pub fn open_local(backend: Backend, root: &Path) -> anyhow::Result<Arc<dyn Snapshotter>> {
    stargaze_fs::sys::private_dir(root).with_context(|| format!("creating {}", root.display()))?;
    let (backend, _) = backend.resolve(root);
    let ctx = || format!("opening the snapshotter at {}", root.display());
    Ok(match backend {
        Backend::FuseOverlayfs => {
            Arc::new(LocalSnapshotter::open(root, Overlay::fuse()).with_context(ctx)?)
        }
        Backend::Native => Arc::new(LocalSnapshotter::open(root, Native).with_context(ctx)?),
        _ => Arc::new(LocalSnapshotter::open(root, Overlay::kernel()).with_context(ctx)?),
    })
}

/// The config file named by `--config`, else the default one when it exists.
fn load_config(a: &ServeArgs) -> anyhow::Result<SnapshotterConfig> {
    let path = match &a.config {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from("/etc/stargaze/snapshotter.toml");
            if !p.exists() {
                return Ok(SnapshotterConfig::default());
            }
            p
        }
    };
    let c = SnapshotterConfig::load(&path)?;
    if !c.not_used.is_empty() {
        tracing::info!(keys = ?c.not_used, "config keys of containerd-stargz-grpc that stargaze does not use");
    }
    for r in &c.refused {
        tracing::warn!(config = %path.display(), "{r}");
    }
    Ok(c)
}

fn open_stargz(
    a: &ServeArgs,
    cfg: &SnapshotterConfig,
    rt: &tokio::runtime::Runtime,
    holder: Holder,
) -> anyhow::Result<Arc<Stargz>> {
    let cache_dir = a
        .cache_dir
        .clone()
        .or_else(|| cfg.cache_dir.clone())
        .unwrap_or_else(|| a.root.join("cache"));
    let cache_mib = a.cache_mib.or(cfg.cache_mib).unwrap_or(10240);
    let memory_mib = a.memory_mib.or(cfg.memory_mib).unwrap_or(256);
    let rate = a
        .background_mib_per_sec
        .or(cfg.background_mib_per_sec)
        .unwrap_or(64);
    let disk = DiskCache::open(&cache_dir, cache_mib << 20)
        .with_context(|| format!("opening the chunk cache {}", cache_dir.display()))?;
    let mut opts = ClientOptions {
        hosts: cfg.hosts.clone(),
        ..ClientOptions::default()
    };
    if let Some(n) = cfg.max_per_host {
        opts.hosts.max_per_host = n;
    }
    if let Some(n) = cfg.attempts {
        opts.retry.attempts = n;
    }
    if let Some(d) = cfg.backoff.0 {
        opts.retry.base = d;
    }
    if let Some(d) = cfg.backoff.1 {
        opts.retry.max = d;
    }
    if let Some(d) = cfg.request_timeout {
        opts.request_timeout = d;
    }
    let lazy = LazyOptions {
        fs: FsOptions {
            passthrough: !a.no_passthrough && cfg.passthrough.unwrap_or(true),
            ..FsOptions::default()
        },
        prefetch: !a.no_prefetch && cfg.prefetch,
        background: (!a.no_background_fetch && cfg.background_fetch).then_some(BackgroundOptions {
            rate: rate.max(1) << 20,
            ..BackgroundOptions::default()
        }),
    };
    stargz_at(
        &a.root,
        Arc::new(a.hosts.client(opts)?),
        disk,
        memory_mib,
        lazy,
        rt.handle(),
        Some(holder),
    )
}

/// Running containers keep their lazy layers through a restart of this daemon: a holder
/// process keeps the FUSE connections. It is forked while this process is still
/// single-threaded (before the runtime starts).
fn fuse_holder(root: &Path) -> anyhow::Result<Holder> {
    stargaze_fs::sys::private_dir(root).with_context(|| format!("creating {}", root.display()))?;
    Holder::connect_or_fork(root, &super::mount::run_dir()).context("starting the FUSE holder")
}

/// The stargz snapshotter at `root`, reading layers with `client` through `disk` and a
/// memory cache of `memory_mib`.
pub fn stargz_at(
    root: &Path,
    client: Arc<RegistryClient>,
    disk: DiskCache,
    memory_mib: u64,
    lazy: LazyOptions,
    rt: &tokio::runtime::Handle,
    holder: Option<Holder>,
) -> anyhow::Result<Arc<Stargz>> {
    let source = RemoteSource {
        client,
        cache: Arc::new(ChunkCache::new(
            Some(MemoryCache::new(memory_mib << 20)),
            Some(disk),
        )),
        fetch: FetchOptions::default(),
        lazy,
    };
    let s = Stargz::open_with(root, source, rt.clone(), holder)
        .with_context(|| format!("opening the stargz snapshotter at {}", root.display()))?;
    Ok(Arc::new(s))
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    // A long-lived daemon whose gRPC calls run on many short-lived blocking threads and
    // whose chunk buffers are megabytes: two malloc arenas instead of one per thread, and
    // buffers above 256 KiB always mapped (glibc would otherwise raise that bound after the
    // first free and keep such buffers in its heap), so freed memory goes back.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    // A bad config file or socket path stops the start before anything is forked or mounted.
    let cfg = load_config(&a)?;
    stargaze_worker::peer::check_path(&a.address).context("--address")?;
    let holder = match a.backend {
        Backend::Stargz => Some(fuse_holder(&a.root)?),
        _ => None,
    };
    // gRPC calls and disk-cache writes run on the blocking pool: bound it, and let idle
    // threads go soon, so a burst of calls does not leave a hundred parked threads (and
    // their touched stacks) behind.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(24)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
        .context("starting the async runtime")?;
    // Opening may remount lazy layers, which waits on registries: before entering the runtime.
    let stargz = match holder {
        Some(h) => Some(open_stargz(&a, &cfg, &rt, h)?),
        None => None,
    };
    let metrics_address = match (a.metrics_address, &cfg.metrics_address) {
        (Some(m), _) => Some(m),
        (None, Some(m)) => Some(
            m.parse::<std::net::SocketAddr>()
                .with_context(|| format!("config metrics_address {m:?}"))?,
        ),
        (None, None) => None,
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
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(s) = &stargz {
            tokio::spawn(s.clone().release_memory_after_activity());
        }
        if let (Some(addr), Some(s)) = (metrics_address, &stargz) {
            let (s, mut rx) = (s.clone(), stop_rx.clone());
            let listener = stargaze_worker::metrics::serve(addr, s, async move {
                let _ = rx.wait_for(|v| *v).await;
            });
            tokio::spawn(async move {
                if let Err(e) = listener.await {
                    tracing::error!(%addr, error = %e, "metrics endpoint failed");
                }
            });
        }
        let served = stargaze_worker::grpc::serve(
            &a.address,
            snapshotter,
            stargaze_worker::peer::PeerPolicy { group: a.group },
            super::registry::wait_for_signal(),
        )
        .await;
        let _ = stop_tx.send(true);
        served.context("serving")?;
        anyhow::Ok(())
    });
    if let Some(s) = &stargz {
        let c = s.counters();
        let kept = s.shutdown();
        println!(
            "stargaze snapshotter: stopped; {} layers mounted lazily, {} fell back to a normal pull, {} remounted; {kept} layers in use by containers left mounted for the next start",
            c.lazy_mounts.load(std::sync::atomic::Ordering::Relaxed),
            c.fallbacks.load(std::sync::atomic::Ordering::Relaxed),
            c.remounts.load(std::sync::atomic::Ordering::Relaxed)
        );
    } else {
        println!("stargaze snapshotter: stopped");
    }
    served
}
