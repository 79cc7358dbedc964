//! Garbage collection of the worker's build records: committed snapshots no other snapshot
//! stands on (so never one in use by a running step, whose active snapshot is its child),
//! removed by BuildKit's rule semantics — a rule's filters pick records; with a keep
//! duration only records unused for longer are candidates; with keep-bytes the rule acts
//! only while the total exceeds the bound, least recently used first. Step cache records of
//! removed snapshots and layer blobs no record names go with them.

use crate::config::GcPolicy;
use crate::frontend::cache::{now_millis, StepCache};
use crate::snapshot::{Kind, SnapshotError, Snapshotter};
use stargaze_fs::image::OciLayout;
use std::collections::{HashMap, HashSet};

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

/// One record GC may remove.
#[derive(Debug, Clone)]
struct Candidate {
    name: String,
    size: u64,
    last_used: i64,
}

/// The record type of a snapshot for filters: everything the worker keeps is `regular`.
const RECORD_TYPE: &str = "regular";

/// Whether `filters` (any one matching) select a record named `name`.
fn selects(filters: &[String], name: &str) -> bool {
    if filters.is_empty() {
        return true;
    }
    filters.iter().any(|f| {
        f.split(',').all(|clause| {
            let clause = clause.trim();
            if let Some(v) = clause.strip_prefix("type==") {
                v == RECORD_TYPE
            } else if let Some(v) = clause.strip_prefix("type!=") {
                v != RECORD_TYPE
            } else if let Some(v) = clause.strip_prefix("id==") {
                v == name
            } else if let Some(v) = clause.strip_prefix("id~=") {
                regex::Regex::new(v).is_ok_and(|r| r.is_match(name))
            } else {
                false
            }
        })
    })
}

fn snapshot_state(
    snap: &dyn Snapshotter,
    cache: &StepCache,
) -> Result<(Vec<Candidate>, HashSet<String>), SnapshotError> {
    let mut infos = Vec::new();
    snap.walk(&[], &mut |i| {
        infos.push(i.clone());
        Ok(())
    })?;
    let used: HashMap<String, i64> = cache
        .list()
        .into_iter()
        .map(|(_, r)| (r.snapshot, r.last_used))
        .collect();
    let parents: HashSet<String> = infos
        .iter()
        .filter(|i| !i.parent.is_empty())
        .map(|i| i.parent.clone())
        .collect();
    let mut out = Vec::new();
    for i in infos.iter().filter(|i| i.kind == Kind::Committed) {
        let size = snap
            .usage(&i.name)
            .map(|u| u.size.max(0) as u64)
            .unwrap_or(0);
        let updated = i
            .updated
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        out.push(Candidate {
            name: i.name.clone(),
            size,
            last_used: used.get(&i.name).copied().unwrap_or(updated).max(updated),
        });
    }
    Ok((out, parents))
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
        loop {
            let (records, parents) = snapshot_state(snap, cache)?;
            let total: u64 = records.iter().map(|c| c.size).sum();
            if rule.keep_bytes > 0 && total <= rule.keep_bytes as u64 {
                break;
            }
            let cutoff = now_millis() - rule.keep_duration.as_millis() as i64;
            let victim = records
                .iter()
                .filter(|c| !parents.contains(&c.name))
                .filter(|c| selects(&rule.filters, &c.name))
                .filter(|c| rule.keep_duration.is_zero() || c.last_used < cutoff)
                .min_by_key(|c| (c.last_used, c.name.clone()));
            let Some(v) = victim.cloned() else { break };
            match snap.remove(&v.name) {
                Ok(()) => {
                    tracing::info!(snapshot = %v.name, bytes = v.size, "GC removed");
                    report.freed += v.size;
                    report.removed.push((v.name.clone(), v.size));
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
    report.remaining = snapshot_state(snap, cache)
        .map(|(r, _)| r.iter().map(|c| c.size).sum())
        .unwrap_or(0);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_select_by_type_and_id() {
        assert!(selects(&[], "x"));
        assert!(!selects(
            &["type==source.local".into(), "type==exec.cachemount".into()],
            "x"
        ));
        assert!(selects(&["type==regular".into()], "x"));
        assert!(selects(&["type==source.local".into(), "id==x".into()], "x"));
        assert!(selects(&["id~=^build/".into()], "build/abc"));
        assert!(!selects(&["unknown==1".into()], "x"));
    }
}
