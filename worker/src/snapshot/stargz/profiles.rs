//! The registry's prefetch profile of each image the snapshotter mounts layers of. containerd
//! prepares an image one layer at a time, each with the image's reference; the profile is a
//! referrer of the image manifest (resolved for the host platform by `super::open`), so it
//! is looked up once per manifest for the daemon's life, concurrently with the first
//! layer's open, and every layer of that image shares the answer. Bounded: at most
//! [`MAX_IMAGES`] manifests are remembered (all are forgotten when a new one would exceed
//! it). A failure is a warning and means "no profile" — never a failed Prepare.

use stargaze_fs::profile::{lookup, Profile};
use stargaze_fs::remote::{Reference, RegistryClient};
use stargaze_fs::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;

/// Most image references remembered.
pub const MAX_IMAGES: usize = 256;

type Cell = Arc<OnceCell<Option<Arc<Profile>>>>;

/// Registry profiles by image manifest.
#[derive(Default)]
pub struct ImageProfiles {
    cells: Mutex<HashMap<String, Cell>>,
}

impl ImageProfiles {
    /// The registry's profile of `manifest` (of the image `reference` names), looked up on
    /// the first call.
    pub async fn get(
        &self,
        client: &RegistryClient,
        reference: &Reference,
        manifest: &Digest,
        sessions: &[String],
    ) -> Option<Arc<Profile>> {
        let key = manifest.to_string();
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            if cells.len() >= MAX_IMAGES && !cells.contains_key(&key) {
                cells.clear();
            }
            cells.entry(key).or_default().clone()
        };
        cell.get_or_init(|| async {
            match lookup(client, reference, manifest, sessions).await {
                Ok(p) => p.map(Arc::new),
                Err(e) => {
                    let e: stargaze_fs::profile::ProfileError = e;
                    tracing::warn!(image = %reference, error = %e, "no prefetch profile from the registry");
                    None
                }
            }
        })
        .await
        .clone()
    }
}
