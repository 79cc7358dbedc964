//! What the settings resolve to on this machine, before anything is opened: the snapshotter
//! (`auto` by a probe mount under the root), the network mode (`auto`: CNI when its config
//! file exists; rootless: always host), and the OCI runtime binary (the configured one, else
//! `buildkit-runc`, else `runc`, on `$PATH`).

use super::OpenError;
use crate::config::OciWorkerConfig;
use crate::snapshot::open::LocalDriver;
use std::path::{Path, PathBuf};

/// The snapshotter `cfg` names, with `auto` resolved by probing `root`, and why.
pub fn snapshotter_choice(
    cfg: &OciWorkerConfig,
    root: &Path,
) -> Result<(String, String), OpenError> {
    match cfg.snapshotter.as_str() {
        "auto" => {
            let (driver, why) =
                LocalDriver::probe(root).map_err(|source| OpenError::Snapshotter {
                    path: root.to_path_buf(),
                    source,
                })?;
            Ok((driver.name().to_string(), why))
        }
        s => Ok((s.to_string(), "configured".to_string())),
    }
}

/// The network mode `cfg` resolves to: `host`, `none` or `cni`.
pub fn network_choice(cfg: &OciWorkerConfig) -> String {
    match cfg.network_mode.as_str() {
        _ if cfg.rootless => "host".to_string(),
        "auto" if cfg.cni_config_path.is_file() => "cni".to_string(),
        "auto" => "host".to_string(),
        m => m.to_string(),
    }
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
    fn network_modes_resolve_as_buildkitd_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = OciWorkerConfig {
            cni_config_path: dir.path().join("absent.json"),
            ..OciWorkerConfig::default()
        };
        assert_eq!(network_choice(&cfg), "host");
        std::fs::write(dir.path().join("cni.json"), b"{}").unwrap();
        cfg.cni_config_path = dir.path().join("cni.json");
        assert_eq!(network_choice(&cfg), "cni");
        cfg.rootless = true;
        assert_eq!(network_choice(&cfg), "host");
        cfg.rootless = false;
        cfg.network_mode = "host".into();
        assert_eq!(network_choice(&cfg), "host");
    }

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
