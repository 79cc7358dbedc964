//! The base of a stage when it is an image: `scratch`, or an image resolved from its
//! registry for the platform and its layers made snapshots (`base`), once per build for
//! every stage (and `COPY --from`) naming the same image and platform. The result is a
//! stage result like any other: config, layers (remote, as they were), top snapshot, key.

use super::base::{self, LayerOutcome};
use super::image_config::ImageConfig;
use super::instructions::InstructionError;
use super::layer::LayerBlob;
use super::request::{ImageLayer, StageResult};
use super::solve::{blocking, hex_key, Ctx};
use super::BuildError;
use stargaze_fs::oci::{DOCKER_LAYER_GZIP, OCI_LAYER_GZIP};
use stargaze_fs::remote::{Platform, Reference};
use std::sync::Arc;

impl Ctx {
    /// The base image `name` as a stage result (resolved and snapshotted once per build).
    pub(super) async fn image(
        self: &Arc<Self>,
        name: &str,
        platform: Option<&Platform>,
        line: usize,
    ) -> Result<StageResult, BuildError> {
        let platform = platform.unwrap_or(&self.req.platform).clone();
        let cell = {
            let mut m = self.images.lock().await;
            m.entry(format!("{name} {platform}")).or_default().clone()
        };
        let me = self.clone();
        let n = name.to_string();
        cell.get_or_init(
            || async move { me.load_image(&n, &platform, line).await.map_err(Arc::new) },
        )
        .await
        .clone()
        .map_err(|source| BuildError::Image {
            image: name.to_string(),
            source,
        })
    }

    async fn load_image(
        self: &Arc<Self>,
        name: &str,
        platform: &Platform,
        line: usize,
    ) -> Result<StageResult, BuildError> {
        if name == "scratch" {
            return Ok(StageResult {
                config: ImageConfig::scratch(platform),
                layers: Vec::new(),
                top: None,
                key: hex_key(&["scratch", &platform.to_string()]),
            });
        }
        let reference = Reference::parse(name).map_err(|source| {
            InstructionError::FromReference {
                name: name.to_string(),
                source,
            }
            .at(line)
        })?;
        let v = self
            .progress
            .vertex(&format!("[internal] load metadata for {reference}"));
        let img =
            match base::resolve(&self.w.client, &reference, platform, &self.req.sessions).await {
                Ok(i) => i,
                Err(e) => {
                    v.error(&e);
                    return Err(e);
                }
            };
        v.done();
        let v = self.progress.vertex(&format!("FROM {}", img.reference));
        let (w, img2) = (self.w.clone(), img.clone());
        let sessions = self.req.sessions.clone();
        let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let o2 = outcomes.clone();
        let top = blocking(move || {
            base::ensure_snapshots(
                w.snapshotter.as_ref(),
                &w.client,
                &w.rt,
                &img2,
                &sessions,
                &|i, o| {
                    if let Ok(mut v) = o2.lock() {
                        v.push((i, o));
                    }
                },
            )
        })
        .await;
        let outcomes = outcomes.lock().map(|v| v.clone()).unwrap_or_default();
        let (mut lazy, mut pulled, mut present) = (0, 0, 0);
        for (_, o) in &outcomes {
            match o {
                LayerOutcome::Lazy => lazy += 1,
                LayerOutcome::Pulled => pulled += 1,
                LayerOutcome::Present => present += 1,
            }
        }
        if let Ok(mut s) = self.stats.lock() {
            s.lazy_layers += lazy;
            s.pulled_layers += pulled;
            s.present_layers += present;
        }
        let top = match top {
            Ok(t) => t,
            Err(e) => {
                v.error(&e);
                return Err(e);
            }
        };
        v.log(&format!(
            "{} layers: {lazy} mounted lazily, {pulled} pulled, {present} present",
            img.layers.len()
        ));
        v.done();
        let layers = img
            .layers
            .iter()
            .zip(&img.diff_ids)
            .map(|(d, diff)| ImageLayer {
                blob: LayerBlob {
                    media_type: match d.media_type.as_str() {
                        // Docker's gzip layer is written as the OCI one.
                        DOCKER_LAYER_GZIP => OCI_LAYER_GZIP.to_string(),
                        other => other.to_string(),
                    },
                    digest: d.digest.clone(),
                    size: d.size,
                    diff_id: diff.clone(),
                    annotations: d
                        .annotations
                        .clone()
                        .map(|a| a.into_iter().collect())
                        .unwrap_or_default(),
                },
                remote: Some(img.reference.clone()),
            })
            .collect();
        Ok(StageResult {
            config: img.config.clone(),
            layers,
            top,
            key: hex_key(&["image", &img.manifest.to_string(), &platform.to_string()]),
        })
    }
}
