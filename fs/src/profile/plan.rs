//! The replay planner: a profile's chunks (in first-read order) cut into fetch batches that
//! keep that order — a small first batch, so the chunks needed first arrive after one round
//! trip and little transfer, then batches twice as large each time up to [`MAX_BATCH`] bytes.
//! The fetcher merges each batch's frames into few Range requests (its own planning), and
//! the replay runs a few batches at once, so a batch's latency does not bound the replay.
//! Chunks already cached are dropped first. Pure, so it is tested without a registry.

use crate::format::Chunk;

/// Compressed bytes of the first batch (at least one chunk).
pub const FIRST_BATCH: u64 = 256 << 10;
/// Compressed bytes of a batch at most (at least one chunk).
pub const MAX_BATCH: u64 = 4 << 20;

/// Batches of `chunks` in order, skipping those `cached` says are there: each batch takes
/// chunks until it holds `first` compressed bytes (doubling per batch up to `max`).
pub fn replay_batches(
    chunks: &[Chunk],
    cached: impl Fn(&Chunk) -> bool,
    first: u64,
    max: u64,
) -> Vec<Vec<Chunk>> {
    let mut out: Vec<Vec<Chunk>> = Vec::new();
    let mut cap = first.max(1);
    let mut cur: Vec<Chunk> = Vec::new();
    let mut bytes = 0u64;
    for c in chunks.iter().filter(|c| !cached(c)) {
        cur.push(c.clone());
        bytes += c.blob_end.saturating_sub(c.blob_offset);
        if bytes >= cap {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
            cap = cap.saturating_mul(2).min(max.max(1));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(off: u64, len: u64) -> Chunk {
        Chunk {
            file_offset: 0,
            size: 1,
            blob_offset: off,
            blob_end: off + len,
            inner_offset: 0,
            digest: None,
            zeros: false,
        }
    }

    fn offsets(b: &[Vec<Chunk>]) -> Vec<Vec<u64>> {
        b.iter()
            .map(|v| v.iter().map(|c| c.blob_offset).collect())
            .collect()
    }

    #[test]
    fn order_is_kept_and_batches_grow() {
        // Ten chunks of 100 bytes, read in an order unlike the blob's.
        let chunks: Vec<Chunk> = [9, 0, 5, 1, 8, 2, 7, 3, 6, 4]
            .iter()
            .map(|&i| c(i * 1000, 100))
            .collect();
        let b = replay_batches(&chunks, |_| false, 100, 400);
        assert_eq!(
            offsets(&b),
            [
                vec![9000],
                vec![0, 5000],
                vec![1000, 8000, 2000, 7000],
                vec![3000, 6000, 4000],
            ]
        );
        let flat: Vec<u64> = b.concat().iter().map(|c| c.blob_offset).collect();
        let want: Vec<u64> = chunks.iter().map(|c| c.blob_offset).collect();
        assert_eq!(flat, want, "batches concatenated are the recorded order");
    }

    #[test]
    fn cached_chunks_are_skipped() {
        let chunks: Vec<Chunk> = (0..6).map(|i| c(i * 10, 10)).collect();
        let b = replay_batches(&chunks, |c| c.blob_offset % 20 == 0, 10, 1000);
        assert_eq!(offsets(&b), [vec![10], vec![30, 50]]);
        assert!(replay_batches(&chunks, |_| true, 10, 1000).is_empty());
        assert!(replay_batches(&[], |_| false, 10, 1000).is_empty());
    }

    #[test]
    fn a_chunk_larger_than_a_batch_is_a_batch() {
        let chunks = [c(0, 10_000), c(20_000, 1), c(30_000, 10_000)];
        let b = replay_batches(&chunks, |_| false, 100, 200);
        assert_eq!(offsets(&b), [vec![0], vec![20_000, 30_000]]);
        // Degenerate limits still make progress.
        assert_eq!(replay_batches(&chunks, |_| false, 0, 0).len(), 3);
    }
}
