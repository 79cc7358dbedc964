//! An OCI layout tarball (what BuildKit's `oci` exporter sends: `oci-layout`, `index.json`,
//! `blobs/sha256/HEX`) imported into an image layout directory, so `stargaze build --addr`
//! writes `-t oci:DIR:TAG` as the in-process build does. The tarball comes over a socket
//! from a daemon, so it is read as untrusted: only regular files named `blobs/sha256/HEX`
//! are taken, each kept only when its content hashes to HEX, `index.json` is bounded, other
//! entries (docker's `manifest.json`, directories) are skipped, and the image is recorded
//! only when its manifest, config and layers are all present and verified.

use super::layout::MAX_INDEX_JSON;
use super::{ImageError, OciLayout};
use crate::digest::Hasher;
use crate::format::tar::{TarKind, TarReader};
use crate::oci::MAX_MANIFEST;
use crate::Digest;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use std::io::{Read, Write};
use std::str::FromStr;

/// Most entries read from one tarball.
const MAX_ENTRIES: usize = 100_000;

/// What an import stored.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The recorded image manifest.
    pub manifest: Descriptor,
    /// Blobs written (not already in the layout).
    pub blobs_written: usize,
    /// Their bytes.
    pub bytes_written: u64,
}

fn tar_err(e: impl std::fmt::Display) -> ImageError {
    ImageError::Unsupported(format!("layout tarball: {e}"))
}

/// Imports the image of the layout tarball `r` into `layout` under `tag` (untagged when
/// `None`). The tarball's `index.json` must list exactly one image manifest.
pub fn import_layout_tar<R: Read>(
    layout: &OciLayout,
    r: R,
    tag: Option<&str>,
) -> Result<Imported, ImageError> {
    let mut tar = TarReader::new(r);
    let mut index: Option<Vec<u8>> = None;
    let mut blobs_written = 0;
    let mut bytes_written = 0;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..MAX_ENTRIES {
        let Some(e) = tar.next_entry().map_err(tar_err)? else {
            return finish(layout, index, tag, blobs_written, bytes_written);
        };
        if e.kind != TarKind::Reg {
            continue;
        }
        let path = e.path.trim_start_matches("./");
        if path == "index.json" {
            if e.size > MAX_INDEX_JSON {
                return Err(tar_err("index.json is too large"));
            }
            let mut data = vec![0u8; e.size as usize];
            tar.read_data_exact(&mut data).map_err(tar_err)?;
            index = Some(data);
            continue;
        }
        let Some(hex) = path.strip_prefix("blobs/sha256/") else {
            continue;
        };
        let want = Digest::from_str(&format!("sha256:{hex}"))
            .map_err(|_| tar_err(format!("{path:?} is not a blob name")))?;
        if layout.blob_path(&want).is_file() {
            continue;
        }
        let mut tmp = layout.temp_blob()?;
        let mut h = Hasher::new();
        loop {
            let n = tar.read_data(&mut buf).map_err(tar_err)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| ImageError::io("writing blob", e))?;
        }
        let got = h.finish();
        if got != want {
            return Err(ImageError::BlobMismatch {
                digest: want.to_string(),
                reason: format!("content in the tarball hashes to {got}"),
            });
        }
        layout.commit_blob(tmp, &want)?;
        blobs_written += 1;
        bytes_written += e.size;
    }
    Err(tar_err(format!("more than {MAX_ENTRIES} entries")))
}

fn present(layout: &OciLayout, d: &Descriptor) -> Result<(), ImageError> {
    let digest = OciLayout::digest_of(d)?;
    if layout.blob_path(&digest).is_file() {
        Ok(())
    } else {
        Err(tar_err(format!("blob {digest} is missing")))
    }
}

fn finish(
    layout: &OciLayout,
    index: Option<Vec<u8>>,
    tag: Option<&str>,
    blobs_written: usize,
    bytes_written: u64,
) -> Result<Imported, ImageError> {
    let index = index.ok_or_else(|| tar_err("no index.json"))?;
    let index: ImageIndex = serde_json::from_slice(&index).map_err(|e| ImageError::Json {
        what: "index.json of the tarball".into(),
        reason: e.to_string(),
    })?;
    let [desc] = index.manifests().as_slice() else {
        return Err(tar_err(format!(
            "index.json lists {} manifests, expected one image",
            index.manifests().len()
        )));
    };
    if desc.media_type() != &MediaType::ImageManifest {
        return Err(ImageError::Unsupported(format!(
            "layout tarball: {} (only a single-platform image manifest is imported)",
            desc.media_type()
        )));
    }
    if desc.size() > MAX_MANIFEST as u64 {
        return Err(tar_err("the image manifest is too large"));
    }
    present(layout, desc)?;
    let data = layout.read_small_blob(desc)?;
    let manifest: ImageManifest = serde_json::from_slice(&data).map_err(|e| ImageError::Json {
        what: "image manifest of the tarball".into(),
        reason: e.to_string(),
    })?;
    present(layout, manifest.config())?;
    for l in manifest.layers() {
        present(layout, l)?;
    }
    let manifest = layout.put_manifest_bytes(&data, MediaType::ImageManifest, tag)?;
    Ok(Imported {
        manifest,
        blobs_written,
        bytes_written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tar::{HeaderSpec, TarBuilder};

    fn tarball(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = TarBuilder::new(Vec::new());
        for (p, d) in entries {
            b.append(&HeaderSpec::new(p, TarKind::Reg), d).unwrap();
        }
        b.finish().unwrap()
    }

    fn desc(mt: MediaType, data: &[u8]) -> Descriptor {
        Descriptor::new(
            mt,
            data.len() as u64,
            OciLayout::to_oci(&Digest::of(data)).unwrap(),
        )
    }

    fn image() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let layer = b"layer bytes".to_vec();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc(MediaType::ImageConfig, &config),
            "layers": [desc(MediaType::ImageLayerGzip, &layer)],
        }))
        .unwrap();
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [desc(MediaType::ImageManifest, &manifest)],
        }))
        .unwrap();
        (config, layer, manifest, index)
    }

    fn name(d: &[u8]) -> String {
        format!("blobs/sha256/{}", Digest::of(d).hex())
    }

    #[test]
    fn imports_a_verified_image_under_its_tag() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(dir.path()).unwrap();
        let (config, layer, manifest, index) = image();
        let t = tarball(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", &index),
            ("manifest.json", b"[]"),
            (&name(&config), &config),
            (&name(&layer), &layer),
            (&name(&manifest), &manifest),
        ]);
        let got = import_layout_tar(&layout, &t[..], Some("v1")).unwrap();
        assert_eq!(got.blobs_written, 3);
        let (d, m) = layout.resolve(Some("v1")).unwrap();
        assert_eq!(d.digest(), got.manifest.digest());
        assert_eq!(m.layers().len(), 1);
        // Again: nothing new is written, the tag still resolves.
        let again = import_layout_tar(&layout, &t[..], Some("v1")).unwrap();
        assert_eq!(again.blobs_written, 0);
    }

    #[test]
    fn refuses_a_blob_whose_content_differs_from_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(dir.path()).unwrap();
        let (config, _, _, index) = image();
        let t = tarball(&[("index.json", &index), (&name(&config), b"other bytes")]);
        let e = import_layout_tar(&layout, &t[..], Some("v1")).unwrap_err();
        assert!(matches!(e, ImageError::BlobMismatch { .. }), "{e}");
        assert!(!layout.blob_path(&Digest::of(&config)).exists());
    }

    #[test]
    fn refuses_an_image_with_a_missing_layer_and_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        let layout = OciLayout::open_or_create(dir.path()).unwrap();
        let (config, _, manifest, index) = image();
        let t = tarball(&[
            ("index.json", &index),
            (&name(&config), &config),
            (&name(&manifest), &manifest),
        ]);
        let e = import_layout_tar(&layout, &t[..], Some("v1")).unwrap_err();
        assert!(e.to_string().contains("is missing"), "{e}");
        assert!(layout.resolve(Some("v1")).is_err());
        let t = tarball(&[("blobs/sha256/../../../etc/passwd", b"x")]);
        let e = import_layout_tar(&layout, &t[..], None).unwrap_err();
        assert!(e.to_string().contains("not a blob name"), "{e}");
        let t = tarball(&[("oci-layout", b"{}")]);
        let e = import_layout_tar(&layout, &t[..], None).unwrap_err();
        assert!(e.to_string().contains("no index.json"), "{e}");
    }
}
