//! The blob a fetcher reads: client, repository, digest, size and the sessions whose
//! credentials may be used, with the check that the registry agrees on the blob's size.
//! The session list is shared by every copy of the blob (the layer's fetchers): a later
//! user of a mounted layer adds its session, and reads from then on may ask it too.

use crate::digest::Digest;
use crate::remote::{RangeReply, Reference, RegistryClient, RemoteError};
use std::sync::{Arc, RwLock};

/// Sessions one blob keeps; adding more drops the oldest (long ended, most likely).
const MAX_SESSIONS: usize = 32;

/// Session IDs asked for a blob's credentials, in order (shared by clones).
#[derive(Debug, Clone, Default)]
pub struct SessionList(Arc<RwLock<Vec<String>>>);

impl From<Vec<String>> for SessionList {
    fn from(mut ids: Vec<String>) -> Self {
        dedup(&mut ids);
        SessionList(Arc::new(RwLock::new(ids)))
    }
}

fn dedup(ids: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|i| seen.insert(i.clone()));
    let over = ids.len().saturating_sub(MAX_SESSIONS);
    ids.drain(..over);
}

impl SessionList {
    /// The IDs now, in order.
    pub fn ids(&self) -> Vec<String> {
        self.0.read().map(|v| v.clone()).unwrap_or_default()
    }

    /// Appends the IDs not listed yet; returns how many were new.
    pub fn add(&self, ids: &[String]) -> usize {
        let Ok(mut v) = self.0.write() else { return 0 };
        let new: Vec<String> = ids
            .iter()
            .filter(|i| !i.is_empty() && !v.contains(i))
            .cloned()
            .collect();
        let added = new.len();
        v.extend(new);
        dedup(&mut v);
        added
    }
}

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
    pub sessions: SessionList,
}

impl RemoteBlob {
    /// Range read of the blob; checks the registry's idea of its size against ours.
    pub async fn range(&self, offset: u64, len: u64) -> Result<RangeReply, RemoteError> {
        let r = self
            .client
            .blob_range(
                &self.reference,
                &self.digest,
                offset,
                len,
                &self.sessions.ids(),
            )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_added_once_and_bounded() {
        let l = SessionList::from(vec!["a".to_string(), "a".to_string(), "b".to_string()]);
        assert_eq!(l.ids(), ["a", "b"]);
        let copy = l.clone();
        assert_eq!(
            copy.add(&["b".to_string(), "c".to_string(), String::new()]),
            1
        );
        assert_eq!(l.ids(), ["a", "b", "c"]);
        let many: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
        l.add(&many);
        let ids = l.ids();
        assert_eq!(ids.len(), MAX_SESSIONS);
        assert_eq!(ids.last().map(String::as_str), Some("s39"));
    }
}
