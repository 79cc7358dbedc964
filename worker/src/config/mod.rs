//! The stargaze configuration files, read by serde into structs that refuse unknown keys:
//! buildkitd's TOML format (`buildkitd.toml`; here `[registry."host"]` and `[worker.oci]`, the
//! other buildkitd sections accepted and reported as not yet used) and the snapshotter's
//! `containerd-stargz-grpc` format (`snapshotter.rs`). A typo is caught instead of silently
//! ignored, and every error names the file and the key (`error.rs`, `keypath.rs`).

mod error;
mod flags;
mod gc;
mod keypath;
mod oci_worker;
mod registry;
mod snapshotter;

pub use error::{ConfigError, KeyError, ParseError};
pub use flags::{parse_labels, FlagError, InvalidLabel, OciWorkerFlags};
pub use gc::{default_gc_cap, default_gc_policy, gc_cap_for_disk, GcPolicy};
pub use keypath::KeyPath;
pub use oci_worker::{InvalidPlatform, OciWorkerConfig, SandboxWithoutRootless};
pub use registry::RegistryEntry;
pub use snapshotter::SnapshotterConfig;

use error::from_toml;
use oci_worker::{note_unused, RawOci, Unused};
use serde::Deserialize;
use stargaze_fs::remote::HostsConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest config file read.
const MAX_CONFIG: u64 = 1 << 20;

/// Reads a config file of at most `MAX_CONFIG` bytes and parses it with `parse`; errors name
/// the file.
pub(crate) fn load_with<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, ConfigError> {
    let io = |error| ConfigError::Io {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_CONFIG {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_CONFIG,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse(&text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        error: Box::new(e),
    })
}

/// buildkitd.toml as stargaze reads it: `[registry]` and `[worker.oci]`; the other buildkitd
/// sections of earlier versions are named here, accepted whatever they hold, and reported as
/// not used yet.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    registry: BTreeMap<String, RegistryEntry>,
    #[serde(default)]
    worker: RawWorker,
    debug: Unused,
    dns: Unused,
    grpc: Option<RawGrpc>,
    root: Option<PathBuf>,
    trace: Unused,
    #[serde(rename = "insecure-entitlements", default)]
    insecure_entitlements: Vec<String>,
}

/// `[grpc]`: the addresses, socket group and `[grpc.tls]` files `stargaze buildkitd` reads;
/// buildkitd's other keys (`debugAddress`, `uid`, …) are accepted and named as not used yet.
#[derive(Debug, Default, Deserialize)]
struct RawGrpc {
    #[serde(default)]
    address: Vec<String>,
    gid: Option<u32>,
    tls: Option<TlsFiles>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

/// buildkitd's own top-level keys, for `stargaze buildkitd` (its flags win over them).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// `root`.
    pub root: Option<PathBuf>,
    /// `[grpc] address`.
    pub addresses: Vec<String>,
    /// `[grpc] gid`: the sockets' group.
    pub gid: Option<u32>,
    /// `insecure-entitlements`: what builds may ask for (`network.host`, `security.insecure`).
    pub insecure_entitlements: Vec<String>,
    /// `[grpc.tls]`: the files of the `tcp://` addresses.
    pub tls: TlsFiles,
}

/// The TLS files of `tcp://` addresses: buildkitd's `--tlscert`, `--tlskey`, `--tlscacert`,
/// and `[grpc.tls] cert`, `key`, `ca` in its config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Server certificate (chain).
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
    /// CA of the clients' certificates.
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether all three files are named.
    pub fn complete(&self) -> bool {
        self.cert.is_some() && self.key.is_some() && self.ca.is_some()
    }

    /// Each file of `self`, else of `other` (flags over the config file, file by file).
    pub fn or(&self, other: &TlsFiles) -> TlsFiles {
        TlsFiles {
            cert: self.cert.clone().or_else(|| other.cert.clone()),
            key: self.key.clone().or_else(|| other.key.clone()),
            ca: self.ca.clone().or_else(|| other.ca.clone()),
        }
    }
}

/// The entitlements a daemon can grant (BuildKit's names).
pub const ENTITLEMENTS: &[&str] = &["network.host", "security.insecure"];

/// `[worker.*]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    oci: Option<RawOci>,
    containerd: Unused,
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
    /// `root` and `[grpc]`.
    pub daemon: DaemonConfig,
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
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let raw: Raw = from_toml(text)?;
        let mut cfg = Config::default();
        note_unused(
            &[
                ("debug", &raw.debug),
                ("dns", &raw.dns),
                ("trace", &raw.trace),
                ("worker.containerd", &raw.worker.containerd),
            ],
            &mut cfg.not_yet_used,
        );
        if let Some(g) = raw.grpc {
            cfg.not_yet_used
                .extend(g.other.keys().map(|k| format!("grpc.{k}")));
            cfg.daemon.addresses = g.address;
            cfg.daemon.gid = g.gid;
            cfg.daemon.tls = g.tls.unwrap_or_default();
        }
        cfg.daemon.root = raw.root;
        for (i, e) in raw.insecure_entitlements.iter().enumerate() {
            if !ENTITLEMENTS.contains(&e.as_str()) {
                return Err(ParseError::at(
                    KeyPath::of(&["insecure-entitlements"]).index(i),
                    KeyError::Entitlement(e.clone()),
                ));
            }
        }
        cfg.daemon.insecure_entitlements = raw.insecure_entitlements;
        cfg.not_yet_used.sort();
        for (host, entry) in &raw.registry {
            entry.check(&KeyPath::of(&["registry", host]))?;
        }
        cfg.registry = raw.registry;
        if let Some(oci) = raw.worker.oci {
            oci.note_unused("worker.oci", &mut cfg.not_yet_used);
            cfg.oci_worker = oci.resolve(&KeyPath::of(&["worker", "oci"]))?;
        }
        // The mirrors must make valid client settings: say so now, naming the key.
        cfg.hosts()?;
        Ok(cfg)
    }

    /// The registry part as client host settings.
    pub fn hosts(&self) -> Result<HostsConfig, ParseError> {
        let mut h = HostsConfig::default();
        for (host, e) in &self.registry {
            if e.http {
                h.set_insecure(host);
            }
        }
        for (host, e) in &self.registry {
            for (i, m) in e.mirrors.iter().enumerate() {
                let mirror_host = m.trim_end_matches('/');
                let plain = self.registry.get(mirror_host).is_some_and(|x| x.http)
                    || h.is_insecure(mirror_host);
                let scheme = if plain { "http" } else { "https" };
                h.add_mirror(host, &format!("{scheme}://{mirror_host}"))
                    .map_err(|reason| {
                        ParseError::at(
                            KeyPath::of(&["registry", host, "mirrors"]).index(i),
                            KeyError::mirror(m, reason),
                        )
                    })?;
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
    fn insecure_entitlements_are_read_and_unknown_ones_refused() {
        let c = Config::parse(
            "insecure-entitlements = [\"network.host\"]\n[registry.\"docker.io\"]\nmirrors=[\"127.0.0.1:5000\"]\n",
        )
        .unwrap();
        assert_eq!(c.daemon.insecure_entitlements, vec!["network.host"]);
        assert!(Config::parse("")
            .unwrap()
            .daemon
            .insecure_entitlements
            .is_empty());
        let e = Config::parse("insecure-entitlements = [\"security.insecure\", \"all\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("insecure-entitlements") && e.contains("\"all\""),
            "{e}"
        );
    }

    #[test]
    fn buildkitd_sections_of_before_are_accepted_and_named() {
        let c = Config::parse(
            r#"
root = "/var/lib/buildkit"
trace = false
[grpc]
  address = ["unix:///run/buildkit/buildkitd.sock"]
  gid = 998
  debugAddress = "0.0.0.0:6060"
[grpc.tls]
  cert = "/etc/buildkit/tls.crt"
  key = "/etc/buildkit/tls.key"
  ca = "/etc/buildkit/tlsca.crt"
[dns]
  nameservers = ["1.1.1.1"]
[worker.oci]
  userRemapUnsupported = "overlayfs"
[worker.containerd]
  enabled = false
"#,
        )
        .unwrap();
        assert_eq!(
            c.not_yet_used,
            vec![
                "dns",
                "grpc.debugAddress",
                "trace",
                "worker.containerd",
                "worker.oci.userRemapUnsupported"
            ]
        );
        assert_eq!(c.daemon.root, Some(PathBuf::from("/var/lib/buildkit")));
        assert_eq!(
            c.daemon.addresses,
            vec!["unix:///run/buildkit/buildkitd.sock"]
        );
        assert_eq!(c.daemon.gid, Some(998));
        assert!(c.daemon.tls.complete());
        assert_eq!(
            c.daemon.tls.ca,
            Some(PathBuf::from("/etc/buildkit/tlsca.crt"))
        );
        let e = Config::parse(
            "[grpc.tls]
certt = \"/x\"",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("certt"), "{e}");
        let e = Config::parse("root = 3").unwrap_err().to_string();
        assert!(e.contains("root"), "{e}");
        let e = Config::parse("[grpc]\ngid = \"wheel\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gid"), "{e}");
    }

    #[test]
    fn refuses_bad_files_naming_the_key() {
        for (bad, want) in [
            ("nonsense = [", "TOML parse error at line 1"),
            ("colour = 1", "colour: unknown field `colour`"),
            ("registry = 5", "registry: invalid type"),
            ("[worker.bogus]", "[worker] bogus: unknown field `bogus`"),
            (
                "[worker.oci]\nsnapshotter = \"foo\"",
                "[worker.oci] snapshotter: unknown snapshotter name \"foo\" (choose one of",
            ),
            (
                "[[worker.oci.gcpolicy]]\nkeepBytes = -1",
                "[worker.oci.gcpolicy[0]] keepBytes: invalid value",
            ),
            (
                "[worker.oci]\nnoProcessSandbox = true",
                "[worker.oci] noProcessSandbox: can't enable",
            ),
            (
                "[registry.\"x\"]\nmirrors = \"not-a-list\"",
                "[registry.x] mirrors: invalid type",
            ),
            (
                "[registry.\"x\"]\nmirrors = [\"ok:5000\", \"http://scheme-not-allowed\"]",
                "[registry.x] mirrors[1]: mirror \"http://scheme-not-allowed\" must be host[:port]",
            ),
            (
                "[registry.\"x\"]\ninsecure = true",
                "[registry.x] insecure: insecure/ca/keypair (TLS settings) are not supported",
            ),
            (
                "[registry.\"x\"]\nhttps = true",
                "[registry.x] https: unknown field",
            ),
        ] {
            let e = Config::parse(bad).map(|_| ()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "[worker.oci]\nnetworkMode = \"bridge\"\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: [worker.oci] networkMode: unknown network mode \"bridge\" (choose one of \
                 auto, host, cni)",
                p.display()
            )
        );
        std::fs::write(&p, vec![b'#'; MAX_CONFIG as usize + 1]).unwrap();
        assert!(matches!(
            Config::load(&p),
            Err(ConfigError::TooLarge { .. })
        ));
    }
}
