//! `stargaze buildkitd` (also the binary invoked as `buildkitd`): BuildKit's daemon with the
//! OCI worker, taking buildkitd's flags with their names, defaults and meanings. The daemon
//! is `stargaze_worker::buildkitd`; this parses flags, runs it until SIGTERM or SIGINT, and
//! says where it serves.

use super::oci_worker::OciWorkerArgs;
use anyhow::Context;
use clap::Args;
use stargaze_worker::buildkitd::{Buildkitd, BuildkitdOptions, TlsFiles};
use stargaze_worker::daemon;
use std::path::PathBuf;

/// buildkitd's flags.
#[derive(Args)]
pub struct BuildkitdArgs {
    /// Listening address, unix://PATH or tcp://HOST:PORT (repeatable) [default:
    /// unix:///run/buildkit/buildkitd.sock; rootless:
    /// unix://$XDG_RUNTIME_DIR/buildkit/buildkitd.sock]. tcp:// needs --tlscert, --tlskey
    /// and --tlscacert: served with mutual TLS.
    #[arg(long = "addr", value_name = "ADDRESS")]
    addrs: Vec<String>,
    /// Path to the state directory [default: /var/lib/buildkit; rootless:
    /// $XDG_DATA_HOME/buildkit or ~/.local/share/buildkit].
    #[arg(long)]
    root: Option<PathBuf>,
    /// Path to the config file [default: /etc/buildkit/buildkitd.toml; rootless:
    /// ~/.config/buildkit/buildkitd.toml], read when it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Debug logging.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub debug: Option<bool>,
    /// Group (name or ID) that owns the sockets (mode 0660) [default: the daemon's group].
    #[arg(long)]
    group: Option<String>,
    /// The containerd worker: stargaze has none, so only false (or auto, which finds none).
    #[arg(long = "containerd-worker", value_name = "true|false|auto")]
    containerd_worker: Option<String>,
    /// Rootless defaults for the worker [default: true in a user namespace].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    rootless: Option<bool>,
    /// Server certificate (PEM, for tcp://).
    #[arg(long)]
    tlscert: Option<PathBuf>,
    /// Server key (PEM, for tcp://).
    #[arg(long)]
    tlskey: Option<PathBuf>,
    /// CA that client certificates must chain to (PEM, for tcp://).
    #[arg(long)]
    tlscacert: Option<PathBuf>,
    /// Entitlement builds may be granted: network.host or security.insecure (repeatable;
    /// replaces the config file's insecure-entitlements).
    #[arg(long = "allow-insecure-entitlement", value_name = "ENTITLEMENT")]
    insecure_entitlements: Vec<String>,
    #[command(flatten)]
    oci: OciWorkerArgs,
}

impl BuildkitdArgs {
    fn options(&self) -> BuildkitdOptions {
        BuildkitdOptions {
            addrs: self.addrs.clone(),
            root: self.root.clone(),
            config: self.config.clone(),
            group: self.group.clone(),
            containerd_worker: self.containerd_worker.clone(),
            rootless: self.rootless,
            tls: TlsFiles {
                cert: self.tlscert.clone(),
                key: self.tlskey.clone(),
                ca: self.tlscacert.clone(),
            },
            insecure_entitlements: self.insecure_entitlements.clone(),
            oci: self.oci.flags(),
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; the sockets are removed and the worker closed
/// (lazy mounts unmounted, its lock released) before this returns.
pub fn run(a: BuildkitdArgs) -> anyhow::Result<()> {
    daemon::tune_allocator();
    let prepared = Buildkitd::prepare(a.options())?;
    let rt = daemon::runtime().context("starting the async runtime")?;
    // Opening may connect a proxy snapshotter with block_on: before entering the runtime.
    let d = prepared.open(rt.handle())?;
    let served = rt.block_on(async {
        for a in d.addresses() {
            eprintln!(
                "buildkitd: worker {} in {}: running server on {a}",
                d.record().id,
                d.root().display(),
            );
        }
        d.serve(super::registry::wait_for_signal()).await
    });
    drop(d);
    // Tasks still holding the worker end with the runtime; then it is closed.
    drop(rt);
    served?;
    eprintln!("buildkitd: stopped");
    Ok(())
}
