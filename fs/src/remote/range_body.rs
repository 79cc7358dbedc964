//! One blob range as a stream of bytes, whatever the server does with the `Range` header.
//!
//! Registries answer `206` with the range; pull-through caches answering for a blob they have
//! not cached yet, and servers or CDNs that ignore `Range`, answer `200` with the whole blob;
//! some answer `206` as `multipart/byteranges`. [`RangeStream`] hands out exactly the bytes
//! asked for in all three cases, in order, as they arrive: nothing is buffered beyond one body
//! chunk (and one part header of at most [`MAX_PART_HEAD`] bytes), the prefix of a whole blob
//! is read and dropped, and the stream stops reading once the last wanted byte has come, so
//! dropping it closes the connection instead of draining a blob.

use super::client::{parse_content_range, Reply};
use super::error::RemoteError;
use bytes::Bytes;

/// Largest header block of one `multipart/byteranges` part accepted.
pub const MAX_PART_HEAD: usize = 16 << 10;

/// How the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// `206` with the range itself.
    Partial,
    /// `206` with a `multipart/byteranges` body.
    Multipart,
    /// `200` with the whole blob: the server ignored `Range`.
    Whole,
}

enum Framing {
    Direct,
    /// Bytes of the part header seen so far, until the body of the first part starts.
    PartHead {
        boundary: Vec<u8>,
        seen: Vec<u8>,
    },
}

/// Bytes `start..=end` of a blob, from a response to a Range GET.
pub struct RangeStream {
    reply: Reply,
    start: u64,
    end: u64,
    total: u64,
    answer: RangeAnswer,
    framing: Framing,
    /// Body bytes still to drop before the wanted ones.
    skip: u64,
    /// Wanted bytes not handed out yet.
    left: u64,
    pending: Option<Bytes>,
    wire: u64,
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply.resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The boundary of a `multipart/byteranges` content type, if it is one.
fn multipart_boundary(content_type: &str) -> Option<Vec<u8>> {
    let mut parts = content_type.split(';');
    let kind = parts.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 200).then(|| v.as_bytes().to_vec())
    })
}

/// `bytes A-B/TOTAL` → (A, B, TOTAL).
fn parse_part_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let total: u64 = total.trim().parse().ok()?;
    (a <= b && b < total).then_some((a, b, total))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

impl RangeStream {
    /// Reads the answer to a GET of `start..=end` (the status is already known to be 2xx).
    pub(crate) fn new(reply: Reply, start: u64, end: u64) -> Result<Self, RemoteError> {
        let url = reply.url.clone();
        let status = reply.resp.status().as_u16();
        let len = end - start + 1;
        let (answer, framing, total, skip) = match status {
            206 => {
                let boundary = header(&reply, "content-type").and_then(multipart_boundary);
                match boundary {
                    Some(boundary) => (
                        RangeAnswer::Multipart,
                        Framing::PartHead {
                            boundary,
                            seen: Vec::new(),
                        },
                        0,
                        0,
                    ),
                    None => {
                        let cr = header(&reply, "content-range").ok_or_else(|| {
                            RemoteError::protocol(&url, "206 without Content-Range")
                        })?;
                        let total = parse_content_range(cr, start, end).map_err(|e| {
                            RemoteError::protocol(&url, format!("Content-Range {cr:?}: {e}"))
                        })?;
                        if let Some(n) = reply.resp.content_length() {
                            if n != len {
                                return Err(RemoteError::protocol(
                                    &url,
                                    format!("asked for {len} bytes, Content-Length says {n}"),
                                ));
                            }
                        }
                        (RangeAnswer::Partial, Framing::Direct, total, 0)
                    }
                }
            }
            200 => {
                let total = reply.resp.content_length().ok_or_else(|| {
                    RemoteError::protocol(
                        &url,
                        "the server ignores Range and does not say how long the blob is",
                    )
                })?;
                if end >= total {
                    return Err(RemoteError::protocol(
                        &url,
                        format!("asked for bytes {start}-{end} of a blob of {total} bytes"),
                    ));
                }
                (RangeAnswer::Whole, Framing::Direct, total, start)
            }
            s => {
                return Err(RemoteError::protocol(
                    &url,
                    format!("asked for bytes {start}-{end} but got HTTP {s}"),
                ))
            }
        };
        Ok(RangeStream {
            reply,
            start,
            end,
            total,
            answer,
            framing,
            skip,
            left: len,
            pending: None,
            wire: 0,
        })
    }

    /// How the server answered.
    pub fn answer(&self) -> RangeAnswer {
        self.answer
    }

    /// The blob's size as the server states it (known once the first part header is read
    /// for a multipart answer, else from the start).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Body bytes read from the network so far (dropped prefixes included).
    pub fn wire_bytes(&self) -> u64 {
        self.wire
    }

    /// The URL answered from, for messages.
    pub fn url(&self) -> &str {
        &self.reply.url
    }

    async fn body_chunk(&mut self) -> Result<Bytes, RemoteError> {
        if let Some(p) = self.pending.take() {
            return Ok(p);
        }
        let url = &self.reply.url;
        match self.reply.resp.chunk().await {
            Ok(Some(c)) => {
                self.wire += c.len() as u64;
                Ok(c)
            }
            // A body cut short is a broken connection: worth a retry.
            Ok(None) => Err(RemoteError::Transport {
                url: url.clone(),
                reason: format!(
                    "body ended {} bytes before the end of bytes {}-{}",
                    self.left, self.start, self.end
                ),
            }),
            Err(e) => Err(RemoteError::Transport {
                url: url.clone(),
                reason: super::client::flatten_error(&e),
            }),
        }
    }

    /// Reads the first part's header; sets `skip`, `total` and leaves its body in `pending`.
    fn part_head(&mut self, boundary: &[u8], seen: &[u8]) -> Result<Option<Bytes>, RemoteError> {
        let url = self.reply.url.clone();
        let mut delim = b"--".to_vec();
        delim.extend_from_slice(boundary);
        let Some(b) = find(seen, &delim) else {
            return if seen.len() > MAX_PART_HEAD {
                Err(RemoteError::protocol(
                    &url,
                    "multipart answer without its boundary",
                ))
            } else {
                Ok(None)
            };
        };
        let after = &seen[b + delim.len()..];
        let Some(h) = find(after, b"\r\n\r\n") else {
            return if seen.len() > MAX_PART_HEAD {
                Err(RemoteError::protocol(
                    &url,
                    "multipart part header too long",
                ))
            } else {
                Ok(None)
            };
        };
        let head = String::from_utf8_lossy(&after[..h]);
        let range = head
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-range"))
            .and_then(|(_, v)| parse_part_range(v))
            .ok_or_else(|| {
                RemoteError::protocol(&url, "multipart part without a valid Content-Range")
            })?;
        let (a, b_end, total) = range;
        if a > self.start || b_end < self.end {
            return Err(RemoteError::protocol(
                &url,
                format!(
                    "asked for bytes {}-{}, the first part holds {a}-{b_end}",
                    self.start, self.end
                ),
            ));
        }
        self.total = total;
        self.skip = self.start - a;
        Ok(Some(Bytes::copy_from_slice(&after[h + 4..])))
    }

    /// The next wanted bytes, or `None` once all of them have come.
    pub async fn next(&mut self) -> Result<Option<Bytes>, RemoteError> {
        loop {
            if self.left == 0 {
                return Ok(None);
            }
            let mut chunk = self.body_chunk().await?;
            if let Framing::PartHead { boundary, seen } = &mut self.framing {
                seen.extend_from_slice(&chunk);
                let (boundary, seen) = (boundary.clone(), std::mem::take(seen));
                match self.part_head(&boundary, &seen)? {
                    Some(body) => {
                        self.framing = Framing::Direct;
                        self.pending = (!body.is_empty()).then_some(body);
                    }
                    None => self.framing = Framing::PartHead { boundary, seen },
                }
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(chunk.len() as u64);
                self.skip -= n;
                chunk = chunk.slice(n as usize..);
                if chunk.is_empty() {
                    continue;
                }
            }
            let take = self.left.min(chunk.len() as u64) as usize;
            self.left -= take as u64;
            return Ok(Some(chunk.slice(..take)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_and_part_ranges() {
        assert_eq!(
            multipart_boundary("multipart/byteranges; boundary=THIS_STRING"),
            Some(b"THIS_STRING".to_vec())
        );
        assert_eq!(
            multipart_boundary("Multipart/ByteRanges;boundary=\"q\""),
            Some(b"q".to_vec())
        );
        assert_eq!(multipart_boundary("application/octet-stream"), None);
        assert_eq!(multipart_boundary("multipart/byteranges"), None);
        assert_eq!(parse_part_range("bytes 5-9/100"), Some((5, 9, 100)));
        assert_eq!(parse_part_range("bytes 9-5/100"), None);
        assert_eq!(parse_part_range("bytes 5-100/100"), None);
        assert_eq!(find(b"abc--b\r\n", b"--b"), Some(3));
    }
}
