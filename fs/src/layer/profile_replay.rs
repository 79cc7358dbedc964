//! A layer's learned prefetch profile (see [`crate::profile`]): on-demand reads are recorded
//! (first touch, in order, bounded), the record is saved to the local store once the
//! workload's start is over, and a profile found for the layer (the local one first, else
//! the registry's) is replayed at mount before the landmark and background prefetch.
//!
//! When a recording is saved: after [`QUIET`] without a new chunk once reads began, or
//! [`RECORD_FOR`] after the first read, or when the layer is let go (unmount), which comes
//! first (a layer mounted long before its container starts records that start). One recording per layer and process: later reads are counted, not recorded.
//!
//! A layer started with a profile that fits it does not record (the good profile is kept;
//! remove it with `stargaze profile rm` to learn again); one whose profile does not fit is
//! warned about and records a new one, which replaces a broken local file.

use super::{BackgroundOptions, PrefetchState, RemoteLayer};
use crate::format::Chunk;
use crate::profile::{
    replay_batches, LayerProfile, Profile, ProfileStore, Recorder, FIRST_BATCH, MAX_BATCH,
};
use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Quiet time after the last newly read chunk that ends a recording.
pub const QUIET: Duration = Duration::from_secs(2);
/// Longest recording, from the first read.
pub const RECORD_FOR: Duration = Duration::from_secs(60);
/// Replay batches in flight at once.
const REPLAY_CONCURRENCY: usize = 3;

/// The profile side of a layer: the recorder, where recordings go, what to replay.
#[derive(Default)]
pub(super) struct ProfileState {
    recorder: Recorder,
    setup: OnceLock<Setup>,
}

struct Setup {
    store: Option<ProfileStore>,
    /// The chunks to replay, checked against the index, in recorded order.
    replay: Vec<Chunk>,
}

impl RemoteLayer {
    /// Notes that an on-demand read touched `chunks` (record, `chunks_read` counters).
    pub(super) fn note_read(&self, chunks: &[Chunk]) {
        let ms = self.opened.elapsed().as_millis() as u64;
        let t = self.profile.recorder.touch(chunks, ms);
        if t.chunks > 0 {
            let c = self.fetcher.counters();
            c.chunks_read.fetch_add(t.chunks, Ordering::Relaxed);
            c.chunk_bytes_read.fetch_add(t.bytes, Ordering::Relaxed);
        }
    }

    /// Sets where this layer's recording is saved (`store`; none: not saved) and picks the
    /// profile to replay: the store's for this layer and TOC, else `registry`'s part for it.
    /// A profile that does not fit the layer is ignored with a warning. Once per layer;
    /// returns where the replayed profile came from ("local", "registry"), if any.
    pub fn use_profile(
        &self,
        store: Option<ProfileStore>,
        registry: Option<&Profile>,
    ) -> Option<&'static str> {
        let (layer, toc) = (self.digest(), self.toc_digest());
        let local = store.as_ref().and_then(|s| match s.load(&layer, &toc) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(layer = %layer, error = %e, "ignoring the local profile");
                None
            }
        });
        let (from, part): (_, Option<&LayerProfile>) = match (&local, registry) {
            (Some(p), _) => ("local", Some(p)),
            (None, Some(r)) => ("registry", r.layer(&layer)),
            (None, None) => ("", None),
        };
        let mut replay = Vec::new();
        let mut used = None;
        if let Some(part) = part {
            match part.resolve(self.index(), &layer, &toc) {
                Ok(chunks) => {
                    tracing::info!(layer = %layer, from, chunks = chunks.len(), "prefetch profile found");
                    replay = chunks;
                    used = Some(from);
                    // A good profile is kept: this start does not record over it.
                    self.profile.recorder.close();
                }
                Err(e) => {
                    tracing::warn!(layer = %layer, from, error = %e, "the prefetch profile does not fit the layer; ignoring it");
                }
            }
        }
        let _ = self.profile.setup.set(Setup { store, replay });
        used
    }

    /// Everything a mounted layer runs in the background: the profile replay, then (when
    /// `prefetch`) the landmark and `background` prefetch, and alongside, saving the
    /// recording when the workload's start is over. Errors never end the mount.
    pub async fn run_mounted(
        self: Arc<Self>,
        prefetch: bool,
        background: Option<BackgroundOptions>,
    ) {
        let fetching = async {
            self.replay_profile().await;
            if prefetch {
                self.clone().run_prefetch(background).await;
            }
        };
        tokio::join!(fetching, self.watch_recording());
    }

    /// Fetches the profile's chunks in recorded order (see [`replay_batches`]); returns how
    /// many were fetched.
    async fn replay_profile(&self) -> usize {
        let Some(setup) = self.profile.setup.get() else {
            return 0;
        };
        if setup.replay.is_empty() {
            return 0;
        }
        self.set_state(PrefetchState::Profile {
            chunks: setup.replay.len(),
        });
        let batches = replay_batches(
            &setup.replay,
            |c| self.fetcher.is_cached(c),
            FIRST_BATCH,
            MAX_BATCH,
        );
        let n: usize = batches.iter().map(Vec::len).sum();
        let mut runs = futures_util::stream::iter(batches)
            .map(|b| async move { self.fetcher.fetch_ahead("(prefetch profile)", &b).await })
            .buffered(REPLAY_CONCURRENCY);
        while let Some(r) = runs.next().await {
            if let Err(e) = r {
                tracing::warn!(layer = %self.digest(), error = %e, "prefetch profile replay stopped");
                return 0;
            }
        }
        tracing::debug!(layer = %self.digest(), chunks = n, "prefetch profile replayed");
        n
    }

    /// Saves the recording when reads have been quiet for [`QUIET`] or [`RECORD_FOR`] has
    /// passed since the first, once there were any.
    async fn watch_recording(&self) {
        if self.profile.setup.get().is_none_or(|s| s.store.is_none()) {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if !self.profile.recorder.is_open() {
                return;
            }
            let (n, first, last) = self.profile.recorder.progress();
            let now = self.opened.elapsed();
            let quiet = now.saturating_sub(Duration::from_millis(last));
            let recording = now.saturating_sub(Duration::from_millis(first));
            if n > 0 && (quiet >= QUIET || recording >= RECORD_FOR) {
                self.save_recording();
                return;
            }
        }
    }

    /// Ends the recording and saves it to the store, when there is one and it holds any
    /// chunk; the file written.
    pub fn save_recording(&self) -> Option<std::path::PathBuf> {
        let store = self.profile.setup.get()?.store.as_ref()?;
        let (chunks, bytes) = self.profile.recorder.close()?;
        if chunks.is_empty() {
            return None;
        }
        let part = LayerProfile {
            layer: self.digest(),
            toc: self.toc_digest(),
            bytes,
            chunks,
        };
        match store.save(&part) {
            Ok(p) => {
                tracing::info!(layer = %part.layer, chunks = part.chunks.len(), file = %p.display(), "prefetch profile recorded");
                Some(p)
            }
            Err(e) => {
                tracing::warn!(layer = %part.layer, error = %e, "saving the prefetch profile");
                None
            }
        }
    }
}
