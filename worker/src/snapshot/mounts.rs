//! Makes the mounts a snapshotter describes (what containerd's mount package does for its
//! own use): bind mounts, kernel overlay, and fuse-overlayfs through its program. Used by the
//! worker to get a rootfs, by `auto`'s probe, and by tests.

use super::{Mount, SnapshotError};
use std::path::Path;

fn err(what: String, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io {
        context: what,
        source,
    }
}

/// Mounts `mounts` (in order) at `target`.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), SnapshotError> {
    for m in mounts {
        let dest = if m.target.is_empty() {
            target.to_path_buf()
        } else {
            target.join(m.target.trim_start_matches('/'))
        };
        mount_one(m, &dest)?;
    }
    Ok(())
}

fn mount_one(m: &Mount, dest: &Path) -> Result<(), SnapshotError> {
    let ro = m.options.iter().any(|o| o == "ro");
    match m.kind.as_str() {
        "bind" | "rbind" => {
            stargaze_fs::sys::bind_mount(Path::new(&m.source), dest, ro).map_err(|e| {
                err(
                    format!("bind mount of {} at {}", m.source, dest.display()),
                    e,
                )
            })
        }
        "overlay" => {
            let data: Vec<&str> = m
                .options
                .iter()
                .map(String::as_str)
                .filter(|o| *o != "ro" && *o != "rw")
                .collect();
            stargaze_fs::sys::mount_overlay(dest, &data.join(","), ro)
                .map_err(|e| err(format!("overlay mount at {}", dest.display()), e))
        }
        "fuse3.fuse-overlayfs" | "fuse-overlayfs" => {
            let out = std::process::Command::new("fuse-overlayfs")
                .arg("-o")
                .arg(m.options.join(","))
                .arg(dest)
                .output()
                .map_err(|e| err("running fuse-overlayfs".into(), e))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(err(
                    format!("fuse-overlayfs at {}", dest.display()),
                    std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
                ))
            }
        }
        other => Err(SnapshotError::InvalidArgument(format!(
            "mount type {other:?} is not supported"
        ))),
    }
}

/// Unmounts whatever is mounted at `target` (the top of the stack).
pub fn unmount(target: &Path) -> Result<(), SnapshotError> {
    stargaze_fs::sys::unmount(target, false)
        .or_else(|_| stargaze_fs::sys::unmount(target, true))
        .map_err(|e| err(format!("unmounting {}", target.display()), e))
}
