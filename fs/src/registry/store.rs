//! Repositories of the built-in registry, each an OCI image layout at `ROOT/<name>` (so a
//! layout written by `stargaze convert` can be served as it is), plus upload sessions in
//! `ROOT/_uploads`. Every name and digest from a request is validated before it becomes a
//! path: repository names follow the distribution grammar (no `..`, no absolute paths, no
//! component that collides with a layout's own files) and digests are strict sha256.
//! Writers that make a blob needed (blob commits, mounts, manifest PUTs) hold the root's
//! gc lock shared, so `stargaze registry gc` never removes a blob between their check and
//! their write.

use super::error::ApiError;
use super::referrers::Referrers;
use crate::digest::Digest;
use crate::image::{OciLayout, MAX_INDEX_JSON};
use crate::oci::{manifest_type, referrer_of, validate_repository, validate_tag, MAX_MANIFEST};
use oci_spec::image::MediaType;
use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Deepest repository path the catalog walks.
const MAX_DEPTH: usize = 8;
/// Names a repository component may not take: they are a layout's own entries.
const RESERVED: [&str; 3] = ["blobs", "index.json", "oci-layout"];

/// Repository storage under one root.
pub struct Store {
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Referrers of each repository, kept by manifest PUT and DELETE.
    pub(super) referrers: Referrers,
}

/// What a manifest PUT stored.
pub struct PutManifest {
    /// Digest of the manifest.
    pub digest: Digest,
    /// Its `subject`, when it has one (answered as `OCI-Subject`).
    pub subject: Option<Digest>,
}

/// A manifest as served.
pub struct StoredManifest {
    /// Exact bytes.
    pub data: Vec<u8>,
    /// Media type from the index entry or the document.
    pub media_type: String,
    /// Digest of the bytes.
    pub digest: Digest,
}

impl Store {
    /// Uses `root`, creating it and the upload area.
    pub fn open(root: &Path) -> Result<Self, std::io::Error> {
        crate::sys::private_dir(&root.join("_uploads"))?;
        crate::sys::private_dir(root)?;
        Ok(Store {
            root: root.to_path_buf(),
            locks: Mutex::new(HashMap::new()),
            referrers: Referrers::default(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Validates a repository name and returns its directory.
    pub fn repo_dir(&self, name: &str) -> Result<PathBuf, ApiError> {
        validate_repository(name).map_err(|e| ApiError::name_invalid(e.to_string()))?;
        if name.split('/').skip(1).any(|c| RESERVED.contains(&c)) {
            return Err(ApiError::name_invalid(format!(
                "repository {name:?} uses a reserved path component"
            )));
        }
        Ok(self.root.join(name))
    }

    pub(super) fn layout(&self, name: &str) -> Result<OciLayout, ApiError> {
        let dir = self.repo_dir(name)?;
        OciLayout::open(&dir).map_err(|_| ApiError::name_unknown(name))
    }

    fn layout_or_create(&self, name: &str) -> Result<OciLayout, ApiError> {
        let dir = self.repo_dir(name)?;
        // Refuse to turn a symlinked or non-directory path into a repository.
        let mut p = self.root.clone();
        for comp in name.split('/') {
            p.push(comp);
            if let Ok(m) = fs::symlink_metadata(&p) {
                if !m.is_dir() {
                    return Err(ApiError::name_invalid(format!(
                        "repository {name:?} is not a directory"
                    )));
                }
            }
        }
        OciLayout::open_or_create(&dir).map_err(ApiError::internal)
    }

    pub(super) fn lock(&self, name: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(name.to_string()).or_default().clone()
    }

    /// The root's gc lock (an flock on the root directory), held shared while the returned
    /// handle is open.
    pub(super) fn gc_shared(&self) -> Result<fs::File, ApiError> {
        let f = fs::File::open(&self.root).map_err(ApiError::internal)?;
        f.lock_shared().map_err(ApiError::internal)?;
        Ok(f)
    }

    /// Path and size of a blob present in repository `name`.
    pub fn blob(&self, name: &str, digest: &str) -> Result<(PathBuf, u64, Digest), ApiError> {
        let d = parse_digest(digest)?;
        let layout = self.layout(name)?;
        let path = layout.blob_path(&d);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok((path, m.len(), d)),
            _ => Err(ApiError::blob_unknown(&d)),
        }
    }

    /// A manifest by tag or digest.
    pub fn manifest(&self, name: &str, reference: &str) -> Result<StoredManifest, ApiError> {
        let layout = self.layout(name)?;
        let index = layout.index().map_err(ApiError::internal)?;
        // Whatever is neither a valid tag nor a valid digest names no manifest: 404.
        let entry = if reference.contains(':') {
            let d = parse_digest(reference).map_err(|_| ApiError::manifest_unknown(reference))?;
            index
                .manifests()
                .iter()
                .find(|m| m.digest().to_string() == d.to_string())
                .cloned()
                .map(Ok)
                .unwrap_or_else(|| {
                    // Not listed (a child of an index pushed by tag): serve the blob if it is one.
                    Err(d)
                })
        } else {
            validate_tag(reference).map_err(|_| ApiError::manifest_unknown(reference))?;
            let tags = layout.tags().map_err(ApiError::internal)?;
            match tags.into_iter().find(|(t, _)| t == reference) {
                Some((_, d)) => Ok(d),
                None => return Err(ApiError::manifest_unknown(reference)),
            }
        };
        let (d, listed_type) = match entry {
            Ok(desc) => (
                parse_digest(desc.digest().as_ref())?,
                Some(desc.media_type().to_string()),
            ),
            Err(d) => (d, None),
        };
        let path = layout.blob_path(&d);
        let data =
            read_bounded(&path, MAX_MANIFEST).map_err(|_| ApiError::manifest_unknown(reference))?;
        if Digest::of(&data) != d {
            return Err(ApiError::internal(format!(
                "stored manifest {d} is corrupt"
            )));
        }
        let media_type = match listed_type {
            Some(t) => t,
            None => manifest_media_type(&data, None)
                .map_err(|_| ApiError::manifest_unknown(reference))?,
        };
        Ok(StoredManifest {
            data,
            media_type,
            digest: d,
        })
    }

    /// Validates and stores a pushed manifest under `reference` (a tag or its digest).
    pub fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        content_type: Option<&str>,
        data: &[u8],
    ) -> Result<PutManifest, ApiError> {
        let d = Digest::of(data);
        let tag = if reference.contains(':') {
            let want = parse_digest(reference)?;
            if want != d {
                return Err(ApiError::digest_invalid(format!(
                    "manifest body hashes to {d}, not {want}"
                )));
            }
            None
        } else {
            validate_tag(reference).map_err(|e| ApiError::tag_invalid(e.to_string()))?;
            Some(reference)
        };
        let media_type = manifest_media_type(data, content_type)?;
        let refs = referenced_digests(data)?;
        let referrer = referrer_of(data, &media_type);
        let _gc = self.gc_shared()?;
        let lock = self.lock(name);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        // A manifest can only refer to blobs already pushed, so a repository that does not
        // exist yet cannot take one that refers to anything (and is not created for it).
        let layout = match (self.layout(name), refs.first()) {
            (Ok(l), _) => l,
            (Err(_), Some((r, _))) => return Err(ApiError::manifest_blob_unknown(r)),
            (Err(_), None) => self.layout_or_create(name)?,
        };
        for (r, size) in refs {
            match fs::metadata(layout.blob_path(&r)) {
                Ok(m) if m.is_file() && m.len() == size => {}
                Ok(m) if m.is_file() => {
                    return Err(ApiError::manifest_invalid(format!(
                        "descriptor {r} claims {size} bytes; the blob has {}",
                        m.len()
                    )))
                }
                _ => return Err(ApiError::manifest_blob_unknown(&r)),
            }
        }
        let before = index_digest(&layout);
        layout
            .put_manifest_bytes(data, MediaType::from(media_type.as_str()), tag)
            .map_err(ApiError::internal)?;
        let subject = referrer.as_ref().map(|r| r.subject);
        self.referrers
            .changed(name, before, index_digest(&layout), referrer, None);
        Ok(PutManifest { digest: d, subject })
    }

    /// Descriptors of the manifests in `name` whose `subject` is `subject`, in digest order.
    /// A repository that does not exist has none.
    pub fn referrers(&self, name: &str, subject: &str) -> Result<Vec<serde_json::Value>, ApiError> {
        let subject = parse_digest(subject)?;
        self.repo_dir(name)?;
        let Ok(layout) = self.layout(name) else {
            return Ok(Vec::new());
        };
        let lock = self.lock(name);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(current) = index_digest(&layout) else {
            return Ok(Vec::new());
        };
        Ok(self
            .referrers
            .lookup(name, current, &subject, || layout.listed_manifests()))
    }

    /// Sorted tags of a repository.
    pub fn tags(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let layout = self.layout(name)?;
        let mut tags: Vec<String> = layout
            .tags()
            .map_err(ApiError::internal)?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Sorted names of every repository under the root.
    pub fn catalog(&self) -> Vec<String> {
        catalog_of(&self.root)
    }

    /// Moves a verified upload into a repository's blobs (an existing copy wins).
    pub fn commit_blob(&self, name: &str, file: &Path, d: &Digest) -> Result<(), ApiError> {
        let layout = self.layout_or_create(name)?;
        let dst = layout.blob_path(d);
        let _gc = self.gc_shared()?;
        if dst.is_file() {
            let _ = fs::remove_file(file);
            // Pushed again: young again, so gc's grace period covers the manifest to come.
            touch(&dst);
            return Ok(());
        }
        fs::File::open(file)
            .and_then(|f| f.sync_all())
            .and_then(|()| fs::rename(file, &dst))
            .map_err(|e| ApiError::internal(format!("storing blob {d}: {e}")))?;
        touch(&dst);
        Ok(())
    }

    /// Makes a blob of repository `from` present in `name` (cross-repository mount).
    pub fn mount_blob(&self, name: &str, from: &str, digest: &str) -> Result<Digest, ApiError> {
        let (src, _, d) = self.blob(from, digest)?;
        let layout = self.layout_or_create(name)?;
        let dst = layout.blob_path(&d);
        let _gc = self.gc_shared()?;
        if dst.is_file() {
            touch(&dst);
            return Ok(d);
        }
        let tmp = self
            .root
            .join("_uploads")
            .join(format!("mount-{}", rand_hex()));
        fs::hard_link(&src, &tmp)
            .or_else(|_| fs::copy(&src, &tmp).map(|_| ()))
            .and_then(|()| fs::rename(&tmp, &dst))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                ApiError::internal(format!("mounting blob {d}: {e}"))
            })?;
        touch(&dst);
        Ok(d)
    }
}

/// Sets a blob's mtime to now: gc keeps blobs younger than its grace period, and a blob
/// just pushed or mounted is awaited by a manifest (a hard-linked source is touched too,
/// which only keeps it longer).
fn touch(path: &Path) {
    // futimens needs ownership, not write permission: a read-only blob is touched too.
    let r = fs::File::open(path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "cannot refresh blob mtime");
    }
}

/// Digest of a layout's `index.json` bytes (what the referrers index is checked against).
pub fn index_digest(layout: &OciLayout) -> Option<Digest> {
    read_bounded(&layout.root().join("index.json"), MAX_INDEX_JSON as usize)
        .ok()
        .map(|b| Digest::of(&b))
}

/// Sorted names of every repository under `root`.
pub fn catalog_of(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, "", 0, &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if !ft.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "blobs" || name.starts_with('_') {
            continue;
        }
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if validate_repository(&full).is_err() {
            continue;
        }
        if e.path().join("oci-layout").is_file() {
            out.push(full.clone());
        }
        walk(&e.path(), &full, depth + 1, out);
    }
}

/// A random 128-bit hex identifier.
pub fn rand_hex() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Parses a request digest; other algorithms and malformed hex are refused.
pub fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::digest_invalid(e.to_string()))
}

pub(super) fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, std::io::Error> {
    let f = fs::File::open(path)?;
    let mut data = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut data)?;
    if data.len() > max {
        return Err(std::io::Error::other("manifest too large"));
    }
    Ok(data)
}

/// The media type of a manifest: its `mediaType` field, else the request's Content-Type,
/// else inferred (an OCI document with `manifests` is an index). They must agree when both
/// are present, and the result must be a manifest type we know.
pub fn manifest_media_type(data: &[u8], content_type: Option<&str>) -> Result<String, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(data)
        .map_err(|e| ApiError::manifest_invalid(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::manifest_invalid("not a JSON object"))?;
    if obj.get("schemaVersion").and_then(|s| s.as_u64()) != Some(2) {
        return Err(ApiError::manifest_invalid("schemaVersion must be 2"));
    }
    let field = obj.get("mediaType").and_then(|m| m.as_str());
    manifest_type(field, content_type, obj.contains_key("manifests"))
        .map_err(|e| ApiError::manifest_invalid(e.to_string()))
}

/// Digests a manifest refers to (config, layers, child manifests), each validated.
pub fn referenced_digests(data: &[u8]) -> Result<Vec<(Digest, u64)>, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(data)
        .map_err(|e| ApiError::manifest_invalid(format!("not JSON: {e}")))?;
    let mut out = Vec::new();
    let mut take = |desc: &serde_json::Value| -> Result<(), ApiError> {
        let d = desc
            .get("digest")
            .and_then(|d| d.as_str())
            .ok_or_else(|| ApiError::manifest_invalid("descriptor without digest"))?;
        let size = desc.get("size").and_then(|s| s.as_i64());
        if size.is_none_or(|s| s < 0) {
            return Err(ApiError::manifest_invalid(format!(
                "descriptor {d} has no valid size"
            )));
        }
        let size = size.unwrap_or(0) as u64;
        out.push((
            d.parse::<Digest>()
                .map_err(|e| ApiError::manifest_invalid(e.to_string()))?,
            size,
        ));
        Ok(())
    };
    if let Some(c) = v.get("config") {
        take(c)?;
    }
    for key in ["layers", "manifests"] {
        if let Some(list) = v.get(key) {
            let arr = list
                .as_array()
                .ok_or_else(|| ApiError::manifest_invalid(format!("{key} is not a list")))?;
            for d in arr {
                // Foreign (non-distributable) layers are not expected to be here.
                let foreign = d
                    .get("urls")
                    .and_then(|u| u.as_array())
                    .is_some_and(|u| !u.is_empty());
                if foreign {
                    continue;
                }
                take(d)?;
            }
        }
    }
    Ok(out)
}
