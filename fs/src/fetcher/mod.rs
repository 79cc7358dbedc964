//! The chunk fetcher, the stage between the registry client (`remote`) and the layer: it turns chunk reads into as few Range requests as possible and never lets
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
//!
//! Its parts: `chunks` (the read API, single flight, read-ahead), `plan` (which chunks share
//! a Range request), `region` (streaming a region and decoding its frames as they arrive),
//! `window` (the bytes a streamed region still holds), `blob` (the remote blob and its size
//! check), `counters` and `latency` (what the layer reports), `timeline` (misses and
//! requests in time, and the bucketed view `stats --timeline` prints). It imports the registry client
//! and the cache; neither imports it.

mod blob;
mod chunks;
mod counters;
mod latency;
mod plan;
mod region;
mod timeline;
mod window;

pub use blob::{RemoteBlob, SessionList};
pub use chunks::Fetcher;
pub use counters::{CounterSnapshot, LayerCounters};
pub use latency::{LatencyHistogram, LatencySnapshot, BUCKETS};
pub use timeline::{view, Bucket, Event, EventKind, Timeline, TimelineSnapshot, View};

use crate::format::FormatError;
use crate::remote::RemoteError;

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
