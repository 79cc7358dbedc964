//! The live sessions by ID. A session is added when its `Control.Session` call arrives
//! (headers checked, one ID at a time, at most `max_sessions`) and removed when its stream
//! ends; [`Sessions::get`] gives the channel to the client's services and what it serves.
//! Once given a registry client's session manager ([`Sessions::provide_credentials_to`]),
//! every session serving `Auth.Credentials` is registered there under its ID while it is
//! attached, so registry requests naming the session ask the client for credentials. Each
//! session's health is checked while it is attached (`health`); failing, it is closed.

use super::super::proto::control::BytesMessage;
use super::auth::{AuthLimits, SessionCredentials, CREDENTIALS, FETCH_TOKEN};
use super::bridge::{bridge, channel_over};
use super::headers::{SessionHeaders, SessionLimits};
use super::health::monitor;
use stargaze_fs::remote::auth::SessionManager;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// One attached session.
#[derive(Debug)]
pub struct Session {
    /// Its headers.
    pub headers: SessionHeaders,
    channel: Channel,
}

impl Session {
    /// A channel to the client's services (cheap to clone).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The methods the client serves.
    pub fn methods(&self) -> &[String] {
        &self.headers.methods
    }

    /// Whether the client serves `method` (`/package.Service/Method`).
    pub fn serves(&self, method: &str) -> bool {
        self.headers.methods.iter().any(|m| m == method)
    }
}

/// The registry (cheap to clone; clones share it).
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    live: Arc<Mutex<HashMap<String, Arc<Session>>>>,
    limits: SessionLimits,
    /// Where sessions serving `Auth` are registered as credential providers.
    auth: Arc<OnceLock<(Arc<SessionManager>, AuthLimits)>>,
}

impl Sessions {
    /// An empty registry with `limits`.
    pub fn new(limits: SessionLimits) -> Self {
        Sessions {
            live: Arc::default(),
            limits,
            auth: Arc::default(),
        }
    }

    /// From now on, sessions serving `Auth.Credentials` are registered in `manager` (the
    /// worker's registry client's) while attached, their calls bounded by `limits`. Once per
    /// registry (clones share it); false if it was given one already.
    pub fn provide_credentials_to(&self, manager: Arc<SessionManager>, limits: AuthLimits) -> bool {
        self.auth.set((manager, limits)).is_ok()
    }

    /// The session `id`, if attached.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.live.lock().ok()?.get(id).cloned()
    }

    /// How many sessions are attached.
    pub fn len(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Serves a `Control.Session` call: the session is registered under its ID until its
    /// stream ends; the answer is the daemon's half of the session's connection.
    pub fn attach(
        &self,
        req: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<ReceiverStream<Result<BytesMessage, Status>>>, Status> {
        let headers = SessionHeaders::parse(req.metadata(), &self.limits)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut live = self
            .live
            .lock()
            .map_err(|_| Status::internal("session registry poisoned"))?;
        if live.contains_key(&headers.id) {
            return Err(Status::already_exists(format!(
                "session {} is already attached",
                headers.id
            )));
        }
        if live.len() >= self.limits.max_sessions {
            return Err(Status::resource_exhausted(format!(
                "{} sessions attached already",
                self.limits.max_sessions
            )));
        }
        let id = headers.id.clone();
        let registry = self.live.clone();
        let auth = self.auth.clone();
        let closed_id = id.clone();
        let ended = Arc::new(tokio::sync::Notify::new());
        let ended_here = ended.clone();
        let bridged = bridge(req.into_inner(), move || {
            ended_here.notify_one();
            // Under the table's lock, as attaching is: a new session of the same ID is
            // registered only after this one is gone from both.
            if let Ok(mut l) = registry.lock() {
                l.remove(&closed_id);
                if let Some((manager, _)) = auth.get() {
                    manager.unregister(&closed_id);
                }
            }
            tracing::debug!(session = %closed_id, "session ended");
        });
        let session = Session {
            headers,
            channel: channel_over(bridged.io),
        };
        if let Some((manager, limits)) = self.auth.get() {
            if session.serves(CREDENTIALS) {
                let provider = SessionCredentials::new(
                    &id,
                    session.channel(),
                    session.serves(FETCH_TOKEN),
                    *limits,
                );
                manager.register(&id, Arc::new(provider));
                tracing::debug!(session = %id, fetches_tokens = session.serves(FETCH_TOKEN), "session provides registry credentials");
            }
        }
        tokio::spawn(monitor(
            id.clone(),
            session.channel(),
            self.limits.health,
            bridged.closer,
            ended,
        ));
        tracing::debug!(session = %id, name = %session.headers.name, methods = session.headers.methods.len(), "session attached");
        live.insert(id, Arc::new(session));
        Ok(Response::new(bridged.outbound))
    }
}
