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
    let path: PathBuf = socket.to_path_buf();
    // The URI is required by the API and unused: every connection goes to the socket.
    let channel = Endpoint::from_static("http://snapshotter.sock")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .map_err(|e| {
            SnapshotError::Unavailable(format!("connecting to {}: {e}", socket.display()))
        })?;
    Ok(SnapshotsClient::new(channel))
}
