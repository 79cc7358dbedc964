//! `stargaze registry gc --root DIR`: reports (dry run, the default) or removes (`--delete`)
//! the blobs of the registry root that no manifest references. Blobs younger than the grace
//! period are kept, since the manifest that needs a freshly pushed blob may still be on its
//! way; it can run beside a live `registry serve` of the same root.

use crate::progress::{bytes, Progress};
use anyhow::Context;
use clap::Args;
use stargaze_fs::registry::{collect, GcOptions};
use std::path::PathBuf;
use std::time::Duration;

/// `stargaze registry gc …`
#[derive(Args)]
pub struct GcArgs {
    /// Registry root (as given to `registry serve --root`).
    #[arg(long)]
    root: PathBuf,
    /// Really remove the blobs (without it, only print what would be freed).
    #[arg(long)]
    delete: bool,
    /// Keep unreferenced blobs modified less than this many minutes ago.
    #[arg(long, default_value_t = 60)]
    grace_minutes: u64,
}

/// Runs gc and prints one line per blob and a summary.
pub fn run(a: GcArgs) -> anyhow::Result<()> {
    let opts = GcOptions {
        delete: a.delete,
        grace: Duration::from_secs(a.grace_minutes.saturating_mul(60)),
    };
    let mut progress = Progress::new("gc");
    let report = collect(&a.root, &opts, &mut |i, n, repo| {
        progress.tick(|| format!("repository {}/{n}: {repo}", i + 1));
    })
    .with_context(|| format!("collecting garbage in {}", a.root.display()))?;
    let verb = if a.delete { "removed" } else { "would remove" };
    for b in &report.removed {
        println!("{verb} {}@{} ({})", b.repo, b.digest, bytes(b.size));
    }
    for (repo, why) in &report.skipped {
        println!("left {repo} whole: {why}");
    }
    println!(
        "{}{} repositories: {} blobs referenced, {} unreferenced kept as younger than {} min, {} blobs {verb} ({}){}",
        if a.delete { "" } else { "dry run: " },
        report.repos,
        report.referenced,
        report.young,
        a.grace_minutes,
        report.removed.len(),
        bytes(report.bytes),
        if a.delete { "" } else { "; run with --delete to free them" },
    );
    Ok(())
}
