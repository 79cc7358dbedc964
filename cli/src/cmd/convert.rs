//! `stargaze convert`: OCI layout image → eStargz image, with progress and a summary.

use crate::progress::{bytes, Progress};
use anyhow::Context;
use clap::Args;
use stargaze_fs::format::{Compression, WriterOptions};
use stargaze_fs::image::{convert_image, ImageConvertOptions, ImageRef, OciLayout};
use std::path::PathBuf;

/// `stargaze convert SRC DST [--zstd] [--chunk-size N] [--prioritize FILE]`
#[derive(Args)]
pub struct ConvertArgs {
    /// Source image, `oci:DIR[:TAG]`.
    src: String,
    /// Destination image, `oci:DIR[:TAG]` (may be the same layout).
    dst: String,
    /// Write zstd frames instead of gzip members.
    #[arg(long)]
    zstd: bool,
    /// Largest decompressed chunk of a file, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    chunk_size: u64,
    /// Compression level (gzip 0-9, default 9; zstd 1-22, default 3).
    #[arg(long)]
    level: Option<i32>,
    /// File listing paths to put first (one per line, e.g. from `mount --record-access`).
    #[arg(long)]
    prioritize: Option<PathBuf>,
    /// Compression threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// Reads a prioritized-files list: one path per line, `#` comments and blanks ignored.
pub fn read_prioritized(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --prioritize file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

/// Converts and prints one line per layer plus a total.
pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let src: ImageRef = a.src.parse()?;
    let dst: ImageRef = a.dst.parse()?;
    let compression = if a.zstd {
        Compression::Zstd
    } else {
        Compression::Gzip
    };
    let mut writer = WriterOptions {
        compression,
        level: a.level.unwrap_or(compression.default_level()),
        chunk_size: a.chunk_size,
        ..Default::default()
    };
    if let Some(t) = a.threads {
        writer.threads = t.max(1);
    }
    if let Some(p) = &a.prioritize {
        writer.prioritized = read_prioritized(p)?;
    }
    let src_layout = OciLayout::open(&src.dir)?;
    let dst_layout = OciLayout::open_or_create(&dst.dir)?;
    let mut p = Progress::new("convert");
    let report = convert_image(
        &src_layout,
        src.tag.as_deref(),
        &dst_layout,
        dst.tag.as_deref(),
        &ImageConvertOptions { writer },
        &mut |layer, total, done| {
            p.tick(|| format!("layer {}/{total}: {} framed", layer + 1, bytes(done)))
        },
    )
    .with_context(|| format!("converting {} to {}", a.src, a.dst))?;
    let (mut before, mut after) = (0, 0);
    for (i, l) in report.layers.iter().enumerate() {
        before += l.source_size;
        after += l.result_size;
        println!(
            "layer {}: {} → {} ({} → {}, {} files{}{}) toc {}",
            i + 1,
            short(&l.source.to_string()),
            short(&l.result.to_string()),
            bytes(l.source_size),
            bytes(l.result_size),
            l.files,
            if l.kept {
                ", already eStargz: kept"
            } else {
                ""
            },
            if l.prioritized > 0 {
                format!(", {} prioritized", l.prioritized)
            } else {
                String::new()
            },
            l.toc_digest
        );
    }
    println!(
        "converted {} layers ({} → {}) in {:.2}s; manifest {} as {}",
        report.layers.len(),
        bytes(before),
        bytes(after),
        p.elapsed(),
        report.manifest,
        a.dst
    );
    Ok(())
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}
