//! A [`Snapshotter`] over a containerd snapshots service on a unix socket — the worker's
//! `--oci-worker-proxy-snapshotter-path` (BuildKit's proxy snapshotter): every call is one
//! gRPC request, and gRPC codes map back onto containerd's error kinds, so the build code
//! cannot tell it from a built-in backend. Calls block on the given runtime; callers run
//! them on blocking threads, as they do for every backend.

use super::pb;
use super::pb::snapshots_client::SnapshotsClient;
use crate::snapshot::{Info, Kind, Labels, Mount, Result, SnapshotError, Snapshotter, Usage};
use std::path::Path;
use std::time::{Duration, SystemTime};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A snapshotter served by another process.
pub struct ProxySnapshotter {
    client: SnapshotsClient<Channel>,
    name: String,
    rt: tokio::runtime::Handle,
}

fn from_status(s: Status) -> SnapshotError {
    let m = s.message().to_string();
    match s.code() {
        Code::NotFound => SnapshotError::NotFound(m),
        Code::AlreadyExists => SnapshotError::AlreadyExists(m),
        Code::FailedPrecondition => SnapshotError::FailedPrecondition(m),
        Code::InvalidArgument => SnapshotError::InvalidArgument(m),
        Code::Unavailable => SnapshotError::Unavailable(m),
        c => SnapshotError::Store(format!("proxy snapshotter: {c:?}: {m}")),
    }
}

fn mounts(m: Vec<pb::Mount>) -> Vec<Mount> {
    m.into_iter()
        .map(|m| Mount {
            kind: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

fn time(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.map(|t| {
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(t.seconds.max(0) as u64)
            + Duration::from_nanos(t.nanos.max(0) as u64)
    })
    .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn info(i: pb::Info) -> Info {
    Info {
        name: i.name,
        parent: i.parent,
        kind: match pb::Kind::try_from(i.kind) {
            Ok(pb::Kind::View) => Kind::View,
            Ok(pb::Kind::Active) => Kind::Active,
            _ => Kind::Committed,
        },
        labels: i.labels.into_iter().collect(),
        created: time(i.created_at),
        updated: time(i.updated_at),
    }
}

fn map(l: Labels) -> std::collections::HashMap<String, String> {
    l.into_iter().collect()
}

impl ProxySnapshotter {
    /// Connects to the service at `socket`; requests name snapshotter `name`. Fails when
    /// nothing listens there or it does not answer a List call.
    pub async fn connect(socket: &Path, name: &str, rt: tokio::runtime::Handle) -> Result<Self> {
        let mut client = super::connect(socket).await?;
        client
            .list(pb::ListSnapshotsRequest {
                snapshotter: name.to_string(),
                filters: vec!["name==stargaze-probe".into()],
            })
            .await
            .map_err(|s| {
                SnapshotError::Unavailable(format!("{}: {}", socket.display(), s.message()))
            })?;
        Ok(ProxySnapshotter {
            client,
            name: name.to_string(),
            rt,
        })
    }

    fn call<T, F>(&self, f: impl FnOnce(SnapshotsClient<Channel>, String) -> F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        self.rt
            .block_on(f(self.client.clone(), self.name.clone()))
            .map(|r| r.into_inner())
            .map_err(from_status)
    }
}

impl Snapshotter for ProxySnapshotter {
    fn name(&self) -> &str {
        &self.name
    }

    fn stat(&self, key: &str) -> Result<Info> {
        let key = key.to_string();
        let r = self.call(|mut c, snapshotter| async move {
            c.stat(pb::StatSnapshotRequest { snapshotter, key }).await
        })?;
        r.info
            .map(info)
            .ok_or_else(|| SnapshotError::Store("proxy snapshotter: Stat without info".into()))
    }

    fn update(&self, i: Info, fieldpaths: &[String]) -> Result<Info> {
        let paths = fieldpaths.to_vec();
        let r = self.call(|mut c, snapshotter| async move {
            c.update(pb::UpdateSnapshotRequest {
                snapshotter,
                info: Some(super::service::to_pb_info(i)),
                update_mask: Some(prost_types::FieldMask { paths }),
            })
            .await
        })?;
        r.info
            .map(info)
            .ok_or_else(|| SnapshotError::Store("proxy snapshotter: Update without info".into()))
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let key = key.to_string();
        let r = self.call(|mut c, snapshotter| async move {
            c.usage(pb::UsageRequest { snapshotter, key }).await
        })?;
        Ok(Usage {
            size: r.size,
            inodes: r.inodes,
        })
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let key = key.to_string();
        let r = self.call(|mut c, snapshotter| async move {
            c.mounts(pb::MountsRequest { snapshotter, key }).await
        })?;
        Ok(mounts(r.mounts))
    }

    fn prepare(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        let r = self.call(|mut c, snapshotter| async move {
            c.prepare(pb::PrepareSnapshotRequest {
                snapshotter,
                key,
                parent,
                labels: map(labels),
            })
            .await
        })?;
        Ok(mounts(r.mounts))
    }

    fn view(&self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>> {
        let (key, parent) = (key.to_string(), parent.to_string());
        let r = self.call(|mut c, snapshotter| async move {
            c.view(pb::ViewSnapshotRequest {
                snapshotter,
                key,
                parent,
                labels: map(labels),
            })
            .await
        })?;
        Ok(mounts(r.mounts))
    }

    fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        let (name, key) = (name.to_string(), key.to_string());
        self.call(|mut c, snapshotter| async move {
            c.commit(pb::CommitSnapshotRequest {
                snapshotter,
                name,
                key,
                labels: map(labels),
            })
            .await
        })?;
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<()> {
        let key = key.to_string();
        self.call(|mut c, snapshotter| async move {
            c.remove(pb::RemoveSnapshotRequest { snapshotter, key })
                .await
        })?;
        Ok(())
    }

    fn walk(&self, filters: &[String], f: &mut dyn FnMut(&Info) -> Result<()>) -> Result<()> {
        let filters = filters.to_vec();
        let mut stream = self.call(|mut c, snapshotter| async move {
            c.list(pb::ListSnapshotsRequest {
                snapshotter,
                filters,
            })
            .await
        })?;
        loop {
            let next = self.rt.block_on(stream.message()).map_err(from_status)?;
            let Some(batch) = next else { return Ok(()) };
            for i in batch.info {
                f(&info(i))?;
            }
        }
    }

    fn cleanup(&self) -> Result<()> {
        self.call(|mut c, snapshotter| async move {
            c.cleanup(pb::CleanupRequest { snapshotter }).await
        })?;
        Ok(())
    }
}
