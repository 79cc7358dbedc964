//! The OCI worker's GC policy as buildkitd keeps it: `[[worker.oci.gcpolicy]]` rules read from
//! the file, and buildkitd's default rules with a keep-storage bound derived from the disk
//! when none are configured. The default policy's first rule matches any of its three record
//! types (the reference once joined them into one filter that matched nothing).

use serde::Deserialize;
use std::path::Path;
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

/// `[[worker.oci.gcpolicy]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGcPolicy {
    #[serde(default)]
    all: bool,
    #[serde(default, rename = "keepBytes")]
    keep_bytes: u64,
    /// Seconds.
    #[serde(default, rename = "keepDuration")]
    keep_duration: u64,
    #[serde(default)]
    filters: Vec<String>,
}

impl From<RawGcPolicy> for GcPolicy {
    fn from(r: RawGcPolicy) -> Self {
        GcPolicy {
            all: r.all,
            keep_bytes: i64::try_from(r.keep_bytes).unwrap_or(i64::MAX),
            keep_duration: Duration::from_secs(r.keep_duration),
            filters: r.filters,
        }
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
