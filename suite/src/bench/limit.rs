//! The physical limit of a cold start (what no lazy puller can beat on a given link): the
//! compressed bytes of the chunks the workload reads ÷ the link rate, plus the round trips it
//! cannot avoid (manifest, config, footer + TOC per layer, one for the first chunk batch), plus
//! the workload's own warm run time. The chunks read come from `stargaze stats --json`
//! (`chunk_bytes_read`) when the binary reports it, else from the files a `--record-access`
//! mount saw opened, each counted whole with the chunks its layer's TOC gives it.

use stargaze_fs::format::{FileBlob, LayerReader, NodeKind, OpenOptions};
use stargaze_fs::image::OciLayout;
use std::collections::HashSet;
use std::path::Path;

/// Round trips no cold start avoids: manifest, config, footer + TOC of each layer, and one for
/// the first chunk batch.
pub fn unavoidable_round_trips(layers: usize) -> usize {
    2 + layers + 1
}

/// Seconds: `chunk_bytes` at `rate_mbit`, plus the unavoidable round trips of `layers` layers
/// at `rtt` seconds each, plus `warm_run` (the workload's own run time).
pub fn physical_limit(
    chunk_bytes: u64,
    layers: usize,
    rate_mbit: f64,
    rtt: f64,
    warm_run: f64,
) -> f64 {
    chunk_bytes as f64 * 8.0 / (rate_mbit * 1e6)
        + unavoidable_round_trips(layers) as f64 * rtt
        + warm_run
}

/// The sum of `chunk_bytes_read` over the layers of a `stargaze stats --json` answer, when the
/// binary reports that field.
pub fn chunk_bytes_from_stats(stats: &serde_json::Value) -> Option<u64> {
    let layers = stats["layers"].as_array()?;
    let mut any = false;
    let mut sum = 0;
    for l in layers {
        if let Some(n) = l["chunk_bytes_read"].as_u64() {
            any = true;
            sum += n;
        }
    }
    any.then_some(sum)
}

/// Number of layers of the image `tag` in the OCI layout at `layout`.
pub fn layer_count(layout: &Path, tag: &str) -> usize {
    OciLayout::open(layout)
        .and_then(|l| l.resolve(Some(tag)))
        .map_or(0, |(_, m)| m.layers().len())
}

/// Compressed bytes of every chunk of the regular files in `files` (paths relative to the
/// root, as `--record-access` writes them), each taken from the topmost layer of image `tag`
/// in `layout` that has it; `None` when a layer's TOC cannot be read.
pub fn chunk_bytes_of_files(layout: &Path, tag: &str, files: &[String]) -> Option<u64> {
    let l = OciLayout::open(layout).ok()?;
    let (_, manifest) = l.resolve(Some(tag)).ok()?;
    let mut readers = Vec::new();
    for desc in manifest.layers() {
        let d = OciLayout::digest_of(desc).ok()?;
        let blob = FileBlob::open(&l.blob_path(&d)).ok()?;
        readers.push(LayerReader::open(blob, &OpenOptions::default()).ok()?);
    }
    let mut seen = HashSet::new();
    let mut sum = 0;
    for f in files {
        let path = f.trim_start_matches('/');
        for (i, r) in readers.iter().enumerate().rev() {
            let idx = r.index();
            let Some(id) = idx.lookup(path) else {
                continue;
            };
            let node = idx.node(id);
            if node.kind == NodeKind::Reg && seen.insert((i, id)) {
                sum += node
                    .chunks
                    .iter()
                    .map(|c| c.blob_end.saturating_sub(c.blob_offset))
                    .sum::<u64>();
            }
            break;
        }
    }
    Some(sum)
}
