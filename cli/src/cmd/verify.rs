//! `stargaze verify`: footer, TOC (optionally against a trusted digest) and every chunk.

use super::open_blob;
use crate::progress::{bytes, Progress};
use clap::Args;
use stargaze_fs::format::verify::verify_layer;
use std::path::PathBuf;

/// `stargaze verify BLOB [--toc-digest sha256:…]`
#[derive(Args)]
pub struct VerifyArgs {
    /// Layer blob.
    blob: PathBuf,
    /// Trusted TOC digest (the manifest's `containerd.io/snapshot/stargz/toc.digest`).
    #[arg(long)]
    toc_digest: Option<String>,
}

/// Verifies and prints a summary; any failure is an error (exit code 1).
pub fn run(a: VerifyArgs) -> anyhow::Result<()> {
    let r = open_blob(&a.blob, a.toc_digest.as_deref())?;
    let mut p = Progress::new("verify");
    let report = verify_layer(&r, |rep| {
        p.tick(|| format!("{} files, {}", rep.files, bytes(rep.bytes)))
    })?;
    println!(
        "ok: {} — footer {:?}, TOC {} ({}), {} entries, {} files, {} chunks, {} verified, \
         tar stream agrees with the TOC ({} tar entries), in {:.2}s",
        a.blob.display(),
        r.footer(),
        r.toc_digest(),
        if a.toc_digest.is_some() {
            "matches the given digest"
        } else {
            "NOT authenticated: no --toc-digest given, so only the blob's self-consistency \
             was checked"
        },
        report.entries,
        report.files,
        report.chunks,
        bytes(report.bytes),
        report.tar_entries,
        p.elapsed()
    );
    Ok(())
}
