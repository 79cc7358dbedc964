//! `[worker.oci]` of buildkitd.toml and the `--oci-worker-*` flags, with buildkitd's names,
//! meanings and defaults: the file is read first, then each flag given on the command line
//! overrides its key (labels are merged, platforms replaced). One deliberate difference: the
//! reference assigns `--oci-cni-config-path` from a misspelt flag and so erases the setting;
//! here the flag sets `cniConfigPath`. The default GC policy's first rule matches any of its
//! three record types (the reference once joined them into one filter that matched nothing).

use crate::executor::NetworkKind;
use crate::snapshot::Backend;
use stargaze_fs::remote::Platform;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One GC rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcPolicy {
    /// Include internal and shared records.
    pub all: bool,
    /// Keep at most this many bytes of matching records.
    pub keep_bytes: i64,
    /// Remove matching records unused for longer than this (zero: no age limit).
    pub keep_duration: Duration,
    /// containerd filters; any one matching selects a record.
    pub filters: Vec<String>,
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

fn platforms(list: &[String]) -> Result<Vec<Platform>, String> {
    list.iter()
        .map(|p| Platform::parse(p).map_err(|e| format!("invalid platform {p:?}: {e}")))
        .collect()
}

/// Parses `k=v` labels; one without `=` or with an empty key is an error.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => return Err(format!("invalid worker label {item:?}: expected key=value")),
        }
    }
    Ok(out)
}

fn get<'a>(t: &'a toml::Table, k: &str) -> Option<&'a toml::Value> {
    t.get(k)
}

fn want_bool(t: &toml::Table, k: &str) -> Result<Option<bool>, String> {
    get(t, k)
        .map(|v| {
            v.as_bool()
                .ok_or(format!("worker.oci.{k} must be true or false"))
        })
        .transpose()
}

fn want_str(t: &toml::Table, k: &str) -> Result<Option<String>, String> {
    get(t, k)
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or(format!("worker.oci.{k} must be a string"))
        })
        .transpose()
}

fn want_int(t: &toml::Table, k: &str) -> Result<Option<i64>, String> {
    get(t, k)
        .map(|v| {
            v.as_integer()
                .filter(|n| *n >= 0)
                .ok_or(format!("worker.oci.{k} must be a non-negative integer"))
        })
        .transpose()
}

fn want_strings(t: &toml::Table, k: &str) -> Result<Option<Vec<String>>, String> {
    get(t, k)
        .map(|v| {
            v.as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or(format!("worker.oci.{k} must be a list of strings"))
        })
        .transpose()
}

impl OciWorkerConfig {
    /// Reads `[worker.oci]` (a TOML table); unknown keys are errors naming them.
    pub fn from_toml(t: &toml::Table) -> Result<Self, String> {
        const KNOWN: [&str; 18] = [
            "enabled",
            "labels",
            "platforms",
            "snapshotter",
            "rootless",
            "noProcessSandbox",
            "gc",
            "gckeepstorage",
            "gcpolicy",
            "max-parallelism",
            "binary",
            "apparmor-profile",
            "networkMode",
            "cniConfigPath",
            "cniBinaryPath",
            "proxySnapshotterPath",
            "stargzSnapshotter",
            "userRemapUnsupported",
        ];
        if let Some(k) = t.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!("unknown key worker.oci.{k}"));
        }
        let mut c = OciWorkerConfig {
            enabled: want_bool(t, "enabled")?,
            ..OciWorkerConfig::default()
        };
        if let Some(v) = get(t, "labels") {
            let tbl = v.as_table().ok_or("worker.oci.labels must be a table")?;
            for (k, v) in tbl {
                let v = v
                    .as_str()
                    .ok_or(format!("worker.oci.labels.{k} must be a string"))?;
                c.labels.insert(k.clone(), v.to_string());
            }
        }
        if let Some(p) = want_strings(t, "platforms")? {
            c.platforms = platforms(&p)?;
        }
        if let Some(s) = want_str(t, "snapshotter")? {
            c.snapshotter = s.parse().map_err(|e| format!("{e}"))?;
        }
        c.rootless = want_bool(t, "rootless")?.unwrap_or(false);
        c.no_process_sandbox = want_bool(t, "noProcessSandbox")?.unwrap_or(false);
        c.gc = want_bool(t, "gc")?.unwrap_or(true);
        // buildkitd v0.9 uses this key as bytes (its docs say MB); so do we, and say so.
        c.gc_keep_storage = want_int(t, "gckeepstorage")?.unwrap_or(0);
        if let Some(v) = get(t, "gcpolicy") {
            let rules = v
                .as_array()
                .ok_or("worker.oci.gcpolicy must be a list of tables")?;
            for (i, r) in rules.iter().enumerate() {
                let r = r
                    .as_table()
                    .ok_or(format!("worker.oci.gcpolicy[{i}] must be a table"))?;
                c.gc_policy.push(GcPolicy::from_toml(i, r)?);
            }
        }
        c.max_parallelism = want_int(t, "max-parallelism")?.unwrap_or(0) as usize;
        c.binary = want_str(t, "binary")?.unwrap_or_default();
        c.apparmor_profile = want_str(t, "apparmor-profile")?.unwrap_or_default();
        if let Some(n) = want_str(t, "networkMode")? {
            c.network_mode = n.parse().map_err(|e| format!("{e}"))?;
        }
        if let Some(p) = want_str(t, "cniConfigPath")? {
            c.cni_config_path = PathBuf::from(p);
        }
        if let Some(p) = want_str(t, "cniBinaryPath")? {
            c.cni_binary_dir = PathBuf::from(p);
        }
        c.proxy_snapshotter_path = want_str(t, "proxySnapshotterPath")?
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        c.validate()?;
        Ok(c)
    }

    /// Applies flags given on the command line (see [`OciWorkerFlags`]).
    pub fn apply(&mut self, f: &OciWorkerFlags) -> Result<(), String> {
        if let Some(e) = &f.enabled {
            self.enabled = match e.as_str() {
                "true" => Some(true),
                "false" => Some(false),
                "auto" => None,
                other => {
                    return Err(format!(
                        "--oci-worker {other:?}: expected true, false or auto"
                    ))
                }
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
            self.platforms =
                platforms(&f.platforms).map_err(|e| format!("--oci-worker-platform: {e}"))?;
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
        self.validate()
    }

    fn validate(&self) -> Result<(), String> {
        if self.no_process_sandbox && !self.rootless {
            return Err(
                "can't enable noProcessSandbox without rootless (and without a process sandbox, \
                 build steps can see and signal processes outside them)"
                    .into(),
            );
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

impl GcPolicy {
    fn from_toml(i: usize, t: &toml::Table) -> Result<Self, String> {
        const KNOWN: [&str; 4] = ["all", "keepBytes", "keepDuration", "filters"];
        if let Some(k) = t.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!("unknown key worker.oci.gcpolicy[{i}].{k}"));
        }
        let int = |k: &str| -> Result<i64, String> {
            t.get(k)
                .map(|v| {
                    v.as_integer().filter(|n| *n >= 0).ok_or(format!(
                        "worker.oci.gcpolicy[{i}].{k} must be a non-negative integer"
                    ))
                })
                .transpose()
                .map(|v| v.unwrap_or(0))
        };
        let filters = match t.get("filters") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect())
                .ok_or(format!(
                    "worker.oci.gcpolicy[{i}].filters must be a list of strings"
                ))?,
        };
        Ok(GcPolicy {
            all: t
                .get("all")
                .map(|v| {
                    v.as_bool().ok_or(format!(
                        "worker.oci.gcpolicy[{i}].all must be true or false"
                    ))
                })
                .transpose()?
                .unwrap_or(false),
            keep_bytes: int("keepBytes")?,
            keep_duration: Duration::from_secs(int("keepDuration")? as u64),
            filters,
        })
    }
}

/// buildkitd's default policy for keep-storage `keep` bytes: cheap caches (local sources,
/// cache mounts, git checkouts) beyond 512 MB unused for 48 h; anything unused for 60 days
/// beyond `keep`; unshared records beyond `keep`; everything beyond `keep`.
pub fn default_gc_policy(keep: i64) -> Vec<GcPolicy> {
    vec![
        GcPolicy {
            all: false,
            keep_bytes: 512_000_000,
            keep_duration: Duration::from_secs(48 * 3600),
            filters: vec![
                "type==source.local".into(),
                "type==exec.cachemount".into(),
                "type==source.git.checkout".into(),
            ],
        },
        GcPolicy {
            all: false,
            keep_bytes: keep,
            keep_duration: Duration::from_secs(60 * 24 * 3600),
            filters: Vec::new(),
        },
        GcPolicy {
            all: false,
            keep_bytes: keep,
            keep_duration: Duration::ZERO,
            filters: Vec::new(),
        },
        GcPolicy {
            all: true,
            keep_bytes: keep,
            keep_duration: Duration::ZERO,
            filters: Vec::new(),
        },
    ]
}

/// buildkitd's default keep-storage for the disk under `root`: 10% of its size, counted in
/// whole GiB plus one, expressed in decimal GB; 2 GB when the disk cannot be asked.
pub fn default_gc_cap(root: &Path) -> i64 {
    let Ok(c) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
        return 2_000_000_000;
    };
    // SAFETY: statfs fills the zeroed struct for a valid NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return 2_000_000_000;
    }
    let size = (st.f_bsize as u64).saturating_mul(st.f_blocks);
    gc_cap_for_disk(size)
}

/// The rounding of [`default_gc_cap`] for a disk of `size` bytes.
pub fn gc_cap_for_disk(size: u64) -> i64 {
    let tenth = size / 10;
    ((tenth >> 30) as i64 + 1).saturating_mul(1_000_000_000)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OciWorkerConfig, String> {
        let t: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        OciWorkerConfig::from_toml(&t)
    }

    #[test]
    fn file_then_flags() {
        let mut c = parse(
            r#"
enabled = true
snapshotter = "stargz"
platforms = ["linux/amd64", "linux/arm64/v8"]
networkMode = "cni"
cniConfigPath = "/etc/file/cni.json"
max-parallelism = 4
gckeepstorage = 9000
[labels]
team = "infra"
[[gcpolicy]]
keepBytes = 1000
keepDuration = 3600
filters = ["type==source.local", "type==exec.cachemount"]
"#,
        )
        .unwrap();
        assert_eq!(c.snapshotter, Backend::Stargz);
        assert_eq!(c.platforms.len(), 2);
        assert_eq!(c.gc_policy[0].keep_duration, Duration::from_secs(3600));
        c.apply(&OciWorkerFlags {
            labels: vec!["zone=a".into(), "team=build".into()],
            cni_config_path: Some("/flag/cni.json".into()),
            gc_keep_storage_mb: Some(5),
            ..Default::default()
        })
        .unwrap();
        // The flag lands in the config (the reference erases it).
        assert_eq!(c.cni_config_path, PathBuf::from("/flag/cni.json"));
        assert_eq!(c.labels["team"], "build");
        assert_eq!(c.labels["zone"], "a");
        assert_eq!(c.gc_keep_storage, 5_000_000);
        // Unset flags leave the file alone.
        assert_eq!(c.snapshotter, Backend::Stargz);
        assert_eq!(c.max_parallelism, 4);
        assert_eq!(c.network_mode, NetworkKind::Cni);
    }

    #[test]
    fn defaults_and_gc() {
        let c = OciWorkerConfig::default();
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
    fn bad_values_are_errors_naming_them() {
        for (text, word) in [
            ("snapshotter = \"overlay\"", "overlayfs"),
            ("platforms = [\"linux/\"]", "invalid platform"),
            ("networkMode = \"bridge2\"", "network mode"),
            ("noProcessSandbox = true", "rootless"),
            ("max-parallelism = -1", "max-parallelism"),
            ("gc = \"yes\"", "gc"),
            ("[[gcpolicy]]\nkeepBytes = \"1GB\"", "keepBytes"),
            ("[[gcpolicy]]\nbogus = 1", "bogus"),
            ("colour = 1", "colour"),
            ("labels = 3", "labels"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(word), "{text:?}: {e}");
        }
        let mut c = OciWorkerConfig::default();
        for f in [
            OciWorkerFlags {
                labels: vec!["novalue".into()],
                ..Default::default()
            },
            OciWorkerFlags {
                labels: vec!["=v".into()],
                ..Default::default()
            },
            OciWorkerFlags {
                enabled: Some("maybe".into()),
                ..Default::default()
            },
            OciWorkerFlags {
                platforms: vec!["not a platform".into()],
                ..Default::default()
            },
            OciWorkerFlags {
                no_process_sandbox: Some(true),
                ..Default::default()
            },
        ] {
            assert!(c.apply(&f).is_err(), "{f:?} accepted");
        }
    }
}
