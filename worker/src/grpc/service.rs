//! The snapshots service: each call runs the snapshotter on the blocking pool (its work is
//! file-system and store I/O, and a remote prepare may wait on a registry), so the gRPC
//! runtime keeps answering. Errors keep their kind: not found, already exists (which is how a
//! remote snapshotter tells containerd a layer is ready), failed precondition, invalid
//! argument, unavailable.

use super::pb;
use super::pb::snapshots_server::{Snapshots, SnapshotsServer};
use crate::peer::PeerPolicy;
use crate::snapshot::{Info, Kind, Labels, Mount, SnapshotError, Snapshotter};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tonic::{Request, Response, Status};

/// Infos per List message.
const LIST_BATCH: usize = 100;

/// The service over one snapshotter.
#[derive(Clone)]
pub struct SnapshotService {
    inner: Arc<dyn Snapshotter>,
}

impl SnapshotService {
    /// Serves `inner`.
    pub fn new(inner: Arc<dyn Snapshotter>) -> Self {
        SnapshotService { inner }
    }
}

fn status(e: SnapshotError) -> Status {
    let msg = e.to_string();
    match e {
        SnapshotError::NotFound(_) => Status::not_found(msg),
        SnapshotError::AlreadyExists(_) => Status::already_exists(msg),
        SnapshotError::FailedPrecondition(_) => Status::failed_precondition(msg),
        SnapshotError::InvalidArgument(_) => Status::invalid_argument(msg),
        SnapshotError::Unavailable(_) => Status::unavailable(msg),
        SnapshotError::Store(_) | SnapshotError::Io { .. } => Status::internal(msg),
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(status),
        Err(e) => Err(Status::internal(format!("snapshotter task failed: {e}"))),
    }
}

fn to_pb_mounts(m: Vec<Mount>) -> Vec<pb::Mount> {
    m.into_iter()
        .map(|m| pb::Mount {
            r#type: m.kind,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// containerd's form of `i`.
pub(super) fn to_pb_info(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: match i.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

fn labels(m: std::collections::HashMap<String, String>) -> Labels {
    m.into_iter().collect()
}

#[tonic::async_trait]
impl Snapshots for SnapshotService {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let mounts = blocking(move || s.prepare(&r.key, &r.parent, labels(r.labels))).await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: to_pb_mounts(mounts),
        }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let mounts = blocking(move || s.view(&r.key, &r.parent, labels(r.labels))).await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: to_pb_mounts(mounts),
        }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let mounts = blocking(move || s.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: to_pb_mounts(mounts),
        }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        blocking(move || s.commit(&r.name, &r.key, labels(r.labels))).await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        blocking(move || s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let info = blocking(move || s.stat(&r.key)).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(to_pb_info(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let Some(info) = r.info else {
            return Err(Status::invalid_argument("update without snapshot info"));
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let want = Info {
            name: info.name,
            parent: info.parent,
            kind: Kind::Active,
            labels: labels(info.labels),
            created: UNIX_EPOCH,
            updated: UNIX_EPOCH,
        };
        let s = self.inner.clone();
        let got = blocking(move || s.update(want, &paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(to_pb_info(got)),
        }))
    }

    type ListStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<pb::ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let infos = blocking(move || {
            let mut out = Vec::new();
            s.walk(&r.filters, &mut |i| {
                out.push(to_pb_info(i.clone()));
                Ok(())
            })?;
            Ok(out)
        })
        .await?;
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| Ok(pb::ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let r = req.into_inner();
        let s = self.inner.clone();
        let u = blocking(move || s.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let s = self.inner.clone();
        blocking(move || s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

/// Serves `snapshotter` on the unix socket `address` until `shutdown` resolves. A stale
/// socket file is replaced; the socket is removed at the end. The socket is 0600 (0660 for
/// `peers.group`) and each connection's peer is checked before gRPC sees it
/// ([`crate::peer`]); a missing parent directory is created private. Clients that send the
/// socket path as `:authority` are served too (see `authority.rs`).
pub async fn serve(
    address: &Path,
    snapshotter: Arc<dyn Snapshotter>,
    peers: PeerPolicy,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SnapshotError> {
    let ctx = |what: &str| format!("{what} {}", address.display());
    crate::peer::check_path(address).map_err(|e| SnapshotError::InvalidArgument(e.to_string()))?;
    if let Some(dir) = address
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        stargaze_fs::sys::private_dir(dir)
            .map_err(crate::snapshot::io(ctx("creating the directory of")))?;
    }
    match std::fs::remove_file(address) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(crate::snapshot::io(ctx("removing the stale socket"))(e)),
    }
    let listener = tokio::net::UnixListener::bind(address)
        .map_err(crate::snapshot::io(ctx("listening on")))?;
    if let Err(e) = peers.secure(address) {
        let _ = std::fs::remove_file(address);
        return Err(SnapshotError::Io {
            context: ctx("securing"),
            source: std::io::Error::other(e.to_string()),
        });
    }
    let incoming = super::incoming::admitted(listener, address.to_path_buf(), peers);
    let result = tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(SnapshotService::new(snapshotter)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(address);
    result.map_err(|e| SnapshotError::Io {
        context: ctx("serving gRPC on"),
        source: std::io::Error::other(e.to_string()),
    })
}
