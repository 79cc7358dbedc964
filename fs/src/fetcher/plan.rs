//! Region planning: which missing chunks share one Range request. Chunks are taken in blob
//! order and a chunk joins the region before it when its frame starts within `merge_gap`
//! of the region's end and the grown region stays within `max_request` bytes; a chunk whose
//! frame alone is larger than `max_request` still gets a region of its own. Pure, so it is
//! tested without a registry.

use crate::format::Chunk;

/// One planned Range request: blob bytes `start..end` and the chunks it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Region {
    /// First blob byte requested.
    pub start: u64,
    /// Blob offset after the last byte requested.
    pub end: u64,
    /// Indices into the planned list, in blob order.
    pub members: Vec<usize>,
}

/// Groups `chunks` into regions (see the module doc); every index appears in exactly one.
pub(super) fn plan(chunks: &[&Chunk], merge_gap: u64, max_request: u64) -> Vec<Region> {
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    order.sort_by_key(|&k| chunks[k].blob_offset);
    let mut regions: Vec<Region> = Vec::new();
    for k in order {
        let c = chunks[k];
        match regions.last_mut() {
            Some(r)
                if c.blob_offset <= r.end.saturating_add(merge_gap)
                    && c.blob_end.max(r.end) - r.start <= max_request =>
            {
                r.end = r.end.max(c.blob_end);
                r.members.push(k);
            }
            _ => regions.push(Region {
                start: c.blob_offset,
                end: c.blob_end,
                members: vec![k],
            }),
        }
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(blob_offset: u64, blob_end: u64) -> Chunk {
        Chunk {
            file_offset: 0,
            size: 1,
            blob_offset,
            blob_end,
            inner_offset: 0,
            digest: None,
            zeros: false,
        }
    }

    fn spans(rs: &[Region]) -> Vec<(u64, u64, Vec<usize>)> {
        rs.iter()
            .map(|r| (r.start, r.end, r.members.clone()))
            .collect()
    }

    #[test]
    fn neighbours_merge_and_far_chunks_do_not() {
        let cs = [chunk(0, 100), chunk(150, 200), chunk(1000, 1100)];
        let refs: Vec<&Chunk> = cs.iter().collect();
        // Gap 50 reaches the second chunk, not the third.
        assert_eq!(
            spans(&plan(&refs, 50, u64::MAX)),
            [(0, 200, vec![0, 1]), (1000, 1100, vec![2])]
        );
        // Gap 49 reaches neither.
        assert_eq!(plan(&refs, 49, u64::MAX).len(), 3);
        // An unbounded gap makes one request.
        assert_eq!(
            spans(&plan(&refs, u64::MAX, u64::MAX)),
            [(0, 1100, vec![0, 1, 2])]
        );
    }

    #[test]
    fn chunks_are_planned_in_blob_order() {
        let cs = [chunk(300, 400), chunk(0, 100), chunk(100, 300)];
        let refs: Vec<&Chunk> = cs.iter().collect();
        assert_eq!(spans(&plan(&refs, 0, u64::MAX)), [(0, 400, vec![1, 2, 0])]);
    }

    #[test]
    fn the_request_cap_splits_and_a_large_frame_stands_alone() {
        let cs = [
            chunk(0, 100),
            chunk(100, 200),
            chunk(200, 300),
            chunk(300, 800),
        ];
        let refs: Vec<&Chunk> = cs.iter().collect();
        assert_eq!(
            spans(&plan(&refs, 0, 200)),
            [
                (0, 200, vec![0, 1]),
                (200, 300, vec![2]),
                (300, 800, vec![3])
            ]
        );
    }

    #[test]
    fn chunks_of_one_frame_share_it() {
        // Two chunks in one zstd frame: same frame start, ends within the frame.
        let cs = [chunk(0, 500), chunk(0, 300), chunk(500, 600)];
        let refs: Vec<&Chunk> = cs.iter().collect();
        assert_eq!(
            spans(&plan(&refs, 0, 500)),
            [(0, 500, vec![0, 1]), (500, 600, vec![2])]
        );
    }

    #[test]
    fn nothing_to_fetch_plans_nothing() {
        assert!(plan(&[], 0, 0).is_empty());
    }
}
