//! The stargz backend's driver: overlay snapshots whose committed layers may be lazy — a
//! remote layer's FUSE filesystem mounted at the snapshot's `fs` directory, so overlay mounts
//! stack it like any unpacked layer. The driver owns those FUSE sessions and ends them before
//! a snapshot's directory is deleted.

use crate::snapshot::overlay::Overlay;
use crate::snapshot::{io, Driver, Kind, Mount, Result, SnapshotError};
use stargaze_fs::fuse::{mount_layer, FsOptions, LayerFs};
use stargaze_fs::layer::{BackgroundOptions, RemoteLayer};
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
}

impl Default for LazyOptions {
    fn default() -> Self {
        LazyOptions {
            fs: FsOptions::default(),
            prefetch: true,
            background: Some(BackgroundOptions::default()),
        }
    }
}

/// Overlay snapshots with lazy lower layers.
pub struct LazyOverlay {
    overlay: Overlay,
    mounts: Mutex<HashMap<PathBuf, LazyMount>>,
}

impl LazyOverlay {
    /// Over kernel overlayfs.
    pub fn new() -> Self {
        LazyOverlay {
            overlay: Overlay::kernel(),
            mounts: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, LazyMount>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mounts `layer` at `dir/fs`, serving reads on `rt`, and starts its prefetch.
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
        let session = mount_layer(fs, &fs_dir).map_err(|e| SnapshotError::Io {
            context: format!(
                "FUSE mount of layer {} at {}",
                layer.digest(),
                fs_dir.display()
            ),
            source: e,
        })?;
        let prefetch = opts
            .prefetch
            .then(|| rt.spawn(layer.clone().run_prefetch(opts.background)));
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

    /// Whether `dir` has a live lazy mount of ours.
    pub fn is_mounted(&self, dir: &Path) -> bool {
        self.table().contains_key(dir) && stargaze_fs::sys::is_mount_point(&dir.join("fs"))
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
        "stargz"
    }

    fn create(&self, dir: &Path, parents: &[PathBuf], kind: Kind) -> Result<()> {
        self.overlay.create(dir, parents, kind)
    }

    fn mounts(&self, dir: &Path, parents: &[PathBuf], kind: Kind) -> Vec<Mount> {
        self.overlay.mounts(dir, parents, kind)
    }

    fn release(&self, dir: &Path) {
        let gone = self.table().remove(dir);
        if let Some(m) = gone {
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
