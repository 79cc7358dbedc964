//! `stargaze`: the one binary. Parses flags, sets up logging and hands each subcommand to its
//! module in `cmd/`; the work itself lives in the `stargaze-fs` and `stargaze-worker` crates.

mod cmd;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Start containers before their image has arrived: lazily pulled eStargz layers.
#[derive(Parser)]
#[command(name = "stargaze", version, about, long_about = None)]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `stargaze_fs=debug`.
    #[arg(long, global = true, env = "STARGAZE_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a layer's TOC (stargz.index.json) as JSON.
    Toc(cmd::inspect::TocArgs),
    /// List a layer's entries: type, mode, uid:gid, size, name.
    Ls(cmd::inspect::LsArgs),
    /// Write one file's verified content to stdout.
    Cat(cmd::inspect::CatArgs),
    /// Unpack a layer into a directory (safely; whiteouts in overlayfs form).
    Extract(cmd::extract::ExtractArgs),
    /// Check footer, TOC and every chunk digest of a layer.
    Verify(cmd::verify::VerifyArgs),
    /// Convert an OCI image layout's layers to eStargz.
    Convert(cmd::convert::ConvertArgs),
    /// Copy an image between oci:DIR[:TAG] and docker://HOST/REPO[:TAG].
    Copy(cmd::copy::CopyArgs),
    /// Mount an image from a registry as a lazily fetched rootfs at DIR.
    Mount(cmd::mount::MountArgs),
    /// Unmount a rootfs mounted by `stargaze mount` and print its figures.
    Umount(cmd::mount::UmountArgs),
    /// Per-layer figures of a mounted rootfs: bytes fetched, requests, cache, prefetch.
    Stats(cmd::mount::StatsArgs),
    /// Learned prefetch profiles of an image: push, pull, show, rm.
    Profile(cmd::profile::ProfileArgs),
    /// The built-in OCI registry (`registry serve --root DIR`).
    Registry(cmd::registry::RegistryArgs),
    /// containerd's snapshots service (`snapshotter serve --address SOCK --root DIR`).
    Snapshotter(cmd::snapshotter::SnapshotterArgs),
    /// The BuildKit-style OCI worker (`worker info`, `worker prune`).
    Worker(cmd::worker::WorkerArgs),
    /// Build a Dockerfile on the OCI worker and export the image.
    Build(cmd::build::BuildArgs),
    /// BuildKit's daemon with the OCI worker, for buildctl (buildkitd's flags; also the
    /// binary invoked as `buildkitd`).
    Buildkitd(cmd::buildkitd::BuildkitdArgs),
    /// Run the main job on an embedded sample image, offline.
    Demo(cmd::demo::DemoArgs),
}

/// The binary invoked as `buildkitd` (a symlink): buildkitd's command line.
#[derive(Parser)]
#[command(
    name = "buildkitd",
    version,
    about = "BuildKit's daemon with stargaze's OCI worker"
)]
struct BuildkitdCli {
    #[command(flatten)]
    args: cmd::buildkitd::BuildkitdArgs,
}

fn init_logging(log: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(log).unwrap_or_else(|e| {
        // Logging is not up yet: say it on stderr rather than drop the setting silently.
        eprintln!("stargaze: --log {log:?}: {e}; logging at warn");
        tracing_subscriber::EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stargaze: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the binary was invoked under the name `buildkitd`.
fn invoked_as_buildkitd() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n == "buildkitd")
        })
        .unwrap_or(false)
}

fn main() -> ExitCode {
    if invoked_as_buildkitd() {
        let cli = BuildkitdCli::parse();
        // buildkitd logs at info, at debug with --debug; STARGAZE_LOG still wins.
        let log = std::env::var("STARGAZE_LOG").unwrap_or_else(|_| {
            if cli.args.debug == Some(true) {
                "debug"
            } else {
                "info"
            }
            .to_string()
        });
        init_logging(&log);
        return exit(cmd::buildkitd::run(cli.args));
    }
    let cli = Cli::parse();
    let log = match &cli.command {
        Command::Buildkitd(a) if a.debug == Some(true) => "debug".to_string(),
        _ => cli.log.clone(),
    };
    init_logging(&log);
    let result = match cli.command {
        Command::Toc(a) => cmd::inspect::toc(a),
        Command::Ls(a) => cmd::inspect::ls(a),
        Command::Cat(a) => cmd::inspect::cat(a),
        Command::Extract(a) => cmd::extract::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Convert(a) => cmd::convert::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Registry(a) => cmd::registry::run(a),
        Command::Snapshotter(a) => cmd::snapshotter::run(a),
        Command::Worker(a) => cmd::worker::run(a),
        Command::Build(a) => cmd::build::run(a),
        Command::Buildkitd(a) => cmd::buildkitd::run(a),
        Command::Copy(a) => cmd::copy::run(a),
        Command::Mount(a) => cmd::mount::mount(a),
        Command::Umount(a) => cmd::mount::umount(a),
        Command::Stats(a) => cmd::mount::stats(a),
        Command::Profile(a) => cmd::profile::run(a),
    };
    exit(result)
}
