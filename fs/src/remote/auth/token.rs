//! The authenticator: remembers each host's challenge, finds credentials (named sessions
//! first, then the fallback providers: explicit config, docker config), and turns a Bearer
//! challenge into a token from the realm (GET with basic auth, or the OAuth2 refresh-token
//! POST for identity tokens). Tokens are cached per (host, scope, credentials) until they
//! expire, so one session's token is never used for another's request.

use super::{
    parse_challenges, Challenge, CredentialError, CredentialProvider, Credentials, SessionManager,
};
use crate::remote::error::RemoteError;
use crate::remote::hosts::HostsConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// How long credential lookups (which may run a helper) are remembered.
const CREDS_TTL: Duration = Duration::from_secs(60);

/// What a request needs access to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// Repository path.
    pub repository: String,
    /// Whether push access is needed (pull is always asked for).
    pub push: bool,
}

impl Scope {
    /// Pull access to a repository.
    pub fn pull(repository: &str) -> Self {
        Scope {
            repository: repository.to_string(),
            push: false,
        }
    }
    /// Pull and push access.
    pub fn push(repository: &str) -> Self {
        Scope {
            repository: repository.to_string(),
            push: true,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let actions = if self.push { "pull,push" } else { "pull" };
        write!(f, "repository:{}:{actions}", self.repository)
    }
}

type TokenKey = (String, String, [u8; 32]);
type CredsCache = HashMap<(String, Vec<String>), (Option<Credentials>, Instant)>;

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

    /// Credentials for `host`: named sessions in order, then the fallback providers.
    pub async fn credentials(
        &self,
        host: &str,
        session_ids: &[String],
    ) -> Result<Option<Credentials>, RemoteError> {
        let key = (host.to_string(), session_ids.to_vec());
        if let Some((c, at)) = lock(&self.creds).get(&key) {
            if at.elapsed() < CREDS_TTL {
                return Ok(c.clone());
            }
        }
        let sessions = self.sessions.clone();
        let fallback = self.fallback.clone();
        let (h, ids) = key.clone();
        // Providers may run helper processes: keep them off the async threads.
        let found =
            tokio::task::spawn_blocking(move || -> Result<Option<Credentials>, CredentialError> {
                if !ids.is_empty() {
                    if let Some(c) = sessions.credentials(&ids, &h)? {
                        return Ok(Some(c));
                    }
                }
                for p in &fallback {
                    if let Some(c) = p.credentials(&h)? {
                        return Ok(Some(c));
                    }
                }
                Ok(None)
            })
            .await
            .map_err(|e| RemoteError::Config(format!("credential lookup failed: {e}")))?
            .map_err(|e| RemoteError::Auth {
                host: host.to_string(),
                reason: e.to_string(),
            })?;
        lock(&self.creds).insert(key, (found.clone(), Instant::now()));
        Ok(found)
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
        let creds = self.credentials(host, session_ids).await?;
        match challenge {
            Challenge::Basic => Ok(creds.and_then(|c| c.basic_header())),
            Challenge::Bearer { realm, service, .. } => {
                if let Some(Credentials::Bearer(t)) = &creds {
                    return Ok(Some(format!("Bearer {}", t.expose())));
                }
                let key = (host.to_string(), scope.to_string(), fingerprint(&creds));
                if let Some((t, until)) = lock(&self.tokens).get(&key) {
                    if Instant::now() < *until {
                        return Ok(Some(format!("Bearer {t}")));
                    }
                }
                let (token, ttl) = self
                    .fetch_token(host, &realm, service.as_deref(), scope, creds.as_ref())
                    .await?;
                let until = Instant::now() + ttl.saturating_sub(Duration::from_secs(5));
                lock(&self.tokens).insert(key, (token.clone(), until));
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
                let mut q = vec![("scope", scope_s.clone())];
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
