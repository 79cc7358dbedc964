//! The containerd snapshots gRPC daemon (`stargaze snapshotter serve`), assembled in three
//! steps because of the FUSE holder: [`SnapshotterDaemon::prepare`] runs while the process
//! is still single-threaded (reads the config, checks the socket path, forks or reaches the
//! holder that keeps lazy layers' FUSE connections across restarts), [`Prepared::open`]
//! opens the snapshotter on the runtime (which may remount lazy layers and so waits on
//! registries), and [`SnapshotterDaemon::serve`] serves until its shutdown future resolves;
//! [`SnapshotterDaemon::stop`] then unmounts what no container uses. Snapshots stay.
//!
//! `options` holds the settings' precedence (flag, then config file, then default), `process`
//! the allocator and runtime set-up.

mod options;
mod process;

pub use options::{DaemonOptions, DEFAULT_CONFIG};
pub use process::{runtime, tune_allocator};

use crate::config::{ConfigError, SnapshotterConfig};
use crate::peer::{PeerError, PeerPolicy};
use crate::registry_client::RegistrySetupError;
use crate::snapshot::open::{open_local, open_stargz};
use crate::snapshot::stargz::holder::Holder;
use crate::snapshot::stargz::Stargz;
use crate::snapshot::{Backend, SnapshotError, Snapshotter};
use stargaze_fs::cache::{DiskCache, DiskCacheError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Why the daemon could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config file could not be read or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config's metrics address is not `IP:PORT`.
    #[error("config metrics_address {value:?}: {source}")]
    MetricsAddress {
        /// As written.
        value: String,
        /// Cause.
        #[source]
        source: std::net::AddrParseError,
    },
    /// The socket path cannot work.
    #[error("--address: {0}")]
    Address(#[from] PeerError),
    /// The root directory could not be made.
    #[error("creating {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The FUSE holder could not be reached or started.
    #[error("starting the FUSE holder: {0}")]
    Holder(#[source] std::io::Error),
    /// The chunk cache could not be opened.
    #[error("opening the chunk cache {}: {source}", .path.display())]
    ChunkCache {
        /// Its directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: DiskCacheError,
    },
    /// The registry client could not be assembled.
    #[error(transparent)]
    Registry(#[from] RegistrySetupError),
    /// The snapshotter could not be opened.
    #[error("opening the snapshotter at {}: {source}", .path.display())]
    Snapshotter {
        /// Its root.
        path: PathBuf,
        /// Cause.
        #[source]
        source: SnapshotError,
    },
    /// Serving failed.
    #[error("serving: {0}")]
    Serve(#[source] SnapshotError),
}

/// Started before the runtime: config read, socket path checked, FUSE holder reached.
pub struct Prepared {
    opts: DaemonOptions,
    cfg: SnapshotterConfig,
    metrics: Option<SocketAddr>,
    holder: Option<Holder>,
}

/// A daemon with its snapshotter open.
pub struct SnapshotterDaemon {
    opts: DaemonOptions,
    metrics: Option<SocketAddr>,
    snapshotter: Arc<dyn Snapshotter>,
    stargz: Option<Arc<Stargz>>,
}

/// What the stargz snapshotter did, reported at the stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LazySummary {
    /// Layers mounted lazily.
    pub lazy_mounts: u64,
    /// Remote prepares that fell back to a normal pull.
    pub fallbacks: u64,
    /// Remote snapshots remounted.
    pub remounts: u64,
    /// Layers in use by containers, left mounted for the next start.
    pub kept: usize,
}

impl SnapshotterDaemon {
    /// The first step, while the process is single-threaded: a bad config file or socket
    /// path stops the start before anything is forked or mounted.
    pub fn prepare(opts: DaemonOptions) -> Result<Prepared, DaemonError> {
        let cfg = options::load_config(opts.config.as_deref())?;
        crate::peer::check_path(&opts.address)?;
        let metrics = opts.metrics(&cfg)?;
        let holder = match opts.backend {
            Backend::Stargz => {
                stargaze_fs::sys::private_dir(&opts.root).map_err(|source| DaemonError::Dir {
                    path: opts.root.clone(),
                    source,
                })?;
                Some(
                    Holder::connect_or_fork(&opts.root, &opts.run_dir)
                        .map_err(DaemonError::Holder)?,
                )
            }
            _ => None,
        };
        Ok(Prepared {
            opts,
            cfg,
            metrics,
            holder,
        })
    }

    /// The snapshotter served.
    pub fn snapshotter(&self) -> &Arc<dyn Snapshotter> {
        &self.snapshotter
    }

    /// The options it was started with.
    pub fn options(&self) -> &DaemonOptions {
        &self.opts
    }

    /// Serves the snapshots API (and the metrics endpoint, with stargz) until `shutdown`
    /// resolves.
    pub async fn serve(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), DaemonError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(s) = &self.stargz {
            tokio::spawn(s.clone().release_memory_after_activity());
        }
        if let (Some(addr), Some(s)) = (self.metrics, &self.stargz) {
            let mut rx = stop_rx.clone();
            let listener = crate::metrics::serve(addr, s.clone(), async move {
                let _ = rx.wait_for(|v| *v).await;
            });
            tokio::spawn(async move {
                if let Err(e) = listener.await {
                    tracing::error!(%addr, error = %e, "metrics endpoint failed");
                }
            });
        }
        let served = crate::grpc::serve(
            &self.opts.address,
            self.snapshotter.clone(),
            PeerPolicy {
                group: self.opts.group,
            },
            shutdown,
        )
        .await;
        let _ = stop_tx.send(true);
        served.map_err(DaemonError::Serve)
    }

    /// Stops: unmounts the lazy layers no container uses; `None` without stargz.
    pub fn stop(self) -> Option<LazySummary> {
        let s = self.stargz?;
        let c = s.counters();
        let kept = s.shutdown();
        Some(LazySummary {
            lazy_mounts: c.lazy_mounts.load(Ordering::Relaxed),
            fallbacks: c.fallbacks.load(Ordering::Relaxed),
            remounts: c.remounts.load(Ordering::Relaxed),
            kept,
        })
    }
}

impl Prepared {
    /// The second step: opens the snapshotter, serving lazy reads on `rt` (not from inside
    /// it: remounting lazy layers waits on registries).
    pub fn open(self, rt: &tokio::runtime::Handle) -> Result<SnapshotterDaemon, DaemonError> {
        let Prepared {
            opts,
            cfg,
            metrics,
            holder,
        } = self;
        let root = opts.root.clone();
        let snapshotter_err = |source| DaemonError::Snapshotter {
            path: root.clone(),
            source,
        };
        let (snapshotter, stargz): (Arc<dyn Snapshotter>, _) = match (opts.backend, holder) {
            (Backend::Stargz, holder) => {
                let caches = opts.caches(&cfg);
                let disk = DiskCache::open(&caches.dir, caches.disk_bytes).map_err(|source| {
                    DaemonError::ChunkCache {
                        path: caches.dir.clone(),
                        source,
                    }
                })?;
                let client = opts.registry.client(DaemonOptions::client_options(&cfg))?;
                let s = open_stargz(
                    &root,
                    Arc::new(client),
                    disk,
                    caches.memory_mib,
                    opts.lazy(&cfg),
                    rt,
                    holder,
                )
                .map_err(snapshotter_err)?;
                (s.clone(), Some(s))
            }
            (local, _) => (open_local(local, &root).map_err(snapshotter_err)?, None),
        };
        Ok(SnapshotterDaemon {
            opts,
            metrics,
            snapshotter,
            stargz,
        })
    }
}
