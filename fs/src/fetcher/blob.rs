//! The blob a fetcher reads: client, repository, digest, size and the sessions whose
//! credentials may be used, with the check that the registry agrees on the blob's size.

use crate::digest::Digest;
use crate::remote::{RangeReply, Reference, RegistryClient, RemoteError};
use std::sync::Arc;

/// A blob in a registry repository.
#[derive(Debug, Clone)]
pub struct RemoteBlob {
    /// The client.
    pub client: Arc<RegistryClient>,
    /// Repository (tag/digest of the image do not matter).
    pub reference: Reference,
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Sessions whose credentials may be used, in order.
    pub sessions: Vec<String>,
}

impl RemoteBlob {
    /// Range read of the blob; checks the registry's idea of its size against ours.
    pub async fn range(&self, offset: u64, len: u64) -> Result<RangeReply, RemoteError> {
        let r = self
            .client
            .blob_range(&self.reference, &self.digest, offset, len, &self.sessions)
            .await?;
        if len > 0 && r.total != self.size {
            return Err(size_mismatch(&self.digest, r.total, self.size));
        }
        Ok(r)
    }
}

/// The error for a registry whose idea of the blob's size differs from the descriptor's.
pub(super) fn size_mismatch(d: &Digest, said: u64, ours: u64) -> RemoteError {
    RemoteError::protocol(
        format!("blob {d}"),
        format!("registry says the blob is {said} bytes; its descriptor says {ours}"),
    )
}
