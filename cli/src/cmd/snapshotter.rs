//! `stargaze snapshotter serve`: the containerd snapshots gRPC service on a unix socket, for a
//! containerd `proxy_plugins` entry (a drop-in for `containerd-stargz-grpc`). Runs until
//! SIGTERM/SIGINT, then stops serving and unmounts what it mounted; snapshots stay.

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use stargaze_worker::snapshot::native::Native;
use stargaze_worker::snapshot::overlay::Overlay;
use stargaze_worker::snapshot::probe::{choose, Choice};
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
    #[arg(long, value_enum, default_value = "overlayfs")]
    backend: Backend,
}

/// Runs the subcommand.
pub fn run(a: SnapshotterArgs) -> anyhow::Result<()> {
    match a.command {
        SnapshotterCommand::Serve(s) => serve(s),
    }
}

/// Opens the snapshotter for `backend` at `root`.
pub fn open(backend: Backend, root: &Path) -> anyhow::Result<Arc<dyn Snapshotter>> {
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
        Backend::Overlayfs => {
            Arc::new(LocalSnapshotter::open(root, Overlay::kernel()).with_context(ctx)?)
        }
        Backend::FuseOverlayfs => {
            Arc::new(LocalSnapshotter::open(root, Overlay::fuse()).with_context(ctx)?)
        }
        Backend::Native | Backend::Auto => {
            Arc::new(LocalSnapshotter::open(root, Native).with_context(ctx)?)
        }
    })
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let snapshotter = open(a.backend, &a.root)?;
        println!(
            "stargaze snapshotter: {} snapshots in {} on unix://{}",
            snapshotter.name(),
            a.root.display(),
            a.address.display()
        );
        stargaze_worker::grpc::serve(&a.address, snapshotter, super::registry::wait_for_signal())
            .await
            .context("serving")?;
        println!("stargaze snapshotter: stopped");
        Ok(())
    })
}
