//! `stargaze demo`: the main job on an embedded default, offline. Today it builds the sample
//! image, converts it to eStargz, verifies every layer and reads single files by their
//! chunks; serving it from the built-in registry and mounting it lazily join as they land.

use crate::progress::{bytes, Progress};
use anyhow::Context;
use clap::Args;
use stargaze_fs::format::verify::verify_layer;
use stargaze_fs::format::{FileBlob, LayerReader, OpenOptions, WriterOptions};
use stargaze_fs::image::sample::{build_sample_image, SampleOptions};
use stargaze_fs::image::{annotations_of, convert_image, ImageConvertOptions, OciLayout};
use std::path::PathBuf;

/// `stargaze demo`
#[derive(Args)]
pub struct DemoArgs {
    /// Keep the work directory (default: a temp dir removed at the end).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Number of small files in the sample image.
    #[arg(long, default_value_t = 3000)]
    files: usize,
}

/// Runs the demo and prints each step and a summary.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("creating a temp dir")?;
    let work = a.keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let layout_dir = work.join("oci");
    let p = Progress::new("demo");

    println!(
        "[1/4] building the sample image in {}",
        layout_dir.display()
    );
    let opts = SampleOptions {
        small_files: a.files,
        ..Default::default()
    };
    let stats = build_sample_image(&layout_dir, "sample", &opts)?;
    println!(
        "      {} entries, {} of file data{} ({:.2}s)",
        stats.entries,
        bytes(stats.bytes),
        if stats.busybox {
            ", busybox included"
        } else {
            ", busybox not installed on this host"
        },
        p.elapsed()
    );

    println!("[2/4] converting to eStargz (gzip, 4 MiB chunks, all cores)");
    let layout = OciLayout::open(&layout_dir)?;
    let t = std::time::Instant::now();
    let report = convert_image(
        &layout,
        Some("sample"),
        &layout,
        Some("sample-esgz"),
        &ImageConvertOptions {
            writer: WriterOptions::default(),
        },
        &mut |_, _, _| {},
    )?;
    for l in &report.layers {
        println!(
            "      {} → {}: {} → {}, toc {}",
            &l.source.to_string()[..19],
            &l.result.to_string()[..19],
            bytes(l.source_size),
            bytes(l.result_size),
            l.toc_digest
        );
    }
    println!("      converted in {:.2}s", t.elapsed().as_secs_f64());

    println!("[3/4] verifying footer, TOC digest and every chunk of each layer");
    let (_, manifest) = layout.resolve(Some("sample-esgz"))?;
    let mut readers = Vec::new();
    for desc in manifest.layers() {
        let digest = OciLayout::digest_of(desc)?;
        let ann = annotations_of(desc);
        let toc = ann
            .get(stargaze_fs::format::TOC_DIGEST_ANNOTATION)
            .context("converted layer lacks its toc.digest annotation")?
            .parse()?;
        let r = LayerReader::open(
            FileBlob::open(&layout.blob_path(&digest))?,
            &OpenOptions {
                toc_digest: Some(toc),
                annotations: ann,
                ..Default::default()
            },
        )?;
        let v = verify_layer(&r, |_| {})?;
        println!(
            "      {}: {} entries, {} chunks, {} verified",
            &digest.to_string()[..19],
            v.entries,
            v.chunks,
            bytes(v.bytes)
        );
        readers.push((desc.size(), r));
    }

    println!("[4/4] reading single files by their chunks only");
    let (base_size, base) = &readers[0];
    for path in [
        "etc/hello.txt",
        "usr/share/doc/pkg-0007/file-3.txt",
        "usr/lib/libsample0.so",
    ] {
        let Some(id) = base.index().lookup(path) else {
            continue;
        };
        let node = base.index().node(id);
        let frames: u64 = node.chunks.iter().map(|c| c.blob_end - c.blob_offset).sum();
        let data = base.read_file(id, 0, node.size)?;
        println!(
            "      {path}: {} read through {} chunk(s), {} of the {} layer touched",
            bytes(data.len() as u64),
            node.chunks.len(),
            bytes(frames),
            bytes(*base_size)
        );
    }
    println!(
        "demo done in {:.2}s: sample image built, {} layers converted to eStargz and verified{}",
        p.elapsed(),
        report.layers.len(),
        match &a.keep {
            Some(d) => format!("; kept in {}", d.display()),
            None => String::new(),
        }
    );
    Ok(())
}
