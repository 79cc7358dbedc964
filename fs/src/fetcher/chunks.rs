//! The fetcher's read API: verified chunks of a file, cache first, with single flight (a
//! chunk being fetched is waited for, not fetched twice; a cancelled leader's waiters take
//! over) and read-ahead chunks that ride along with a fetch made anyway. What is missing is
//! handed to `region` (see region.rs in this folder).

use super::timeline::{now_ms, EventKind, Timeline};
use super::{FetchError, FetchOptions, LayerCounters, RemoteBlob};
use crate::cache::ChunkCache;
use crate::format::{Chunk, Compression};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

type Key = (u64, u64);
type Outcome = Option<Result<Bytes, String>>;

/// Fetches verified chunks of one layer.
pub struct Fetcher {
    pub(super) blob: RemoteBlob,
    pub(super) compression: Compression,
    pub(super) cache: Arc<ChunkCache>,
    pub(super) opts: FetchOptions,
    pub(super) counters: Arc<LayerCounters>,
    pub(super) timeline: Timeline,
    inflight: Mutex<HashMap<Key, watch::Receiver<Outcome>>>,
}

/// Removes a leader's in-flight entries however its future ends.
struct FlightGuard<'a> {
    table: &'a Mutex<HashMap<Key, watch::Receiver<Outcome>>>,
    keys: Vec<Key>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            t.remove(k);
        }
    }
}

fn key(c: &Chunk) -> Key {
    (c.blob_offset, c.inner_offset)
}

impl Fetcher {
    /// A fetcher for `blob` whose frames use `compression`.
    pub fn new(
        blob: RemoteBlob,
        compression: Compression,
        cache: Arc<ChunkCache>,
        opts: FetchOptions,
    ) -> Self {
        Fetcher {
            blob,
            compression,
            cache,
            opts,
            counters: Arc::new(LayerCounters::default()),
            timeline: Timeline::default(),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// The layer's counters.
    pub fn counters(&self) -> &Arc<LayerCounters> {
        &self.counters
    }

    /// The layer's timeline of misses and requests.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// The chunk cache it fills.
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// The blob.
    pub fn blob(&self) -> &RemoteBlob {
        &self.blob
    }

    /// Whether the registry answered its last Range request with a range (a server that
    /// sends whole blobs makes every request cost the blob up to its end).
    pub fn honours_ranges(&self) -> bool {
        self.blob
            .client
            .honours_ranges(&self.blob.reference.registry)
    }

    fn cached(&self, c: &Chunk) -> Option<Bytes> {
        let d = c.digest.as_ref()?;
        self.cache.get(d, c.size).map(|(v, _)| v.data().clone())
    }

    /// Verified bytes of `chunks` (of file `file`, for messages), in order.
    pub async fn chunks(&self, file: &str, chunks: &[Chunk]) -> Result<Vec<Bytes>, FetchError> {
        self.chunks_with_readahead(file, chunks, &[]).await
    }

    /// Fetches what of `chunks` is not cached yet, for later (prefetch, background fetch,
    /// guesses).
    pub async fn fetch_ahead(&self, file: &str, chunks: &[Chunk]) -> Result<(), FetchError> {
        let todo: Vec<Chunk> = chunks
            .iter()
            .filter(|c| !self.is_cached(c))
            .cloned()
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        self.chunks_inner(file, &todo, todo.len(), true)
            .await
            .map(|_| ())
    }

    /// Bytes `range` of chunk `c` when they can be had without the whole chunk: a zero
    /// chunk, memory, or a disk entry this process verified (see [`ChunkCache::read_range`]).
    pub fn cached_range(&self, c: &Chunk, range: std::ops::Range<usize>) -> Option<Bytes> {
        if range.end as u64 > c.size {
            return None;
        }
        if c.zeros || c.size == 0 {
            return Some(vec![0u8; range.len()].into());
        }
        let part = self.cache.read_range(c.digest.as_ref()?, range)?;
        self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(part)
    }

    /// Whether a chunk is in a cache (no I/O, no reordering).
    pub fn is_cached(&self, c: &Chunk) -> bool {
        c.zeros || c.size == 0 || c.digest.as_ref().is_some_and(|d| self.cache.contains(d))
    }

    /// Like [`Self::chunks`], and when the network is needed anyway, also fetches `extra`
    /// (read-ahead: chunks that follow in the blob) in the same requests, best effort: their
    /// failures are not the caller's, and chunks already cached or in flight are left alone.
    pub async fn chunks_with_readahead(
        &self,
        file: &str,
        chunks: &[Chunk],
        extra: &[Chunk],
    ) -> Result<Vec<Bytes>, FetchError> {
        let missing: u64 = chunks
            .iter()
            .filter(|c| !self.is_cached(c))
            .map(|c| c.blob_end - c.blob_offset)
            .sum();
        if missing == 0 {
            return self.chunks_inner(file, chunks, chunks.len(), false).await;
        }
        let start = now_ms();
        let r = if extra.is_empty() {
            self.chunks_inner(file, chunks, chunks.len(), false).await
        } else {
            let mut combined = chunks.to_vec();
            combined.extend(extra.iter().filter(|c| !self.is_cached(c)).cloned());
            self.chunks_inner(file, &combined, chunks.len(), false)
                .await
        };
        self.timeline
            .record(EventKind::Miss, file, start, None, missing);
        r
    }

    /// `chunks[..required]` must be delivered; the rest are read-ahead. `speculative`: no
    /// read waits for it (for the timeline).
    async fn chunks_inner(
        &self,
        file: &str,
        chunks: &[Chunk],
        required: usize,
        speculative: bool,
    ) -> Result<Vec<Bytes>, FetchError> {
        let mut out: Vec<Option<Bytes>> = vec![None; chunks.len()];
        for (i, c) in chunks.iter().enumerate() {
            if c.zeros || c.size == 0 {
                out[i] = Some(vec![0u8; c.size as usize].into());
            } else if let Some(d) = self.cached(c) {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                out[i] = Some(d);
            }
        }
        loop {
            let mut lead: Vec<(usize, watch::Sender<Outcome>)> = Vec::new();
            let mut wait: Vec<(usize, watch::Receiver<Outcome>)> = Vec::new();
            {
                let mut t = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
                for (i, c) in chunks.iter().enumerate() {
                    if out[i].is_some() {
                        continue;
                    }
                    if let Some(rx) = t.get(&key(c)) {
                        if i < required {
                            wait.push((i, rx.clone()));
                        }
                        continue;
                    }
                    if i >= required && lead.is_empty() {
                        // Read-ahead rides along only with a fetch we make anyway.
                        continue;
                    }
                    // A leader that just finished put its chunk in the cache before leaving
                    // the table; look again before fetching.
                    if let Some(d) = self.cached(c) {
                        out[i] = Some(d);
                        continue;
                    }
                    let (tx, rx) = watch::channel(None);
                    t.insert(key(c), rx);
                    lead.push((i, tx));
                }
            }
            if !lead.is_empty() {
                self.counters
                    .cache_misses
                    .fetch_add(lead.len() as u64, Ordering::Relaxed);
                let _guard = FlightGuard {
                    table: &self.inflight,
                    keys: lead.iter().map(|(i, _)| key(&chunks[*i])).collect(),
                };
                let mine: Vec<(usize, &Chunk)> =
                    lead.iter().map(|(i, _)| (*i, &chunks[*i])).collect();
                let results = self.fetch(file, &mine, speculative).await;
                let mut first_err = None;
                for ((i, tx), r) in lead.into_iter().zip(results) {
                    match r {
                        Ok(d) => {
                            let _ = tx.send(Some(Ok(d.clone())));
                            out[i] = Some(d);
                        }
                        Err(e) => {
                            let _ = tx.send(Some(Err(e.to_string())));
                            if i < required {
                                first_err.get_or_insert(e);
                            } else {
                                tracing::debug!(error = %e, "read-ahead chunk failed");
                            }
                        }
                    }
                }
                if let Some(e) = first_err {
                    return Err(e);
                }
            }
            for (i, mut rx) in wait {
                self.counters.shared_waits.fetch_add(1, Ordering::Relaxed);
                let got = rx.wait_for(|v| v.is_some()).await.map(|v| v.clone());
                match got {
                    Ok(Some(Ok(d))) => out[i] = Some(d),
                    Ok(Some(Err(e))) => return Err(FetchError::Shared(e)),
                    // The leader went away (cancelled): go round and fetch it ourselves.
                    Ok(None) | Err(_) => {}
                }
            }
            if out[..required].iter().all(Option::is_some) {
                return Ok(out.into_iter().take(required).flatten().collect());
            }
        }
    }
}
