//! `stargaze copy SRC DST`: an image between `oci:DIR[:TAG]` and `docker://HOST/REPO[:TAG]`,
//! either way, with a line per blob, a progress line for long transfers, and a summary;
//! with `--referrers`, the image's referrers (signatures, SBOMs, …) come along.

use super::remote::RegistryFlags;
use crate::progress::{bytes, Progress};
use anyhow::Context;
use clap::Args;
use stargaze_fs::remote::Platform;
use stargaze_fs::remote::{copy_image, CopyOptions, CopyProgress, ImageLocation};
use stargaze_fs::Digest;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// `stargaze copy SRC DST [--platform os/arch] [--all] [--referrers [--referrers-depth N]]`
#[derive(Args)]
pub struct CopyArgs {
    /// Source: `oci:DIR[:TAG]` or `docker://HOST/REPO[:TAG|@DIGEST]`.
    src: String,
    /// Destination: `oci:DIR[:TAG]` or `docker://HOST/REPO[:TAG]`.
    dst: String,
    /// Platform to take from a multi-platform image (default: this machine).
    #[arg(long)]
    platform: Option<Platform>,
    /// Copy every platform of a multi-platform image, index included.
    #[arg(long)]
    all: bool,
    /// Also copy the manifests that refer to the image (OCI 1.1 `subject`), and theirs.
    #[arg(long)]
    referrers: bool,
    /// How many levels of referrers of referrers --referrers follows (1: only the image's).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=16))]
    referrers_depth: u16,
    #[command(flatten)]
    registry: RegistryFlags,
}

struct Lines {
    progress: Mutex<Progress>,
    done: AtomicU64,
    total: AtomicU64,
}

impl CopyProgress for Lines {
    fn blob(&self, d: &Digest, size: u64, skipped: bool) {
        let short = &d.hex()[..12];
        if skipped {
            eprintln!("blob {short} {:>10}  already there", bytes(size));
        } else {
            eprintln!("blob {short} {:>10}  copying", bytes(size));
            self.done.store(0, Ordering::Relaxed);
            self.total.store(size, Ordering::Relaxed);
        }
    }
    fn bytes(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        let total = self.total.load(Ordering::Relaxed);
        if let Ok(mut p) = self.progress.lock() {
            p.tick(|| format!("{} of {}", bytes(done), bytes(total)));
        }
    }
}

/// Runs the copy.
pub fn run(a: CopyArgs) -> anyhow::Result<()> {
    let src: ImageLocation = a
        .src
        .parse()
        .with_context(|| format!("source {:?}", a.src))?;
    let dst: ImageLocation = a
        .dst
        .parse()
        .with_context(|| format!("destination {:?}", a.dst))?;
    let client = a.registry.client()?;
    let opts = CopyOptions {
        platform: a.platform.clone().unwrap_or_else(Platform::host),
        all_platforms: a.all,
        referrers: if a.referrers {
            usize::from(a.referrers_depth)
        } else {
            0
        },
    };
    let lines = Lines {
        progress: Mutex::new(Progress::new("copy")),
        done: AtomicU64::new(0),
        total: AtomicU64::new(0),
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = rt
        .block_on(copy_image(&client, &src, &dst, &opts, &lines))
        .with_context(|| format!("copying {} to {}", a.src, a.dst))?;
    let secs = lines.progress.lock().map(|p| p.elapsed()).unwrap_or(0.0);
    println!(
        "copied {} -> {}: {} blobs ({}) copied, {} already there, {} manifest(s), {} referrer(s), digest {} in {secs:.1}s",
        a.src,
        a.dst,
        report.blobs_copied,
        bytes(report.bytes),
        report.blobs_skipped,
        report.manifests,
        report.referrers,
        report
            .manifest
            .map(|d| d.to_string())
            .unwrap_or_default(),
    );
    Ok(())
}
