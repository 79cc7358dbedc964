//! Errors of registry access. Messages name the registry, repository and object but never a
//! credential: tokens and passwords only travel in headers we build, never in text we print.

/// What can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A reference could not be parsed.
    #[error(transparent)]
    Reference(#[from] super::reference::ReferenceError),
    /// Could not connect or the connection broke, after retries.
    #[error("{url}: {reason}")]
    Transport {
        /// The URL (no credentials ever appear in our URLs).
        url: String,
        /// Cause, flattened to text.
        reason: String,
    },
    /// The registry answered with an error status.
    #[error("{url}: HTTP {status}{}", if .message.is_empty() { String::new() } else { format!(": {}", .message) })]
    Status {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The registry's error message, if it sent one.
        message: String,
    },
    /// The object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Authentication failed or was refused.
    #[error("authentication to {host} failed: {reason}")]
    Auth {
        /// The registry host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The registry sent something that breaks the protocol or lies about content.
    #[error("{url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Content does not hash to the digest it was asked for.
    #[error("{what}: content hashes to {actual}, expected {expected}")]
    Digest {
        /// What was fetched.
        what: String,
        /// Expected digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// Too many redirects.
    #[error("{url}: more than {max} redirects")]
    Redirects {
        /// The first URL.
        url: String,
        /// The limit.
        max: usize,
    },
    /// No manifest for the wanted platform.
    #[error("{reference}: no manifest for platform {platform} (has: {available})")]
    Platform {
        /// The image.
        reference: String,
        /// Wanted platform.
        platform: String,
        /// Platforms in the index.
        available: String,
    },
    /// The configuration (hosts, docker config, credential helper) is unusable.
    #[error("{0}")]
    Config(String),
    /// Local file I/O while moving blobs.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The operation was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl RemoteError {
    /// Whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Transport { .. } => true,
            RemoteError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        RemoteError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn protocol(url: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        RemoteError::Protocol {
            url: url.to_string(),
            reason: reason.into(),
        }
    }
}
