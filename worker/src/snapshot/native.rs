//! The `native` backend: every snapshot is a full copy of its parent's tree, mounted with a
//! bind mount. Slow and large, but it works on any file system and needs no overlay support
//! (containerd's fallback, and the last choice of `auto`). The copy is `cp -a` with every
//! attribute preserved (owners, modes, times, xattrs, hardlinks, devices), reflinked where
//! the file system can.

use super::{io, Driver, Kind, Mount, Result, SnapshotError};
use std::path::{Path, PathBuf};

/// Copies parents, binds the copy.
#[derive(Debug, Default, Clone, Copy)]
pub struct Native;

/// Copies the contents of `from` into the existing directory `to`.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .args([
            "-a",
            "--preserve=all",
            "--reflink=auto",
            "--no-target-directory",
        ])
        .arg(from)
        .arg(to)
        .output()
        .map_err(io("running cp"))?;
    if !out.status.success() {
        return Err(SnapshotError::Io {
            context: format!("copying {} to {}", from.display(), to.display()),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(())
}

impl Driver for Native {
    fn name(&self) -> &str {
        super::Backend::Native.as_str()
    }

    fn create(&self, dir: &Path, parents: &[PathBuf], _kind: Kind) -> Result<()> {
        let fs = dir.join("fs");
        match parents.first() {
            Some(p) => copy_tree(&p.join("fs"), &fs),
            None => std::fs::create_dir(&fs).map_err(io(format!("creating {}", fs.display()))),
        }
    }

    fn mounts(&self, dir: &Path, _parents: &[PathBuf], kind: Kind) -> Vec<Mount> {
        vec![Mount {
            kind: "bind".into(),
            source: dir.join("fs").to_string_lossy().into_owned(),
            target: String::new(),
            options: vec![
                if kind == Kind::Active { "rw" } else { "ro" }.into(),
                "rbind".into(),
            ],
        }]
    }
}
