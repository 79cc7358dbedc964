//! Whole-image conversion: every layer of an OCI layout image becomes eStargz, and the config
//! (diff_ids), manifest (layer descriptors with the stargz annotations) and index are rewritten
//! with their new digests. A layer that already is eStargz with a matching TOC is kept.

use super::layout::OciLayout;
use super::ImageError;
use crate::format::{self, Compression, FileBlob, LayerReader, OpenOptions, WriterOptions};
use crate::oci;
use crate::Digest;
use oci_spec::image::{Descriptor, MediaType};
use std::collections::{BTreeMap, HashMap};
use std::io::BufWriter;

/// How to convert an image.
#[derive(Debug, Clone, Default)]
pub struct ImageConvertOptions {
    /// Layer writer settings (compression, level, chunk size, prioritized files).
    pub writer: WriterOptions,
}

/// What happened to one layer.
#[derive(Debug, Clone)]
pub struct LayerOutcome {
    /// Digest of the source layer.
    pub source: Digest,
    /// Digest of the resulting layer.
    pub result: Digest,
    /// Size of the source layer.
    pub source_size: u64,
    /// Size of the resulting layer.
    pub result_size: u64,
    /// Kept as is because it already was eStargz.
    pub kept: bool,
    /// TOC digest of the result.
    pub toc_digest: Digest,
    /// Files in the layer.
    pub files: usize,
    /// Prioritized files found in this layer.
    pub prioritized: usize,
}

/// The converted image.
#[derive(Debug, Clone)]
pub struct ImageConvertReport {
    /// Digest of the new manifest.
    pub manifest: Digest,
    /// One outcome per layer, bottom first.
    pub layers: Vec<LayerOutcome>,
}

fn layer_compression(mt: &MediaType) -> Result<(), ImageError> {
    let s = mt.to_string();
    let ok = [
        oci::OCI_LAYER,
        oci::OCI_LAYER_GZIP,
        oci::OCI_LAYER_ZSTD,
        oci::DOCKER_LAYER_GZIP,
        oci::OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    ];
    if ok.contains(&s.as_str()) {
        Ok(())
    } else {
        Err(ImageError::Unsupported(format!("layer media type {s}")))
    }
}

/// A layer that already is eStargz: its TOC digest annotation matches its TOC.
fn existing_estargz(
    layout: &OciLayout,
    desc: &Descriptor,
    digest: &Digest,
) -> Option<(Digest, usize)> {
    let ann = desc.annotations().as_ref()?;
    let toc: Digest = ann.get(oci::TOC_DIGEST_ANNOTATION)?.parse().ok()?;
    ann.get(oci::UNCOMPRESSED_SIZE_ANNOTATION)?;
    let blob = FileBlob::open(&layout.blob_path(digest)).ok()?;
    let opts = OpenOptions {
        toc_digest: Some(toc),
        annotations: annotations_of(desc),
        ..Default::default()
    };
    let r = LayerReader::open(blob, &opts).ok()?;
    let files = r
        .index()
        .nodes
        .iter()
        .filter(|n| n.kind == format::NodeKind::Reg)
        .count();
    Some((toc, files))
}

/// Converts `src_tag` of `src` into `dst` under `dst_tag`. `progress(layer, total, bytes)` is
/// called as layers are framed.
pub fn convert_image(
    src: &OciLayout,
    src_tag: Option<&str>,
    dst: &OciLayout,
    dst_tag: Option<&str>,
    opts: &ImageConvertOptions,
    progress: &mut dyn FnMut(usize, usize, u64),
) -> Result<ImageConvertReport, ImageError> {
    let (_, mut manifest) = src.resolve(src_tag)?;
    let config_data = src.read_small_blob(manifest.config())?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&config_data).map_err(|e| ImageError::Json {
            what: "image config".into(),
            reason: e.to_string(),
        })?;
    let layer_count = manifest.layers().len();
    let diff_ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| v.as_array())
        .map_or(0, |a| a.len());
    if diff_ids != layer_count {
        return Err(ImageError::Unsupported(format!(
            "config has {diff_ids} diff_ids for {layer_count} layers"
        )));
    }

    let mut new_layers = Vec::with_capacity(layer_count);
    let mut outcomes = Vec::with_capacity(layer_count);
    for (i, desc) in manifest.layers().iter().enumerate() {
        let digest = OciLayout::digest_of(desc)?;
        layer_compression(desc.media_type())?;
        if let Some((toc, files)) = existing_estargz(src, desc, &digest) {
            dst.copy_blob_from(src, &digest)?;
            new_layers.push(desc.clone());
            outcomes.push(LayerOutcome {
                source: digest,
                result: digest,
                source_size: desc.size(),
                result_size: desc.size(),
                kept: true,
                toc_digest: toc,
                files,
                prioritized: 0,
            });
            continue;
        }
        let input = std::fs::File::open(src.blob_path(&digest))
            .map_err(|e| ImageError::io(format!("opening layer {digest}"), e))?;
        let tmp = dst.temp_blob()?;
        let mut out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        let report = format::convert_layer(
            std::io::BufReader::with_capacity(1 << 20, input),
            &mut out,
            &opts.writer,
            &mut |bytes| progress(i, layer_count, bytes),
        )
        .map_err(|source| ImageError::Layer {
            digest: digest.to_string(),
            source,
        })?;
        drop(out);
        dst.commit_blob(tmp, &report.blob_digest)?;

        let mut ann: HashMap<String, String> = desc.annotations().clone().unwrap_or_default();
        ann.retain(|k, _| {
            !k.contains("zstd-chunked") && !k.starts_with("containerd.io/snapshot/stargz")
        });
        ann.insert(
            oci::TOC_DIGEST_ANNOTATION.into(),
            report.toc_digest.to_string(),
        );
        ann.insert(
            oci::UNCOMPRESSED_SIZE_ANNOTATION.into(),
            report.uncompressed_size.to_string(),
        );
        if let (Some(pos), Some(sum)) = (
            &report.zstd_manifest_position,
            &report.zstd_manifest_checksum,
        ) {
            ann.insert(
                oci::ZSTD_CHUNKED_POSITION_ANNOTATIONS[0].into(),
                pos.clone(),
            );
            ann.insert(
                oci::ZSTD_CHUNKED_CHECKSUM_ANNOTATIONS[0].into(),
                sum.to_string(),
            );
        }
        let media = match report.compression {
            Compression::Gzip => MediaType::ImageLayerGzip,
            Compression::Zstd => MediaType::ImageLayerZstd,
        };
        let oci_digest = OciLayout::to_oci(&report.blob_digest)?;
        let mut nd = Descriptor::new(media, report.blob_size, oci_digest);
        nd.set_annotations(Some(ann));
        new_layers.push(nd);
        config["rootfs"]["diff_ids"][i] = serde_json::Value::String(report.diff_id.to_string());
        outcomes.push(LayerOutcome {
            source: digest,
            result: report.blob_digest,
            source_size: desc.size(),
            result_size: report.blob_size,
            kept: false,
            toc_digest: report.toc_digest,
            files: report.files,
            prioritized: report.prioritized,
        });
    }

    let config_json = serde_json::to_vec(&config).map_err(|e| ImageError::Json {
        what: "image config".into(),
        reason: e.to_string(),
    })?;
    let config_digest = dst.put_blob(&config_json)?;
    let mut config_desc = manifest.config().clone();
    config_desc.set_digest(OciLayout::to_oci(&config_digest)?);
    config_desc.set_size(config_json.len() as u64);
    manifest.set_config(config_desc);
    manifest.set_layers(new_layers);
    let desc = dst.tag_manifest(&manifest, dst_tag)?;
    Ok(ImageConvertReport {
        manifest: OciLayout::digest_of(&desc)?,
        layers: outcomes,
    })
}

/// Annotations of a descriptor as a sorted map (for [`OpenOptions`]).
pub fn annotations_of(desc: &Descriptor) -> BTreeMap<String, String> {
    desc.annotations()
        .as_ref()
        .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}
