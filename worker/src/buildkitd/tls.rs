//! The daemon's side of TLS on `tcp://` addresses, as buildkitd serves them: its certificate
//! and key (`--tlscert`, `--tlskey`) and the CA its clients' certificates must chain to
//! (`--tlscacert`). A client without a certificate, or with one the CA did not sign, is
//! refused at the handshake. The files are read and checked when the daemon prepares, so a
//! bad one stops it before anything listens; handshakes are bounded in time so a peer that
//! connects and says nothing does not hold a task forever.

use super::pem::{self, PemError, PemKind};
use super::TlsFiles;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS setup was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// A file is missing, unreadable or not what it is named for.
    #[error(transparent)]
    File(#[from] PemError),
    /// A file is not named (a tcp address needs all three).
    #[error("{0} is needed for tcp:// addresses")]
    Missing(&'static str),
    /// The files do not make a TLS server (e.g. a key of a kind rustls does not take).
    #[error("the TLS files (--tlscert, --tlskey, --tlscacert) do not make a TLS server: {0}")]
    Config(String),
}

/// A file named by the flag `flag` in `flags`, else by `key` of `[grpc.tls]` in `file`;
/// with the name that named it, for errors.
fn pick(
    flags: &Option<PathBuf>,
    file: &Option<PathBuf>,
    flag: &'static str,
    key: &'static str,
) -> Result<(&'static str, PathBuf), ServerTlsError> {
    match (flags, file) {
        (Some(p), _) => Ok((flag, p.clone())),
        (None, Some(p)) => Ok((key, p.clone())),
        (None, None) => Err(ServerTlsError::Missing(flag)),
    }
}

/// The server TLS settings of the files named by `flags`, else by the config `file`'s
/// `[grpc.tls]` (all three needed), checked to make a server.
pub fn server_config(flags: &TlsFiles, file: &TlsFiles) -> Result<ServerTlsConfig, ServerTlsError> {
    let (cert_name, cert) = pick(&flags.cert, &file.cert, "--tlscert", "[grpc.tls] cert")?;
    let (key_name, key) = pick(&flags.key, &file.key, "--tlskey", "[grpc.tls] key")?;
    let (ca_name, ca) = pick(&flags.ca, &file.ca, "--tlscacert", "[grpc.tls] ca")?;
    let cert = pem::read(cert_name, &cert, PemKind::Certificates)?;
    let key = pem::read(key_name, &key, PemKind::PrivateKey)?;
    let ca = pem::read(ca_name, &ca, PemKind::Certificates)?;
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false)
        .timeout(HANDSHAKE_TIMEOUT);
    // Building a server builds the acceptor: certificate, key and CA are checked together.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| ServerTlsError::Config(error_chain(&e)))?;
    Ok(config)
}

/// `e` and its sources, `: `-joined (tonic's own message is only "transport error").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}
