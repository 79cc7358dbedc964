//! The in-memory tier: an LRU of verified chunks bounded by the sum of their sizes.

use super::VerifiedChunk;
use crate::digest::Digest;
use lru::LruCache;
use std::sync::Mutex;

struct State {
    lru: LruCache<Digest, VerifiedChunk>,
    bytes: u64,
}

/// An LRU of chunks holding at most `cap` bytes.
pub struct MemoryCache {
    state: Mutex<State>,
    cap: u64,
}

impl MemoryCache {
    /// A cache of at most `cap` bytes.
    pub fn new(cap: u64) -> Self {
        MemoryCache {
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                bytes: 0,
            }),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunk, marking it recently used.
    pub fn get(&self, d: &Digest) -> Option<VerifiedChunk> {
        self.lock().lru.get(d).cloned()
    }

    /// Inserts a chunk, evicting the least recently used beyond the cap. A chunk larger than
    /// the whole cap is not kept.
    pub fn put(&self, c: &VerifiedChunk) {
        let len = c.data().len() as u64;
        if len > self.cap {
            return;
        }
        let mut s = self.lock();
        if let Some(old) = s.lru.put(*c.digest(), c.clone()) {
            s.bytes -= old.data().len() as u64;
        }
        s.bytes += len;
        while s.bytes > self.cap {
            match s.lru.pop_lru() {
                Some((_, old)) => s.bytes -= old.data().len() as u64,
                None => break,
            }
        }
    }

    /// Whether the chunk is held (LRU order untouched).
    pub fn contains(&self, d: &Digest) -> bool {
        self.lock().lru.contains(d)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Chunks held.
    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chunk(b: u8, n: usize) -> VerifiedChunk {
        let data: Bytes = vec![b; n].into();
        VerifiedChunk::verify(Digest::of(&data), data).unwrap()
    }

    #[test]
    fn bounded_lru() {
        let m = MemoryCache::new(100);
        let (a, b, c) = (chunk(1, 40), chunk(2, 40), chunk(3, 40));
        m.put(&a);
        m.put(&b);
        assert!(m.get(a.digest()).is_some()); // a is now most recent
        m.put(&c); // evicts b
        assert!(m.get(b.digest()).is_none());
        assert!(m.get(a.digest()).is_some());
        assert_eq!(m.bytes(), 80);
        m.put(&chunk(4, 101));
        assert_eq!(m.len(), 2);
        m.put(&a);
        assert_eq!(m.bytes(), 80);
    }
}
