//! buildkitd's `--oci-worker-*` flags over `[worker.oci]`: the file is read first, then each
//! flag given on the command line overrides its key (labels are merged, platforms replaced).
//! One deliberate difference: the reference assigns `--oci-cni-config-path` from a misspelt
//! flag and so erases the setting; here the flag sets `cniConfigPath`.

use super::oci_worker::{platforms, InvalidPlatform, OciWorkerConfig, SandboxWithoutRootless};
use crate::executor::NetworkKind;
use crate::snapshot::Backend;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Flags given on the command line (`None`/empty: not given, the file's value stands).
#[derive(Debug, Clone, Default)]
pub struct OciWorkerFlags {
    /// `--oci-worker` true|false|auto.
    pub enabled: Option<String>,
    /// `--oci-worker-labels k=v` (repeatable; merged into the file's).
    pub labels: Vec<String>,
    /// `--oci-worker-snapshotter`.
    pub snapshotter: Option<Backend>,
    /// `--oci-worker-proxy-snapshotter-path`.
    pub proxy_snapshotter_path: Option<PathBuf>,
    /// `--oci-worker-platform` (repeatable; replaces the file's list).
    pub platforms: Vec<String>,
    /// `--oci-worker-net`.
    pub net: Option<NetworkKind>,
    /// `--oci-cni-config-path`.
    pub cni_config_path: Option<PathBuf>,
    /// `--oci-cni-binary-dir`.
    pub cni_binary_dir: Option<PathBuf>,
    /// `--oci-worker-binary`.
    pub binary: Option<String>,
    /// `--oci-worker-apparmor-profile`.
    pub apparmor_profile: Option<String>,
    /// `--oci-worker-rootless`.
    pub rootless: Option<bool>,
    /// `--oci-worker-no-process-sandbox`.
    pub no_process_sandbox: Option<bool>,
    /// `--oci-worker-gc`.
    pub gc: Option<bool>,
    /// `--oci-worker-gc-keepstorage` in MB.
    pub gc_keep_storage_mb: Option<i64>,
    /// `--oci-max-parallelism`.
    pub max_parallelism: Option<usize>,
}

/// A label that is not `key=value` with a non-empty key.
#[derive(Debug, thiserror::Error)]
#[error("invalid worker label {0:?}: expected key=value")]
pub struct InvalidLabel(pub String);

/// Why the flags were refused.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// `--oci-worker` with another value than true, false or auto.
    #[error("--oci-worker {0:?}: expected true, false or auto")]
    Enabled(String),
    /// A bad `--oci-worker-labels`.
    #[error("--oci-worker-labels: {0}")]
    Label(#[from] InvalidLabel),
    /// A bad `--oci-worker-platform`.
    #[error("--oci-worker-platform: {0}")]
    Platform(#[from] InvalidPlatform),
    /// No process sandbox without rootless, from the flags or the file and flags together.
    #[error(transparent)]
    Sandbox(#[from] SandboxWithoutRootless),
}

/// Parses `k=v` labels; one without `=` or with an empty key is an error.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, InvalidLabel> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => return Err(InvalidLabel(item.clone())),
        }
    }
    Ok(out)
}

impl OciWorkerConfig {
    /// Applies flags given on the command line (see [`OciWorkerFlags`]).
    pub fn apply(&mut self, f: &OciWorkerFlags) -> Result<(), FlagError> {
        if let Some(e) = &f.enabled {
            self.enabled = match e.as_str() {
                "true" => Some(true),
                "false" => Some(false),
                "auto" => None,
                other => return Err(FlagError::Enabled(other.to_string())),
            };
        }
        self.labels.extend(parse_labels(&f.labels)?);
        if let Some(s) = f.snapshotter {
            self.snapshotter = s;
        }
        if let Some(p) = &f.proxy_snapshotter_path {
            self.proxy_snapshotter_path = Some(p.clone());
        }
        if !f.platforms.is_empty() {
            self.platforms = platforms(&f.platforms)?;
        }
        if let Some(n) = f.net {
            self.network_mode = n;
        }
        if let Some(p) = &f.cni_config_path {
            self.cni_config_path = p.clone();
        }
        if let Some(p) = &f.cni_binary_dir {
            self.cni_binary_dir = p.clone();
        }
        if let Some(b) = &f.binary {
            self.binary = b.clone();
        }
        if let Some(a) = &f.apparmor_profile {
            self.apparmor_profile = a.clone();
        }
        if let Some(r) = f.rootless {
            self.rootless = r;
        }
        if let Some(n) = f.no_process_sandbox {
            self.no_process_sandbox = n;
        }
        if let Some(g) = f.gc {
            self.gc = g;
        }
        if let Some(mb) = f.gc_keep_storage_mb {
            self.gc_keep_storage = mb.saturating_mul(1_000_000);
        }
        if let Some(n) = f.max_parallelism {
            self.max_parallelism = n;
        }
        Ok(self.validate()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let mut c = OciWorkerConfig::parse_section(
            r#"
snapshotter = "stargz"
networkMode = "cni"
cniConfigPath = "/etc/file/cni.json"
max-parallelism = 4
[labels]
team = "infra"
"#,
        )
        .unwrap();
        c.apply(&OciWorkerFlags {
            labels: vec!["zone=a".into(), "team=build".into()],
            cni_config_path: Some("/flag/cni.json".into()),
            gc_keep_storage_mb: Some(5),
            platforms: vec!["linux/arm64/v8".into()],
            enabled: Some("auto".into()),
            ..Default::default()
        })
        .unwrap();
        // The flag lands in the config (the reference erases it).
        assert_eq!(c.cni_config_path, PathBuf::from("/flag/cni.json"));
        assert_eq!(c.labels["team"], "build");
        assert_eq!(c.labels["zone"], "a");
        assert_eq!(c.gc_keep_storage, 5_000_000);
        assert_eq!(c.platforms.len(), 1);
        assert_eq!(c.enabled, None);
        // Unset flags leave the file alone.
        assert_eq!(c.snapshotter, Backend::Stargz);
        assert_eq!(c.max_parallelism, 4);
        assert_eq!(c.network_mode, NetworkKind::Cni);
        c.apply(&OciWorkerFlags {
            snapshotter: Some(Backend::Native),
            net: Some(NetworkKind::Host),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            (c.snapshotter, c.network_mode),
            (Backend::Native, NetworkKind::Host)
        );
    }

    #[test]
    fn bad_flags_are_errors_naming_them() {
        let mut c = OciWorkerConfig::default();
        for (f, want) in [
            (
                OciWorkerFlags {
                    labels: vec!["novalue".into()],
                    ..Default::default()
                },
                "--oci-worker-labels: invalid worker label \"novalue\": expected key=value",
            ),
            (
                OciWorkerFlags {
                    labels: vec!["=v".into()],
                    ..Default::default()
                },
                "--oci-worker-labels: invalid worker label \"=v\"",
            ),
            (
                OciWorkerFlags {
                    enabled: Some("maybe".into()),
                    ..Default::default()
                },
                "--oci-worker \"maybe\": expected true, false or auto",
            ),
            (
                OciWorkerFlags {
                    platforms: vec!["not a platform".into()],
                    ..Default::default()
                },
                "--oci-worker-platform: invalid platform \"not a platform\"",
            ),
            (
                OciWorkerFlags {
                    no_process_sandbox: Some(true),
                    ..Default::default()
                },
                "can't enable noProcessSandbox without rootless",
            ),
        ] {
            let e = c.apply(&f).unwrap_err().to_string();
            assert!(e.starts_with(want), "{f:?}: {e}");
        }
    }
}
