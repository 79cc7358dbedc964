//! `stargaze worker …`: the BuildKit-style OCI worker. Its flags carry buildkitd's names
//! (`--oci-worker-*`) and override the config file's `[worker.oci]`; `worker info` prints the
//! resolved worker: ID, whether it runs and with which runtime, snapshotter, network,
//! platforms, labels and GC policy.

use super::oci_worker::OciWorkerArgs;
use anyhow::Context;
use clap::{Args, Subcommand};
use stargaze_worker::oci_worker::{Enabled, LockMode, OciWorker, PruneScope, WorkerInfo};
use stargaze_worker::registry_client::RegistryOverrides;
use std::path::PathBuf;

/// `stargaze worker …`
#[derive(Args)]
pub struct WorkerArgs {
    #[command(subcommand)]
    command: WorkerCommand,
}

#[derive(Subcommand)]
enum WorkerCommand {
    /// Print the worker's ID, runtime, snapshotter, network, platforms, labels and GC policy.
    Info(InfoArgs),
    /// Run garbage collection now: the configured policy, a keep-storage bound, or --all.
    Prune(PruneArgs),
}

#[derive(Args)]
struct PruneArgs {
    /// State directory.
    #[arg(long, default_value = "/var/lib/stargaze")]
    root: PathBuf,
    /// Config file (buildkitd TOML; `[worker.oci]`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Remove every build record nothing stands on (not only what the policy selects).
    #[arg(long)]
    all: bool,
    /// Prune until the records use at most this many MB (instead of the policy).
    #[arg(long = "keep-storage", value_name = "MB")]
    keep_storage_mb: Option<i64>,
    #[command(flatten)]
    oci: OciWorkerArgs,
}

#[derive(Args)]
struct InfoArgs {
    /// State directory.
    #[arg(long, default_value = "/var/lib/stargaze")]
    root: PathBuf,
    /// Config file (buildkitd TOML; `[worker.oci]`). Default: $STARGAZE_CONFIG, else
    /// /etc/stargaze/config.toml when it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    oci: OciWorkerArgs,
}

/// Runs the subcommand.
pub fn run(a: WorkerArgs) -> anyhow::Result<()> {
    match a.command {
        WorkerCommand::Info(i) => info(i),
        WorkerCommand::Prune(p) => prune(p),
    }
}

fn info(a: InfoArgs) -> anyhow::Result<()> {
    let settings = a
        .oci
        .settings(a.config.as_deref(), &RegistryOverrides::default())?;
    let WorkerInfo {
        id,
        enabled,
        snapshotter,
        why,
        proxy,
        network,
        cni_config_path,
        cni_binary_dir,
        platforms,
        max_parallelism,
        labels,
        gc_rules: rules,
    } = WorkerInfo::resolve(&a.root, &settings)?;
    let enabled = match enabled {
        Enabled::Disabled => "no (disabled)".to_string(),
        Enabled::Runtime(b) => format!("yes ({})", b.display()),
        Enabled::NoRuntime => "no (auto: no runtime binary found)".to_string(),
    };
    println!("ID:          {id}");
    println!("enabled:     {enabled}");
    println!("snapshotter: {snapshotter} ({why})");
    if let Some(p) = &proxy {
        println!("proxy:       {}", p.display());
    }
    println!("network:     {network}");
    println!(
        "cni:         config {}, plugins {}",
        cni_config_path.display(),
        cni_binary_dir.display()
    );
    println!(
        "platforms:   {}",
        platforms
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "parallelism: {}",
        if max_parallelism == 0 {
            "unbounded".to_string()
        } else {
            max_parallelism.to_string()
        }
    );
    println!("labels:");
    for (k, v) in labels {
        println!("  {k}={v}");
    }
    if rules.is_empty() {
        println!("GC policy:   off");
    } else {
        println!("GC policy:");
        for (i, r) in rules.iter().enumerate() {
            println!(
                "  {}. keep {:.1} MB{}{}{}",
                i + 1,
                r.keep_bytes as f64 / 1e6,
                if r.keep_duration.is_zero() {
                    String::new()
                } else {
                    format!(", remove unused for {} h", r.keep_duration.as_secs() / 3600)
                },
                if r.all { ", all records" } else { "" },
                if r.filters.is_empty() {
                    String::new()
                } else {
                    format!(", any of: {}", r.filters.join(" | "))
                }
            );
        }
    }
    Ok(())
}

fn prune(a: PruneArgs) -> anyhow::Result<()> {
    let keep_mb = a
        .keep_storage_mb
        .map(|mb| {
            u64::try_from(mb)
                .map_err(|_| anyhow::anyhow!("--keep-storage {mb}: must not be negative"))
        })
        .transpose()?;
    let scope = match (a.all, keep_mb) {
        (true, _) => PruneScope::Everything,
        (false, Some(mb)) => PruneScope::KeepBytes(mb.saturating_mul(1_000_000)),
        (false, None) => PruneScope::Policy,
    };
    let settings = a
        .oci
        .settings(a.config.as_deref(), &RegistryOverrides::default())?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let opened = OciWorker::open(&a.root, &settings, LockMode::Exclusive, rt.handle())?;
    let r = opened.prune(scope).context("pruning")?;
    for (name, size) in &r.removed {
        println!("removed {name} ({:.1} MB)", *size as f64 / 1e6);
    }
    println!(
        "pruned {} snapshots, {} cache records, {} layer blobs: freed {:.1} MB; {:.1} MB remain ({} snapshotter in {})",
        r.removed.len(),
        r.records,
        r.blobs,
        r.freed as f64 / 1e6,
        r.remaining as f64 / 1e6,
        opened.snapshotter(),
        opened.state_dir().display()
    );
    Ok(())
}
