//! The on-disk tier: a content-addressed chunk store, `ROOT/sha256/<2 hex>/<hex>`. Writes
//! go to a temp file in `ROOT/tmp`, are fsynced, then renamed into place, so a crash leaves
//! either nothing or a whole file. The total size is capped; least recently used entries go
//! first, and the order survives restarts through file modification times (touched when an
//! entry is verified).
//!
//! Trust: an entry is hashed the first time this process reads it (a corrupted or truncated
//! one is removed and reported as a miss, and the fetcher refetches), or written by this
//! process from bytes it verified. Either way the process then keeps the file's stamp
//! (device, inode, size, change time). Any later write to the file, or its replacement,
//! changes the stamp, and no one can set a change time back, so while the stamp holds, the
//! bytes are the verified ones. A reader's range is then read straight from the file
//! ([`DiskCache::read_range`]) without reading and hashing the whole chunk again, and the
//! kernel's page cache (shared, reclaimable) keeps hot chunks instead of our heap. (Before
//! Linux 6.13's multigrain timestamps, a write within the same clock tick as the stamp can
//! keep the change time; writing here takes root, who could change our memory anyway.)
//!
//! Whole files live in the same store, keyed by the chunk layout that verified them (see
//! [`super::whole_file`]; a one-chunk file already is its chunk): FUSE passthrough hands the
//! kernel an open descriptor of one, so reads of a fully fetched file never come back to user
//! space. Such a file is checked piece by piece when it is stored, or the first time a
//! process hands it out ([`DiskCache::open_file`]), like a chunk.

use super::whole_file::{whole_file_key, Piece, PieceChecker};
use super::VerifiedChunk;
use crate::digest::Digest;
use bytes::Bytes;
use lru::LruCache;
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Why the disk cache failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    /// File-system I/O.
    #[error("chunk cache {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskCacheError {
    let context = context.into();
    move |source| DiskCacheError::Io { context, source }
}

struct State {
    lru: LruCache<Digest, u64>,
    bytes: u64,
}

/// What a stored file looked like when this process verified (or wrote) it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Self {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

/// A chunk store under one directory.
pub struct DiskCache {
    root: PathBuf,
    cap: u64,
    state: Mutex<State>,
    /// Entries this process verified or wrote, with their stamps at that time.
    verified: Mutex<HashMap<Digest, Stamp>>,
}

impl DiskCache {
    /// Opens (or creates) the store at `root` with a size cap, indexing what is there.
    pub fn open(root: &Path, cap: u64) -> Result<Self, DiskCacheError> {
        crate::sys::private_dir(&root.join("sha256"))
            .and_then(|()| crate::sys::private_dir(root))
            .map_err(io(format!("creating {}", root.display())))?;
        let tmp = root.join("tmp");
        // Leftover temp files are from writes a crash interrupted.
        let _ = fs::remove_dir_all(&tmp);
        crate::sys::private_dir(&tmp).map_err(io("creating tmp dir"))?;
        let mut found: Vec<(std::time::SystemTime, Digest, u64)> = Vec::new();
        let shards = fs::read_dir(root.join("sha256")).map_err(io("listing the store"))?;
        for shard in shards.flatten() {
            let Ok(entries) = fs::read_dir(shard.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
                    let _ = fs::remove_file(e.path());
                    continue;
                };
                if let Ok(m) = e.metadata() {
                    if m.is_file() {
                        let t = m.modified().unwrap_or(std::time::UNIX_EPOCH);
                        found.push((t, d, m.len()));
                    }
                }
            }
        }
        found.sort_by_key(|(t, _, _)| *t);
        let mut state = State {
            lru: LruCache::unbounded(),
            bytes: 0,
        };
        for (_, d, len) in found {
            state.lru.put(d, len);
            state.bytes += len;
        }
        let cache = DiskCache {
            root: root.to_path_buf(),
            cap,
            state: Mutex::new(state),
            verified: Mutex::new(Default::default()),
        };
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where a chunk lives.
    pub fn path_of(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("sha256").join(&hex[..2]).join(hex)
    }

    /// Whether the chunk is indexed (LRU order untouched; the file is checked when read).
    pub fn contains(&self, d: &Digest) -> bool {
        self.lock().lru.contains(d)
    }

    /// Bytes stored.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Chunks stored.
    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads a chunk of `len` bytes: hashed unless this process already vouches for the
    /// file (see the module doc); a bad entry is removed and misses.
    pub fn get(&self, d: &Digest, len: u64) -> Option<VerifiedChunk> {
        // Unknown digests miss without touching the disk; known ones become most recent.
        self.lock().lru.get(d)?;
        let path = self.path_of(d);
        let read = fs::File::open(&path).and_then(|f| {
            let known = self.vouches(d, &f);
            let mut data = Vec::with_capacity(len as usize);
            (&f).take(len + 1).read_to_end(&mut data)?;
            // A change while reading shows in the stamp; the bytes are hashed then.
            let known = known && self.vouches(d, &f);
            Ok((f, data, known))
        });
        let (file, data, known): (fs::File, Bytes, bool) = match read {
            Ok((f, v, k)) if v.len() as u64 == len => (f, v.into(), k),
            Ok((_, v, _)) => {
                tracing::warn!(digest = %d, want = len, got = v.len(), "cached chunk has the wrong size; dropping it");
                self.forget(d);
                return None;
            }
            Err(e) => {
                tracing::warn!(digest = %d, error = %e, "cached chunk unreadable; dropping it");
                self.forget(d);
                return None;
            }
        };
        if known {
            return Some(VerifiedChunk::already_verified(*d, data));
        }
        match VerifiedChunk::verify(*d, data) {
            Some(c) => {
                // Touch so the LRU order survives a restart, then vouch for what is there.
                let _ = file.set_modified(std::time::SystemTime::now());
                self.vouch(d, &file);
                Some(c)
            }
            None => {
                tracing::warn!(digest = %d, "cached chunk is corrupt; dropping it");
                self.forget(d);
                None
            }
        }
    }

    /// Bytes `offset..offset + len` of chunk `d`, read straight from its file, if this
    /// process vouches for the file (it verified or wrote it, and the file has not changed
    /// since); `None` otherwise — the caller then reads the whole chunk through
    /// [`Self::get`], which verifies it. Makes the entry most recently used (in this process;
    /// the file's time is refreshed when it is verified).
    pub fn read_range(&self, d: &Digest, offset: u64, len: usize) -> Option<Vec<u8>> {
        if !self.lock_verified().contains_key(d) {
            return None;
        }
        let f = fs::File::open(self.path_of(d)).ok()?;
        if !self.vouches(d, &f) {
            return None;
        }
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).ok()?;
        // A write while we read changed the stamp: let the caller verify instead.
        if !self.vouches(d, &f) {
            return None;
        }
        self.lock().lru.get(d)?;
        Some(buf)
    }

    /// Whether this process vouches for `f` as entry `d`: it verified or wrote the entry,
    /// and the open file still has the stamp it had then.
    fn vouches(&self, d: &Digest, f: &fs::File) -> bool {
        let Some(want) = self.lock_verified().get(d).copied() else {
            return false;
        };
        f.metadata().is_ok_and(|m| Stamp::of(&m) == want)
    }

    /// Records the stamp of `f`, whose bytes were just verified (or written from verified
    /// bytes) as entry `d`.
    fn vouch(&self, d: &Digest, f: &fs::File) {
        if let Ok(m) = f.metadata() {
            self.lock_verified().insert(*d, Stamp::of(&m));
        }
    }

    /// Opens the stored whole file laid out as `pieces` (see [`whole_file_key`]) for
    /// reading. One this process has not vouched for yet is checked piece by piece first; a
    /// bad entry is removed and misses. The returned descriptor stays valid if the entry is
    /// evicted later (the inode lives while it is open).
    pub fn open_file(&self, pieces: &[Piece]) -> Option<fs::File> {
        let d = whole_file_key(pieces);
        let len: u64 = pieces.iter().map(|p| p.len).sum();
        self.lock().lru.get(&d)?;
        let path = self.path_of(&d);
        let checked = fs::File::open(&path).and_then(|f| {
            if self.vouches(&d, &f) {
                return Ok((f, true));
            }
            let mut c = PieceChecker::new(std::io::sink(), pieces);
            std::io::copy(&mut (&f).take(len + 1), &mut c)?;
            Ok((f, c.matched()))
        });
        match checked {
            Ok((f, true)) => {
                if !self.vouches(&d, &f) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                    self.vouch(&d, &f);
                }
                Some(f)
            }
            Ok((_, false)) => {
                tracing::warn!(key = %d, "cached file is corrupt or truncated; dropping it");
                self.forget(&d);
                None
            }
            Err(e) => {
                tracing::warn!(key = %d, error = %e, "cached file unreadable; dropping it");
                self.forget(&d);
                None
            }
        }
    }

    /// Stores a whole file laid out as `pieces`, written by `fill` into a temp file; it
    /// enters the store (under [`whole_file_key`]) only if every piece matches. Returns false
    /// (storing nothing) when `fill` ran out of data, gave up, or wrote other bytes.
    pub fn put_file(
        &self,
        pieces: &[Piece],
        fill: impl FnOnce(&mut dyn Write) -> std::io::Result<bool>,
    ) -> Result<bool, DiskCacheError> {
        let d = whole_file_key(pieces);
        let len: u64 = pieces.iter().map(|p| p.len).sum();
        if len > self.cap {
            return Ok(false);
        }
        if self.lock().lru.get(&d).is_some() {
            return Ok(true);
        }
        let path = self.path_of(&d);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io("creating shard dir"))?;
        }
        let tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .map_err(io("creating temp file"))?;
        let (complete, written, matched) = {
            let mut w = PieceChecker::new(
                std::io::BufWriter::with_capacity(1 << 20, tmp.as_file()),
                pieces,
            );
            let complete = fill(&mut w)
                .and_then(|ok| w.inner_mut().flush().map(|()| ok))
                .map_err(io(format!("writing file {d}")))?;
            (complete, w.written(), w.matched())
        };
        if !complete || !matched {
            tracing::warn!(key = %d, written, want = len, "assembled file does not match its chunks; not stored");
            return Ok(false);
        }
        tmp.as_file()
            .sync_all()
            .map_err(io(format!("writing file {d}")))?;
        let file = tmp.persist(&path).map_err(|e| DiskCacheError::Io {
            context: format!("storing file {d}"),
            source: e.error,
        })?;
        self.vouch(&d, &file);
        {
            let mut s = self.lock();
            if s.lru.put(d, len).is_none() {
                s.bytes += len;
            }
        }
        self.evict();
        Ok(true)
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Stamp>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, d: &Digest) {
        self.lock_verified().remove(d);
        let mut s = self.lock();
        if let Some(len) = s.lru.pop(d) {
            s.bytes -= len;
        }
        drop(s);
        let _ = fs::remove_file(self.path_of(d));
    }

    /// Stores a verified chunk (temp file, fsync, rename), then evicts beyond the cap.
    pub fn put(&self, c: &VerifiedChunk) -> Result<(), DiskCacheError> {
        let len = c.data().len() as u64;
        if len > self.cap {
            return Ok(());
        }
        if self.lock().lru.get(c.digest()).is_some() {
            return Ok(());
        }
        let path = self.path_of(c.digest());
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io("creating shard dir"))?;
        }
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .map_err(io("creating temp file"))?;
        tmp.write_all(c.data())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(io(format!("writing chunk {}", c.digest())))?;
        let file = tmp.persist(&path).map_err(|e| DiskCacheError::Io {
            context: format!("storing chunk {}", c.digest()),
            source: e.error,
        })?;
        self.vouch(c.digest(), &file);
        {
            let mut s = self.lock();
            if s.lru.put(*c.digest(), len).is_none() {
                s.bytes += len;
            }
        }
        self.evict();
        Ok(())
    }

    fn evict(&self) {
        loop {
            let victim = {
                let mut s = self.lock();
                if s.bytes <= self.cap {
                    return;
                }
                match s.lru.pop_lru() {
                    Some((d, len)) => {
                        s.bytes -= len;
                        d
                    }
                    None => return,
                }
            };
            self.lock_verified().remove(&victim);
            let _ = fs::remove_file(self.path_of(&victim));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(b: u8, n: usize) -> VerifiedChunk {
        let data: Bytes = vec![b; n].into();
        VerifiedChunk::verify(Digest::of(&data), data).unwrap()
    }

    #[test]
    fn survives_restart_and_caps() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (chunk(1, 400), chunk(2, 400), chunk(3, 400));
        {
            let cache = DiskCache::open(dir.path(), 1000).unwrap();
            cache.put(&a).unwrap();
            cache.put(&b).unwrap();
            assert!(cache.get(a.digest(), 400).is_some());
        }
        let cache = DiskCache::open(dir.path(), 1000).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(b.digest(), 400).unwrap().data(), b.data());
        cache.put(&c).unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.bytes() <= 1000);
    }

    #[test]
    fn corrupt_and_truncated_entries_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let (a, b) = (chunk(1, 300), chunk(2, 300));
        cache.put(&a).unwrap();
        cache.put(&b).unwrap();
        let mut bytes = fs::read(cache.path_of(a.digest())).unwrap();
        bytes[10] ^= 1;
        fs::write(cache.path_of(a.digest()), bytes).unwrap();
        fs::write(cache.path_of(b.digest()), [2u8; 100]).unwrap();
        assert!(cache.get(a.digest(), 300).is_none());
        assert!(cache.get(b.digest(), 300).is_none());
        assert!(!cache.path_of(a.digest()).exists());
        assert_eq!(cache.len(), 0);
        cache.put(&a).unwrap();
        assert!(cache.get(a.digest(), 300).is_some());
    }

    #[test]
    fn ranges_are_read_only_from_entries_this_process_vouches_for() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let a = VerifiedChunk::verify(Digest::of(&data), data.clone().into()).unwrap();
        {
            let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
            cache.put(&a).unwrap();
            // Written from verified bytes: ranges come straight from the file.
            assert_eq!(
                cache.read_range(a.digest(), 100, 50).unwrap(),
                &data[100..150]
            );
            assert!(cache.read_range(a.digest(), 4990, 20).is_none());
        }
        // A new process has verified nothing yet: the whole chunk is hashed first.
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(cache.read_range(a.digest(), 0, 10).is_none());
        assert!(cache.get(a.digest(), 5000).is_some());
        assert_eq!(cache.read_range(a.digest(), 0, 10).unwrap(), &data[..10]);
        // Changed behind our back (same size): no range is served from it, and the
        // whole-chunk read hashes it again, drops it and misses. (The pause makes the clock
        // tick: without multigrain timestamps a write in the same tick keeps the ctime.)
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut bad = data.clone();
        bad[120] ^= 0xff;
        fs::write(cache.path_of(a.digest()), &bad).unwrap();
        assert!(cache.read_range(a.digest(), 100, 50).is_none());
        assert!(cache.get(a.digest(), 5000).is_none());
        assert!(!cache.path_of(a.digest()).exists());
        assert!(cache.read_range(a.digest(), 100, 50).is_none());
        // Replaced by a good copy from outside (a new inode): hashed again before use.
        fs::create_dir_all(cache.path_of(a.digest()).parent().unwrap()).unwrap();
        cache.put(&a).unwrap();
        let p = cache.path_of(a.digest());
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::remove_file(&p).unwrap();
        fs::write(&p, &data).unwrap();
        assert!(cache.read_range(a.digest(), 0, 10).is_none());
        assert!(cache.get(a.digest(), 5000).is_some());
        assert_eq!(cache.read_range(a.digest(), 0, 10).unwrap(), &data[..10]);
    }

    #[test]
    fn whole_files_are_checked_when_stored_and_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let data = vec![7u8; 5000];
        let d = Digest::of(&data);
        // Wrong bytes, short bytes, or a writer that gives up: nothing is stored.
        let one = [Piece {
            len: 5000,
            digest: Some(d),
        }];
        assert!(!cache
            .put_file(&one, |w| w.write_all(&[8u8; 5000]).map(|()| true))
            .unwrap());
        assert!(!cache
            .put_file(&one, |w| w.write_all(&data[..10]).map(|()| true))
            .unwrap());
        assert!(!cache
            .put_file(&one, |w| w.write_all(&data).map(|()| false))
            .unwrap());
        assert!(cache.open_file(&one).is_none());
        assert!(cache
            .put_file(&one, |w| w.write_all(&data).map(|()| true))
            .unwrap());
        let mut f = cache.open_file(&one).unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        // Corrupted on disk: a new process (a fresh index) re-hashes and drops it.
        let mut bad = data.clone();
        bad[3] = 0;
        fs::write(cache.path_of(&d), &bad).unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(cache.open_file(&one).is_none());
        assert!(!cache.path_of(&d).exists());
    }
}
