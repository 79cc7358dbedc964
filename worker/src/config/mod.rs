//! The stargaze configuration file: buildkitd's TOML format (`buildkitd.toml`), read key by key
//! as the parts that use them land. Today that is `[registry."host"]` (mirrors, http); other
//! known buildkitd sections are accepted and reported as not yet used, unknown keys are errors,
//! so a typo is caught instead of silently ignored.

mod oci_worker;
mod registry;
mod snapshotter;

pub use oci_worker::{
    default_gc_cap, default_gc_policy, gc_cap_for_disk, parse_labels, GcPolicy, OciWorkerConfig,
    OciWorkerFlags,
};
pub use registry::RegistryEntry;
pub use snapshotter::SnapshotterConfig;

use stargaze_fs::remote::HostsConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest config file read.
const MAX_CONFIG: u64 = 1 << 20;
/// buildkitd top-level keys that later parts of stargaze will read.
const LATER: [&str; 5] = ["root", "debug", "grpc", "dns", "trace"];

/// Why the config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, wrong types, unknown keys or bad values.
    #[error("config {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Reads a config file of at most `MAX_CONFIG` bytes and parses it with `parse`; errors name
/// the file.
pub(crate) fn load_with<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let invalid = |reason| ConfigError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_CONFIG {
        return Err(invalid(format!("larger than {MAX_CONFIG} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&text).map_err(invalid)
}

/// A parsed configuration.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Config {
    /// Per-registry settings by host.
    pub registry: BTreeMap<String, RegistryEntry>,
    /// Known buildkitd sections present but not used yet.
    pub not_yet_used: Vec<String>,
    /// `[worker.oci]`.
    pub oci_worker: OciWorkerConfig,
}

impl Config {
    /// The default location: `$STARGAZE_CONFIG`, else `/etc/stargaze/config.toml`.
    pub fn default_path() -> PathBuf {
        std::env::var_os("STARGAZE_CONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/stargaze/config.toml"))
    }

    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        load_with(path, Self::parse)
    }

    /// Loads the default file when it exists; an absent default is an empty config.
    pub fn load_default() -> Result<Self, ConfigError> {
        let p = Self::default_path();
        if p.exists() {
            Self::load(&p)
        } else {
            Ok(Self::default())
        }
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let mut cfg = Config::default();
        for (key, value) in table {
            match key.as_str() {
                "registry" => {
                    let t = value
                        .as_table()
                        .ok_or("`registry` must be a table of hosts")?;
                    for (host, v) in t {
                        let entry = RegistryEntry::from_value(host, v)?;
                        cfg.registry.insert(host.clone(), entry);
                    }
                }
                "worker" => {
                    let t = value.as_table().ok_or("`worker` must be a table")?;
                    for (name, w) in t {
                        match name.as_str() {
                            "oci" => {
                                let w = w.as_table().ok_or("`worker.oci` must be a table")?;
                                cfg.oci_worker = OciWorkerConfig::from_toml(w)?;
                            }
                            "containerd" => cfg.not_yet_used.push("worker.containerd".into()),
                            other => return Err(format!("unknown key `worker.{other}`")),
                        }
                    }
                }
                k if LATER.contains(&k) => cfg.not_yet_used.push(k.to_string()),
                k => return Err(format!("unknown key `{k}`")),
            }
        }
        Ok(cfg)
    }

    /// The registry part as client host settings.
    pub fn hosts(&self) -> Result<HostsConfig, String> {
        let mut h = HostsConfig::default();
        for (host, e) in &self.registry {
            if e.http {
                h.set_insecure(host);
            }
        }
        for (host, e) in &self.registry {
            for m in &e.mirrors {
                let mirror_host = m.trim_end_matches('/');
                let plain = self.registry.get(mirror_host).is_some_and(|x| x.http)
                    || h.is_insecure(mirror_host);
                let scheme = if plain { "http" } else { "https" };
                h.add_mirror(host, &format!("{scheme}://{mirror_host}"))
                    .map_err(|e| format!("registry {host:?}: {e}"))?;
            }
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_section() {
        let c = Config::parse(
            r#"
debug = true
[registry."docker.io"]
  mirrors = ["mirror.lan:5000", "127.0.0.1:5001"]
[registry."mirror.lan:5000"]
  http = true
[worker.oci]
  snapshotter = "stargz"
"#,
        )
        .unwrap();
        assert_eq!(c.not_yet_used, vec!["debug"]);
        assert_eq!(c.oci_worker.snapshotter, crate::snapshot::Backend::Stargz);
        let h = c.hosts().unwrap();
        let eps = h.endpoints("docker.io", "registry-1.docker.io", true);
        let bases: Vec<&str> = eps.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(
            bases,
            vec![
                "http://mirror.lan:5000",
                "http://127.0.0.1:5001",
                "https://registry-1.docker.io"
            ]
        );
    }

    #[test]
    fn refuses_bad_files() {
        for bad in [
            "nonsense = [",
            "colour = 1",
            "registry = 5",
            "[registry.\"x\"]\nmirrors = \"not-a-list\"",
            "[registry.\"x\"]\nmirrors = [\"http://scheme-not-allowed\"]",
            "[registry.\"x\"]\ninsecure = true",
            "[registry.\"x\"]\nhttps = true",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
