//! Errors of the built-in registry: [`ApiError`] is what a client sees (distribution-spec
//! error code, HTTP status, message), [`RegistryError`] is what stops the server starting.

use crate::digest::Digest;
use crate::small_file::SmallFileError;
use std::path::PathBuf;

/// Why an htpasswd file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// It could not be read or is too large.
    #[error(transparent)]
    File(#[from] SmallFileError),
    /// It is not UTF-8 text.
    #[error("{} is not UTF-8 text", path.display())]
    NotText {
        /// The file.
        path: PathBuf,
    },
    /// A line is not `user:hash`.
    #[error("{}:{line}: expected user:hash", path.display())]
    NotUserHash {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
    },
    /// A hash is not bcrypt.
    #[error("{}:{line}: only bcrypt hashes are supported (htpasswd -B)", path.display())]
    NotBcrypt {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
    },
}

/// Why the registry could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The storage root could not be prepared.
    #[error("registry root {path}: {source}")]
    Root {
        /// The root directory.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The htpasswd file is unreadable or malformed.
    #[error("htpasswd: {0}")]
    Htpasswd(#[from] HtpasswdError),
    /// Binding or serving the socket failed.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// An error answered to a client, in the distribution spec's JSON shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Spec error code (`BLOB_UNKNOWN`, …).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    /// 400 NAME_INVALID.
    pub fn name_invalid(m: impl Into<String>) -> Self {
        Self::new(400, "NAME_INVALID", m)
    }
    /// 404 NAME_UNKNOWN.
    pub fn name_unknown(name: &str) -> Self {
        Self::new(
            404,
            "NAME_UNKNOWN",
            format!("repository {name:?} is not known"),
        )
    }
    /// 404 BLOB_UNKNOWN.
    pub fn blob_unknown(d: &Digest) -> Self {
        Self::new(404, "BLOB_UNKNOWN", format!("blob {d} is not known"))
    }
    /// 404 MANIFEST_UNKNOWN.
    pub fn manifest_unknown(r: &str) -> Self {
        Self::new(
            404,
            "MANIFEST_UNKNOWN",
            format!("manifest {r:?} is not known"),
        )
    }
    /// 400 MANIFEST_INVALID.
    pub fn manifest_invalid(m: impl Into<String>) -> Self {
        Self::new(400, "MANIFEST_INVALID", m)
    }
    /// 400 MANIFEST_BLOB_UNKNOWN.
    pub fn manifest_blob_unknown(d: &Digest) -> Self {
        Self::new(
            400,
            "MANIFEST_BLOB_UNKNOWN",
            format!("manifest refers to blob {d}, which is not in the repository"),
        )
    }
    /// 400 DIGEST_INVALID.
    pub fn digest_invalid(m: impl Into<String>) -> Self {
        Self::new(400, "DIGEST_INVALID", m)
    }
    /// 400 TAG_INVALID.
    pub fn tag_invalid(m: impl Into<String>) -> Self {
        Self::new(400, "TAG_INVALID", m)
    }
    /// 404 BLOB_UPLOAD_UNKNOWN.
    pub fn upload_unknown() -> Self {
        Self::new(404, "BLOB_UPLOAD_UNKNOWN", "upload is not known")
    }
    /// 400 BLOB_UPLOAD_INVALID.
    pub fn upload_invalid(m: impl Into<String>) -> Self {
        Self::new(400, "BLOB_UPLOAD_INVALID", m)
    }
    /// 416 for an upload chunk at the wrong offset.
    pub fn upload_range(m: impl Into<String>) -> Self {
        Self::new(416, "BLOB_UPLOAD_INVALID", m)
    }
    /// 401 UNAUTHORIZED.
    pub fn unauthorized() -> Self {
        Self::new(401, "UNAUTHORIZED", "authentication required")
    }
    /// 405 UNSUPPORTED.
    pub fn unsupported(m: impl Into<String>) -> Self {
        Self::new(405, "UNSUPPORTED", m)
    }
    /// 413 SIZE_INVALID.
    pub fn too_large(m: impl Into<String>) -> Self {
        Self::new(413, "SIZE_INVALID", m)
    }
    /// 429 TOOMANYREQUESTS: a bound on what one server keeps is reached (upload sessions).
    pub fn too_many_requests(m: impl Into<String>) -> Self {
        Self::new(429, "TOOMANYREQUESTS", m)
    }
    /// 404 for a path outside the API.
    pub fn not_found() -> Self {
        Self::new(404, "NOT_FOUND", "no such endpoint")
    }
    /// 500, logged with its cause.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "registry internal error");
        Self::new(500, "UNKNOWN", format!("internal error: {e}"))
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::json!({"errors": [{"code": self.code, "message": self.message}]})
            .to_string()
            .into_bytes()
    }
}
