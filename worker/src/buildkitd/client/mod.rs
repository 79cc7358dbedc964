//! A client of a BuildKit control API on a unix socket (`unix://PATH` or a bare path), from
//! the same protocol definitions as the daemon, behaving as buildctl v0.11 does: what the
//! tests drive the daemon with. `auth` answers registry credentials from the client's docker
//! config, `session` attaches a client session serving the client's services on the
//! session's connection, `secrets` serves `--secret` files on it, `local` is its FileSync sender of local directories, `output`
//! parses `--output` and receives exports (a tarball into a file or stdout, a directory),
//! `build` runs a build the buildctl way (session, Status, Solve through the gateway's
//! Ping/Solve/Return) and `plain` prints its progress as `--progress=plain` does.

pub mod auth;
pub mod build;
pub mod local;
pub mod output;
pub mod plain;
pub mod secrets;
pub mod session;

use super::proto::control::control_client::ControlClient;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

/// A channel to the daemon at `addr` (fails at once if nothing listens there).
pub async fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = Path::new(addr.strip_prefix("unix://").unwrap_or(addr)).to_path_buf();
    crate::grpc::unix_channel(path, "http://localhost").await
}

/// Connects to the control API at `addr` (fails at once if nothing listens there).
pub async fn connect(addr: &str) -> Result<ControlClient<Channel>, tonic::transport::Error> {
    Ok(ControlClient::new(channel(addr).await?))
}
