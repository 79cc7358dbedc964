//! `[worker.oci]` of buildkitd.toml, with buildkitd's key names, meanings and defaults, read
//! into [`OciWorkerConfig`] (the `--oci-worker-*` flags are applied over it in `flags.rs`, the
//! GC rules live in `gc.rs`). buildkitd keys stargaze reads but does not act on
//! (`stargzSnapshotter`, `userRemapUnsupported`) are listed by name and reported; any other
//! key is an error naming it.

use super::error::{from_toml, ParseError};
use super::gc::{default_gc_cap, default_gc_policy, GcPolicy, RawGcPolicy};
use super::keypath::KeyPath;
use crate::executor::NetworkKind;
use crate::snapshot::Backend;
use serde::Deserialize;
use stargaze_fs::remote::Platform;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A value that is accepted and not used.
pub(crate) type Unused = Option<toml::Value>;

/// Adds to `out` the name of each accepted-and-unused key that is present.
pub(crate) fn note_unused(keys: &[(&str, &Unused)], out: &mut Vec<String>) {
    out.extend(
        keys.iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.to_string()),
    );
}

/// `[worker.oci]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOci {
    enabled: Option<bool>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    platforms: Vec<String>,
    snapshotter: Option<Backend>,
    #[serde(default)]
    rootless: bool,
    #[serde(default, rename = "noProcessSandbox")]
    no_process_sandbox: bool,
    gc: Option<bool>,
    /// Bytes, as buildkitd v0.9 reads it (its docs say MB).
    #[serde(default)]
    gckeepstorage: u64,
    #[serde(default)]
    gcpolicy: Vec<RawGcPolicy>,
    #[serde(default, rename = "max-parallelism")]
    max_parallelism: usize,
    #[serde(default)]
    binary: String,
    #[serde(default, rename = "apparmor-profile")]
    apparmor_profile: String,
    #[serde(rename = "networkMode")]
    network_mode: Option<NetworkKind>,
    #[serde(rename = "cniConfigPath")]
    cni_config_path: Option<PathBuf>,
    #[serde(rename = "cniBinaryPath")]
    cni_binary_path: Option<PathBuf>,
    #[serde(rename = "proxySnapshotterPath")]
    proxy_snapshotter_path: Option<PathBuf>,
    #[serde(rename = "stargzSnapshotter")]
    stargz_snapshotter: Unused,
    #[serde(rename = "userRemapUnsupported")]
    user_remap_unsupported: Unused,
}

/// The resolved OCI worker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciWorkerConfig {
    /// `Some(true/false)`, or `None` for auto (enabled when the runtime binary exists).
    pub enabled: Option<bool>,
    /// User labels (merged over the built-in ones).
    pub labels: BTreeMap<String, String>,
    /// Platforms; empty means the host's.
    pub platforms: Vec<Platform>,
    /// Snapshotter.
    pub snapshotter: Backend,
    /// Rootless mode.
    pub rootless: bool,
    /// Run steps without their own PID namespace (rootless only).
    pub no_process_sandbox: bool,
    /// GC on.
    pub gc: bool,
    /// Keep-storage bound in bytes; 0 means derived from the disk size.
    pub gc_keep_storage: i64,
    /// Configured GC rules; empty means the default policy.
    pub gc_policy: Vec<GcPolicy>,
    /// Steps at once; 0 means unbounded.
    pub max_parallelism: usize,
    /// OCI runtime binary; empty means `buildkit-runc`, then `runc`.
    pub binary: String,
    /// AppArmor profile for sandboxed steps.
    pub apparmor_profile: String,
    /// Network mode.
    pub network_mode: NetworkKind,
    /// CNI config file.
    pub cni_config_path: PathBuf,
    /// CNI plugin directory.
    pub cni_binary_dir: PathBuf,
    /// A containerd snapshots socket to use instead of a built-in snapshotter.
    pub proxy_snapshotter_path: Option<PathBuf>,
}

impl Default for OciWorkerConfig {
    fn default() -> Self {
        OciWorkerConfig {
            enabled: None,
            labels: BTreeMap::new(),
            platforms: Vec::new(),
            snapshotter: Backend::Auto,
            rootless: false,
            no_process_sandbox: false,
            gc: true,
            gc_keep_storage: 0,
            gc_policy: Vec::new(),
            max_parallelism: 0,
            binary: String::new(),
            apparmor_profile: String::new(),
            network_mode: NetworkKind::Auto,
            cni_config_path: PathBuf::from("/etc/buildkit/cni.json"),
            cni_binary_dir: PathBuf::from("/opt/cni/bin"),
            proxy_snapshotter_path: None,
        }
    }
}

/// A platform that is not `os/arch[/variant]`.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform {value:?}: {reason}")]
pub struct InvalidPlatform {
    /// The platform as written.
    pub value: String,
    /// Why [`Platform`] refused it.
    pub reason: <Platform as FromStr>::Err,
}

/// `noProcessSandbox` asked for without `rootless`.
#[derive(Debug, thiserror::Error)]
#[error(
    "can't enable noProcessSandbox without rootless (and without a process sandbox, build \
     steps can see and signal processes outside them)"
)]
pub struct SandboxWithoutRootless;

/// Parses each platform of `list`.
pub(crate) fn platforms(list: &[String]) -> Result<Vec<Platform>, InvalidPlatform> {
    list.iter()
        .map(|p| {
            p.parse().map_err(|reason| InvalidPlatform {
                value: p.clone(),
                reason,
            })
        })
        .collect()
}

impl RawOci {
    /// The settings, checked; `at` is where the section is (for errors).
    pub(crate) fn resolve(self, at: &KeyPath) -> Result<OciWorkerConfig, ParseError> {
        let d = OciWorkerConfig::default();
        let c = OciWorkerConfig {
            enabled: self.enabled,
            labels: self.labels,
            platforms: platforms(&self.platforms)
                .map_err(|e| ParseError::at(at.clone().key("platforms"), e))?,
            snapshotter: self.snapshotter.unwrap_or(d.snapshotter),
            rootless: self.rootless,
            no_process_sandbox: self.no_process_sandbox,
            gc: self.gc.unwrap_or(d.gc),
            gc_keep_storage: i64::try_from(self.gckeepstorage).unwrap_or(i64::MAX),
            gc_policy: self.gcpolicy.into_iter().map(GcPolicy::from).collect(),
            max_parallelism: self.max_parallelism,
            binary: self.binary,
            apparmor_profile: self.apparmor_profile,
            network_mode: self.network_mode.unwrap_or(d.network_mode),
            cni_config_path: self.cni_config_path.unwrap_or(d.cni_config_path),
            cni_binary_dir: self.cni_binary_path.unwrap_or(d.cni_binary_dir),
            proxy_snapshotter_path: self
                .proxy_snapshotter_path
                .filter(|p| !p.as_os_str().is_empty()),
        };
        c.validate()
            .map_err(|e| ParseError::at(at.clone().key("noProcessSandbox"), e))?;
        Ok(c)
    }

    /// Adds to `out` the buildkitd keys present that stargaze reads and does not act on,
    /// named under `section`.
    pub(crate) fn note_unused(&self, section: &str, out: &mut Vec<String>) {
        note_unused(
            &[
                (
                    &format!("{section}.stargzSnapshotter"),
                    &self.stargz_snapshotter,
                ),
                (
                    &format!("{section}.userRemapUnsupported"),
                    &self.user_remap_unsupported,
                ),
            ],
            out,
        );
    }
}

impl OciWorkerConfig {
    /// Parses the body of a `[worker.oci]` section on its own (keys in errors are relative).
    pub fn parse_section(text: &str) -> Result<Self, ParseError> {
        from_toml::<RawOci>(text)?.resolve(&KeyPath::of(&[]))
    }

    /// Checks settings that only make sense together.
    pub(crate) fn validate(&self) -> Result<(), SandboxWithoutRootless> {
        if self.no_process_sandbox && !self.rootless {
            return Err(SandboxWithoutRootless);
        }
        Ok(())
    }

    /// The GC rules in force: the configured ones, else the default policy with the
    /// keep-storage bound (or one derived from the disk under `root`); none with GC off.
    pub fn gc_rules(&self, root: &Path) -> Vec<GcPolicy> {
        if !self.gc {
            return Vec::new();
        }
        if !self.gc_policy.is_empty() {
            return self.gc_policy.clone();
        }
        let keep = if self.gc_keep_storage > 0 {
            self.gc_keep_storage
        } else {
            default_gc_cap(root)
        };
        default_gc_policy(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::super::gc::gc_cap_for_disk;
    use super::*;
    use std::time::Duration;

    #[test]
    fn file_keys() {
        let c = OciWorkerConfig::parse_section(
            r#"
enabled = true
snapshotter = "stargz"
platforms = ["linux/amd64", "linux/arm64/v8"]
networkMode = "cni"
cniConfigPath = "/etc/file/cni.json"
cniBinaryPath = "/usr/lib/cni"
proxySnapshotterPath = ""
max-parallelism = 4
gckeepstorage = 9000
stargzSnapshotter = { cache = true }
[labels]
team = "infra"
[[gcpolicy]]
keepBytes = 1000
keepDuration = 3600
filters = ["type==source.local", "type==exec.cachemount"]
"#,
        )
        .unwrap();
        assert_eq!(c.enabled, Some(true));
        assert_eq!(c.snapshotter, Backend::Stargz);
        assert_eq!(c.platforms.len(), 2);
        assert_eq!(c.network_mode, NetworkKind::Cni);
        assert_eq!(c.cni_config_path, PathBuf::from("/etc/file/cni.json"));
        assert_eq!(c.cni_binary_dir, PathBuf::from("/usr/lib/cni"));
        assert_eq!(c.proxy_snapshotter_path, None);
        assert_eq!(c.max_parallelism, 4);
        assert_eq!(c.gc_keep_storage, 9000);
        assert_eq!(c.labels["team"], "infra");
        assert_eq!(c.gc_policy[0].keep_bytes, 1000);
        assert_eq!(c.gc_policy[0].keep_duration, Duration::from_secs(3600));
        assert_eq!(c.gc_policy[0].filters.len(), 2);
        assert_eq!(c.gc_rules(Path::new("/")), c.gc_policy);
    }

    #[test]
    fn defaults_and_gc() {
        let c = OciWorkerConfig::default();
        assert_eq!(c, OciWorkerConfig::parse_section("").unwrap());
        assert_eq!(c.snapshotter, Backend::Auto);
        assert_eq!(c.network_mode, NetworkKind::Auto);
        assert_eq!(c.cni_config_path, PathBuf::from("/etc/buildkit/cni.json"));
        let rules = c.gc_rules(Path::new("/"));
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules[0].filters.len(),
            3,
            "three filters, any of which matches"
        );
        assert!(rules[3].all);
        assert_eq!(gc_cap_for_disk(100 << 30), 11_000_000_000);
        assert_eq!(gc_cap_for_disk(0), 1_000_000_000);
        let off = OciWorkerConfig {
            gc: false,
            ..OciWorkerConfig::default()
        };
        assert!(off.gc_rules(Path::new("/")).is_empty());
    }

    #[test]
    fn bad_values_are_errors_naming_key_and_problem() {
        for (text, want) in [
            (
                "snapshotter = \"overlay\"",
                "snapshotter: unknown snapshotter name \"overlay\" (choose one of auto, \
                 overlayfs, native, fuse-overlayfs, stargz)",
            ),
            (
                "platforms = [\"linux/\"]",
                "platforms: invalid platform \"linux/\"",
            ),
            (
                "networkMode = \"bridge2\"",
                "networkMode: unknown network mode \"bridge2\"",
            ),
            ("noProcessSandbox = true", "noProcessSandbox: can't enable"),
            ("max-parallelism = -1", "max-parallelism: invalid value"),
            ("gc = \"yes\"", "gc: invalid type: string \"yes\""),
            (
                "[[gcpolicy]]\nkeepBytes = \"1GB\"",
                "[gcpolicy[0]] keepBytes: invalid type",
            ),
            (
                "[[gcpolicy]]\nbogus = 1",
                "[gcpolicy[0]] bogus: unknown field `bogus`",
            ),
            ("colour = 1", "colour: unknown field `colour`"),
            ("labels = 3", "labels: invalid type"),
            ("[labels]\nteam = 1", "[labels] team: invalid type"),
        ] {
            let e = OciWorkerConfig::parse_section(text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }
}
