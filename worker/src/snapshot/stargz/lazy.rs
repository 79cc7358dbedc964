//! The stargz backend's driver: overlay snapshots whose committed layers may be lazy — a
//! remote layer's FUSE filesystem mounted at the snapshot's `fs` directory, so overlay mounts
//! stack it like any unpacked layer. The driver owns those FUSE sessions and ends them before
//! a snapshot's directory is deleted. With a [`Holder`], each FUSE connection is mounted
//! on a descriptor of our own whose duplicate the holder keeps, so a restarted daemon can
//! take running containers' layers back ([`LazyOverlay::resume`]) instead of leaving them
//! broken.

use super::holder::Holder;
use crate::snapshot::overlay::Overlay;
use crate::snapshot::{io, Driver, Kind, Mount, Result, SnapshotError};
use stargaze_fs::fuse::resume::{mount_with_fd, resume, KernelInit};
use stargaze_fs::fuse::{mount_layer, FsOptions, LayerFs};
use stargaze_fs::layer::{BackgroundOptions, RemoteLayer};
pub use stargaze_fs::mount::ProfileOptions;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

struct LazyMount {
    layer: Arc<RemoteLayer>,
    session: fuser::BackgroundSession,
    prefetch: Option<tokio::task::JoinHandle<()>>,
}

/// How lazy layers are served.
#[derive(Clone)]
pub struct LazyOptions {
    /// FUSE presentation.
    pub fs: FsOptions,
    /// Prefetch the landmark files on mount.
    pub prefetch: bool,
    /// Then the rest in the background.
    pub background: Option<BackgroundOptions>,
    /// Learned prefetch profiles (none: no recording, no replay).
    pub profile: Option<ProfileOptions>,
}

impl Default for LazyOptions {
    fn default() -> Self {
        LazyOptions {
            fs: FsOptions::default(),
            prefetch: true,
            background: Some(BackgroundOptions::default()),
            profile: None,
        }
    }
}

/// Overlay snapshots with lazy lower layers.
pub struct LazyOverlay {
    overlay: Overlay,
    mounts: Mutex<HashMap<PathBuf, LazyMount>>,
    holder: Option<Holder>,
}

/// Whether an overlay mount in this mount namespace stacks on `fs` (a container or a
/// view uses the layer).
pub fn stacked_on(fs: &Path) -> bool {
    let needle = fs.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - overlay "))
        .any(|l| {
            l.rsplit(' ').next().is_some_and(|opts| {
                opts.split(',').any(|o| {
                    o.strip_prefix("lowerdir=")
                        .is_some_and(|dirs| dirs.split(':').any(|d| d == needle))
                })
            })
        })
}

impl LazyOverlay {
    /// Over kernel overlayfs.
    pub fn new() -> Self {
        LazyOverlay {
            overlay: Overlay::kernel(),
            mounts: Mutex::new(HashMap::new()),
            holder: None,
        }
    }

    /// Keeps a duplicate of every FUSE connection in `holder`.
    pub fn with_holder(mut self, holder: Holder) -> Self {
        self.holder = Some(holder);
        self
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, LazyMount>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mounts `layer` at `dir/fs`, serving reads on `rt`, and starts its prefetch (a profile
    /// replay first, when the caller gave the layer one with `use_profile`).
    pub fn mount(
        &self,
        dir: &Path,
        layer: Arc<RemoteLayer>,
        rt: &tokio::runtime::Handle,
        opts: &LazyOptions,
    ) -> Result<()> {
        let fs_dir = dir.join("fs");
        std::fs::create_dir_all(&fs_dir).map_err(io(format!("creating {}", fs_dir.display())))?;
        let fs = LayerFs::new(layer.clone(), rt.clone(), opts.fs.clone());
        let failed = |e: std::io::Error| SnapshotError::Io {
            context: format!(
                "FUSE mount of layer {} at {}",
                layer.digest(),
                fs_dir.display()
            ),
            source: e,
        };
        let session = match &self.holder {
            None => mount_layer(fs, &fs_dir).map_err(failed)?,
            Some(h) => {
                let (session, fd, init) = mount_with_fd(fs, &fs_dir).map_err(failed)?;
                let meta = serde_json::json!({"init": init, "layer": layer.digest().to_string()});
                if let Err(e) = h.put(&fs_dir, &meta, &fd) {
                    tracing::warn!(layer = %layer.digest(), error = %e, "the FUSE holder did not take the connection; containers on this layer will not survive a daemon restart");
                }
                session
            }
        };
        let prefetch = Some(rt.spawn(layer.clone().run_mounted(opts.prefetch, opts.background)));
        self.table().insert(
            dir.to_path_buf(),
            LazyMount {
                layer,
                session,
                prefetch,
            },
        );
        Ok(())
    }

    /// Serves `layer` again on the FUSE connection the holder kept for `dir` (after a
    /// daemon restart), when there is one and it is still mounted; false otherwise.
    pub fn resume(
        &self,
        dir: &Path,
        layer: Arc<RemoteLayer>,
        rt: &tokio::runtime::Handle,
        opts: &LazyOptions,
    ) -> Result<bool> {
        let Some(h) = &self.holder else {
            return Ok(false);
        };
        let fs_dir = dir.join("fs");
        if !stargaze_fs::sys::is_mount_point(&fs_dir) {
            return Ok(false);
        }
        let (meta, fd) = match h.get(&fs_dir) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(false),
            Err(e) => {
                tracing::warn!(error = %e, "asking the FUSE holder");
                return Ok(false);
            }
        };
        let Ok(init) = serde_json::from_value::<KernelInit>(meta["init"].clone()) else {
            return Ok(false);
        };
        // Backing files cannot be registered through the relay: FUSE reads only.
        let mut fs_opts = opts.fs.clone();
        fs_opts.passthrough = false;
        let fs = LayerFs::new(layer.clone(), rt.clone(), fs_opts);
        let session = resume(fs, fd, &init).map_err(|e| SnapshotError::Io {
            context: format!("resuming the FUSE connection of {}", fs_dir.display()),
            source: e,
        })?;
        self.table().insert(
            dir.to_path_buf(),
            LazyMount {
                layer,
                session,
                prefetch: None,
            },
        );
        Ok(true)
    }

    /// Shutdown: layers a mount still stacks on (running containers) stay mounted, their
    /// connections left with the holder for the next daemon; the others are unmounted.
    /// Returns how many were left mounted.
    pub fn shutdown(&self) -> usize {
        let all: Vec<PathBuf> = self.table().keys().cloned().collect();
        let mut kept = 0;
        for d in all {
            if self.holder.is_some() && stacked_on(&d.join("fs")) {
                if let Some(m) = self.table().remove(&d) {
                    if let Some(p) = m.prefetch {
                        p.abort();
                    }
                    // The session thread ends with the process; the holder keeps the mount.
                    std::mem::forget(m.session);
                }
                kept += 1;
            } else {
                self.release(&d);
            }
        }
        if kept == 0 {
            if let Some(h) = &self.holder {
                h.quit_if_empty();
            }
        }
        kept
    }

    /// Whether `dir` has a live lazy mount of ours.
    pub fn is_mounted(&self, dir: &Path) -> bool {
        self.table().contains_key(dir) && stargaze_fs::sys::is_mount_point(&dir.join("fs"))
    }

    /// Like [`Self::is_mounted`], against mount points read once for several questions.
    pub fn is_mounted_among(
        &self,
        dir: &Path,
        mounts: &std::collections::HashSet<std::path::PathBuf>,
    ) -> bool {
        self.table().contains_key(dir) && stargaze_fs::sys::is_among(&dir.join("fs"), mounts)
    }

    /// The layer mounted at `dir`, if one is.
    pub fn layer_at(&self, dir: &Path) -> Option<Arc<RemoteLayer>> {
        self.table().get(dir).map(|m| m.layer.clone())
    }

    /// Layers mounted now, with their directories.
    pub fn layers(&self) -> Vec<(PathBuf, Arc<RemoteLayer>)> {
        self.table()
            .iter()
            .map(|(d, m)| (d.clone(), m.layer.clone()))
            .collect()
    }

    /// Unmounts every lazy layer (shutdown).
    pub fn unmount_all(&self) {
        let all: Vec<PathBuf> = self.table().keys().cloned().collect();
        for d in all {
            self.release(&d);
        }
    }
}

impl Default for LazyOverlay {
    fn default() -> Self {
        Self::new()
    }
}

impl Driver for LazyOverlay {
    fn name(&self) -> &str {
        crate::snapshot::Backend::Stargz.as_str()
    }

    fn create(&self, dir: &Path, parents: &[PathBuf], kind: Kind) -> Result<()> {
        self.overlay.create(dir, parents, kind)
    }

    fn mounts(&self, dir: &Path, parents: &[PathBuf], kind: Kind) -> Vec<Mount> {
        self.overlay.mounts(dir, parents, kind)
    }

    fn release(&self, dir: &Path) {
        if let Some(h) = &self.holder {
            if let Err(e) = h.del(&dir.join("fs")) {
                tracing::debug!(error = %e, "telling the FUSE holder");
            }
        }
        let gone = self.table().remove(dir);
        if let Some(m) = gone {
            m.layer.save_recording();
            if let Some(p) = m.prefetch {
                p.abort();
            }
            drop(m.session);
        }
        let fs = dir.join("fs");
        if stargaze_fs::sys::is_mount_point(&fs) {
            let _ = stargaze_fs::sys::unmount(&fs, true);
        }
    }
}
