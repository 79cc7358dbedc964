//! `stargaze snapshotter serve`: the containerd snapshots gRPC service on a unix socket, for a
//! containerd `proxy_plugins` entry (a drop-in for `containerd-stargz-grpc`). Runs until
//! SIGTERM/SIGINT, then stops serving and unmounts what it mounted; snapshots stay.

use anyhow::Context;
use clap::{Args, Subcommand};
use stargaze_worker::daemon::{self, DaemonOptions, SnapshotterDaemon};
use stargaze_worker::snapshot::Backend;
use std::path::PathBuf;

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
    /// Neither record nor replay learned prefetch profiles (config: `[profile] enabled`).
    #[arg(long)]
    no_profile: bool,
    /// Do not look for an image's prefetch profile in its registry on a cold start (local
    /// profiles still apply; config: `[profile] lookup`).
    #[arg(long)]
    no_profile_lookup: bool,
    /// Where this machine records learned prefetch profiles and looks first (config:
    /// `[profile] dir`) [default: CACHE_DIR/profiles].
    #[arg(long)]
    profile_dir: Option<PathBuf>,
    #[command(flatten)]
    hosts: super::remote::HostFlags,
}

/// Runs the subcommand.
pub fn run(a: SnapshotterArgs) -> anyhow::Result<()> {
    match a.command {
        SnapshotterCommand::Serve(s) => serve(*s),
    }
}

impl ServeArgs {
    fn options(self) -> DaemonOptions {
        DaemonOptions {
            address: self.address,
            group: self.group,
            root: self.root,
            backend: self.backend,
            config: self.config,
            metrics_address: self.metrics_address,
            cache_dir: self.cache_dir,
            cache_mib: self.cache_mib,
            memory_mib: self.memory_mib,
            no_prefetch: self.no_prefetch,
            no_background_fetch: self.no_background_fetch,
            background_mib_per_sec: self.background_mib_per_sec,
            no_passthrough: self.no_passthrough,
            no_profile: self.no_profile,
            no_profile_lookup: self.no_profile_lookup,
            profile_dir: self.profile_dir,
            registry: self.hosts.overrides(),
            run_dir: stargaze_fs::mount::run_dir(),
        }
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    // Before any thread exists: the allocator tuning, then the config, the socket path and
    // the FUSE holder (forked while this process is single-threaded).
    daemon::tune_allocator();
    let prepared = SnapshotterDaemon::prepare(a.options())?;
    let rt = daemon::runtime().context("starting the async runtime")?;
    // Opening may remount lazy layers, which waits on registries: before entering the runtime.
    let d = prepared.open(rt.handle())?;
    let served = rt.block_on(async {
        println!(
            "stargaze snapshotter: {} snapshots in {} on unix://{}",
            d.snapshotter().name(),
            d.options().root.display(),
            d.options().address.display()
        );
        d.serve(super::registry::wait_for_signal()).await
    });
    match d.stop() {
        Some(s) => println!(
            "stargaze snapshotter: stopped; {} layers mounted lazily, {} fell back to a normal pull, {} remounted; {} layers in use by containers left mounted for the next start",
            s.lazy_mounts, s.fallbacks, s.remounts, s.kept
        ),
        None => println!("stargaze snapshotter: stopped"),
    }
    Ok(served?)
}
