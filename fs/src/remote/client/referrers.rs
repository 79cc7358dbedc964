//! The OCI 1.1 referrers call: the descriptors of the manifests whose `subject` is a given
//! digest (signatures, SBOMs, lazy-loading indexes kept beside an image). Pages linked with
//! `Link: rel="next"` are followed (a bounded number of them); a registry without the API
//! (404) is asked for the spec's fallback tag `sha256-<hex>` instead. The server may ignore
//! the artifactType filter, so it is applied here too unless `OCI-Filters-Applied` says so.
//! Pushing a referrer to a registry that does not answer `OCI-Subject` (no referrers API)
//! adds it to the subject's fallback tag, as the distribution spec asks of clients.

use super::{check_status, header_str, read_limited, RegistryClient};
use crate::digest::Digest;
use crate::oci::{percent_encode as encode, referrer_of, MAX_MANIFEST, OCI_INDEX as INDEX};
use crate::remote::error::RemoteError;
use crate::remote::manifest::Descriptor;
use crate::remote::reference::Reference;
use reqwest::Method;
use serde::Deserialize;

/// Most pages followed for one subject.
const MAX_PAGES: usize = 64;
/// Most referrers taken for one subject.
const MAX_REFERRERS: usize = 10_000;

/// One referrer of a subject.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Referrer {
    /// Its descriptor (media type, digest, size, annotations).
    #[serde(flatten)]
    pub descriptor: Descriptor,
    /// Its artifact type, if the registry gave one.
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    manifests: Vec<Referrer>,
}

/// `r`'s repository at the spec's fallback tag of `subject`, `sha256-<hex>`.
fn fallback_reference(r: &Reference, subject: &Digest) -> Reference {
    Reference {
        tag: Some(format!("sha256-{}", subject.hex())),
        digest: None,
        ..r.clone()
    }
}

impl RegistryClient {
    /// Pushes the referrer manifest `data` by digest; when the registry does not confirm
    /// its subject with `OCI-Subject`, adds its descriptor to the subject's fallback tag
    /// index (created if missing), so clients of a registry without the referrers API find it.
    pub async fn push_referrer(
        &self,
        r: &Reference,
        media_type: &str,
        data: &[u8],
    ) -> Result<Digest, RemoteError> {
        let d = Digest::of(data);
        let (d, confirmed) = self
            .push_manifest_answer(r, &d.to_string(), media_type, data, &[])
            .await?;
        let Some(listed) = referrer_of(data, media_type) else {
            return Ok(d);
        };
        if confirmed.is_some() {
            return Ok(d);
        }
        let at = fallback_reference(r, &listed.subject);
        let tag = at.object();
        let mut index = match self.manifest(&at, &[]).await {
            Ok(m) => serde_json::from_slice::<serde_json::Value>(&m.data).map_err(|e| {
                RemoteError::protocol(format!("fallback tag {tag}"), format!("not an index: {e}"))
            })?,
            Err(RemoteError::NotFound(_)) => serde_json::json!({
                "schemaVersion": 2,
                "mediaType": INDEX,
                "manifests": [],
            }),
            Err(e) => return Err(e),
        };
        let Some(list) = index.get_mut("manifests").and_then(|m| m.as_array_mut()) else {
            return Err(RemoteError::protocol(
                format!("fallback tag {tag}"),
                "index without manifests",
            ));
        };
        let digest = d.to_string();
        if list.iter().any(|e| e["digest"] == digest.as_str()) {
            return Ok(d);
        }
        if list.len() >= MAX_REFERRERS {
            return Err(RemoteError::protocol(
                format!("fallback tag {tag}"),
                format!("already lists {MAX_REFERRERS} referrers"),
            ));
        }
        list.push(listed.descriptor);
        let body = serde_json::to_vec(&index)
            .map_err(|e| RemoteError::Config(format!("fallback index: {e}")))?;
        if body.len() > MAX_MANIFEST {
            return Err(RemoteError::protocol(
                format!("fallback tag {tag}"),
                "the index would outgrow the manifest size limit",
            ));
        }
        self.push_manifest(r, &tag, INDEX, &body, &[]).await?;
        tracing::info!(subject = %listed.subject, referrer = %d, tag, "registry has no referrers API; fallback tag updated");
        Ok(d)
    }

    /// The referrers of `subject` in `r`'s repository, filtered by `artifact_type`.
    pub async fn referrers(
        &self,
        r: &Reference,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, RemoteError> {
        let mut path = format!("/v2/{}/referrers/{subject}", r.repository);
        if let Some(a) = artifact_type {
            path.push_str("?artifactType=");
            path.push_str(&encode(a));
        }
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            let c = self.call_for(r, Method::GET, path.clone(), &[]);
            let reply = self.call(&c).await?;
            if reply.resp.status().as_u16() == 404 && out.is_empty() {
                drop(reply);
                return self.fallback_tag(r, subject, artifact_type).await;
            }
            let reply = check_status(reply, &format!("referrers of {subject}")).await?;
            let filtered = header_str(&reply.resp, "oci-filters-applied")
                .is_some_and(|h| h.split(',').any(|f| f.trim() == "artifactType"));
            let next = header_str(&reply.resp, "link").and_then(next_link);
            let url = reply.url.clone();
            let body = read_limited(reply.resp, MAX_MANIFEST, &url).await?;
            let page: Page = serde_json::from_slice(&body)
                .map_err(|e| RemoteError::protocol(&url, format!("referrers index: {e}")))?;
            for m in page.manifests {
                m.descriptor.digest()?;
                if filtered || artifact_type.is_none_or(|a| m.artifact_type.as_deref() == Some(a)) {
                    out.push(m);
                }
            }
            if out.len() > MAX_REFERRERS {
                return Err(RemoteError::protocol(
                    url,
                    format!("more than {MAX_REFERRERS} referrers of {subject}"),
                ));
            }
            match next {
                Some(n) => path = n,
                None => return Ok(out),
            }
        }
        Err(RemoteError::protocol(
            r.to_string(),
            format!("referrers of {subject} span more than {MAX_PAGES} pages"),
        ))
    }

    /// The referrers tag schema of registries without the API: an index tagged
    /// `sha256-<hex>`; none when that tag does not exist.
    async fn fallback_tag(
        &self,
        r: &Reference,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, RemoteError> {
        let tagged = fallback_reference(r, subject);
        let index = match self.manifest(&tagged, &[]).await {
            Ok(m) if m.is_index() => m,
            Ok(_) | Err(RemoteError::NotFound(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let page: Page = serde_json::from_slice(&index.data).map_err(|e| {
            RemoteError::protocol(tagged.to_string(), format!("referrers index: {e}"))
        })?;
        Ok(page
            .manifests
            .into_iter()
            .filter(|m| artifact_type.is_none_or(|a| m.artifact_type.as_deref() == Some(a)))
            .take(MAX_REFERRERS)
            .collect())
    }
}

/// The target of `Link: <…>; rel="next"` when it is a path on the same registry.
fn next_link(v: &str) -> Option<String> {
    v.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let t = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        t.starts_with("/v2/").then(|| t.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_a_path_on_the_registry() {
        assert_eq!(
            next_link("</v2/a/referrers/sha256:00?last=x>; rel=\"next\"").as_deref(),
            Some("/v2/a/referrers/sha256:00?last=x")
        );
        assert_eq!(next_link("<https://elsewhere/v2/x>; rel=\"next\""), None);
        assert_eq!(next_link("</v2/x>; rel=\"prev\""), None);
    }

    #[test]
    fn referrer_parses_with_artifact_type() {
        let r: Referrer = serde_json::from_str(
            r#"{"mediaType":"m","digest":"sha256:00","size":3,"artifactType":"x/y","annotations":{"a":"b"}}"#,
        )
        .unwrap();
        assert_eq!(r.artifact_type.as_deref(), Some("x/y"));
        assert_eq!(r.descriptor.size, 3);
    }
}
