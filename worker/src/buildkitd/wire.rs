//! Our worker's facts in the control API's messages: build records as `UsageRecord`s, GC
//! rules as `GCPolicy` (durations in nanoseconds, as Go's `time.Duration` travels), platforms
//! as `pb.Platform`, and the worker as a `WorkerRecord` that label filters can select.

use super::proto::{control, pb, types};
use crate::config::GcPolicy;
use crate::filters::Fields;
use crate::records::{UsageInfo, RECORD_TYPE};
use stargaze_fs::remote::Platform;

/// What `Info` and worker records report: stargaze's own name and version.
pub fn version() -> types::BuildkitVersion {
    types::BuildkitVersion {
        package: "stargaze".into(),
        version: format!("v{}", crate::VERSION),
        revision: String::new(),
    }
}

/// A record as `du` and `prune` list it.
pub fn usage_record(u: &UsageInfo) -> control::UsageRecord {
    control::UsageRecord {
        id: u.id.clone(),
        mutable: u.mutable,
        in_use: u.in_use,
        size: i64::try_from(u.size).unwrap_or(i64::MAX),
        parent: u.parents.first().cloned().unwrap_or_default(),
        created_at: Some(u.created.into()),
        last_used_at: Some(u.last_used.into()),
        // Uses are not counted by this worker.
        usage_count: 0,
        description: u.description.clone(),
        record_type: RECORD_TYPE.into(),
        shared: false,
        parents: u.parents.clone(),
    }
}

/// A GC rule on the wire.
pub fn gc_policy(p: &GcPolicy) -> types::GcPolicy {
    types::GcPolicy {
        all: p.all,
        keep_duration: i64::try_from(p.keep_duration.as_nanos()).unwrap_or(i64::MAX),
        keep_bytes: p.keep_bytes,
        filters: p.filters.clone(),
    }
}

/// A platform on the wire.
pub fn platform(p: &Platform) -> pb::Platform {
    pb::Platform {
        architecture: p.architecture.clone(),
        os: p.os.clone(),
        variant: p.variant.clone().unwrap_or_default(),
        os_version: String::new(),
        os_features: Vec::new(),
    }
}

/// A worker record as `ListWorkers` filters see it: `id`, `labels.KEY`, `platforms`
/// (`os/arch[/variant]`, comma-joined).
pub struct WorkerFields<'a>(pub &'a types::WorkerRecord);

impl Fields for WorkerFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        let w = self.0;
        match (path.first().map(String::as_str)?, path.get(1..)) {
            ("id", _) => Some(w.id.clone()),
            ("labels", Some(rest)) if !rest.is_empty() => w.labels.get(&rest.join(".")).cloned(),
            ("platforms", _) => Some(
                w.platforms
                    .iter()
                    .map(|p| {
                        let mut s = format!("{}/{}", p.os, p.architecture);
                        if !p.variant.is_empty() {
                            s = format!("{s}/{}", p.variant);
                        }
                        s
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        }
    }
}
