//! The `stargz` snapshotter: overlayfs snapshots, plus containerd's remote-snapshot flow. A
//! Prepare carrying `containerd.io/snapshot.ref` and a layer's reference and digest (see
//! [`labels`]) opens that layer from its registry (footer and TOC only), mounts it lazily
//! through FUSE as the committed target snapshot, and answers "already exists" — containerd
//! then skips downloading the layer. A layer that is not eStargz, or whose lazy mount fails,
//! is not hidden: the reason is logged at warn level with the layer digest, counted, and the
//! Prepare proceeds as a normal one so containerd pulls and unpacks that layer.
//!
//! Remote snapshots are remounted when the snapshotter opens (restart), and again on demand
//! before a mount that stacks them.
//!
//! Session IDs (`containerd.io/snapshot/remote/stargz.session.N[.call]`) are never stored:
//! they name the clients whose credentials a layer's lazy reads may ask. Those of the
//! Prepare that mounts a layer are its first; an Update of an existing remote snapshot with
//! session labels (BuildKit's way, for a later build on the same layer) adds its sessions
//! after them. The IDs are also kept in memory per snapshot, for a remount.

pub mod holder;
pub mod labels;
pub mod lazy;
pub mod open;
pub mod profiles;

use self::labels::{RemoteLayerRef, REMOTE, TOC_DIGEST};
use self::lazy::{LazyOptions, LazyOverlay};
use self::open::Opener;
use super::{
    Driver, Info, Labels, LocalSnapshotter, Mount, Result, SnapshotError, Snapshotter, Usage,
};
use stargaze_fs::cache::ChunkCache;
use stargaze_fs::fetcher::FetchOptions;
use stargaze_fs::layer::{LayerError, RemoteLayer};
use stargaze_fs::remote::RegistryClient;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Sessions remembered per remote snapshot.
const MAX_SESSIONS: usize = 32;

/// Hands memory freed by a layer open (the TOC's JSON tree and its parse) back to the
/// system: the daemon lives long and the peak would otherwise stay as RSS.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Counters for metrics and logs.
#[derive(Debug, Default)]
pub struct StargzCounters {
    /// Layers mounted lazily.
    pub lazy_mounts: AtomicU64,
    /// Remote prepares that fell back to a normal pull.
    pub fallbacks: AtomicU64,
    /// Remote snapshots remounted after a restart or a lost mount.
    pub remounts: AtomicU64,
}

/// Everything the stargz snapshotter reads layers with.
pub struct RemoteSource {
    /// Registry client (hosts, mirrors, credentials).
    pub client: Arc<RegistryClient>,
    /// Chunk caches shared by all layers.
    pub cache: Arc<ChunkCache>,
    /// Request merging.
    pub fetch: FetchOptions,
    /// FUSE and prefetch.
    pub lazy: LazyOptions,
}

/// The stargz snapshotter.
pub struct Stargz {
    local: LocalSnapshotter<LazyOverlay>,
    opener: Arc<Opener>,
    rt: tokio::runtime::Handle,
    counters: Arc<StargzCounters>,
    /// Session IDs each remote snapshot's reads ask (for a remount), by snapshot name.
    sessions: Mutex<HashMap<String, Vec<String>>>,
}

fn unavailable(what: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Unavailable(what.to_string())
}

impl Stargz {
    /// Opens the snapshotter at `root`, serving lazy reads on `rt`, and remounts the remote
    /// snapshots it has (failures are logged; they are retried when used).
    pub fn open(root: &Path, source: RemoteSource, rt: tokio::runtime::Handle) -> Result<Self> {
        Self::open_with(root, source, rt, None)
    }

    /// Like [`Self::open`], with FUSE connections kept by `holder` so running containers
    /// survive a daemon restart (remote snapshots whose connection the holder kept are
    /// resumed, not remounted).
    pub fn open_with(
        root: &Path,
        source: RemoteSource,
        rt: tokio::runtime::Handle,
        holder: Option<holder::Holder>,
    ) -> Result<Self> {
        let driver = match holder {
            Some(h) => LazyOverlay::new().with_holder(h),
            None => LazyOverlay::new(),
        };
        let s = Stargz {
            local: LocalSnapshotter::open(root, driver)?,
            opener: Opener::new(source),
            rt,
            counters: Arc::new(StargzCounters::default()),
            sessions: Mutex::new(HashMap::new()),
        };
        for (name, _, dir) in s.local.with_label(REMOTE)? {
            if let Err(e) = s.remount(&name, &dir) {
                tracing::warn!(snapshot = %name, error = %e, "remote snapshot not remounted at start; will retry when used");
            }
        }
        // A crash mid-prepare can leave a directory (and a dead FUSE mount) no record owns.
        if let Err(e) = s.local.cleanup() {
            tracing::warn!(error = %e, "cleanup at start failed");
        }
        Ok(s)
    }

    /// Counters.
    pub fn counters(&self) -> Arc<StargzCounters> {
        self.counters.clone()
    }

    /// The lazy layers mounted now.
    pub fn layers(&self) -> Vec<Arc<RemoteLayer>> {
        self.local
            .driver()
            .layers()
            .into_iter()
            .map(|(_, l)| l)
            .collect()
    }

    /// Runs for as long as the daemon: after every quarter second in which the lazy layers
    /// served or fetched anything, freed memory goes back to the system. A burst of reads
    /// frees HTTP frames, inflate state and reply buffers between longer-lived allocations;
    /// glibc keeps such holes mapped until it is asked to trim. An idle daemon trims nothing;
    /// a trim that takes a millisecond or more is logged at debug level.
    pub async fn release_memory_after_activity(self: Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = 0u64;
        loop {
            tick.tick().await;
            let now: u64 = self
                .layers()
                .iter()
                .map(|l| {
                    let c = l.counters();
                    c.bytes_served.wrapping_add(c.bytes_fetched)
                })
                .fold(0, u64::wrapping_add);
            if now != seen {
                seen = now;
                let began = std::time::Instant::now();
                release_freed_memory();
                let us = began.elapsed().as_micros() as u64;
                if us >= 1000 {
                    tracing::debug!(us, "trimming freed memory took over a millisecond");
                }
            }
        }
    }

    /// Unmounts every lazy layer (shutdown); snapshots stay in the store.
    pub fn unmount_all(&self) {
        self.local.driver().unmount_all();
    }

    /// Daemon shutdown: unmounts the lazy layers nothing stacks on; those running
    /// containers use stay mounted with the holder (for the next daemon). Returns how many
    /// stayed.
    pub fn shutdown(&self) -> usize {
        self.local.driver().shutdown()
    }

    /// Opens `layer` from its registry (`open::Opener::open`).
    fn open_layer(
        &self,
        layer: &RemoteLayerRef,
    ) -> std::result::Result<Arc<RemoteLayer>, Box<LayerError>> {
        self.rt.block_on(self.opener.open(layer)).map_err(Box::new)
    }

    /// Mounts remote snapshot `name` (stored at `dir`) again.
    fn remount(&self, name: &str, dir: &Path) -> Result<()> {
        let info = self.local.stat(name)?;
        let mut layer = labels::layer(&info.labels)?.ok_or_else(|| {
            SnapshotError::Store(format!("remote snapshot {name:?} lost its layer labels"))
        })?;
        layer.sessions = self.known_sessions(name);
        let opened = self
            .open_layer(&layer)
            .map_err(|e| unavailable(format!("layer {}: {e}", layer.digest)))?;
        if self
            .local
            .driver()
            .resume(dir, opened.clone(), &self.rt, &self.opener.source.lazy)?
        {
            self.counters.remounts.fetch_add(1, Ordering::Relaxed);
            tracing::info!(snapshot = %name, layer = %layer.digest, "remote snapshot resumed on its kept FUSE connection");
            return Ok(());
        }
        self.local.driver().release(dir);
        self.local
            .driver()
            .mount(dir, opened, &self.rt, &self.opener.source.lazy)?;
        self.counters.remounts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %name, layer = %layer.digest, "remote snapshot remounted");
        Ok(())
    }

    fn sessions_table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session IDs remote snapshot `name`'s reads ask, as far as this process knows.
    fn known_sessions(&self, name: &str) -> Vec<String> {
        self.sessions_table().get(name).cloned().unwrap_or_default()
    }

    fn remember_sessions(&self, name: &str, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let mut t = self.sessions_table();
        let list = t.entry(name.to_string()).or_default();
        for id in ids {
            if !list.contains(id) {
                list.push(id.clone());
            }
        }
        let over = list.len().saturating_sub(MAX_SESSIONS);
        list.drain(..over);
    }

    /// Adds `ids` to the sessions the reads of remote snapshot `name` ask (its mounted
    /// layer's, and those a remount starts with). Not a remote snapshot: nothing to do.
    fn add_sessions(&self, name: &str, ids: &[String]) -> Result<()> {
        let info = self.local.stat(name)?;
        if !info.labels.contains_key(REMOTE) || ids.is_empty() {
            return Ok(());
        }
        self.remember_sessions(name, ids);
        if let Some(rec) = self.local.store().get(name)? {
            if let Some(layer) = self.local.driver().layer_at(&self.local.dir(rec.id)) {
                let added = layer.add_sessions(ids);
                tracing::debug!(snapshot = %name, added, sessions = layer.sessions().len(), "sessions added to a lazy layer");
            }
        }
        Ok(())
    }

    /// Makes sure every remote snapshot in `parent`'s chain is mounted (after a restart or
    /// a lost FUSE connection); a layer that cannot be reached is "unavailable".
    fn ensure_chain(&self, parent: &str) -> Result<()> {
        let mut next = parent.to_string();
        let mut hops = 0;
        // The mount table is read once per call, when the chain has a remote layer at all.
        let mut mounts = None;
        while !next.is_empty() && hops < 10_000 {
            let info = self.local.stat(&next)?;
            if info.labels.contains_key(REMOTE) {
                let rec = self
                    .local
                    .store()
                    .get(&next)?
                    .ok_or_else(|| SnapshotError::NotFound(format!("snapshot {next:?}")))?;
                let dir = self.local.dir(rec.id);
                let mounts = mounts.get_or_insert_with(stargaze_fs::sys::mount_points);
                if !self.local.driver().is_mounted_among(&dir, mounts) {
                    self.remount(&next, &dir)?;
                }
            }
            next = info.parent;
            hops += 1;
        }
        Ok(())
    }

    /// The remote half of a Prepare: mount `layer` lazily as committed `target`.
    fn prepare_remote(
        &self,
        target: &str,
        parent: &str,
        layer: &RemoteLayerRef,
        labels: &Labels,
    ) -> Result<()> {
        if !parent.is_empty() {
            self.ensure_chain(parent)?;
        }
        // The image's other layers start opening now; their Prepares follow this one.
        let present = self.layers().iter().map(|l| l.digest()).collect();
        self.opener.open_ahead(&self.rt, layer, labels, &present);
        let opened = self
            .rt
            .block_on(self.opener.take_or_open(layer))
            .map_err(Box::new)
            .map_err(|e| {
                if e.wants_whole_pull() {
                    SnapshotError::FailedPrecondition(format!("not mounted lazily: {e}"))
                } else {
                    unavailable(e)
                }
            })?;
        let mut stored = labels::stored(labels);
        if let Some(t) = &layer.toc_digest {
            stored.insert(TOC_DIGEST.into(), t.clone());
        }
        let driver = self.local.driver();
        self.local
            .create_committed(target, parent, stored, &|dir, _| {
                driver.mount(dir, opened.clone(), &self.rt, &self.opener.source.lazy)
            })?;
        self.remember_sessions(target, &layer.sessions);
        self.counters.lazy_mounts.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %target, layer = %layer.digest, size = opened.size(), "layer mounted lazily");
        release_freed_memory();
        Ok(())
    }
}

impl Snapshotter for Stargz {
    fn name(&self) -> &str {
        crate::snapshot::Backend::Stargz.as_str()
    }

    fn stat(&self, key: &str) -> Result<Info> {
        self.local.stat(key)
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let session_keys: Vec<String> = info
            .labels
            .keys()
            .filter(|k| labels::is_session_label(k))
            .cloned()
            .collect();
        let asked = |k: &str| {
            fieldpaths.is_empty()
                || fieldpaths
                    .iter()
                    .any(|f| f == "labels" || f.strip_prefix("labels.") == Some(k))
        };
        if session_keys.is_empty()
            && !fieldpaths.iter().any(|f| {
                f.strip_prefix("labels.")
                    .is_some_and(labels::is_session_label)
            })
        {
            return self.local.update(info, fieldpaths);
        }
        // Session labels say who reads the layer; they are taken, never stored.
        let given: std::collections::HashMap<String, String> = session_keys
            .iter()
            .filter(|k| asked(k))
            .filter_map(|k| info.labels.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        let ids = stargaze_fs::remote::auth::session_ids_from_labels(&given);
        self.add_sessions(&info.name, &ids)?;
        let rest: Vec<String> = fieldpaths
            .iter()
            .filter(|f| {
                !f.strip_prefix("labels.")
                    .is_some_and(labels::is_session_label)
            })
            .cloned()
            .collect();
        if !fieldpaths.is_empty() && rest.is_empty() {
            return self.local.stat(&info.name);
        }
        let mut info = info;
        info.labels.retain(|k, _| !labels::is_session_label(k));
        self.local.update(info, &rest)
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        self.local.usage(key)
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let info = self.local.stat(key)?;
        self.ensure_chain(&info.parent)?;
        self.local.mounts(key)
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let target = labels.get(labels::TARGET).cloned();
        let layer = match &target {
            Some(_) => labels::layer(&labels)?,
            None => None,
        };
        if let (Some(target), Some(layer)) = (target, layer) {
            super::validate_key(&target)?;
            if self.local.stat(&target).is_ok() {
                return Err(SnapshotError::AlreadyExists(format!("snapshot {target:?}")));
            }
            match self.prepare_remote(&target, parent, &layer, &labels) {
                Ok(()) => {
                    return Err(SnapshotError::AlreadyExists(format!(
                        "snapshot {target:?} (mounted lazily)"
                    )))
                }
                Err(e @ SnapshotError::AlreadyExists(_)) => return Err(e),
                Err(e) => {
                    self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(layer = %layer.digest, reference = %layer.reference, reason = %e, "layer not mounted lazily; containerd pulls and unpacks it");
                }
            }
        } else if !parent.is_empty() {
            self.ensure_chain(parent)?;
        }
        self.local.prepare(key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        if !parent.is_empty() {
            self.ensure_chain(parent)?;
        }
        self.local.view(key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.local.commit(name, key, labels)
    }

    fn remove(&self, key: &str) -> Result<()> {
        self.local.remove(key)
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        self.local.walk(filters, f)
    }

    fn cleanup(&self) -> Result<()> {
        self.local.cleanup()
    }
}
