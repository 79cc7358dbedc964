//! The `overlayfs` and `fuse-overlayfs` backends: a snapshot's own changes live in its `fs`
//! directory; an active snapshot over parents is an overlay with the parents' `fs` as lower
//! directories (nearest first), its `fs` as upper and `work` as work directory. Without
//! parents, or for a view of one parent, a bind mount does (as containerd does). The two
//! backends differ only in who mounts: the kernel, or the `fuse-overlayfs` program where the
//! kernel's overlay is not allowed (rootless, some nested containers).

use super::{io, Backend, Driver, Kind, Mount, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Which overlay implementation mounts the snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Kernel overlayfs.
    Kernel,
    /// The fuse-overlayfs program.
    Fuse,
}

impl Flavor {
    /// The backend this flavour is.
    pub fn backend(self) -> Backend {
        match self {
            Flavor::Kernel => Backend::Overlayfs,
            Flavor::Fuse => Backend::FuseOverlayfs,
        }
    }
}

/// Overlay snapshots.
#[derive(Debug, Clone)]
pub struct Overlay {
    flavor: Flavor,
    /// Extra options for every overlay mount (e.g. `index=off`, `userxattr`).
    extra: Vec<String>,
}

impl Overlay {
    /// Kernel overlayfs; `index=off` when the kernel has the index feature (containerd does
    /// the same, so the same lower directories can sit under several overlays).
    pub fn kernel() -> Self {
        let mut extra = Vec::new();
        if Path::new("/sys/module/overlay/parameters/index").exists() {
            extra.push("index=off".into());
        }
        Overlay {
            flavor: Flavor::Kernel,
            extra,
        }
    }

    /// fuse-overlayfs.
    pub fn fuse() -> Self {
        Overlay {
            flavor: Flavor::Fuse,
            extra: Vec::new(),
        }
    }

    /// Which one this is.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    fn bind(&self, source: &Path, rw: bool) -> Mount {
        Mount {
            kind: "bind".into(),
            source: source.to_string_lossy().into_owned(),
            target: String::new(),
            options: vec![if rw { "rw" } else { "ro" }.into(), "rbind".into()],
        }
    }
}

impl Driver for Overlay {
    fn name(&self) -> &str {
        self.flavor.backend().as_str()
    }

    fn create(&self, dir: &Path, parents: &[PathBuf], kind: Kind) -> Result<()> {
        let fs = dir.join("fs");
        std::fs::create_dir(&fs).map_err(io(format!("creating {}", fs.display())))?;
        // The snapshot's root directory as containers see it: 0755 whatever the umask.
        std::fs::set_permissions(&fs, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("chmod {}", fs.display())))?;
        if kind == Kind::Active && !parents.is_empty() {
            let work = dir.join("work");
            std::fs::create_dir(&work).map_err(io(format!("creating {}", work.display())))?;
        }
        Ok(())
    }

    fn mounts(&self, dir: &Path, parents: &[PathBuf], kind: Kind) -> Vec<Mount> {
        let active = kind == Kind::Active;
        if parents.is_empty() {
            return vec![self.bind(&dir.join("fs"), active)];
        }
        if !active && parents.len() == 1 {
            return vec![self.bind(&parents[0].join("fs"), false)];
        }
        let lower: Vec<String> = parents
            .iter()
            .map(|p| p.join("fs").to_string_lossy().into_owned())
            .collect();
        let mut options = Vec::new();
        if active {
            options.push(format!("workdir={}", dir.join("work").display()));
            options.push(format!("upperdir={}", dir.join("fs").display()));
        }
        options.push(format!("lowerdir={}", lower.join(":")));
        options.extend(self.extra.iter().cloned());
        let (kind, source) = match self.flavor {
            Flavor::Kernel => ("overlay", "overlay"),
            Flavor::Fuse => ("fuse3.fuse-overlayfs", "overlay"),
        };
        vec![Mount {
            kind: kind.into(),
            source: source.into(),
            target: String::new(),
            options,
        }]
    }
}
