//! Why the OCI worker could not be opened (or described): one variant per step of
//! [`super::OciWorker::open`], each naming the file, socket or setting involved.

use crate::config::{ConfigError, FlagError};
use crate::executor::cni::CniError;
use crate::executor::ExecError;
use crate::identity::IdentityError;
use crate::registry_client::RegistrySetupError;
use crate::snapshot::SnapshotError;
use stargaze_fs::cache::DiskCacheError;
use stargaze_fs::image::ImageError;
use std::path::PathBuf;

/// Why the worker could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The config file could not be read or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The flags do not apply over the config file.
    #[error("worker flags: {0}")]
    Flags(#[from] FlagError),
    /// The proxy snapshotter socket does not exist.
    #[error("--oci-worker-proxy-snapshotter-path {}: no such socket", .0.display())]
    NoProxySocket(PathBuf),
    /// The registry client could not be assembled.
    #[error(transparent)]
    Registry(#[from] RegistrySetupError),
    /// The worker is disabled by the config or a flag.
    #[error("the OCI worker is disabled (--oci-worker=false)")]
    Disabled,
    /// No OCI runtime binary was found.
    #[error("no OCI worker: runtime binary not found ({tried})")]
    NoRuntime {
        /// The names looked for.
        tried: String,
    },
    /// The worker is enabled explicitly, but no runtime binary was found.
    #[error("the OCI worker is enabled but no runtime binary was found ({tried})")]
    EnabledWithoutRuntime {
        /// The names looked for.
        tried: String,
    },
    /// A directory could not be made.
    #[error("creating {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The state directory or the worker ID.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The state directory's lock file could not be opened.
    #[error("opening {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the state directory in the other mode.
    #[error("{} is busy ({}); try again when it finishes", .dir.display(), if *.building { "a build is running" } else { "a prune is running" })]
    Busy {
        /// The state directory.
        dir: PathBuf,
        /// A build holds it (else a prune does).
        building: bool,
    },
    /// The proxy snapshotter did not answer.
    #[error("--oci-worker-proxy-snapshotter-path {}: {source}", .path.display())]
    Proxy {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: SnapshotError,
    },
    /// The chunk cache could not be opened.
    #[error("opening the chunk cache {}: {source}", .path.display())]
    ChunkCache {
        /// Its directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: DiskCacheError,
    },
    /// The snapshotter could not be opened.
    #[error("opening the snapshotter at {}: {source}", .path.display())]
    Snapshotter {
        /// Its root.
        path: PathBuf,
        /// Cause.
        #[source]
        source: SnapshotError,
    },
    /// The CNI network config (network mode cni) could not be loaded.
    #[error("--oci-worker-net=cni: {0}")]
    Cni(#[from] CniError),
    /// The executor could not be set up.
    #[error("setting up the executor: {0}")]
    Executor(#[from] ExecError),
    /// The content store could not be opened.
    #[error("opening the content store: {0}")]
    Content(#[from] ImageError),
    /// The step cache could not be opened.
    #[error("opening the step cache {}: {source}", .path.display())]
    StepCache {
        /// Its directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
