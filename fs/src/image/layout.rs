//! An OCI image layout directory: `oci-layout`, `index.json`, `blobs/sha256/<hex>`.
//! Blob paths come only from parsed digests (hex only), so no name from a manifest can point
//! outside `blobs/`. Writes go through a temp file and a rename.

use super::ImageError;
use crate::digest::Hasher;
use crate::oci::{MAX_MANIFEST, REF_NAME};
use crate::Digest;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest manifest, index or config blob read into memory.
const MAX_BLOB: u64 = MAX_MANIFEST as u64;
/// Largest `index.json` read: it lists every tag of a repository in the built-in registry
/// (about 300 bytes an entry), so it may outgrow the manifest limit; it never travels.
pub const MAX_INDEX_JSON: u64 = 16 << 20;

/// `oci:DIR[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Layout directory.
    pub dir: PathBuf,
    /// Tag (`org.opencontainers.image.ref.name`), if given.
    pub tag: Option<String>,
}

impl std::str::FromStr for ImageRef {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        let rest = s
            .strip_prefix("oci:")
            .ok_or_else(|| ImageError::BadRef(s.to_string()))?;
        let (dir, tag) = match rest.rsplit_once(':') {
            Some((d, t)) if !t.contains('/') && !t.is_empty() => (d, Some(t.to_string())),
            _ => (rest, None),
        };
        if dir.is_empty() {
            return Err(ImageError::BadRef(s.to_string()));
        }
        Ok(ImageRef {
            dir: PathBuf::from(dir),
            tag,
        })
    }
}

/// An image layout directory.
#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

fn json_err(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Json {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

impl OciLayout {
    /// Opens an existing layout.
    pub fn open(root: &Path) -> Result<Self, ImageError> {
        let marker = root.join("oci-layout");
        if !marker.is_file() {
            return Err(ImageError::NotFound(format!(
                "{} is not an OCI image layout (no oci-layout file)",
                root.display()
            )));
        }
        Ok(OciLayout {
            root: root.to_path_buf(),
        })
    }

    /// Opens a layout, creating an empty one if the directory has none.
    pub fn open_or_create(root: &Path) -> Result<Self, ImageError> {
        if root.join("oci-layout").is_file() {
            return Self::open(root);
        }
        fs::create_dir_all(root.join("blobs/sha256"))
            .map_err(|e| ImageError::io(format!("creating {}", root.display()), e))?;
        let l = OciLayout {
            root: root.to_path_buf(),
        };
        l.write_file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        l.write_file("index.json", br#"{"schemaVersion":2,"manifests":[]}"#)?;
        Ok(l)
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn write_file(&self, name: &str, data: &[u8]) -> Result<(), ImageError> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.root)
            .map_err(|e| ImageError::io(format!("temp file in {}", self.root.display()), e))?;
        tmp.write_all(data)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| ImageError::io(format!("writing {name}"), e))?;
        tmp.persist(self.root.join(name))
            .map_err(|e| ImageError::io(format!("writing {name}"), e.error))?;
        Ok(())
    }

    /// Path of a blob.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Parses an OCI digest from a descriptor into ours (sha256 only).
    pub fn digest_of(desc: &Descriptor) -> Result<Digest, ImageError> {
        Ok(desc.digest().to_string().parse()?)
    }

    /// Our digest as an oci-spec digest.
    pub fn to_oci(d: &Digest) -> Result<oci_spec::image::Digest, ImageError> {
        d.to_string().parse().map_err(|e| json_err("digest", e))
    }

    /// Reads a small blob (manifest, config) fully, checking size and digest.
    pub fn read_small_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
        let d = Self::digest_of(desc)?;
        if desc.size() > MAX_BLOB {
            return Err(ImageError::Unsupported(format!(
                "{d} is {} bytes, more than {MAX_BLOB} for a manifest or config",
                desc.size()
            )));
        }
        let path = self.blob_path(&d);
        let f =
            fs::File::open(&path).map_err(|e| ImageError::io(format!("opening blob {d}"), e))?;
        let mut data = Vec::new();
        f.take(MAX_BLOB + 1)
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io(format!("reading blob {d}"), e))?;
        if data.len() as u64 != desc.size() {
            return Err(ImageError::BlobMismatch {
                digest: d.to_string(),
                reason: format!("{} bytes, descriptor says {}", data.len(), desc.size()),
            });
        }
        let got = Digest::of(&data);
        if got != d {
            return Err(ImageError::BlobMismatch {
                digest: d.to_string(),
                reason: format!("content hashes to {got}"),
            });
        }
        Ok(data)
    }

    /// Every manifest `index.json` lists, once each: its listed media type and bytes.
    /// Entries whose blob is missing, too large or not what the entry says are skipped.
    pub fn listed_manifests(&self) -> Vec<(String, Vec<u8>)> {
        let Ok(index) = self.index() else {
            return Vec::new();
        };
        let mut seen = std::collections::HashSet::new();
        index
            .manifests()
            .iter()
            .filter(|m| seen.insert(m.digest().to_string()))
            .filter_map(|m| Some((m.media_type().to_string(), self.read_small_blob(m).ok()?)))
            .collect()
    }

    /// Stores bytes as a blob; returns its digest.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest, ImageError> {
        let d = Digest::of(data);
        let path = self.blob_path(&d);
        if !path.exists() {
            self.write_file(&format!("blobs/sha256/{}", d.hex()), data)?;
        }
        Ok(d)
    }

    /// A temp file in the blob directory, to be committed with [`Self::commit_blob`].
    pub fn temp_blob(&self) -> Result<tempfile::NamedTempFile, ImageError> {
        let dir = self.root.join("blobs/sha256");
        fs::create_dir_all(&dir).map_err(|e| ImageError::io("creating blobs dir", e))?;
        tempfile::NamedTempFile::new_in(&dir).map_err(|e| ImageError::io("temp blob", e))
    }

    /// Moves a fully written temp blob into place under its digest.
    pub fn commit_blob(&self, tmp: tempfile::NamedTempFile, d: &Digest) -> Result<(), ImageError> {
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io("syncing blob", e))?;
        tmp.persist(self.blob_path(d))
            .map_err(|e| ImageError::io(format!("storing blob {d}"), e.error))?;
        Ok(())
    }

    /// Copies a blob from another layout, verifying its digest on the way.
    pub fn copy_blob_from(&self, other: &OciLayout, d: &Digest) -> Result<(), ImageError> {
        if self.blob_path(d).exists() {
            return Ok(());
        }
        let mut src = fs::File::open(other.blob_path(d))
            .map_err(|e| ImageError::io(format!("opening blob {d}"), e))?;
        let mut tmp = self.temp_blob()?;
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src
                .read(&mut buf)
                .map_err(|e| ImageError::io(format!("reading blob {d}"), e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| ImageError::io("writing blob", e))?;
        }
        let got = h.finish();
        if &got != d {
            return Err(ImageError::BlobMismatch {
                digest: d.to_string(),
                reason: format!("content hashes to {got}"),
            });
        }
        self.commit_blob(tmp, d)
    }

    /// The top-level index.
    pub fn index(&self) -> Result<ImageIndex, ImageError> {
        let path = self.root.join("index.json");
        let f = fs::File::open(&path).map_err(|e| ImageError::io("opening index.json", e))?;
        let mut data = Vec::new();
        f.take(MAX_INDEX_JSON + 1)
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io("reading index.json", e))?;
        if data.len() as u64 > MAX_INDEX_JSON {
            return Err(ImageError::Unsupported("index.json is too large".into()));
        }
        serde_json::from_slice(&data).map_err(|e| json_err("index.json", e))
    }

    /// Finds the image manifest for `tag` (or the only one when `tag` is `None`), descending
    /// into a nested image index by the host platform.
    pub fn resolve(&self, tag: Option<&str>) -> Result<(Descriptor, ImageManifest), ImageError> {
        let index = self.index()?;
        let found: Vec<&Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| match tag {
                Some(t) => d
                    .annotations()
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|n| n == t),
                None => true,
            })
            .collect();
        let desc = match (found.as_slice(), tag) {
            ([one], _) => (*one).clone(),
            ([], Some(t)) => {
                return Err(ImageError::NotFound(format!(
                    "no image tagged {t:?} in {}",
                    self.root.display()
                )))
            }
            ([], None) => {
                return Err(ImageError::NotFound(format!(
                    "no image in {}",
                    self.root.display()
                )))
            }
            (_, _) => {
                return Err(ImageError::NotFound(format!(
                    "{} holds several images; name one with oci:DIR:TAG",
                    self.root.display()
                )))
            }
        };
        self.manifest_for(desc, 0)
    }

    fn manifest_for(
        &self,
        desc: Descriptor,
        depth: usize,
    ) -> Result<(Descriptor, ImageManifest), ImageError> {
        match desc.media_type() {
            MediaType::ImageManifest => {
                let data = self.read_small_blob(&desc)?;
                let m: ImageManifest =
                    serde_json::from_slice(&data).map_err(|e| json_err("image manifest", e))?;
                Ok((desc, m))
            }
            MediaType::ImageIndex if depth < 4 => {
                let data = self.read_small_blob(&desc)?;
                let idx: ImageIndex =
                    serde_json::from_slice(&data).map_err(|e| json_err("image index", e))?;
                let arch = host_arch();
                let pick = idx
                    .manifests()
                    .iter()
                    .find(|d| {
                        d.platform().as_ref().is_some_and(|p| {
                            p.architecture().to_string() == arch && p.os().to_string() == "linux"
                        })
                    })
                    .or_else(|| idx.manifests().first())
                    .cloned()
                    .ok_or_else(|| ImageError::NotFound("image index is empty".into()))?;
                self.manifest_for(pick, depth + 1)
            }
            other => Err(ImageError::Unsupported(format!(
                "manifest media type {other}"
            ))),
        }
    }

    /// Stores a manifest and points `tag` at it in `index.json` (replacing the old target).
    pub fn tag_manifest(
        &self,
        manifest: &ImageManifest,
        tag: Option<&str>,
    ) -> Result<Descriptor, ImageError> {
        let data = serde_json::to_vec(manifest).map_err(|e| json_err("image manifest", e))?;
        // An untagged write replaces the layout's other untagged image (convert's output).
        self.record_manifest(&data, MediaType::ImageManifest, tag, tag.is_none())
    }

    /// Stores manifest bytes exactly as given and records them in `index.json`: under `tag`
    /// (moving the tag from its old target), or untagged when `tag` is `None` and the digest
    /// is not listed yet. Not safe against a concurrent writer of the same layout; callers
    /// that share a layout serialise (the built-in registry locks per repository).
    pub fn put_manifest_bytes(
        &self,
        data: &[u8],
        media_type: MediaType,
        tag: Option<&str>,
    ) -> Result<Descriptor, ImageError> {
        self.record_manifest(data, media_type, tag, false)
    }

    fn record_manifest(
        &self,
        data: &[u8],
        media_type: MediaType,
        tag: Option<&str>,
        replace_untagged: bool,
    ) -> Result<Descriptor, ImageError> {
        let d = self.put_blob(data)?;
        let mut desc = Descriptor::new(media_type, data.len() as u64, Self::to_oci(&d)?);
        if let Some(t) = tag {
            desc.set_annotations(Some(HashMap::from([(REF_NAME.to_string(), t.to_string())])));
        }
        let mut index = self.index()?;
        let untagged_known = tag.is_none()
            && !replace_untagged
            && index
                .manifests()
                .iter()
                .any(|m| m.digest().to_string() == d.to_string());
        if untagged_known {
            return Ok(desc);
        }
        let mut manifests: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|m| {
                let name = m.annotations().as_ref().and_then(|a| a.get(REF_NAME));
                match tag {
                    // Drop the tag's old holder and an untagged entry of the same digest.
                    Some(t) => {
                        name.is_none_or(|n| n != t)
                            && !(name.is_none() && m.digest().to_string() == d.to_string())
                    }
                    None => !replace_untagged || name.is_some(),
                }
            })
            .cloned()
            .collect();
        manifests.push(desc.clone());
        index.set_manifests(manifests);
        let json = serde_json::to_vec(&index).map_err(|e| json_err("index.json", e))?;
        self.write_file("index.json", &json)?;
        Ok(desc)
    }

    /// Rewrites the entries of `index.json` through `edit` (deletes in the built-in registry).
    /// Same concurrency rule as [`Self::put_manifest_bytes`].
    pub fn edit_index(
        &self,
        edit: impl FnOnce(Vec<Descriptor>) -> Vec<Descriptor>,
    ) -> Result<(), ImageError> {
        let mut index = self.index()?;
        let manifests = edit(index.manifests().clone());
        index.set_manifests(manifests);
        let json = serde_json::to_vec(&index).map_err(|e| json_err("index.json", e))?;
        self.write_file("index.json", &json)
    }

    /// The tags recorded in `index.json`, with their descriptors.
    pub fn tags(&self) -> Result<Vec<(String, Descriptor)>, ImageError> {
        Ok(self
            .index()?
            .manifests()
            .iter()
            .filter_map(|m| {
                let t = m.annotations().as_ref()?.get(REF_NAME)?;
                Some((t.clone(), m.clone()))
            })
            .collect())
    }
}

/// The OCI architecture name of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_refs() {
        let r: ImageRef = "oci:/tmp/x:latest".parse().unwrap();
        assert_eq!(r.dir, PathBuf::from("/tmp/x"));
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r: ImageRef = "oci:dir".parse().unwrap();
        assert_eq!(r.tag, None);
        assert!("docker://x".parse::<ImageRef>().is_err());
        assert!("oci:".parse::<ImageRef>().is_err());
    }
}
