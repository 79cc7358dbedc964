//! `stargaze worker …`: the BuildKit-style OCI worker. Its flags carry buildkitd's names
//! (`--oci-worker-*`) and override the config file's `[worker.oci]`; `worker info` prints the
//! resolved worker: ID, whether it runs and with which runtime, snapshotter, network,
//! platforms, labels and GC policy.

use anyhow::Context;
use clap::{Args, Subcommand};
use stargaze_fs::remote::Platform;
use stargaze_worker::config::{Config, OciWorkerConfig, OciWorkerFlags};
use stargaze_worker::executor::NetworkKind;
use stargaze_worker::identity::{labels, state_dir, worker_id};
use stargaze_worker::snapshot::Backend;
use std::path::{Path, PathBuf};

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

/// buildkitd's OCI worker flags; each given flag overrides the config file.
#[derive(Args, Clone, Default)]
pub struct OciWorkerArgs {
    /// Enable the OCI worker: true, false or auto (when a runtime binary exists).
    #[arg(long = "oci-worker", value_name = "true|false|auto")]
    enabled: Option<String>,
    /// Worker label KEY=VALUE (repeatable).
    #[arg(long = "oci-worker-labels", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Snapshotter: auto, overlayfs, fuse-overlayfs, native, stargz.
    #[arg(long = "oci-worker-snapshotter")]
    snapshotter: Option<Backend>,
    /// A containerd snapshots gRPC socket to use as the snapshotter.
    #[arg(long = "oci-worker-proxy-snapshotter-path")]
    proxy_snapshotter_path: Option<PathBuf>,
    /// Platform to build for, OS/ARCH[/VARIANT] (repeatable).
    #[arg(long = "oci-worker-platform")]
    platforms: Vec<String>,
    /// Network mode: auto, host, cni.
    #[arg(long = "oci-worker-net")]
    net: Option<NetworkKind>,
    /// CNI config file.
    #[arg(long = "oci-cni-config-path")]
    cni_config_path: Option<PathBuf>,
    /// CNI plugin directory.
    #[arg(long = "oci-cni-binary-dir")]
    cni_binary_dir: Option<PathBuf>,
    /// OCI runtime binary (default: buildkit-runc, then runc).
    #[arg(long = "oci-worker-binary")]
    binary: Option<String>,
    /// AppArmor profile for build steps.
    #[arg(long = "oci-worker-apparmor-profile")]
    apparmor_profile: Option<String>,
    /// Rootless mode.
    #[arg(long = "oci-worker-rootless", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    rootless: Option<bool>,
    /// Steps without their own PID namespace (rootless only).
    #[arg(long = "oci-worker-no-process-sandbox", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    no_process_sandbox: Option<bool>,
    /// Garbage collection [default: true].
    #[arg(long = "oci-worker-gc", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    gc: Option<bool>,
    /// GC keep-storage in MB [default: 10% of the disk, rounded up to whole GB].
    #[arg(long = "oci-worker-gc-keepstorage", value_name = "MB")]
    gc_keep_storage_mb: Option<i64>,
    /// Steps run at once (0: unbounded).
    #[arg(long = "oci-max-parallelism")]
    max_parallelism: Option<usize>,
}

impl OciWorkerArgs {
    /// As the library's flag set.
    pub fn flags(&self) -> OciWorkerFlags {
        OciWorkerFlags {
            enabled: self.enabled.clone(),
            labels: self.labels.clone(),
            snapshotter: self.snapshotter,
            proxy_snapshotter_path: self.proxy_snapshotter_path.clone(),
            platforms: self.platforms.clone(),
            net: self.net,
            cni_config_path: self.cni_config_path.clone(),
            cni_binary_dir: self.cni_binary_dir.clone(),
            binary: self.binary.clone(),
            apparmor_profile: self.apparmor_profile.clone(),
            rootless: self.rootless,
            no_process_sandbox: self.no_process_sandbox,
            gc: self.gc,
            gc_keep_storage_mb: self.gc_keep_storage_mb,
            max_parallelism: self.max_parallelism,
        }
    }
}

/// Runs the subcommand.
pub fn run(a: WorkerArgs) -> anyhow::Result<()> {
    match a.command {
        WorkerCommand::Info(i) => info(i),
        WorkerCommand::Prune(p) => prune(p),
    }
}

/// The config file's `[worker.oci]` with the flags applied.
pub fn resolve(config: Option<&Path>, oci: &OciWorkerArgs) -> anyhow::Result<OciWorkerConfig> {
    let file = match config {
        Some(p) => Config::load(p)?,
        None => Config::load_default()?,
    };
    let mut cfg = file.oci_worker;
    cfg.apply(&oci.flags()).context("worker flags")?;
    if let Some(p) = &cfg.proxy_snapshotter_path {
        anyhow::ensure!(
            p.exists(),
            "--oci-worker-proxy-snapshotter-path {}: no such socket",
            p.display()
        );
    }
    Ok(cfg)
}

/// The runtime binary the worker would run: the configured one, else buildkit-runc, else runc.
pub fn runtime_binary(cfg: &OciWorkerConfig) -> Option<PathBuf> {
    let names: Vec<&str> = if cfg.binary.is_empty() {
        vec!["buildkit-runc", "runc"]
    } else {
        vec![cfg.binary.as_str()]
    };
    names.into_iter().find_map(|n| {
        let p = Path::new(n);
        if p.components().count() > 1 {
            return p.is_file().then(|| p.to_path_buf());
        }
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(n))
                .find(|c| c.is_file())
        })
    })
}

fn info(a: InfoArgs) -> anyhow::Result<()> {
    let cfg = resolve(a.config.as_deref(), &a.oci)?;
    stargaze_fs::sys::private_dir(&a.root)
        .with_context(|| format!("creating {}", a.root.display()))?;
    let (snapshotter, why) = super::oci_worker::snapshotter_name(&cfg, &a.root);
    let network = super::oci_worker::network_name(&cfg);
    let dir = state_dir(&a.root, snapshotter)?;
    let id = worker_id(&dir)?;
    let binary = runtime_binary(&cfg);
    let enabled = match (cfg.enabled, &binary) {
        (Some(false), _) => "no (disabled)".to_string(),
        (_, Some(b)) => format!("yes ({})", b.display()),
        (Some(true), None) => anyhow::bail!(
            "the OCI worker is enabled but no runtime binary was found ({})",
            if cfg.binary.is_empty() {
                "buildkit-runc, runc"
            } else {
                &cfg.binary
            }
        ),
        (None, None) => {
            tracing::warn!(
                "skipping the OCI worker: no runtime binary (buildkit-runc, runc) found"
            );
            "no (auto: no runtime binary found)".to_string()
        }
    };
    let platforms = if cfg.platforms.is_empty() {
        vec![Platform::host()]
    } else {
        cfg.platforms.clone()
    };
    println!("ID:          {id}");
    println!("enabled:     {enabled}");
    println!("snapshotter: {snapshotter} ({why})");
    if let Some(p) = &cfg.proxy_snapshotter_path {
        println!("proxy:       {}", p.display());
    }
    println!("network:     {network}");
    println!(
        "cni:         config {}, plugins {}",
        cfg.cni_config_path.display(),
        cfg.cni_binary_dir.display()
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
        if cfg.max_parallelism == 0 {
            "unbounded".to_string()
        } else {
            cfg.max_parallelism.to_string()
        }
    );
    println!("labels:");
    for (k, v) in labels(&cfg, snapshotter, network) {
        println!("  {k}={v}");
    }
    let rules = cfg.gc_rules(&a.root);
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
    let mut cfg = resolve(a.config.as_deref(), &a.oci)?;
    let rules = match a.keep_storage_mb {
        Some(mb) => {
            anyhow::ensure!(mb >= 0, "--keep-storage {mb}: must not be negative");
            vec![stargaze_worker::config::GcPolicy {
                all: true,
                keep_bytes: mb.saturating_mul(1_000_000).max(1),
                keep_duration: std::time::Duration::ZERO,
                filters: Vec::new(),
            }]
        }
        None => {
            // On demand, the policy applies even when automatic GC is off.
            cfg.gc = true;
            cfg.gc_rules(&a.root)
        }
    };
    let client = std::sync::Arc::new(
        super::remote::HostFlags::default().client(stargaze_fs::remote::ClientOptions::default())?,
    );
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let opened = super::oci_worker::open(&a.root, cfg, client, &rt, true)?;
    let w = &opened.worker;
    let r = stargaze_worker::gc::prune(w.snapshotter.as_ref(), &w.cache, &w.content, &rules, a.all)
        .context("pruning")?;
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
        opened.snapshotter,
        opened.state.display()
    );
    Ok(())
}
