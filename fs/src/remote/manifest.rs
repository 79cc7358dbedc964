//! Manifests as fetched: raw bytes kept exactly (their digest is their identity), checked
//! against the digest asked for, the registry's `Docker-Content-Digest`, the descriptor's
//! size and the media type the registry claims, then parsed just enough to walk: config,
//! layers, or the child manifests of an index.

use super::error::RemoteError;
use super::platform::Platform;
use crate::digest::Digest;
use crate::oci::{manifest_type, DOCKER_LIST, OCI_INDEX};
use serde::Deserialize;

/// A descriptor as found in manifests.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Content digest (validated when used).
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::HashMap<String, String>>,
    /// Platform, in index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescPlatform>,
    /// Foreign-layer URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct DescPlatform {
    /// OS.
    pub os: String,
    /// Architecture.
    pub architecture: String,
    /// Variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Descriptor {
    /// The validated digest.
    pub fn digest(&self) -> Result<Digest, RemoteError> {
        self.digest.parse().map_err(|e| RemoteError::Protocol {
            url: "manifest".into(),
            reason: format!("descriptor digest: {e}"),
        })
    }
}

#[derive(Debug, Deserialize)]
struct Doc {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// A fetched, checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Exact bytes.
    pub data: Vec<u8>,
    /// Media type.
    pub media_type: String,
    /// Digest of the bytes.
    pub digest: Digest,
    /// Config descriptor (image manifests).
    pub config: Option<Descriptor>,
    /// Layers (image manifests).
    pub layers: Vec<Descriptor>,
    /// Children (indexes).
    pub manifests: Vec<Descriptor>,
}

impl Manifest {
    /// Whether this is an index / manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }

    /// Parses and checks manifest bytes. `content_type` is what the server said,
    /// `expected` the digest asked for (or announced).
    pub fn parse(
        data: Vec<u8>,
        content_type: Option<&str>,
        expected: Option<&Digest>,
        what: &str,
    ) -> Result<Self, RemoteError> {
        let digest = Digest::of(&data);
        if let Some(e) = expected {
            if *e != digest {
                return Err(RemoteError::Digest {
                    what: what.to_string(),
                    expected: e.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        let bad = |reason: String| RemoteError::protocol(what, reason);
        let doc: Doc = serde_json::from_slice(&data)
            .map_err(|e| bad(format!("manifest is not valid JSON: {e}")))?;
        if doc.schema_version != Some(2) {
            return Err(bad("manifest schemaVersion is not 2".into()));
        }
        let media_type = manifest_type(
            doc.media_type.as_deref(),
            content_type,
            doc.manifests.is_some(),
        )
        .map_err(|e| bad(e.to_string()))?;
        let is_index = media_type == OCI_INDEX || media_type == DOCKER_LIST;
        let m = Manifest {
            data,
            digest,
            config: doc.config,
            layers: doc.layers.unwrap_or_default(),
            manifests: doc.manifests.unwrap_or_default(),
            media_type,
        };
        if is_index && (m.config.is_some() || !m.layers.is_empty()) {
            return Err(bad("an index must not have config or layers".into()));
        }
        if !is_index && m.config.is_none() {
            return Err(bad("image manifest has no config".into()));
        }
        for d in m.config.iter().chain(&m.layers).chain(&m.manifests) {
            d.digest()?;
        }
        Ok(m)
    }

    /// The child manifest of an index for `platform`.
    pub fn select(&self, platform: &Platform, reference: &str) -> Result<Descriptor, RemoteError> {
        self.manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
            })
            .cloned()
            .ok_or_else(|| RemoteError::Platform {
                reference: reference.to_string(),
                platform: platform.to_string(),
                available: self
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref())
                    .map(|p| match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}
