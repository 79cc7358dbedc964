//! Snapshotters with containerd's semantics: snapshots are named by keys, form chains through
//! committed parents, and are either active (writable), views (read-only) or committed
//! (immutable, usable as parents). [`Snapshotter`] is the contract every backend keeps — the
//! containerd snapshots gRPC service and the worker both stand on it — and [`SnapshotError`]
//! carries the error kinds containerd maps to gRPC codes.
//!
//! Keys are only ever names in the metadata store: directories are named by numeric ids, so a
//! key like `default/3/extract-1 sha256:…` (containerd's own form) or one holding `..` can never
//! reach the file system.

mod backend;
pub mod filter;
mod local;
pub mod mounts;
pub mod native;
pub mod open;
pub mod overlay;
pub mod probe;
pub mod stargz;
pub mod store;
mod usage;

pub use backend::{Backend, UnknownBackend};
pub use local::{Driver, LocalSnapshotter};

use std::collections::BTreeMap;
use std::time::SystemTime;

/// Longest key accepted.
pub const MAX_KEY: usize = 4096;
/// Longest label (key + value), as containerd enforces.
pub const MAX_LABEL: usize = 4096;
/// Most labels on one snapshot.
pub const MAX_LABELS: usize = 256;

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, not committable.
    View,
    /// Writable, committable.
    Active,
    /// Immutable; a parent for others.
    Committed,
}

impl Kind {
    /// containerd's spelling (`view`, `active`, `committed`), as filters use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// Labels of a snapshot.
pub type Labels = BTreeMap<String, String>;

/// What containerd knows of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Key (active, view) or name (committed).
    pub name: String,
    /// Name of the committed parent, or empty.
    pub parent: String,
    /// Kind.
    pub kind: Kind,
    /// Labels.
    pub labels: Labels,
    /// When created.
    pub created: SystemTime,
    /// When last changed.
    pub updated: SystemTime,
}

/// Disk usage of a snapshot's own layer (not its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes on disk.
    pub size: i64,
    /// Inodes.
    pub inodes: i64,
}

/// One mount to make, as containerd describes it (`type`, `source`, `options`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// File system type (`bind`, `overlay`, `fuse3.fuse-overlayfs`).
    pub kind: String,
    /// Source.
    pub source: String,
    /// Target inside the rootfs (empty: the rootfs itself).
    pub target: String,
    /// Options.
    pub options: Vec<String>,
}

/// Why a snapshot operation failed; the first five are containerd's error kinds.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No such snapshot (or parent).
    #[error("{0}: not found")]
    NotFound(String),
    /// The key or name is taken.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The snapshot is in the wrong state for this (e.g. commit of a view, removal of a
    /// parent).
    #[error("{0}: failed precondition")]
    FailedPrecondition(String),
    /// A bad argument (key, label, filter, field path).
    #[error("{0}: invalid argument")]
    InvalidArgument(String),
    /// A backend cannot serve now (e.g. a lazy layer's registry is unreachable).
    #[error("{0}: unavailable")]
    Unavailable(String),
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Store(String),
    /// File-system work failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, SnapshotError>;

/// Maps an I/O error to [`SnapshotError::Io`] with what was being done.
pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let context = context.into();
    move |source| SnapshotError::Io { context, source }
}

/// The contract of every snapshotter backend (containerd's `Snapshotter`).
pub trait Snapshotter: Send + Sync {
    /// The backend's name (`native`, `overlayfs`, `fuse-overlayfs`, `stargz`).
    fn name(&self) -> &str;
    /// Information on `key`.
    fn stat(&self, key: &str) -> Result<Info>;
    /// Changes labels: all of them (no field paths, or `labels`), or single ones
    /// (`labels.KEY`; absent from `info` means delete). Other fields are refused.
    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info>;
    /// Disk usage of `key`'s own layer.
    fn usage(&self, key: &str) -> Result<Usage>;
    /// Mounts of an active snapshot or a view.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;
    /// A new active snapshot `key` over committed `parent` (empty: none).
    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;
    /// A new read-only view `key` of committed `parent`.
    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>>;
    /// Turns active `key` into committed `name` (with `labels`).
    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()>;
    /// Removes `key`; fails while it has children.
    fn remove(&self, key: &str) -> Result<()>;
    /// Calls `f` with every snapshot matching any of `filters` (containerd filter syntax;
    /// none: all).
    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()>;
    /// Removes directories no snapshot owns (left by a crash).
    fn cleanup(&self) -> Result<()>;
}

/// Checks a key or name from outside.
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(SnapshotError::InvalidArgument("empty snapshot key".into()));
    }
    if key.len() > MAX_KEY {
        return Err(SnapshotError::InvalidArgument(format!(
            "snapshot key of {} bytes (at most {MAX_KEY})",
            key.len()
        )));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(SnapshotError::InvalidArgument(format!(
            "snapshot key {key:?} holds control characters"
        )));
    }
    Ok(())
}

/// Checks labels from outside: each key + value at most [`MAX_LABEL`] bytes, keys non-empty.
pub fn validate_labels(labels: &Labels) -> Result<()> {
    if labels.len() > MAX_LABELS {
        return Err(SnapshotError::InvalidArgument(format!(
            "{} labels (at most {MAX_LABELS})",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.is_empty() {
            return Err(SnapshotError::InvalidArgument("empty label key".into()));
        }
        if k.len() + v.len() > MAX_LABEL {
            let shown: String = k.chars().take(64).collect();
            return Err(SnapshotError::InvalidArgument(format!(
                "label {shown:?}: key and value are {} bytes (at most {MAX_LABEL})",
                k.len() + v.len()
            )));
        }
    }
    Ok(())
}
