//! The resolved worker as `worker info` shows it, without opening it: its ID, whether it runs
//! and with which runtime, the snapshotter and why, the network, platforms, parallelism,
//! labels and the GC policy in force.

use super::resolve::{network_choice, runtime_binary, runtime_names, snapshotter_choice};
use super::{OpenError, WorkerSettings};
use crate::config::GcPolicy;
use crate::executor::NetworkKind;
use crate::identity::{labels, state_dir, worker_id};
use crate::snapshot::Backend;
use stargaze_fs::remote::Platform;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Whether the worker would run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enabled {
    /// Disabled by the config or a flag.
    Disabled,
    /// Runs with this runtime binary.
    Runtime(PathBuf),
    /// Auto, and no runtime binary was found.
    NoRuntime,
}

/// What `worker info` prints.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The worker ID.
    pub id: String,
    /// Whether it runs.
    pub enabled: Enabled,
    /// Snapshotter in use (`auto` resolved).
    pub snapshotter: Backend,
    /// Why that one.
    pub why: String,
    /// The proxy snapshotter socket, if any.
    pub proxy: Option<PathBuf>,
    /// Network mode in use (`auto` resolved).
    pub network: NetworkKind,
    /// CNI config file.
    pub cni_config_path: PathBuf,
    /// CNI plugin directory.
    pub cni_binary_dir: PathBuf,
    /// Platforms built for.
    pub platforms: Vec<Platform>,
    /// Steps at once; 0 means unbounded.
    pub max_parallelism: usize,
    /// Built-in labels with the user's merged over them.
    pub labels: BTreeMap<String, String>,
    /// GC rules in force; empty with GC off.
    pub gc_rules: Vec<GcPolicy>,
}

impl WorkerInfo {
    /// Resolves `settings` for the worker at `root` (created, with its state directory and ID).
    pub fn resolve(root: &Path, settings: &WorkerSettings) -> Result<WorkerInfo, OpenError> {
        let cfg = &settings.oci;
        let (snapshotter, why) = snapshotter_choice(cfg, root)?;
        let network = network_choice(cfg);
        let id = worker_id(&state_dir(root, snapshotter)?)?;
        let enabled = match (cfg.enabled, runtime_binary(cfg)) {
            (Some(false), _) => Enabled::Disabled,
            (_, Some(b)) => Enabled::Runtime(b),
            (Some(true), None) => {
                return Err(OpenError::EnabledWithoutRuntime {
                    tried: runtime_names(cfg),
                })
            }
            (None, None) => {
                tracing::warn!(
                    tried = %runtime_names(cfg),
                    "skipping the OCI worker: no runtime binary found"
                );
                Enabled::NoRuntime
            }
        };
        let platforms = if cfg.platforms.is_empty() {
            vec![Platform::host()]
        } else {
            cfg.platforms.clone()
        };
        Ok(WorkerInfo {
            id,
            enabled,
            labels: labels(cfg, snapshotter, network),
            snapshotter,
            why,
            proxy: cfg.proxy_snapshotter_path.clone(),
            network,
            cni_config_path: cfg.cni_config_path.clone(),
            cni_binary_dir: cfg.cni_binary_dir.clone(),
            platforms,
            max_parallelism: cfg.max_parallelism,
            gc_rules: cfg.gc_rules(root),
        })
    }
}
