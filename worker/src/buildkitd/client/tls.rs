//! How the client reaches a daemon on `tcp://HOST:PORT`, with buildctl's TLS options:
//! `--tlsservername` (the name the server's certificate must carry; default the host),
//! `--tlscacert` (the CA the server's certificate must chain to), `--tlscert` and
//! `--tlskey` (the client's own certificate, which a mutual-TLS daemon requires). Without
//! any of them a tcp address is plain HTTP/2, as buildctl's is. The files are read and
//! checked before connecting, so a wrong one is an error naming it.

use crate::buildkitd::pem::{self, PemError, PemKind};
use crate::buildkitd::tls::error_chain;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Longest the TLS handshake with the daemon may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// buildctl's TLS options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// `--tlsservername`.
    pub server_name: Option<String>,
    /// `--tlscacert`.
    pub ca: Option<PathBuf>,
    /// `--tlscert`.
    pub cert: Option<PathBuf>,
    /// `--tlskey`.
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// Whether any option is given (then a tcp address is reached with TLS).
    pub fn is_set(&self) -> bool {
        self.server_name.is_some() || self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Why a channel could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Not `unix://PATH`, a bare path or `tcp://HOST:PORT`.
    #[error("{0}: not a daemon address (unix://PATH or tcp://HOST:PORT)")]
    Address(String),
    /// TLS options with a unix socket.
    #[error("{0}: the TLS options are for tcp:// addresses")]
    TlsOnUnix(String),
    /// A client certificate without its key, or a key without its certificate.
    #[error("--tlscert and --tlskey go together")]
    HalfIdentity,
    /// TLS without a CA: stargaze does not read the system's roots.
    #[error("--tlscacert is needed for TLS (the system's CA roots are not read)")]
    NoCa,
    /// A TLS file is missing, unreadable or not what it is named for.
    #[error(transparent)]
    File(#[from] PemError),
    /// The settings do not make a client, or connecting failed (the handshake among).
    #[error("{addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// tonic's error with its causes.
        reason: String,
    },
}

/// `HOST` of `HOST:PORT` (`[V6]:PORT` as `V6`).
fn host_of(host_port: &str) -> &str {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// A channel to `tcp://` `host_port` (as given after the scheme), with TLS when `tls` says.
pub(super) async fn tcp_channel(
    addr: &str,
    host_port: &str,
    tls: &ClientTls,
) -> Result<Channel, ChannelError> {
    let connect_err = |e: tonic::transport::Error| ChannelError::Connect {
        addr: addr.to_string(),
        reason: error_chain(&e),
    };
    if host_port.is_empty() || host_port.contains('/') || !host_port.contains(':') {
        return Err(ChannelError::Address(addr.to_string()));
    }
    let scheme = if tls.is_set() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{host_port}"))
        .map_err(|_| ChannelError::Address(addr.to_string()))?;
    if tls.is_set() {
        let ca = tls.ca.as_deref().ok_or(ChannelError::NoCa)?;
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem::read(
                "--tlscacert",
                ca,
                PemKind::Certificates,
            )?))
            .domain_name(
                tls.server_name
                    .clone()
                    .unwrap_or_else(|| host_of(host_port).to_string()),
            )
            .timeout(HANDSHAKE_TIMEOUT);
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    pem::read("--tlscert", cert, PemKind::Certificates)?,
                    pem::read("--tlskey", key, PemKind::PrivateKey)?,
                ));
            }
            (None, None) => {}
            _ => return Err(ChannelError::HalfIdentity),
        }
        endpoint = endpoint.tls_config(config).map_err(connect_err)?;
    }
    endpoint.connect().await.map_err(connect_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("127.0.0.1:1234"), "127.0.0.1");
        assert_eq!(host_of("[::1]:1234"), "::1");
        assert_eq!(host_of("buildkitd.lan:1234"), "buildkitd.lan");
    }

    #[tokio::test]
    async fn refuses_bad_options_before_connecting() {
        let some = |p: &str| Some(PathBuf::from(p));
        let half = ClientTls {
            ca: some("/nonexistent/ca.pem"),
            cert: some("/nonexistent/cert.pem"),
            ..ClientTls::default()
        };
        assert!(matches!(
            tcp_channel("tcp://127.0.0.1:1", "127.0.0.1:1", &half).await,
            Err(ChannelError::File(_))
        ));
        let no_ca = ClientTls {
            cert: some("/x"),
            key: some("/y"),
            ..ClientTls::default()
        };
        assert!(matches!(
            tcp_channel("tcp://127.0.0.1:1", "127.0.0.1:1", &no_ca).await,
            Err(ChannelError::NoCa)
        ));
        assert!(matches!(
            tcp_channel("tcp://127.0.0.1", "127.0.0.1", &ClientTls::default()).await,
            Err(ChannelError::Address(_))
        ));
    }
}
