//! `auto`: picks overlayfs, else fuse-overlayfs, else native, by making a real mount of each
//! inside the snapshotter root (a kernel or a container may refuse what a config check would
//! allow), and says which it chose and why.

use super::mounts::{mount_all, unmount};
use super::overlay::Overlay;
use super::{Driver, Kind};
use std::path::Path;

/// What `auto` chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Kernel overlayfs works here.
    Overlayfs,
    /// Kernel overlayfs did not; fuse-overlayfs does.
    FuseOverlayfs {
        /// Why not overlayfs.
        because: String,
    },
    /// Neither overlay works.
    Native {
        /// Why not the overlays.
        because: String,
    },
}

/// Tries an overlay of two snapshots in `root/probe-*` and writes through it.
fn try_overlay(root: &Path, driver: &Overlay) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("probe-")
        .tempdir_in(root)
        .map_err(|e| format!("temp dir in {}: {e}", root.display()))?;
    let (lower, upper, target) = (
        dir.path().join("l"),
        dir.path().join("u"),
        dir.path().join("m"),
    );
    for d in [&lower, &upper, &target] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    driver
        .create(&lower, &[], Kind::Active)
        .map_err(|e| e.to_string())?;
    std::fs::write(lower.join("fs/probe"), b"lower").map_err(|e| e.to_string())?;
    driver
        .create(&upper, std::slice::from_ref(&lower), Kind::Active)
        .map_err(|e| e.to_string())?;
    let mounts = driver.mounts(&upper, std::slice::from_ref(&lower), Kind::Active);
    mount_all(&mounts, &target).map_err(|e| e.to_string())?;
    let check = std::fs::read(target.join("probe"))
        .map_err(|e| e.to_string())
        .and_then(|b| {
            (b == b"lower")
                .then_some(())
                .ok_or_else(|| "lower file not visible".to_string())
        })
        .and_then(|()| std::fs::write(target.join("new"), b"x").map_err(|e| e.to_string()));
    let _ = unmount(&target);
    check?;
    if !upper.join("fs/new").exists() {
        return Err("write did not reach the upper directory".into());
    }
    Ok(())
}

/// Probes `root` (which must exist).
pub fn choose(root: &Path) -> Choice {
    let kernel = match try_overlay(root, &Overlay::kernel()) {
        Ok(()) => {
            tracing::info!(root = %root.display(), "auto snapshotter: overlayfs (a test overlay mounted and wrote)");
            return Choice::Overlayfs;
        }
        Err(e) => format!("kernel overlayfs: {e}"),
    };
    let have_fuse_overlayfs = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("fuse-overlayfs").is_file()));
    let fuse = if !have_fuse_overlayfs {
        "fuse-overlayfs: not installed".to_string()
    } else {
        match try_overlay(root, &Overlay::fuse()) {
            Ok(()) => {
                tracing::info!(root = %root.display(), because = %kernel, "auto snapshotter: fuse-overlayfs");
                return Choice::FuseOverlayfs { because: kernel };
            }
            Err(e) => format!("fuse-overlayfs: {e}"),
        }
    };
    let because = format!("{kernel}; {fuse}");
    tracing::info!(root = %root.display(), because = %because, "auto snapshotter: native");
    Choice::Native { because }
}
