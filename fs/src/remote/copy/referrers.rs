//! `copy --referrers`: after an image, the manifests that name it as `subject` (signatures,
//! SBOMs, lazy-loading indexes) travel too, with their blobs, and then their own referrers
//! down to a depth bound (a signature of an SBOM is depth 2). Sources: a registry's
//! referrers API (or its fallback tag), or the manifests an OCI layout's `index.json` lists.
//! Referrers are written untagged: to a registry by digest (which keeps its referrers
//! index), to a layout as untagged `index.json` entries. A destination registry without
//! the referrers API (no `OCI-Subject` in its answer) also gets the subject's fallback tag
//! index `sha256-<hex>` updated.

use super::{copy_blobs, location_name, read_child, write_manifest, Ctx, ImageLocation};
use crate::digest::Digest;
use crate::image::OciLayout;
use crate::oci::referrer_of;
use crate::remote::error::RemoteError;
use crate::remote::manifest::Descriptor;
use std::collections::{HashMap, HashSet};

/// Most referrers one copy takes, over all depths.
const MAX_TOTAL: usize = 10_000;

/// Copies the referrers of `subjects` (already at the destination), `depth` levels deep.
pub(super) async fn copy_referrers(
    cx: &mut Ctx<'_>,
    src: &ImageLocation,
    dst: &ImageLocation,
    subjects: Vec<Digest>,
    depth: usize,
) -> Result<(), RemoteError> {
    let mut layout_index: Option<HashMap<Digest, Vec<Descriptor>>> = None;
    let mut seen: HashSet<Digest> = subjects.iter().copied().collect();
    let mut level = subjects;
    for _ in 0..depth {
        let mut next = Vec::new();
        for subject in &level {
            let found = match src {
                ImageLocation::Registry(r) => cx
                    .client
                    .referrers(r, subject, None)
                    .await?
                    .into_iter()
                    .map(|r| r.descriptor)
                    .collect(),
                ImageLocation::Layout(r) => {
                    if layout_index.is_none() {
                        layout_index = Some(layout_referrers(r.dir.clone()).await?);
                    }
                    layout_index
                        .as_ref()
                        .and_then(|m| m.get(subject).cloned())
                        .unwrap_or_default()
                }
            };
            for desc in found {
                let d = desc.digest()?;
                if !seen.insert(d) {
                    continue;
                }
                if seen.len() > MAX_TOTAL {
                    return Err(RemoteError::protocol(
                        location_name(src),
                        format!("more than {MAX_TOTAL} referrers"),
                    ));
                }
                copy_one(cx, src, dst, &desc).await?;
                tracing::info!(subject = %subject, referrer = %d, "referrer copied");
                next.push(d);
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(())
}

/// One referrer with its blobs (an index referrer with its children).
async fn copy_one(
    cx: &mut Ctx<'_>,
    src: &ImageLocation,
    dst: &ImageLocation,
    desc: &Descriptor,
) -> Result<(), RemoteError> {
    let m = read_child(cx, src, desc).await?;
    if m.is_index() {
        for child in &m.manifests {
            let c = read_child(cx, src, child).await?;
            if c.is_index() {
                return Err(RemoteError::protocol(location_name(src), "nested index"));
            }
            copy_blobs(cx, src, dst, &c).await?;
            write_manifest(cx, dst, &c, None).await?;
        }
    } else {
        copy_blobs(cx, src, dst, &m).await?;
    }
    match dst {
        ImageLocation::Registry(r) => {
            cx.client.push_referrer(r, &m.media_type, &m.data).await?;
        }
        ImageLocation::Layout(_) => write_manifest(cx, dst, &m, None).await?,
    }
    cx.report.referrers += 1;
    Ok(())
}

/// Subject → referrers among the manifests a layout lists.
async fn layout_referrers(
    dir: std::path::PathBuf,
) -> Result<HashMap<Digest, Vec<Descriptor>>, RemoteError> {
    super::blocking(move || {
        let layout = OciLayout::open(&dir).map_err(super::layout_err)?;
        let mut map: HashMap<Digest, Vec<Descriptor>> = HashMap::new();
        for (media_type, data) in layout.listed_manifests() {
            let Some(r) = referrer_of(&data, &media_type) else {
                continue;
            };
            let desc: Descriptor = serde_json::from_value(r.descriptor)
                .map_err(|e| RemoteError::Config(format!("referrer in {}: {e}", dir.display())))?;
            map.entry(r.subject).or_default().push(desc);
        }
        Ok(map)
    })
    .await
}
