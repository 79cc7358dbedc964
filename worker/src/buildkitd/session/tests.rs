//! Sessions end to end in one process: a Control service whose `Session` is the registry's,
//! served on a unix socket; the client's session (`crate::buildkitd::client::session`)
//! attached over a real `Control.Session` call, serving on the session's connection, a FileSync sender written here as fsutil's
//! sender behaves (honest, or hostile in one way each); the daemon side receives into a
//! temporary directory.

use super::filesync::{receive, DiffCopyOptions, FileSyncError, ReceiveLimits};
use super::Sessions;
use crate::buildkitd::proto::control::control_server::{Control, ControlServer};
use crate::buildkitd::proto::control::*;
use crate::buildkitd::proto::filesync::auth_server::Auth;
use crate::buildkitd::proto::filesync::file_sync_server::FileSync;
use crate::buildkitd::proto::filesync::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use crate::buildkitd::proto::fsutil::types::{packet::PacketType, Packet, Stat};
use stargaze_fs::remote::auth::{Credentials, Secret, SessionManager};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

struct TestControl(Sessions);

use crate::buildkitd::proto::control::{
    BuildHistoryEvent, BuildHistoryRequest, UpdateBuildHistoryRequest, UpdateBuildHistoryResponse,
};

#[tonic::async_trait]
impl Control for TestControl {
    async fn disk_usage(
        &self,
        _: Request<DiskUsageRequest>,
    ) -> Result<Response<DiskUsageResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    type PruneStream = Answers<UsageRecord>;
    async fn prune(&self, _: Request<PruneRequest>) -> Result<Response<Self::PruneStream>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn solve(&self, _: Request<SolveRequest>) -> Result<Response<SolveResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    type StatusStream = Answers<StatusResponse>;
    async fn status(
        &self,
        _: Request<StatusRequest>,
    ) -> Result<Response<Self::StatusStream>, Status> {
        Err(Status::unimplemented("test"))
    }
    type SessionStream = Answers<BytesMessage>;
    async fn session(
        &self,
        req: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Ok(Response::new(Box::pin(self.0.attach(req)?.into_inner())))
    }
    async fn list_workers(
        &self,
        _: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    type ListenBuildHistoryStream = Answers<BuildHistoryEvent>;
    async fn listen_build_history(
        &self,
        _: Request<BuildHistoryRequest>,
    ) -> Result<Response<Self::ListenBuildHistoryStream>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn update_build_history(
        &self,
        _: Request<UpdateBuildHistoryRequest>,
    ) -> Result<Response<UpdateBuildHistoryResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
}

/// How the test sender misbehaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rogue {
    Honest,
    /// Answers the first REQ with data for another ID.
    DataForOther,
    /// Sends more bytes than the stat's size.
    Oversend,
}

/// fsutil's sender over a fixed tree: stats, then data on request, then FIN.
#[derive(Clone)]
struct Sender {
    tree: Vec<(Stat, Vec<u8>)>,
    rogue: Rogue,
}

#[tonic::async_trait]
impl FileSync for Sender {
    type DiffCopyStream = Answers<Packet>;
    async fn diff_copy(
        &self,
        req: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let dir = req
            .metadata()
            .get("dir-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(dir, "context");
        let mut reqs = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            for (stat, _) in &me.tree {
                let p = Packet {
                    r#type: PacketType::PacketStat as i32,
                    stat: Some(stat.clone()),
                    ..Packet::default()
                };
                if tx.send(Ok(p)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Ok(Packet::default())).await;
            while let Some(Ok(p)) = reqs.next().await {
                if p.r#type == PacketType::PacketFin as i32 {
                    let _ = tx
                        .send(Ok(Packet {
                            r#type: PacketType::PacketFin as i32,
                            ..Packet::default()
                        }))
                        .await;
                    return;
                }
                let Some((_, data)) = me.tree.get(p.id as usize) else {
                    return;
                };
                let id = if me.rogue == Rogue::DataForOther {
                    p.id + 100
                } else {
                    p.id
                };
                let mut data = data.clone();
                if me.rogue == Rogue::Oversend {
                    data.extend_from_slice(b"more");
                }
                for chunk in data.chunks(32 * 1024).chain([&[][..]]) {
                    let p = Packet {
                        r#type: PacketType::PacketData as i32,
                        id,
                        data: chunk.to_vec(),
                        ..Packet::default()
                    };
                    if tx.send(Ok(p)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
    type TarStreamStream = Answers<Packet>;
    async fn tar_stream(
        &self,
        _: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::TarStreamStream>, Status> {
        Err(Status::unimplemented("test"))
    }
}

const DIR: u32 = 1 << 31;
const LINK: u32 = 1 << 27;

fn stat(path: &str, mode: u32, size: usize) -> Stat {
    Stat {
        path: path.into(),
        mode,
        size: size as i64,
        mod_time: 1_600_000_000_123_456_789,
        ..Stat::default()
    }
}

fn file(path: &str, mode: u32, data: &[u8]) -> (Stat, Vec<u8>) {
    (stat(path, mode, data.len()), data.to_vec())
}

fn symlink(path: &str, target: &str) -> (Stat, Vec<u8>) {
    let mut s = stat(path, LINK | 0o777, 0);
    s.linkname = target.into();
    (s, vec![])
}

fn dir(path: &str, mode: u32) -> (Stat, Vec<u8>) {
    (stat(path, DIR | mode, 0), vec![])
}

/// A daemon-side registry served on a unix socket in `tmp`.
pub(super) async fn daemon(tmp: &Path) -> (Sessions, String) {
    daemon_with(tmp, Sessions::default()).await
}

/// Like [`daemon`] with the registry given.
pub(super) async fn daemon_with(tmp: &Path, sessions: Sessions) -> (Sessions, String) {
    let sock = tmp.join("control.sock");
    let l = tokio::net::UnixListener::bind(&sock).unwrap();
    let svc = ControlServer::new(TestControl(sessions.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l)),
    );
    (sessions, sock.display().to_string())
}

/// Attaches session `id` serving `sender` (the client's session, held while it lives).
async fn attach(
    addr: &str,
    id: &str,
    sender: Sender,
) -> Result<crate::buildkitd::client::session::ClientSession, Status> {
    attach_with(addr, id, sender, None).await
}

/// Like [`attach`], also serving (and listing) `Auth` when given.
async fn attach_with(
    addr: &str,
    id: &str,
    sender: Sender,
    auth: Option<TestAuth>,
) -> Result<crate::buildkitd::client::session::ClientSession, Status> {
    use crate::buildkitd::client::session::{attach_with_auth, ServedAuth};
    let c = crate::buildkitd::client::connect(addr).await.unwrap();
    let auth = auth.map(|auth| ServedAuth {
        auth,
        fetch_token: false,
    });
    attach_with_auth(&c, id, sender, auth).await
}

pub(super) async fn session(sessions: &Sessions, id: &str) -> std::sync::Arc<super::Session> {
    for _ in 0..500 {
        if let Some(s) = sessions.get(id) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session {id} never attached");
}

fn opts() -> DiffCopyOptions {
    DiffCopyOptions {
        dir_name: "context".into(),
        exclude_patterns: vec!["*.tmp".into()],
        ..DiffCopyOptions::default()
    }
}

/// Receives `tree` into a fresh directory under `tmp` (next to `outside`, which must stay
/// empty).
async fn transfer(
    tree: Vec<(Stat, Vec<u8>)>,
    rogue: Rogue,
    limits: ReceiveLimits,
) -> (
    tempfile::TempDir,
    Result<super::filesync::Received, FileSyncError>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let (sessions, addr) = daemon(tmp.path()).await;
    let client = attach(&addr, "s1", Sender { tree, rogue }).await.unwrap();
    let s = session(&sessions, "s1").await;
    assert!(s.serves("/moby.filesync.v1.FileSync/DiffCopy"));
    let target = tmp.path().join("ctx").join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::create_dir(tmp.path().join("outside")).unwrap();
    let got = receive(s.channel(), &opts(), &target, &limits).await;
    drop(client);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("outside"))
            .unwrap()
            .count(),
        0,
        "nothing written outside the target"
    );
    assert!(!tmp.path().join("ctx").join("x").exists());
    (tmp, got)
}

#[tokio::test]
async fn a_tree_arrives_whole() {
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let mut hard = stat("h", 0o755, big.len());
    hard.linkname = "x".into();
    // A hard link's first entry comes before it.
    let tree = vec![
        file("x", 0o755, &big),
        dir("a", 0o750),
        file("a/f", 0o640, b"hello"),
        symlink("a/l", "../x"),
        file("e", 0o600, b""),
        (hard, vec![]),
    ];
    let (tmp, got) = transfer(tree, Rogue::Honest, ReceiveLimits::default()).await;
    let got = got.unwrap();
    assert_eq!(got.entries, 6);
    assert_eq!(got.files, 3);
    assert_eq!(got.bytes, 100_005);
    let t = tmp.path().join("ctx/target");
    assert_eq!(std::fs::read(t.join("a/f")).unwrap(), b"hello");
    assert_eq!(std::fs::read(t.join("x")).unwrap(), big);
    assert_eq!(std::fs::read(t.join("e")).unwrap(), b"");
    assert_eq!(
        std::fs::read_link(t.join("a/l")).unwrap(),
        Path::new("../x")
    );
    assert_eq!(std::fs::read(t.join("h")).unwrap(), big);
    let mode = |p: &str| {
        std::fs::symlink_metadata(t.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("a"), 0o750);
    assert_eq!(mode("a/f"), 0o640);
    assert_eq!(mode("x"), 0o755);
    let mtime = std::fs::metadata(t.join("a/f"))
        .unwrap()
        .modified()
        .unwrap();
    let want = std::time::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    assert_eq!(mtime, want);
}

fn refused(got: Result<super::filesync::Received, FileSyncError>) -> FileSyncError {
    match got {
        Ok(r) => panic!("hostile transfer accepted: {r:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn an_escaping_path_is_refused() {
    let (_t, got) = transfer(
        vec![file("../x", 0o644, b"evil")],
        Rogue::Honest,
        ReceiveLimits::default(),
    )
    .await;
    assert!(matches!(refused(got), FileSyncError::Path { .. }));
}

#[tokio::test]
async fn an_absolute_path_is_refused() {
    let (t, got) = transfer(
        vec![file("/tmp/stargaze-evil", 0o644, b"evil")],
        Rogue::Honest,
        ReceiveLimits::default(),
    )
    .await;
    assert!(matches!(refused(got), FileSyncError::Path { .. }));
    assert!(!t.path().join("ctx/target/tmp").exists());
}

#[tokio::test]
async fn a_file_beneath_a_symlink_is_refused() {
    // l points at the sibling "outside" directory; l/f would land there.
    let tree = vec![symlink("l", "../../outside"), file("l/f", 0o644, b"evil")];
    let (_t, got) = transfer(tree, Rogue::Honest, ReceiveLimits::default()).await;
    assert!(matches!(refused(got), FileSyncError::Path { .. }));
}

#[tokio::test]
async fn a_huge_size_is_refused() {
    let mut s = stat("big", 0o644, 0);
    s.size = i64::MAX;
    let (_t, got) = transfer(vec![(s, vec![])], Rogue::Honest, ReceiveLimits::default()).await;
    assert!(matches!(refused(got), FileSyncError::Bound(_)));
}

#[tokio::test]
async fn too_many_entries_are_refused() {
    let tree = (0..10)
        .map(|i| file(&format!("f{i}"), 0o644, b"x"))
        .collect();
    let limits = ReceiveLimits {
        max_entries: 5,
        ..ReceiveLimits::default()
    };
    let (_t, got) = transfer(tree, Rogue::Honest, limits).await;
    assert!(matches!(refused(got), FileSyncError::Bound(_)));
}

#[tokio::test]
async fn data_for_a_file_not_requested_is_refused() {
    let (_t, got) = transfer(
        vec![file("f", 0o644, b"abc")],
        Rogue::DataForOther,
        ReceiveLimits::default(),
    )
    .await;
    assert!(matches!(refused(got), FileSyncError::Protocol(_)));
}

#[tokio::test]
async fn more_bytes_than_the_size_are_refused() {
    let (_t, got) = transfer(
        vec![file("f", 0o644, b"abc")],
        Rogue::Oversend,
        ReceiveLimits::default(),
    )
    .await;
    assert!(matches!(refused(got), FileSyncError::Path { .. }));
}

#[tokio::test]
async fn a_listed_twice_path_is_refused() {
    let tree = vec![dir("d", 0o755), file("d", 0o644, b"x")];
    let (_t, got) = transfer(tree, Rogue::Honest, ReceiveLimits::default()).await;
    assert!(matches!(refused(got), FileSyncError::Path { .. }));
}

#[tokio::test]
async fn sessions_are_checked_and_removed_when_they_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (sessions, addr) = daemon(tmp.path()).await;
    // No ID: refused.
    let mut c = crate::buildkitd::client::connect(&addr).await.unwrap();
    let e = c
        .session(tokio_stream::once(BytesMessage { data: vec![] }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let sender = Sender {
        tree: vec![],
        rogue: Rogue::Honest,
    };
    let client = attach(&addr, "s2", sender.clone()).await.unwrap();
    let s = session(&sessions, "s2").await;
    assert_eq!(s.headers.name, "stargaze");
    assert_eq!(s.headers.shared_key, "s2");
    assert_eq!(
        s.methods(),
        [
            "/moby.filesync.v1.FileSync/DiffCopy",
            "/grpc.health.v1.Health/Check"
        ]
    );
    drop(s);
    // The same ID again: refused while the first is attached.
    let e = attach(&addr, "s2", sender).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    // The client goes away: the session is removed.
    drop(client);
    for _ in 0..500 {
        if sessions.get("s2").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session s2 still registered after its stream ended");
}

/// A client's Auth service: per host `(username, secret)`; hosts not listed never answer.
#[derive(Clone)]
struct TestAuth(std::collections::HashMap<String, (String, String)>);

#[tonic::async_trait]
impl Auth for TestAuth {
    async fn credentials(
        &self,
        req: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        match self.0.get(&req.get_ref().host) {
            Some((u, s)) => Ok(Response::new(CredentialsResponse {
                username: u.clone(),
                secret: s.clone(),
            })),
            None => std::future::pending().await,
        }
    }
    async fn fetch_token(
        &self,
        _: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
}

#[tokio::test]
async fn a_session_serving_auth_answers_credentials_while_attached() {
    let tmp = tempfile::tempdir().unwrap();
    let (sessions, addr) = daemon(tmp.path()).await;
    let manager = std::sync::Arc::new(SessionManager::new());
    let limits = super::AuthLimits {
        timeout: Duration::from_secs(1),
        ..super::AuthLimits::default()
    };
    assert!(sessions.provide_credentials_to(manager.clone(), limits));
    assert!(!sessions.provide_credentials_to(manager.clone(), limits));
    let auth = TestAuth(
        [
            ("basic:5000", ("u", "p")),
            ("idtoken:5000", ("", "refresh")),
            ("anon:5000", ("", "")),
            ("bad:5000", ("a:b", "p")),
        ]
        .into_iter()
        .map(|(h, (u, s))| (h.to_string(), (u.to_string(), s.to_string())))
        .collect(),
    );
    let sender = Sender {
        tree: vec![],
        rogue: Rogue::Honest,
    };
    // A session without Auth is not a provider.
    let plain = attach(&addr, "plain", sender.clone()).await.unwrap();
    session(&sessions, "plain").await;
    assert!(!manager.contains("plain"));
    let client = attach_with(&addr, "a1", sender, Some(auth)).await.unwrap();
    session(&sessions, "a1").await;
    assert!(manager.contains("a1"));
    let ids = ["a1".to_string()];
    assert_eq!(
        manager.credentials(&ids, "basic:5000").await.unwrap(),
        Some(Credentials::basic("u", "p"))
    );
    assert_eq!(
        manager.credentials(&ids, "idtoken:5000").await.unwrap(),
        Some(Credentials::IdentityToken(Secret::new("refresh")))
    );
    assert_eq!(manager.credentials(&ids, "anon:5000").await.unwrap(), None);
    let e = manager.credentials(&ids, "bad:5000").await.unwrap_err();
    assert!(e.to_string().contains("colon"), "{e}");
    // A host the client never answers for: the call times out, the error names the session.
    let e = manager.credentials(&ids, "mute:5000").await.unwrap_err();
    assert!(
        e.to_string().contains("a1") && e.to_string().contains("did not answer"),
        "{e}"
    );
    drop(client);
    drop(plain);
    for _ in 0..500 {
        if !manager.contains("a1") && sessions.get("a1").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session a1 still a credential provider after its stream ended");
}
