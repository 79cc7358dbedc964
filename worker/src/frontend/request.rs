//! What a build is given and what it gives back: the worker it runs on (snapshotter,
//! executor, registry client, content store, step cache, parallelism bound, cancel
//! signal), the request (Dockerfile, context, build args, target, platform, layer format,
//! cache use), and the result of a stage and of the build (image config, layers, top
//! snapshot, cache key, counts).

use super::cache::StepCache;
use super::dockerfile::Dockerfile;
use super::image_config::ImageConfig;
use super::layer::LayerBlob;
use crate::executor::Executor;
use crate::snapshot::Snapshotter;
use stargaze_fs::image::OciLayout;
use stargaze_fs::remote::{Platform, Reference, RegistryClient};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Everything a build runs on (a clone shares all of it).
#[derive(Clone)]
pub struct Worker {
    /// The snapshotter of base layers and steps.
    pub snapshotter: Arc<dyn Snapshotter>,
    /// Runs RUN steps.
    pub executor: Arc<Executor>,
    /// Registry access for base images and export.
    pub client: Arc<RegistryClient>,
    /// Layer blobs of steps, and locally stored images.
    pub content: OciLayout,
    /// Step cache records.
    pub cache: StepCache,
    /// Scratch space for mount points (same file system as the state).
    pub tmp: PathBuf,
    /// The directories of `RUN --mount=type=cache`, kept across builds.
    pub cache_mounts: PathBuf,
    /// Bounds RUN steps at once.
    pub parallelism: Arc<Semaphore>,
    /// Runtime for blocking snapshotter work that needs async calls.
    pub rt: tokio::runtime::Handle,
    /// Turns true to cancel: running steps are killed through the runtime.
    pub cancel: tokio::sync::watch::Receiver<bool>,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The parsed Dockerfile.
    pub dockerfile: Dockerfile,
    /// The context directory.
    pub context: PathBuf,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Stage to build (default: the last).
    pub target: Option<String>,
    /// Platform of base images and the result.
    pub platform: Platform,
    /// Layers as eStargz.
    pub estargz: bool,
    /// Ignore the step cache.
    pub no_cache: bool,
    /// Session IDs asked, in order, for registry credentials by every registry access of the
    /// build (empty: the worker's own configuration only).
    pub sessions: Vec<String>,
    /// Where `RUN --mount=type=secret` gets its secrets (none: no secret is found).
    pub secrets: Option<Arc<dyn SecretSource>>,
    /// Where `RUN --mount=type=ssh` forwards its agent connections (none: no agent).
    pub ssh: Option<Arc<dyn SshSource>>,
}

/// Why an SSH agent could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    /// No session has it.
    #[error("no SSH key {0:?} forwarded from the client")]
    NotFound(String),
    /// Asking for it failed.
    #[error("ssh agent {id}: {message}")]
    Failed {
        /// The agent ID.
        id: String,
        /// What went wrong.
        message: String,
    },
}

/// Forwards the SSH agent connections of a build (buildkitd: to the client's sessions).
pub trait SshSource: Send + Sync + std::fmt::Debug {
    /// Whether agent `id` is there.
    fn check<'a>(
        &'a self,
        id: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<(), SshError>>;
    /// Carries one connection to agent `id` until either side closes it.
    fn forward(
        &self,
        id: String,
        conn: tokio::net::UnixStream,
    ) -> futures_util::future::BoxFuture<'static, Result<(), SshError>>;
}

/// Why a secret could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SecretError {
    /// No session has it.
    #[error("secret {0}: not found")]
    NotFound(String),
    /// Asking for it failed.
    #[error("secret {id}: {message}")]
    Failed {
        /// The secret.
        id: String,
        /// What went wrong.
        message: String,
    },
}

/// Answers the secrets of a build (buildkitd: the client's sessions).
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// The secret `id`'s bytes.
    fn secret<'a>(
        &'a self,
        id: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<u8>, SecretError>>;
}

/// A layer of a stage's image: its descriptor and where its blob is.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    /// The blob.
    pub blob: LayerBlob,
    /// The registry repository holding it (base layers); `None`: the content store.
    pub remote: Option<Reference>,
}

/// The result of a stage.
#[derive(Debug, Clone)]
pub struct StageResult {
    /// The image config.
    pub config: ImageConfig,
    /// Layers, bottom first.
    pub layers: Vec<ImageLayer>,
    /// The committed snapshot of the rootfs (none: empty).
    pub top: Option<String>,
    /// The cache key of the state.
    pub key: String,
}

/// Counts of a build.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildStats {
    /// Steps executed (RUN, COPY, ADD).
    pub executed: usize,
    /// Steps answered from the cache.
    pub cached: usize,
    /// Base layers mounted lazily.
    pub lazy_layers: usize,
    /// Base layers pulled and unpacked.
    pub pulled_layers: usize,
    /// Base layers already present.
    pub present_layers: usize,
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The target stage's image.
    pub image: StageResult,
    /// Counts.
    pub stats: BuildStats,
}
