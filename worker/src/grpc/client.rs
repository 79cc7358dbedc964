//! A client of a containerd snapshots service on a unix socket: how the worker talks to a
//! proxy snapshotter (`--oci-worker-proxy-snapshotter-path`), and how tests talk to ours.

use super::pb::snapshots_client::SnapshotsClient;
use crate::snapshot::SnapshotError;
use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint};

/// Connects to the snapshots service at `socket` (fails at once if nothing listens there).
pub async fn connect(socket: &Path) -> Result<SnapshotsClient<Channel>, SnapshotError> {
    if !socket.exists() {
        return Err(SnapshotError::Unavailable(format!(
            "no snapshotter socket at {}",
            socket.display()
        )));
    }
    let channel = unix_channel(socket.to_path_buf(), "http://snapshotter.sock")
        .await
        .map_err(|e| {
            SnapshotError::Unavailable(format!("connecting to {}: {e}", socket.display()))
        })?;
    Ok(SnapshotsClient::new(channel))
}

/// A gRPC channel whose every connection goes to the unix socket `path`; `authority` is the
/// URI the API requires (sent as `:authority`, otherwise unused). Fails at once if nothing
/// listens there.
pub(crate) async fn unix_channel(
    path: PathBuf,
    authority: &'static str,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_static(authority)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
}
