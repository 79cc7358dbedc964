//! Writing a fresh OCI image (config, manifest, tag) from layer tars — what the demo, the
//! tests and later the build frontend use to produce images without outside tools.

use super::layout::{host_arch, OciLayout};
use super::ImageError;
use crate::digest::Hasher;
use crate::Digest;
use oci_spec::image::{Descriptor, ImageManifest, MediaType};
use std::io::{Read, Write};
use std::path::PathBuf;

/// One layer to write: an uncompressed tar file, gzip-compressed on the way in.
#[derive(Debug, Clone)]
pub struct LayerInput {
    /// Path of the uncompressed tar.
    pub tar: PathBuf,
}

/// The runnable part of the image config.
#[derive(Debug, Clone, Default)]
pub struct ImageConfig {
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`.
    pub env: Vec<String>,
}

/// Gzips each tar into a blob and writes config, manifest and the tag into `layout`.
pub fn write_image(
    layout: &OciLayout,
    tag: &str,
    layers: &[LayerInput],
    config: &ImageConfig,
) -> Result<Digest, ImageError> {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let mut input = std::fs::File::open(&l.tar)
            .map_err(|e| ImageError::io(format!("opening {}", l.tar.display()), e))?;
        let tmp = layout.temp_blob()?;
        let mut diff = Hasher::new();
        let mut enc = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(tmp.as_file()),
            flate2::Compression::new(6),
        );
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| ImageError::io("reading layer tar", e))?;
            if n == 0 {
                break;
            }
            diff.update(&buf[..n]);
            enc.write_all(&buf[..n])
                .map_err(|e| ImageError::io("writing layer", e))?;
        }
        enc.finish()
            .and_then(|mut w| w.flush())
            .map_err(|e| ImageError::io("writing layer", e))?;
        let (digest, size) = hash_file(tmp.path())?;
        layout.commit_blob(tmp, &digest)?;
        descs.push(Descriptor::new(
            MediaType::ImageLayerGzip,
            size,
            OciLayout::to_oci(&digest)?,
        ));
        diff_ids.push(diff.finish().to_string());
    }
    let cfg = serde_json::json!({
        "architecture": host_arch(),
        "os": "linux",
        "config": { "Cmd": config.cmd, "Env": config.env },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "stargaze"})).collect::<Vec<_>>(),
    });
    let cfg_bytes = serde_json::to_vec(&cfg).map_err(|e| ImageError::Json {
        what: "image config".into(),
        reason: e.to_string(),
    })?;
    let cfg_digest = layout.put_blob(&cfg_bytes)?;
    let cfg_desc = Descriptor::new(
        MediaType::ImageConfig,
        cfg_bytes.len() as u64,
        OciLayout::to_oci(&cfg_digest)?,
    );
    let manifest: ImageManifest = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::oci::OCI_MANIFEST,
        "config": cfg_desc,
        "layers": descs,
    }))
    .map_err(|e| ImageError::Json {
        what: "image manifest".into(),
        reason: e.to_string(),
    })?;
    let desc = layout.tag_manifest(&manifest, Some(tag))?;
    OciLayout::digest_of(&desc)
}

/// Digest and size of a file.
pub fn hash_file(path: &std::path::Path) -> Result<(Digest, u64), ImageError> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
    let mut h = Hasher::new();
    let n = std::io::copy(&mut f, &mut h)
        .map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
    Ok((h.finish(), n))
}
