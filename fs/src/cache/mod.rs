//! Caches of verified chunks, keyed by chunk digest: an in-memory LRU bounded in bytes and
//! an on-disk content-addressed store bounded in bytes, both behind [`ChunkCache`]. Only a
//! [`VerifiedChunk`] can enter either, and one is made only by hashing (or by the fetcher
//! right after it verified the bytes), so no unverified byte is ever cached.

mod disk;
mod memory;

pub use disk::{DiskCache, DiskCacheError};
pub use memory::MemoryCache;

use crate::digest::Digest;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};

/// Chunk bytes known to hash to their digest.
#[derive(Clone)]
pub struct VerifiedChunk {
    digest: Digest,
    data: Bytes,
}

impl std::fmt::Debug for VerifiedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VerifiedChunk({}, {} bytes)",
            self.digest,
            self.data.len()
        )
    }
}

impl VerifiedChunk {
    /// Hashes `data`; returns it as verified only if it matches `digest`.
    pub fn verify(digest: Digest, data: Bytes) -> Option<Self> {
        (Digest::of(&data) == digest).then_some(VerifiedChunk { digest, data })
    }

    /// For bytes the caller has just hashed to `digest` (the decoder hashes as it inflates).
    pub(crate) fn already_verified(digest: Digest, data: Bytes) -> Self {
        VerifiedChunk { digest, data }
    }

    /// The digest.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }
}

/// Where a cache hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// The memory LRU.
    Memory,
    /// The disk store.
    Disk,
}

/// Hit/miss counters.
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// Memory hits.
    pub memory_hits: AtomicU64,
    /// Disk hits.
    pub disk_hits: AtomicU64,
    /// Misses in both.
    pub misses: AtomicU64,
}

/// Memory in front of disk; either may be absent.
#[derive(Default)]
pub struct ChunkCache {
    memory: Option<MemoryCache>,
    disk: Option<DiskCache>,
    /// Counters over all lookups.
    pub counters: CacheCounters,
}

impl ChunkCache {
    /// A cache with the given tiers.
    pub fn new(memory: Option<MemoryCache>, disk: Option<DiskCache>) -> Self {
        ChunkCache {
            memory,
            disk,
            counters: CacheCounters::default(),
        }
    }

    /// Looks `digest` up: memory, then disk (a disk hit is promoted to memory).
    pub fn get(&self, digest: &Digest, len: u64) -> Option<(VerifiedChunk, Hit)> {
        if let Some(m) = &self.memory {
            if let Some(c) = m.get(digest) {
                self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
                return Some((c, Hit::Memory));
            }
        }
        if let Some(d) = &self.disk {
            if let Some(c) = d.get(digest, len) {
                if let Some(m) = &self.memory {
                    m.put(&c);
                }
                self.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
                return Some((c, Hit::Disk));
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Whether either tier holds `digest` (no I/O, LRU order untouched).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.memory.as_ref().is_some_and(|m| m.contains(digest))
            || self.disk.as_ref().is_some_and(|d| d.contains(digest))
    }

    /// Stores a verified chunk in both tiers (a disk write failure is logged, not fatal).
    pub fn put(&self, c: &VerifiedChunk) {
        if let Some(m) = &self.memory {
            m.put(c);
        }
        if let Some(d) = &self.disk {
            if let Err(e) = d.put(c) {
                tracing::warn!(digest = %c.digest(), error = %e, "disk cache write failed");
            }
        }
    }

    /// Stores a verified chunk in the disk tier only (a write failure is logged).
    pub fn put_disk(&self, c: &VerifiedChunk) {
        if let Some(d) = &self.disk {
            if let Err(e) = d.put(c) {
                tracing::warn!(digest = %c.digest(), error = %e, "disk cache write failed");
            }
        }
    }

    /// The disk tier, if any.
    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// The memory tier, if any.
    pub fn memory(&self) -> Option<&MemoryCache> {
        self.memory.as_ref()
    }
}
