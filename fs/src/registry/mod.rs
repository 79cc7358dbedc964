//! The built-in OCI distribution registry: `stargaze registry serve` serves OCI image
//! layouts under one root (`ROOT/<repository>`) with pull, push, Range reads, tags, catalog,
//! OCI 1.1 referrers, deletes (when enabled), gc, and optional htpasswd basic auth. It makes stargaze usable air-gapped, backs the demo,
//! and is a real server skopeo and containerd can talk to.

mod delete;
pub mod error;
pub mod gc;
mod htpasswd;
mod http;
pub mod range;
mod referrers;
mod referrers_page;
mod store;
mod uploads;

pub use error::{ApiError, RegistryError};
pub use gc::{GcOptions, GcReport};
pub use http::percent_encode;
pub use referrers::{referrer_of, Referrer};
pub use store::listed_manifests;
pub use store::{manifest_media_type, referenced_digests, MANIFEST_TYPES, MAX_MANIFEST};

use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

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
}

impl RegistryOptions {
    /// Serves `root` without auth.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RegistryOptions {
            root: root.into(),
            htpasswd: None,
            realm: "stargaze".into(),
            enable_delete: false,
        }
    }
}

/// A registry bound to a socket, ready to serve.
pub struct Registry {
    state: Arc<http::State>,
    listener: TcpListener,
}

impl Registry {
    /// Prepares the root and binds `addr` (port 0 picks a free port).
    pub async fn bind(opts: &RegistryOptions, addr: SocketAddr) -> Result<Self, RegistryError> {
        let store = store::Store::open(&opts.root).map_err(|e| RegistryError::Root {
            path: opts.root.display().to_string(),
            source: e,
        })?;
        let htpasswd = match &opts.htpasswd {
            Some(p) => Some(htpasswd::Htpasswd::load(p).map_err(RegistryError::Htpasswd)?),
            None => None,
        };
        let uploads = uploads::Uploads::new(store.root().join("_uploads"));
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
            }),
            listener,
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
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> Result<(), RegistryError> {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let state = self.state.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            http::handle(state.clone(), req)
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc);
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "registry connection ended");
                        }
                    });
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Ok(());
                    }
                }
            }
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
