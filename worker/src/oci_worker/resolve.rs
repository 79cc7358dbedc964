//! What the settings resolve to on this machine, before anything is opened: the snapshotter
//! (`auto` by a probe mount under the root), the network mode (`auto`: CNI when its config
//! file exists; rootless: always host), and the OCI runtime binary (the configured one, else
//! `buildkit-runc`, else `runc`, on `$PATH`).

use super::OpenError;
use crate::config::OciWorkerConfig;
use crate::executor::NetworkKind;
use crate::snapshot::Backend;
use std::path::{Path, PathBuf};

/// The snapshotter `cfg` names, with `auto` resolved by a probe mount in `root` (created),
/// and why.
pub fn snapshotter_choice(
    cfg: &OciWorkerConfig,
    root: &Path,
) -> Result<(Backend, String), OpenError> {
    stargaze_fs::sys::private_dir(root).map_err(|source| OpenError::Dir {
        path: root.to_path_buf(),
        source,
    })?;
    Ok(cfg.snapshotter.resolve(root))
}

/// The network mode `cfg` resolves to: `host` or `cni` (see [`NetworkKind::resolve`]).
pub fn network_choice(cfg: &OciWorkerConfig) -> NetworkKind {
    cfg.network_mode.resolve(cfg.rootless, &cfg.cni_config_path)
}

/// The runtime binary names looked for, for messages.
pub fn runtime_names(cfg: &OciWorkerConfig) -> String {
    if cfg.binary.is_empty() {
        "buildkit-runc, runc".to_string()
    } else {
        cfg.binary.clone()
    }
}

/// The runtime binary the worker would run: the configured one (a path, or a name on
/// `$PATH`), else `buildkit-runc`, else `runc`.
pub fn runtime_binary(cfg: &OciWorkerConfig) -> Option<PathBuf> {
    let names: Vec<&str> = if cfg.binary.is_empty() {
        vec!["buildkit-runc", "runc"]
    } else {
        vec![cfg.binary.as_str()]
    };
    names.into_iter().find_map(|n| {
        let p = Path::new(n);
        if p.components().count() > 1 {
            return p.is_file().then(|| p.to_path_buf());
        }
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(n))
                .find(|c| c.is_file())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_runtime_path_must_be_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("my-runc");
        let cfg = OciWorkerConfig {
            binary: bin.display().to_string(),
            ..OciWorkerConfig::default()
        };
        assert_eq!(runtime_binary(&cfg), None);
        std::fs::write(&bin, b"").unwrap();
        assert_eq!(runtime_binary(&cfg), Some(bin));
        assert_eq!(runtime_names(&cfg), cfg.binary);
    }
}
