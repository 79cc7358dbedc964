//! The worker's build records as BuildKit's disk-usage API lists them: one record per
//! snapshot (committed results of steps and base layers, and the writable snapshots of
//! steps running now), with its size, parent, times and the instruction that made it (from
//! the step cache). What `du` shows, what `prune` and GC pick from, and what filters
//! (`id`, `type`, `parents`, `description`, `inuse`, `mutable`, `immutable`, `shared`,
//! `private`) are matched against.

use crate::filters::Fields;
use crate::frontend::cache::StepCache;
use crate::snapshot::{Kind, SnapshotError, Snapshotter};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The record type of everything the worker keeps (BuildKit's type of layers and results).
pub const RECORD_TYPE: &str = "regular";

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageInfo {
    /// Snapshot name (key of a writable one).
    pub id: String,
    /// Writable: a step running now.
    pub mutable: bool,
    /// Used by something running now (itself writable, or the parent of a writable one).
    pub in_use: bool,
    /// Bytes of its own layer.
    pub size: u64,
    /// Its parent, if any.
    pub parents: Vec<String>,
    /// Created.
    pub created: SystemTime,
    /// Last used by a build (or changed).
    pub last_used: SystemTime,
    /// The instruction that made it, when the step cache knows.
    pub description: String,
    /// Others stand on it.
    pub has_children: bool,
}

impl UsageInfo {
    /// Milliseconds since the epoch of the last use.
    pub fn last_used_millis(&self) -> i64 {
        self.last_used
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

impl Fields for UsageInfo {
    fn field(&self, path: &[String]) -> Option<String> {
        let flag = |b: bool| b.then(String::new);
        match path.first().map(String::as_str)? {
            "id" => Some(self.id.clone()),
            "parents" => Some(self.parents.join(";")).filter(|p| !p.is_empty()),
            "description" => Some(self.description.clone()).filter(|d| !d.is_empty()),
            "inuse" => flag(self.in_use),
            "mutable" => flag(self.mutable),
            "immutable" => flag(!self.mutable),
            "type" => Some(RECORD_TYPE.to_string()),
            // Nothing the worker keeps is shared with another worker.
            "shared" => None,
            "private" => Some(String::new()),
            _ => None,
        }
    }
}

fn millis(t: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(t).unwrap_or(0))
}

/// Every record of the worker, oldest use first.
pub fn usage(snap: &dyn Snapshotter, cache: &StepCache) -> Result<Vec<UsageInfo>, SnapshotError> {
    let mut infos = Vec::new();
    snap.walk(&[], &mut |i| {
        infos.push(i.clone());
        Ok(())
    })?;
    let mut used: HashMap<String, (i64, String)> = HashMap::new();
    for (_, r) in cache.list() {
        let e = used
            .entry(r.snapshot)
            .or_insert((r.last_used, r.created_by));
        e.0 = e.0.max(r.last_used);
    }
    let parents: HashSet<&str> = infos
        .iter()
        .filter(|i| !i.parent.is_empty())
        .map(|i| i.parent.as_str())
        .collect();
    let parents_of_running: HashSet<&str> = infos
        .iter()
        .filter(|i| i.kind != Kind::Committed && !i.parent.is_empty())
        .map(|i| i.parent.as_str())
        .collect();
    let mut out = Vec::with_capacity(infos.len());
    for i in &infos {
        let size = snap
            .usage(&i.name)
            .map(|u| u64::try_from(u.size).unwrap_or(0))
            .unwrap_or(0);
        let (last_used, description) = match used.get(&i.name) {
            Some((t, d)) => (millis(*t).max(i.updated), d.clone()),
            None => (i.updated, String::new()),
        };
        let mutable = i.kind != Kind::Committed;
        out.push(UsageInfo {
            id: i.name.clone(),
            mutable,
            in_use: mutable || parents_of_running.contains(i.name.as_str()),
            size,
            parents: if i.parent.is_empty() {
                Vec::new()
            } else {
                vec![i.parent.clone()]
            },
            created: i.created,
            last_used,
            description,
            has_children: parents.contains(i.name.as_str()),
        });
    }
    out.sort_by_key(|u| (u.last_used, u.id.clone()));
    Ok(out)
}
