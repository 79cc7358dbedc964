//! The build frontend: a Dockerfile subset executed on the OCI worker — stages over base
//! images (lazily mounted with the stargz snapshotter), RUN steps through the runc
//! executor, COPY/ADD from the context or another stage, a step cache, and export as an OCI
//! image to a layout or a registry.

pub mod base;
pub mod cache;
pub mod copy;
pub mod diff;
pub mod dockerfile;
pub mod export;
pub mod layer;
pub mod progress;
pub mod solve;
pub mod words;

pub use solve::{build, BuildOutput, BuildRequest, Worker};

use crate::executor::ExecError;
use crate::snapshot::SnapshotError;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse.
    #[error(transparent)]
    Parse(#[from] dockerfile::ParseError),
    /// An instruction's arguments are wrong.
    #[error("Dockerfile line {line}: {message}")]
    Instruction {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A step failed (its command, a copy, the runtime).
    #[error("step {step:?} (Dockerfile line {line}) failed: {reason}")]
    Step {
        /// The instruction.
        step: String,
        /// 1-based line.
        line: usize,
        /// Why.
        reason: String,
        /// The exit code when the process ran and failed.
        exit_code: Option<i32>,
    },
    /// A base image could not be used.
    #[error("base image {image}: {reason}")]
    Base {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// The snapshotter failed.
    #[error("snapshotter: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Writing a layer failed.
    #[error(transparent)]
    Diff(#[from] diff::DiffError),
    /// Exporting failed.
    #[error("export: {0}")]
    Export(String),
    /// A stage this one depends on failed.
    #[error("stage {stage} failed: {reason}")]
    Dependency {
        /// The stage.
        stage: String,
        /// Its error.
        reason: String,
    },
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
            BuildError::Step { exit_code, .. } => *exit_code,
            _ => None,
        }
    }

    fn step(ins: &dockerfile::Instruction, e: impl std::fmt::Display) -> Self {
        BuildError::Step {
            step: ins.text.clone(),
            line: ins.line,
            reason: e.to_string(),
            exit_code: None,
        }
    }

    fn exec(ins: &dockerfile::Instruction, e: ExecError) -> Self {
        let exit_code = match &e {
            ExecError::Exit { code, .. } => Some(*code),
            _ => None,
        };
        BuildError::Step {
            step: ins.text.clone(),
            line: ins.line,
            reason: e.to_string(),
            exit_code,
        }
    }
}

pub(crate) fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> BuildError {
    let context = context.to_string();
    move |source| BuildError::Io { context, source }
}
