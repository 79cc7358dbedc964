//! Sessions: credentials are never global. A client (a build, a CRI pull) registers a
//! credential provider under a session ID; a fetch names the session IDs that asked for it
//! (the snapshot labels `containerd.io/snapshot/remote/stargz.session.N[.suffix]`), and
//! the providers are asked in that order for the host's credentials — the first that answers
//! wins. A session that ends is unregistered and can no longer be asked (the tokens it gave
//! stay usable until they expire: see the authenticator, token.rs in this folder).
//!
//! Providers answer through a boxed future, so one that talks to a client over the network
//! (a BuildKit session) waits without holding a thread, and one that runs a process (a
//! docker credential helper) moves that work off the async threads itself. A provider may
//! also fetch bearer tokens itself ([`CredentialProvider::fetch_token`]): the registry's
//! credentials then never reach the daemon.

use super::{CredentialError, Credentials, Secret};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

/// The snapshot label prefix naming session IDs.
pub const SESSION_LABEL: &str = "containerd.io/snapshot/remote/stargz.session";

/// What a provider's answer is awaited as.
pub type ProviderFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, CredentialError>> + Send + 'a>>;

/// A registry's Bearer challenge, for a provider that exchanges it for a token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The registry host (`host[:port]`).
    pub host: String,
    /// The token endpoint.
    pub realm: String,
    /// The service the challenge names (empty: none).
    pub service: String,
    /// The scopes wanted (`repository:NAME:pull[,push]`).
    pub scopes: Vec<String>,
}

/// A token a provider fetched.
#[derive(Debug, Clone)]
pub struct FetchedToken {
    /// The bearer token.
    pub token: Secret,
    /// How long it is valid from `issued_at` (`None`: unknown, taken as 60 s).
    pub expires_in: Option<Duration>,
    /// When it was issued (`None`: now).
    pub issued_at: Option<SystemTime>,
}

/// Something that can answer "credentials for this host?".
pub trait CredentialProvider: Send + Sync {
    /// Credentials for `host`, `Ok(None)` when this provider has none (or says anonymous).
    fn credentials<'a>(&'a self, host: &'a str) -> ProviderFuture<'a, Option<Credentials>>;

    /// For a provider that does the token exchange itself: the token for `req`. `None` (the
    /// default), or a future answering `None`: this provider does not (or not this time),
    /// and its credentials are exchanged by the caller.
    fn fetch_token<'a>(
        &'a self,
        _req: &'a TokenRequest,
    ) -> Option<ProviderFuture<'a, Option<FetchedToken>>> {
        None
    }
}

/// A fixed map of host → credentials (explicit configuration, tests).
#[derive(Debug, Default, Clone)]
pub struct StaticCredentials {
    by_host: HashMap<String, Credentials>,
}

impl StaticCredentials {
    /// Adds credentials for a host.
    pub fn with(mut self, host: &str, creds: Credentials) -> Self {
        self.by_host.insert(host.to_string(), creds);
        self
    }
}

impl CredentialProvider for StaticCredentials {
    fn credentials<'a>(&'a self, host: &'a str) -> ProviderFuture<'a, Option<Credentials>> {
        let found = self.by_host.get(host).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }
}

impl CredentialProvider for super::DockerConfig {
    fn credentials<'a>(&'a self, host: &'a str) -> ProviderFuture<'a, Option<Credentials>> {
        // A credential helper is a process (bounded by its own timeout): off the async threads.
        let me = self.clone();
        let host = host.to_string();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || super::DockerConfig::credentials(&me, &host))
                .await
                .map_err(|_| CredentialError::Task)?
        })
    }
}

/// Registered sessions by ID.
#[derive(Default)]
pub struct SessionManager {
    sessions: RwLock<HashMap<String, Arc<dyn CredentialProvider>>>,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.sessions.read().map(|s| s.len()).unwrap_or(0);
        write!(f, "SessionManager({n} sessions)")
    }
}

impl SessionManager {
    /// An empty manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) the provider of session `id`.
    pub fn register(&self, id: &str, provider: Arc<dyn CredentialProvider>) {
        if let Ok(mut s) = self.sessions.write() {
            s.insert(id.to_string(), provider);
        }
    }

    /// Forgets session `id`.
    pub fn unregister(&self, id: &str) {
        if let Ok(mut s) = self.sessions.write() {
            s.remove(id);
        }
    }

    /// The provider of session `id`, while it is registered.
    pub fn get(&self, id: &str) -> Result<Option<Arc<dyn CredentialProvider>>, CredentialError> {
        match self.sessions.read() {
            Ok(s) => Ok(s.get(id).cloned()),
            Err(_) => Err(CredentialError::Poisoned),
        }
    }

    /// Whether session `id` is registered.
    pub fn contains(&self, id: &str) -> bool {
        self.sessions.read().is_ok_and(|s| s.contains_key(id))
    }

    /// Asks the named sessions in order; the first with credentials for `host` wins.
    /// Unknown sessions are skipped; a provider error is returned only if no later one answers.
    pub async fn credentials(
        &self,
        ids: &[String],
        host: &str,
    ) -> Result<Option<Credentials>, CredentialError> {
        let mut first_err = None;
        for id in ids {
            let Some(p) = self.get(id)? else { continue };
            match p.credentials(host).await {
                Ok(Some(c)) => {
                    tracing::debug!(session = %id, %host, "credentials from session");
                    return Ok(Some(c));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(session = %id, %host, error = %e, "session provider failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

/// Session IDs named by snapshot labels, in label order (`…session.0`, `…session.1`, …).
pub fn session_ids_from_labels(labels: &HashMap<String, String>) -> Vec<String> {
    let mut by_index: BTreeMap<(u32, String), String> = BTreeMap::new();
    for (k, v) in labels {
        let Some(rest) = k
            .strip_prefix(SESSION_LABEL)
            .and_then(|r| r.strip_prefix('.'))
        else {
            continue;
        };
        let (n, suffix) = rest.split_once('.').unwrap_or((rest, ""));
        if let Ok(n) = n.parse::<u32>() {
            if !v.is_empty() {
                by_index.insert((n, suffix.to_string()), v.clone());
            }
        }
    }
    by_index.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_answer_wins_in_order() {
        let m = SessionManager::new();
        m.register("a", Arc::new(StaticCredentials::default()));
        m.register(
            "b",
            Arc::new(StaticCredentials::default().with("h", Credentials::basic("bu", "bp"))),
        );
        m.register(
            "c",
            Arc::new(StaticCredentials::default().with("h", Credentials::basic("cu", "cp"))),
        );
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            m.credentials(&ids(&["x", "a", "c", "b"]), "h")
                .await
                .unwrap(),
            Some(Credentials::basic("cu", "cp"))
        );
        assert_eq!(m.credentials(&ids(&["a"]), "h").await.unwrap(), None);
        m.unregister("c");
        assert_eq!(
            m.credentials(&ids(&["c", "b"]), "h").await.unwrap(),
            Some(Credentials::basic("bu", "bp"))
        );
    }

    #[test]
    fn label_order() {
        let labels: HashMap<String, String> = [
            (format!("{SESSION_LABEL}.1.xyz"), "second".to_string()),
            (format!("{SESSION_LABEL}.0.xyz"), "first".to_string()),
            (format!("{SESSION_LABEL}.10"), "third".to_string()),
            (format!("{SESSION_LABEL}.bad"), "no".to_string()),
            ("other".to_string(), "no".to_string()),
        ]
        .into();
        assert_eq!(
            session_ids_from_labels(&labels),
            vec!["first", "second", "third"]
        );
    }
}
