//! `stargaze buildkitd`: BuildKit's daemon for the OCI worker, reachable by `buildctl` and
//! the tools built on BuildKit's client. Started in three steps: [`Buildkitd::prepare`]
//! checks the flags (addresses, `--containerd-worker`, `--group`) and reads the config file
//! before anything is created; [`Prepared::open`] opens the worker under the root (its state
//! held exclusively, as buildkitd holds its root); [`Buildkitd::serve`] serves the control
//! API on every address until its shutdown future resolves, then removes the sockets.
//! `tcp://` addresses are served with mutual TLS (`tls`: the client must present a
//! certificate signed by `--tlscacert`), unix sockets in the clear, both at once.
//! Dropping the daemon closes the worker (lazy mounts unmounted, lock released).
//!
//! Sockets are made as buildkitd makes them: mode 0660, owned by the daemon's user and by
//! `--group` (else the daemon's own group); a missing parent directory is created 0700, or
//! 0770 with that group when one is given. Every connection is also checked against the
//! same rule by its peer credentials (`crate::peer`).
//!
//! `address` parses addresses and knows the defaults, `tls` and `pem` read the TLS files
//! (`pem` for the client too), `control` is the service, `solver`,
//! `gateway`, `dockerfile`, `exporter` (with `to_client` and `archive` for the exports sent
//! to the client) and `jobs` run builds for it (`cancel`: a build whose client went away is
//! cancelled; `history`: their records), `session` the clients' sessions, `wire` maps the worker's facts to messages,
//! `proto` is the generated code.

mod address;
pub mod archive;
mod cancel;
pub mod client;
mod control;
pub mod dockerfile;
pub mod exporter;
pub mod gateway;
mod history;
pub mod jobs;
pub mod pem;
pub mod proto;
pub mod session;
pub mod solver;
pub mod tls;
mod to_client;
mod wire;

pub use address::{
    default_address, default_config, default_root, in_user_namespace, rootless_defaults,
    AddressError, Listen, TlsFiles,
};
pub use control::ControlService;

use crate::config::{Config, ConfigError, OciWorkerFlags};
use crate::executor::NetworkKind;
use crate::identity::labels;
use crate::oci_worker::{network_choice, LockMode, OciWorker, OpenError, WorkerSettings};
use crate::peer::{PeerError, PeerPolicy};
use crate::registry_client::RegistryOverrides;
use proto::control::control_server::ControlServer;
use proto::types;
use stargaze_fs::remote::Platform;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// buildkitd's flags, as given (`None`: not given, the default applies).
#[derive(Debug, Clone, Default)]
pub struct BuildkitdOptions {
    /// `--addr` (repeatable).
    pub addrs: Vec<String>,
    /// `--root`.
    pub root: Option<PathBuf>,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--group`: a group name or numeric ID.
    pub group: Option<String>,
    /// `--containerd-worker` true|false|auto.
    pub containerd_worker: Option<String>,
    /// `--rootless`.
    pub rootless: Option<bool>,
    /// `--tlscert`, `--tlskey`, `--tlscacert` (each over the file's `[grpc.tls]`).
    pub tls: TlsFiles,
    /// `--allow-insecure-entitlement` (repeatable): `network.host`, `security.insecure`.
    pub insecure_entitlements: Vec<String>,
    /// The `--oci-worker-*` flags.
    pub oci: OciWorkerFlags,
}

/// Why the daemon could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum BuildkitdError {
    /// A bad `--addr`.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// `--containerd-worker` asks for a worker stargaze does not have.
    #[error("--containerd-worker={0}: stargaze buildkitd has only the OCI worker; use --containerd-worker=false")]
    ContainerdWorker(String),
    /// `--allow-insecure-entitlement` names no entitlement.
    #[error(
        "--allow-insecure-entitlement={0}: unknown entitlement (network.host, security.insecure)"
    )]
    Entitlement(String),
    /// `--group` names no group.
    #[error("--group {group}: {reason}")]
    Group {
        /// As given.
        group: String,
        /// Why.
        reason: String,
    },
    /// The config file could not be read or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The worker could not be opened.
    #[error(transparent)]
    Worker(Box<OpenError>),
    /// The root or a socket directory could not be made, or a socket bound.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket path cannot work, or could not be secured.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The TLS files of the tcp addresses are wrong.
    #[error(transparent)]
    Tls(#[from] tls::ServerTlsError),
    /// A tcp address could not be listened on.
    #[error("listening on tcp://{addr}: {source}")]
    ListenTcp {
        /// `HOST:PORT`.
        addr: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving the control API: {0}")]
    Serve(#[source] tonic::transport::Error),
}

impl From<OpenError> for BuildkitdError {
    fn from(e: OpenError) -> Self {
        BuildkitdError::Worker(Box::new(e))
    }
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BuildkitdError + 'a {
    move |source| BuildkitdError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Checked flags and the config read; nothing created yet.
#[derive(Debug)]
pub struct Prepared {
    addresses: Vec<Listen>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    root: PathBuf,
    group: Option<u32>,
    settings: WorkerSettings,
    entitlements: Vec<String>,
}

/// The daemon with its worker open.
pub struct Buildkitd {
    worker: Arc<OciWorker>,
    record: types::WorkerRecord,
    addresses: Vec<Listen>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    root: PathBuf,
    group: Option<u32>,
    entitlements: Vec<String>,
}

/// A group name or numeric ID as a group ID.
fn group_id(group: &str) -> Result<u32, BuildkitdError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(BuildkitdError::Group {
            group: group.to_string(),
            reason: "no such group".into(),
        }),
        Err(e) => Err(BuildkitdError::Group {
            group: group.to_string(),
            reason: e.to_string(),
        }),
    }
}

impl Buildkitd {
    /// The first step: flags checked and the config file read (`--config`, else the default
    /// file when it exists): flags over the file's `root`, `[grpc] address`, `gid` and
    /// `[grpc.tls]`, and the `--oci-worker-*` flags over its `[worker.oci]`. The TLS files
    /// are read and checked here when a tcp address needs them.
    pub fn prepare(opts: BuildkitdOptions) -> Result<Prepared, BuildkitdError> {
        match opts.containerd_worker.as_deref() {
            None | Some("false") | Some("auto") => {}
            Some(other) => return Err(BuildkitdError::ContainerdWorker(other.to_string())),
        }
        let userns = in_user_namespace();
        let rootless = rootless_defaults();
        let file = match &opts.config {
            Some(p) => Config::load(p)?,
            None => {
                let p = default_config(rootless);
                if p.exists() {
                    Config::load(&p)?
                } else {
                    Config::default()
                }
            }
        };
        if !file.not_yet_used.is_empty() {
            tracing::info!(sections = ?file.not_yet_used, "config sections not used by stargaze yet");
        }
        // Flags, then the file's `[grpc]` and `root`, then the defaults.
        let addrs = if !opts.addrs.is_empty() {
            opts.addrs.clone()
        } else if !file.daemon.addresses.is_empty() {
            file.daemon.addresses.clone()
        } else {
            vec![default_address(rootless)]
        };
        let tls_files = opts.tls.or(&file.daemon.tls);
        let mut addresses = Vec::new();
        for a in &addrs {
            let l = address::parse(a, &tls_files)?;
            if let Listen::Unix(p) = &l {
                crate::peer::check_path(p)?;
            }
            addresses.push(l);
        }
        let tls = if addresses.iter().any(|a| matches!(a, Listen::Tcp(_))) {
            Some(tls::server_config(&opts.tls, &file.daemon.tls)?)
        } else {
            None
        };
        let group = match opts.group.as_deref() {
            Some(g) => Some(group_id(g)?),
            None => file.daemon.gid,
        };
        let root = opts
            .root
            .clone()
            .or_else(|| file.daemon.root.clone())
            .unwrap_or_else(|| default_root(rootless));
        let mut flags = opts.oci.clone();
        // buildkitd's --rootless (default: on in a user namespace) is the worker's rootless mode.
        if flags.rootless.is_none() && opts.rootless.unwrap_or(userns) {
            flags.rootless = Some(true);
        }
        let settings = WorkerSettings::from_config(&file, &flags, &RegistryOverrides::default())?;
        // The flags, when given, replace the file's list (as buildkitd's flag does).
        let entitlements = if opts.insecure_entitlements.is_empty() {
            file.daemon.insecure_entitlements.clone()
        } else {
            opts.insecure_entitlements.clone()
        };
        if let Some(e) = entitlements
            .iter()
            .find(|e| !crate::config::ENTITLEMENTS.contains(&e.as_str()))
        {
            return Err(BuildkitdError::Entitlement(e.clone()));
        }
        Ok(Prepared {
            addresses,
            tls,
            root,
            group,
            settings,
            entitlements,
        })
    }

    /// The addresses served.
    pub fn addresses(&self) -> &[Listen] {
        &self.addresses
    }

    /// The unix sockets served.
    fn sockets(&self) -> impl Iterator<Item = &PathBuf> {
        self.addresses.iter().filter_map(|a| match a {
            Listen::Unix(p) => Some(p),
            Listen::Tcp(_) => None,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The worker as `ListWorkers` reports it.
    pub fn record(&self) -> &types::WorkerRecord {
        &self.record
    }

    /// Binds every address (the tcp ones first, so a client that finds a socket finds them
    /// too), then serves the control API until `shutdown` resolves: unix sockets in the
    /// clear, tcp addresses with mutual TLS. The sockets are removed afterwards (also when
    /// binding an address failed).
    pub async fn serve(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), BuildkitdError> {
        use futures_util::FutureExt;
        let policy = PeerPolicy {
            // SAFETY: getgid has no preconditions.
            group: Some(self.group.unwrap_or_else(|| unsafe { libc::getgid() })),
        };
        let mut tcp = Vec::new();
        for a in &self.addresses {
            if let Listen::Tcp(addr) = a {
                let l = tokio::net::TcpListener::bind(addr.as_str())
                    .await
                    .map_err(|source| BuildkitdError::ListenTcp {
                        addr: addr.clone(),
                        source,
                    })?;
                tracing::info!(address = %a, "serving the control API with mutual TLS");
                tcp.push(Box::pin(tonic::transport::server::TcpIncoming::from(l)));
            }
        }
        let mut bound = Vec::new();
        let mut incoming = Vec::new();
        for path in self.sockets() {
            match bind(path, self.group, policy) {
                Ok(l) => {
                    bound.push(path.clone());
                    incoming.push(Box::pin(crate::grpc::incoming::admitted(
                        l,
                        path.clone(),
                        policy,
                    )));
                }
                Err(e) => {
                    remove_sockets(&bound);
                    return Err(e);
                }
            }
            tracing::info!(socket = %path.display(), "serving the control API");
        }
        let service = ControlService::new(
            self.worker.clone(),
            self.record.clone(),
            self.entitlements.clone(),
        );
        // Sessions serving `Auth` answer the worker's registry requests that name them.
        service.sessions().provide_credentials_to(
            self.worker.client().options().sessions.clone(),
            session::AuthLimits::default(),
        );
        let gateway = service.gateway();
        let routes = tonic::service::Routes::new(ControlServer::new(service)).add_service(
            proto::gateway::llb_bridge_server::LlbBridgeServer::new(gateway),
        );
        let shutdown = shutdown.shared();
        let plain = async {
            if incoming.is_empty() {
                return Ok(());
            }
            tonic::transport::Server::builder()
                .add_routes(routes.clone())
                .serve_with_incoming_shutdown(
                    futures_util::stream::select_all(incoming),
                    shutdown.clone(),
                )
                .await
        };
        let with_tls = async {
            let Some(tls) = self.tls.clone().filter(|_| !tcp.is_empty()) else {
                return Ok(());
            };
            tonic::transport::Server::builder()
                .tls_config(tls)?
                .add_routes(routes.clone())
                .serve_with_incoming_shutdown(
                    futures_util::stream::select_all(tcp),
                    shutdown.clone(),
                )
                .await
        };
        let served = tokio::try_join!(plain, with_tls);
        remove_sockets(&bound);
        served.map(drop).map_err(BuildkitdError::Serve)
    }
}

fn remove_sockets(paths: &[PathBuf]) {
    for p in paths {
        if let Err(e) = std::fs::remove_file(p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = %p.display(), error = %e, "removing the socket");
            }
        }
    }
}

/// Binds the socket at `path` as buildkitd does (see the module doc).
fn bind(
    path: &Path,
    group: Option<u32>,
    policy: PeerPolicy,
) -> Result<tokio::net::UnixListener, BuildkitdError> {
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        stargaze_fs::sys::private_dir(dir).map_err(io_err("creating", dir))?;
        if let Some(gid) = group {
            use std::os::unix::fs::PermissionsExt;
            std::os::unix::fs::chown(dir, None, Some(gid)).map_err(io_err("chown", dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o770))
                .map_err(io_err("chmod", dir))?;
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing the stale socket", path)(e)),
    }
    let l = tokio::net::UnixListener::bind(path).map_err(io_err("listening on", path))?;
    if let Err(e) = policy.secure(path) {
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    Ok(l)
}

impl Prepared {
    /// The root directory the daemon will use.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The second step: the root created (0700) and the worker opened in it, its steps and
    /// lazy reads served on `rt` (not to be called from inside it).
    pub fn open(self, rt: &tokio::runtime::Handle) -> Result<Buildkitd, BuildkitdError> {
        let Prepared {
            addresses,
            tls,
            root,
            group,
            settings,
            entitlements,
        } = self;
        stargaze_fs::sys::private_dir(&root).map_err(io_err("creating", &root))?;
        let worker = OciWorker::open(&root, &settings, LockMode::Exclusive, rt)?;
        let record = worker_record(&worker);
        tracing::info!(worker = %record.id, snapshotter = %worker.snapshotter(), "worker open");
        Ok(Buildkitd {
            worker: Arc::new(worker),
            record,
            addresses,
            tls,
            root,
            group,
            entitlements,
        })
    }
}

/// The worker as clients see it.
fn worker_record(w: &OciWorker) -> types::WorkerRecord {
    let cfg = w.config();
    let network = match network_choice(cfg) {
        // The worker runs steps on the host network when auto finds no CNI.
        NetworkKind::Auto => NetworkKind::Host,
        n => n,
    };
    let platforms = if cfg.platforms.is_empty() {
        vec![Platform::host()]
    } else {
        cfg.platforms.clone()
    };
    types::WorkerRecord {
        id: w.id().to_string(),
        labels: labels(cfg, w.snapshotter(), network).into_iter().collect(),
        platforms: platforms.iter().map(wire::platform).collect(),
        gc_policy: w.gc_rules().iter().map(wire::gc_policy).collect(),
        buildkit_version: Some(wire::version()),
    }
}
