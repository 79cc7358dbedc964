//! Whole local copies of fully fetched files, for FUSE passthrough. Once every chunk of a
//! regular file is cached, the file is assembled into the disk store, keyed by and checked
//! against this layer's own chunk layout (never the TOC's claimed file digest, which another
//! layer could claim for other bytes; see [`crate::cache::whole_file_key`]), and handed out
//! as an open descriptor; the kernel then reads it directly. A one-chunk file needs no
//! assembly: its chunk already is the whole file.

use super::RemoteLayer;
use crate::cache::Piece;
use crate::format::NodeId;
use std::io::Write;
use std::sync::Arc;

/// Files smaller than this stay with the FUSE read path and the page cache: a local copy
/// would cost more than the reads it saves.
pub const LOCAL_FILE_MIN: u64 = 64 << 10;

impl RemoteLayer {
    /// Whether regular file `node` can be served from a local whole-file copy now: large
    /// enough, a disk cache to hold it, and every chunk cached.
    pub fn local_file_ready(&self, node: NodeId) -> bool {
        let n = self.index().node(node);
        n.size >= LOCAL_FILE_MIN && self.fetcher.cache().disk().is_some() && self.is_cached(node)
    }

    /// An open, verified local copy of regular file `node`, assembled from the chunk cache
    /// the first time; `None` when it cannot be had (see [`Self::local_file_ready`]) or a
    /// chunk vanished from the cache meanwhile.
    pub async fn local_file(self: &Arc<Self>, node: NodeId) -> Option<std::fs::File> {
        if !self.local_file_ready(node) {
            return None;
        }
        let layer = self.clone();
        tokio::task::spawn_blocking(move || layer.local_file_blocking(node))
            .await
            .ok()
            .flatten()
    }

    fn local_file_blocking(&self, node: NodeId) -> Option<std::fs::File> {
        let n = self.index().node(node);
        let pieces: Vec<Piece> = n
            .chunks
            .iter()
            .map(|c| Piece {
                len: c.size,
                digest: if c.zeros { None } else { c.digest },
            })
            .collect();
        let cache = self.fetcher.cache();
        let disk = cache.disk()?;
        if let Some(f) = disk.open_file(&pieces) {
            return Some(f);
        }
        let stored = disk.put_file(&pieces, |w: &mut dyn Write| {
            static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
            for c in &n.chunks {
                if c.zeros || c.size == 0 {
                    let mut left = c.size;
                    while left > 0 {
                        let k = left.min(ZEROS.len() as u64) as usize;
                        w.write_all(&ZEROS[..k])?;
                        left -= k as u64;
                    }
                    continue;
                }
                let Some(d) = c.digest.as_ref() else {
                    return Ok(false);
                };
                // Straight from the tiers: assembly is not a reader, so no hit is counted.
                let chunk = cache
                    .memory()
                    .and_then(|m| m.get(d))
                    .or_else(|| disk.get(d, c.size));
                match chunk {
                    Some(v) => w.write_all(v.data())?,
                    None => return Ok(false),
                }
            }
            Ok(true)
        });
        match stored {
            Ok(true) => disk.open_file(&pieces),
            Ok(false) => None,
            Err(e) => {
                tracing::warn!(file = %self.index().path(node), error = %e, "could not store a local copy");
                None
            }
        }
    }
}
