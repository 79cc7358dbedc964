//! Read-ahead planning: which chunks that follow a read in the blob ride along with its
//! Range request (see `Fetcher::chunks_with_readahead` in the fetcher). The chunks that
//! come next in blob order are taken while they lie within the merge gap of the one before
//! and their compressed frames fit the read-ahead budget; the first that does not ends the
//! plan, so read-ahead never widens a request across a hole or past its budget.

use crate::format::{Chunk, Index, NodeId, NodeKind};

/// Every non-zero chunk of the layer's regular files in blob order, one per frame
/// (hard links share chunks): (blob offset, node, chunk number). Empty when read-ahead is
/// off, so a layer without it pays nothing.
pub(super) fn blob_order(index: &Index, readahead: u64) -> Vec<(u64, NodeId, u32)> {
    if readahead == 0 {
        return Vec::new();
    }
    let mut order: Vec<(u64, NodeId, u32)> = Vec::new();
    let regular = index
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.kind == NodeKind::Reg);
    for (id, n) in regular {
        for (i, c) in n.chunks.iter().enumerate() {
            if !c.zeros {
                order.push((c.blob_offset, id as NodeId, i as u32));
            }
        }
    }
    order.sort_unstable();
    order.dedup_by_key(|e| e.0);
    order
}

/// The chunks after blob offset `end`, in blob order, each within `merge_gap` of the
/// previous frame's end, up to `budget` compressed bytes in all.
pub(super) fn after(
    index: &Index,
    order: &[(u64, NodeId, u32)],
    end: u64,
    budget: u64,
    merge_gap: u64,
) -> Vec<Chunk> {
    let mut out = Vec::new();
    if budget == 0 {
        return out;
    }
    let start = order.partition_point(|e| e.0 < end);
    let (mut left, mut prev_end) = (budget, end);
    for &(off, id, i) in &order[start..] {
        let c = &index.node(id).chunks[i as usize];
        let len = c.blob_end - c.blob_offset;
        if off > prev_end.saturating_add(merge_gap) || len > left {
            break;
        }
        left -= len;
        prev_end = c.blob_end;
        out.push(c.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Compression, Limits};

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// Files whose frames lie at: a 100..200, b 200..300 and 300..400 (two chunks, the
    /// second's end given by `endOffset`), c 1000..1100 (after a hole of 600); h a hard link
    /// to a; d an empty file; the payload ends at 1100.
    fn index() -> Index {
        let json = format!(
            r#"{{"version":1,"entries":[
            {{"name":"a","type":"reg","size":10,"offset":100,"chunkDigest":"{D}"}},
            {{"name":"b","type":"reg","size":20,"offset":200,"chunkSize":10,"chunkDigest":"{D}"}},
            {{"name":"b","type":"chunk","offset":300,"endOffset":400,"chunkOffset":10,"chunkDigest":"{D}"}},
            {{"name":"h","type":"hardlink","linkName":"a"}},
            {{"name":"d","type":"reg","size":0}},
            {{"name":"c","type":"reg","size":10,"offset":1000,"chunkDigest":"{D}"}}
        ]}}"#
        );
        Index::from_json(json.as_bytes(), Compression::Gzip, 1100, &Limits::default()).unwrap()
    }

    fn offsets(chunks: &[Chunk]) -> Vec<u64> {
        chunks.iter().map(|c| c.blob_offset).collect()
    }

    #[test]
    fn the_order_holds_each_frame_once() {
        let i = index();
        let order = blob_order(&i, 1);
        let offs: Vec<u64> = order.iter().map(|e| e.0).collect();
        assert_eq!(offs, [100, 200, 300, 1000], "the hard link adds no frame");
        assert!(
            blob_order(&i, 0).is_empty(),
            "nothing kept when read-ahead is off"
        );
    }

    #[test]
    fn takes_what_follows_within_budget_and_gap() {
        let i = index();
        let order = blob_order(&i, 1);
        // After a's frame: b's two frames; c lies beyond a gap of 100.
        assert_eq!(offsets(&after(&i, &order, 200, 10_000, 100)), [200, 300]);
        // A wider gap reaches c.
        assert_eq!(
            offsets(&after(&i, &order, 200, 10_000, 600)),
            [200, 300, 1000]
        );
        // The budget stops at the first frame that no longer fits, not at the one after.
        assert_eq!(offsets(&after(&i, &order, 200, 150, 600)), [200]);
        assert_eq!(offsets(&after(&i, &order, 200, 200, 600)), [200, 300]);
        // Nothing follows the last frame; nothing is planned without a budget.
        assert!(after(&i, &order, 1100, 10_000, 10_000).is_empty());
        assert!(after(&i, &order, 200, 0, 600).is_empty());
    }

    #[test]
    fn starts_at_the_first_frame_not_before_the_end() {
        let i = index();
        let order = blob_order(&i, 1);
        // A read ending where b's second frame starts plans from that frame, even without a
        // gap to bridge; a frame before the end is never planned.
        assert_eq!(offsets(&after(&i, &order, 300, 10_000, 0)), [300]);
        assert!(after(&i, &order, 250, 10_000, 0).is_empty());
        // A read ending before a hole within the gap: the next frame still comes.
        assert_eq!(offsets(&after(&i, &order, 950, 10_000, 50)), [1000]);
        assert!(after(&i, &order, 940, 10_000, 50).is_empty());
    }
}
