//! The mount guards of build steps: a directory with mounts on it, a read-only view of a
//! snapshot, and an active snapshot a step writes into. Each undoes itself on drop (unmount
//! and remove the directory, remove the view, remove the uncommitted snapshot), so a failed
//! or cancelled step leaves no mounts or snapshots behind. The tree COPY reads from is built
//! out of them.

use super::copy::SourceRoot;
use super::{io, BuildError};
use crate::snapshot::{mounts, Labels, Mount, SnapshotError, Snapshotter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Twelve random hex digits, for names of scratch directories and snapshots.
pub(crate) fn random_suffix() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Mounts at a fresh directory under `tmp`: unmounted (and the directory removed) on drop.
pub(super) struct Mounted {
    pub(super) dir: PathBuf,
    mounted: bool,
}

impl Mounted {
    pub(super) fn new(tmp: &Path, m: &[Mount]) -> Result<Self, BuildError> {
        let dir = tmp.join(format!("mnt-{}", random_suffix()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut me = Mounted {
            dir,
            mounted: false,
        };
        mounts::mount_all(m, &me.dir)?;
        me.mounted = true;
        Ok(me)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = mounts::unmount(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "unmounting");
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A view of a committed snapshot: removed on drop.
pub(super) struct View {
    snap: Arc<dyn Snapshotter>,
    key: String,
    pub(super) mounts: Vec<Mount>,
}

impl View {
    pub(super) fn new(snap: &Arc<dyn Snapshotter>, parent: &str) -> Result<Self, BuildError> {
        let key = format!("view-{}", random_suffix());
        let mounts = snap.view(&key, parent, Labels::new())?;
        Ok(View {
            snap: snap.clone(),
            key,
            mounts,
        })
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let Err(e) = self.snap.remove(&self.key) {
            tracing::warn!(key = %self.key, error = %e, "removing a view");
        }
    }
}

/// An active snapshot a step writes into: removed on drop unless committed.
pub(super) struct Active {
    pub(super) snap: Arc<dyn Snapshotter>,
    key: String,
    pub(super) mounts: Vec<Mount>,
    committed: bool,
}

impl Active {
    pub(super) fn new(
        snap: &Arc<dyn Snapshotter>,
        parent: Option<&str>,
    ) -> Result<Self, BuildError> {
        let key = format!("active-{}", random_suffix());
        let mounts = snap.prepare(&key, parent.unwrap_or(""), Labels::new())?;
        Ok(Active {
            snap: snap.clone(),
            key,
            mounts,
            committed: false,
        })
    }

    /// Commits the snapshot under `name`, or under a fresh name when `name` is taken (by
    /// an earlier run of the same step); returns the name used.
    pub(super) fn commit(mut self, name: &str, labels: Labels) -> Result<String, SnapshotError> {
        let name = match self.snap.commit(name, &self.key, labels.clone()) {
            Ok(()) => name.to_string(),
            Err(SnapshotError::AlreadyExists(_)) => {
                let fresh = format!("{name}-{}", random_suffix());
                self.snap.commit(&fresh, &self.key, labels)?;
                fresh
            }
            Err(e) => return Err(e),
        };
        self.committed = true;
        Ok(name)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = self.snap.remove(&self.key) {
                tracing::warn!(key = %self.key, error = %e, "removing an unfinished step's snapshot");
            }
        }
    }
}

/// The tree COPY reads from with what keeps it there; the guards drop in field order, the
/// mount before the view it mounts.
pub(super) struct SourceTree {
    _mounted: Option<Mounted>,
    _view: Option<View>,
    /// The tree.
    pub(super) root: SourceRoot,
}

impl SourceTree {
    /// The context (`from_top` none), an empty tree (a stage without layers), or a stage's
    /// rootfs mounted read-only.
    pub(super) fn open(
        snap: &Arc<dyn Snapshotter>,
        tmp: &Path,
        context: &Path,
        from_top: Option<&Option<String>>,
    ) -> Result<Self, BuildError> {
        let (mounted, view, root) = match from_top {
            None => (None, None, SourceRoot::Context(context.to_path_buf())),
            Some(None) => {
                let dir = tmp.join(format!("empty-{}", random_suffix()));
                std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
                (None, None, SourceRoot::Image(dir))
            }
            Some(Some(top)) => {
                let view = View::new(snap, top)?;
                let mnt = Mounted::new(tmp, &view.mounts)?;
                let root = SourceRoot::Image(mnt.dir.clone());
                (Some(mnt), Some(view), root)
            }
        };
        Ok(SourceTree {
            _mounted: mounted,
            _view: view,
            root,
        })
    }
}

/// A built image's rootfs mounted read-only for an exporter that sends files (buildkitd's
/// `tar` and `local`): a view of its top snapshot mounted under the worker's scratch space
/// (an empty directory when the image has no layers), all undone on drop.
pub struct RootfsView {
    tree: SourceTree,
    empty: Option<PathBuf>,
}

impl RootfsView {
    /// Mounts the rootfs whose top snapshot is `top` (none: an empty tree).
    pub fn open(w: &super::Worker, top: &Option<String>) -> Result<Self, BuildError> {
        let tree = SourceTree::open(&w.snapshotter, &w.tmp, &w.tmp, Some(top))?;
        let empty = match (&tree.root, top) {
            (SourceRoot::Image(d), None) => Some(d.clone()),
            _ => None,
        };
        Ok(RootfsView { tree, empty })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        match &self.tree.root {
            SourceRoot::Image(d) | SourceRoot::Context(d) => d,
        }
    }
}

impl Drop for RootfsView {
    fn drop(&mut self) {
        if let Some(d) = &self.empty {
            let _ = std::fs::remove_dir(d);
        }
    }
}
