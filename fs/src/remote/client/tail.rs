//! The end of a blob without knowing its size: one suffix Range GET (`Range: bytes=-N`, RFC
//! 9110 §14.1.1) answers with the last N bytes and, in `Content-Range`, the blob's size. A
//! lazy layer opened from snapshot labels has a digest but no size, and its footer and TOC
//! sit at the end: this saves the HEAD (a round trip) that would otherwise come first.
//! Anything but a plain `206` of exactly that suffix — a whole blob (`200`), a multipart
//! body, `416`, a `Content-Range` that does not add up, a body that breaks off — is "no
//! answer" (`Ok(None)`), and the caller asks for the size the usual way; errors a HEAD would
//! give too (404, auth) are returned.

use super::super::error::RemoteError;
use super::super::range_body::RangeAnswer;
use super::super::reference::Reference;
use super::{check_status, RangeReply, RegistryClient};
use crate::digest::Digest;
use reqwest::header::HeaderValue;
use reqwest::Method;

/// `bytes START-END/TOTAL` of a suffix of at most `n` bytes: `(START, TOTAL)` when the range
/// is the last `min(n, TOTAL)` bytes.
fn suffix_range(v: &str, n: u64) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let a: u64 = a.trim().parse().ok()?;
    let b: u64 = b.trim().parse().ok()?;
    let total: u64 = total.trim().parse().ok()?;
    (total > 0 && b + 1 == total && a <= b && b - a + 1 == n.min(total)).then_some((a, total))
}

impl RegistryClient {
    /// The last `n` bytes of blob `d` and the blob's size (`RangeReply::total`), in one
    /// request; `Ok(None)` when the server does not answer the suffix range plainly.
    pub async fn blob_tail(
        &self,
        r: &Reference,
        d: &Digest,
        n: u64,
        sessions: &[String],
    ) -> Result<Option<RangeReply>, RemoteError> {
        if n == 0 {
            return Ok(None);
        }
        let mut c = self.call_for(
            r,
            Method::GET,
            format!("/v2/{}/blobs/{d}", r.repository),
            sessions,
        );
        c.small = false;
        c.headers.insert(
            reqwest::header::RANGE,
            HeaderValue::from_str(&format!("bytes=-{n}"))
                .map_err(|e| RemoteError::Config(e.to_string()))?,
        );
        let mut budget = self.retry_budget();
        let reply = self.call_within(&c, &mut budget).await?;
        let status = reply.resp.status().as_u16();
        if status == 416 || (200..300).contains(&status) && status != 206 {
            tracing::debug!(blob = %d, status, "no suffix range; asking for the size");
            return Ok(None);
        }
        let mut reply = check_status(reply, &format!("blob {d}")).await?;
        let headers = reply.resp.headers();
        let multipart = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().starts_with("multipart/"));
        let range = headers
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| suffix_range(v, n));
        let Some((start, total)) = range.filter(|_| !multipart) else {
            tracing::debug!(blob = %d, url = %reply.url, "suffix range answered oddly; asking for the size");
            return Ok(None);
        };
        let len = total - start;
        let mut data = Vec::with_capacity(len as usize);
        loop {
            match reply.resp.chunk().await {
                Ok(Some(chunk)) => {
                    if data.len() as u64 + chunk.len() as u64 > len {
                        tracing::debug!(blob = %d, url = %reply.url, "suffix range body longer than its Content-Range");
                        return Ok(None);
                    }
                    data.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(blob = %d, url = %reply.url, error = %e, "suffix range body broke off; asking for the size");
                    return Ok(None);
                }
            }
        }
        if data.len() as u64 != len {
            return Ok(None);
        }
        Ok(Some(RangeReply {
            data: data.into(),
            total,
            wire_bytes: len,
            answer: RangeAnswer::Partial,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::suffix_range;

    #[test]
    fn a_suffix_must_end_the_blob_and_have_the_length_asked() {
        assert_eq!(suffix_range("bytes 90-99/100", 10), Some((90, 100)));
        // Shorter blob than the suffix: the whole blob, as RFC 9110 says.
        assert_eq!(suffix_range("bytes 0-49/50", 100), Some((0, 50)));
        assert_eq!(suffix_range("bytes 80-89/100", 10), None);
        assert_eq!(suffix_range("bytes 91-99/100", 10), None);
        assert_eq!(suffix_range("bytes 90-99/*", 10), None);
        assert_eq!(suffix_range("bytes 0-0/0", 10), None);
        assert_eq!(suffix_range("items 90-99/100", 10), None);
    }
}
