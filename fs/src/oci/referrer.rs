//! The referrers descriptor of a manifest (OCI 1.1): the manifest's `subject`, and the
//! descriptor a referrers response lists for it (media type, digest, size, artifact type,
//! annotations). The registry indexes it; the client and image copy add it to a subject's
//! fallback tag for registries without the referrers API.

use crate::digest::Digest;

/// What a manifest with a `subject` contributes to a referrers index or listing.
#[derive(Debug, Clone)]
pub struct ReferrerEntry {
    /// The manifest's `subject` digest.
    pub subject: Digest,
    /// Its descriptor as listed in a referrers response.
    pub descriptor: serde_json::Value,
}

/// Reads a manifest's `subject` and builds its referrers descriptor; `None` for manifests
/// without a (valid) subject. `media_type` is the type the manifest is stored under.
pub fn referrer_of(data: &[u8], media_type: &str) -> Option<ReferrerEntry> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let subject = v.get("subject")?.get("digest")?.as_str()?.parse().ok()?;
    let mut desc = serde_json::json!({
        "mediaType": media_type,
        "digest": Digest::of(data).to_string(),
        "size": data.len(),
    });
    // The spec: the manifest's artifactType, else (image manifests) its config's mediaType.
    let artifact_type = v
        .get("artifactType")
        .and_then(|a| a.as_str())
        .or_else(|| v.get("config")?.get("mediaType")?.as_str());
    if let Some(a) = artifact_type {
        desc["artifactType"] = serde_json::Value::String(a.to_string());
    }
    if let Some(a) = v.get("annotations").filter(|a| a.is_object()) {
        desc["annotations"] = a.clone();
    }
    Some(ReferrerEntry {
        subject,
        descriptor: desc,
    })
}

/// A descriptor's `artifactType`, if any.
pub fn artifact_type(desc: &serde_json::Value) -> Option<&str> {
    desc.get("artifactType").and_then(|a| a.as_str())
}

/// A test artifact manifest of type `kind` whose subject is [`TEST_SUBJECT`], annotated `k=v`.
#[cfg(test)]
pub(crate) fn test_artifact(kind: &str) -> Vec<u8> {
    let m = crate::oci::OCI_MANIFEST;
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": m,
        "config": {"mediaType": crate::oci::OCI_EMPTY, "digest": TEST_SUBJECT, "size": 2},
        "layers": [],
        "artifactType": kind,
        "subject": {"mediaType": m, "digest": TEST_SUBJECT, "size": 10},
        "annotations": {"k": "v"}
    })
    .to_string()
    .into_bytes()
}

/// The subject of [`test_artifact`].
#[cfg(test)]
pub(crate) const TEST_SUBJECT: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::OCI_MANIFEST as MANIFEST;
    use test_artifact as artifact;
    use TEST_SUBJECT as SUBJECT;

    #[test]
    fn descriptor_takes_artifact_type_then_config_type() {
        let r = referrer_of(&artifact("x/sig"), MANIFEST).unwrap();
        assert_eq!(r.subject.to_string(), SUBJECT);
        assert_eq!(artifact_type(&r.descriptor), Some("x/sig"));
        assert_eq!(r.descriptor["annotations"]["k"], "v");
        let plain = br#"{"schemaVersion":2,"config":{"mediaType":"x/cfg","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1},"layers":[],"subject":{"mediaType":"m","digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111","size":1}}"#;
        let r = referrer_of(plain, MANIFEST).unwrap();
        assert_eq!(artifact_type(&r.descriptor), Some("x/cfg"));
        assert!(referrer_of(br#"{"schemaVersion":2}"#, MANIFEST).is_none());
        assert!(referrer_of(br#"{"subject":{"digest":"md5:00"}}"#, MANIFEST).is_none());
    }
}
