//! The chunk fetcher: turns chunk reads into as few Range requests as possible and never lets
//! an unverified byte through.
//!
//! * Cache first (memory, then disk), by chunk digest.
//! * Missing chunks are sorted by blob offset and neighbours whose frames lie within
//!   `merge_gap` of each other are fetched with one Range GET (up to `max_request` bytes).
//! * Single flight: each chunk being fetched has an entry in the in-flight table; a second
//!   reader of it waits for the first fetch's result instead of fetching again.
//! * Cancellation: the fetch runs in the first reader's future. If that reader goes away,
//!   its HTTP request is dropped, its in-flight entries are removed and waiters take over.
//! * Every chunk is decompressed and verified against its TOC digest; a mismatch (wrong
//!   bytes on the wire) is refetched once alone, then reported — never served, never cached.

use super::client::RangeReply;
use super::client::RegistryClient;
use super::error::RemoteError;
use super::range_body::{RangeAnswer, RangeStream};
use super::reference::Reference;
use super::retry::RetryBudget;
use crate::cache::{ChunkCache, VerifiedChunk};
use crate::digest::Digest;
use crate::format::{decode_chunk, Chunk, Compression, FormatError};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Why a chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The registry request failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The chunk failed to decompress or verify, even after a refetch.
    #[error("{0}")]
    Verify(FormatError),
    /// Another reader's fetch of the same chunk failed.
    #[error("{0}")]
    Shared(String),
    /// A worker thread failed.
    #[error("internal: {0}")]
    Internal(String),
}

/// Tuning of request merging.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// Largest hole between two frames that still merges them into one request.
    pub merge_gap: u64,
    /// Largest merged request.
    pub max_request: u64,
    /// Compressed bytes of following chunks fetched along with an on-demand miss (0 = off:
    /// on the python cold-start bench 64 KiB gained nothing and 512 KiB doubled the bytes
    /// for one request saved; workloads that read neighbouring files may differ).
    pub readahead: u64,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            merge_gap: 256 << 10,
            max_request: 16 << 20,
            readahead: 0,
        }
    }
}

/// Per-layer counters.
#[derive(Debug, Default)]
pub struct LayerCounters {
    /// Range requests sent for chunks.
    pub requests: AtomicU64,
    /// Compressed bytes fetched.
    pub bytes_fetched: AtomicU64,
    /// Bytes handed to readers (counted by the layer's read path, not by prefetching).
    pub bytes_served: AtomicU64,
    /// Chunks found in a cache.
    pub cache_hits: AtomicU64,
    /// Chunks not found in a cache.
    pub cache_misses: AtomicU64,
    /// Chunks that failed verification on arrival.
    pub verify_failures: AtomicU64,
    /// Reads that waited on another reader's fetch.
    pub shared_waits: AtomicU64,
    /// Range requests answered with the whole blob (the server ignored `Range`).
    pub whole_blob_answers: AtomicU64,
    /// Latency of chunk range requests.
    pub latency: super::latency::LatencyHistogram,
}

/// A snapshot of [`LayerCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    /// Range requests.
    pub requests: u64,
    /// Compressed bytes fetched.
    pub bytes_fetched: u64,
    /// Bytes served.
    pub bytes_served: u64,
    /// Cache hits.
    pub cache_hits: u64,
    /// Cache misses.
    pub cache_misses: u64,
    /// Verification failures.
    pub verify_failures: u64,
    /// Shared waits.
    pub shared_waits: u64,
    /// Range requests answered with the whole blob.
    pub whole_blob_answers: u64,
}

impl LayerCounters {
    /// Current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            requests: g(&self.requests),
            bytes_fetched: g(&self.bytes_fetched),
            bytes_served: g(&self.bytes_served),
            cache_hits: g(&self.cache_hits),
            cache_misses: g(&self.cache_misses),
            verify_failures: g(&self.verify_failures),
            shared_waits: g(&self.shared_waits),
            whole_blob_answers: g(&self.whole_blob_answers),
        }
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

type Key = (u64, u64);
type Outcome = Option<Result<Bytes, String>>;

/// Fetches verified chunks of one layer.
pub struct Fetcher {
    blob: RemoteBlob,
    compression: Compression,
    cache: Arc<ChunkCache>,
    opts: FetchOptions,
    counters: Arc<LayerCounters>,
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
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// The layer's counters.
    pub fn counters(&self) -> &Arc<LayerCounters> {
        &self.counters
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
        self.chunks_inner(file, chunks, chunks.len()).await
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
        self.chunks_inner(file, &todo, todo.len()).await.map(|_| ())
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
        if extra.is_empty() || chunks.iter().all(|c| self.is_cached(c)) {
            return self.chunks(file, chunks).await;
        }
        let mut combined = chunks.to_vec();
        combined.extend(extra.iter().filter(|c| !self.is_cached(c)).cloned());
        self.chunks_inner(file, &combined, chunks.len()).await
    }

    /// `chunks[..required]` must be delivered; the rest are read-ahead.
    async fn chunks_inner(
        &self,
        file: &str,
        chunks: &[Chunk],
        required: usize,
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
                let results = self.fetch(file, &mine).await;
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

    /// Fetches and verifies `mine` (indices into the caller's list), merging neighbours.
    /// Returns one result per entry, in the same order.
    async fn fetch(&self, file: &str, mine: &[(usize, &Chunk)]) -> Vec<Result<Bytes, FetchError>> {
        let mut order: Vec<usize> = (0..mine.len()).collect();
        order.sort_by_key(|&k| mine[k].1.blob_offset);
        // A server that sends whole blobs for ranges sends every byte before a region too:
        // one request for all of them costs no more than the one for the farthest.
        let (merge_gap, max_request) = if self.honours_ranges() {
            (self.opts.merge_gap, self.opts.max_request)
        } else {
            (u64::MAX, u64::MAX)
        };
        // Group into regions [start, end) of positions in `order`.
        let mut regions: Vec<(u64, u64, Vec<usize>)> = Vec::new();
        for k in order {
            let c = mine[k].1;
            match regions.last_mut() {
                Some((start, end, members))
                    if c.blob_offset <= end.saturating_add(merge_gap)
                        && c.blob_end.max(*end) - *start <= max_request =>
                {
                    *end = (*end).max(c.blob_end);
                    members.push(k);
                }
                _ => regions.push((c.blob_offset, c.blob_end, vec![k])),
            }
        }
        let futs = regions
            .iter()
            .map(|(start, end, members)| self.fetch_region(file, *start, *end, members, mine));
        let done = futures_util::future::join_all(futs).await;
        let mut results: Vec<Option<Result<Bytes, FetchError>>> =
            (0..mine.len()).map(|_| None).collect();
        for region in done {
            for (k, r) in region {
                results[k] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(FetchError::Internal("chunk left unfetched".into()))))
            .collect()
    }

    async fn fetch_region(
        &self,
        file: &str,
        start: u64,
        end: u64,
        members: &[usize],
        mine: &[(usize, &Chunk)],
    ) -> Vec<(usize, Result<Bytes, FetchError>)> {
        let began = std::time::Instant::now();
        let streamed = self.stream_region(file, start, end, members, mine).await;
        self.counters.latency.observe(began.elapsed());
        tracing::debug!(
            layer = %self.blob.digest,
            file,
            start,
            len = end - start,
            chunks = members.len(),
            ms = began.elapsed().as_millis() as u64,
            ok = streamed.is_ok(),
            "range request"
        );
        let decodes = match streamed {
            Ok(d) => d,
            Err(e) => {
                // The first chunk carries the error itself, the others its message.
                let msg = e.to_string();
                let mut first = Some(e);
                return members
                    .iter()
                    .map(|&k| {
                        let err = match first.take() {
                            Some(e) => FetchError::Remote(e),
                            None => FetchError::Shared(msg.clone()),
                        };
                        (k, Err(err))
                    })
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(members.len());
        for (k, handle) in decodes {
            let c = mine[k].1;
            let mut r = self.finish_decode(c, handle).await;
            if let Err(FetchError::Verify(e)) = &r {
                self.counters
                    .verify_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(layer = %self.blob.digest, file, offset = c.file_offset, error = %e, "chunk failed verification; refetching it");
                r = match self.get(c.blob_offset, c.blob_end - c.blob_offset).await {
                    Ok(frame) => self.decode(file, c, frame).await,
                    Err(e) => Err(FetchError::Remote(e)),
                };
                if let Err(e) = &r {
                    tracing::error!(layer = %self.blob.digest, file, offset = c.file_offset, error = %e, "chunk failed again; not serving it");
                }
            }
            out.push((k, r));
        }
        out
    }

    /// Streams blob bytes `start..end` and starts each member's decode as soon as its frame
    /// has arrived, so chunks decode (in parallel) while later ones are still on the wire and
    /// only the frames not complete yet are held, never the whole region. A body that breaks
    /// off is resumed from the first byte still needed, under the same retry budget as the
    /// requests (one budget per region, however requests and bodies fail).
    async fn stream_region(
        &self,
        file: &str,
        start: u64,
        end: u64,
        members: &[usize],
        mine: &[(usize, &Chunk)],
    ) -> Result<Vec<(usize, DecodeHandle)>, RemoteError> {
        let mut window = FrameWindow::new(start);
        let mut next = 0usize;
        let mut handles = Vec::with_capacity(members.len());
        let mut budget = self.blob.client.retry_budget();
        while next < members.len() {
            if window.buf.is_empty() {
                // Nothing held: a resumed request starts at the next frame, not in a hole.
                window.pos = window.pos.max(mine[members[next]].1.blob_offset);
            }
            let from = window.pos;
            let mut stream = self.open(from, end - from, &mut budget).await?;
            let mut counted = 0u64;
            let broke = loop {
                let got = stream.next().await;
                let wire = stream.wire_bytes();
                self.counters
                    .bytes_fetched
                    .fetch_add(wire - counted, Ordering::Relaxed);
                counted = wire;
                match got {
                    Ok(Some(bytes)) => {
                        window.push(&bytes);
                        while next < members.len() {
                            let c = mine[members[next]].1;
                            let Some(frame) = window.frame(c.blob_offset, c.blob_end) else {
                                break;
                            };
                            handles.push((members[next], self.start_decode(file, c, frame)));
                            next += 1;
                        }
                        let keep = members.get(next).map_or(end, |&k| mine[k].1.blob_offset);
                        window.drop_before(keep);
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            match broke {
                None if next < members.len() => {
                    return Err(RemoteError::Transport {
                        url: stream.url().to_string(),
                        reason: "range ended before its last chunk".into(),
                    })
                }
                None => {}
                Some(e) if e.is_transient() => match budget.retry_body() {
                    Some(wait) => {
                        tracing::debug!(layer = %self.blob.digest, at = window.pos, error = %e, "range body broke off; resuming");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e),
                },
                Some(e) => return Err(e),
            }
        }
        Ok(handles)
    }

    /// Opens a range stream, checking the registry's idea of the blob's size.
    async fn open(
        &self,
        offset: u64,
        len: u64,
        budget: &mut RetryBudget,
    ) -> Result<RangeStream, RemoteError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let b = &self.blob;
        let stream = b
            .client
            .blob_range_stream(&b.reference, &b.digest, offset, len, &b.sessions, budget)
            .await?;
        if stream.answer() == RangeAnswer::Whole {
            self.counters
                .whole_blob_answers
                .fetch_add(1, Ordering::Relaxed);
        }
        if stream.answer() != RangeAnswer::Multipart && stream.total() != b.size {
            return Err(size_mismatch(&b.digest, stream.total(), b.size));
        }
        Ok(stream)
    }

    fn start_decode(&self, file: &str, c: &Chunk, frame: Bytes) -> DecodeHandle {
        let (comp, file_s, chunk) = (self.compression, file.to_string(), c.clone());
        tokio::task::spawn_blocking(move || decode_chunk(comp, &file_s, &chunk, &frame))
    }

    async fn finish_decode(&self, c: &Chunk, handle: DecodeHandle) -> Result<Bytes, FetchError> {
        let decoded = handle
            .await
            .map_err(|e| FetchError::Internal(e.to_string()))?
            .map_err(FetchError::Verify)?;
        let data: Bytes = decoded.into();
        if let Some(d) = c.digest {
            self.cache
                .put(&VerifiedChunk::already_verified(d, data.clone()));
        }
        Ok(data)
    }

    async fn get(&self, offset: u64, len: u64) -> Result<bytes::Bytes, RemoteError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let r = self.blob.range(offset, len).await?;
        self.counters
            .bytes_fetched
            .fetch_add(r.wire_bytes, Ordering::Relaxed);
        if r.answer == RangeAnswer::Whole {
            self.counters
                .whole_blob_answers
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(r.data)
    }

    /// Decompresses and verifies one chunk off the async threads, then caches it.
    async fn decode(&self, file: &str, c: &Chunk, frame: Bytes) -> Result<Bytes, FetchError> {
        let handle = self.start_decode(file, c, frame);
        self.finish_decode(c, handle).await
    }
}

type DecodeHandle = tokio::task::JoinHandle<Result<Vec<u8>, FormatError>>;

fn size_mismatch(d: &Digest, said: u64, ours: u64) -> RemoteError {
    RemoteError::protocol(
        format!("blob {d}"),
        format!("registry says the blob is {said} bytes; its descriptor says {ours}"),
    )
}

/// The bytes of a streamed region that frames not yet complete still need: from the start
/// of the first pending frame up to the last byte received.
struct FrameWindow {
    /// Blob offset of `buf[0]`.
    base: u64,
    /// Blob offset of the next byte to arrive.
    pos: u64,
    buf: Vec<u8>,
}

impl FrameWindow {
    fn new(start: u64) -> Self {
        FrameWindow {
            base: start,
            pos: start,
            buf: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.buf.is_empty() {
            self.base = self.pos;
        }
        self.buf.extend_from_slice(bytes);
        self.pos += bytes.len() as u64;
    }

    /// Bytes `from..to` once all of them have arrived.
    fn frame(&self, from: u64, to: u64) -> Option<Bytes> {
        if to > self.pos || from < self.base {
            return None;
        }
        let (a, b) = ((from - self.base) as usize, (to - self.base) as usize);
        Some(Bytes::copy_from_slice(&self.buf[a..b]))
    }

    /// Forgets what lies before `offset` (holes between frames, frames handed out).
    fn drop_before(&mut self, offset: u64) {
        let n = offset.saturating_sub(self.base).min(self.buf.len() as u64) as usize;
        if n > 0 {
            self.buf.drain(..n);
            self.base += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrameWindow;

    #[test]
    fn the_window_holds_only_pending_frames() {
        let mut w = FrameWindow::new(100);
        w.push(&[1; 30]);
        assert!(w.frame(100, 140).is_none(), "not all there yet");
        w.push(&[2; 30]);
        assert_eq!(w.frame(110, 140).unwrap().len(), 30);
        // Frames handed out and holes are dropped; what is still needed stays.
        w.drop_before(150);
        assert_eq!(w.buf.len(), 10);
        assert_eq!(&w.frame(150, 160).unwrap()[..], &[2; 10]);
        w.drop_before(500);
        assert!(w.buf.is_empty());
        w.push(&[3; 5]);
        assert_eq!(w.base, 160);
        assert!(
            w.frame(150, 161).is_none(),
            "dropped bytes do not come back"
        );
    }
}
