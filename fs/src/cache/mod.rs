//! Caches of verified chunks, keyed by chunk digest: an on-disk content-addressed store
//! bounded in bytes and an in-memory LRU bounded in bytes, both behind [`ChunkCache`]. Only a
//! [`VerifiedChunk`] can enter either, and one is made only by hashing (or by the fetcher
//! right after it verified the bytes), so no unverified byte is ever cached.
//!
//! A chunk goes to one tier: the disk store when there is one (readers then read the ranges
//! they want from files this process verified, and the kernel's page cache keeps hot chunks
//! — shared and reclaimable, where a copy in our heap would be neither), memory only when
//! there is no disk store or a write to it failed.

mod disk;
mod memory;
mod whole_file;

pub use disk::{DiskCache, DiskCacheError};
pub use memory::MemoryCache;
pub use whole_file::{whole_file_key, Piece};

use crate::digest::Digest;
use bytes::Bytes;
use std::path::Path;
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

    /// The usual two tiers: the disk store at `dir` capped at `disk_bytes`, and a memory LRU
    /// of `memory_bytes` for chunks the disk store could not take.
    pub fn tiered(dir: &Path, disk_bytes: u64, memory_bytes: u64) -> Result<Self, DiskCacheError> {
        Ok(ChunkCache::new(
            Some(MemoryCache::new(memory_bytes)),
            Some(DiskCache::open(dir, disk_bytes)?),
        ))
    }

    /// Looks `digest` up: memory, then disk.
    pub fn get(&self, digest: &Digest, len: u64) -> Option<(VerifiedChunk, Hit)> {
        if let Some(m) = &self.memory {
            if let Some(c) = m.get(digest) {
                self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
                return Some((c, Hit::Memory));
            }
        }
        if let Some(d) = &self.disk {
            if let Some(c) = d.get(digest, len) {
                self.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
                return Some((c, Hit::Disk));
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Bytes `range` of chunk `digest` without reading the whole chunk: from memory, or from
    /// a disk entry this process has verified and that has not changed since. `None` (not
    /// counted as a miss) sends the caller the whole-chunk way, which verifies or fetches.
    pub fn read_range(&self, digest: &Digest, range: std::ops::Range<usize>) -> Option<Bytes> {
        if let Some(m) = &self.memory {
            if let Some(c) = m.get(digest) {
                let part = c.data().get(range.clone()).map(|_| c.data().slice(range));
                if part.is_some() {
                    self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
                }
                return part;
            }
        }
        let d = self.disk.as_ref()?;
        let part = d.read_range(digest, range.start as u64, range.len())?;
        self.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
        Some(part.into())
    }

    /// Whether either tier holds `digest` (no I/O, LRU order untouched).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.memory.as_ref().is_some_and(|m| m.contains(digest))
            || self.disk.as_ref().is_some_and(|d| d.contains(digest))
    }

    /// Stores a verified chunk: in the disk tier when there is one, in memory when there is
    /// none or the write failed (the failure is logged).
    pub fn put(&self, c: &VerifiedChunk) {
        if let Some(d) = &self.disk {
            match d.put(c) {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(digest = %c.digest(), error = %e, "disk cache write failed; keeping the chunk in memory")
                }
            }
        }
        if let Some(m) = &self.memory {
            m.put(c);
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
