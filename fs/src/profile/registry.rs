//! A profile beside its image in the registry: an OCI image manifest with `artifactType`
//! [`PROFILE_MEDIA_TYPE`], the empty config (`{}`), one layer (the profile document) and
//! `subject` = the image manifest, pushed as a referrer (the client adds it to the subject's
//! fallback tag `sha256-<hex>` when the registry has no referrers API). A cold start finds
//! it with one referrers request (or one fallback-tag request), then fetches that manifest
//! and the blob, each bounded in size and checked against its digest; the newest by the
//! `org.opencontainers.image.created` annotation wins when there are several.

use super::format::{Profile, MAX_DOC_BYTES, PROFILE_MEDIA_TYPE};
use super::ProfileError;
use crate::digest::Digest;
use crate::oci::{OCI_EMPTY, OCI_MANIFEST};
use crate::remote::{Manifest, Reference, RegistryClient};
use std::io::Write;

/// The annotation that orders several profiles of one image (RFC 3339, UTC).
pub const PROFILE_CREATED: &str = "org.opencontainers.image.created";

/// The profile published for image manifest `subject` in `r`'s repository, if any.
pub async fn lookup(
    client: &RegistryClient,
    r: &Reference,
    subject: &Digest,
    sessions: &[String],
) -> Result<Option<Profile>, ProfileError> {
    let found = client
        .referrers(r, subject, Some(PROFILE_MEDIA_TYPE))
        .await?;
    let created = |a: &crate::remote::Referrer| {
        a.descriptor
            .annotations
            .as_ref()
            .and_then(|m| m.get(PROFILE_CREATED).cloned())
            .unwrap_or_default()
    };
    // The newest; among equals the last listed.
    let Some(best) = found.iter().max_by(|a, b| created(a).cmp(&created(b))) else {
        return Ok(None);
    };
    let m = client
        .manifest_by_descriptor(r, &best.descriptor, sessions)
        .await?;
    let bad = |reason| ProfileError::Artifact {
        digest: m.digest,
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&m.data).map_err(|_| bad("manifest is not JSON"))?;
    if v.get("artifactType").and_then(|a| a.as_str()) != Some(PROFILE_MEDIA_TYPE) {
        return Err(bad("artifactType is not a prefetch profile"));
    }
    if v.get("subject")
        .and_then(|s| s.get("digest"))
        .and_then(|d| d.as_str())
        != Some(subject.to_string().as_str())
    {
        return Err(bad("subject is not this image"));
    }
    let [layer] = m.layers.as_slice() else {
        return Err(bad("not exactly one layer"));
    };
    if layer.media_type != PROFILE_MEDIA_TYPE {
        return Err(bad("layer is not a prefetch profile"));
    }
    if layer.size > MAX_DOC_BYTES as u64 {
        return Err(ProfileError::TooLarge(layer.size));
    }
    let digest = layer.digest()?;
    if layer.size == 0 {
        return Err(bad("empty profile blob"));
    }
    let blob = client
        .blob_range(r, &digest, 0, layer.size, sessions)
        .await?;
    if blob.data.len() as u64 != layer.size || Digest::of(&blob.data) != digest {
        return Err(bad("profile blob does not match its descriptor"));
    }
    Profile::parse(&blob.data).map(Some)
}

/// Publishes `profile` for image manifest `subject` in `r`'s repository; returns the
/// artifact manifest's digest.
pub async fn push(
    client: &RegistryClient,
    r: &Reference,
    subject: &Manifest,
    profile: &Profile,
) -> Result<Digest, ProfileError> {
    let doc = profile.to_bytes();
    let empty = b"{}".to_vec();
    for data in [&doc, &empty] {
        let d = Digest::of(data);
        let mut tmp = tempfile::NamedTempFile::new().map_err(|source| ProfileError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        tmp.write_all(data).map_err(|source| ProfileError::Io {
            path: tmp.path().to_path_buf(),
            source,
        })?;
        client
            .push_blob(r, &d, tmp.path(), data.len() as u64, &[])
            .await?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": PROFILE_MEDIA_TYPE,
        "config": {"mediaType": OCI_EMPTY, "digest": Digest::of(&empty).to_string(), "size": empty.len()},
        "layers": [{"mediaType": PROFILE_MEDIA_TYPE, "digest": Digest::of(&doc).to_string(), "size": doc.len()}],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest.to_string(), "size": subject.data.len()},
        "annotations": {PROFILE_CREATED: crate::format::time::format_rfc3339(now)},
    });
    let data = serde_json::to_vec(&manifest).unwrap_or_default();
    Ok(client.push_referrer(r, OCI_MANIFEST, &data).await?)
}
