//! The client's half of a session (docs/BUILDKIT_PROTOCOL.md §4): `Control.Session` called
//! with the session headers, its stream bridged to a byte stream on which the client serves
//! its services (a FileSync, the health service the daemon checks, `Auth` when the client
//! answers registry credentials, `FileSend` when it receives an export, `Secrets` when it
//! has any) as the gRPC server of the session's one connection.

use super::health::Serving;
use super::output::{DirSink, TarballSink};
use super::secrets::FileSecrets;
use crate::buildkitd::proto::control::control_client::ControlClient;
use crate::buildkitd::proto::control::BytesMessage;
use crate::buildkitd::proto::filesend_packets::file_send_server::FileSendServer as PacketFileSendServer;
use crate::buildkitd::proto::filesync::auth_server::{Auth, AuthServer};
use crate::buildkitd::proto::filesync::file_send_server::FileSendServer;
use crate::buildkitd::proto::filesync::file_sync_server::{FileSync, FileSyncServer};
use crate::buildkitd::proto::grpc::health::v1::health_server::HealthServer;
use crate::buildkitd::proto::secrets::secrets_server::SecretsServer;
use crate::buildkitd::session::auth::{CREDENTIALS, FETCH_TOKEN};
use crate::buildkitd::session::filesend::FILE_SEND;
use crate::buildkitd::session::health::CHECK;
use crate::buildkitd::session::secrets::GET_SECRET;
use crate::buildkitd::session::{bridge, GRPC_METHOD, NAME, SHARED_KEY, UUID};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// The FileSync method a session serving local directories lists.
pub const DIFF_COPY: &str = "/moby.filesync.v1.FileSync/DiffCopy";

/// An attached session; dropping it ends the session.
#[derive(Debug)]
pub struct ClientSession {
    /// Its ID (what a Solve names).
    pub id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `Auth` a session serves, and whether it lists `FetchToken` (the client then does
/// Bearer exchanges itself and its credentials never reach the daemon).
#[derive(Debug, Clone)]
pub struct ServedAuth<A> {
    /// The service.
    pub auth: A,
    /// Lists `FetchToken` as well as `Credentials`.
    pub fetch_token: bool,
}

/// How the session receives an export (serving, and listing, `FileSend`).
#[derive(Debug, Clone)]
pub enum ServedOutput {
    /// A tarball (`oci`, `docker`, `tar`).
    Tarball(TarballSink),
    /// A directory (`local`).
    Dir(DirSink),
}

/// Attaches the session `id` to the daemon of `control`, serving `files` on it.
pub async fn attach<F: FileSync>(
    control: &ControlClient<Channel>,
    id: &str,
    files: F,
) -> Result<ClientSession, Status> {
    attach_with_auth::<F, super::auth::ConfigAuth>(control, id, files, None).await
}

/// Like [`attach`], also serving (and listing) `auth` when given.
pub async fn attach_with_auth<F: FileSync, A: Auth>(
    control: &ControlClient<Channel>,
    id: &str,
    files: F,
    auth: Option<ServedAuth<A>>,
) -> Result<ClientSession, Status> {
    attach_serving(control, id, files, auth, None, None).await
}

/// Like [`attach_with_auth`], also receiving an export with `output` and serving (and
/// listing) `secrets` when given.
pub async fn attach_serving<F: FileSync, A: Auth>(
    control: &ControlClient<Channel>,
    id: &str,
    files: F,
    auth: Option<ServedAuth<A>>,
    output: Option<ServedOutput>,
    secrets: Option<FileSecrets>,
) -> Result<ClientSession, Status> {
    let mut c = control.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<BytesMessage>(8);
    let mut req = Request::new(ReceiverStream::new(rx));
    let md = req.metadata_mut();
    let value = |s: &str| {
        s.parse()
            .map_err(|_| Status::invalid_argument(format!("{s:?} is not a metadata value")))
    };
    md.insert(UUID, value(id)?);
    md.insert(NAME, value("stargaze")?);
    md.insert(SHARED_KEY, value(id)?);
    md.append(GRPC_METHOD, value(DIFF_COPY)?);
    md.append(GRPC_METHOD, value(CHECK)?);
    if let Some(a) = &auth {
        md.append(GRPC_METHOD, value(CREDENTIALS)?);
        if a.fetch_token {
            md.append(GRPC_METHOD, value(FETCH_TOKEN)?);
        }
    }
    if output.is_some() {
        md.append(GRPC_METHOD, value(FILE_SEND)?);
    }
    if secrets.is_some() {
        md.append(GRPC_METHOD, value(GET_SECRET)?);
    }
    let (tarball, dir) = match output {
        Some(ServedOutput::Tarball(t)) => (Some(FileSendServer::new(t)), None),
        Some(ServedOutput::Dir(d)) => (None, Some(PacketFileSendServer::new(d))),
        None => (None, None),
    };
    let inbound = c.session(req).await?.into_inner();
    let mut bridged = bridge(inbound, || {});
    let io = bridged.io;
    let task = tokio::spawn(async move {
        // The control connection stays open as long as the session.
        let _control = c;
        let forward = async {
            while let Some(Ok(m)) = bridged.outbound.next().await {
                if tx.send(m).await.is_err() {
                    break;
                }
            }
        };
        let serve = tonic::transport::Server::builder()
            .add_service(FileSyncServer::new(files))
            .add_service(HealthServer::new(Serving))
            .add_optional_service(auth.map(|a| AuthServer::new(a.auth)))
            .add_optional_service(tarball)
            .add_optional_service(dir)
            .add_optional_service(secrets.map(SecretsServer::new))
            // The one connection; a listener that then stays open (the server would stop).
            .serve_with_incoming(
                tokio_stream::once(Ok::<_, std::io::Error>(io)).chain(tokio_stream::pending()),
            );
        tokio::select! {
            () = forward => {}
            _ = serve => {}
        }
    });
    Ok(ClientSession {
        id: id.to_string(),
        task,
    })
}
