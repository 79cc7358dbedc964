//! The snapshotter daemon's settings in their order of precedence: a flag given, else the
//! containerd-stargz-grpc style config file (`/etc/stargaze/snapshotter.toml` when no file is
//! named and it exists), else the default. Turned here into the registry client's options and
//! the lazy layers' FUSE and prefetch options.

use crate::config::SnapshotterConfig;
use crate::registry_client::RegistryOverrides;
use crate::snapshot::stargz::lazy::{LazyOptions, ProfileOptions};
use crate::snapshot::Backend;
use stargaze_fs::fuse::FsOptions;
use stargaze_fs::layer::BackgroundOptions;
use stargaze_fs::profile::ProfileStore;
use stargaze_fs::remote::ClientOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The config file read when none is named and it exists.
pub const DEFAULT_CONFIG: &str = "/etc/stargaze/snapshotter.toml";

/// What the daemon is started with (flags; `None` and `false` defer to the config file).
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Unix socket to listen on.
    pub address: PathBuf,
    /// Numeric group whose members may use the socket too.
    pub group: Option<u32>,
    /// Directory for snapshots and the metadata store.
    pub root: PathBuf,
    /// Backend.
    pub backend: Backend,
    /// Config file; `None`: [`DEFAULT_CONFIG`] when it exists.
    pub config: Option<PathBuf>,
    /// Prometheus metrics address (stargz only).
    pub metrics_address: Option<SocketAddr>,
    /// Disk chunk cache directory [default: ROOT/cache].
    pub cache_dir: Option<PathBuf>,
    /// Disk chunk cache cap, MiB [default: 10240].
    pub cache_mib: Option<u64>,
    /// Memory chunk cache, MiB [default: 256].
    pub memory_mib: Option<u64>,
    /// Do not prefetch the files before the prefetch landmark.
    pub no_prefetch: bool,
    /// Do not fetch the rest of the layers in the background.
    pub no_background_fetch: bool,
    /// Background fetch rate limit, MiB/s [default: 64].
    pub background_mib_per_sec: Option<u64>,
    /// Read fully fetched files through FUSE even where the kernel has passthrough.
    pub no_passthrough: bool,
    /// Neither record nor replay learned prefetch profiles (else `[profile] enabled`).
    pub no_profile: bool,
    /// Do not look for an image's profile in its registry (else `[profile] lookup`).
    pub no_profile_lookup: bool,
    /// Where this machine's profiles are [default: `[profile] dir`, else CACHE_DIR/profiles].
    pub profile_dir: Option<PathBuf>,
    /// Registry overrides (plain-HTTP hosts, mirrors, docker config).
    pub registry: RegistryOverrides,
    /// Runtime directory for FUSE holder sockets whose root is too long to hold them.
    pub run_dir: PathBuf,
}

/// The config file named, else the default one when it exists; keys it does not use are
/// logged, wishes it does not follow are warned about.
pub(super) fn load_config(path: Option<&Path>) -> Result<SnapshotterConfig, super::DaemonError> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG);
            if !p.exists() {
                return Ok(SnapshotterConfig::default());
            }
            p
        }
    };
    let c = SnapshotterConfig::load(&path)?;
    if !c.not_used.is_empty() {
        tracing::info!(keys = ?c.not_used, "config keys of containerd-stargz-grpc that stargaze does not use");
    }
    for r in &c.refused {
        tracing::warn!(config = %path.display(), "{r}");
    }
    Ok(c)
}

/// The stargz snapshotter's caches, as resolved.
pub(super) struct Caches {
    pub dir: PathBuf,
    pub disk_bytes: u64,
    pub memory_mib: u64,
}

impl DaemonOptions {
    /// The metrics address: the flag, else the config's.
    pub(super) fn metrics(
        &self,
        cfg: &SnapshotterConfig,
    ) -> Result<Option<SocketAddr>, super::DaemonError> {
        match (self.metrics_address, &cfg.metrics_address) {
            (Some(m), _) => Ok(Some(m)),
            (None, Some(m)) => m.parse::<SocketAddr>().map(Some).map_err(|source| {
                super::DaemonError::MetricsAddress {
                    value: m.clone(),
                    source,
                }
            }),
            (None, None) => Ok(None),
        }
    }

    pub(super) fn caches(&self, cfg: &SnapshotterConfig) -> Caches {
        Caches {
            dir: self
                .cache_dir
                .clone()
                .or_else(|| cfg.cache_dir.clone())
                .unwrap_or_else(|| self.root.join("cache")),
            disk_bytes: self
                .cache_mib
                .or(cfg.cache_mib)
                .unwrap_or(10240)
                .saturating_mul(1 << 20),
            memory_mib: self.memory_mib.or(cfg.memory_mib).unwrap_or(256),
        }
    }

    /// The registry client's options: the config's hosts, concurrency, retries and timeout.
    pub(super) fn client_options(cfg: &SnapshotterConfig) -> ClientOptions {
        let mut opts = ClientOptions {
            hosts: cfg.hosts.clone(),
            ..ClientOptions::default()
        };
        if let Some(n) = cfg.max_per_host {
            opts.hosts.max_per_host = n;
        }
        if let Some(n) = cfg.attempts {
            opts.retry.attempts = n;
        }
        if let Some(d) = cfg.backoff.0 {
            opts.retry.base = d;
        }
        if let Some(d) = cfg.backoff.1 {
            opts.retry.max = d;
        }
        if let Some(d) = cfg.request_timeout {
            opts.request_timeout = d;
        }
        opts
    }

    /// FUSE passthrough, prefetch and background fetch.
    pub(super) fn lazy(&self, cfg: &SnapshotterConfig) -> LazyOptions {
        let rate = self
            .background_mib_per_sec
            .or(cfg.background_mib_per_sec)
            .unwrap_or(64);
        LazyOptions {
            fs: FsOptions {
                passthrough: !self.no_passthrough && cfg.passthrough.unwrap_or(true),
                ..FsOptions::default()
            },
            prefetch: !self.no_prefetch && cfg.prefetch,
            background: (!self.no_background_fetch && cfg.background_fetch).then_some(
                BackgroundOptions {
                    rate: rate.clamp(1, 1 << 20) << 20,
                    ..BackgroundOptions::default()
                },
            ),
            profile: (!self.no_profile && cfg.profile).then(|| ProfileOptions {
                // Beside the chunks by default: wiping the cache dir wipes what was learned.
                store: ProfileStore::new(
                    self.profile_dir
                        .clone()
                        .or_else(|| cfg.profile_dir.clone())
                        .unwrap_or_else(|| self.caches(cfg).dir.join("profiles")),
                ),
                lookup: !self.no_profile_lookup && cfg.profile_lookup,
            }),
        }
    }
}
