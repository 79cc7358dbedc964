//! `Control.Solve` over the worker, shared with the gateway (`super::gateway`): the job
//! registered under the Solve's ref (its progress for `Status`), the exporter checked, then
//! one of two ways (docs/BUILDKIT_PROTOCOL.md §5):
//!
//! - neither frontend nor definition (buildctl v0.11's way): the build is registered for the
//!   gateway; the client runs the frontend through `LLBBridge.Solve` and hands the result
//!   back with `LLBBridge.Return`, which this Solve waits for, then exports;
//! - `Frontend: dockerfile.v0`: the daemon runs the frontend itself, then exports.
//!
//! A raw LLB definition is `Unimplemented` (the daemon has no LLB solver), another frontend
//! `InvalidArgument`. An exporter sending to the client needs the Solve's session to serve
//! `FileSend` (`FailedPrecondition` before the build otherwise). A session named by the
//! Solve may attach after it; it is waited for (bounded), `something:ID` meaning `ID`.

use super::dockerfile::{self, Attrs, DOCKERFILE_FRONTEND};
use super::exporter::Exporter;
use super::jobs::Jobs;
use super::proto::control::{SolveRequest, SolveResponse};
use super::proto::pb;
use super::proto::types;
use super::session::filesend::FILE_SEND;
use super::session::{Session, Sessions};
use crate::frontend::progress::Progress;
use crate::frontend::StageResult;
use crate::oci_worker::OciWorker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Status;

/// How long a Solve waits for its session to attach.
const SESSION_WAIT: Duration = Duration::from_secs(10);
/// Results a gateway build may hold.
const MAX_REFS: usize = 64;

/// What a gateway build's `Return` hands back: a result (none: nothing to export) or the
/// frontend's error.
pub type Returned = Result<Option<StageResult>, Status>;

/// A build waiting for its gateway client.
pub struct GatewayBuild {
    /// The Solve's session ID.
    pub session_id: String,
    /// Layers as eStargz (the exporter's choice).
    pub estargz: bool,
    /// The build's progress.
    pub progress: Arc<Progress>,
    refs: Mutex<HashMap<String, StageResult>>,
    returned: Mutex<Option<tokio::sync::oneshot::Sender<Returned>>>,
}

impl GatewayBuild {
    /// Keeps `r` under a new ref ID.
    pub fn keep(&self, r: StageResult) -> Result<String, Status> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let mut refs = self
            .refs
            .lock()
            .map_err(|_| Status::internal("refs poisoned"))?;
        if refs.len() >= MAX_REFS {
            return Err(Status::resource_exhausted(format!(
                "a build holds at most {MAX_REFS} results"
            )));
        }
        let id = format!("ref-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        refs.insert(id.clone(), r);
        Ok(id)
    }

    /// The result kept as `id`.
    pub fn get(&self, id: &str) -> Option<StageResult> {
        self.refs.lock().ok()?.get(id).cloned()
    }

    /// Hands the build's outcome to its Solve (once).
    pub fn finish(&self, r: Returned) -> Result<(), Status> {
        let tx = self
            .returned
            .lock()
            .ok()
            .and_then(|mut t| t.take())
            .ok_or_else(|| Status::failed_precondition("the build has returned already"))?;
        let _ = tx.send(r);
        Ok(())
    }
}

/// What Control and the gateway share.
pub struct Solver {
    /// The worker.
    pub worker: Arc<OciWorker>,
    /// Its record (`Ping` lists it).
    pub record: types::WorkerRecord,
    /// The attached sessions.
    pub sessions: Sessions,
    /// The builds' progress.
    pub jobs: Jobs,
    builds: Mutex<HashMap<String, Arc<GatewayBuild>>>,
    /// The entitlements builds may be granted.
    insecure_entitlements: Vec<String>,
}

/// Unregisters a gateway build when its Solve ends.
struct Registered<'a>(&'a Solver, String);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Ok(mut b) = self.0.builds.lock() {
            b.remove(&self.1);
        }
    }
}

impl Solver {
    /// The shared state of one daemon.
    pub fn new(worker: Arc<OciWorker>, record: types::WorkerRecord, sessions: Sessions) -> Self {
        Solver {
            worker,
            record,
            sessions,
            jobs: Jobs::default(),
            builds: Mutex::new(HashMap::new()),
            insecure_entitlements: Vec::new(),
        }
    }

    /// Lets builds be granted `allowed` (`network.host`, `security.insecure`).
    pub fn with_insecure_entitlements(mut self, allowed: Vec<String>) -> Self {
        self.insecure_entitlements = allowed;
        self
    }

    /// The gateway build `id`, waiting up to 3 s for it to be registered.
    pub async fn gateway_build(&self, id: &str) -> Option<Arc<GatewayBuild>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            if let Some(b) = self.builds.lock().ok().and_then(|b| b.get(id).cloned()) {
                return Some(b);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The session `id` (or `x:id`), waiting for it to attach.
    pub async fn session(&self, id: &str) -> Result<Arc<Session>, Status> {
        let id = id.split_once(':').map_or(id, |(_, i)| i);
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "the Solve names no session: the context and Dockerfile come from a session's FileSync",
            ));
        }
        let deadline = tokio::time::Instant::now() + SESSION_WAIT;
        loop {
            if let Some(s) = self.sessions.get(id) {
                return Ok(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::failed_precondition(format!(
                    "session {id:.64} did not attach"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `dockerfile.v0` with `attrs` over the session `session_id`.
    pub async fn dockerfile(
        &self,
        session_id: &str,
        attrs: &HashMap<String, String>,
        estargz: bool,
        progress: &Arc<Progress>,
    ) -> Result<StageResult, Status> {
        let attrs = Attrs::parse(attrs)?;
        let session = self.session(session_id).await?;
        let id = session.headers.id.clone();
        dockerfile::run(
            self.worker.worker(),
            &session,
            &id,
            &attrs,
            estargz,
            progress,
        )
        .await
    }

    /// Serves `Control.Solve`.
    pub async fn solve(&self, req: SolveRequest) -> Result<SolveResponse, Status> {
        let exporter = Exporter::parse(&req.exporter, &req.exporter_attrs)?;
        check_entitlements(&self.insecure_entitlements, &req.entitlements)?;
        // An export to the client needs a session that can receive it, known before building.
        let receiver = if exporter.to_client() {
            let s = self.session(&req.session).await?;
            if !s.serves(FILE_SEND) {
                return Err(Status::failed_precondition(format!(
                    "exporter {}: the session does not serve {FILE_SEND} to receive the export",
                    req.exporter
                )));
            }
            Some(s)
        } else {
            None
        };
        if req
            .definition
            .as_ref()
            .is_some_and(|d: &pb::Definition| !d.def.is_empty())
        {
            return Err(Status::unimplemented(
                "raw LLB definitions are not supported by stargaze buildkitd; use the dockerfile.v0 frontend",
            ));
        }
        super::gateway::refuse_frontend_inputs(&req.frontend_inputs)?;
        let guard = self.jobs.start(&req.r#ref)?;
        let progress = Progress::events(guard.job.clone());
        tracing::info!(build = %req.r#ref, frontend = %req.frontend, exporter = %req.exporter, "solve");
        let result = match req.frontend.as_str() {
            "" => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let build = Arc::new(GatewayBuild {
                    session_id: req.session.clone(),
                    estargz: exporter.estargz(),
                    progress: progress.clone(),
                    refs: Mutex::new(HashMap::new()),
                    returned: Mutex::new(Some(tx)),
                });
                {
                    let mut b = self
                        .builds
                        .lock()
                        .map_err(|_| Status::internal("builds poisoned"))?;
                    if b.contains_key(&req.r#ref) {
                        return Err(Status::already_exists("build registered already"));
                    }
                    b.insert(req.r#ref.clone(), build);
                }
                let _registered = Registered(self, req.r#ref.clone());
                rx.await.map_err(|_| {
                    Status::aborted("the gateway build ended without returning a result")
                })??
            }
            DOCKERFILE_FRONTEND => Some(
                self.dockerfile(&req.session, &req.frontend_attrs, exporter.estargz(), &progress)
                    .await?,
            ),
            other => {
                return Err(Status::invalid_argument(format!(
                    "frontend {other:.64} is not supported by stargaze buildkitd ({DOCKERFILE_FRONTEND} is)"
                )))
            }
        };
        let exporter_response = match &result {
            Some(img) => {
                exporter
                    .export(
                        &self.worker,
                        img,
                        &progress,
                        &build_sessions(&req.session),
                        receiver.as_deref(),
                    )
                    .await?
            }
            None if exporter == Exporter::None => HashMap::new(),
            None => {
                return Err(Status::invalid_argument(
                    "the build returned no result to export",
                ))
            }
        };
        drop(guard);
        Ok(SolveResponse { exporter_response })
    }
}

/// The session IDs a Solve's registry accesses ask: its own session (`id` or `x:id`).
fn build_sessions(session: &str) -> Vec<String> {
    let id = session.split_once(':').map_or(session, |(_, i)| i);
    if id.is_empty() {
        Vec::new()
    } else {
        vec![id.to_string()]
    }
}

/// Checks the entitlements a Solve asks for against those the daemon grants, as BuildKit
/// does before it builds: an unknown one is `InvalidArgument`, one not granted
/// `PermissionDenied` (worded as BuildKit words it).
pub fn check_entitlements(allowed: &[String], asked: &[String]) -> Result<(), Status> {
    for e in asked {
        if !crate::config::ENTITLEMENTS.contains(&e.as_str()) {
            return Err(Status::invalid_argument(format!(
                "unknown entitlement {e:.64}"
            )));
        }
        if !allowed.contains(e) {
            return Err(Status::permission_denied(format!(
                "granting entitlement {e} is not allowed by build daemon configuration"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_entitlements;
    use tonic::Code;

    #[test]
    fn entitlements_are_granted_only_when_the_daemon_allows_them() {
        let host = vec!["network.host".to_string()];
        assert!(check_entitlements(&[], &[]).is_ok());
        assert!(check_entitlements(&host, &host).is_ok());
        let e = check_entitlements(&[], &host).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(e
            .message()
            .contains("entitlement network.host is not allowed"));
        let e = check_entitlements(&host, &["security.insecure".to_string()]).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let e = check_entitlements(&host, &["root.everything".to_string()]).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}
