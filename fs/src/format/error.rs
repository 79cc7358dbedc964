//! Errors of the format layer: each names what is wrong with the blob, TOC or tar, so a user
//! can tell a truncated download from a hostile file from a bug.

use crate::digest::DigestError;
use crate::Digest;

/// Everything that can go wrong reading, verifying, writing or extracting a layer.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// I/O on the blob, the input tar or the output.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The blob is shorter than its structure claims.
    #[error("blob truncated: {0}")]
    Truncated(String),
    /// No known footer at the end of the blob.
    #[error("no eStargz, stargz or zstd:chunked footer found: {0}")]
    Footer(String),
    /// The TOC could not be decompressed or parsed.
    #[error("invalid TOC: {0}")]
    Toc(String),
    /// One TOC entry breaks a rule; `entry` is its (raw) name.
    #[error("invalid TOC entry {entry:?}: {reason}")]
    Entry {
        /// The entry's name as stored.
        entry: String,
        /// What is wrong.
        reason: String,
    },
    /// A bound from [`crate::format::Limits`] was exceeded.
    #[error("limit exceeded: {0}")]
    Limit(String),
    /// The TOC does not hash to the expected digest.
    #[error("TOC digest mismatch: expected {expected}, got {actual}")]
    TocDigest {
        /// The digest the caller trusted.
        expected: Digest,
        /// What the TOC hashed to.
        actual: Digest,
    },
    /// A chunk's bytes do not hash to its `chunkDigest`.
    #[error("chunk digest mismatch in {file:?} at file offset {file_offset}: expected {expected}, got {actual}")]
    ChunkDigest {
        /// The file the chunk belongs to.
        file: String,
        /// Offset of the chunk within the file.
        file_offset: u64,
        /// The digest from the TOC.
        expected: Digest,
        /// What the bytes hashed to.
        actual: Digest,
    },
    /// Compressed data did not decompress.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// A digest string was malformed.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// The input tar stream is malformed or uses an unsupported feature.
    #[error("tar: {0}")]
    Tar(String),
    /// Extraction refused a path.
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath {
        /// The offending path.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// The requested path is not in the layer.
    #[error("no such entry in layer: {0:?}")]
    NotFound(String),
}

impl FormatError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        FormatError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn entry(entry: &str, reason: impl Into<String>) -> Self {
        FormatError::Entry {
            entry: entry.chars().take(200).collect(),
            reason: reason.into(),
        }
    }
}
