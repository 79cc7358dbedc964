//! One lazily read layer: its metadata (footer + TOC) fetched with two small Range GETs and
//! checked against the manifest's TOC digest, its index, and reads of file ranges served
//! chunk by chunk through the fetcher (cache → merged Range GETs → verify). The FUSE
//! filesystem of a later layer of the stack sits on [`RemoteLayer::read`].

mod activity;
mod continuation;
mod elf;
mod ldcache;
mod local;
mod profile_replay;
mod readahead;
mod resolve;
mod speculate;

pub use local::LOCAL_FILE_MIN;
pub use profile_replay::{QUIET as PROFILE_QUIET, RECORD_FOR as PROFILE_RECORD_FOR};

use crate::cache::ChunkCache;
use crate::digest::Digest;
use crate::fetcher::{CounterSnapshot, FetchError, FetchOptions, Fetcher, RemoteBlob};
use crate::format::{
    footer::Footer, metadata_start, FormatError, Index, LayerReader, NodeId, NodeKind, OpenOptions,
    WindowBlob,
};
use crate::oci::{TOC_DIGEST_ANNOTATION, ZSTD_CHUNKED_CHECKSUM_ANNOTATIONS};
use crate::remote::RangeAnswer;
use crate::remote::{Descriptor, RangeReply, Reference, RegistryClient, RemoteError};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bytes read from the end of the blob first: the footer, and the whole TOC when small.
const FIRST_TAIL: u64 = 512 << 10;
/// Speculative background fetches (rest of a file, loader dependencies) at once per layer.
const SPECULATIVE_TASKS: usize = 4;

/// Layers whose metadata is fetched and parsed at once, process-wide: each may hold up to
/// [`crate::format::Limits`] worth of TOC while it is parsed. Parsing is CPU-bound, so more
/// than a few at once would not be faster either.
fn opening_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores.clamp(2, 4))
    })
}

/// Why a layer could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// Registry access failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The layer's metadata is not a valid eStargz/zstd:chunked TOC.
    #[error("layer {digest}: {source}")]
    Format {
        /// The layer.
        digest: Digest,
        /// Cause.
        #[source]
        source: FormatError,
    },
    /// Reading chunks failed.
    #[error("layer {digest}, {file}: {source}")]
    Fetch {
        /// The layer.
        digest: Digest,
        /// The file being read.
        file: String,
        /// Cause.
        #[source]
        source: FetchError,
    },
    /// The node is not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(String),
    /// The caller has no digest to check the layer's TOC against, so nothing it reads
    /// lazily could be trusted: the layer is to be pulled whole and checked against its
    /// own digest instead.
    #[error(
        "layer {digest}: not eStargz by its descriptor (no {TOC_DIGEST_ANNOTATION} or \
         zstd:chunked manifest-checksum annotation to check a TOC against)"
    )]
    UntrustedToc {
        /// The layer.
        digest: Digest,
    },
    /// A worker thread failed.
    #[error("internal: {0}")]
    Internal(String),
}

impl LayerError {
    /// Whether the layer is to be pulled whole (and verified against its digest) instead
    /// of mounted lazily: the blob is not eStargz (no footer or TOC), or nothing the
    /// caller trusts vouches for its TOC.
    pub fn wants_whole_pull(&self) -> bool {
        matches!(
            self,
            LayerError::UntrustedToc { .. }
                | LayerError::Format {
                    source: FormatError::Footer(_) | FormatError::Truncated(_),
                    ..
                }
        )
    }
}

/// A layer read lazily from a registry.
pub struct RemoteLayer {
    index: Index,
    toc_digest: Digest,
    fetcher: Arc<Fetcher>,
    metadata_requests: u64,
    /// Bytes read from the network for footer and TOC.
    metadata_bytes: u64,
    /// Of the metadata requests, those answered with the whole blob.
    metadata_whole_answers: u64,
    /// Every chunk in blob order, for read-ahead (empty when it is off): (blob offset, node,
    /// chunk index).
    blob_order: Vec<(u64, NodeId, u32)>,
    readahead: u64,
    merge_gap: u64,
    /// Bounds background fetches made on a guess (rest of a file, loader dependencies).
    speculative: Arc<tokio::sync::Semaphore>,
    /// Binaries whose loader dependencies were already looked at.
    elf_seen: Mutex<std::collections::HashSet<NodeId>>,
    /// Per file, the window of the last continuation past a miss.
    streams: continuation::Streams,
    /// Per directory, how many misses there led to a guess at its files (`u32::MAX`: done).
    dirs_seen: Mutex<std::collections::HashMap<NodeId, u32>>,
    /// When the layer was opened.
    opened: std::time::Instant,
    prefetch: Mutex<PrefetchState>,
    /// The learned prefetch profile: recording and replay.
    profile: profile_replay::ProfileState,
}

/// Where a layer's prefetch stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum PrefetchState {
    /// Not started.
    Idle,
    /// Fetching the chunks of a prefetch profile, in recorded order.
    Profile {
        /// Chunks the profile names.
        chunks: usize,
    },
    /// Fetching the files before the prefetch landmark.
    Landmark,
    /// Fetching the rest of the layer in the background.
    Background {
        /// Compressed bytes of the layer's chunks done so far.
        done: u64,
        /// Compressed bytes of all chunks.
        total: u64,
    },
    /// Everything wanted is cached.
    Done,
    /// Stopped on an error (reads still work on demand).
    Failed {
        /// Why.
        error: String,
    },
}

impl RemoteLayer {
    /// Opens the layer `desc` of repository `reference`: fetches the tail, then (if the TOC
    /// is larger) the rest of the metadata, and builds the index.
    pub async fn open(
        client: Arc<RegistryClient>,
        reference: &Reference,
        desc: &Descriptor,
        cache: Arc<ChunkCache>,
        sessions: Vec<String>,
        fetch: FetchOptions,
    ) -> Result<Arc<Self>, LayerError> {
        Self::open_with_tail(client, reference, desc, cache, sessions, fetch, None).await
    }

    /// Like [`Self::open`] for a layer whose size is not known (`desc.size` is ignored): the
    /// tail is asked for as a suffix range, whose answer gives the size too; a registry that
    /// does not answer it plainly is asked for the size (HEAD) first.
    pub async fn open_unsized(
        client: Arc<RegistryClient>,
        reference: &Reference,
        desc: &Descriptor,
        cache: Arc<ChunkCache>,
        sessions: Vec<String>,
        fetch: FetchOptions,
    ) -> Result<Arc<Self>, LayerError> {
        let digest = desc.digest()?;
        let mut desc = desc.clone();
        let tail = client
            .blob_tail(reference, &digest, FIRST_TAIL, &sessions)
            .await?;
        desc.size = match &tail {
            Some(t) => t.total,
            None => client
                .blob_size(reference, &digest, &sessions)
                .await?
                .ok_or_else(|| LayerError::Internal(format!("blob {digest} not in {reference}")))?,
        };
        Self::open_with_tail(client, reference, &desc, cache, sessions, fetch, tail).await
    }

    async fn open_with_tail(
        client: Arc<RegistryClient>,
        reference: &Reference,
        desc: &Descriptor,
        cache: Arc<ChunkCache>,
        sessions: Vec<String>,
        fetch: FetchOptions,
        tail: Option<RangeReply>,
    ) -> Result<Arc<Self>, LayerError> {
        let digest = desc.digest()?;
        let blob = RemoteBlob {
            client,
            reference: reference.clone(),
            digest,
            size: desc.size,
            sessions: sessions.into(),
        };
        let fmt_err = |source| LayerError::Format { digest, source };
        let annotations: BTreeMap<String, String> = desc
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut opts = OpenOptions {
            annotations,
            ..OpenOptions::default()
        };
        if let Some(t) = opts.annotations.get(TOC_DIGEST_ANNOTATION) {
            opts.toc_digest = Some(t.parse().map_err(|e| {
                fmt_err(FormatError::Toc(format!(
                    "{TOC_DIGEST_ANNOTATION} annotation: {e}"
                )))
            })?);
        }
        // A self-consistent blob proves nothing: the TOC must match a digest from the
        // manifest (or the snapshot label that carries it), checked in `LayerReader::open`.
        let checksummed = ZSTD_CHUNKED_CHECKSUM_ANNOTATIONS
            .iter()
            .any(|k| opts.annotations.contains_key(*k));
        let has_toc_digest = opts.toc_digest.is_some();
        if !has_toc_digest && !checksummed {
            return Err(LayerError::UntrustedToc { digest });
        }
        let size = desc.size;
        if size == 0 {
            return Err(fmt_err(FormatError::Truncated("empty layer blob".into())));
        }
        let tail_len = size.min(FIRST_TAIL);
        let tail = match tail {
            Some(t) if t.data.len() as u64 == tail_len => t,
            _ => blob.range(size - tail_len, tail_len).await?,
        };
        let mut wire = tail.wire_bytes;
        let mut whole = u64::from(tail.answer == RangeAnswer::Whole);
        let mut data = tail.data.to_vec();
        let mut requests = 1;
        let start = metadata_start(&data, size, &opts).map_err(fmt_err)?;
        // Fetching a large TOC and parsing it is where a layer costs memory; a few at a time
        // keep the total bounded by that many layers' limits, however many are opened.
        let _opening = opening_permits()
            .acquire()
            .await
            .map_err(|e| LayerError::Internal(e.to_string()))?;
        if start < size - tail_len {
            let head = blob.range(start, size - tail_len - start).await?;
            requests += 1;
            wire += head.wire_bytes;
            whole += u64::from(head.answer == RangeAnswer::Whole);
            let mut all = head.data.to_vec();
            all.extend_from_slice(&data);
            data = all;
        }
        let window_start = size - data.len() as u64;
        let metadata_bytes = wire;
        let window = WindowBlob::new(size, window_start, data).map_err(fmt_err)?;
        let reader = tokio::task::spawn_blocking(move || LayerReader::open(window, &opts))
            .await
            .map_err(|e| LayerError::Internal(e.to_string()))?
            .map_err(fmt_err)?;
        // The zstd:chunked checksum is checked only where the TOC is a zstd frame.
        if !has_toc_digest && !matches!(reader.footer(), Footer::Zstd { .. }) {
            return Err(LayerError::UntrustedToc { digest });
        }
        let (mut index, toc_digest) = reader.into_index();
        // A mounted layer works from inodes; the names in TOC order (a second copy of every
        // path) are for extraction and listing, which read the blob themselves.
        index.entries = Vec::new();
        let compression = index.compression;
        let blob_order = readahead::blob_order(&index, fetch.readahead);
        Ok(Arc::new(RemoteLayer {
            index,
            toc_digest,
            fetcher: Arc::new(Fetcher::new(blob, compression, cache, fetch)),
            metadata_requests: requests,
            metadata_bytes,
            metadata_whole_answers: whole,
            blob_order,
            readahead: fetch.readahead,
            merge_gap: fetch.merge_gap,
            elf_seen: Mutex::new(Default::default()),
            dirs_seen: Mutex::new(Default::default()),
            streams: Default::default(),
            speculative: Arc::new(tokio::sync::Semaphore::new(SPECULATIVE_TASKS)),
            opened: std::time::Instant::now(),
            prefetch: Mutex::new(PrefetchState::Idle),
            profile: Default::default(),
        }))
    }

    /// The index (inodes; its TOC-order `entries` are not kept).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Digest of the TOC JSON.
    pub fn toc_digest(&self) -> Digest {
        self.toc_digest
    }

    /// The blob's digest.
    pub fn digest(&self) -> Digest {
        self.fetcher.blob().digest
    }

    /// Adds sessions whose credentials the layer's reads may ask (after those it has);
    /// returns how many were new.
    pub fn add_sessions(&self, ids: &[String]) -> usize {
        self.fetcher.blob().sessions.add(ids)
    }

    /// The sessions the layer's reads ask, in order.
    pub fn sessions(&self) -> Vec<String> {
        self.fetcher.blob().sessions.ids()
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.fetcher.blob().size
    }

    /// Counters of chunk traffic, plus the metadata requests made at open.
    pub fn counters(&self) -> CounterSnapshot {
        let mut s = self.fetcher.counters().snapshot();
        s.requests += self.metadata_requests;
        s.bytes_fetched += self.metadata_bytes;
        s.whole_blob_answers += self.metadata_whole_answers;
        s
    }

    /// Latency of this layer's chunk range requests.
    pub fn latency(&self) -> crate::fetcher::LatencySnapshot {
        self.fetcher.counters().latency.snapshot()
    }

    /// This layer's misses and requests in time.
    pub fn timeline(&self) -> crate::fetcher::TimelineSnapshot {
        self.fetcher.timeline().snapshot()
    }

    /// Whether every chunk of regular file `node` is in a cache (no I/O).
    pub fn is_cached(&self, node: NodeId) -> bool {
        let n = self.index().node(node);
        n.kind == NodeKind::Reg && n.chunks.iter().all(|c| self.fetcher.is_cached(c))
    }

    /// Reads `len` bytes of regular file `node` at `offset` (short at end of file), verified.
    pub async fn read(
        self: &Arc<Self>,
        node: NodeId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, LayerError> {
        let n = self.index().node(node);
        if n.kind != NodeKind::Reg {
            return Err(LayerError::NotAFile(self.index().path(node)));
        }
        let end = offset.saturating_add(len).min(n.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let (Some(first), Some(last)) = (n.chunk_at(offset), n.chunk_at(end - 1)) else {
            return Err(LayerError::Format {
                digest: self.digest(),
                source: FormatError::entry(
                    &self.index().path(node),
                    format!("no chunk covers {offset}..{end}"),
                ),
            });
        };
        let chunks = &n.chunks[first..=last];
        self.note_read(chunks);
        let _on_demand = activity::on_demand();
        // Cached ranges are read as they are, not as whole chunks; a file's head goes the
        // whole-chunk way once, so a binary's loader dependencies are looked at.
        let head_unseen = first == 0
            && self
                .elf_seen
                .lock()
                .map_or(true, |seen| !seen.contains(&node));
        if !head_unseen {
            if let Some(out) = self.read_cached(chunks, offset, end) {
                self.fetcher
                    .counters()
                    .bytes_served
                    .fetch_add(end - offset, Ordering::Relaxed);
                return Ok(out);
            }
        }
        let extra = self.readahead_after(chunks.last().map_or(0, |c| c.blob_end));
        if !chunks.iter().all(|c| self.fetcher.is_cached(c)) {
            self.continue_file(node, first, last);
            self.prefetch_siblings(node);
        }
        let path = self.index().path(node);
        let data = self
            .fetcher
            .chunks_with_readahead(&path, chunks, &extra)
            .await
            .map_err(|source| LayerError::Fetch {
                digest: self.digest(),
                file: path.clone(),
                source,
            })?;
        if first == 0 {
            if let Some(head) = data.first() {
                self.prefetch_loader_deps(node, head.clone());
            }
        }
        self.fetcher
            .counters()
            .bytes_served
            .fetch_add(end - offset, Ordering::Relaxed);
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (c, d) in chunks.iter().zip(&data) {
            let from = offset.saturating_sub(c.file_offset) as usize;
            let to = ((end - c.file_offset) as usize).min(d.len());
            if from < to {
                out.extend_from_slice(&d[from..to]);
            }
        }
        Ok(out)
    }

    /// Bytes `offset..end` of the file made of `chunks` when every piece can be read from
    /// the caches without reading a whole chunk (see [`Fetcher::cached_range`]).
    fn read_cached(
        &self,
        chunks: &[crate::format::Chunk],
        offset: u64,
        end: u64,
    ) -> Option<Vec<u8>> {
        let mut parts = Vec::with_capacity(chunks.len());
        for c in chunks {
            let from = offset.saturating_sub(c.file_offset);
            let to = (end - c.file_offset).min(c.size);
            if from < to {
                parts.push(self.fetcher.cached_range(c, from as usize..to as usize)?);
            }
        }
        if parts.len() == 1 {
            return parts.pop().map(Vec::from);
        }
        Some(parts.concat())
    }

    /// Resolves `path` inside the layer, following symlinks (absolute ones from the layer
    /// root) in every component, at most 32 of them; `None` if it leaves the layer's names.
    pub fn resolve(&self, path: &str) -> Option<NodeId> {
        resolve::resolve(self.index(), path)
    }

    /// Chunks that follow `end` in the blob, contiguous within the merge gap, up to the
    /// read-ahead budget of compressed bytes.
    fn readahead_after(&self, end: u64) -> Vec<crate::format::Chunk> {
        readahead::after(
            self.index(),
            &self.blob_order,
            end,
            self.readahead,
            self.merge_gap,
        )
    }

    /// Reads a whole regular file by path.
    pub async fn read_path(self: &Arc<Self>, path: &str) -> Result<Vec<u8>, LayerError> {
        let id = self
            .index()
            .lookup(path)
            .ok_or_else(|| LayerError::NotAFile(path.to_string()))?;
        let size = self.index().node(id).size;
        self.read(id, 0, size).await
    }
}

/// How the background fetch behaves.
#[derive(Debug, Clone, Copy)]
pub struct BackgroundOptions {
    /// Compressed bytes per second at most.
    pub rate: u64,
    /// Compressed bytes per batch (small, so an on-demand read never queues long behind one).
    pub batch: u64,
    /// How long the layer must have had no on-demand read before a batch starts (a starting
    /// workload reads in bursts; the link is its own until it pauses).
    pub idle: Duration,
}

impl Default for BackgroundOptions {
    fn default() -> Self {
        BackgroundOptions {
            rate: 64 << 20,
            batch: 1 << 20,
            idle: Duration::from_millis(500),
        }
    }
}

impl RemoteLayer {
    /// Where prefetch stands.
    pub fn prefetch_state(&self) -> PrefetchState {
        self.prefetch
            .lock()
            .map(|s| s.clone())
            .unwrap_or(PrefetchState::Idle)
    }

    fn set_state(&self, s: PrefetchState) {
        if let Ok(mut g) = self.prefetch.lock() {
            *g = s;
        }
    }

    /// Fetches the files listed before the prefetch landmark (merged into few requests).
    /// Returns the number of chunks made ready.
    pub async fn prefetch_landmark(&self) -> Result<usize, LayerError> {
        self.set_state(PrefetchState::Landmark);
        let index = self.index();
        let mut chunks: Vec<crate::format::Chunk> = index
            .prefetch
            .iter()
            .flat_map(|&id| index.node(id).chunks.iter().cloned())
            .collect();
        chunks.sort_by_key(|c| (c.blob_offset, c.inner_offset));
        let n = chunks.len();
        for batch in chunks.chunks(64) {
            self.fetcher
                .fetch_ahead("(prefetch landmark)", batch)
                .await
                .map_err(|source| LayerError::Fetch {
                    digest: self.digest(),
                    file: "(prefetch)".into(),
                    source,
                })?;
        }
        Ok(n)
    }

    /// Fetches every chunk of the layer in blob order, `opts.batch` compressed bytes at a time,
    /// at most `opts.rate` bytes per second, pausing while on-demand reads are in flight.
    pub async fn background_fetch(&self, opts: BackgroundOptions) -> Result<(), LayerError> {
        let index = self.index();
        // (node, chunk number): the paths and chunk records stay in the index.
        let mut chunks: Vec<(NodeId, u32)> = index
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.kind == NodeKind::Reg)
            .flat_map(|(id, n)| (0..n.chunks.len() as u32).map(move |i| (id as NodeId, i)))
            .collect();
        let chunk = |&(id, i): &(NodeId, u32)| &index.node(id).chunks[i as usize];
        chunks.sort_by_key(|e| (chunk(e).blob_offset, chunk(e).inner_offset));
        chunks.dedup_by_key(|e| (chunk(e).blob_offset, chunk(e).inner_offset));
        chunks.shrink_to_fit();
        let total: u64 = chunks
            .iter()
            .map(|e| chunk(e).blob_end - chunk(e).blob_offset)
            .sum();
        let mut done = 0u64;
        let mut i = 0;
        self.set_state(PrefetchState::Background { done, total });
        while i < chunks.len() {
            loop {
                // Any layer's on-demand reads hold it back: they share the link.
                if activity::quiet_for().is_some_and(|q| q >= opts.idle) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let start = i;
            let mut bytes = 0;
            // A server that ignores Range streams from the blob's start each time: the rest
            // in one request, not one per batch.
            let batch_bytes = if self.fetcher.honours_ranges() {
                opts.batch
            } else {
                u64::MAX
            };
            while i < chunks.len() && (bytes < batch_bytes || i == start) {
                bytes += chunk(&chunks[i]).blob_end - chunk(&chunks[i]).blob_offset;
                i += 1;
            }
            let batch: Vec<crate::format::Chunk> =
                chunks[start..i].iter().map(|e| chunk(e).clone()).collect();
            let file = &index.path(chunks[start].0);
            let t = std::time::Instant::now();
            self.fetcher
                .fetch_ahead(file, &batch)
                .await
                .map_err(|source| LayerError::Fetch {
                    digest: self.digest(),
                    file: file.clone(),
                    source,
                })?;
            done += bytes;
            self.set_state(PrefetchState::Background { done, total });
            let min = Duration::from_secs_f64(bytes as f64 / opts.rate.max(1) as f64);
            if let Some(wait) = min.checked_sub(t.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        self.set_state(PrefetchState::Done);
        Ok(())
    }

    /// Landmark prefetch, then (when `background` is given) the rest of the layer; errors end
    /// the prefetch (recorded in the state) but never the mount.
    pub async fn run_prefetch(self: Arc<Self>, background: Option<BackgroundOptions>) {
        let r = async {
            self.prefetch_landmark().await?;
            match background {
                Some(b) => self.background_fetch(b).await,
                None => Ok(()),
            }
        }
        .await;
        match r {
            Ok(()) => {
                if background.is_none() {
                    self.set_state(PrefetchState::Done);
                }
            }
            Err(e) => {
                tracing::warn!(layer = %self.digest(), error = %e, "prefetch stopped");
                self.set_state(PrefetchState::Failed {
                    error: e.to_string(),
                });
            }
        }
    }
}
