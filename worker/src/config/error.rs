//! Why a config file was refused, in one shape for both formats (buildkitd's TOML and the
//! snapshotter's `config.toml`): the file, then the key as `[section] key`, then what is wrong
//! with it — e.g. `config.toml: [worker.oci] snapshotter: unknown snapshotter name "foo"
//! (choose one of …)`. Text that is not TOML at all gets toml's line, column and snippet.

use super::keypath::KeyPath;
use serde::de::DeserializeOwned;
use stargaze_fs::remote::MirrorError;
use std::path::PathBuf;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause (in the message, so not also a source: chains would print it twice).
        error: std::io::Error,
    },
    /// Larger than any config should be.
    #[error("{}: larger than {max} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bound.
        max: u64,
    },
    /// Not TOML, or a key or value is refused.
    #[error("{}: {error}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (in the message, not also a source).
        error: Box<ParseError>,
    },
}

/// What is wrong with a config text.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not TOML, or wrong as a whole (toml's message, with line and column).
    #[error("{0}")]
    Document(toml::de::Error),
    /// One key is refused.
    #[error("{key}: {reason}")]
    Key {
        /// Where.
        key: KeyPath,
        /// Why (in the message, not also a source).
        reason: KeyError,
    },
}

impl ParseError {
    /// The error for the setting at `key`.
    pub(crate) fn at(key: KeyPath, reason: impl Into<KeyError>) -> ParseError {
        ParseError::Key {
            key,
            reason: reason.into(),
        }
    }
}

/// Why a key is refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Unknown key, wrong type, unknown name (the deserializer's words).
    #[error("{}", .0.message())]
    Toml(toml::de::Error),
    /// A platform that is not `os/arch[/variant]`.
    #[error(transparent)]
    Platform(#[from] super::InvalidPlatform),
    /// `noProcessSandbox` without `rootless`.
    #[error(transparent)]
    Sandbox(#[from] super::SandboxWithoutRootless),
    /// TLS settings of a registry.
    #[error(
        "insecure/ca/keypair (TLS settings) are not supported yet; use http = true for plain HTTP"
    )]
    TlsNotSupported,
    /// A `[registry."host"]` mirror that is not `host[:port]`.
    #[error("mirror {0:?} must be host[:port] (no scheme or path)")]
    MirrorForm(String),
    /// A mirror the registry client's host settings refuse.
    #[error("mirror {mirror:?}: {reason}")]
    Mirror {
        /// The mirror as written.
        mirror: String,
        /// The host settings' reason.
        reason: MirrorError,
    },
    /// A number outside its range.
    #[error("{value}: expected {min}..={max}")]
    OutOfRange {
        /// The value.
        value: i64,
        /// Least allowed.
        min: i64,
        /// Most allowed.
        max: i64,
    },
    /// An entitlement BuildKit does not have.
    #[error("unknown entitlement {0:?} (network.host, security.insecure)")]
    Entitlement(String),
    /// Zero where it would mean "never" or "stuck".
    #[error("0: {0}")]
    Zero(&'static str),
    /// A lower bound above its upper bound.
    #[error("{low} above {high_key} ({high})")]
    Inverted {
        /// The lower bound.
        low: u64,
        /// The upper bound's key.
        high_key: &'static str,
        /// The upper bound.
        high: u64,
    },
}

impl KeyError {
    /// A mirror the host settings refused, for `reason`.
    pub(crate) fn mirror(mirror: &str, reason: MirrorError) -> KeyError {
        KeyError::Mirror {
            mirror: mirror.to_string(),
            reason,
        }
    }
}

/// Deserializes `text` into `T`; a refused key is named by its path.
pub(crate) fn from_toml<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    toml::from_str(text).map_err(|e| match KeyPath::of_error(text, &e) {
        Some(key) => ParseError::Key {
            key,
            reason: KeyError::Toml(e),
        },
        None => ParseError::Document(e),
    })
}
