//! The body of a referrers answer: an OCI image index of the referrers' descriptors,
//! filtered by `?artifactType=` (then saying so in `OCI-Filters-Applied`), and cut into
//! pages of bounded size linked with `Link: <…?last=DIGEST>; rel="next"`, so a subject with
//! very many referrers never makes one huge response.

use super::error::ApiError;
use super::http::{json, Body};
use crate::oci::{artifact_type, percent_encode as encode, OCI_INDEX as INDEX};
use hyper::header::HeaderValue;
use hyper::Response;

/// Most descriptors in one page.
const MAX_ENTRIES: usize = 1000;
/// Most descriptor bytes in one page (the index stays well under a manifest's limit).
const MAX_BYTES: usize = 2 << 20;

/// Answers `GET /v2/<name>/referrers/<subject>` from `all` (in digest order).
pub fn respond(
    query: &[(String, String)],
    name: &str,
    subject: &str,
    all: Vec<serde_json::Value>,
) -> Result<Response<Body>, ApiError> {
    let wanted: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "artifactType")
        .map(|(_, v)| v.as_str())
        .collect();
    let last = query
        .iter()
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.as_str());
    let digest_of = |d: &serde_json::Value| d["digest"].as_str().unwrap_or("").to_string();
    let mut page = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    for d in all.into_iter().filter(|d| {
        (wanted.is_empty() || artifact_type(d).is_some_and(|a| wanted.contains(&a)))
            && last.is_none_or(|l| digest_of(d).as_str() > l)
    }) {
        let size = d.to_string().len();
        if page.len() >= MAX_ENTRIES || (!page.is_empty() && bytes + size > MAX_BYTES) {
            more = true;
            break;
        }
        bytes += size;
        page.push(d);
    }
    let next = more.then(|| page.last().map(digest_of)).flatten();
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": page,
    });
    let mut resp = json(200, doc.to_string().into_bytes())?;
    let h = resp.headers_mut();
    h.insert("Content-Type", HeaderValue::from_static(INDEX));
    if !wanted.is_empty() {
        h.insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    if let Some(l) = next {
        let mut link = format!("</v2/{name}/referrers/{subject}?last={}", encode(&l));
        for w in &wanted {
            link.push_str(&format!("&artifactType={}", encode(w)));
        }
        link.push_str(">; rel=\"next\"");
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.insert("Link", v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn desc(i: usize, kind: &str) -> serde_json::Value {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{i:064x}"),
            "size": 10,
            "artifactType": kind,
        })
    }

    fn body(r: Response<Body>) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    #[test]
    fn filters_and_pages() {
        let all: Vec<_> = (0..2500)
            .map(|i| desc(i, if i % 2 == 0 { "a/x+y" } else { "b" }))
            .collect();
        let q = vec![("artifactType".to_string(), "a/x+y".to_string())];
        let r = respond(&q, "r", "sha256:00", all.clone()).unwrap();
        assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
        let link = r.headers()["link"].to_str().unwrap().to_string();
        assert!(link.contains("artifactType=a%2Fx%2By"), "{link}");
        let v = body(r);
        assert_eq!(v["manifests"].as_array().unwrap().len(), MAX_ENTRIES);
        assert!(v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["artifactType"] == "a/x+y"));
        let last = format!("sha256:{:064x}", 2 * (MAX_ENTRIES - 1));
        let q2 = vec![q[0].clone(), ("last".to_string(), last)];
        let r = respond(&q2, "r", "sha256:00", all.clone()).unwrap();
        assert!(r.headers().get("link").is_none());
        assert_eq!(body(r)["manifests"].as_array().unwrap().len(), 250);
        let r = respond(&[], "r", "sha256:00", all[..3].to_vec()).unwrap();
        assert!(r.headers().get("oci-filters-applied").is_none());
        assert_eq!(r.headers()["content-type"], INDEX);
        assert_eq!(body(r)["manifests"].as_array().unwrap().len(), 3);
    }
}
