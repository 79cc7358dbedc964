//! `moby.buildkit.v1.Control` over the OCI worker. Served now: `ListWorkers` (the one worker
//! with its labels, platforms and GC rules), `Info`, `DiskUsage` and `Prune` (over the
//! worker's build records and its GC, a stream of the records removed), `Session` (the
//! client's session attached, `super::session`), `Solve` (`super::solver`, with the gateway
//! of `super::gateway`) and `Status` (the build's progress from `super::jobs`, waited for up
//! to 6 s, ending when the build does), `ListenBuildHistory` and `UpdateBuildHistory` (the
//! Solves' records, `super::history`). Bad requests (filters, negative bounds, frontends,
//! attributes, exporters) are `InvalidArgument`; the daemon keeps serving.

use super::gateway::GatewayService;
use super::history::History;
use super::proto::control::control_server::Control;
use super::proto::control::{
    BuildHistoryEvent, BuildHistoryRequest, BytesMessage, DiskUsageRequest, DiskUsageResponse,
    InfoRequest, InfoResponse, ListWorkersRequest, ListWorkersResponse, PruneRequest, SolveRequest,
    SolveResponse, StatusRequest, StatusResponse, UpdateBuildHistoryRequest,
    UpdateBuildHistoryResponse, UsageRecord,
};
use super::proto::types;
use super::session::Sessions;
use super::solver::Solver;
use super::wire::{usage_record, version, WorkerFields};
use crate::config::GcPolicy;
use crate::filters::Filters;
use crate::oci_worker::OciWorker;
use crate::snapshot::SnapshotError;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// A stream of answers.
type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The control service of one worker.
pub struct ControlService {
    worker: Arc<OciWorker>,
    record: types::WorkerRecord,
    /// One prune at a time.
    pruning: Arc<tokio::sync::Mutex<()>>,
    /// The attached client sessions.
    sessions: Sessions,
    /// Builds, shared with the gateway.
    solver: Arc<Solver>,
    /// Their records.
    history: Arc<History>,
}

impl ControlService {
    /// Serves `worker`, described to clients by `record`; builds may be granted the
    /// entitlements `insecure_entitlements` (a Solve asking for another is refused).
    pub fn new(
        worker: Arc<OciWorker>,
        record: types::WorkerRecord,
        insecure_entitlements: Vec<String>,
    ) -> Self {
        let sessions = Sessions::default();
        let solver = Arc::new(
            Solver::new(worker.clone(), record.clone(), sessions.clone())
                .with_insecure_entitlements(insecure_entitlements),
        );
        ControlService {
            worker,
            record,
            pruning: Arc::new(tokio::sync::Mutex::new(())),
            sessions,
            solver,
            history: Arc::default(),
        }
    }

    /// The gateway (`LLBBridge`) of the builds this service solves.
    pub fn gateway(&self) -> GatewayService {
        GatewayService(self.solver.clone())
    }

    /// The attached client sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

fn filters(list: &[String]) -> Result<Filters, Status> {
    Filters::parse(list).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn status(e: SnapshotError) -> Status {
    match e {
        SnapshotError::InvalidArgument(m) => Status::invalid_argument(m),
        e => Status::internal(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker task failed: {e}")))?
        .map_err(status)
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn disk_usage(
        &self,
        req: Request<DiskUsageRequest>,
    ) -> Result<Response<DiskUsageResponse>, Status> {
        let f = filters(&req.get_ref().filter)?;
        let w = self.worker.clone();
        let records = blocking(move || w.usage()).await?;
        let record = records
            .iter()
            .filter(|r| f.matches(*r))
            .map(usage_record)
            .collect();
        Ok(Response::new(DiskUsageResponse { record }))
    }

    type PruneStream = Answers<UsageRecord>;

    async fn prune(
        &self,
        req: Request<PruneRequest>,
    ) -> Result<Response<Self::PruneStream>, Status> {
        let req = req.into_inner();
        filters(&req.filter)?;
        let (Ok(keep_nanos), true) = (u64::try_from(req.keep_duration), req.keep_bytes >= 0) else {
            return Err(Status::invalid_argument(
                "keepDuration and keepBytes must not be negative",
            ));
        };
        let rule = GcPolicy {
            all: req.all,
            keep_bytes: req.keep_bytes,
            keep_duration: Duration::from_nanos(keep_nanos),
            filters: req.filter,
        };
        let _one = self.pruning.clone().lock_owned().await;
        let w = self.worker.clone();
        let removed = blocking(move || {
            let before = w.usage()?;
            let report = w.prune_rule(&rule)?;
            tracing::info!(
                records = report.removed.len(),
                blobs = report.blobs,
                freed = report.freed,
                "prune"
            );
            Ok(before
                .into_iter()
                .filter(|u| report.removed.iter().any(|(id, _)| *id == u.id))
                .collect::<Vec<_>>())
        })
        .await?;
        let out: Vec<Result<UsageRecord, Status>> =
            removed.iter().map(|u| Ok(usage_record(u))).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(out))))
    }

    async fn solve(&self, req: Request<SolveRequest>) -> Result<Response<SolveResponse>, Status> {
        let req = req.into_inner();
        let id = req.r#ref.clone();
        let recorded = self.history.started(&req);
        let r = self.solver.solve(req).await;
        if recorded {
            self.history.completed(&id, &r);
        }
        if let Err(e) = &r {
            tracing::info!(code = ?e.code(), error = %e.message(), "solve failed");
        }
        r.map(Response::new)
    }

    type ListenBuildHistoryStream = Answers<BuildHistoryEvent>;

    async fn listen_build_history(
        &self,
        req: Request<BuildHistoryRequest>,
    ) -> Result<Response<Self::ListenBuildHistoryStream>, Status> {
        let req = req.into_inner();
        let (now, mut live) = self.history.listen(&req);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for ev in now {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            if req.early_exit {
                return;
            }
            loop {
                let ev = match live.recv().await {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "build history listener lagged");
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if History::wants(&req, &ev) && tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn update_build_history(
        &self,
        req: Request<UpdateBuildHistoryRequest>,
    ) -> Result<Response<UpdateBuildHistoryResponse>, Status> {
        self.history.update(req.get_ref())?;
        Ok(Response::new(UpdateBuildHistoryResponse {}))
    }

    type StatusStream = Answers<StatusResponse>;

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<Self::StatusStream>, Status> {
        let id = req.into_inner().r#ref;
        match self.solver.jobs.wait(&id).await {
            Some(job) => Ok(Response::new(job.stream())),
            None => Err(Status::not_found(format!("no build {id:.64}"))),
        }
    }

    type SessionStream = Answers<BytesMessage>;

    async fn session(
        &self,
        req: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let answer = self.sessions.attach(req)?;
        Ok(Response::new(Box::pin(answer.into_inner())))
    }

    async fn list_workers(
        &self,
        req: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let f = filters(&req.get_ref().filter)?;
        let record = if f.matches(&WorkerFields(&self.record)) {
            vec![self.record.clone()]
        } else {
            Vec::new()
        };
        Ok(Response::new(ListWorkersResponse { record }))
    }

    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            buildkit_version: Some(version()),
        }))
    }
}
