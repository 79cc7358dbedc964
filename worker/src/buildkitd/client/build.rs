//! A build the way buildctl v0.11 runs `build --frontend dockerfile.v0` (docs/
//! BUILDKIT_PROTOCOL.md §5): `ListWorkers`, then a session serving the local directories,
//! `Status{Ref}` printed as plain progress, and `Solve` with neither frontend nor
//! definition while the gateway (`LLBBridge`, every call with the build's ID in
//! `buildkit-controlapi-buildid`) is driven: `Ping`, `Solve` with the frontend and its
//! attributes, `Return` with the result or the error. [`Via::Direct`] sends the frontend in
//! the control `Solve` instead, as BuildKit's Go client does for `Solve` with a frontend.
//! With an output (`--output type=oci|docker|tar|local,dest=…`) the session also serves
//! `FileSend` and the outcome says how the export was received.

use super::auth::ConfigAuth;
use super::local::LocalDirs;
use super::output::{parse_output, DirSink, Output, OutputError, Received, TarballSink};
use super::plain::Plain;
use super::secrets::FileSecrets;
use super::session::{attach_serving, ServedAuth, ServedOutput};
use crate::buildkitd::gateway::BUILD_ID;
use crate::buildkitd::proto::control::control_client::ControlClient;
use crate::buildkitd::proto::control::{
    ListWorkersRequest, SolveRequest, SolveResponse, StatusRequest,
};
use crate::buildkitd::proto::filesync::file_sync_server::FileSync;
use crate::buildkitd::proto::gateway::llb_bridge_client::LlbBridgeClient;
use crate::buildkitd::proto::gateway::{self, PingRequest, ReturnRequest};
use crate::buildkitd::proto::google::rpc;
use crate::frontend::guards::random_suffix;
use stargaze_fs::remote::auth::DockerConfig;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// How the frontend is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Through the gateway (buildctl's way).
    Gateway,
    /// In the control Solve.
    Direct,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The frontend (`dockerfile.v0`).
    pub frontend: String,
    /// Its attributes (`--opt`).
    pub attrs: HashMap<String, String>,
    /// `--local NAME=DIR`.
    pub locals: HashMap<String, PathBuf>,
    /// The exporter (`--output type=…`; empty: none).
    pub exporter: String,
    /// Its attributes.
    pub exporter_attrs: HashMap<String, String>,
    /// How the frontend is asked for.
    pub via: Via,
    /// Registry credentials the session answers (buildctl answers from the user's docker
    /// config); `None`: the session serves no `Auth`.
    pub docker_config: Option<DockerConfig>,
    /// Where an export sent to the client lands (`--output …,dest=`); the session then
    /// serves `FileSend`.
    pub output: Option<Output>,
    /// `--secret id=ID,src=FILE`: secrets the session serves (none: no `Secrets`).
    pub secrets: HashMap<String, PathBuf>,
}

impl BuildOptions {
    /// `dockerfile.v0` over `context` (also the `dockerfile` local), through the gateway.
    pub fn dockerfile(context: impl Into<PathBuf>) -> Self {
        let c = context.into();
        BuildOptions {
            frontend: "dockerfile.v0".into(),
            attrs: HashMap::new(),
            locals: [
                ("context".to_string(), c.clone()),
                ("dockerfile".to_string(), c),
            ]
            .into_iter()
            .collect(),
            exporter: String::new(),
            exporter_attrs: HashMap::new(),
            via: Via::Gateway,
            docker_config: None,
            output: None,
            secrets: HashMap::new(),
        }
    }

    /// Takes `--output type=…[,dest=…][,key=value…]`: the exporter, its attributes and
    /// where the export lands.
    pub fn set_output(&mut self, spec: &str) -> Result<(), OutputError> {
        let o = parse_output(spec)?;
        self.exporter = o.exporter;
        self.exporter_attrs = o.attrs;
        self.output = o.output;
        Ok(())
    }
}

/// How a build went.
pub struct BuildOutcome {
    /// The Solve's answer.
    pub result: Result<SolveResponse, Status>,
    /// The progress seen.
    pub progress: Plain,
    /// How the export to the client ended here (bytes of a tarball, files of a directory,
    /// or why writing it failed); none: nothing was received.
    pub exported: Option<Result<u64, String>>,
}

fn with_build_id<T>(msg: T, id: &str) -> Result<Request<T>, Status> {
    let mut r = Request::new(msg);
    let v: MetadataValue<_> = id
        .parse()
        .map_err(|_| Status::invalid_argument("build ID is not a metadata value"))?;
    r.metadata_mut().insert(BUILD_ID, v);
    Ok(r)
}

/// The gateway side: Ping, Solve, Return (with the error when the Solve failed).
async fn gateway(channel: Channel, id: &str, opts: &BuildOptions) -> Result<(), Status> {
    let mut g = LlbBridgeClient::new(channel);
    g.ping(with_build_id(PingRequest {}, id)?).await?;
    let solved = g
        .solve(with_build_id(
            gateway::SolveRequest {
                frontend: opts.frontend.clone(),
                frontend_opt: opts.attrs.clone(),
                allow_result_return: true,
                allow_result_array_ref: true,
                ..gateway::SolveRequest::default()
            },
            id,
        )?)
        .await;
    let ret = match solved {
        Ok(r) => ReturnRequest {
            result: r.into_inner().result,
            error: None,
        },
        Err(e) => ReturnRequest {
            result: None,
            error: Some(rpc::Status {
                code: e.code() as i32,
                message: e.message().to_string(),
                details: Vec::new(),
            }),
        },
    };
    g.r#return(with_build_id(ret, id)?).await?;
    Ok(())
}

/// Runs a build on the daemon of `channel`, its session serving `opts.locals`, printing
/// plain progress to `out`.
pub async fn build(
    channel: Channel,
    opts: &BuildOptions,
    out: Box<dyn Write + Send>,
) -> Result<BuildOutcome, Status> {
    build_with(channel, opts, LocalDirs(opts.locals.clone()), out).await
}

/// Like [`build`], the session serving `files` instead.
pub async fn build_with<F: FileSync>(
    channel: Channel,
    opts: &BuildOptions,
    files: F,
    out: Box<dyn Write + Send>,
) -> Result<BuildOutcome, Status> {
    let mut control = ControlClient::new(channel.clone());
    control.list_workers(ListWorkersRequest::default()).await?;
    let auth = opts.docker_config.clone().map(|c| ServedAuth {
        auth: ConfigAuth(c),
        fetch_token: false,
    });
    let (served, received): (Option<ServedOutput>, Option<Received>) = match &opts.output {
        None => (None, None),
        Some(Output::Dir(d)) => {
            let sink = DirSink::new(d.clone());
            let r = sink.received.clone();
            (Some(ServedOutput::Dir(sink)), Some(r))
        }
        Some(o) => {
            let sink = TarballSink::new(o.clone());
            let r = sink.received.clone();
            (Some(ServedOutput::Tarball(sink)), Some(r))
        }
    };
    let secrets = (!opts.secrets.is_empty()).then(|| FileSecrets(opts.secrets.clone()));
    let session = attach_serving(&control, &random_suffix(), files, auth, served, secrets).await?;
    let build_ref = format!("build-{}", random_suffix());
    let mut c3 = control.clone();
    let status_req = StatusRequest {
        r#ref: build_ref.clone(),
    };
    let solve_req = SolveRequest {
        r#ref: build_ref.clone(),
        session: session.id.clone(),
        exporter: opts.exporter.clone(),
        exporter_attrs: opts.exporter_attrs.clone(),
        frontend: if opts.via == Via::Direct {
            opts.frontend.clone()
        } else {
            String::new()
        },
        frontend_attrs: if opts.via == Via::Direct {
            opts.attrs.clone()
        } else {
            HashMap::new()
        },
        ..SolveRequest::default()
    };
    let mut c2 = control.clone();
    let solve = async move { c2.solve(solve_req).await.map(|r| r.into_inner()) };
    let progress = tokio::spawn(async move {
        let mut plain = Plain::new(out);
        if let Ok(s) = c3.status(status_req).await {
            let mut s = s.into_inner();
            while let Some(Ok(r)) = s.next().await {
                plain.update(&r);
            }
        }
        plain
    });
    let result = match opts.via {
        Via::Direct => solve.await,
        Via::Gateway => {
            let (r, g) = tokio::join!(solve, gateway(channel, &build_ref, opts));
            if let Err(e) = g {
                tracing::debug!(error = %e, "gateway");
            }
            r
        }
    };
    // The status stream gets 3 s after the Solve to end, as buildctl gives it.
    let abort = progress.abort_handle();
    let progress = match tokio::time::timeout(Duration::from_secs(3), progress).await {
        Ok(Ok(p)) => p,
        _ => {
            abort.abort();
            Plain::new(Box::new(std::io::sink()))
        }
    };
    drop(session);
    let exported = received.and_then(|r| r.lock().ok().and_then(|g| g.clone()));
    Ok(BuildOutcome {
        result,
        progress,
        exported,
    })
}
