//! A client of a BuildKit control API on a unix socket (`unix://PATH` or a bare path): what
//! the tests drive the daemon with, as buildctl does, and what `stargaze build --addr` will.

use super::proto::control::control_client::ControlClient;
use std::path::{Path, PathBuf};
use tonic::transport::{Channel, Endpoint};

/// Connects to the control API at `addr` (fails at once if nothing listens there).
pub async fn connect(addr: &str) -> Result<ControlClient<Channel>, tonic::transport::Error> {
    let path: PathBuf = Path::new(addr.strip_prefix("unix://").unwrap_or(addr)).to_path_buf();
    // The URI is required by the API and unused: every connection goes to the socket.
    let channel = Endpoint::from_static("http://buildkitd.sock")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await?;
    Ok(ControlClient::new(channel))
}
