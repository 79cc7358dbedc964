//! What RUN, COPY and ADD share: a step is looked up in the step cache by its key first (a
//! hit adds the recorded layer and snapshot to the stage); a step that ran turns its
//! snapshot's changes into a layer, commits the snapshot, records both under its key and
//! adds them to the stage; a step that failed reports on its progress vertex and names the
//! instruction and its line.

use super::cache::{now_millis, Record};
use super::diff::{changes_of, Changes};
use super::dockerfile::Instruction;
use super::guards::{Active, View};
use super::layer::{write_layer, LayerBlob};
use super::progress::Vertex;
use super::request::{ImageLayer, Worker};
use super::solve::{Ctx, StageState};
use super::{io, BuildError};
use crate::snapshot::Labels;

/// Label on snapshots the build made: the cache key they hold.
pub const BUILD_KEY_LABEL: &str = "io.stargaze.build.key";

/// `e`, the failure of step `ins`, reported on `v`.
pub(super) fn failed(ins: &Instruction, v: &Vertex, e: BuildError) -> BuildError {
    v.error(&e);
    BuildError::Step {
        step: ins.text.clone(),
        line: ins.line,
        source: Box::new(e),
    }
}

/// The layer compression a key names.
pub(super) fn compression(estargz: bool) -> &'static str {
    if estargz {
        "estargz"
    } else {
        "gzip"
    }
}

/// Turns the changes in `active` (over `parent`) into a layer in the content store, then
/// commits the snapshot as `build/<key>` labelled with `key`. Blocking.
pub(super) fn finish(
    w: &Worker,
    active: Active,
    parent: Option<&str>,
    key: &str,
    estargz: bool,
) -> Result<(String, LayerBlob), BuildError> {
    let (blob, _) = {
        let view = match (parent, changes_of(&active.mounts, None)) {
            (Some(p), Some(Changes::Compare { .. })) => Some(View::new(&active.snap, p)?),
            _ => None,
        };
        let changes = changes_of(&active.mounts, view.as_ref().map(|v| v.mounts.as_slice()))
            .ok_or_else(|| BuildError::Changes(active.mounts.clone()))?;
        write_layer(&w.content, &changes, estargz)?
    };
    let mut labels = Labels::new();
    labels.insert(BUILD_KEY_LABEL.into(), key.to_string());
    let name = active.commit(&format!("build/{key}"), labels)?;
    Ok((name, blob))
}

impl Ctx {
    /// The cached-step block: when the cache has a usable record of `key`, marks `v`
    /// cached, adds the record to the stage and says so.
    pub(super) fn reuse_cached(
        &self,
        state: &mut StageState,
        key: &str,
        ins: &Instruction,
        v: &Vertex,
    ) -> bool {
        let Some(rec) = self.cached(key) else {
            return false;
        };
        v.cached();
        self.w.cache.touch(key);
        self.apply(state, key.to_string(), &rec, ins);
        self.count(false);
        true
    }

    /// The cached result of `key`, when usable: its snapshot and its blob are still there.
    fn cached(&self, key: &str) -> Option<Record> {
        if self.req.no_cache {
            return None;
        }
        let r = self.w.cache.get(key)?;
        let ok = self.w.snapshotter.stat(&r.snapshot).is_ok()
            && r.layer
                .digest
                .parse()
                .map(|d| self.w.content.blob_path(&d).is_file())
                .unwrap_or(false);
        ok.then_some(r)
    }

    /// A step that ran: its record goes into the step cache and its layer onto the stage.
    pub(super) fn executed(
        &self,
        state: &mut StageState,
        ins: &Instruction,
        key: String,
        snapshot: String,
        layer: LayerBlob,
    ) -> Result<(), BuildError> {
        let rec = Record {
            snapshot,
            layer,
            created_by: ins.text.clone(),
            last_used: now_millis(),
        };
        self.w
            .cache
            .put(&key, &rec)
            .map_err(io("writing the step cache"))?;
        self.apply(state, key, &rec, ins);
        self.count(true);
        Ok(())
    }

    /// `rec` on top of the stage: snapshot, key, layer, diff ID and history.
    fn apply(&self, state: &mut StageState, key: String, rec: &Record, ins: &Instruction) {
        state.res.top = Some(rec.snapshot.clone());
        state.res.key = key;
        state.res.layers.push(ImageLayer {
            blob: rec.layer.clone(),
            remote: None,
        });
        state.res.config.push_diff_id(rec.layer.diff_id.clone());
        state.history(&ins.text, false);
    }

    fn count(&self, executed: bool) {
        if let Ok(mut s) = self.stats.lock() {
            if executed {
                s.executed += 1;
            } else {
                s.cached += 1;
            }
        }
    }
}
