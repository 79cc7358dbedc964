//! Errors of image-layout handling, naming the file or descriptor at fault.

use crate::digest::DigestError;
use crate::format::FormatError;

/// What can go wrong reading, writing or converting an OCI image layout.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// File-system I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document (index, manifest, config) is malformed.
    #[error("{what} is not valid: {reason}")]
    Json {
        /// Which document.
        what: String,
        /// Parser message.
        reason: String,
    },
    /// The reference does not name anything in the layout.
    #[error("{0}")]
    NotFound(String),
    /// A blob's content does not match its descriptor.
    #[error("blob {digest}: {reason}")]
    BlobMismatch {
        /// Descriptor digest.
        digest: String,
        /// What differs.
        reason: String,
    },
    /// Something the layout uses that we do not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A malformed `oci:DIR[:TAG]` reference.
    #[error("bad image reference {0:?}: expected oci:DIR[:TAG]")]
    BadRef(String),
    /// A digest string was malformed.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// Layer conversion or reading failed.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// Cause.
        #[source]
        source: FormatError,
    },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}
