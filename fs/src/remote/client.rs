//! The registry client: every request goes through one path that picks the endpoint (mirrors
//! first for pulls), attaches auth (retrying once after a 401 with the new challenge),
//! follows redirects itself (dropping `Authorization` when the host changes, refusing
//! plain HTTP to hosts not configured insecure), retries connection errors, 429 and 5xx with
//! backoff, and holds a per-host concurrency permit until the body is read. Operations that
//! read a body retry one that breaks off under the same [`RetryBudget`] as their requests,
//! so no failure is retried by two loops.
//!
//! Written on reqwest rather than oci-client: we need Range reads with exact Content-Range
//! checks, session-scoped credentials, per-host mirrors and our own retry/redirect rules,
//! none of which oci-client exposes.

mod redirect;
mod referrers;
mod tail;
pub use referrers::Referrer;

use super::auth::{Authenticator, CredentialProvider, Scope, SessionManager};
use super::error::RemoteError;
use super::hosts::{Endpoint, HostsConfig};
use super::manifest::{Descriptor, Manifest};
use super::platform::Platform;
use super::range_body::{RangeAnswer, RangeStream};
use super::reference::Reference;
use super::retry::{RetryBudget, RetryPolicy};
use crate::digest::{Digest, Hasher};
use crate::oci::{MANIFEST_ACCEPT, MANIFEST_TYPES, MAX_MANIFEST};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Client settings.
#[derive(Clone)]
pub struct ClientOptions {
    /// Per-host settings (insecure, mirrors, concurrency).
    pub hosts: HostsConfig,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence while reading a response.
    pub read_timeout: Duration,
    /// Whole-request limit for small requests (manifests, HEAD, tokens).
    pub request_timeout: Duration,
    /// Redirects followed per request.
    pub max_redirects: usize,
    /// Session registry consulted for requests that name sessions.
    pub sessions: Arc<SessionManager>,
    /// Credential sources after sessions (explicit config, docker config), in order.
    pub fallback: Vec<Arc<dyn CredentialProvider>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            hosts: HostsConfig::default(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_redirects: 10,
            sessions: Arc::new(SessionManager::new()),
            fallback: Vec::new(),
        }
    }
}

/// What a request sends.
#[derive(Clone)]
enum Payload {
    Empty,
    Bytes(Bytes),
    File(PathBuf, u64),
}

struct Call<'a> {
    reference: &'a Reference,
    scope: Scope,
    method: Method,
    path: String,
    headers: HeaderMap,
    payload: Payload,
    pull: bool,
    small: bool,
    sessions: &'a [String],
}

/// A response with its URL and the host permit held while its body is read.
pub struct Reply {
    /// The response.
    pub resp: reqwest::Response,
    /// Final URL (after redirects), for messages.
    pub url: String,
    _permit: OwnedSemaphorePermit,
}

/// Bytes of a blob range.
#[derive(Debug, Clone)]
pub struct RangeReply {
    /// The bytes, exactly the length asked for.
    pub data: Bytes,
    /// Blob size from `Content-Range` (or `Content-Length` of a whole-blob answer).
    pub total: u64,
    /// Body bytes read from the network (more than `data` when the server sent the blob
    /// from its start).
    pub wire_bytes: u64,
    /// How the server answered.
    pub answer: RangeAnswer,
}

/// A registry client.
pub struct RegistryClient {
    http: reqwest::Client,
    opts: ClientOptions,
    auth: Arc<Authenticator>,
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Registries whose last Range GET was answered with the whole blob.
    ignores_ranges: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryClient")
    }
}

/// Flattens a reqwest error and its causes into one line (URLs carry no credentials).
pub fn flatten_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

/// Reads a response body, failing if it exceeds `max` bytes.
pub async fn read_limited(
    mut resp: reqwest::Response,
    max: usize,
    url: &str,
) -> Result<Vec<u8>, RemoteError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(RemoteError::protocol(
            url,
            format!("response is larger than {max} bytes"),
        ));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(url, &e))? {
        if out.len() + chunk.len() > max {
            return Err(RemoteError::protocol(
                url,
                format!("response is larger than {max} bytes"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn transport(url: &str, e: &reqwest::Error) -> RemoteError {
    RemoteError::Transport {
        url: url.to_string(),
        reason: flatten_error(e),
    }
}

/// The `Content-Length` header itself (reqwest's `content_length()` is the body size hint,
/// which is 0 for HEAD).
fn header_len(resp: &reqwest::Response) -> Option<u64> {
    header_str(resp, "content-length").and_then(|v| v.trim().parse().ok())
}

fn header_str<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The registry's error message from a JSON error body, shortened.
async fn error_message(resp: reqwest::Response) -> String {
    let Ok(body) = read_limited(resp, 64 << 10, "").await else {
        return String::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let msg = v["errors"][0]["message"]
        .as_str()
        .or_else(|| v["errors"][0]["code"].as_str())
        .unwrap_or("");
    msg.chars().take(200).collect()
}

impl RegistryClient {
    /// A client with `opts`.
    pub fn new(opts: ClientOptions) -> Result<Self, RemoteError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("stargaze/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RemoteError::Config(format!("HTTP client: {}", flatten_error(&e))))?;
        let auth = Arc::new(Authenticator::new(
            http.clone(),
            opts.hosts.clone(),
            opts.sessions.clone(),
            opts.fallback.clone(),
        ));
        Ok(RegistryClient {
            http,
            opts,
            auth,
            permits: Mutex::new(HashMap::new()),
            ignores_ranges: Mutex::new(HashSet::new()),
        })
    }

    /// The options in use.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    async fn permit(&self, host: &str) -> Result<OwnedSemaphorePermit, RemoteError> {
        let sem = {
            let mut m = self.permits.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(host.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.opts.hosts.max_per_host.max(1))))
                .clone()
        };
        sem.acquire_owned()
            .await
            .map_err(|_| RemoteError::Cancelled)
    }

    /// A fresh budget under the client's retry policy, for one operation.
    pub fn retry_budget(&self) -> RetryBudget {
        RetryBudget::new(self.opts.retry)
    }

    /// One request with a budget of its own.
    async fn call(&self, c: &Call<'_>) -> Result<Reply, RemoteError> {
        self.call_within(c, &mut self.retry_budget()).await
    }

    /// One request of an operation whose earlier requests spent part of `budget`: the
    /// endpoints in order (mirrors first for pulls), each retried while its tries last; an
    /// endpoint that has used them all in this operation is not asked again.
    async fn call_within(
        &self,
        c: &Call<'_>,
        budget: &mut RetryBudget,
    ) -> Result<Reply, RemoteError> {
        let endpoints =
            self.opts
                .hosts
                .endpoints(&c.reference.registry, c.reference.api_host(), c.pull);
        let mut last_err = None;
        let n = endpoints.len();
        for (i, ep) in endpoints.iter().enumerate() {
            if !budget.has_left(&ep.base) {
                continue;
            }
            match self.call_endpoint(c, ep, budget).await {
                Ok(r) if ep.mirror && !r.resp.status().is_success() && i + 1 < n => {
                    tracing::debug!(mirror = %ep.base, status = r.resp.status().as_u16(), "mirror failed; next");
                    last_err = Some(RemoteError::Status {
                        url: r.url.clone(),
                        status: r.resp.status().as_u16(),
                        message: String::new(),
                    });
                }
                Ok(r) => return Ok(r),
                Err(e) if ep.mirror && i + 1 < n => {
                    tracing::debug!(mirror = %ep.base, error = %e, "mirror failed; next");
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| RemoteError::Config("no endpoint for registry".into())))
    }

    /// Sends to one endpoint, retrying transport errors, 429 and 5xx while `budget` has
    /// tries left for it, and a 401 once with the new challenge (that re-send is part of the
    /// auth handshake and spends no try). The last answer, whatever its status, is returned
    /// for the caller to judge.
    async fn call_endpoint(
        &self,
        c: &Call<'_>,
        ep: &Endpoint,
        budget: &mut RetryBudget,
    ) -> Result<Reply, RemoteError> {
        let mut url = format!("{}{}", ep.base, c.path);
        if ep.mirror {
            let sep = if url.contains('?') { '&' } else { '?' };
            url.push(sep);
            url.push_str("ns=");
            url.push_str(&c.reference.registry);
        }
        let mut auth_retried = false;
        let mut handshake = false;
        loop {
            let permit = self.permit(&ep.host).await?;
            let auth = self.auth.header(&ep.host, &c.scope, c.sessions).await?;
            let had_auth = auth.is_some();
            if !std::mem::take(&mut handshake) {
                budget.spend(&ep.base);
            }
            let sent = self.send_following(c, &url, &ep.host, auth).await;
            let (resp, final_url) = match sent {
                Ok(x) => x,
                Err(e) if e.is_transient() => match budget.retry_request(&ep.base, None) {
                    Some(wait) => {
                        drop(permit);
                        tracing::debug!(%url, error = %e, sent = budget.requests(), "retrying after error");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            };
            let status = resp.status().as_u16();
            if status == 401 && !auth_retried {
                auth_retried = true;
                self.auth.on_unauthorized(
                    &ep.host,
                    header_str(&resp, "www-authenticate"),
                    &c.scope,
                )?;
                handshake = true;
                continue;
            }
            if status == 429 || status >= 500 {
                if let Some(wait) = budget.retry_request(&ep.base, header_str(&resp, "retry-after"))
                {
                    drop(permit);
                    tracing::debug!(%url, status, sent = budget.requests(), "retrying after status");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            if status == 401 {
                // An anonymous token is authorization too: say which it was.
                let anonymous = had_auth
                    && matches!(self.auth.credentials(&ep.host, c.sessions).await, Ok(None));
                return Err(RemoteError::Auth {
                    host: ep.host.clone(),
                    reason: if anonymous {
                        "the registry refused anonymous access (HTTP 401) and no credentials were found for this host".into()
                    } else if had_auth {
                        "the registry refused the credentials (HTTP 401)".into()
                    } else {
                        "authentication required (HTTP 401) and no credentials were found for this host".into()
                    },
                });
            }
            return Ok(Reply {
                resp,
                url: final_url,
                _permit: permit,
            });
        }
    }

    fn payload_body(&self, p: &Payload) -> Result<reqwest::Body, RemoteError> {
        Ok(match p {
            Payload::Empty => reqwest::Body::from(Bytes::new()),
            Payload::Bytes(b) => reqwest::Body::from(b.clone()),
            Payload::File(path, len) => {
                let f = std::fs::File::open(path)
                    .map_err(|e| RemoteError::io(format!("opening {}", path.display()), e))?;
                reqwest::Body::wrap_stream(crate::stream::file_chunks(
                    tokio::fs::File::from_std(f),
                    *len,
                ))
            }
        })
    }

    /// Sends once, following redirects by hand.
    async fn send_following(
        &self,
        c: &Call<'_>,
        url: &str,
        origin_host: &str,
        auth: Option<String>,
    ) -> Result<(reqwest::Response, String), RemoteError> {
        let mut current = reqwest::Url::parse(url)
            .map_err(|e| RemoteError::Config(format!("bad URL {url}: {e}")))?;
        let mut method = c.method.clone();
        let mut auth = auth;
        for _ in 0..=self.opts.max_redirects {
            let mut req = self
                .http
                .request(method.clone(), current.clone())
                .headers(c.headers.clone());
            if let Some(a) = &auth {
                let mut v = HeaderValue::from_str(a).map_err(|_| {
                    RemoteError::Config("credentials contain invalid characters".into())
                })?;
                v.set_sensitive(true);
                req = req.header(reqwest::header::AUTHORIZATION, v);
            }
            if c.small {
                req = req.timeout(self.opts.request_timeout);
            }
            if method != Method::GET && method != Method::HEAD {
                req = req.body(self.payload_body(&c.payload)?);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| transport(current.as_str(), &e))?;
            let status = resp.status().as_u16();
            if !redirect::is_redirect(status) {
                return Ok((resp, current.to_string()));
            }
            let step = redirect::next_step(
                &self.opts.hosts,
                &current,
                status,
                header_str(&resp, "location"),
            )?;
            let next = step.url;
            if !step.keep_credentials {
                auth = None;
            }
            if step.as_get {
                method = Method::GET;
            }
            tracing::debug!(from = %current, to = %next, origin = origin_host, "following redirect");
            current = next;
        }
        Err(RemoteError::Redirects {
            url: url.to_string(),
            max: self.opts.max_redirects,
        })
    }

    fn call_for<'a>(
        &self,
        r: &'a Reference,
        method: Method,
        path: String,
        sessions: &'a [String],
    ) -> Call<'a> {
        Call {
            reference: r,
            scope: Scope::pull(&r.repository),
            method,
            path,
            headers: HeaderMap::new(),
            payload: Payload::Empty,
            pull: true,
            small: true,
            sessions,
        }
    }

    /// Fetches the manifest `r` names (tag or digest), checked (see [`Manifest::parse`]).
    pub async fn manifest(
        &self,
        r: &Reference,
        sessions: &[String],
    ) -> Result<Manifest, RemoteError> {
        self.manifest_object(r, &r.object(), None, sessions).await
    }

    async fn manifest_object(
        &self,
        r: &Reference,
        object: &str,
        size: Option<u64>,
        sessions: &[String],
    ) -> Result<Manifest, RemoteError> {
        let mut c = self.call_for(
            r,
            Method::GET,
            format!("/v2/{}/manifests/{object}", r.repository),
            sessions,
        );
        c.headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static(MANIFEST_ACCEPT),
        );
        let reply = self.call(&c).await?;
        let what = format!("{}/{}@{object}", r.registry, r.repository);
        let reply = check_status(reply, &what).await?;
        let ct = header_str(&reply.resp, "content-type").map(str::to_string);
        let announced = header_str(&reply.resp, "docker-content-digest")
            .map(|d| d.parse::<Digest>())
            .transpose()
            .map_err(|e| {
                RemoteError::protocol(&reply.url, format!("Docker-Content-Digest: {e}"))
            })?;
        let url = reply.url.clone();
        let data = read_limited(reply.resp, MAX_MANIFEST, &url).await?;
        if let Some(s) = size {
            if data.len() as u64 != s {
                return Err(RemoteError::protocol(
                    &url,
                    format!("manifest is {} bytes; its descriptor says {s}", data.len()),
                ));
            }
        }
        let pinned = object.parse::<Digest>().ok();
        let m = Manifest::parse(data, ct.as_deref(), pinned.as_ref(), &what)?;
        if let Some(a) = announced {
            if a != m.digest {
                return Err(RemoteError::Digest {
                    what: format!("{what} (Docker-Content-Digest)"),
                    expected: a.to_string(),
                    actual: m.digest.to_string(),
                });
            }
        }
        Ok(m)
    }

    /// Fetches a manifest named by a descriptor (digest and size checked).
    pub async fn manifest_by_descriptor(
        &self,
        r: &Reference,
        d: &Descriptor,
        sessions: &[String],
    ) -> Result<Manifest, RemoteError> {
        let digest = d.digest()?;
        if d.size > MAX_MANIFEST as u64 {
            return Err(RemoteError::protocol(
                format!("{}/{}@{digest}", r.registry, r.repository),
                format!("manifest descriptor claims {} bytes", d.size),
            ));
        }
        self.manifest_object(r, &digest.to_string(), Some(d.size), sessions)
            .await
    }

    /// Resolves `r` to an image manifest for `platform`, descending through an index.
    /// Returns the image manifest and the index it came from, if any.
    pub async fn resolve(
        &self,
        r: &Reference,
        platform: &Platform,
        sessions: &[String],
    ) -> Result<(Manifest, Option<Manifest>), RemoteError> {
        let top = self.manifest(r, sessions).await?;
        if !top.is_index() {
            return Ok((top, None));
        }
        let child = top.select(platform, &r.to_string())?;
        let m = self.manifest_by_descriptor(r, &child, sessions).await?;
        if m.is_index() {
            return Err(RemoteError::protocol(
                r.to_string(),
                "an index entry for a platform points to another index",
            ));
        }
        Ok((m, Some(top)))
    }

    /// HEAD of a blob: its size when present, `None` on 404.
    pub async fn blob_size(
        &self,
        r: &Reference,
        d: &Digest,
        sessions: &[String],
    ) -> Result<Option<u64>, RemoteError> {
        let c = self.call_for(
            r,
            Method::HEAD,
            format!("/v2/{}/blobs/{d}", r.repository),
            sessions,
        );
        let reply = self.call(&c).await?;
        if reply.resp.status().as_u16() == 404 {
            return Ok(None);
        }
        let reply = check_status(reply, &format!("blob {d}")).await?;
        header_len(&reply.resp)
            .map(Some)
            .ok_or_else(|| RemoteError::protocol(&reply.url, "HEAD without Content-Length"))
    }

    /// Reads `len` bytes of blob `d` at `offset` with a Range GET. A 206 must carry exactly
    /// that `Content-Range` and length; a 200 (a server that ignores Range) is read up to
    /// the last byte wanted and closed. Bodies that break off are retried.
    pub async fn blob_range(
        &self,
        r: &Reference,
        d: &Digest,
        offset: u64,
        len: u64,
        sessions: &[String],
    ) -> Result<RangeReply, RemoteError> {
        if len == 0 {
            return Ok(RangeReply {
                data: Bytes::new(),
                total: 0,
                wire_bytes: 0,
                answer: RangeAnswer::Partial,
            });
        }
        let end = offset
            .checked_add(len - 1)
            .ok_or_else(|| RemoteError::Config("range overflows".into()))?;
        let mut budget = self.retry_budget();
        loop {
            match self
                .blob_range_once(r, d, offset, end, sessions, &mut budget)
                .await
            {
                Err(e) if e.is_transient() => match budget.retry_body() {
                    Some(wait) => {
                        tracing::debug!(blob = %d, offset, len, error = %e, "range body broke off; asking again");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    async fn blob_range_once(
        &self,
        r: &Reference,
        d: &Digest,
        start: u64,
        end: u64,
        sessions: &[String],
        budget: &mut RetryBudget,
    ) -> Result<RangeReply, RemoteError> {
        let mut stream = self
            .blob_range_stream(r, d, start, end - start + 1, sessions, budget)
            .await?;
        let mut data = Vec::with_capacity((end - start + 1).min(64 << 20) as usize);
        while let Some(c) = stream.next().await? {
            data.extend_from_slice(&c);
        }
        Ok(RangeReply {
            data: data.into(),
            total: stream.total(),
            wire_bytes: stream.wire_bytes(),
            answer: stream.answer(),
        })
    }

    /// Opens a Range GET of `len` bytes of blob `d` at `offset`, the request retried under
    /// `budget`; a body that breaks off later is the caller's to resume (from where the bytes
    /// broke off, under the same budget: see [`RetryBudget::retry_body`]). A `200` with the whole blob or
    /// a `multipart/byteranges` answer works too; the registry is then remembered as one
    /// that does not honour ranges (see [`Self::honours_ranges`]) until it answers a `206`.
    pub async fn blob_range_stream(
        &self,
        r: &Reference,
        d: &Digest,
        offset: u64,
        len: u64,
        sessions: &[String],
        budget: &mut RetryBudget,
    ) -> Result<RangeStream, RemoteError> {
        if len == 0 {
            return Err(RemoteError::Config("empty range".into()));
        }
        let end = offset
            .checked_add(len - 1)
            .ok_or_else(|| RemoteError::Config("range overflows".into()))?;
        let mut c = self.call_for(
            r,
            Method::GET,
            format!("/v2/{}/blobs/{d}", r.repository),
            sessions,
        );
        c.small = false;
        c.headers.insert(
            reqwest::header::RANGE,
            HeaderValue::from_str(&format!("bytes={offset}-{end}"))
                .map_err(|e| RemoteError::Config(e.to_string()))?,
        );
        let reply = self.call_within(&c, budget).await?;
        let reply = check_status(reply, &format!("blob {d}")).await?;
        let stream = RangeStream::new(reply, offset, end)?;
        let ignored = stream.answer() == RangeAnswer::Whole;
        let mut set = self
            .ignores_ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if ignored {
            if set.insert(r.registry.clone()) {
                tracing::info!(registry = %r.registry, url = stream.url(), "the registry answers Range requests with whole blobs; planning bigger requests for it");
            }
        } else {
            set.remove(&r.registry);
        }
        Ok(stream)
    }

    /// Whether the last Range GET to `registry` got a range back (true until one did not).
    pub fn honours_ranges(&self, registry: &str) -> bool {
        !self
            .ignores_ranges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(registry)
    }

    /// Downloads a whole blob into `out`, verifying size and digest; `progress` sees each
    /// chunk's length. The request is retried by the client's request loop; a body that
    /// breaks off or comes short is downloaded again from the start, under the same budget.
    pub async fn blob_to_file(
        &self,
        r: &Reference,
        desc_digest: &Digest,
        size: u64,
        out: &mut tokio::fs::File,
        sessions: &[String],
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RemoteError> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let mut budget = self.retry_budget();
        loop {
            out.set_len(0)
                .await
                .map_err(|e| RemoteError::io("truncating", e))?;
            out.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| RemoteError::io("seeking", e))?;
            let res: Result<(), RemoteError> = async {
                let mut c = self.call_for(
                    r,
                    Method::GET,
                    format!("/v2/{}/blobs/{desc_digest}", r.repository),
                    sessions,
                );
                c.small = false;
                let reply = self.call_within(&c, &mut budget).await?;
                let mut reply = check_status(reply, &format!("blob {desc_digest}")).await?;
                if reply.resp.content_length().is_some_and(|n| n != size) {
                    return Err(RemoteError::protocol(
                        &reply.url,
                        format!("blob is {size} bytes by its descriptor; Content-Length differs"),
                    ));
                }
                let mut h = Hasher::new();
                let mut got = 0u64;
                while let Some(chunk) = reply
                    .resp
                    .chunk()
                    .await
                    .map_err(|e| transport(&reply.url, &e))?
                {
                    got += chunk.len() as u64;
                    if got > size {
                        return Err(RemoteError::protocol(
                            &reply.url,
                            "blob is longer than its descriptor",
                        ));
                    }
                    h.update(&chunk);
                    out.write_all(&chunk)
                        .await
                        .map_err(|e| RemoteError::io("writing blob", e))?;
                    progress(chunk.len() as u64);
                }
                if got != size {
                    return Err(RemoteError::Transport {
                        url: reply.url.clone(),
                        reason: format!("body ended after {got} of {size} bytes"),
                    });
                }
                let actual = h.finish();
                if &actual != desc_digest {
                    return Err(RemoteError::Digest {
                        what: format!("blob from {}", reply.url),
                        expected: desc_digest.to_string(),
                        actual: actual.to_string(),
                    });
                }
                out.flush()
                    .await
                    .map_err(|e| RemoteError::io("writing blob", e))?;
                Ok(())
            }
            .await;
            match res {
                Err(e) if e.is_transient() => match budget.retry_body() {
                    Some(wait) => {
                        tracing::debug!(blob = %desc_digest, error = %e, "blob body broke off; downloading again");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// Uploads a blob from a file unless the registry has it; returns true if uploaded.
    /// `sessions` are asked for credentials, in order.
    pub async fn push_blob(
        &self,
        r: &Reference,
        d: &Digest,
        path: &std::path::Path,
        size: u64,
        sessions: &[String],
    ) -> Result<bool, RemoteError> {
        if self.blob_size_push(r, d, sessions).await? == Some(size) {
            return Ok(false);
        }
        let mut c = self.call_for(
            r,
            Method::POST,
            format!("/v2/{}/blobs/uploads/", r.repository),
            sessions,
        );
        c.scope = Scope::push(&r.repository);
        c.pull = false;
        let reply = self.call(&c).await?;
        let reply = check_status(reply, &format!("starting upload of {d}")).await?;
        let loc = header_str(&reply.resp, "location")
            .ok_or_else(|| RemoteError::protocol(&reply.url, "upload started without Location"))?;
        let base = reqwest::Url::parse(&reply.url)
            .map_err(|e| RemoteError::protocol(&reply.url, e.to_string()))?;
        let mut put_url = base
            .join(loc)
            .map_err(|_| RemoteError::protocol(&reply.url, format!("bad Location {loc:?}")))?;
        put_url
            .query_pairs_mut()
            .append_pair("digest", &d.to_string());
        drop(reply);
        // The upload URL is on the registry (or where it sent us): keep it as a path there.
        let path_q = match put_url.query() {
            Some(q) => format!("{}?{q}", put_url.path()),
            None => put_url.path().to_string(),
        };
        let mut c = self.call_for(r, Method::PUT, path_q, sessions);
        c.scope = Scope::push(&r.repository);
        c.pull = false;
        c.small = false;
        c.payload = Payload::File(path.to_path_buf(), size);
        c.headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        c.headers
            .insert(reqwest::header::CONTENT_LENGTH, HeaderValue::from(size));
        let reply = self.call(&c).await?;
        check_status(reply, &format!("uploading {d}")).await?;
        Ok(true)
    }

    /// Asks the registry to mount blob `d` of repository `from` (on the same registry) into
    /// `r` without an upload; true when it did (201). A 202 means the registry opened an
    /// upload instead, which is left to expire: the caller uploads another way.
    pub async fn mount_blob(
        &self,
        r: &Reference,
        d: &Digest,
        from: &str,
        sessions: &[String],
    ) -> Result<bool, RemoteError> {
        if self.blob_size_push(r, d, sessions).await?.is_some() {
            return Ok(true);
        }
        let mut c = self.call_for(
            r,
            Method::POST,
            format!("/v2/{}/blobs/uploads/?mount={d}&from={from}", r.repository),
            sessions,
        );
        c.scope = Scope::mount(&r.repository, from);
        c.pull = false;
        let reply = self.call(&c).await?;
        match reply.resp.status().as_u16() {
            201 => Ok(true),
            202 => Ok(false),
            _ => {
                check_status(reply, &format!("mounting {d} from {from}")).await?;
                Ok(false)
            }
        }
    }

    async fn blob_size_push(
        &self,
        r: &Reference,
        d: &Digest,
        sessions: &[String],
    ) -> Result<Option<u64>, RemoteError> {
        let mut c = self.call_for(
            r,
            Method::HEAD,
            format!("/v2/{}/blobs/{d}", r.repository),
            sessions,
        );
        c.scope = Scope::push(&r.repository);
        c.pull = false;
        let reply = self.call(&c).await?;
        match reply.resp.status().as_u16() {
            404 => Ok(None),
            200 => Ok(header_len(&reply.resp)),
            _ => {
                check_status(reply, &format!("blob {d}")).await?;
                Ok(None)
            }
        }
    }

    /// Puts manifest bytes under `object` (a tag or their digest); `sessions` are asked for
    /// credentials, in order.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        object: &str,
        media_type: &str,
        data: &[u8],
        sessions: &[String],
    ) -> Result<Digest, RemoteError> {
        self.push_manifest_answer(r, object, media_type, data, sessions)
            .await
            .map(|(d, _)| d)
    }

    /// Like [`Self::push_manifest`], also returning the `OCI-Subject` header the registry
    /// answered with (a registry with the referrers API sets it for a manifest with a subject).
    pub(crate) async fn push_manifest_answer(
        &self,
        r: &Reference,
        object: &str,
        media_type: &str,
        data: &[u8],
        sessions: &[String],
    ) -> Result<(Digest, Option<String>), RemoteError> {
        if !MANIFEST_TYPES.contains(&media_type) {
            return Err(RemoteError::Config(format!(
                "unsupported manifest type {media_type}"
            )));
        }
        let mut c = self.call_for(
            r,
            Method::PUT,
            format!("/v2/{}/manifests/{object}", r.repository),
            sessions,
        );
        c.scope = Scope::push(&r.repository);
        c.pull = false;
        c.payload = Payload::Bytes(Bytes::copy_from_slice(data));
        c.headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|e| RemoteError::Config(e.to_string()))?,
        );
        let reply = self.call(&c).await?;
        let reply = check_status(reply, &format!("pushing manifest {object}")).await?;
        let subject = header_str(&reply.resp, "oci-subject").map(str::to_string);
        Ok((Digest::of(data), subject))
    }

    /// The repository's tags.
    pub async fn tags(
        &self,
        r: &Reference,
        sessions: &[String],
    ) -> Result<Vec<String>, RemoteError> {
        let c = self.call_for(
            r,
            Method::GET,
            format!("/v2/{}/tags/list", r.repository),
            sessions,
        );
        let reply = self.call(&c).await?;
        let reply = check_status(reply, "tags").await?;
        let url = reply.url.clone();
        let body = read_limited(reply.resp, MAX_MANIFEST, &url).await?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| RemoteError::protocol(&url, format!("tags list: {e}")))?;
        Ok(v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Turns a non-success reply into an error (404 → NotFound).
async fn check_status(reply: Reply, what: &str) -> Result<Reply, RemoteError> {
    let status = reply.resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(reply);
    }
    let url = reply.url.clone();
    let message = error_message(reply.resp).await;
    if status == 404 {
        return Err(RemoteError::NotFound(if message.is_empty() {
            what.to_string()
        } else {
            format!("{what} ({message})")
        }));
    }
    Err(RemoteError::Status {
        url,
        status,
        message,
    })
}

/// Checks `bytes START-END/TOTAL` against the range asked for; returns TOTAL.
pub(crate) fn parse_content_range(v: &str, start: u64, end: u64) -> Result<u64, String> {
    let rest = v.trim().strip_prefix("bytes ").ok_or("not a bytes range")?;
    let (range, total) = rest.split_once('/').ok_or("no total")?;
    let (a, b) = range.split_once('-').ok_or("no range")?;
    let a: u64 = a.trim().parse().map_err(|_| "bad start")?;
    let b: u64 = b.trim().parse().map_err(|_| "bad end")?;
    if a != start || b != end {
        return Err(format!("answers bytes {a}-{b} instead of {start}-{end}"));
    }
    let total: u64 = total.trim().parse().map_err(|_| "unknown total")?;
    if b >= total {
        return Err("range ends past the blob".into());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 0-9/100", 0, 9), Ok(100));
        assert!(parse_content_range("bytes 0-10/100", 0, 9).is_err());
        assert!(parse_content_range("bytes 0-9/*", 0, 9).is_err());
        assert!(parse_content_range("bytes 0-9/5", 0, 9).is_err());
        assert!(parse_content_range("items 0-9/100", 0, 9).is_err());
    }
}
