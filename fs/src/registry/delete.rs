//! Content management of the built-in registry (served only with `--enable-delete`):
//! deleting a manifest by digest (its tags go with it, its bytes are removed, it leaves the
//! referrers index), deleting a tag (the manifest stays, untagged), and deleting a blob.
//! Space is given back by `stargaze registry gc`, which removes what no manifest needs.

use super::error::ApiError;
use super::store::{index_digest, parse_digest, read_bounded, Store};
use crate::oci::MAX_MANIFEST;
use crate::oci::REF_NAME;
use std::fs;

impl Store {
    /// `DELETE /v2/<name>/manifests/<reference>`: a digest deletes the manifest, a tag only
    /// the tag. Anything else names no manifest.
    pub fn delete_manifest(&self, name: &str, reference: &str) -> Result<(), ApiError> {
        let layout = self.layout(name)?;
        let lock = self.lock(name);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let before = index_digest(&layout);
        if !reference.contains(':') {
            return self.delete_tag(name, reference, &layout, before);
        }
        let d = parse_digest(reference).map_err(|_| ApiError::manifest_unknown(reference))?;
        let index = layout.index().map_err(ApiError::internal)?;
        let listed = index
            .manifests()
            .iter()
            .any(|m| m.digest().to_string() == d.to_string());
        let path = layout.blob_path(&d);
        if !listed {
            // An unlisted child of an index is still a manifest the registry serves.
            let is_manifest = read_bounded(&path, MAX_MANIFEST)
                .ok()
                .is_some_and(|b| super::store::manifest_media_type(&b, None).is_ok());
            if !is_manifest {
                return Err(ApiError::manifest_unknown(reference));
            }
        } else {
            layout
                .edit_index(|all| {
                    all.into_iter()
                        .filter(|m| m.digest().to_string() != d.to_string())
                        .collect()
                })
                .map_err(ApiError::internal)?;
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ApiError::internal(format!("deleting manifest {d}: {e}"))),
        }
        self.referrers
            .changed(name, before, index_digest(&layout), None, Some(&d));
        tracing::info!(repo = name, digest = %d, "manifest deleted");
        Ok(())
    }

    fn delete_tag(
        &self,
        name: &str,
        tag: &str,
        layout: &crate::image::OciLayout,
        before: Option<crate::Digest>,
    ) -> Result<(), ApiError> {
        let tags = layout.tags().map_err(ApiError::internal)?;
        let Some((_, desc)) = tags.into_iter().find(|(t, _)| t == tag) else {
            return Err(ApiError::manifest_unknown(tag));
        };
        let digest = desc.digest().to_string();
        layout
            .edit_index(|all| {
                let is_tag = |m: &oci_spec::image::Descriptor| {
                    m.annotations()
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME))
                        .is_some_and(|n| n == tag)
                };
                let mut rest: Vec<_> = all.into_iter().filter(|m| !is_tag(m)).collect();
                // The manifest stays in the repository: untagged if no other entry lists it.
                if !rest.iter().any(|m| m.digest().to_string() == digest) {
                    let mut untagged = desc.clone();
                    let annotations = desc.annotations().clone().map(|mut a| {
                        a.remove(REF_NAME);
                        a
                    });
                    untagged.set_annotations(annotations.filter(|a| !a.is_empty()));
                    rest.push(untagged);
                }
                rest
            })
            .map_err(ApiError::internal)?;
        self.referrers
            .changed(name, before, index_digest(layout), None, None);
        tracing::info!(repo = name, tag, "tag deleted");
        Ok(())
    }

    /// `DELETE /v2/<name>/blobs/<digest>`. A blob that is a listed manifest is refused:
    /// manifests are deleted through `/manifests/`, which keeps `index.json` whole.
    pub fn delete_blob(&self, name: &str, digest: &str) -> Result<(), ApiError> {
        let d = parse_digest(digest)?;
        let layout = self.layout(name)?;
        let lock = self.lock(name);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let index = layout.index().map_err(ApiError::internal)?;
        if index
            .manifests()
            .iter()
            .any(|m| m.digest().to_string() == d.to_string())
        {
            return Err(ApiError::unsupported(format!(
                "{d} is a manifest of {name}; delete it with DELETE /v2/{name}/manifests/{d}"
            )));
        }
        let path = layout.blob_path(&d);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => {}
            _ => return Err(ApiError::blob_unknown(&d)),
        }
        fs::remove_file(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ApiError::blob_unknown(&d)
            } else {
                ApiError::internal(format!("deleting blob {d}: {e}"))
            }
        })?;
        tracing::info!(repo = name, digest = %d, "blob deleted");
        Ok(())
    }
}
