//! How much of a program or library to fetch beyond a miss, from its structure and the
//! reads seen so far, never from its name. A small file (at most [`WHOLE_MAX`] compressed
//! bytes) comes whole: one request costs less than the round trips of several. A larger one
//! gets what its ELF program headers say the loader maps and touches at once (the segments
//! before the code: headers, symbol, string, hash and relocation tables; and the writable
//! segments the loader relocates), and past each miss a window that grows with every miss
//! that follows the previous window (as the kernel's readahead grows) and starts small again
//! after a jump; code and read-only data are otherwise left to the reads that want them. So
//! an mmap'd library of which a program touches a tenth is not pulled whole.

use crate::format::{Chunk, NodeId};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

/// Compressed bytes up to which a file is fetched whole.
pub(super) const WHOLE_MAX: u64 = 4 << 20;
/// The first window past a miss, compressed bytes (at least one chunk is taken).
pub(super) const WINDOW_START: u64 = 512 << 10;
/// The largest window.
pub(super) const WINDOW_MAX: u64 = 16 << 20;
/// Compressed bytes of a file's loader-touched segments fetched on a guess at most.
pub(super) const SEGMENTS_MAX: u64 = 16 << 20;
/// File ranges looked at per file.
pub(super) const MAX_RANGES: usize = 64;

/// The sequential stream seen in one file: where the last window ended (chunk index) and
/// how large it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stream {
    /// Chunk index the last window started at.
    pub start: usize,
    /// Chunk index after the last window.
    pub end: usize,
    /// Compressed bytes of the last window.
    pub window: u64,
}

/// The streams of a layer's files (one entry per file that missed; the index bounds them).
#[derive(Default)]
pub(super) struct Streams(Mutex<HashMap<NodeId, Stream>>);

impl Streams {
    /// The chunks to fetch after a miss of chunks `first..=last` of `n` (see [`window`]),
    /// remembering the new window.
    pub(super) fn after_miss(
        &self,
        node: NodeId,
        chunks: &[Chunk],
        first: usize,
        last: usize,
    ) -> Range<usize> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (r, s) = window(t.get(&node).copied(), chunks, first, last);
        t.insert(node, s);
        r
    }
}

fn compressed(c: &Chunk) -> u64 {
    c.blob_end.saturating_sub(c.blob_offset)
}

/// Total compressed bytes of `chunks`.
pub(super) fn total_compressed(chunks: &[Chunk]) -> u64 {
    chunks.iter().map(compressed).sum()
}

/// The window after a miss of chunks `first..=last`: when the miss starts inside or right
/// at the end of the previous window the window doubles (up to [`WINDOW_MAX`]) and starts
/// where the previous one ended; otherwise it starts over at [`WINDOW_START`] right after
/// the miss. At least one chunk when any is left.
pub(super) fn window(
    prev: Option<Stream>,
    chunks: &[Chunk],
    first: usize,
    last: usize,
) -> (Range<usize>, Stream) {
    let n = chunks.len();
    let after = last.saturating_add(1).min(n);
    let (from, size) = match prev {
        Some(p) if first.saturating_add(1) >= p.start && first <= p.end => (
            after.max(p.end.min(n)),
            p.window.saturating_mul(2).min(WINDOW_MAX),
        ),
        _ => (after, WINDOW_START),
    };
    let mut to = from;
    let mut total = 0u64;
    while to < n && (to == from || total + compressed(&chunks[to]) <= size) {
        total += compressed(&chunks[to]);
        to += 1;
    }
    (
        from..to,
        Stream {
            start: from,
            end: to,
            window: size,
        },
    )
}

/// The chunk of `chunks` (sorted by file offset) holding file offset `off`.
fn chunk_at(chunks: &[Chunk], off: u64) -> Option<usize> {
    let i = chunks.partition_point(|c| c.file_offset <= off);
    (i > 0 && off < chunks[i - 1].file_offset.saturating_add(chunks[i - 1].size)).then(|| i - 1)
}

/// The indices of `chunks` (a file's, sorted by file offset) that hold the file ranges
/// `ranges` (offset, length), in order, without repeats, up to `budget` compressed bytes;
/// ranges outside the file are ignored. At most [`MAX_RANGES`] ranges are looked at.
pub(super) fn chunks_of_ranges(chunks: &[Chunk], ranges: &[(u64, u64)], budget: u64) -> Vec<usize> {
    let mut out = std::collections::BTreeSet::new();
    let mut total = 0u64;
    for &(off, len) in ranges.iter().take(MAX_RANGES) {
        if len == 0 {
            continue;
        }
        let end = off.saturating_add(len);
        let Some(a) = chunk_at(chunks, off) else {
            continue;
        };
        let b = chunk_at(chunks, end - 1).unwrap_or(chunks.len() - 1);
        for (i, c) in chunks.iter().enumerate().take(b + 1).skip(a) {
            // Zero chunks cost nothing to read: never fetched.
            if c.zeros || out.contains(&i) {
                continue;
            }
            total += compressed(c);
            if total > budget {
                return out.into_iter().collect();
            }
            out.insert(i);
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of `size` decompressed bytes each, `comp` compressed.
    fn chunks(n: usize, size: u64, comp: u64) -> Vec<Chunk> {
        (0..n as u64)
            .map(|i| Chunk {
                file_offset: i * size,
                size,
                blob_offset: 1000 + i * comp,
                blob_end: 1000 + (i + 1) * comp,
                inner_offset: 0,
                digest: None,
                zeros: false,
            })
            .collect()
    }

    #[test]
    fn the_window_grows_while_misses_follow_it_and_starts_over_after_a_jump() {
        // 100 chunks of 256 KiB compressed: the first window is two chunks.
        let c = chunks(100, 1 << 20, 256 << 10);
        let (r, s) = window(None, &c, 0, 0);
        assert_eq!(r, 1..3);
        // A miss at the window's end: twice the window, from its end.
        let (r, s) = window(Some(s), &c, 3, 3);
        assert_eq!((r.clone(), s.window), (4..8, 1 << 20));
        // A miss inside the window still in flight: the next window starts where it ends.
        let (r, s) = window(Some(s), &c, 5, 5);
        assert_eq!((r.clone(), s.window), (8..16, 2 << 20));
        // Growth stops at the largest window.
        let mut s = s;
        for _ in 0..10 {
            s = window(Some(s), &c, s.end.min(99), s.end.min(99)).1;
        }
        assert_eq!(s.window, WINDOW_MAX);
        // A jump far back starts over.
        let (r, s) = window(Some(s), &c, 2, 2);
        assert_eq!((r, s.window), (3..5, WINDOW_START));
    }

    #[test]
    fn the_window_takes_at_least_one_chunk_and_stops_at_the_end() {
        // Chunks larger than the window: one at a time.
        let c = chunks(4, 4 << 20, 2 << 20);
        assert_eq!(window(None, &c, 0, 0).0, 1..2);
        // Past the last chunk: nothing, and no panic on indices past the end.
        assert_eq!(window(None, &c, 3, 3).0, 4..4);
        assert_eq!(window(None, &c, 10, 20).0, 4..4);
        let s = Stream {
            start: 0,
            end: usize::MAX,
            window: u64::MAX,
        };
        let (r, s2) = window(Some(s), &c, 1, 1);
        assert!(r.is_empty() || r.end <= 4);
        assert!(s2.window <= WINDOW_MAX);
        assert_eq!(window(None, &[], 0, 0).0, 0..0);
    }

    #[test]
    fn ranges_map_to_chunks_once_within_budget() {
        let n = chunks(10, 100, 10);
        assert_eq!(
            chunks_of_ranges(&n, &[(950, 10), (0, 250)], 1000),
            [0, 1, 2, 9]
        );
        // Ranges past the end, empty or overflowing are ignored or cut.
        assert!(chunks_of_ranges(&n, &[(5000, 10), (10, 0)], 1000).is_empty());
        assert_eq!(chunks_of_ranges(&n, &[(990, u64::MAX)], 1000), [9]);
        assert_eq!(
            chunks_of_ranges(&n, &[(u64::MAX, u64::MAX)], 1000),
            Vec::<usize>::new()
        );
        assert!(chunks_of_ranges(&[], &[(0, 10)], 1000).is_empty());
        // The budget stops the list.
        assert_eq!(chunks_of_ranges(&n, &[(0, 1000)], 25), [0, 1]);
        // Huge range lists cost bounded work.
        let many = vec![(0u64, 1u64); 1_000_000];
        assert_eq!(chunks_of_ranges(&n, &many, 1000), [0]);
    }
}
