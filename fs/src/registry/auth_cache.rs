//! Credentials bcrypt has just verified, so a client pays one bcrypt check per minute rather
//! than one per request. Entries are keyed by user and hold a keyed hash of the password
//! (SHA-256 under a per-process random key), never the password itself. Only a successful
//! check inserts, and a failed one touches nothing, so wrong passwords can neither get in nor
//! push good entries out; with one entry per user the cache is bounded by the htpasswd file,
//! and by [`CAPACITY`] on top (least recently used goes first).

use lru::LruCache;
use sha2::{Digest as _, Sha256};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most users remembered at once.
pub const CAPACITY: usize = 1024;

/// A keyed hash of a user's password.
pub type Tag = [u8; 32];

/// Recently verified credentials.
pub struct AuthCache {
    key: [u8; 32],
    ttl: Duration,
    entries: Mutex<LruCache<String, (Tag, Instant)>>,
}

impl AuthCache {
    /// Remembers a verified credential for `ttl`, at most `capacity` users.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        AuthCache {
            key: rand::random(),
            ttl,
            entries: Mutex::new(LruCache::new(cap)),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, LruCache<String, (Tag, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The keyed hash of `user`'s `password`.
    pub fn tag(&self, user: &str, password: &str) -> Tag {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// True when `user` was verified with this password less than the TTL before `now`.
    pub fn hit(&self, user: &str, tag: &Tag, now: Instant) -> bool {
        let mut m = self.map();
        match m.get(user) {
            Some((t, at)) if t == tag => now.saturating_duration_since(*at) < self.ttl,
            _ => false,
        }
    }

    /// Records that `user` was verified with the password of `tag` at `now`.
    pub fn remember(&self, user: &str, tag: Tag, now: Instant) {
        self.map().put(user.to_string(), (tag, now));
    }

    /// Users remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_password_hits_until_the_ttl() {
        let c = AuthCache::new(Duration::from_secs(60), 8);
        let t0 = Instant::now();
        let tag = c.tag("alice", "s3cret");
        assert!(!c.hit("alice", &tag, t0));
        c.remember("alice", tag, t0);
        assert!(c.hit("alice", &tag, t0 + Duration::from_secs(59)));
        assert!(!c.hit("alice", &tag, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn another_password_or_user_misses() {
        let c = AuthCache::new(Duration::from_secs(60), 8);
        let now = Instant::now();
        c.remember("alice", c.tag("alice", "s3cret"), now);
        assert!(!c.hit("alice", &c.tag("alice", "wrong"), now));
        assert!(!c.hit("bob", &c.tag("alice", "s3cret"), now));
        // The pair is framed: moving bytes between user and password changes the tag.
        assert_ne!(c.tag("ali", "ces3cret"), c.tag("alice", "s3cret"));
        // A miss leaves the good entry in place.
        assert!(c.hit("alice", &c.tag("alice", "s3cret"), now));
    }

    #[test]
    fn tags_are_keyed_per_cache() {
        let a = AuthCache::new(Duration::from_secs(60), 8);
        let b = AuthCache::new(Duration::from_secs(60), 8);
        assert_ne!(a.tag("alice", "s3cret"), b.tag("alice", "s3cret"));
    }

    #[test]
    fn bounded_by_users_and_capacity() {
        let c = AuthCache::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        for i in 0..100 {
            c.remember("alice", c.tag("alice", &format!("p{i}")), now);
        }
        assert_eq!(c.len(), 1);
        c.remember("bob", c.tag("bob", "b"), now);
        c.remember("carol", c.tag("carol", "c"), now);
        assert_eq!(c.len(), 2);
        assert!(c.hit("carol", &c.tag("carol", "c"), now));
    }
}
