//! A client of a BuildKit control API on a unix socket (`unix://PATH` or a bare path) or on
//! `tcp://HOST:PORT` (with buildctl's TLS options, `tls`), from the same protocol
//! definitions as the daemon, behaving as buildctl v0.11 does: what the tests drive the
//! daemon with. `auth` answers registry credentials from the client's docker
//! config, `session` attaches a client session serving the client's services on the
//! session's connection (`health` answers the daemon's checks), `secrets` serves `--secret` files on it, `local` is its FileSync sender of local directories, `output`
//! parses `--output` and receives exports (a tarball into a file or stdout, a directory),
//! `build` runs a build the buildctl way (session, Status, Solve through the gateway's
//! Ping/Solve/Return) and `plain` prints its progress as `--progress=plain` does.

pub mod auth;
pub mod build;
pub mod health;
pub mod local;
pub mod output;
pub mod plain;
pub mod secrets;
pub mod session;
pub mod tls;

use super::proto::control::control_client::ControlClient;
use std::path::{Path, PathBuf};
pub use tls::{ChannelError, ClientTls};
use tonic::transport::Channel;

/// A channel to the daemon at the unix socket `addr` (fails at once if nothing listens there).
pub async fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = Path::new(addr.strip_prefix("unix://").unwrap_or(addr)).to_path_buf();
    crate::grpc::unix_channel(path, "http://localhost").await
}

/// Connects to the control API at `addr` (fails at once if nothing listens there).
pub async fn connect(addr: &str) -> Result<ControlClient<Channel>, tonic::transport::Error> {
    Ok(ControlClient::new(channel(addr).await?))
}

/// A channel to the daemon at `addr`: a unix socket as [`channel`], or `tcp://HOST:PORT`
/// with `tls` (plain HTTP/2 when no TLS option is given, as buildctl). Fails at once if
/// nothing listens there or the TLS handshake fails.
pub async fn channel_with(addr: &str, tls: &ClientTls) -> Result<Channel, ChannelError> {
    if let Some(host_port) = addr.strip_prefix("tcp://") {
        return tls::tcp_channel(addr, host_port, tls).await;
    }
    if addr.contains("://") && !addr.starts_with("unix://") {
        return Err(ChannelError::Address(addr.to_string()));
    }
    if tls.is_set() {
        return Err(ChannelError::TlsOnUnix(addr.to_string()));
    }
    channel(addr).await.map_err(|e| ChannelError::Connect {
        addr: addr.to_string(),
        reason: super::tls::error_chain(&e),
    })
}

/// Connects to the control API at `addr` with `tls` (see [`channel_with`]).
pub async fn connect_with(
    addr: &str,
    tls: &ClientTls,
) -> Result<ControlClient<Channel>, ChannelError> {
    Ok(ControlClient::new(channel_with(addr, tls).await?))
}
