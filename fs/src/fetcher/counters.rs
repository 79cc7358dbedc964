//! What the fetcher counts per layer (requests, bytes, cache hits, verification failures,
//! shared waits, whole-blob answers, distinct chunks read and their bytes, request latency),
//! read by the layer, the mount's stats and the worker's metrics.

use super::latency::LatencyHistogram;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Distinct chunks on-demand reads touched (counted by the layer's read path).
    pub chunks_read: AtomicU64,
    /// Their compressed bytes: what the workload needed of the blob.
    pub chunk_bytes_read: AtomicU64,
    /// Latency of chunk range requests.
    pub latency: LatencyHistogram,
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
    /// Distinct chunks read on demand.
    pub chunks_read: u64,
    /// Their compressed bytes.
    pub chunk_bytes_read: u64,
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
            chunks_read: g(&self.chunks_read),
            chunk_bytes_read: g(&self.chunk_bytes_read),
        }
    }
}
