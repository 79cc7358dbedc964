//! The authenticator: remembers each host's challenge, finds credentials (named sessions
//! first, in order, then the fallback providers: explicit config, docker config), and turns a
//! Bearer challenge into a token from the realm (GET with basic auth, or the OAuth2
//! refresh-token POST for identity tokens) — or lets a session that fetches tokens itself do
//! the exchange, so its credentials never reach us.
//!
//! Tokens are cached per (host, scope, source) until they expire. The source of a session's
//! token is that session's ID: another request gets it only if it names that session, and it
//! stays usable after the session ended (lazy layer reads go on) until it expires. Credentials
//! a session gave are used only while it is registered. Every provider call is bounded in
//! time, so a client that never answers fails the request instead of hanging it.

use super::{
    parse_challenges, Challenge, CredentialError, CredentialProvider, Credentials, FetchedToken,
    SessionManager, TokenRequest,
};
use crate::remote::error::RemoteError;
use crate::remote::hosts::HostsConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// Longest token accepted from a provider.
const MAX_TOKEN_LEN: usize = 64 << 10;
/// How long credential lookups (which may run a helper or ask a client) are remembered.
const CREDS_TTL: Duration = Duration::from_secs(60);
/// Cached entries past which stale ones are dropped on the next insert.
const MAX_CACHED: usize = 4096;
/// Longest any provider call may take (providers bound their own calls more tightly).
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(60);
/// A token's lifetime when its issuer does not say.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Longest a token is cached, whatever its issuer says.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a request needs access to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Repository path.
    pub repository: String,
    /// Whether push access is needed (pull is always asked for).
    pub push: bool,
    /// A repository a cross-repository mount takes the blob from (pull access asked too:
    /// the registry checks it).
    pub mount_from: Option<String>,
}

impl Scope {
    /// Pull access to a repository.
    pub fn pull(repository: &str) -> Self {
        Scope {
            repository: repository.to_string(),
            push: false,
            mount_from: None,
        }
    }
    /// Pull and push access.
    pub fn push(repository: &str) -> Self {
        Scope {
            repository: repository.to_string(),
            push: true,
            mount_from: None,
        }
    }
    /// Push access to `repository` and pull access to `from`, for a cross-repository mount.
    pub fn mount(repository: &str, from: &str) -> Self {
        Scope {
            mount_from: (from != repository).then(|| from.to_string()),
            ..Scope::push(repository)
        }
    }
    /// Each resource's scope (`repository:NAME:ACTIONS`), as separate `scope` parameters.
    pub fn parts(&self) -> Vec<String> {
        let actions = if self.push { "pull,push" } else { "pull" };
        let mut v = vec![format!("repository:{}:{actions}", self.repository)];
        if let Some(from) = &self.mount_from {
            v.push(format!("repository:{from}:pull"));
        }
        v
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.parts().join(" "))
    }
}

/// Whose answer a token came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    /// A session, by ID.
    Session(String),
    /// The fallback providers' credentials (by fingerprint; all zero bytes' digest: none).
    Config([u8; 32]),
}

type TokenKey = (String, String, Source);
/// (host, session ID or `None` for the fallback providers).
type CredsKey = (String, Option<String>);
type CredsCache = HashMap<CredsKey, (Option<Credentials>, Instant)>;

/// Why a session gave no token: its provider failed (the next session is asked), or the
/// token server refused the credentials it answered (that is the answer).
enum SessionTokenError {
    Provider(RemoteError),
    Refused(RemoteError),
}

/// Auth state shared by all requests of a client.
pub struct Authenticator {
    http: reqwest::Client,
    hosts: HostsConfig,
    sessions: Arc<SessionManager>,
    fallback: Vec<Arc<dyn CredentialProvider>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<TokenKey, (String, Instant)>>,
    creds: Mutex<CredsCache>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authenticator")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn fingerprint(c: &Option<Credentials>) -> [u8; 32] {
    let text = match c {
        None => String::new(),
        Some(Credentials::Basic { username, password }) => {
            format!("basic\0{username}\0{}", password.expose())
        }
        Some(Credentials::IdentityToken(t)) => format!("id\0{}", t.expose()),
        Some(Credentials::Bearer(t)) => format!("bearer\0{}", t.expose()),
    };
    *crate::Digest::of(text.as_bytes()).as_bytes()
}

/// A provider's answer, awaited for at most [`PROVIDER_TIMEOUT`].
async fn bounded<T>(
    f: impl std::future::Future<Output = Result<T, CredentialError>>,
) -> Result<T, CredentialError> {
    tokio::time::timeout(PROVIDER_TIMEOUT, f)
        .await
        .map_err(|_| CredentialError::Timeout(PROVIDER_TIMEOUT))?
}

/// Checks a token a provider fetched; returns it and until when to use it.
fn accept_token(t: FetchedToken) -> Result<(String, Instant), String> {
    let token = t.token.expose().to_string();
    if token.is_empty() {
        return Err("the session sent an empty token".into());
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "the session sent a token over {MAX_TOKEN_LEN} bytes"
        ));
    }
    if token
        .bytes()
        .any(|c| c.is_ascii_control() || c == b' ' || !c.is_ascii())
    {
        return Err("the session sent a token with invalid characters".into());
    }
    let ttl = t
        .expires_in
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_TOKEN_TTL)
        .min(MAX_TOKEN_TTL);
    let age = t
        .issued_at
        .and_then(|at| SystemTime::now().duration_since(at).ok())
        .unwrap_or_default();
    // As BuildKit: renewed after 90 % of its life.
    let left = ttl.saturating_sub(age).mul_f64(0.9);
    Ok((token, Instant::now() + left))
}

#[derive(serde::Deserialize)]
struct TokenReply {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Authenticator {
    /// An authenticator asking `sessions` first, then `fallback` in order.
    pub fn new(
        http: reqwest::Client,
        hosts: HostsConfig,
        sessions: Arc<SessionManager>,
        fallback: Vec<Arc<dyn CredentialProvider>>,
    ) -> Self {
        Authenticator {
            http,
            hosts,
            sessions,
            fallback,
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            creds: Mutex::new(HashMap::new()),
        }
    }

    /// The session manager.
    pub fn sessions(&self) -> &Arc<SessionManager> {
        &self.sessions
    }

    fn auth_err(host: &str, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::Auth {
            host: host.to_string(),
            reason: e.to_string(),
        }
    }

    fn cached_creds(&self, key: &CredsKey) -> Option<Option<Credentials>> {
        lock(&self.creds)
            .get(key)
            .filter(|(_, at)| at.elapsed() < CREDS_TTL)
            .map(|(c, _)| c.clone())
    }

    /// What session `id`'s provider says for `host` (remembered for a while).
    async fn session_credentials(
        &self,
        host: &str,
        id: &str,
        provider: &Arc<dyn CredentialProvider>,
    ) -> Result<Option<Credentials>, CredentialError> {
        let key = (host.to_string(), Some(id.to_string()));
        if let Some(c) = self.cached_creds(&key) {
            return Ok(c);
        }
        let found = bounded(provider.credentials(host)).await?;
        if found.is_some() {
            tracing::debug!(session = %id, %host, "credentials from session");
        }
        self.remember_creds(key, found.clone());
        Ok(found)
    }

    /// Caches a lookup, dropping stale ones once there are many (ended sessions' included).
    fn remember_creds(&self, key: CredsKey, found: Option<Credentials>) {
        let mut m = lock(&self.creds);
        if m.len() >= MAX_CACHED {
            m.retain(|_, (_, at)| at.elapsed() < CREDS_TTL);
        }
        m.insert(key, (found, Instant::now()));
    }

    /// Caches a token, dropping expired ones once there are many.
    fn remember_token(&self, key: TokenKey, token: String, until: Instant) {
        let mut m = lock(&self.tokens);
        if m.len() >= MAX_CACHED {
            let now = Instant::now();
            m.retain(|_, (_, u)| now < *u);
        }
        m.insert(key, (token, until));
    }

    /// The fallback providers' credentials for `host`, in order (remembered for a while).
    async fn fallback_credentials(&self, host: &str) -> Result<Option<Credentials>, RemoteError> {
        let key = (host.to_string(), None);
        if let Some(c) = self.cached_creds(&key) {
            return Ok(c);
        }
        let mut found = None;
        for p in &self.fallback {
            if let Some(c) = bounded(p.credentials(host))
                .await
                .map_err(|e| Self::auth_err(host, e))?
            {
                found = Some(c);
                break;
            }
        }
        self.remember_creds(key, found.clone());
        Ok(found)
    }

    /// Credentials for `host`: named sessions in order (those registered), then the fallback
    /// providers. A session's failure is the answer only when no later session has credentials.
    pub async fn credentials(
        &self,
        host: &str,
        session_ids: &[String],
    ) -> Result<Option<Credentials>, RemoteError> {
        let mut first_err = None;
        for id in session_ids {
            let Some(p) = self.sessions.get(id).map_err(|e| Self::auth_err(host, e))? else {
                continue;
            };
            match self.session_credentials(host, id, &p).await {
                Ok(Some(c)) => return Ok(Some(c)),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(session = %id, %host, error = %e, "session provider failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(Self::auth_err(host, e));
        }
        self.fallback_credentials(host).await
    }

    fn cached_token(&self, key: &TokenKey) -> Option<String> {
        lock(&self.tokens)
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(t, _)| t.clone())
    }

    /// A token from session `id` for a Bearer challenge: fetched by the session itself when
    /// it does that, else exchanged here with its credentials. `None`: it has none for `host`.
    #[allow(clippy::too_many_arguments)]
    async fn session_token(
        &self,
        host: &str,
        id: &str,
        provider: &Arc<dyn CredentialProvider>,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
    ) -> Result<Option<(String, Instant)>, SessionTokenError> {
        let provider_err = |e| SessionTokenError::Provider(Self::auth_err(host, e));
        let req = TokenRequest {
            host: host.to_string(),
            realm: realm.to_string(),
            service: service.unwrap_or_default().to_string(),
            scopes: scope.parts(),
        };
        if let Some(fetch) = provider.fetch_token(&req) {
            if let Some(t) = bounded(fetch).await.map_err(provider_err)? {
                tracing::debug!(session = %id, %host, scope = %scope, "token fetched by the session");
                return accept_token(t)
                    .map(Some)
                    .map_err(|e| SessionTokenError::Provider(Self::auth_err(host, e)));
            }
        }
        let creds = self
            .session_credentials(host, id, provider)
            .await
            .map_err(provider_err)?;
        match creds {
            None => Ok(None),
            Some(Credentials::Bearer(t)) => {
                let until = Instant::now() + CREDS_TTL;
                Ok(Some((t.expose().to_string(), until)))
            }
            Some(c) => {
                // The session answered: its credentials are the build's, refused or not.
                let (token, ttl) = self
                    .fetch_token(host, realm, service, scope, Some(&c))
                    .await
                    .map_err(SessionTokenError::Refused)?;
                Ok(Some((
                    token,
                    Instant::now() + ttl.saturating_sub(Duration::from_secs(5)),
                )))
            }
        }
    }

    /// The `Authorization` value for a request to `host`, once its challenge is known;
    /// `None` before the first 401 (requests start anonymous) or without credentials for Basic.
    pub async fn header(
        &self,
        host: &str,
        scope: &Scope,
        session_ids: &[String],
    ) -> Result<Option<String>, RemoteError> {
        let challenge = lock(&self.challenges).get(host).cloned();
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        match challenge {
            Challenge::Basic => {
                let creds = self.credentials(host, session_ids).await?;
                Ok(creds.and_then(|c| c.basic_header()))
            }
            Challenge::Bearer { realm, service, .. } => {
                let scope_s = scope.to_string();
                let mut first_err = None;
                for id in session_ids {
                    let key = (
                        host.to_string(),
                        scope_s.clone(),
                        Source::Session(id.clone()),
                    );
                    // A session's token outlives the session, until it expires.
                    if let Some(t) = self.cached_token(&key) {
                        return Ok(Some(format!("Bearer {t}")));
                    }
                    let Some(p) = self.sessions.get(id).map_err(|e| Self::auth_err(host, e))?
                    else {
                        continue;
                    };
                    match self
                        .session_token(host, id, &p, &realm, service.as_deref(), scope)
                        .await
                    {
                        Ok(Some((token, until))) => {
                            self.remember_token(key, token.clone(), until);
                            return Ok(Some(format!("Bearer {token}")));
                        }
                        Ok(None) => {}
                        // As BuildKit: the first session that answers is the one used.
                        Err(SessionTokenError::Refused(e)) => return Err(e),
                        Err(SessionTokenError::Provider(e)) => {
                            tracing::debug!(session = %id, %host, error = %e, "session gave no token");
                            first_err.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = first_err {
                    return Err(e);
                }
                let creds = self.fallback_credentials(host).await?;
                if let Some(Credentials::Bearer(t)) = &creds {
                    return Ok(Some(format!("Bearer {}", t.expose())));
                }
                let key = (
                    host.to_string(),
                    scope_s,
                    Source::Config(fingerprint(&creds)),
                );
                if let Some(t) = self.cached_token(&key) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let (token, ttl) = self
                    .fetch_token(host, &realm, service.as_deref(), scope, creds.as_ref())
                    .await?;
                let until = Instant::now() + ttl.saturating_sub(Duration::from_secs(5));
                self.remember_token(key, token.clone(), until);
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Records a 401's challenge for `host` and forgets tokens of `scope` there, so the next
    /// [`Self::header`] authenticates afresh. Fails on a missing or malformed challenge.
    pub fn on_unauthorized(
        &self,
        host: &str,
        www_authenticate: Option<&str>,
        scope: &Scope,
    ) -> Result<(), RemoteError> {
        let header = www_authenticate.ok_or_else(|| RemoteError::Auth {
            host: host.to_string(),
            reason: "401 without a WWW-Authenticate challenge".into(),
        })?;
        let challenges = parse_challenges(header).map_err(|e| RemoteError::Auth {
            host: host.to_string(),
            reason: format!("malformed WWW-Authenticate header: {e}"),
        })?;
        // Prefer Bearer when both are offered.
        let pick = challenges
            .iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }))
            .or_else(|| challenges.first())
            .cloned()
            .ok_or_else(|| RemoteError::Auth {
                host: host.to_string(),
                reason: "no supported auth scheme (Basic, Bearer) in the challenge".into(),
            })?;
        lock(&self.challenges).insert(host.to_string(), pick);
        let s = scope.to_string();
        lock(&self.tokens).retain(|(h, sc, _), _| !(h == host && *sc == s));
        Ok(())
    }

    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        scope: &Scope,
        creds: Option<&Credentials>,
    ) -> Result<(String, Duration), RemoteError> {
        let auth_err = |reason: String| RemoteError::Auth {
            host: host.to_string(),
            reason,
        };
        let url = reqwest::Url::parse(realm)
            .map_err(|_| auth_err(format!("token realm {realm:?} is not a URL")))?;
        let realm_host = url.host_str().unwrap_or("");
        let realm_hostport = match url.port() {
            Some(p) => format!("{realm_host}:{p}"),
            None => realm_host.to_string(),
        };
        match url.scheme() {
            "https" => {}
            "http"
                if self.hosts.is_insecure(&realm_hostport)
                    || self.hosts.is_insecure(realm_host) => {}
            s => {
                return Err(auth_err(format!(
                    "token realm uses {s}://; only https (or http to an insecure host) is allowed"
                )))
            }
        }
        let scope_s = scope.to_string();
        let req = match creds {
            Some(Credentials::IdentityToken(t)) => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", t.expose().to_string()),
                    ("client_id", "stargaze".to_string()),
                    ("scope", scope_s.clone()),
                ];
                if let Some(s) = service {
                    form.push(("service", s.to_string()));
                }
                self.http.post(url.clone()).form(&form)
            }
            other => {
                let mut q: Vec<(&str, String)> =
                    scope.parts().into_iter().map(|p| ("scope", p)).collect();
                if let Some(s) = service {
                    q.push(("service", s.to_string()));
                }
                let mut r = self.http.get(url.clone()).query(&q);
                if let Some(Credentials::Basic { username, password }) = other {
                    q.push(("account", username.clone()));
                    r = self
                        .http
                        .get(url.clone())
                        .query(&q)
                        .basic_auth(username, Some(password.expose()));
                }
                r
            }
        };
        let resp = req.send().await.map_err(|e| {
            auth_err(format!(
                "token request to {realm_hostport} failed: {}",
                super::super::client::flatten_error(&e)
            ))
        })?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(auth_err(format!(
                "token server {realm_hostport} refused the {} (HTTP {status})",
                if creds.is_some() {
                    "credentials"
                } else {
                    "anonymous request"
                }
            )));
        }
        if status != 200 {
            return Err(auth_err(format!(
                "token server {realm_hostport} answered HTTP {status}"
            )));
        }
        let body = crate::remote::client::read_limited(resp, MAX_TOKEN_RESPONSE, realm)
            .await
            .map_err(|e| auth_err(format!("reading the token: {e}")))?;
        let reply: TokenReply = serde_json::from_slice(&body)
            .map_err(|_| auth_err("token server sent a reply that is not token JSON".into()))?;
        let token = reply
            .token
            .or(reply.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_err("token server sent no token".into()))?;
        if token.bytes().any(|c| c.is_ascii_control() || c == b' ') {
            return Err(auth_err(
                "token server sent a token with invalid characters".into(),
            ));
        }
        let ttl = Duration::from_secs(reply.expires_in.unwrap_or(60).clamp(60, 24 * 3600));
        tracing::debug!(%host, scope = %scope_s, ttl = ?ttl, "got a registry token");
        Ok((token, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::Scope;

    #[test]
    fn a_mount_asks_pull_on_its_source_too() {
        assert_eq!(Scope::pull("a/b").to_string(), "repository:a/b:pull");
        assert_eq!(Scope::push("a/b").parts(), ["repository:a/b:pull,push"]);
        let m = Scope::mount("out/app", "base/big");
        assert_eq!(
            m.parts(),
            ["repository:out/app:pull,push", "repository:base/big:pull"]
        );
        assert_eq!(
            m.to_string(),
            "repository:out/app:pull,push repository:base/big:pull"
        );
        // Within one repository there is nothing more to ask.
        assert_eq!(Scope::mount("a", "a").parts(), ["repository:a:pull,push"]);
    }
}
