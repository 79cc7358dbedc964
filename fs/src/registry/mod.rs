//! The built-in OCI distribution registry: `stargaze registry serve` serves OCI image
//! layouts under one root (`ROOT/<repository>`) with pull, push, Range reads, tags, catalog,
//! OCI 1.1 referrers, deletes (when enabled), gc, and optional htpasswd basic auth. It makes
//! stargaze usable air-gapped, backs the demo, and is a real server skopeo and containerd can
//! talk to. It is meant to face untrusted clients: connections have time limits and a cap
//! (`conn`), request bodies a stall limit (`body`), bcrypt runs off the async workers
//! (`htpasswd`, `auth_cache`) and upload sessions are bounded and expire (`uploads`).

mod auth_cache;
mod body;
mod conn;
mod delete;
mod error;
mod gc;
mod htpasswd;
mod http;
mod range;
mod referrers;
mod referrers_page;
mod store;
mod uploads;

pub use error::{ApiError, HtpasswdError, RegistryError};
pub use gc::{collect, GcError, GcOptions, GcReport, Unreferenced};
pub use range::{parse_range, RangeRequest};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// How to run the registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Root directory of repositories.
    pub root: PathBuf,
    /// Optional htpasswd file (bcrypt) enabling basic auth.
    pub htpasswd: Option<PathBuf>,
    /// Realm named in auth challenges.
    pub realm: String,
    /// Serve manifest, tag and blob DELETE (off: they answer 405 UNSUPPORTED).
    pub enable_delete: bool,
    /// A begun request head (or a new connection's first) must be complete within this.
    pub header_timeout: Duration,
    /// A connection with no request in progress is closed after this long.
    pub idle_timeout: Duration,
    /// A request or response body that makes no progress for this long ends its request.
    pub body_timeout: Duration,
    /// Connections served at once; further ones wait in the listen queue.
    pub max_connections: usize,
    /// Upload sessions open at once, in all.
    pub max_uploads: usize,
    /// Upload sessions open at once from one client address.
    pub max_uploads_per_client: usize,
    /// An upload session untouched for this long is forgotten and its data removed.
    pub upload_expiry: Duration,
}

impl RegistryOptions {
    /// Serves `root` without auth.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RegistryOptions {
            root: root.into(),
            htpasswd: None,
            realm: "stargaze".into(),
            enable_delete: false,
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(90),
            body_timeout: Duration::from_secs(60),
            max_connections: 512,
            max_uploads: 1024,
            max_uploads_per_client: 128,
            upload_expiry: Duration::from_secs(3600),
        }
    }

    fn conn_limits(&self) -> conn::ConnLimits {
        conn::ConnLimits {
            header: self.header_timeout,
            idle: self.idle_timeout,
            body: self.body_timeout,
        }
    }

    fn upload_limits(&self) -> uploads::UploadLimits {
        uploads::UploadLimits {
            max_total: self.max_uploads,
            max_per_client: self.max_uploads_per_client,
            expiry: self.upload_expiry,
        }
    }
}

/// A registry bound to a socket, ready to serve.
pub struct Registry {
    state: Arc<http::State>,
    listener: TcpListener,
    limits: conn::ConnLimits,
    slots: Arc<Semaphore>,
    cap: usize,
}

impl Registry {
    /// Prepares the root and binds `addr` (port 0 picks a free port).
    pub async fn bind(opts: &RegistryOptions, addr: SocketAddr) -> Result<Self, RegistryError> {
        let store = store::Store::open(&opts.root).map_err(|e| RegistryError::Root {
            path: opts.root.display().to_string(),
            source: e,
        })?;
        let htpasswd = match &opts.htpasswd {
            Some(p) => Some(htpasswd::Htpasswd::load(p)?),
            None => None,
        };
        let upload_dir = store.root().join("_uploads");
        let (uploads, leftovers) = uploads::Uploads::open(upload_dir.clone(), opts.upload_limits())
            .map_err(|e| RegistryError::Root {
                path: upload_dir.display().to_string(),
                source: e,
            })?;
        if leftovers > 0 {
            tracing::info!(
                files = leftovers,
                "removed upload files an earlier server left"
            );
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| RegistryError::Listen {
                addr: addr.to_string(),
                source: e,
            })?;
        Ok(Registry {
            state: Arc::new(http::State {
                store,
                uploads,
                htpasswd,
                realm: opts.realm.clone(),
                enable_delete: opts.enable_delete,
                body_timeout: opts.body_timeout,
            }),
            listener,
            limits: opts.conn_limits(),
            slots: Arc::new(Semaphore::new(opts.max_connections.max(1))),
            cap: opts.max_connections.max(1),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, RegistryError> {
        self.listener
            .local_addr()
            .map_err(|e| RegistryError::Listen {
                addr: "bound socket".into(),
                source: e,
            })
    }

    /// Serves until `shutdown` turns true; connections in flight finish on their own.
    /// At the connection cap it stops accepting, so new clients wait in the listen queue
    /// until a slot frees (the time limits make sure one does) instead of being refused.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> Result<(), RegistryError> {
        let sweeper = tokio::spawn(sweep_uploads(self.state.clone()));
        let mut warned: Option<Instant> = None;
        let r = loop {
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(s) => s,
                Err(_) => {
                    if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(
                            max = self.cap,
                            "registry at its connection cap; new connections wait"
                        );
                        warned = Some(Instant::now());
                    }
                    tokio::select! {
                        s = self.slots.clone().acquire_owned() => match s {
                            Ok(s) => s,
                            Err(_) => break Ok(()),
                        },
                        _ = stopped(&mut shutdown) => break Ok(()),
                    }
                }
            };
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    tokio::spawn(conn::serve(stream, peer, self.state.clone(), self.limits, slot));
                }
                _ = stopped(&mut shutdown) => break Ok(()),
            }
        };
        sweeper.abort();
        r
    }
}

/// Resolves once `shutdown` turns true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Forgets expired upload sessions (and removes their files) every little while.
async fn sweep_uploads(state: Arc<http::State>) {
    let every = state.uploads.sweep_every();
    loop {
        tokio::time::sleep(every).await;
        let st = state.clone();
        match tokio::task::spawn_blocking(move || st.uploads.sweep(Instant::now())).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "expired upload sessions removed"),
            Err(e) => tracing::warn!(error = %e, "upload sweep failed"),
        }
    }
}

/// A registry serving on a background runtime of its own (demo, tests, benches).
pub struct BackgroundRegistry {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundRegistry {
    /// Starts serving `opts` on `addr` in a thread with its own runtime.
    pub fn start(opts: RegistryOptions, addr: SocketAddr) -> Result<Self, RegistryError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| RegistryError::Listen {
                addr: addr.to_string(),
                source: e,
            })?;
        let reg = rt.block_on(Registry::bind(&opts, addr))?;
        let addr = reg.local_addr()?;
        let (stop, rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("stargaze-registry".into())
            .spawn(move || {
                if let Err(e) = rt.block_on(reg.serve(rx)) {
                    tracing::error!(error = %e, "registry stopped");
                }
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .map_err(|e| RegistryError::Listen {
                addr: addr.to_string(),
                source: e,
            })?;
        Ok(BackgroundRegistry {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for BackgroundRegistry {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
