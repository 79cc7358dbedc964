//! Why credentials could not be had: a docker config that cannot be read or is malformed, a
//! credential helper that is misnamed, fails or hangs, or a session table that broke. The
//! authenticator (token.rs in this folder) reports it as a refused authentication to the
//! host; the CLI shows it as is. Providers outside this crate (a client's session) report
//! their own typed errors inside [`CredentialError::Session`].

use crate::small_file::SmallFileError;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a credential provider could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The docker config file could not be read or is too large.
    #[error(transparent)]
    File(#[from] SmallFileError),
    /// The docker config file is not a docker config.
    #[error("{} is not a valid docker config: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// An `auths` entry's `auth` is not base64 of UTF-8 `user:password`.
    #[error("{}: an `auth` entry is {problem}", path.display())]
    AuthEntry {
        /// The file.
        path: PathBuf,
        /// What is wrong (`not base64`, `not UTF-8`, `not user:password`).
        problem: &'static str,
    },
    /// A `credHelpers`/`credsStore` name that could name a path, not a helper.
    #[error("credential helper name {0:?} is not valid")]
    HelperName(String),
    /// The helper program could not be started.
    #[error("running {program}: {source}")]
    HelperSpawn {
        /// `docker-credential-<name>`.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the helper failed.
    #[error("waiting for {program}: {source}")]
    HelperWait {
        /// `docker-credential-<name>`.
        program: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The helper did not answer in time (it was killed).
    #[error("{program} did not answer within {timeout:?}")]
    HelperTimeout {
        /// `docker-credential-<name>`.
        program: String,
        /// How long it had.
        timeout: Duration,
    },
    /// The helper failed otherwise than with "credentials not found".
    #[error("{program} failed ({status})")]
    HelperFailed {
        /// `docker-credential-<name>`.
        program: String,
        /// Its exit status.
        status: ExitStatus,
    },
    /// The helper's output is not its JSON reply.
    #[error("{program} printed something that is not its JSON reply")]
    HelperReply {
        /// `docker-credential-<name>`.
        program: String,
    },
    /// A thread holding the session table panicked.
    #[error("session table is poisoned")]
    Poisoned,
    /// A provider's background task failed.
    #[error("credential lookup task failed")]
    Task,
    /// A provider did not answer within the authenticator's bound.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A session's provider failed (its own error, e.g. the client's answer or silence).
    #[error("session {session}: {source}")]
    Session {
        /// The session ID.
        session: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
