//! The daemon's build history (`Control.ListenBuildHistory` / `UpdateBuildHistory`, BuildKit
//! v0.11): one record per Solve — its ref, frontend and attributes, exporters, start and end,
//! error and exporter response — kept in memory for the daemon's life (buildkitd keeps them
//! in its database; here a restart forgets them). Bounded as buildkitd's default policy
//! bounds it: at most 50 finished records (the oldest unpinned go first), and each
//! record's attributes to 64 KiB, so a client cannot grow it without limit. Listening
//! replays the records (the active ones, or one ref, when asked) and then, unless
//! `EarlyExit`, streams each start, completion and deletion as it happens.

use super::proto::control::{
    BuildHistoryEvent, BuildHistoryEventType, BuildHistoryRecord, BuildHistoryRequest, Exporter,
    SolveRequest, SolveResponse, UpdateBuildHistoryRequest,
};
use super::proto::google::rpc;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::broadcast;
use tonic::Status;

/// Finished records kept.
pub const MAX_ENTRIES: usize = 50;
/// Bytes of attribute keys and values kept per record.
const MAX_ATTR_BYTES: usize = 64 << 10;
/// Events queued for a slow listener before it misses some.
const EVENT_QUEUE: usize = 256;

#[derive(Debug)]
struct Entry {
    record: BuildHistoryRecord,
    active: bool,
}

/// The history of one daemon.
#[derive(Debug)]
pub struct History {
    entries: Mutex<Vec<Entry>>,
    events: broadcast::Sender<BuildHistoryEvent>,
}

impl Default for History {
    fn default() -> Self {
        History {
            entries: Mutex::default(),
            events: broadcast::channel(EVENT_QUEUE).0,
        }
    }
}

/// The attributes that fit in the bound, the rest dropped.
fn bounded(attrs: &HashMap<String, String>) -> HashMap<String, String> {
    let mut used = 0;
    let mut out = HashMap::new();
    let mut keys: Vec<&String> = attrs.keys().collect();
    keys.sort();
    for k in keys {
        let v = &attrs[k];
        used += k.len() + v.len();
        if used > MAX_ATTR_BYTES {
            break;
        }
        out.insert(k.clone(), v.clone());
    }
    out
}

fn event(kind: BuildHistoryEventType, record: &BuildHistoryRecord) -> BuildHistoryEvent {
    BuildHistoryEvent {
        r#type: kind as i32,
        record: Some(record.clone()),
    }
}

impl History {
    /// A Solve started; false (nothing recorded) when a build of the same ref runs.
    pub fn started(&self, req: &SolveRequest) -> bool {
        let record = BuildHistoryRecord {
            r#ref: req.r#ref.clone(),
            frontend: req.frontend.clone(),
            frontend_attrs: bounded(&req.frontend_attrs),
            exporters: if req.exporter.is_empty() {
                Vec::new()
            } else {
                vec![Exporter {
                    r#type: req.exporter.clone(),
                    attrs: bounded(&req.exporter_attrs),
                }]
            },
            created_at: Some(SystemTime::now().into()),
            ..BuildHistoryRecord::default()
        };
        let Ok(mut e) = self.entries.lock() else {
            return false;
        };
        if e.iter().any(|x| x.active && x.record.r#ref == record.r#ref) {
            return false;
        }
        e.retain(|x| x.record.r#ref != record.r#ref);
        let _ = self
            .events
            .send(event(BuildHistoryEventType::Started, &record));
        e.push(Entry {
            record,
            active: true,
        });
        true
    }

    /// The Solve `id` ended with `result`.
    pub fn completed(&self, id: &str, result: &Result<SolveResponse, Status>) {
        let Ok(mut e) = self.entries.lock() else {
            return;
        };
        if let Some(x) = e.iter_mut().find(|x| x.record.r#ref == id && x.active) {
            x.active = false;
            x.record.completed_at = Some(SystemTime::now().into());
            match result {
                Ok(r) => x.record.exporter_response = bounded(&r.exporter_response),
                Err(s) => {
                    x.record.error = Some(rpc::Status {
                        code: s.code() as i32,
                        message: s.message().chars().take(4096).collect(),
                        details: Vec::new(),
                    })
                }
            }
            let _ = self
                .events
                .send(event(BuildHistoryEventType::Complete, &x.record));
        }
        // Over the bound: the oldest finished, unpinned records go.
        while e.iter().filter(|x| !x.active).count() > MAX_ENTRIES {
            let Some(i) = e.iter().position(|x| !x.active && !x.record.pinned) else {
                break;
            };
            let gone = e.remove(i);
            let _ = self
                .events
                .send(event(BuildHistoryEventType::Deleted, &gone.record));
        }
    }

    fn wanted(req: &BuildHistoryRequest, record: &BuildHistoryRecord, active: bool) -> bool {
        (!req.active_only || active) && (req.r#ref.is_empty() || req.r#ref == record.r#ref)
    }

    /// The events a listener with `req` gets first (one per record), and the receiver of
    /// what happens next (subscribed under the same lock, so nothing falls between).
    pub fn listen(
        &self,
        req: &BuildHistoryRequest,
    ) -> (
        Vec<BuildHistoryEvent>,
        broadcast::Receiver<BuildHistoryEvent>,
    ) {
        let Ok(e) = self.entries.lock() else {
            return (Vec::new(), self.events.subscribe());
        };
        let now = e
            .iter()
            .filter(|x| Self::wanted(req, &x.record, x.active))
            .map(|x| {
                let kind = if x.active {
                    BuildHistoryEventType::Started
                } else {
                    BuildHistoryEventType::Complete
                };
                event(kind, &x.record)
            })
            .collect();
        (now, self.events.subscribe())
    }

    /// Whether a live event is for a listener with `req`.
    pub fn wants(req: &BuildHistoryRequest, ev: &BuildHistoryEvent) -> bool {
        let active = ev.r#type == BuildHistoryEventType::Started as i32;
        ev.record
            .as_ref()
            .is_some_and(|r| Self::wanted(req, r, active))
    }

    /// Pins, unpins or deletes a finished record.
    pub fn update(&self, req: &UpdateBuildHistoryRequest) -> Result<(), Status> {
        let mut e = self
            .entries
            .lock()
            .map_err(|_| Status::internal("build history poisoned"))?;
        let Some(i) = e.iter().position(|x| x.record.r#ref == req.r#ref) else {
            return Err(Status::not_found(format!(
                "no build record {:.64}",
                req.r#ref
            )));
        };
        if e[i].active {
            return Err(Status::failed_precondition(format!(
                "build {:.64} is still running",
                req.r#ref
            )));
        }
        if req.delete {
            let gone = e.remove(i);
            let _ = self
                .events
                .send(event(BuildHistoryEventType::Deleted, &gone.record));
        } else {
            e[i].record.pinned = req.pinned;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solve(id: &str) -> SolveRequest {
        SolveRequest {
            r#ref: id.into(),
            frontend: "dockerfile.v0".into(),
            exporter: "image".into(),
            ..SolveRequest::default()
        }
    }

    fn all() -> BuildHistoryRequest {
        BuildHistoryRequest::default()
    }

    #[test]
    fn records_start_complete_and_delete() {
        let h = History::default();
        h.started(&solve("a"));
        h.started(&solve("b"));
        h.completed("a", &Ok(SolveResponse::default()));
        h.completed("b", &Err(Status::invalid_argument("bad")));
        let (now, _) = h.listen(&all());
        assert_eq!(now.len(), 2);
        assert!(now
            .iter()
            .all(|e| e.r#type == BuildHistoryEventType::Complete as i32));
        let b = now[1].record.as_ref().unwrap();
        assert_eq!(b.error.as_ref().unwrap().message, "bad");
        assert_eq!(b.exporters[0].r#type, "image");
        let active = BuildHistoryRequest {
            active_only: true,
            ..all()
        };
        assert!(h.listen(&active).0.is_empty());
        h.update(&UpdateBuildHistoryRequest {
            r#ref: "a".into(),
            delete: true,
            ..UpdateBuildHistoryRequest::default()
        })
        .unwrap();
        assert_eq!(h.listen(&all()).0.len(), 1);
        let e = h
            .update(&UpdateBuildHistoryRequest {
                r#ref: "a".into(),
                delete: true,
                ..UpdateBuildHistoryRequest::default()
            })
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }

    #[test]
    fn the_history_and_its_records_are_bounded() {
        let h = History::default();
        h.started(&solve("pinned"));
        h.completed("pinned", &Ok(SolveResponse::default()));
        h.update(&UpdateBuildHistoryRequest {
            r#ref: "pinned".into(),
            pinned: true,
            ..UpdateBuildHistoryRequest::default()
        })
        .unwrap();
        for i in 0..(MAX_ENTRIES + 20) {
            let mut s = solve(&format!("b{i}"));
            s.frontend_attrs
                .insert("build-arg:BIG".into(), "x".repeat(1 << 20));
            h.started(&s);
            h.completed(&s.r#ref, &Ok(SolveResponse::default()));
        }
        let (now, _) = h.listen(&all());
        assert_eq!(now.len(), MAX_ENTRIES);
        assert!(now
            .iter()
            .any(|e| e.record.as_ref().unwrap().r#ref == "pinned"));
        assert!(now
            .iter()
            .all(|e| e.record.as_ref().unwrap().frontend_attrs.is_empty()
                || e.record.as_ref().unwrap().r#ref == "pinned"));
    }

    #[test]
    fn a_running_build_cannot_be_deleted_and_live_events_arrive() {
        let h = History::default();
        let (_, mut rx) = h.listen(&all());
        h.started(&solve("r"));
        let e = h
            .update(&UpdateBuildHistoryRequest {
                r#ref: "r".into(),
                delete: true,
                ..UpdateBuildHistoryRequest::default()
            })
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        h.completed("r", &Ok(SolveResponse::default()));
        assert_eq!(
            rx.try_recv().unwrap().r#type,
            BuildHistoryEventType::Started as i32
        );
        assert_eq!(
            rx.try_recv().unwrap().r#type,
            BuildHistoryEventType::Complete as i32
        );
    }
}
