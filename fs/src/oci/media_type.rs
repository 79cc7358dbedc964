//! Media types of manifests, configs and layers, and the one rule deciding a manifest's
//! type from its `mediaType` field and the Content-Type it travelled with (used by the
//! registry on PUT and by the client on GET).

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Manifest media types stored, served and fetched.
pub const MANIFEST_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
/// The `Accept` header of a manifest GET: every type of [`MANIFEST_TYPES`].
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The OCI empty descriptor's type (`{}`), the config of artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// Uncompressed OCI layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip OCI layer (eStargz is one).
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// zstd OCI layer (zstd:chunked is one).
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker's gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Non-distributable gzip OCI layer.
pub const OCI_LAYER_NONDISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

/// Why a manifest's media type could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestTypeError {
    /// The document's `mediaType` and the Content-Type name different manifest types.
    #[error("manifest says mediaType {field:?} but was served as {content_type:?}")]
    Disagree {
        /// The document's `mediaType`.
        field: String,
        /// The Content-Type it came with.
        content_type: String,
    },
    /// The type is not one of [`MANIFEST_TYPES`].
    #[error("unsupported manifest media type {0:?}")]
    Unsupported(String),
}

/// The media type of a manifest: its `mediaType` field, else the Content-Type it came with
/// (parameters dropped; ignored unless it names a manifest type), else inferred (a document
/// with `manifests` is an OCI index, any other an OCI manifest). Field and Content-Type must
/// agree when both are present, and the result must be one of [`MANIFEST_TYPES`].
///
/// ```
/// use stargaze_fs::oci::{manifest_type, OCI_INDEX, OCI_MANIFEST};
/// assert_eq!(manifest_type(None, Some("application/vnd.oci.image.index.v1+json; x=y"), false), Ok(OCI_INDEX.to_string()));
/// assert_eq!(manifest_type(None, Some("text/plain"), false), Ok(OCI_MANIFEST.to_string()));
/// assert!(manifest_type(Some("text/plain"), None, false).is_err());
/// ```
pub fn manifest_type(
    field: Option<&str>,
    content_type: Option<&str>,
    has_manifests: bool,
) -> Result<String, ManifestTypeError> {
    let served = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| MANIFEST_TYPES.contains(c));
    let t = match (field, served) {
        (Some(f), Some(c)) if f != c => {
            return Err(ManifestTypeError::Disagree {
                field: f.to_string(),
                content_type: c.to_string(),
            })
        }
        (Some(f), _) => f,
        (None, Some(c)) => c,
        (None, None) if has_manifests => OCI_INDEX,
        (None, None) => OCI_MANIFEST,
    };
    if !MANIFEST_TYPES.contains(&t) {
        return Err(ManifestTypeError::Unsupported(t.to_string()));
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_lists_every_manifest_type() {
        let listed: Vec<&str> = MANIFEST_ACCEPT.split(", ").collect();
        assert_eq!(listed, MANIFEST_TYPES);
    }

    #[test]
    fn field_wins_and_must_agree() {
        assert_eq!(
            manifest_type(Some(DOCKER_MANIFEST), None, false),
            Ok(DOCKER_MANIFEST.to_string())
        );
        assert_eq!(
            manifest_type(Some(OCI_INDEX), Some(OCI_INDEX), false),
            Ok(OCI_INDEX.to_string())
        );
        assert!(matches!(
            manifest_type(Some(OCI_INDEX), Some(OCI_MANIFEST), true),
            Err(ManifestTypeError::Disagree { .. })
        ));
        assert_eq!(manifest_type(None, None, true), Ok(OCI_INDEX.to_string()));
        assert_eq!(
            manifest_type(Some("application/json"), Some("text/html"), false),
            Err(ManifestTypeError::Unsupported("application/json".into()))
        );
    }
}
