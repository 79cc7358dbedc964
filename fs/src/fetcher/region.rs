//! One region of a layer blob, fetched: the planned Range requests run at once, each body
//! is streamed through a frame window and every chunk's frame is decoded and verified off
//! the async threads as soon as it has arrived. A chunk that fails verification is fetched
//! once more alone, then reported, never served or cached. A body that breaks off is resumed
//! from the first byte still needed.

use super::blob::size_mismatch;
use super::chunks::Fetcher;
use super::plan::plan;
use super::timeline::{now_ms, EventKind};
use super::window::FrameWindow;
use super::FetchError;
use crate::cache::VerifiedChunk;
use crate::format::{decode_chunk, Chunk, FormatError};
use crate::remote::{RangeAnswer, RangeStream, RemoteError, RetryBudget};
use bytes::Bytes;
use std::sync::atomic::Ordering;

impl Fetcher {
    /// Fetches and verifies `mine` (indices into the caller's list), merging neighbours.
    /// Returns one result per entry, in the same order.
    pub(super) async fn fetch(
        &self,
        file: &str,
        mine: &[(usize, &Chunk)],
        speculative: bool,
    ) -> Vec<Result<Bytes, FetchError>> {
        // A server that sends whole blobs for ranges sends every byte before a region too:
        // one request for all of them costs no more than the one for the farthest.
        let (merge_gap, max_request) = if self.honours_ranges() {
            (self.opts.merge_gap, self.opts.max_request)
        } else {
            (u64::MAX, u64::MAX)
        };
        let chunks: Vec<&Chunk> = mine.iter().map(|(_, c)| *c).collect();
        let regions = plan(&chunks, merge_gap, max_request);
        let futs = regions
            .iter()
            .map(|g| self.fetch_region(file, g, mine, speculative));
        let done = futures_util::future::join_all(futs).await;
        let mut results: Vec<Option<Result<Bytes, FetchError>>> =
            (0..mine.len()).map(|_| None).collect();
        for region in done {
            for (k, r) in region {
                results[k] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(FetchError::Internal("chunk left unfetched".into()))))
            .collect()
    }

    async fn fetch_region(
        &self,
        file: &str,
        region: &super::plan::Region,
        mine: &[(usize, &Chunk)],
        speculative: bool,
    ) -> Vec<(usize, Result<Bytes, FetchError>)> {
        let (start, end, members) = (region.start, region.end, &region.members[..]);
        let began = std::time::Instant::now();
        let began_ms = now_ms();
        let mut wire = WireTally::default();
        let streamed = self
            .stream_region(file, start, end, members, mine, &mut wire)
            .await;
        self.counters.latency.observe(began.elapsed());
        let kind = if speculative {
            EventKind::Speculative
        } else {
            EventKind::Request
        };
        self.timeline
            .record(kind, file, began_ms, wire.first_byte_ms, wire.bytes);
        tracing::debug!(
            layer = %self.blob.digest,
            file,
            start,
            len = end - start,
            chunks = members.len(),
            ms = began.elapsed().as_millis() as u64,
            ok = streamed.is_ok(),
            "range request"
        );
        let decodes = match streamed {
            Ok(d) => d,
            Err(e) => {
                // The first chunk carries the error itself, the others its message.
                let msg = e.to_string();
                let mut first = Some(e);
                return members
                    .iter()
                    .map(|&k| {
                        let err = match first.take() {
                            Some(e) => FetchError::Remote(e),
                            None => FetchError::Shared(msg.clone()),
                        };
                        (k, Err(err))
                    })
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(members.len());
        for (k, handle) in decodes {
            let c = mine[k].1;
            let mut r = self.finish_decode(handle).await;
            if let Err(FetchError::Verify(e)) = &r {
                self.counters
                    .verify_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(layer = %self.blob.digest, file, offset = c.file_offset, error = %e, "chunk failed verification; refetching it");
                r = match self.get(c.blob_offset, c.blob_end - c.blob_offset).await {
                    Ok(frame) => self.decode(file, c, frame).await,
                    Err(e) => Err(FetchError::Remote(e)),
                };
                if let Err(e) = &r {
                    tracing::error!(layer = %self.blob.digest, file, offset = c.file_offset, error = %e, "chunk failed again; not serving it");
                }
            }
            out.push((k, r));
        }
        out
    }

    /// Streams blob bytes `start..end` and starts each member's decode as soon as its frame
    /// has arrived, so chunks decode (in parallel) while later ones are still on the wire and
    /// only the frames not complete yet are held, never the whole region. A body that breaks
    /// off is resumed from the first byte still needed, under the same retry budget as the
    /// requests (one budget per region, however requests and bodies fail).
    async fn stream_region(
        &self,
        file: &str,
        start: u64,
        end: u64,
        members: &[usize],
        mine: &[(usize, &Chunk)],
        tally: &mut WireTally,
    ) -> Result<Vec<(usize, DecodeHandle)>, RemoteError> {
        let mut window = FrameWindow::new(start);
        let mut next = 0usize;
        let mut handles = Vec::with_capacity(members.len());
        let mut budget = self.blob.client.retry_budget();
        while next < members.len() {
            if window.buf.is_empty() {
                // Nothing held: a resumed request starts at the next frame, not in a hole.
                window.pos = window.pos.max(mine[members[next]].1.blob_offset);
            }
            let from = window.pos;
            let mut stream = self.open(from, end - from, &mut budget).await?;
            let mut counted = 0u64;
            let broke = loop {
                let got = stream.next().await;
                let wire = stream.wire_bytes();
                self.counters
                    .bytes_fetched
                    .fetch_add(wire - counted, Ordering::Relaxed);
                tally.bytes += wire - counted;
                if wire > counted && tally.first_byte_ms.is_none() {
                    tally.first_byte_ms = Some(now_ms());
                }
                counted = wire;
                match got {
                    Ok(Some(bytes)) => {
                        window.push(&bytes);
                        while next < members.len() {
                            let c = mine[members[next]].1;
                            let Some(frame) = window.frame(c.blob_offset, c.blob_end) else {
                                break;
                            };
                            handles.push((members[next], self.start_decode(file, c, frame)));
                            next += 1;
                        }
                        let keep = members.get(next).map_or(end, |&k| mine[k].1.blob_offset);
                        window.drop_before(keep);
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            match broke {
                None if next < members.len() => {
                    return Err(RemoteError::Transport {
                        url: stream.url().to_string(),
                        reason: "range ended before its last chunk".into(),
                    })
                }
                None => {}
                Some(e) if e.is_transient() => match budget.retry_body() {
                    Some(wait) => {
                        tracing::debug!(layer = %self.blob.digest, at = window.pos, error = %e, "range body broke off; resuming");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e),
                },
                Some(e) => return Err(e),
            }
        }
        Ok(handles)
    }

    /// Opens a range stream, checking the registry's idea of the blob's size.
    async fn open(
        &self,
        offset: u64,
        len: u64,
        budget: &mut RetryBudget,
    ) -> Result<RangeStream, RemoteError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let b = &self.blob;
        let stream = b
            .client
            .blob_range_stream(
                &b.reference,
                &b.digest,
                offset,
                len,
                &b.sessions.ids(),
                budget,
            )
            .await?;
        if stream.answer() == RangeAnswer::Whole {
            self.counters
                .whole_blob_answers
                .fetch_add(1, Ordering::Relaxed);
        }
        if stream.answer() != RangeAnswer::Multipart && stream.total() != b.size {
            return Err(size_mismatch(&b.digest, stream.total(), b.size));
        }
        Ok(stream)
    }

    /// Decodes and verifies one chunk on the blocking pool and caches it there too: the disk
    /// tier writes and fsyncs a file per chunk (milliseconds each on a busy disk), which must
    /// not stall an async thread, nor be paid one chunk after another once a region of many
    /// small files has arrived.
    fn start_decode(&self, file: &str, c: &Chunk, frame: Bytes) -> DecodeHandle {
        let (comp, file_s, chunk) = (self.compression, file.to_string(), c.clone());
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || {
            let data: Bytes = decode_chunk(comp, &file_s, &chunk, &frame)?.into();
            if let Some(d) = chunk.digest {
                cache.put(&VerifiedChunk::already_verified(d, data.clone()));
            }
            Ok(data)
        })
    }

    async fn finish_decode(&self, handle: DecodeHandle) -> Result<Bytes, FetchError> {
        handle
            .await
            .map_err(|e| FetchError::Internal(e.to_string()))?
            .map_err(FetchError::Verify)
    }

    async fn get(&self, offset: u64, len: u64) -> Result<bytes::Bytes, RemoteError> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let r = self.blob.range(offset, len).await?;
        self.counters
            .bytes_fetched
            .fetch_add(r.wire_bytes, Ordering::Relaxed);
        if r.answer == RangeAnswer::Whole {
            self.counters
                .whole_blob_answers
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(r.data)
    }

    /// Decompresses and verifies one chunk off the async threads, then caches it.
    async fn decode(&self, file: &str, c: &Chunk, frame: Bytes) -> Result<Bytes, FetchError> {
        let handle = self.start_decode(file, c, frame);
        self.finish_decode(handle).await
    }
}

/// What a region's requests brought, for the timeline.
#[derive(Default)]
struct WireTally {
    first_byte_ms: Option<f64>,
    bytes: u64,
}

type DecodeHandle = tokio::task::JoinHandle<Result<Bytes, FormatError>>;
