//! Registry credentials that exist only on the client side: the reference registry
//! (distribution, `docker-registry`) with token auth through a real token issuer, an image
//! pushed there, and the daemon's session registry (the one `stargaze buildkitd` serves
//! `Control.Session` with) feeding the registry client's session manager. A client attaches
//! its session over a real `Control.Session` call and serves `moby.filesync.v1.Auth` on it.
//! Checked: a lazy layer's reads naming the session get in (credentials exchanged by the
//! daemon, or by the client itself with `FetchToken`), and keep working with the session's
//! token after the session ended; without a session the error is a clear auth error; two
//! sessions with different credentials for one registry each get their own answer; a client
//! that never answers fails the request after the bound instead of hanging it.

use stargaze_fs::cache::{ChunkCache, MemoryCache};
use stargaze_fs::fetcher::FetchOptions;
use stargaze_fs::layer::RemoteLayer;
use stargaze_fs::remote::auth::{Credentials, SessionManager, StaticCredentials};
use stargaze_fs::remote::{copy_image, CopyOptions, ImageLocation, Quiet};
use stargaze_fs::remote::{ClientOptions, Platform, Reference, RegistryClient, RemoteError};
use stargaze_suite::servers::{DockerRegistry, RegistryAuth, TokenIssuer};
use stargaze_suite::{have, require, sample_estargz};
use stargaze_worker::buildkitd::proto::control::control_server::{Control, ControlServer};
use stargaze_worker::buildkitd::proto::control::*;
// Named: `filesync` has a `BytesMessage` too (FileSend's).
use stargaze_worker::buildkitd::client::local::LocalDirs;
use stargaze_worker::buildkitd::client::session::{attach_with_auth, ClientSession, ServedAuth};
use stargaze_worker::buildkitd::proto::control::BytesMessage;
use stargaze_worker::buildkitd::proto::filesync::auth_server::Auth;
use stargaze_worker::buildkitd::proto::filesync::*;
use stargaze_worker::buildkitd::session::{AuthLimits, SessionLimits, Sessions};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

const USER: &str = "carol";
const PASS: &str = "t0ken-pass";

type Answers<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send + 'static>>;

fn ready() -> bool {
    require(have("docker-registry"), "docker-registry (Debian package)")
        && require(have("openssl"), "openssl")
}

/// The daemon's Control service as far as sessions go (the rest is not used here).
struct SessionControl(Sessions);

use stargaze_worker::buildkitd::proto::control::{
    BuildHistoryEvent, BuildHistoryRequest, UpdateBuildHistoryRequest, UpdateBuildHistoryResponse,
};

#[tonic::async_trait]
impl Control for SessionControl {
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

/// How the client's Auth service answers.
#[derive(Clone)]
enum ClientAuth {
    /// `Credentials` with this user and password.
    Share(String, String),
    /// `FetchToken` exchanges with the right credentials itself; `Credentials` refuses.
    Exchange,
    /// Never answers.
    Mute,
}

#[tonic::async_trait]
impl Auth for ClientAuth {
    async fn credentials(
        &self,
        _req: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        match self {
            ClientAuth::Share(u, p) => Ok(Response::new(CredentialsResponse {
                username: u.clone(),
                secret: p.clone(),
            })),
            ClientAuth::Exchange => Err(Status::permission_denied("credentials stay here")),
            ClientAuth::Mute => std::future::pending().await,
        }
    }
    async fn fetch_token(
        &self,
        req: Request<FetchTokenRequest>,
    ) -> Result<Response<FetchTokenResponse>, Status> {
        let r = req.into_inner();
        if !matches!(self, ClientAuth::Exchange) {
            return Err(Status::unimplemented("test"));
        }
        let mut q = vec![("service", r.service.clone())];
        for s in &r.scopes {
            q.push(("scope", s.clone()));
        }
        let body = reqwest::Client::new()
            .get(&r.realm)
            .query(&q)
            .basic_auth(USER, Some(PASS))
            .send()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .bytes()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let reply: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(FetchTokenResponse {
            token: reply["token"].as_str().unwrap_or_default().to_string(),
            expires_in: reply["expires_in"].as_i64().unwrap_or(0),
            issued_at: 0,
        }))
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

/// The daemon half: the session registry served on a unix socket, feeding `manager`.
struct Daemon {
    sessions: Sessions,
    manager: Arc<SessionManager>,
    client: Arc<RegistryClient>,
    sock: String,
    _dir: tempfile::TempDir,
}

async fn daemon(timeout: Duration) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let manager = Arc::new(SessionManager::new());
    let sessions = Sessions::new(SessionLimits::default());
    assert!(sessions.provide_credentials_to(
        manager.clone(),
        AuthLimits {
            timeout,
            ..AuthLimits::default()
        }
    ));
    let sock = dir.path().join("control.sock");
    let l = tokio::net::UnixListener::bind(&sock).unwrap();
    let incoming = futures_util::stream::unfold(l, |l| async move {
        let c = l.accept().await.map(|(s, _)| s);
        Some((c, l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ControlServer::new(SessionControl(sessions.clone())))
            .serve_with_incoming(incoming),
    );
    let client = Arc::new(
        RegistryClient::new(ClientOptions {
            sessions: manager.clone(),
            ..ClientOptions::default()
        })
        .unwrap(),
    );
    Daemon {
        sessions,
        manager,
        client,
        sock: sock.display().to_string(),
        _dir: dir,
    }
}

/// Attaches session `id` serving `auth` (listing `FetchToken` too) with the project's client;
/// dropping the session ends it. Returns once the daemon has registered its credentials.
async fn attach(d: &Daemon, id: &str, auth: ClientAuth) -> ClientSession {
    let c = stargaze_worker::buildkitd::client::connect(&d.sock)
        .await
        .unwrap();
    let served = ServedAuth {
        auth,
        fetch_token: true,
    };
    let session = attach_with_auth(&c, id, LocalDirs(HashMap::new()), Some(served))
        .await
        .unwrap();
    for _ in 0..500 {
        if d.manager.contains(id) {
            return session;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session {id} never registered its credentials");
}

async fn end(d: &Daemon, id: &str, session: ClientSession) {
    drop(session);
    for _ in 0..500 {
        if !d.manager.contains(id) && d.sessions.get(id).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session {id} still registered after its stream ended");
}

/// The token registry with the sample eStargz image pushed (with the credentials).
struct Fixture {
    issuer: TokenIssuer,
    _reg: DockerRegistry,
    reference: Reference,
    _tmp: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 20);
    let issuer = TokenIssuer::start(USER, PASS);
    let reg = DockerRegistry::start(RegistryAuth::Token(&issuer));
    let dst = format!("{}/sess/img:v1", reg.host());
    let pusher = RegistryClient::new(ClientOptions {
        fallback: vec![Arc::new(
            StaticCredentials::default().with(&reg.host(), Credentials::basic(USER, PASS)),
        )],
        ..ClientOptions::default()
    })
    .unwrap();
    copy_image(
        &pusher,
        &ImageLocation::Layout(format!("oci:{}:esgz", oci.display()).parse().unwrap()),
        &ImageLocation::Registry(Reference::parse(&dst).unwrap()),
        &CopyOptions::default(),
        &Quiet,
    )
    .await
    .unwrap();
    Fixture {
        issuer,
        _reg: reg,
        reference: Reference::parse(&dst).unwrap(),
        _tmp: tmp,
    }
}

/// Opens the image's biggest layer lazily with `sessions` (footer and TOC fetched).
async fn open_layer(
    client: &Arc<RegistryClient>,
    r: &Reference,
    sessions: &[&str],
) -> Result<Arc<RemoteLayer>, String> {
    let ids: Vec<String> = sessions.iter().map(|s| s.to_string()).collect();
    let (m, _) = client
        .resolve(r, &Platform::host(), &ids)
        .await
        .map_err(|e| e.to_string())?;
    let desc = m.layers.iter().max_by_key(|l| l.size).unwrap().clone();
    let cache = Arc::new(ChunkCache::new(Some(MemoryCache::new(64 << 20)), None));
    RemoteLayer::open(
        client.clone(),
        r,
        &desc,
        cache,
        ids,
        FetchOptions::default(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// A fresh range read of the layer's blob naming `sessions`, as a lazy read sends it.
async fn read_blob(
    client: &RegistryClient,
    r: &Reference,
    layer: &RemoteLayer,
    sessions: &[String],
) -> Result<(), RemoteError> {
    client
        .blob_range(r, &layer.digest(), 0, 4096, sessions)
        .await
        .map(|_| ())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn a_sessions_credentials_open_a_lazy_layer_and_its_token_outlives_it() {
    if !ready() {
        return;
    }
    rt().block_on(async {
        let f = fixture().await;
        let d = daemon(Duration::from_secs(10)).await;
        // No session: a clear auth error, no credentials anywhere on the daemon side.
        let e = open_layer(&d.client, &f.reference, &[])
            .await
            .err()
            .unwrap();
        assert!(
            e.contains("authentication required") || e.contains("refused"),
            "{e}"
        );
        let s1 = attach(&d, "s1", ClientAuth::Share(USER.into(), PASS.into())).await;
        let layer = open_layer(&d.client, &f.reference, &["s1"]).await.unwrap();
        assert_eq!(layer.sessions(), ["s1"]);
        end(&d, "s1", s1).await;
        // The session is gone; its token is not: the layer's reads go on.
        let before = f.issuer.requests.load(std::sync::atomic::Ordering::SeqCst);
        read_blob(&d.client, &f.reference, &layer, &layer.sessions())
            .await
            .unwrap();
        assert_eq!(
            f.issuer.requests.load(std::sync::atomic::Ordering::SeqCst),
            before,
            "the cached token of the ended session was used"
        );
        // A request that does not name the session does not get its token.
        let e = read_blob(&d.client, &f.reference, &layer, &["s2".to_string()])
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteError::Auth { .. }), "{e:?}");
    });
}

#[test]
fn a_session_that_fetches_tokens_keeps_its_credentials() {
    if !ready() {
        return;
    }
    rt().block_on(async {
        let f = fixture().await;
        let d = daemon(Duration::from_secs(10)).await;
        // Its Credentials refuses: only a token the client fetched itself can get in.
        let s = attach(&d, "tok", ClientAuth::Exchange).await;
        let layer = open_layer(&d.client, &f.reference, &["tok"]).await.unwrap();
        read_blob(&d.client, &f.reference, &layer, &["tok".to_string()])
            .await
            .unwrap();
        end(&d, "tok", s).await;
    });
}

#[test]
fn two_sessions_with_different_credentials_each_get_their_own() {
    if !ready() {
        return;
    }
    rt().block_on(async {
        let f = fixture().await;
        let d = daemon(Duration::from_secs(10)).await;
        let good = attach(&d, "good", ClientAuth::Share(USER.into(), PASS.into())).await;
        let bad = attach(&d, "bad", ClientAuth::Share(USER.into(), "wrong".into())).await;
        let (g, b) = tokio::join!(
            open_layer(&d.client, &f.reference, &["good"]),
            open_layer(&d.client, &f.reference, &["bad"]),
        );
        g.unwrap();
        let e = b.err().unwrap();
        assert!(e.contains("refused") && !e.contains("wrong"), "{e}");
        // And again the other way round, with both cached.
        let again = d
            .client
            .manifest(&f.reference, &["bad".to_string()])
            .await
            .unwrap_err();
        assert!(matches!(again, RemoteError::Auth { .. }), "{again:?}");
        d.client
            .manifest(&f.reference, &["good".to_string()])
            .await
            .unwrap();
        end(&d, "good", good).await;
        end(&d, "bad", bad).await;
    });
}

#[test]
fn a_client_that_never_answers_times_out() {
    if !ready() {
        return;
    }
    rt().block_on(async {
        let f = fixture().await;
        let d = daemon(Duration::from_secs(2)).await;
        let mute = attach(&d, "mute", ClientAuth::Mute).await;
        let e = tokio::time::timeout(
            Duration::from_secs(60),
            d.client.manifest(&f.reference, &["mute".to_string()]),
        )
        .await
        .expect("the request is bounded")
        .unwrap_err();
        let s = e.to_string();
        assert!(
            matches!(e, RemoteError::Auth { .. }) && s.contains("did not answer"),
            "{s}"
        );
        end(&d, "mute", mute).await;
    });
}
