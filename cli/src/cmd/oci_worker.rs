//! Opening the OCI worker for a command that uses it (`build`, `worker prune`): the runtime
//! binary, the snapshotter by name (auto-probed, stargz with its chunk cache, or a proxy
//! socket), the executor, the content store and step cache — all under
//! `ROOT/runc-<snapshotter>/` — and a lock on that directory: shared while building, so
//! builds run side by side, exclusive while pruning, so GC never races a build.

use super::snapshotter::{open_local, stargz_at};
use super::worker::runtime_binary;
use anyhow::Context;
use stargaze_fs::cache::DiskCache;
use stargaze_fs::image::OciLayout;
use stargaze_fs::remote::RegistryClient;
use stargaze_worker::config::OciWorkerConfig;
use stargaze_worker::executor::{Executor, ExecutorOptions, NetworkKind, NetworkMode};
use stargaze_worker::frontend::cache::StepCache;
use stargaze_worker::frontend::Worker;
use stargaze_worker::identity::{state_dir, worker_id};
use stargaze_worker::snapshot::stargz::lazy::LazyOptions;
use stargaze_worker::snapshot::stargz::Stargz;
use stargaze_worker::snapshot::{Backend, Snapshotter};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open worker.
pub struct OpenWorker {
    /// Cancels running steps (they are killed through the runtime, then cleaned up).
    pub cancel: tokio::sync::watch::Sender<bool>,
    /// What builds run on.
    pub worker: Arc<Worker>,
    /// The resolved settings.
    pub cfg: OciWorkerConfig,
    /// Snapshotter in use.
    pub snapshotter: Backend,
    /// `ROOT/runc-<snapshotter>`.
    pub state: PathBuf,
    /// The stargz snapshotter, when that is the one (for its figures and shutdown).
    pub stargz: Option<Arc<Stargz>>,
    _lock: std::fs::File,
}

impl Drop for OpenWorker {
    fn drop(&mut self) {
        if let Some(s) = &self.stargz {
            s.unmount_all();
        }
    }
}

/// The snapshotter `cfg` names, with auto resolved by probing `root`, and why.
pub fn snapshotter_name(cfg: &OciWorkerConfig, root: &Path) -> (Backend, String) {
    cfg.snapshotter.resolve(root)
}

/// The network mode `cfg` resolves to (rootless: host; auto: cni when its config exists).
pub fn network_name(cfg: &OciWorkerConfig) -> NetworkKind {
    cfg.network_mode.resolve(cfg.rootless, &cfg.cni_config_path)
}

fn lock(dir: &Path, exclusive: bool) -> anyhow::Result<std::fs::File> {
    let path = dir.join("worker.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
        anyhow::bail!(
            "{} is busy ({}); try again when it finishes",
            dir.display(),
            if exclusive {
                "a build is running"
            } else {
                "a prune is running"
            }
        );
    }
    Ok(f)
}

/// Opens the worker at `root`.
pub fn open(
    root: &Path,
    cfg: OciWorkerConfig,
    client: Arc<RegistryClient>,
    rt: &tokio::runtime::Runtime,
    exclusive: bool,
) -> anyhow::Result<OpenWorker> {
    if cfg.enabled == Some(false) {
        anyhow::bail!("the OCI worker is disabled (--oci-worker=false)");
    }
    let binary = runtime_binary(&cfg).with_context(|| {
        format!(
            "no OCI worker: runtime binary not found ({})",
            if cfg.binary.is_empty() {
                "buildkit-runc, runc"
            } else {
                &cfg.binary
            }
        )
    })?;
    stargaze_fs::sys::private_dir(root).with_context(|| format!("creating {}", root.display()))?;
    let (name, why) = snapshotter_name(&cfg, root);
    tracing::info!(snapshotter = %name, %why, "snapshotter");
    let state = state_dir(root, name)?;
    let id = worker_id(&state)?;
    tracing::debug!(worker = %id, "worker ID");
    let lock = lock(&state, exclusive)?;
    let snaps = state.join("snapshots");
    let mut stargz = None;
    let snapshotter: Arc<dyn Snapshotter> = if let Some(sock) = &cfg.proxy_snapshotter_path {
        Arc::new(
            rt.block_on(stargaze_worker::grpc::proxy::ProxySnapshotter::connect(
                sock,
                name.as_str(),
                rt.handle().clone(),
            ))
            .with_context(|| format!("--oci-worker-proxy-snapshotter-path {}", sock.display()))?,
        )
    } else {
        match name {
            Backend::Stargz => {
                stargaze_fs::sys::private_dir(&snaps)
                    .with_context(|| format!("creating {}", snaps.display()))?;
                let chunks = state.join("chunks");
                let disk = DiskCache::open(&chunks, 10 << 30)
                    .with_context(|| format!("opening the chunk cache {}", chunks.display()))?;
                // A build process is short-lived: no background fetch of whole layers.
                let lazy = LazyOptions {
                    background: None,
                    ..LazyOptions::default()
                };
                let s = stargz_at(&snaps, client.clone(), disk, 256, lazy, rt.handle(), None)?;
                stargz = Some(s.clone());
                s
            }
            local => open_local(local, &snaps)?,
        }
    };
    let network = match network_name(&cfg) {
        NetworkKind::Host | NetworkKind::Auto => NetworkMode::Host,
        NetworkKind::Cni => NetworkMode::Cni(
            stargaze_worker::executor::cni::CniConfig::load(
                &cfg.cni_config_path,
                &cfg.cni_binary_dir,
            )
            .context("--oci-worker-net=cni")?,
        ),
    };
    let executor = Executor::new(ExecutorOptions {
        binary,
        dir: state.join("executor"),
        network,
        process_sandbox: !cfg.no_process_sandbox,
        apparmor_profile: Some(cfg.apparmor_profile.clone()).filter(|p| !p.is_empty()),
        rootless: cfg.rootless,
    })
    .context("setting up the executor")?;
    let content =
        OciLayout::open_or_create(&state.join("content")).context("opening the content store")?;
    let cache = StepCache::open(&state.join("cache")).context("opening the step cache")?;
    let tmp = state.join("tmp");
    stargaze_fs::sys::private_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let permits = if cfg.max_parallelism == 0 {
        tokio::sync::Semaphore::MAX_PERMITS
    } else {
        cfg.max_parallelism
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
        parallelism: Arc::new(tokio::sync::Semaphore::new(permits)),
        rt: rt.handle().clone(),
    });
    Ok(OpenWorker {
        cancel,
        worker,
        cfg,
        snapshotter: name,
        state,
        stargz,
        _lock: lock,
    })
}
