//! Opening a remote layer (size, footer and TOC from its registry; the image's registry
//! profile alongside), and opening the image's other layers ahead of their Prepares.
//!
//! containerd prepares an image's layers one after another, bottom first, and each Prepare
//! waits for its layer's size, footer and TOC: two round trips or more per layer, in series.
//! The pull's label handler tells every layer's Prepare which layers of the image sit at and
//! above it (`containerd.io/snapshot/remote/stargz.layers`, comma-separated digests; the
//! reference snapshotter resolves those "neighbouring" layers in the background too). So the
//! first Prepare resolves the image's manifest (host platform; the registry profile lookup
//! needs it too) while it opens its own layer, and then opens the others, [`AT_ONCE`] at a
//! time, with the size and TOC digest their manifest descriptors give (no HEAD). Each later
//! Prepare takes its layer from there — already open, or still arriving — instead of
//! starting from nothing, but only when the TOC digest its own labels carry is the one the
//! early open verified against, so trust is exactly that of a Prepare opening the layer
//! itself. Only speed depends on all this: a malformed label is ignored with a debug line, a
//! layer the manifest does not list is skipped, at most [`MAX_AHEAD`] layers are held, one
//! not claimed within [`UNCLAIMED`] is dropped, a layer opened for other sessions is not
//! handed to a Prepare that names different ones, and a failed early open just means the
//! Prepare opens the layer itself (and sees the error). Manifests are remembered for
//! [`UNCLAIMED`] per reference (a tag may move), at most [`MAX_IMAGES`] of them.

use super::labels::RemoteLayerRef;
use super::profiles::ImageProfiles;
use super::RemoteSource;
use crate::snapshot::Labels;
use stargaze_fs::layer::{LayerError, RemoteLayer};
use stargaze_fs::oci::TOC_DIGEST_ANNOTATION;
use stargaze_fs::remote::{Descriptor, Manifest, Platform};
use stargaze_fs::Digest;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OnceCell, Semaphore};

/// The label naming the layers of the image at and above the one being prepared.
pub const IMAGE_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
/// Most layers opened ahead and held at once.
pub const MAX_AHEAD: usize = 64;
/// Early opens running at once.
pub const AT_ONCE: usize = 3;
/// How long an early-opened layer waits for its Prepare (and a manifest is remembered).
pub const UNCLAIMED: Duration = Duration::from_secs(60);
/// Most image manifests remembered.
pub const MAX_IMAGES: usize = 256;

type ManifestCell = Arc<OnceCell<Option<Arc<Manifest>>>>;

/// What an early open gives, once done: the layer and the TOC digest it was verified
/// against (from the manifest), or `None` when it failed or was not possible (the Prepare
/// opens the layer itself).
type Outcome = Option<Option<(Arc<RemoteLayer>, Option<String>)>>;

/// Which early open a Prepare may take: same repository, layer and sessions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    repository: String,
    digest: Digest,
    sessions: Vec<String>,
}

impl Key {
    fn of(layer: &RemoteLayerRef) -> Key {
        Key {
            repository: format!(
                "{}/{}",
                layer.reference.registry, layer.reference.repository
            ),
            digest: layer.digest,
            sessions: layer.sessions.clone(),
        }
    }
}

struct Ahead {
    started: Instant,
    outcome: watch::Receiver<Outcome>,
}

/// Opens layers for the snapshotter (cheap to share).
pub struct Opener {
    /// Registry client, caches and serving options.
    pub source: Arc<RemoteSource>,
    profiles: ImageProfiles,
    manifests: Mutex<HashMap<String, (Instant, ManifestCell)>>,
    ahead: Mutex<HashMap<Key, Ahead>>,
    running: Arc<Semaphore>,
}

/// The digests `labels` list as the image's layers beside `layer` (in their order, each
/// once, at most [`MAX_AHEAD`]); nothing when the label is absent or malformed.
pub fn neighbours(labels: &Labels, layer: &Digest) -> Vec<Digest> {
    let Some(list) = labels.get(IMAGE_LAYERS) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for item in list.split(',').filter(|s| !s.is_empty()) {
        match item.parse::<Digest>() {
            Ok(d) if &d != layer && seen.insert(d) => out.push(d),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(label = IMAGE_LAYERS, error = %e, "image layer list ignored");
                return Vec::new();
            }
        }
        if out.len() >= MAX_AHEAD {
            break;
        }
    }
    out
}

impl Opener {
    /// An opener over `source`.
    pub fn new(source: RemoteSource) -> Arc<Opener> {
        Arc::new(Opener {
            source: Arc::new(source),
            profiles: ImageProfiles::default(),
            manifests: Mutex::new(HashMap::new()),
            ahead: Mutex::new(HashMap::new()),
            running: Arc::new(Semaphore::new(AT_ONCE)),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Ahead>> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The image manifest `layer`'s reference names (host platform), resolved once per
    /// reference and [`UNCLAIMED`]; `None` when it cannot be had.
    async fn manifest(&self, layer: &RemoteLayerRef) -> Option<Arc<Manifest>> {
        let key = layer.reference.to_string();
        let cell = {
            let mut cells = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
            cells.retain(|_, (t, _)| t.elapsed() < UNCLAIMED);
            if cells.len() >= MAX_IMAGES && !cells.contains_key(&key) {
                cells.clear();
            }
            cells
                .entry(key)
                .or_insert_with(|| (Instant::now(), ManifestCell::default()))
                .1
                .clone()
        };
        let client = &self.source.client;
        cell.get_or_init(|| async {
            match client
                .resolve(&layer.reference, &Platform::host(), &layer.sessions)
                .await
            {
                Ok((m, _)) => Some(Arc::new(m)),
                Err(e) => {
                    tracing::debug!(image = %layer.reference, error = %e, "image manifest not resolved");
                    None
                }
            }
        })
        .await
        .clone()
    }

    /// Opens `layer` from its registry: footer and TOC (with the size, unless known, from
    /// the same suffix range request); the image's registry profile is looked up alongside (once per image) unless
    /// the layer has a local one.
    pub async fn open(&self, layer: &RemoteLayerRef) -> Result<Arc<RemoteLayer>, LayerError> {
        self.open_sized(layer, None).await
    }

    async fn open_sized(
        &self,
        layer: &RemoteLayerRef,
        size: Option<u64>,
    ) -> Result<Arc<RemoteLayer>, LayerError> {
        let src = &self.source;
        let desc = Descriptor {
            media_type: String::new(),
            digest: layer.digest.to_string(),
            size: size.unwrap_or(0),
            annotations: layer
                .toc_digest
                .as_ref()
                .map(|t| [(TOC_DIGEST_ANNOTATION.to_string(), t.clone())].into()),
            platform: None,
            urls: None,
        };
        let (client, cache, sessions) = (
            src.client.clone(),
            src.cache.clone(),
            layer.sessions.clone(),
        );
        let open = async {
            match size {
                Some(_) => {
                    RemoteLayer::open(client, &layer.reference, &desc, cache, sessions, src.fetch)
                        .await
                }
                // No HEAD first: the tail's suffix range tells the size.
                None => {
                    RemoteLayer::open_unsized(
                        client,
                        &layer.reference,
                        &desc,
                        cache,
                        sessions,
                        src.fetch,
                    )
                    .await
                }
            }
        };
        let profile = src.lazy.profile.as_ref();
        let wanted = profile.filter(|p| p.lookup && p.store.for_layer(&layer.digest).is_empty());
        let from_registry = async {
            match wanted {
                Some(_) => {
                    let m = self.manifest(layer).await?;
                    self.profiles
                        .get(&src.client, &layer.reference, &m.digest, &layer.sessions)
                        .await
                }
                None => None,
            }
        };
        let (opened, found) = tokio::join!(open, from_registry);
        let opened = opened?;
        if let Some(p) = profile {
            opened.use_profile(Some(p.store.clone()), found.as_deref());
        }
        Ok(opened)
    }

    /// `layer`, from an early open when one was started for it, else opened now.
    pub async fn take_or_open(
        &self,
        layer: &RemoteLayerRef,
    ) -> Result<Arc<RemoteLayer>, LayerError> {
        let early = self.table().remove(&Key::of(layer));
        if let Some(mut a) = early {
            let got = a
                .outcome
                .wait_for(Option::is_some)
                .await
                .ok()
                .map(|o| o.clone());
            match got {
                Some(Some(Some((opened, toc)))) if toc == layer.toc_digest => {
                    tracing::debug!(layer = %layer.digest, "layer opened ahead of its Prepare");
                    return Ok(opened);
                }
                Some(Some(Some(_))) => {
                    tracing::debug!(layer = %layer.digest, "the layer opened ahead was verified against another TOC digest; opening it again");
                }
                _ => {}
            }
        }
        self.open(layer).await
    }

    /// Starts opening the layers `labels` list beside `layer` (same reference and
    /// sessions), skipping those in `present` and those already being opened. Their places
    /// are taken at once, so a Prepare that comes before the manifest waits for the early
    /// open rather than racing it.
    pub fn open_ahead(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        layer: &RemoteLayerRef,
        labels: &Labels,
        present: &HashSet<Digest>,
    ) {
        let mut started = Vec::new();
        {
            let mut table = self.table();
            table.retain(|_, a| a.started.elapsed() < UNCLAIMED);
            for digest in neighbours(labels, &layer.digest) {
                let next = RemoteLayerRef {
                    digest,
                    toc_digest: None,
                    ..layer.clone()
                };
                let key = Key::of(&next);
                if present.contains(&next.digest)
                    || table.len() >= MAX_AHEAD
                    || table.contains_key(&key)
                {
                    continue;
                }
                let (tx, rx) = watch::channel(None);
                table.insert(
                    key,
                    Ahead {
                        started: Instant::now(),
                        outcome: rx,
                    },
                );
                started.push((next, tx));
            }
        }
        if started.is_empty() {
            return;
        }
        let me = self.clone();
        let layer = layer.clone();
        rt.spawn(async move {
            let manifest = me.manifest(&layer).await;
            for (mut next, tx) in started {
                let desc = manifest.as_ref().and_then(|m| {
                    m.layers
                        .iter()
                        .find(|d| d.digest == next.digest.to_string())
                });
                let Some(desc) = desc else {
                    let _ = tx.send(Some(None));
                    continue;
                };
                // The TOC digest the layer's own Prepare will bring, as the manifest says.
                next.toc_digest = desc
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TOC_DIGEST_ANNOTATION))
                    .cloned();
                let size = desc.size;
                let me = me.clone();
                tokio::spawn(async move {
                    let Ok(_slot) = me.running.clone().acquire_owned().await else {
                        return;
                    };
                    let opened = match me.open_sized(&next, Some(size)).await {
                        Ok(l) => Some((l, next.toc_digest.clone())),
                        Err(e) => {
                            tracing::debug!(layer = %next.digest, error = %e, "early open failed; its Prepare opens it");
                            None
                        }
                    };
                    let _ = tx.send(Some(opened));
                    drop(_slot);
                    // Not claimed by then: the layer (and its index) goes.
                    tokio::time::sleep(UNCLAIMED).await;
                    me.table().retain(|_, a| a.started.elapsed() < UNCLAIMED);
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn labels(v: &str) -> Labels {
        [(IMAGE_LAYERS.to_string(), v.to_string())]
            .into_iter()
            .collect()
    }

    #[test]
    fn neighbours_are_the_other_listed_layers_once_each() {
        let list = format!("{},{},{},{}", d('a'), d('b'), d('a'), d('c'));
        assert_eq!(neighbours(&labels(&list), &d('a')), vec![d('b'), d('c')]);
        assert!(neighbours(&Labels::new(), &d('a')).is_empty());
    }

    #[test]
    fn a_malformed_list_is_ignored_and_a_long_one_bounded() {
        let bad = format!("{},../../etc,{}", d('a'), d('b'));
        assert!(neighbours(&labels(&bad), &d('c')).is_empty());
        let many: Vec<String> = (0..1000).map(|i| format!("sha256:{i:064x}")).collect();
        assert_eq!(
            neighbours(&labels(&many.join(",")), &d('a')).len(),
            MAX_AHEAD
        );
    }
}
