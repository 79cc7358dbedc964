//! The build frontend: a Dockerfile subset executed on the OCI worker — stages over base
//! images (lazily mounted with the stargz snapshotter), RUN steps through the runc
//! executor, COPY/ADD from the context or another stage, a step cache, and export as an OCI
//! image to a layout or a registry.
//!
//! Reading order: `request` is what a build takes and gives back; `dockerfile` and
//! `words` parse; `solve` schedules the stages and runs their instructions; `from` and
//! `base` give a stage its base image; `instructions` are the metadata instructions over
//! the typed `image_config`; `run_step` and `copy_step` are RUN and COPY/ADD, sharing
//! `step` (the step cache, committing a step's layer) and `guards` (mounts, views and
//! snapshots undone on drop); `copy`, `diff` and `layer` are the file work underneath;
//! `export` writes the result.

pub mod base;
pub mod cache;
pub mod copy;
mod copy_step;
pub mod diff;
pub mod dockerfile;
pub mod export;
mod from;
pub(crate) mod guards;
pub mod heredoc;
pub mod image_config;
pub mod instructions;
pub mod layer;
pub mod progress;
pub mod request;
mod run_mount;
mod run_mounts;
mod run_step;
pub mod solve;
mod step;
mod suggest;
pub mod words;
mod workdir_step;

pub use image_config::ImageConfig;
pub use request::{
    BuildOutput, BuildRequest, BuildStats, ImageLayer, SecretError, SecretSource, SshError,
    SshSource, StageResult, Worker,
};
pub use solve::build;
pub use step::BUILD_KEY_LABEL;

use crate::executor::user::UserError;
use crate::executor::ExecError;
use crate::snapshot::{Mount, SnapshotError};
use std::sync::Arc;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse.
    #[error(transparent)]
    Parse(#[from] dockerfile::ParseError),
    /// An instruction's arguments are wrong.
    #[error("Dockerfile line {line}: {source}")]
    Instruction {
        /// 1-based line (0: not from a line, like `--target`).
        line: usize,
        /// What is wrong.
        #[source]
        source: instructions::InstructionError,
    },
    /// A step failed (its command, a copy, the runtime).
    #[error("step {step:?} (Dockerfile line {line}) failed: {source}")]
    Step {
        /// The instruction.
        step: String,
        /// 1-based line.
        line: usize,
        /// Why.
        #[source]
        source: Box<BuildError>,
    },
    /// A base image could not be used.
    #[error("base image {image}: {source}")]
    Base {
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: Box<base::BaseError>,
    },
    /// A base image a stage (or `COPY --from`) names failed (for every stage naming it).
    #[error("{}", image_failed(.image, .source))]
    Image {
        /// The image as named.
        image: String,
        /// Its error.
        #[source]
        source: Arc<BuildError>,
    },
    /// The snapshotter failed.
    #[error("snapshotter: {0}")]
    Snapshot(#[from] SnapshotError),
    /// A RUN step's process failed or could not run.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// A COPY or ADD could not read or write its files.
    #[error(transparent)]
    Copy(#[from] copy::CopyError),
    /// `--chown` names no user or group of the image.
    #[error(transparent)]
    User(#[from] UserError),
    /// A `RUN --mount` is wrong.
    #[error("Dockerfile line {line}: {source}")]
    RunMount {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        #[source]
        source: run_mount::MountError,
    },
    /// An SSH agent a step mounts could not be had.
    #[error(transparent)]
    Ssh(#[from] request::SshError),
    /// A secret a step mounts could not be had.
    #[error(transparent)]
    Secret(#[from] request::SecretError),
    /// A step's snapshot has mounts whose changes cannot be read.
    #[error("cannot read changes of mounts {0:?}")]
    Changes(Vec<Mount>),
    /// Writing a layer's tar failed.
    #[error(transparent)]
    Diff(#[from] diff::DiffError),
    /// Storing a layer failed.
    #[error("writing a layer: {0}")]
    Layer(#[from] layer::LayerError),
    /// Exporting failed.
    #[error("export: {0}")]
    Export(#[from] export::ExportError),
    /// A stage this one depends on failed.
    #[error("stage {stage} failed: {source}")]
    Dependency {
        /// The stage.
        stage: String,
        /// Its error.
        #[source]
        source: Arc<BuildError>,
    },
    /// A blocking worker thread panicked or was cancelled.
    #[error("worker thread failed: {0}")]
    Thread(#[from] tokio::task::JoinError),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// The exit code of a failed RUN step, if that is what failed.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            BuildError::Step { source, .. } => match source.as_ref() {
                BuildError::Exec(ExecError::Exit { code, .. }) => Some(*code),
                _ => None,
            },
            _ => None,
        }
    }
}

pub(crate) fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BuildError {
    let context = context.to_string();
    move |source| BuildError::Io { context, source }
}

/// `BuildError::Image`'s message: the image named once, also when its error names it.
fn image_failed(image: &str, source: &BuildError) -> String {
    match source {
        BuildError::Base { image: i, .. } if i == image => source.to_string(),
        _ => format!("base image {image}: {source}"),
    }
}
