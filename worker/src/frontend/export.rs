//! Export of a built image: its config (the stage's, with `created`), an OCI manifest over
//! the base layers (as they were) and the steps' layers, written to an OCI layout or pushed
//! to a registry. Layers built here come from the worker's content store. Base layers the
//! destination lacks are mounted across repositories when they live on the same registry,
//! and otherwise fetched (verified) and uploaded — only then does a lazy base get pulled.

use super::cache::now;
use super::image_config::rfc3339;
use super::layer::blob_digest;
use super::layer::BadLayerDigest;
use super::progress::Progress;
use super::request::StageResult;
use super::BuildError;
use stargaze_fs::image::{ImageError, OciLayout};
use stargaze_fs::oci::{OCI_CONFIG, OCI_MANIFEST};
use stargaze_fs::remote::{Reference, ReferenceError, RegistryClient, RemoteError};
use stargaze_fs::Digest;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a built image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An OCI layout directory, under a tag.
    Layout {
        /// The layout.
        dir: PathBuf,
        /// The tag.
        tag: String,
    },
    /// A registry (pushed).
    Registry(Reference),
}

/// Why a `-t` destination was refused.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    /// `oci:` without a directory.
    #[error("{0:?}: oci:DIR[:TAG] needs a directory")]
    NoDirectory(String),
    /// Not a valid tag or reference.
    #[error("{given:?}: {source}")]
    Invalid {
        /// The destination as given.
        given: String,
        /// What is wrong.
        #[source]
        source: ReferenceError,
    },
    /// A registry without `--push`.
    #[error(
        "-t {0}: add --push to push it to its registry, or name an OCI layout with -t oci:DIR:TAG"
    )]
    NeedsPush(String),
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The layout (or the content store) failed.
    #[error(transparent)]
    Layout(#[from] ImageError),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RemoteError),
    /// A recorded layer digest is not valid.
    #[error(transparent)]
    LayerDigest(#[from] BadLayerDigest),
    /// A temporary file for a blob failed.
    #[error("temp file: {0}")]
    TempFile(std::io::Error),
    /// The config or manifest could not be written as JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Parses `-t`: `oci:DIR[:TAG]` or a registry reference (`docker://` optional), which is
/// only accepted with `push`.
pub fn parse_destination(s: &str, push: bool) -> Result<Destination, DestinationError> {
    let invalid = |source| DestinationError::Invalid {
        given: s.to_string(),
        source,
    };
    if let Some(rest) = s.strip_prefix("oci:") {
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((d, t)) if !t.contains('/') => (d, t),
            _ => (rest, "latest"),
        };
        if dir.is_empty() {
            return Err(DestinationError::NoDirectory(s.to_string()));
        }
        stargaze_fs::oci::validate_tag(tag).map_err(|e| invalid(e.into()))?;
        return Ok(Destination::Layout {
            dir: PathBuf::from(dir),
            tag: tag.to_string(),
        });
    }
    let r = s.strip_prefix("docker://").unwrap_or(s);
    let reference = Reference::parse(r).map_err(invalid)?;
    if !push {
        return Err(DestinationError::NeedsPush(s.to_string()));
    }
    Ok(Destination::Registry(reference))
}

/// What an export did.
#[derive(Debug, Clone, Default)]
pub struct ExportReport {
    /// The manifest digest.
    pub manifest: Option<Digest>,
    /// Built layers written or uploaded.
    pub built_layers: usize,
    /// Base layers the destination already had, or got by a cross-repository mount.
    pub base_layers_kept: usize,
    /// Base layers fetched from their registry to be written.
    pub base_layers_fetched: usize,
    /// Bytes written or uploaded.
    pub bytes: u64,
}

/// The config and manifest bytes of `img`.
pub fn documents(img: &StageResult) -> Result<(Vec<u8>, Vec<u8>), ExportError> {
    let mut config = img.config.clone();
    config.set_created(rfc3339(now()));
    let config_bytes = config.to_bytes()?;
    let layers: Vec<serde_json::Value> = img
        .layers
        .iter()
        .map(|l| {
            let mut d = serde_json::json!({
                "mediaType": l.blob.media_type,
                "digest": l.blob.digest,
                "size": l.blob.size,
            });
            if !l.blob.annotations.is_empty() {
                d["annotations"] = serde_json::json!(l.blob.annotations);
            }
            d
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": Digest::of(&config_bytes).to_string(),
            "size": config_bytes.len(),
        },
        "layers": layers,
    });
    Ok((config_bytes, serde_json::to_vec(&manifest)?))
}

/// Exports `img` to `dest`; every registry access (base layers read, the push) asks
/// `sessions` for credentials, in order (the build's `BuildRequest::sessions`).
pub async fn export(
    client: &Arc<RegistryClient>,
    content: &OciLayout,
    img: &StageResult,
    dest: &Destination,
    progress: &Arc<Progress>,
    sessions: &[String],
) -> Result<ExportReport, BuildError> {
    let (config, manifest) = documents(img)?;
    let v = progress.vertex(&format!(
        "exporting to {}",
        match dest {
            Destination::Layout { dir, tag } => format!("oci:{}:{tag}", dir.display()),
            Destination::Registry(r) => r.to_string(),
        }
    ));
    let r = match dest {
        Destination::Layout { dir, tag } => {
            to_layout(
                client,
                content,
                img,
                dir,
                tag,
                (&config, &manifest),
                sessions,
            )
            .await
        }
        Destination::Registry(r) => {
            to_registry(client, content, img, r, &config, &manifest, sessions).await
        }
    };
    match &r {
        Ok(rep) => {
            v.log(&format!(
                "manifest {}: {} built layers, {} base layers kept, {} base layers fetched",
                Digest::of(&manifest),
                rep.built_layers,
                rep.base_layers_kept,
                rep.base_layers_fetched
            ));
            v.done();
        }
        Err(e) => v.error(e),
    }
    Ok(r?)
}

async fn to_layout(
    client: &Arc<RegistryClient>,
    content: &OciLayout,
    img: &StageResult,
    dir: &std::path::Path,
    tag: &str,
    (config, manifest): (&[u8], &[u8]),
    sessions: &[String],
) -> Result<ExportReport, ExportError> {
    let layout = OciLayout::open_or_create(dir)?;
    let mut rep = ExportReport::default();
    for l in &img.layers {
        let d = blob_digest(&l.blob)?;
        if layout.blob_path(&d).is_file() {
            rep.base_layers_kept += usize::from(l.remote.is_some());
            continue;
        }
        match &l.remote {
            None => {
                layout.copy_blob_from(content, &d)?;
                rep.built_layers += 1;
            }
            Some(src) => {
                let tmp = layout.temp_blob()?;
                let f = tmp.reopen().map_err(ExportError::TempFile)?;
                let mut f = tokio::fs::File::from_std(f);
                client
                    .blob_to_file(src, &d, l.blob.size, &mut f, sessions, &|_| {})
                    .await?;
                drop(f);
                layout.commit_blob(tmp, &d)?;
                rep.base_layers_fetched += 1;
            }
        }
        rep.bytes += l.blob.size;
    }
    layout.put_blob(config)?;
    let desc = layout.put_manifest_bytes(
        manifest,
        oci_spec::image::MediaType::ImageManifest,
        Some(tag),
    )?;
    rep.manifest = Some(OciLayout::digest_of(&desc)?);
    Ok(rep)
}

async fn to_registry(
    client: &Arc<RegistryClient>,
    content: &OciLayout,
    img: &StageResult,
    dest: &Reference,
    config: &[u8],
    manifest: &[u8],
    sessions: &[String],
) -> Result<ExportReport, ExportError> {
    let mut rep = ExportReport::default();
    for l in &img.layers {
        let d = blob_digest(&l.blob)?;
        match &l.remote {
            None => {
                if client
                    .push_blob(dest, &d, &content.blob_path(&d), l.blob.size, sessions)
                    .await?
                {
                    rep.bytes += l.blob.size;
                }
                rep.built_layers += 1;
            }
            Some(src) => {
                if src.registry == dest.registry
                    && client
                        .mount_blob(dest, &d, &src.repository, sessions)
                        .await?
                {
                    rep.base_layers_kept += 1;
                    continue;
                }
                if client.blob_size(dest, &d, sessions).await.ok().flatten() == Some(l.blob.size) {
                    rep.base_layers_kept += 1;
                    continue;
                }
                let tmp = tempfile::NamedTempFile::new_in(content.root())
                    .map_err(ExportError::TempFile)?;
                let mut f = tokio::fs::File::from_std(tmp.reopen().map_err(ExportError::TempFile)?);
                client
                    .blob_to_file(src, &d, l.blob.size, &mut f, sessions, &|_| {})
                    .await?;
                drop(f);
                client
                    .push_blob(dest, &d, tmp.path(), l.blob.size, sessions)
                    .await?;
                rep.base_layers_fetched += 1;
                rep.bytes += l.blob.size;
            }
        }
    }
    let cfg_digest = Digest::of(config);
    let mut cfg_file =
        tempfile::NamedTempFile::new_in(content.root()).map_err(ExportError::TempFile)?;
    std::io::Write::write_all(&mut cfg_file, config).map_err(ExportError::TempFile)?;
    client
        .push_blob(
            dest,
            &cfg_digest,
            cfg_file.path(),
            config.len() as u64,
            sessions,
        )
        .await?;
    let tag = dest.tag.clone().unwrap_or_else(|| "latest".into());
    let d = client
        .push_manifest(dest, &tag, OCI_MANIFEST, manifest, sessions)
        .await?;
    rep.manifest = Some(d);
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(
            parse_destination("oci:/tmp/out:v1", false).unwrap(),
            Destination::Layout {
                dir: "/tmp/out".into(),
                tag: "v1".into()
            }
        );
        assert_eq!(
            parse_destination("oci:/tmp/out", false).unwrap(),
            Destination::Layout {
                dir: "/tmp/out".into(),
                tag: "latest".into()
            }
        );
        assert!(parse_destination("localhost:5000/app:v1", false)
            .unwrap_err()
            .to_string()
            .contains("--push"));
        assert!(matches!(
            parse_destination("docker://localhost:5000/app:v1", true).unwrap(),
            Destination::Registry(_)
        ));
        assert!(parse_destination("oci:/x:bad tag", false).is_err());
        assert!(parse_destination("UPPER/x", true).is_err());
    }
}
