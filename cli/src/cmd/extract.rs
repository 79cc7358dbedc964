//! `stargaze extract`: unpack one layer under a directory, never outside it.

use super::open_blob;
use crate::progress::bytes;
use clap::Args;
use stargaze_fs::format::extract::{extract_layer, ExtractOptions, Whiteouts};
use std::path::PathBuf;

/// `stargaze extract BLOB DIR`
#[derive(Args)]
pub struct ExtractArgs {
    /// Layer blob.
    blob: PathBuf,
    /// Target directory (created if missing).
    dir: PathBuf,
    /// Keep `.wh.*` whiteout files as files instead of overlayfs whiteouts.
    #[arg(long)]
    raw_whiteouts: bool,
    /// Refuse the blob unless its TOC has this digest.
    #[arg(long)]
    toc_digest: Option<String>,
}

/// Extracts and prints what was done (and what the OS refused, e.g. devices as non-root).
pub fn run(a: ExtractArgs) -> anyhow::Result<()> {
    let r = open_blob(&a.blob, a.toc_digest.as_deref())?;
    let opts = ExtractOptions {
        whiteouts: if a.raw_whiteouts {
            Whiteouts::Keep
        } else {
            Whiteouts::Overlay
        },
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let rep = extract_layer(&r, &a.dir, &opts)?;
    for s in &rep.skipped {
        eprintln!("stargaze: skipped: {s}");
    }
    println!(
        "extracted {} entries ({} of file data, verified; {} whiteouts) into {} in {:.2}s{}",
        rep.entries,
        bytes(rep.bytes),
        rep.whiteouts,
        a.dir.display(),
        t.elapsed().as_secs_f64(),
        if rep.skipped.is_empty() {
            String::new()
        } else {
            format!("; {} items skipped (see above)", rep.skipped.len())
        }
    );
    Ok(())
}
