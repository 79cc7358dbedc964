//! Fetches made on a guess, before a read asks: the rest of a file once part of it missed,
//! a binary's loader dependencies, and the other small files of a directory. Each runs in
//! the background, at most `SPECULATIVE_TASKS` per layer at once; beyond that a guess is
//! dropped, never queued.

use super::{elf, RemoteLayer};
use crate::format::{Chunk, Node, NodeId, NodeKind};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl RemoteLayer {
    /// When a binary's first chunk arrives, its interpreter, `/etc/ld.so.cache` and its
    /// `DT_NEEDED` libraries (looked up where the loader looks) are fetched in one go, in the
    /// background: the loader will open them next, one after another. A large binary keeps
    /// its dynamic section past the first chunk; the chunk holding it is fetched (the
    /// rest-of-file fetch usually has it on the way already) and parsed then.
    pub(super) fn prefetch_loader_deps(self: &Arc<Self>, node: NodeId, head: bytes::Bytes) {
        if let Ok(mut seen) = self.elf_seen.lock() {
            if !seen.insert(node) {
                return;
            }
        }
        let Some(deps) = elf::dependencies(&head) else {
            return;
        };
        let Some((off, len)) = deps.dynamic_missing else {
            self.fetch_loader_deps(&deps);
            return;
        };
        // The interpreter and ld.so.cache need no more of the binary: start them now.
        self.fetch_loader_deps(&deps);
        let n = self.index().node(node);
        let (Some(a), Some(b)) = (n.chunk_at(off), n.chunk_at(off + len.max(1) - 1)) else {
            return;
        };
        let chunks = n.chunks[a..=b].to_vec();
        let layer = self.clone();
        tokio::spawn(async move {
            let data = match layer
                .fetcher
                .chunks(&layer.index().path(node), &chunks)
                .await
            {
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
            if let Some(mut deps) = elf::dependencies_in(elf::Pieces(&pieces)) {
                // The interpreter went out already.
                deps.interp = None;
                layer.fetch_loader_deps(&deps);
            }
        });
    }

    /// Fetches (in the background) the interpreter, ld.so.cache and needed libraries of
    /// `deps` that are in this layer.
    fn fetch_loader_deps(&self, deps: &elf::Dependencies) {
        let mut paths: Vec<String> = Vec::new();
        if let Some(i) = &deps.interp {
            paths.push(i.clone());
            paths.push("/etc/ld.so.cache".into());
        }
        const DIRS: [&str; 8] = [
            "lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu",
            "lib/aarch64-linux-gnu",
            "usr/lib/aarch64-linux-gnu",
            "lib64",
            "usr/lib64",
            "lib",
            "usr/lib",
        ];
        for lib in &deps.needed {
            if let Some(p) = DIRS
                .iter()
                .map(|d| format!("{d}/{lib}"))
                .find(|p| self.resolve(p).is_some())
            {
                paths.push(p);
            }
        }
        // glibc's own data files that programs read right after the loader is done: the
        // time zone (`/etc/localtime`, for localtime/tzset), the C.UTF-8 character table
        // (setlocale with LANG=C.UTF-8, the usual container locale) and the iconv module
        // cache. Small (tens of KB compressed), fetched once per layer.
        if deps.needed.iter().any(|l| l == "libc.so.6")
            && !self.glibc_seen.swap(true, Ordering::Relaxed)
        {
            paths.push("etc/localtime".into());
            for locale in ["C.utf8", "C.UTF-8"] {
                paths.push(format!("usr/lib/locale/{locale}/LC_CTYPE"));
            }
            for d in DIRS {
                paths.push(format!("{d}/gconv/gconv-modules.cache"));
            }
        }
        const BUDGET: u64 = 64 << 20;
        let mut total = 0;
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut seen_nodes = std::collections::HashSet::new();
        for p in &paths {
            let Some(id) = self.resolve(p) else { continue };
            let n = self.index().node(id);
            if n.kind != NodeKind::Reg || !seen_nodes.insert(id) || total + n.size > BUDGET {
                continue;
            }
            total += n.size;
            chunks.extend(
                n.chunks
                    .iter()
                    .filter(|c| !self.fetcher.is_cached(c))
                    .cloned(),
            );
        }
        if chunks.is_empty() {
            return;
        }
        chunks.sort_by_key(|c| (c.blob_offset, c.inner_offset));
        chunks.dedup_by_key(|c| (c.blob_offset, c.inner_offset));
        self.speculate("(loader dependencies)".into(), chunks);
    }

    /// Once part of a program or library had to come from the network, the rest of it (up
    /// to 64 MiB) is fetched alongside, in its own request: those are read whole, so the
    /// next miss in the same file overlaps the current one instead of following it. A later
    /// read of those chunks waits for that fetch (single flight) rather than repeating it.
    /// Other files (data, archives) are read as far as their readers go: a build step that
    /// reads the head of a large file must not pull all of it.
    pub(super) fn continue_file(&self, node: NodeId, from: usize) {
        const BUDGET: u64 = 64 << 20;
        let n = self.index().node(node);
        if !is_program_or_library(n, self.index().name(node)) {
            return;
        }
        let mut total = 0;
        let rest: Vec<Chunk> = n.chunks[from.min(n.chunks.len())..]
            .iter()
            .filter(|c| !self.fetcher.is_cached(c))
            .take_while(|c| {
                total += c.size;
                total <= BUDGET
            })
            .cloned()
            .collect();
        if rest.is_empty() {
            return;
        }
        self.speculate(self.index().path(node), rest);
    }

    /// Fetches `chunks` in the background for a read that has not come yet. At most
    /// `SPECULATIVE_TASKS` run at once (each may hold up to 64 MiB while it decodes); beyond
    /// that the guess is dropped, never queued, so a program opening many large files cannot
    /// make speculation grow without bound.
    fn speculate(&self, label: String, chunks: Vec<Chunk>) -> bool {
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
            }
        });
        true
    }

    /// After a miss in a directory whose files are small and few, the other files of that
    /// directory are fetched too, once: a program that reads one file of such a directory
    /// (a package's modules, a locale, a config dir) usually reads more, one round trip
    /// each, and the archive keeps a directory's files together, so this is one request.
    /// Skipped when the directory holds more than `SIBLINGS_MAX_ENTRIES` entries or its
    /// other files come to more than `SIBLINGS_BUDGET` compressed bytes.
    pub(super) fn prefetch_siblings(&self, node: NodeId) {
        const SIBLINGS_BUDGET: u64 = 512 << 10;
        const SIBLINGS_MAX_ENTRIES: usize = 1024;
        let index = self.index();
        let dir = index.node(node).parent;
        if self.dirs_seen.lock().is_ok_and(|seen| seen.contains(&dir)) {
            return;
        }
        let mark = || {
            if let Ok(mut seen) = self.dirs_seen.lock() {
                seen.insert(dir);
            }
        };
        let children = index.children(dir);
        if children.len() > SIBLINGS_MAX_ENTRIES {
            return mark();
        }
        let mut total = 0u64;
        let mut chunks: Vec<Chunk> = Vec::new();
        for (_, id) in children {
            let n = index.node(id);
            if id == node || n.kind != NodeKind::Reg {
                continue;
            }
            for c in n.chunks.iter().filter(|c| !self.fetcher.is_cached(c)) {
                total += c.blob_end - c.blob_offset;
                if total > SIBLINGS_BUDGET {
                    return mark();
                }
                chunks.push(c.clone());
            }
        }
        if chunks.is_empty() {
            return mark();
        }
        chunks.sort_by_key(|c| (c.blob_offset, c.inner_offset));
        chunks.dedup_by_key(|c| (c.blob_offset, c.inner_offset));
        let label = format!("(siblings in {})", index.path(dir));
        // A guess dropped because enough are running is tried again at the next miss here.
        if self.speculate(label, chunks) {
            mark();
        }
    }
}

/// Whether `n`, named `name`, looks like something loaded whole: executable, or a shared
/// object by name.
fn is_program_or_library(n: &Node, name: &str) -> bool {
    n.mode & 0o111 != 0 || name.ends_with(".so") || name.contains(".so.")
}
