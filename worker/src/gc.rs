//! Garbage collection of the worker's build records: committed snapshots no other snapshot
//! stands on (so never one in use by a running step, whose active snapshot is its child),
//! removed by BuildKit's rule semantics — a rule's filters pick records; with a keep
//! duration only records unused for longer are candidates; with keep-bytes the rule acts
//! only while the total exceeds the bound, least recently used first. Step cache records of
//! removed snapshots and layer blobs no record names go with them.

use crate::config::GcPolicy;
use crate::filters::Filters;
use crate::frontend::cache::{now_millis, StepCache};
use crate::records::{usage, UsageInfo};
use crate::snapshot::{SnapshotError, Snapshotter};
use stargaze_fs::image::OciLayout;
use std::collections::HashSet;

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Snapshots removed, with their size.
    pub removed: Vec<(String, u64)>,
    /// Step cache records dropped.
    pub records: usize,
    /// Layer blobs deleted.
    pub blobs: usize,
    /// Bytes freed (snapshots and blobs).
    pub freed: u64,
    /// Bytes the remaining snapshots use.
    pub remaining: u64,
}

/// Applies `rules` in order (or, with `rules` empty and `everything`, removes every record
/// nothing stands on, repeatedly).
pub fn prune(
    snap: &dyn Snapshotter,
    cache: &StepCache,
    content: &OciLayout,
    rules: &[GcPolicy],
    everything: bool,
) -> Result<PruneReport, SnapshotError> {
    let mut report = PruneReport::default();
    let all_rule = [GcPolicy {
        all: true,
        keep_bytes: 0,
        keep_duration: std::time::Duration::ZERO,
        filters: Vec::new(),
    }];
    let rules: &[GcPolicy] = if everything { &all_rule } else { rules };
    for rule in rules {
        let filters = Filters::parse(&rule.filters)
            .map_err(|e| SnapshotError::InvalidArgument(e.to_string()))?;
        loop {
            let records = usage(snap, cache)?;
            let committed = || records.iter().filter(|r| !r.mutable);
            let total: u64 = committed().map(|c| c.size).sum();
            if rule.keep_bytes > 0 && total <= rule.keep_bytes as u64 {
                break;
            }
            let cutoff = now_millis() - rule.keep_duration.as_millis() as i64;
            let victim = committed()
                .filter(|c| !c.has_children)
                .filter(|c| filters.matches(*c))
                .filter(|c| rule.keep_duration.is_zero() || c.last_used_millis() < cutoff)
                .min_by_key(|c| (c.last_used, c.id.clone()));
            let Some(v): Option<UsageInfo> = victim.cloned() else {
                break;
            };
            match snap.remove(&v.id) {
                Ok(()) => {
                    tracing::info!(snapshot = %v.id, bytes = v.size, "GC removed");
                    report.freed += v.size;
                    report.removed.push((v.id.clone(), v.size));
                }
                // Something began to use it meanwhile: leave it.
                Err(SnapshotError::FailedPrecondition(_)) | Err(SnapshotError::NotFound(_)) => {
                    break
                }
                Err(e) => return Err(e),
            }
        }
    }
    // Records whose snapshot is gone, and blobs no record names.
    let mut keep_blobs = HashSet::new();
    for (key, rec) in cache.list() {
        if snap.stat(&rec.snapshot).is_err() {
            let _ = cache.remove(&key);
            report.records += 1;
        } else {
            keep_blobs.insert(rec.layer.digest.clone());
        }
    }
    if let Ok(tags) = content.tags() {
        if !tags.is_empty() {
            tracing::debug!(
                tags = tags.len(),
                "content store has tagged images; their blobs are kept"
            );
            return Ok(finish(snap, cache, report));
        }
    }
    let blobs = content.root().join("blobs/sha256");
    if let Ok(rd) = std::fs::read_dir(&blobs) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = format!("sha256:{}", e.file_name().to_string_lossy());
            if keep_blobs.contains(&name) {
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            if std::fs::remove_file(e.path()).is_ok() {
                report.blobs += 1;
                report.freed += size;
            }
        }
    }
    Ok(finish(snap, cache, report))
}

fn finish(snap: &dyn Snapshotter, cache: &StepCache, mut report: PruneReport) -> PruneReport {
    report.remaining = usage(snap, cache)
        .map(|r| r.iter().filter(|c| !c.mutable).map(|c| c.size).sum())
        .unwrap_or(0);
    report
}
