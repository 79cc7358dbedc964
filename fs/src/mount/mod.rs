//! An image rootfs: every layer of the image mounted lazily through FUSE (or, when a layer is
//! not eStargz, pulled whole, verified and unpacked — the fallback every peer has), composed
//! with kernel overlayfs at the target directory (with an upper and work dir when writable).
//! [`MountedImage`] owns all of it; dropping or [`MountedImage::unmount`] tears it down,
//! overlay first, then each layer.

mod fallback;
mod run_state;

use crate::cache::ChunkCache;
use crate::fetcher::{CounterSnapshot, FetchOptions};
use crate::fuse::{mount_layer, FsOptions, LayerFs, OpenCounters, OpenSnapshot};
use crate::layer::{BackgroundOptions, LayerError, PrefetchState, RemoteLayer};
use crate::profile::{Profile, ProfileStore};
use crate::remote::{Platform, Reference, RegistryClient, RemoteError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use fallback::{pull_and_unpack, pull_and_unpack_with};
pub use run_state::{
    pid_alive, run_dir, stop_server, MountRecord, MountState, RunStateError, StatsFile,
};

/// Why a mount failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// Registry access.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A layer could not be opened.
    #[error(transparent)]
    Layer(#[from] Box<LayerError>),
    /// A fallback layer could not be unpacked.
    #[error("layer {digest}: {reason}")]
    Unpack {
        /// The layer.
        digest: String,
        /// Why.
        reason: String,
    },
    /// A mount system call failed.
    #[error("{what} at {path}: {source}")]
    Sys {
        /// What was being mounted.
        what: String,
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How to mount.
#[derive(Clone)]
pub struct MountOptions {
    /// Platform picked from an index.
    pub platform: Platform,
    /// Add an upper dir so the rootfs is writable.
    pub writable: bool,
    /// Private directory for layer mount points, upper/work dirs and unpacked layers.
    pub state_dir: PathBuf,
    /// Chunk caches shared by the layers.
    pub cache: Arc<ChunkCache>,
    /// Sessions whose credentials may be used.
    pub sessions: Vec<String>,
    /// Request merging.
    pub fetch: FetchOptions,
    /// FUSE presentation (opaque xattr, access recording).
    pub fs: FsOptions,
    /// Prefetch the landmark files on mount.
    pub prefetch: bool,
    /// Then fetch the rest in the background.
    pub background: Option<BackgroundOptions>,
    /// Learned prefetch profiles (none: no recording, no replay).
    pub profile: Option<ProfileOptions>,
}

/// Where prefetch profiles come from and go.
#[derive(Clone)]
pub struct ProfileOptions {
    /// Profiles recorded on this machine (read first, and where recordings are saved).
    pub store: ProfileStore,
    /// Whether a layer without a local profile looks in the registry (one request).
    pub lookup: bool,
}

/// One layer of a mounted image.
pub enum MountedLayer {
    /// Served lazily through FUSE.
    Lazy {
        /// The layer.
        layer: Arc<RemoteLayer>,
        /// Its FUSE mount point.
        dir: PathBuf,
        /// The FUSE session (unmounts when dropped).
        session: Option<fuser::BackgroundSession>,
        /// How its files were opened.
        opens: Arc<OpenCounters>,
    },
    /// Pulled whole and unpacked (not eStargz).
    Unpacked {
        /// The layer digest.
        digest: String,
        /// Blob size.
        size: u64,
        /// Where it was unpacked.
        dir: PathBuf,
    },
}

/// How a layer of a mount is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerMode {
    /// Read on demand from the registry (eStargz, zstd:chunked).
    Lazy,
    /// Fetched whole and unpacked to a directory (any other layer).
    Unpacked,
}

impl LayerMode {
    /// The name used in stats and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerMode::Lazy => "lazy",
            LayerMode::Unpacked => "unpacked",
        }
    }
}

impl std::fmt::Display for LayerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a [`LayerMode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("layer mode {0:?} is not lazy or unpacked")]
pub struct UnknownLayerMode(pub String);

impl std::str::FromStr for LayerMode {
    type Err = UnknownLayerMode;
    fn from_str(s: &str) -> Result<Self, UnknownLayerMode> {
        match s {
            "lazy" => Ok(LayerMode::Lazy),
            "unpacked" => Ok(LayerMode::Unpacked),
            _ => Err(UnknownLayerMode(s.to_string())),
        }
    }
}

/// Per-layer figures for `stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerStats {
    /// Layer digest.
    pub digest: String,
    /// Blob size.
    pub size: u64,
    /// How the layer is served.
    pub mode: LayerMode,
    /// Traffic counters (for an unpacked layer: one request of the whole blob).
    #[serde(flatten)]
    pub counters: CounterSnapshot,
    /// Prefetch state.
    pub prefetch: PrefetchState,
    /// Opens through FUSE reads and through passthrough.
    #[serde(flatten)]
    pub opens: OpenSnapshot,
    /// Misses and requests in time (`stats --timeline`).
    pub timeline: crate::fetcher::TimelineSnapshot,
}

/// A mounted image rootfs.
pub struct MountedImage {
    target: PathBuf,
    layers: Vec<MountedLayer>,
    overlay: bool,
    /// The image manifest digest.
    pub manifest: String,
    prefetch_tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn sys(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> MountError {
    let (what, path) = (what.to_string(), path.to_path_buf());
    move |source| MountError::Sys { what, path, source }
}

/// Mounts `reference` at `target`. Must run inside a multi-threaded tokio runtime (FUSE reads
/// are served on it).
pub async fn mount_image(
    client: Arc<RegistryClient>,
    reference: &Reference,
    target: &Path,
    opts: &MountOptions,
) -> Result<MountedImage, MountError> {
    let (manifest, _) = client
        .resolve(reference, &opts.platform, &opts.sessions)
        .await?;
    crate::sys::private_dir(&opts.state_dir.join("l"))
        .and_then(|()| crate::sys::private_dir(&opts.state_dir))
        .map_err(sys("state dir", &opts.state_dir))?;
    let mut image = MountedImage {
        target: target.to_path_buf(),
        layers: Vec::new(),
        overlay: false,
        manifest: manifest.digest.to_string(),
        prefetch_tasks: Vec::new(),
    };
    let rt = tokio::runtime::Handle::current();
    // Open every layer's metadata concurrently (two small Range GETs each).
    let opens = manifest.layers.iter().map(|desc| {
        RemoteLayer::open(
            client.clone(),
            reference,
            desc,
            opts.cache.clone(),
            opts.sessions.clone(),
            opts.fetch,
        )
    });
    // The registry's profile is looked for alongside, when some layer has no local one.
    let lookup = async {
        match &opts.profile {
            Some(p) if p.lookup => {
                let missing = manifest.layers.iter().any(|d| {
                    d.digest()
                        .map_or(true, |d| p.store.for_layer(&d).is_empty())
                });
                if missing {
                    registry_profile(&client, reference, &manifest.digest, &opts.sessions).await
                } else {
                    None
                }
            }
            _ => None,
        }
    };
    let (opened, found) = tokio::join!(futures_util::future::join_all(opens), lookup);
    for (i, (desc, res)) in manifest.layers.iter().zip(opened).enumerate() {
        let dir = opts.state_dir.join("l").join(i.to_string());
        crate::sys::private_dir(&dir).map_err(sys("layer dir", &dir))?;
        match res {
            Ok(layer) => {
                if let Some(p) = &opts.profile {
                    layer.use_profile(Some(p.store.clone()), found.as_ref());
                }
                let fs = LayerFs::new(layer.clone(), rt.clone(), opts.fs.clone());
                let opens = fs.counters();
                let session = mount_layer(fs, &dir).map_err(sys("FUSE mount", &dir))?;
                let (l, bg) = (layer.clone(), opts.background);
                image
                    .prefetch_tasks
                    .push(tokio::spawn(l.run_mounted(opts.prefetch, bg)));
                image.layers.push(MountedLayer::Lazy {
                    layer,
                    dir,
                    session: Some(session),
                    opens,
                });
            }
            Err(e) if e.wants_whole_pull() => {
                tracing::info!(layer = %desc.digest, reason = %e, "not mounted lazily; pulling it whole");
                fallback::pull_and_unpack(&client, reference, desc, &dir, &opts.sessions).await?;
                image.layers.push(MountedLayer::Unpacked {
                    digest: desc.digest.clone(),
                    size: desc.size,
                    dir,
                });
            }
            Err(e) => return Err(Box::new(e).into()),
        }
    }
    image.compose(opts)?;
    Ok(image)
}

/// The registry's prefetch profile for image manifest `subject`, if it has one; any failure
/// is a warning (a profile never makes a mount fail).
async fn registry_profile(
    client: &RegistryClient,
    reference: &Reference,
    subject: &crate::digest::Digest,
    sessions: &[String],
) -> Option<Profile> {
    match crate::profile::lookup(client, reference, subject, sessions).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(image = %reference, error = %e, "no prefetch profile from the registry");
            None
        }
    }
}

impl MountedImage {
    fn layer_dir(l: &MountedLayer) -> &Path {
        match l {
            MountedLayer::Lazy { dir, .. } | MountedLayer::Unpacked { dir, .. } => dir,
        }
    }

    fn compose(&mut self, opts: &MountOptions) -> Result<(), MountError> {
        std::fs::create_dir_all(&self.target).map_err(sys("target", &self.target))?;
        // Top layer first; an empty bottom keeps overlay semantics (whiteouts hidden) even
        // for a one-layer read-only image, which overlayfs would otherwise refuse.
        let mut lowers: Vec<String> = self
            .layers
            .iter()
            .rev()
            .map(|l| escape(Self::layer_dir(l)))
            .collect();
        let empty = opts.state_dir.join("empty");
        crate::sys::private_dir(&empty).map_err(sys("empty dir", &empty))?;
        if lowers.len() < 2 && !opts.writable {
            lowers.push(escape(&empty));
        }
        let mut options = format!("lowerdir={}", lowers.join(":"));
        if opts.writable {
            let (upper, work) = (opts.state_dir.join("upper"), opts.state_dir.join("work"));
            for d in [&upper, &work] {
                crate::sys::private_dir(d).map_err(sys("upper/work dir", d))?;
            }
            // The upper dir is the rootfs's `/` as users of it see it (inside the 0700 state).
            std::fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(sys("upper dir", &upper))?;
            options.push_str(&format!(
                ",upperdir={},workdir={}",
                escape(&upper),
                escape(&work)
            ));
        }
        if opts.fs.opaque == crate::fuse::OpaqueXattr::User {
            options.push_str(",userxattr");
        }
        crate::sys::mount_overlay(&self.target, &options, !opts.writable)
            .map_err(sys("overlay mount", &self.target))?;
        self.overlay = true;
        Ok(())
    }

    /// The rootfs directory.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[MountedLayer] {
        &self.layers
    }

    /// Figures per layer, bottom first.
    pub fn stats(&self) -> Vec<LayerStats> {
        self.layers
            .iter()
            .map(|l| match l {
                MountedLayer::Lazy { layer, opens, .. } => {
                    let c: CounterSnapshot = layer.counters();
                    LayerStats {
                        digest: layer.digest().to_string(),
                        size: layer.size(),
                        mode: LayerMode::Lazy,
                        counters: c,
                        prefetch: layer.prefetch_state(),
                        opens: opens.snapshot(),
                        timeline: layer.timeline(),
                    }
                }
                MountedLayer::Unpacked { digest, size, .. } => LayerStats {
                    digest: digest.clone(),
                    size: *size,
                    mode: LayerMode::Unpacked,
                    counters: CounterSnapshot {
                        requests: 1,
                        bytes_fetched: *size,
                        ..CounterSnapshot::default()
                    },
                    prefetch: PrefetchState::Done,
                    opens: OpenSnapshot::default(),
                    timeline: Default::default(),
                },
            })
            .collect()
    }

    /// Unmounts the overlay, then every layer (lazily when busy).
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), MountError> {
        for t in self.prefetch_tasks.drain(..) {
            t.abort();
        }
        for l in &self.layers {
            if let MountedLayer::Lazy { layer, .. } = l {
                layer.save_recording();
            }
        }
        let mut first_err = None;
        if self.overlay {
            if let Err(e) = crate::sys::unmount(&self.target, false) {
                tracing::warn!(target = %self.target.display(), error = %e, "overlay busy; detaching it");
                if let Err(e) = crate::sys::unmount(&self.target, true) {
                    first_err.get_or_insert(MountError::Sys {
                        what: "overlay unmount".into(),
                        path: self.target.clone(),
                        source: e,
                    });
                }
            }
            self.overlay = false;
        }
        for l in self.layers.iter_mut().rev() {
            if let MountedLayer::Lazy { session, dir, .. } = l {
                if let Some(s) = session.take() {
                    // Dropping the session unmounts; if something still holds the layer,
                    // detach it so it goes once released.
                    drop(s);
                    if crate::sys::is_mount_point(dir) {
                        let _ = crate::sys::unmount(dir, true);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(error = %e, "unmounting the image");
        }
    }
}

/// Escapes `:` and `,` (and `\\`) for overlayfs options.
fn escape(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ':' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
