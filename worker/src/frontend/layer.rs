//! A step's changes as a layer blob in the worker's content store (an OCI layout): the
//! diff tar, its diff ID, and the blob — gzip, or eStargz (with its TOC digest annotation)
//! when the build asks for lazily pullable output.

use super::diff::{write_tar, Changes, DiffStats};
use super::{io, BuildError};
use stargaze_fs::digest::{DigestError, Hasher};
use stargaze_fs::format::{convert_layer, FormatError, WriterOptions};
use stargaze_fs::image::{ImageError, OciLayout};
use stargaze_fs::oci::OCI_LAYER_GZIP;
use stargaze_fs::Digest;
use std::collections::BTreeMap;
use std::io::Write;

/// Why a layer could not be written into the content store.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The content store failed.
    #[error(transparent)]
    Store(#[from] ImageError),
    /// Converting the diff to eStargz failed.
    #[error("eStargz layer: {0}")]
    Estargz(#[from] FormatError),
}

/// A layer blob in the content store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    /// Media type.
    pub media_type: String,
    /// Blob digest.
    pub digest: String,
    /// Blob size.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Descriptor annotations (eStargz: TOC digest, uncompressed size).
    pub annotations: BTreeMap<String, String>,
}

struct Tee<'a, W: Write> {
    inner: W,
    hash: &'a mut Hasher,
}

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `changes` as a layer into `content`. Blocking.
pub fn write_layer(
    content: &OciLayout,
    changes: &Changes,
    estargz: bool,
) -> Result<(LayerBlob, DiffStats), BuildError> {
    let store = |e: ImageError| BuildError::Layer(e.into());
    if estargz {
        let tar = tempfile::tempfile_in(content.root()).map_err(io("temp file for the layer"))?;
        let (mut tar, stats) = write_tar(changes, std::io::BufWriter::new(tar))?;
        tar.flush().map_err(io("writing the layer tar"))?;
        let mut tar = tar
            .into_inner()
            .map_err(|e| io("writing the layer tar")(e.into_error()))?;
        std::io::Seek::rewind(&mut tar).map_err(io("rereading the layer tar"))?;
        let tmp = content.temp_blob().map_err(store)?;
        let mut out = std::io::BufWriter::new(tmp.as_file());
        let report = convert_layer(
            std::io::BufReader::new(tar),
            &mut out,
            &WriterOptions::default(),
            &mut |_| {},
        )
        .map_err(|e| BuildError::Layer(e.into()))?;
        out.flush().map_err(io("writing the layer"))?;
        drop(out);
        content
            .commit_blob(tmp, &report.blob_digest)
            .map_err(store)?;
        let mut annotations = BTreeMap::new();
        annotations.insert(
            stargaze_fs::oci::TOC_DIGEST_ANNOTATION.to_string(),
            report.toc_digest.to_string(),
        );
        annotations.insert(
            stargaze_fs::oci::UNCOMPRESSED_SIZE_ANNOTATION.to_string(),
            report.uncompressed_size.to_string(),
        );
        return Ok((
            LayerBlob {
                media_type: OCI_LAYER_GZIP.into(),
                digest: report.blob_digest.to_string(),
                size: report.blob_size,
                diff_id: report.diff_id.to_string(),
                annotations,
            },
            stats,
        ));
    }
    let tmp = content.temp_blob().map_err(store)?;
    let mut diff = Hasher::new();
    let stats = {
        let gz = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(tmp.as_file()),
            flate2::Compression::new(6),
        );
        let tee = Tee {
            inner: gz,
            hash: &mut diff,
        };
        let (tee, stats) = write_tar(changes, tee)?;
        tee.inner
            .finish()
            .and_then(|mut w| w.flush())
            .map_err(io("writing the layer"))?;
        stats
    };
    let (digest, size) = stargaze_fs::image::hash_file(tmp.path()).map_err(store)?;
    content.commit_blob(tmp, &digest).map_err(store)?;
    Ok((
        LayerBlob {
            media_type: OCI_LAYER_GZIP.into(),
            digest: digest.to_string(),
            size,
            diff_id: diff.finish().to_string(),
            annotations: BTreeMap::new(),
        },
        stats,
    ))
}

/// A layer whose digest does not parse.
#[derive(Debug, thiserror::Error)]
#[error("layer digest {digest:?}: {source}")]
pub struct BadLayerDigest {
    /// The digest as recorded.
    pub digest: String,
    /// Why it does not parse.
    #[source]
    pub source: DigestError,
}

/// The blob's digest, checked.
pub fn blob_digest(b: &LayerBlob) -> Result<Digest, BadLayerDigest> {
    b.digest.parse().map_err(|source| BadLayerDigest {
        digest: b.digest.clone(),
        source,
    })
}
