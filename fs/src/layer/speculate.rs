//! Fetches made on a guess, before a read asks: more of a program or library once part of
//! it missed (how much: `continuation.rs`), a binary's loader dependencies, and the other
//! small files of a directory.
//! Every guess follows from the data (ELF structure, the layer's own `ld.so.cache`, the TOC,
//! the reads seen), never from the name of a file, program or library. Each runs in the
//! background, at most `SPECULATIVE_TASKS` per layer at once; beyond that a guess is
//! dropped, never queued.

use super::{continuation, elf, ldcache, RemoteLayer};
use crate::format::{Chunk, NodeId, NodeKind};
use std::sync::Arc;

/// Whether the small files a program names in its bytes are fetched once it has arrived.
impl RemoteLayer {
    /// When a binary's first chunk arrives, its interpreter, `/etc/ld.so.cache` and its
    /// `DT_NEEDED` libraries (see [`Self::find_library`]) are fetched in one go, in the
    /// background: the loader will open them next, one after another. A large binary keeps
    /// its dynamic section past the first chunk; the chunk holding it is fetched (the
    /// rest-of-file fetch usually has it on the way already) and parsed then.
    pub(super) fn prefetch_loader_deps(self: &Arc<Self>, node: NodeId, head: bytes::Bytes) {
        if let Ok(mut seen) = self.elf_seen.lock() {
            if !seen.insert(node) {
                return;
            }
        }
        self.continue_after_head(node, &head);
        let Some(deps) = elf::dependencies(&head) else {
            return;
        };
        let Some((off, len)) = deps.dynamic_missing else {
            self.fetch_loader_deps(node, &deps, true);
            return;
        };
        // The interpreter and ld.so.cache need no more of the binary: start them now.
        self.fetch_loader_deps(node, &deps, true);
        let n = self.index().node(node);
        let (Some(a), Some(b)) = (n.chunk_at(off), n.chunk_at(off + len.max(1) - 1)) else {
            return;
        };
        let chunks = n.chunks[a..=b].to_vec();
        let layer = self.clone();
        tokio::spawn(async move {
            let path = layer.index().path(node);
            // Fetched as a guess (no read waits for it), then read from the cache.
            let data = match layer.fetcher.fetch_ahead(&path, &chunks).await {
                Ok(()) => layer.fetcher.chunks(&path, &chunks).await,
                Err(e) => Err(e),
            };
            let data = match data {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, "dynamic section fetch failed");
                    return;
                }
            };
            let mut pieces: Vec<(u64, &[u8])> = vec![(0, &head[..])];
            pieces.extend(
                chunks
                    .iter()
                    .zip(&data)
                    .map(|(c, d)| (c.file_offset, &d[..])),
            );
            if let Some(deps) = elf::dependencies_in(elf::Pieces(&pieces)) {
                // The interpreter went out already (it still says where libraries are).
                layer.fetch_loader_deps(node, &deps, false);
            }
        });
    }

    /// Fetches (in the background) the interpreter, ld.so.cache and needed libraries of
    /// `deps` (of the binary `node`; the interpreter only `with_interp`) that are in this layer: small ones whole, of large ones
    /// the head, then the ranges its program headers say the loader touches (see
    /// `continuation.rs`).
    fn fetch_loader_deps(
        self: &Arc<Self>,
        node: NodeId,
        deps: &elf::Dependencies,
        with_interp: bool,
    ) {
        let mut paths: Vec<String> = Vec::new();
        if let Some(i) = deps.interp.as_ref().filter(|_| with_interp) {
            paths.push(i.clone());
            paths.push("/etc/ld.so.cache".into());
        }
        for lib in &deps.needed {
            if let Some(p) = self.find_library(node, deps, lib) {
                paths.push(p);
            }
        }
        let mut chunks: Vec<Chunk> = Vec::new();
        let (mut whole, mut large) = (Vec::new(), Vec::new());
        for p in &paths {
            let Some(id) = self.resolve(p) else { continue };
            let n = self.index().node(id);
            if n.kind != NodeKind::Reg || whole.contains(&id) || large.contains(&id) {
                continue;
            }
            let take = if continuation::total_compressed(&n.chunks) <= continuation::WHOLE_MAX {
                whole.push(id);
                &n.chunks[..]
            } else {
                large.push(id);
                &n.chunks[..n.chunks.len().min(1)]
            };
            chunks.extend(take.iter().filter(|c| !self.fetcher.is_cached(c)).cloned());
        }
        if chunks.is_empty() && large.is_empty() {
            return;
        }
        chunks.sort_by_key(|c| (c.blob_offset, c.inner_offset));
        chunks.dedup_by_key(|c| (c.blob_offset, c.inner_offset));
        let layer = self.clone();
        self.speculate_then("(loader dependencies)".into(), chunks, move || {
            // The large libraries' heads are here: their loader ranges next.
            large
                .into_iter()
                .flat_map(|id| layer.loader_range_chunks(id))
                .collect()
        });
    }

    /// Where the loader would find `lib` needed by `node`: the binary's `DT_RUNPATH` (or
    /// `DT_RPATH`) directories, `$ORIGIN` being the binary's own directory; then the
    /// layer's `/etc/ld.so.cache` when it is cached already; then the directory the
    /// interpreter really lives in (symlinks followed), where the system's libraries are.
    /// All from the image's own data; `None` when none of them has it.
    fn find_library(&self, node: NodeId, deps: &elf::Dependencies, lib: &str) -> Option<String> {
        let index = self.index();
        let own_dir = index.path(index.node(node).parent);
        let is_file = |p: &str| {
            self.resolve(p)
                .is_some_and(|id| index.node(id).kind == NodeKind::Reg)
        };
        for dir in &deps.runpath {
            let dir = dir
                .replace("${ORIGIN}", &own_dir)
                .replace("$ORIGIN", &own_dir);
            let p = format!("{dir}/{lib}");
            if is_file(&p) {
                return Some(p);
            }
        }
        if let Some(cache) = self.cached_file("/etc/ld.so.cache") {
            if let Some(p) = ldcache::lookup(&cache, lib).find(|p| is_file(p)) {
                return Some(p.to_string());
            }
        }
        let interp = deps.interp.as_deref().and_then(|i| self.resolve(i))?;
        let p = format!("{}/{lib}", index.path(index.node(interp).parent));
        is_file(&p).then_some(p)
    }

    /// The whole of a small regular file at `path` when every chunk is in a cache (no
    /// network); `None` otherwise or past [`continuation::WHOLE_MAX`] bytes.
    fn cached_file(&self, path: &str) -> Option<Vec<u8>> {
        let n = self.index().node(self.resolve(path)?);
        if n.kind != NodeKind::Reg || n.size > continuation::WHOLE_MAX {
            return None;
        }
        let mut out = Vec::with_capacity(n.size as usize);
        for c in n.chunks.iter() {
            out.extend_from_slice(&self.fetcher.cached_range(c, 0..c.size as usize)?);
        }
        Some(out)
    }

    /// The chunks of `node` holding what its program headers say the loader maps and touches
    /// at once (see [`elf::loader_ranges`]), when its head is cached; not yet cached ones only.
    fn loader_range_chunks(&self, node: NodeId) -> Vec<Chunk> {
        let n = self.index().node(node);
        let Some(head) = n
            .chunks
            .first()
            .and_then(|c| self.fetcher.cached_range(c, 0..c.size as usize))
        else {
            return Vec::new();
        };
        let Some(ranges) = elf::loader_ranges(&head) else {
            return Vec::new();
        };
        continuation::chunks_of_ranges(&n.chunks, &ranges, continuation::SEGMENTS_MAX)
            .into_iter()
            .map(|i| n.chunks[i].clone())
            .filter(|c| !self.fetcher.is_cached(c))
            .collect()
    }

    /// Once part of a program or library (executable, or ELF by its head) had to come from
    /// the network, more of it is fetched alongside, in its own request (see
    /// `continuation.rs`): a small one whole, so the next miss in the same file overlaps the
    /// current one instead of following it; of a large one a window past the miss that grows
    /// while the misses follow each other. A later read of those chunks waits for that fetch
    /// (single flight) rather than repeating it. Other files (data, archives) are read as far
    /// as their readers go: a build step that reads the head of a large file must not pull all
    /// of it.
    pub(super) fn continue_file(&self, node: NodeId, first: usize, last: usize) {
        let n = self.index().node(node);
        let elf_head = || {
            n.chunks
                .first()
                .and_then(|c| self.fetcher.cached_range(c, 0..c.size.min(4) as usize))
                .is_some_and(|h| elf::is_elf(&h))
        };
        if n.mode & 0o111 == 0 && !elf_head() {
            return;
        }
        let range = if continuation::total_compressed(&n.chunks) <= continuation::WHOLE_MAX {
            last.saturating_add(1).min(n.chunks.len())..n.chunks.len()
        } else {
            self.streams.after_miss(node, &n.chunks, first, last)
        };
        let rest: Vec<Chunk> = n.chunks[range]
            .iter()
            .filter(|c| !self.fetcher.is_cached(c))
            .cloned()
            .collect();
        if rest.is_empty() {
            return;
        }
        self.speculate(self.index().path(node), rest);
    }

    /// After the head of ELF file `node` arrived for a read: a small file's rest, a large
    /// one's loader ranges, on a guess (once per file: called with the loader dependencies).
    fn continue_after_head(&self, node: NodeId, head: &[u8]) {
        let n = self.index().node(node);
        if !elf::is_elf(head) {
            return;
        }
        let small = continuation::total_compressed(&n.chunks) <= continuation::WHOLE_MAX;
        if small && n.mode & 0o111 != 0 {
            // An executable's rest went out with the miss on its head already.
            return;
        }
        let chunks: Vec<Chunk> = if small {
            n.chunks
                .iter()
                .skip(1)
                .filter(|c| !self.fetcher.is_cached(c))
                .cloned()
                .collect()
        } else {
            self.loader_range_chunks(node)
        };
        if !chunks.is_empty() {
            self.speculate(self.index().path(node), chunks);
        }
    }

    /// Fetches `chunks` in the background for a read that has not come yet. At most
    /// `SPECULATIVE_TASKS` run at once (each may hold up to 64 MiB while it decodes); beyond
    /// that the guess is dropped, never queued, so a program opening many large files cannot
    /// make speculation grow without bound.
    fn speculate(&self, label: String, chunks: Vec<Chunk>) -> bool {
        self.speculate_then(label, chunks, Vec::new)
    }

    /// Like [`Self::speculate`], and once `chunks` are in, fetches what `then` says (with
    /// the same permit: a guess that follows from the first one's bytes).
    fn speculate_then<F>(&self, label: String, chunks: Vec<Chunk>, then: F) -> bool
    where
        F: FnOnce() -> Vec<Chunk> + Send + 'static,
    {
        if !self.fetcher.honours_ranges() {
            // Each request to such a server streams the blob from its start: a guess would
            // cost the whole prefix again.
            tracing::debug!(guess = %label, "speculative fetch dropped: the registry ignores Range");
            return false;
        }
        let Ok(permit) = self.speculative.clone().try_acquire_owned() else {
            tracing::debug!(guess = %label, "speculative fetch dropped: enough running");
            return false;
        };
        let fetcher = self.fetcher.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = fetcher.fetch_ahead(&label, &chunks).await {
                tracing::debug!(file = %label, error = %e, "speculative fetch failed");
                return;
            }
            let mut next = then();
            if next.is_empty() {
                return;
            }
            next.sort_by_key(|c| (c.blob_offset, c.inner_offset));
            next.dedup_by_key(|c| (c.blob_offset, c.inner_offset));
            if let Err(e) = fetcher.fetch_ahead(&label, &next).await {
                tracing::debug!(file = %label, error = %e, "speculative fetch failed");
            }
        });
        true
    }

    /// After a miss in a directory, its other files are fetched on a guess: a program that
    /// reads one file of a directory (a package's modules, a locale, a config dir) usually
    /// reads more, one round trip each, and the archive keeps a directory's files together.
    /// At the first miss, only a small directory is taken — all of it, when its other files
    /// come to at most `SIBLINGS_BUDGET` compressed bytes. A larger directory is taken only
    /// when the reads keep missing on small files in it (at most `SMALL_FILE` compressed
    /// bytes: files whose fetch costs a round trip, not link time): at each further such
    /// miss, its small files not yet fetched, smallest first (the most round trips saved per
    /// byte), up to a budget that doubles with every miss (1, 2, then 4 MiB a step), until
    /// they are in. Misses on larger files (a library directory's libraries) grow nothing.
    /// Directories of more than `SIBLINGS_MAX_ENTRIES` entries are left alone.
    pub(super) fn prefetch_siblings(&self, node: NodeId) {
        const SIBLINGS_BUDGET: u64 = 512 << 10;
        const SIBLINGS_MAX_STEP: u64 = 4 << 20;
        const SMALL_FILE: u64 = 64 << 10;
        const SIBLINGS_MAX_ENTRIES: usize = 4096;
        /// The directory is in (or left alone): no more guesses there.
        const DONE: u32 = u32::MAX;
        let index = self.index();
        let dir = index.node(node).parent;
        let misses = self
            .dirs_seen
            .lock()
            .map_or(DONE, |seen| seen.get(&dir).copied().unwrap_or(0));
        if misses == DONE {
            return;
        }
        let set = |v: u32| {
            if let Ok(mut seen) = self.dirs_seen.lock() {
                seen.insert(dir, v);
            }
        };
        let children = index.children(dir);
        if children.len() > SIBLINGS_MAX_ENTRIES {
            return set(DONE);
        }
        // Per other file, its chunks not cached yet and their compressed bytes.
        let mut files: Vec<(u64, Vec<Chunk>)> = Vec::new();
        for (_, id) in children {
            let n = index.node(id);
            if id == node || n.kind != NodeKind::Reg {
                continue;
            }
            let wanted: Vec<Chunk> = n
                .chunks
                .iter()
                .filter(|c| !self.fetcher.is_cached(c))
                .cloned()
                .collect();
            if !wanted.is_empty() {
                let bytes = wanted.iter().map(|c| c.blob_end - c.blob_offset).sum();
                files.push((bytes, wanted));
            }
        }
        if files.is_empty() {
            return set(DONE);
        }
        let total: u64 = files.iter().map(|f| f.0).sum();
        let budget = if misses == 0 {
            SIBLINGS_BUDGET
        } else {
            (SIBLINGS_BUDGET << misses.min(4)).min(SIBLINGS_MAX_STEP)
        };
        if misses == 0 && total > budget {
            // A large directory: wait for a second miss there before guessing.
            return set(1);
        }
        if misses > 0 {
            let missed: u64 = index
                .node(node)
                .chunks
                .iter()
                .map(|c| c.blob_end - c.blob_offset)
                .sum();
            if missed > SMALL_FILE {
                return;
            }
            files.retain(|(bytes, _)| *bytes <= SMALL_FILE);
        }
        files.sort_by_key(|(bytes, chunks)| (*bytes, chunks[0].blob_offset));
        let mut taken = 0u64;
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut all = true;
        for (bytes, c) in files {
            if taken + bytes > budget {
                all = false;
                break;
            }
            taken += bytes;
            chunks.extend(c);
        }
        if chunks.is_empty() {
            // Every file left is bigger than this step: the next miss has a larger one.
            return set(misses.saturating_add(1).min(DONE - 1));
        }
        chunks.sort_by_key(|c| (c.blob_offset, c.inner_offset));
        chunks.dedup_by_key(|c| (c.blob_offset, c.inner_offset));
        let label = format!("(siblings in {})", index.path(dir));
        // A guess dropped because enough are running is tried again at the next miss here.
        if self.speculate(label, chunks) {
            set(if all {
                DONE
            } else {
                misses.saturating_add(1).min(DONE - 1)
            });
        }
    }
}
