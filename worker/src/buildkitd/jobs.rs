//! The builds running (and recently ended) by their ref, with their progress as the
//! `StatusResponse` increments `Control.Status` streams (docs/BUILDKIT_PROTOCOL.md §2): a
//! job is the [`EventSink`] of its build's progress, keeps every increment so a `Status`
//! call arriving late still sees the whole build, and ends when its `Solve` does. Bounded:
//! at most [`MAX_JOBS`] at once, [`MAX_LOG_BYTES`] of logs kept per job (later output is
//! dropped with one note), ended jobs forgotten after [`KEEP_ENDED`].

use super::proto::control::{StatusResponse, Vertex, VertexLog, VertexStatus};
use crate::frontend::progress::{Event, EventSink};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio_stream::Stream;
use tonic::Status;

/// Builds at once.
pub const MAX_JOBS: usize = 64;
/// Bytes of log output kept per build.
pub const MAX_LOG_BYTES: usize = 8 << 20;
/// How long an ended build's progress stays available.
pub const KEEP_ENDED: Duration = Duration::from_secs(60);
/// How long `Status` waits for its build to appear.
pub const STATUS_WAIT: Duration = Duration::from_secs(6);

#[derive(Default)]
struct JobState {
    items: Vec<StatusResponse>,
    log_bytes: usize,
    truncated: bool,
    done: bool,
}

/// One build's progress.
pub struct Job {
    state: Mutex<JobState>,
    changed: tokio::sync::watch::Sender<()>,
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

impl Job {
    fn new() -> Self {
        Job {
            state: Mutex::new(JobState::default()),
            changed: tokio::sync::watch::channel(()).0,
        }
    }

    fn push(&self, r: StatusResponse) {
        if let Ok(mut s) = self.state.lock() {
            s.items.push(r);
        }
        self.changed.send_replace(());
    }

    /// The build ended: the status streams end once they have sent everything.
    pub fn end(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.done = true;
        }
        self.changed.send_replace(());
    }

    /// Every increment from the first, then each new one, until the job ends.
    pub fn stream(
        self: Arc<Self>,
    ) -> Pin<Box<dyn Stream<Item = Result<StatusResponse, Status>> + Send>> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut changed = self.changed.subscribe();
        tokio::spawn(async move {
            let mut next = 0;
            loop {
                changed.borrow_and_update();
                let (batch, done) = match self.state.lock() {
                    Ok(s) => (s.items[next.min(s.items.len())..].to_vec(), s.done),
                    Err(_) => return,
                };
                next += batch.len();
                for r in batch {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
                if done {
                    let left = self
                        .state
                        .lock()
                        .map(|s| s.items.len() > next)
                        .unwrap_or(false);
                    if !left {
                        return;
                    }
                    continue;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

impl EventSink for Job {
    fn event(&self, e: Event) {
        match e {
            Event::Vertex(v) => self.push(StatusResponse {
                vertexes: vec![Vertex {
                    digest: v.digest,
                    name: v.name,
                    cached: v.cached,
                    started: v.started.map(timestamp),
                    completed: v.completed.map(timestamp),
                    error: v.error.unwrap_or_default(),
                    ..Vertex::default()
                }],
                ..StatusResponse::default()
            }),
            Event::Status {
                vertex,
                id,
                current,
                started,
                completed,
            } => self.push(StatusResponse {
                statuses: vec![VertexStatus {
                    id: id.clone(),
                    vertex,
                    name: id,
                    current,
                    total: current,
                    timestamp: Some(timestamp(completed)),
                    started: Some(timestamp(started)),
                    completed: Some(timestamp(completed)),
                }],
                ..StatusResponse::default()
            }),
            Event::Log {
                vertex,
                stream,
                data,
                at,
            } => {
                let msg = {
                    let Ok(mut s) = self.state.lock() else { return };
                    if s.log_bytes + data.len() > MAX_LOG_BYTES {
                        if s.truncated {
                            return;
                        }
                        s.truncated = true;
                        b"[output truncated: the build's log limit was reached]\n".to_vec()
                    } else {
                        s.log_bytes += data.len();
                        data
                    }
                };
                self.push(StatusResponse {
                    logs: vec![VertexLog {
                        vertex,
                        timestamp: Some(timestamp(at)),
                        stream,
                        msg,
                    }],
                    ..StatusResponse::default()
                });
            }
        }
    }
}

/// The jobs by ref (cheap to clone; clones share them).
#[derive(Clone, Default)]
pub struct Jobs {
    live: Arc<Mutex<HashMap<String, Arc<Job>>>>,
}

/// A job registered for the time of its `Solve`; dropping it ends the job.
pub struct JobGuard {
    /// The job.
    pub job: Arc<Job>,
    jobs: Jobs,
    id: String,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.job.end();
        let (jobs, id, job) = (self.jobs.live.clone(), self.id.clone(), self.job.clone());
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                tokio::time::sleep(KEEP_ENDED).await;
                if let Ok(mut l) = jobs.lock() {
                    if l.get(&id).is_some_and(|j| Arc::ptr_eq(j, &job)) {
                        l.remove(&id);
                    }
                }
            });
        }
    }
}

impl Jobs {
    /// Registers the job `id` (the Solve's ref).
    pub fn start(&self, id: &str) -> Result<JobGuard, Status> {
        if id.is_empty() || id.len() > 256 {
            return Err(Status::invalid_argument(
                "a Solve needs a Ref of 1 to 256 bytes",
            ));
        }
        let mut l = self
            .live
            .lock()
            .map_err(|_| Status::internal("job registry poisoned"))?;
        if let Some(j) = l.get(id) {
            if !j.state.lock().map(|s| s.done).unwrap_or(true) {
                return Err(Status::already_exists(format!(
                    "build {id} is running already"
                )));
            }
        }
        let running = l
            .values()
            .filter(|j| !j.state.lock().map(|s| s.done).unwrap_or(true))
            .count();
        if running >= MAX_JOBS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_JOBS} builds running already"
            )));
        }
        // Ended jobs beyond the bound are forgotten first.
        if l.len() >= 4 * MAX_JOBS {
            l.retain(|_, j| !j.state.lock().map(|s| s.done).unwrap_or(true));
        }
        let job = Arc::new(Job::new());
        l.insert(id.to_string(), job.clone());
        Ok(JobGuard {
            job,
            jobs: self.clone(),
            id: id.to_string(),
        })
    }

    /// The job `id`, waiting up to [`STATUS_WAIT`] for it to appear.
    pub async fn wait(&self, id: &str) -> Option<Arc<Job>> {
        let deadline = tokio::time::Instant::now() + STATUS_WAIT;
        loop {
            if let Some(j) = self.live.lock().ok().and_then(|l| l.get(id).cloned()) {
                return Some(j);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
