//! The OCI worker, opened by one call: [`OciWorker::open`] takes the resolved
//! [`WorkerSettings`] (config file, then flags) and assembles everything a build runs on —
//! the runtime binary, the snapshotter by name (auto-probed, stargz with its chunk cache, or
//! a proxy socket), the executor with its network (host, none or CNI), the content store, the
//! step cache and the registry client — all under `ROOT/runc-<snapshotter>/`, held by a
//! [`StateLock`]. It also runs the GC policy: after a build when GC is on, or on demand.
//!
//! Commands (`stargaze build`, `stargaze worker …`) only turn their flags into settings, call
//! this, and print; a daemon can call the same entry point.
//!
//! Reading order: `settings` (precedence), `resolve` (what `auto` becomes here), `lock`,
//! then this file; `info` describes a worker without opening it.

mod error;
mod info;
mod lock;
mod resolve;
mod settings;

pub use error::OpenError;
pub use info::{Enabled, WorkerInfo};
pub use lock::{LockMode, StateLock};
pub use resolve::{network_choice, runtime_binary, snapshotter_choice};
pub use settings::WorkerSettings;

use crate::config::{GcPolicy, OciWorkerConfig};
use crate::executor::cni::CniConfig;
use crate::executor::{Executor, ExecutorOptions, NetworkKind, NetworkMode};
use crate::frontend::cache::StepCache;
use crate::frontend::Worker;
use crate::gc::PruneReport;
use crate::grpc::proxy::ProxySnapshotter;
use crate::identity::{state_dir, worker_id};
use crate::records::UsageInfo;
use crate::snapshot::open::{open_local, open_stargz};
use crate::snapshot::stargz::lazy::LazyOptions;
use crate::snapshot::stargz::Stargz;
use crate::snapshot::{Backend, SnapshotError, Snapshotter};
use stargaze_fs::cache::DiskCache;
use stargaze_fs::image::OciLayout;
use stargaze_fs::remote::RegistryClient;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Disk chunk cache cap of the worker's stargz snapshotter.
const CHUNK_CACHE_BYTES: u64 = 10 << 30;
/// Memory chunk cache of the worker's stargz snapshotter, MiB.
const MEMORY_CACHE_MIB: u64 = 256;

/// What an on-demand GC removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneScope {
    /// The configured policy (applied even when automatic GC is off).
    Policy,
    /// Records until they use at most this many bytes.
    KeepBytes(u64),
    /// Every record nothing stands on.
    Everything,
}

/// An open worker. Dropping it unmounts the stargz snapshotter's lazy layers and releases
/// the state directory.
pub struct OciWorker {
    id: String,
    cancel: tokio::sync::watch::Sender<bool>,
    worker: Arc<Worker>,
    cfg: OciWorkerConfig,
    root: PathBuf,
    snapshotter: Backend,
    state: PathBuf,
    stargz: Option<Arc<Stargz>>,
    _lock: StateLock,
}

impl Drop for OciWorker {
    fn drop(&mut self) {
        if let Some(s) = &self.stargz {
            s.unmount_all();
        }
    }
}

fn dir(path: &Path) -> Result<(), OpenError> {
    stargaze_fs::sys::private_dir(path).map_err(|source| OpenError::Dir {
        path: path.to_path_buf(),
        source,
    })
}

impl OciWorker {
    /// Opens the worker at `root` with `settings`, holding its state directory in `lock`
    /// mode. Lazy reads and steps run on `rt`; not to be called from inside it (a proxy
    /// snapshotter is connected with `block_on`).
    pub fn open(
        root: &Path,
        settings: &WorkerSettings,
        lock: LockMode,
        rt: &tokio::runtime::Handle,
    ) -> Result<OciWorker, OpenError> {
        let cfg = &settings.oci;
        if cfg.enabled == Some(false) {
            return Err(OpenError::Disabled);
        }
        let binary = runtime_binary(cfg).ok_or_else(|| OpenError::NoRuntime {
            tried: resolve::runtime_names(cfg),
        })?;
        let (name, why) = snapshotter_choice(cfg, root)?;
        tracing::info!(snapshotter = %name, %why, "snapshotter");
        let state = state_dir(root, name)?;
        let id = worker_id(&state)?;
        tracing::debug!(worker = %id, "worker ID");
        let held = StateLock::take(&state, lock)?;
        let client = Arc::new(settings.registry_client()?);
        let (snapshotter, stargz) = open_snapshotter(cfg, name, &state, client.clone(), rt)?;
        let network = match network_choice(cfg) {
            NetworkKind::Host | NetworkKind::Auto => NetworkMode::Host,
            NetworkKind::Cni => {
                NetworkMode::Cni(CniConfig::load(&cfg.cni_config_path, &cfg.cni_binary_dir)?)
            }
        };
        let executor = Executor::new(ExecutorOptions {
            binary,
            dir: state.join("executor"),
            network,
            process_sandbox: !cfg.no_process_sandbox,
            apparmor_profile: Some(cfg.apparmor_profile.clone()).filter(|p| !p.is_empty()),
            rootless: cfg.rootless,
        })?;
        let content = OciLayout::open_or_create(&state.join("content"))?;
        let cache_dir = state.join("cache");
        let cache = StepCache::open(&cache_dir).map_err(|source| OpenError::StepCache {
            path: cache_dir,
            source,
        })?;
        let tmp = state.join("tmp");
        dir(&tmp)?;
        let permits = if cfg.max_parallelism == 0 {
            tokio::sync::Semaphore::MAX_PERMITS
        } else {
            cfg.max_parallelism.min(tokio::sync::Semaphore::MAX_PERMITS)
        };
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        let worker = Arc::new(Worker {
            cancel: cancelled,
            snapshotter,
            executor: Arc::new(executor),
            client,
            content,
            cache,
            tmp,
            cache_mounts: state.join("cache-mounts"),
            parallelism: Arc::new(tokio::sync::Semaphore::new(permits)),
            rt: rt.clone(),
        });
        Ok(OciWorker {
            id,
            cancel,
            worker,
            cfg: cfg.clone(),
            root: root.to_path_buf(),
            snapshotter: name,
            state,
            stargz,
            _lock: held,
        })
    }

    /// The worker ID (kept in the state directory).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What builds run on.
    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }

    /// Sending `true` cancels running steps (they are killed through the runtime, then
    /// cleaned up).
    pub fn canceller(&self) -> tokio::sync::watch::Sender<bool> {
        self.cancel.clone()
    }

    /// The registry client builds pull and push with.
    pub fn client(&self) -> &Arc<RegistryClient> {
        &self.worker.client
    }

    /// The snapshotter in use (`auto` resolved).
    pub fn snapshotter(&self) -> Backend {
        self.snapshotter
    }

    /// `ROOT/runc-<snapshotter>`.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// Bytes fetched and total size of the layers the stargz snapshotter mounted lazily;
    /// `None` with another snapshotter.
    pub fn lazy_fetched(&self) -> Option<(u64, u64)> {
        self.stargz.as_ref().map(|sg| {
            sg.layers().iter().fold((0, 0), |(f, s), l| {
                (f + l.counters().bytes_fetched, s + l.size())
            })
        })
    }

    /// The GC policy after a build: `None` with GC off; a failure is logged, not returned
    /// (the build itself succeeded).
    pub fn collect_after_build(&self) -> Option<PruneReport> {
        let rules = self.cfg.gc_rules(&self.root);
        if rules.is_empty() {
            return None;
        }
        match self.prune_rules(&rules, false) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "GC after the build failed");
                None
            }
        }
    }

    /// GC on demand (open the worker with [`LockMode::Exclusive`] for it).
    pub fn prune(&self, scope: PruneScope) -> Result<PruneReport, SnapshotError> {
        match scope {
            PruneScope::Everything => self.prune_rules(&[], true),
            PruneScope::KeepBytes(bytes) => {
                let rule = GcPolicy {
                    all: true,
                    keep_bytes: i64::try_from(bytes).unwrap_or(i64::MAX).max(1),
                    keep_duration: std::time::Duration::ZERO,
                    filters: Vec::new(),
                };
                self.prune_rules(&[rule], false)
            }
            PruneScope::Policy => {
                let cfg = OciWorkerConfig {
                    gc: true,
                    ..self.cfg.clone()
                };
                self.prune_rules(&cfg.gc_rules(&self.root), false)
            }
        }
    }

    /// GC by one rule given by a caller (a client's prune request), returning what went.
    pub fn prune_rule(&self, rule: &GcPolicy) -> Result<PruneReport, SnapshotError> {
        self.prune_rules(std::slice::from_ref(rule), false)
    }

    /// Every build record, for disk-usage listings.
    pub fn usage(&self) -> Result<Vec<UsageInfo>, SnapshotError> {
        crate::records::usage(self.worker.snapshotter.as_ref(), &self.worker.cache)
    }

    /// The GC rules in force (none with GC off).
    pub fn gc_rules(&self) -> Vec<GcPolicy> {
        self.cfg.gc_rules(&self.root)
    }

    /// The settings' `[worker.oci]` in force.
    pub fn config(&self) -> &OciWorkerConfig {
        &self.cfg
    }

    fn prune_rules(
        &self,
        rules: &[GcPolicy],
        everything: bool,
    ) -> Result<PruneReport, SnapshotError> {
        let w = &self.worker;
        crate::gc::prune(
            w.snapshotter.as_ref(),
            &w.cache,
            &w.content,
            rules,
            everything,
        )
    }
}

/// A snapshotter, and the same as stargz when it is that one (for its figures and unmount).
type Opened = (Arc<dyn Snapshotter>, Option<Arc<Stargz>>);

/// The snapshotter `name` under `state/snapshots`, or the proxy socket `cfg` names.
fn open_snapshotter(
    cfg: &OciWorkerConfig,
    name: Backend,
    state: &Path,
    client: Arc<RegistryClient>,
    rt: &tokio::runtime::Handle,
) -> Result<Opened, OpenError> {
    if let Some(sock) = &cfg.proxy_snapshotter_path {
        let proxy = rt
            .block_on(ProxySnapshotter::connect(sock, name.as_str(), rt.clone()))
            .map_err(|source| OpenError::Proxy {
                path: sock.clone(),
                source,
            })?;
        return Ok((Arc::new(proxy), None));
    }
    let snaps = state.join("snapshots");
    let snapshotter_err = |source| OpenError::Snapshotter {
        path: snaps.clone(),
        source,
    };
    match name {
        Backend::Stargz => {
            dir(&snaps)?;
            let chunks = state.join("chunks");
            let disk = DiskCache::open(&chunks, CHUNK_CACHE_BYTES).map_err(|source| {
                OpenError::ChunkCache {
                    path: chunks.clone(),
                    source,
                }
            })?;
            // A build process is short-lived: no background fetch of whole layers.
            let lazy = LazyOptions {
                background: None,
                ..LazyOptions::default()
            };
            let s = open_stargz(&snaps, client, disk, MEMORY_CACHE_MIB, lazy, rt, None)
                .map_err(snapshotter_err)?;
            Ok((s.clone(), Some(s)))
        }
        local => Ok((open_local(local, &snaps).map_err(snapshotter_err)?, None)),
    }
}
