//! The snapshotter's config file, in the format of `containerd-stargz-grpc`'s `config.toml` so
//! an existing one carries over: the keys stargaze acts on are read; the reference's other
//! keys are accepted and listed as not used (or warned about when they ask for something
//! stargaze will not do, like turning verification off); anything else is an error naming the
//! key, so a typo does not pass silently. stargaze's own keys: `cache_dir`, `cache_mib`,
//! `memory_mib`, `background_mib_per_sec`.

use super::error::{from_toml, KeyError, ParseError};
use super::keypath::KeyPath;
use super::ConfigError;
use serde::Deserialize;
use stargaze_fs::remote::HostsConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::oci_worker::{note_unused, Unused};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    noprefetch: Option<bool>,
    no_background_fetch: Option<bool>,
    max_concurrency: Option<i64>,
    no_prometheus: Option<bool>,
    metrics_address: Option<String>,
    cache_dir: Option<PathBuf>,
    cache_mib: Option<u64>,
    memory_mib: Option<u64>,
    background_mib_per_sec: Option<u64>,
    disable_verification: Option<bool>,
    allow_no_verification: Option<bool>,
    http_cache_type: Unused,
    filesystem_cache_type: Unused,
    resolve_result_entry: Unused,
    resolve_result_entry_ttl_sec: Unused,
    prefetch_size: Unused,
    prefetch_timeout_sec: Unused,
    debug: Unused,
    debug_address: Unused,
    mount_timeout_sec: Unused,
    fuse_metrics_emit_wait_duration_sec: Unused,
    blob: Option<Blob>,
    fuse: Option<Fuse>,
    profile: Option<ProfileSection>,
    directory_cache: Unused,
    background_fetch: Unused,
    snapshotter: Unused,
    kubeconfig_keychain: Option<Keychain>,
    cri_keychain: Option<Keychain>,
    resolver: Option<Resolver>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Blob {
    max_retries: Option<u32>,
    min_wait_msec: Option<u64>,
    max_wait_msec: Option<u64>,
    fetching_timeout_sec: Option<u64>,
    valid_interval: Unused,
    check_always: Unused,
    chunk_size: Unused,
    prefetch_chunk_size: Unused,
    force_single_range_mode: Unused,
    max_span_verification_sec: Unused,
}

/// `[profile]`: stargaze's learned prefetch profiles.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileSection {
    enabled: Option<bool>,
    lookup: Option<bool>,
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fuse {
    passthrough: Option<bool>,
    attr_timeout: Unused,
    entry_timeout: Unused,
    merge_buffer_size: Unused,
    passthrough_mode: Unused,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Keychain {
    enable_keychain: Option<bool>,
    kubeconfig_path: Unused,
    image_service_path: Unused,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolver {
    #[serde(default)]
    host: BTreeMap<String, ResolverHost>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolverHost {
    #[serde(default)]
    mirrors: Vec<Mirror>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mirror {
    host: String,
    insecure: Option<bool>,
    request_timeout_sec: Unused,
}

/// What the snapshotter config says.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotterConfig {
    /// Prefetch the landmark files on mount (reference: `noprefetch`).
    pub prefetch: bool,
    /// Fetch the rest of each layer in the background (`no_background_fetch`).
    pub background_fetch: bool,
    /// Background fetch rate limit, MiB/s.
    pub background_mib_per_sec: Option<u64>,
    /// Requests at once per registry host (`max_concurrency`).
    pub max_per_host: Option<usize>,
    /// Prometheus endpoint (`metrics_address`), unless `no_prometheus`.
    pub metrics_address: Option<String>,
    /// Disk cache directory.
    pub cache_dir: Option<PathBuf>,
    /// Disk cache cap, MiB.
    pub cache_mib: Option<u64>,
    /// Memory cache, MiB.
    pub memory_mib: Option<u64>,
    /// FUSE passthrough (`[fuse] passthrough`).
    pub passthrough: Option<bool>,
    /// Tries per request (`[blob] max_retries` + 1).
    pub attempts: Option<u32>,
    /// Backoff bounds (`[blob] min_wait_msec`, `max_wait_msec`).
    pub backoff: (Option<Duration>, Option<Duration>),
    /// Whole-request limit (`[blob] fetching_timeout_sec`).
    pub request_timeout: Option<Duration>,
    /// Mirrors and insecure hosts (`[resolver.host."H"] mirrors`).
    pub hosts: HostsConfig,
    /// Record and replay learned prefetch profiles (`[profile] enabled`).
    pub profile: bool,
    /// Look for an image's profile in its registry on a cold start (`[profile] lookup`).
    pub profile_lookup: bool,
    /// Where this machine's profiles are (`[profile] dir`).
    pub profile_dir: Option<PathBuf>,
    /// Keys read but not acted on, for an info line.
    pub not_used: Vec<String>,
    /// Keys whose wish stargaze does not follow, with why, for warnings.
    pub refused: Vec<String>,
}

impl Default for SnapshotterConfig {
    fn default() -> Self {
        SnapshotterConfig {
            prefetch: true,
            background_fetch: true,
            background_mib_per_sec: None,
            max_per_host: None,
            metrics_address: None,
            cache_dir: None,
            cache_mib: None,
            memory_mib: None,
            passthrough: None,
            attempts: None,
            backoff: (None, None),
            request_timeout: None,
            hosts: HostsConfig::default(),
            profile: true,
            profile_lookup: true,
            profile_dir: None,
            not_used: Vec::new(),
            refused: Vec::new(),
        }
    }
}

impl SnapshotterConfig {
    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        super::load_with(path, Self::parse)
    }

    /// Parses config text.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let raw: Raw = from_toml(text)?;
        let key = |k: &[&str]| KeyPath::of(k);
        let mut c = SnapshotterConfig {
            prefetch: !raw.noprefetch.unwrap_or(false),
            background_fetch: !raw.no_background_fetch.unwrap_or(false),
            background_mib_per_sec: raw.background_mib_per_sec,
            cache_dir: raw.cache_dir,
            cache_mib: raw.cache_mib,
            memory_mib: raw.memory_mib,
            ..SnapshotterConfig::default()
        };
        if let Some(n) = raw.max_concurrency {
            if !(1..=1024).contains(&n) {
                let e = KeyError::OutOfRange {
                    value: n,
                    min: 1,
                    max: 1024,
                };
                return Err(ParseError::at(key(&["max_concurrency"]), e));
            }
            c.max_per_host = Some(n as usize);
        }
        if let Some(0) = raw.background_mib_per_sec {
            let e = KeyError::Zero("use no_background_fetch");
            return Err(ParseError::at(key(&["background_mib_per_sec"]), e));
        }
        c.metrics_address = match (raw.no_prometheus.unwrap_or(false), raw.metrics_address) {
            (true, _) | (_, None) => None,
            (false, Some(a)) if a.is_empty() => None,
            (false, Some(a)) => Some(a),
        };
        if raw.disable_verification == Some(true) || raw.allow_no_verification == Some(true) {
            c.refused.push(
                "disable_verification / allow_no_verification: every chunk is verified anyway"
                    .into(),
            );
        }
        for (name, k) in [
            ("kubeconfig_keychain", &raw.kubeconfig_keychain),
            ("cri_keychain", &raw.cri_keychain),
        ] {
            if let Some(k) = k {
                if k.enable_keychain == Some(true) {
                    c.refused.push(format!(
                        "[{name}] enable_keychain: not supported; credentials come from sessions and the docker config"
                    ));
                }
                note_unused(
                    &[
                        (&format!("{name}.kubeconfig_path"), &k.kubeconfig_path),
                        (&format!("{name}.image_service_path"), &k.image_service_path),
                    ],
                    &mut c.not_used,
                );
            }
        }
        note_unused(
            &[
                ("http_cache_type", &raw.http_cache_type),
                ("filesystem_cache_type", &raw.filesystem_cache_type),
                ("resolve_result_entry", &raw.resolve_result_entry),
                (
                    "resolve_result_entry_ttl_sec",
                    &raw.resolve_result_entry_ttl_sec,
                ),
                ("prefetch_size", &raw.prefetch_size),
                ("prefetch_timeout_sec", &raw.prefetch_timeout_sec),
                ("debug", &raw.debug),
                ("debug_address", &raw.debug_address),
                ("mount_timeout_sec", &raw.mount_timeout_sec),
                (
                    "fuse_metrics_emit_wait_duration_sec",
                    &raw.fuse_metrics_emit_wait_duration_sec,
                ),
                ("directory_cache", &raw.directory_cache),
                ("background_fetch", &raw.background_fetch),
                ("snapshotter", &raw.snapshotter),
            ],
            &mut c.not_used,
        );
        if let Some(b) = raw.blob {
            c.attempts = b.max_retries.map(|r| r.saturating_add(1).min(100));
            c.backoff = (
                b.min_wait_msec.map(Duration::from_millis),
                b.max_wait_msec.map(Duration::from_millis),
            );
            if let (Some(low), Some(high)) = (b.min_wait_msec, b.max_wait_msec) {
                if low > high {
                    let e = KeyError::Inverted {
                        low,
                        high_key: "max_wait_msec",
                        high,
                    };
                    return Err(ParseError::at(key(&["blob", "min_wait_msec"]), e));
                }
            }
            c.request_timeout = match b.fetching_timeout_sec {
                Some(0) => {
                    let e = KeyError::Zero("requests would time out at once");
                    return Err(ParseError::at(key(&["blob", "fetching_timeout_sec"]), e));
                }
                s => s.map(Duration::from_secs),
            };
            note_unused(
                &[
                    ("blob.valid_interval", &b.valid_interval),
                    ("blob.check_always", &b.check_always),
                    ("blob.chunk_size", &b.chunk_size),
                    ("blob.prefetch_chunk_size", &b.prefetch_chunk_size),
                    ("blob.force_single_range_mode", &b.force_single_range_mode),
                    (
                        "blob.max_span_verification_sec",
                        &b.max_span_verification_sec,
                    ),
                ],
                &mut c.not_used,
            );
        }
        if let Some(p) = raw.profile {
            c.profile = p.enabled.unwrap_or(true);
            c.profile_lookup = p.lookup.unwrap_or(true);
            c.profile_dir = p.dir;
        }
        if let Some(f) = raw.fuse {
            c.passthrough = f.passthrough;
            note_unused(
                &[
                    ("fuse.attr_timeout", &f.attr_timeout),
                    ("fuse.entry_timeout", &f.entry_timeout),
                    ("fuse.merge_buffer_size", &f.merge_buffer_size),
                    ("fuse.passthrough_mode", &f.passthrough_mode),
                ],
                &mut c.not_used,
            );
        }
        if let Some(r) = raw.resolver {
            for (host, h) in r.host {
                for (i, m) in h.mirrors.into_iter().enumerate() {
                    let insecure = m.insecure.unwrap_or(false);
                    let url = if m.host.contains("://") {
                        m.host.clone()
                    } else {
                        format!("{}://{}", if insecure { "http" } else { "https" }, m.host)
                    };
                    c.hosts.add_mirror(&host, &url).map_err(|reason| {
                        let at = key(&["resolver", "host", &host, "mirrors"]).index(i);
                        ParseError::at(at.key("host"), KeyError::mirror(&m.host, reason))
                    })?;
                    if insecure {
                        let bare = m.host.split("://").last().unwrap_or(&m.host).to_string();
                        c.hosts.set_insecure(&bare);
                    }
                    note_unused(
                        &[(
                            &format!("resolver.host.{host}.mirrors.request_timeout_sec"),
                            &m.request_timeout_sec,
                        )],
                        &mut c.not_used,
                    );
                }
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_config_carries_over() {
        let c = SnapshotterConfig::parse(
            r#"
noprefetch = true
max_concurrency = 4
metrics_address = "127.0.0.1:8234"
http_cache_type = "memory"
disable_verification = true
[blob]
max_retries = 2
min_wait_msec = 30
max_wait_msec = 300
fetching_timeout_sec = 120
chunk_size = 50000
[fuse]
passthrough = false
attr_timeout = 1
[directory_cache]
direct = true
[resolver.host."docker.io"]
mirrors = [{host = "127.0.0.1:5000", insecure = true}]
"#,
        )
        .unwrap();
        assert!(!c.prefetch && c.background_fetch);
        assert_eq!(c.max_per_host, Some(4));
        assert_eq!(c.metrics_address.as_deref(), Some("127.0.0.1:8234"));
        assert_eq!(c.attempts, Some(3));
        assert_eq!(c.request_timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.passthrough, Some(false));
        assert!(c.hosts.is_insecure("127.0.0.1:5000"));
        assert!(c.not_used.contains(&"http_cache_type".to_string()));
        assert!(c.not_used.contains(&"blob.chunk_size".to_string()));
        assert_eq!(c.refused.len(), 1);
    }

    #[test]
    fn profile_section() {
        let d = SnapshotterConfig::parse("").unwrap();
        assert!(d.profile && d.profile_lookup && d.profile_dir.is_none());
        let c = SnapshotterConfig::parse("[profile]\nlookup = false\ndir = \"/p\"").unwrap();
        assert!(c.profile && !c.profile_lookup);
        assert_eq!(c.profile_dir.as_deref(), Some(Path::new("/p")));
        let off = SnapshotterConfig::parse("[profile]\nenabled = false").unwrap();
        assert!(!off.profile);
        assert!(SnapshotterConfig::parse("[profile]\nlookups = false").is_err());
    }

    #[test]
    fn bad_configs_name_the_problem() {
        for (text, want) in [
            ("nopreftch = true", "nopreftch: unknown field `nopreftch`"),
            ("noprefetch = \"yes\"", "noprefetch: invalid type"),
            (
                "max_concurrency = 0",
                "max_concurrency: 0: expected 1..=1024",
            ),
            (
                "background_mib_per_sec = 0",
                "background_mib_per_sec: 0: use no_background_fetch",
            ),
            (
                "[blob]\nmin_wait_msec = 5\nmax_wait_msec = 1",
                "[blob] min_wait_msec: 5 above max_wait_msec (1)",
            ),
            (
                "[blob]\nfetching_timeout_sec = 0",
                "[blob] fetching_timeout_sec: 0:",
            ),
            (
                "[resolver.host.\"x\"]\nmirrors = [{host = \"\"}]",
                "[resolver.host.x.mirrors[0]] host: mirror \"\":",
            ),
            ("[fuse]\nbogus = 1", "[fuse] bogus: unknown field `bogus`"),
            ("[[", "TOML parse error"),
        ] {
            let e = SnapshotterConfig::parse(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }
}
