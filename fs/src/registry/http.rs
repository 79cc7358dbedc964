//! Routing and handlers of the distribution API (`/v2/…`) over hyper: base check, catalog,
//! tags, manifests (GET/HEAD/PUT/DELETE), blobs (GET/HEAD with single Range, DELETE),
//! referrers, uploads (POST monolithic or session, PATCH chunks, PUT to finish, GET status)
//! and cross-repo mounts. DELETEs answer 405 UNSUPPORTED unless deletes are enabled.

use super::body::next_frame;
use super::conn::Peer;
use super::error::ApiError;
use super::htpasswd::Htpasswd;
use super::range::{parse_range, RangeRequest};
use super::store::{parse_digest, Store};
use super::uploads::Uploads;
use crate::oci::{percent_decode, MAX_MANIFEST};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Response body type.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Shared server state.
pub struct State {
    /// Repositories.
    pub store: Store,
    /// Upload sessions.
    pub uploads: Uploads,
    /// Basic-auth users, when auth is on.
    pub htpasswd: Option<Htpasswd>,
    /// Realm named in the challenge.
    pub realm: String,
    /// Whether manifest, tag and blob DELETE are served.
    pub enable_delete: bool,
    /// A request body that sends nothing for this long fails its request.
    pub body_timeout: std::time::Duration,
}

/// Serves one request; never fails at the HTTP level (errors become JSON responses).
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let mut resp = match route(&state, req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %path, status = e.status, code = e.code, "registry error");
            error_response(&state, &e)
        }
    };
    resp.headers_mut().insert(
        "Docker-Distribution-API-Version",
        hyper::header::HeaderValue::from_static("registry/2.0"),
    );
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "registry request");
    Ok(resp)
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

fn error_response(state: &State, e: &ApiError) -> Response<Body> {
    let body = e.body();
    let mut b = Response::builder()
        .status(e.status)
        .header("Content-Type", "application/json")
        .header("Content-Length", body.len());
    if e.status == 401 {
        b = b.header(
            "WWW-Authenticate",
            format!("Basic realm=\"{}\"", state.realm.replace('"', "")),
        );
    }
    if e.status == 429 {
        b = b.header("Retry-After", "60");
    }
    b.body(full(body))
        .unwrap_or_else(|_| Response::new(empty()))
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Decoded query parameters.
fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Referrers(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(name));
    }
    if let Some((name, id)) = rest.rsplit_once("/blobs/uploads/") {
        return Some(Route::Upload(name, id));
    }
    if let Some((name, r)) = rest.rsplit_once("/manifests/") {
        return Some(Route::Manifest(name, r));
    }
    if let Some((name, d)) = rest.rsplit_once("/blobs/") {
        return Some(Route::Blob(name, d));
    }
    if let Some((name, d)) = rest.rsplit_once("/referrers/") {
        return Some(Route::Referrers(name, d));
    }
    None
}

async fn route(state: &Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if let Some(h) = &state.htpasswd {
        if !h.check(header(&req, "authorization")).await {
            return Err(ApiError::unauthorized());
        }
    }
    let path = req.uri().path().to_string();
    let route = parse_route(&path).ok_or_else(ApiError::not_found)?;
    let m = req.method().clone();
    match (route, m) {
        (Route::Base, Method::GET | Method::HEAD) => json(200, b"{}".to_vec()),
        (Route::Catalog, Method::GET) => {
            let st = state.clone();
            let all = blocking(move || Ok(st.store.catalog())).await?;
            paginate(&req, "repositories", all, "/v2/_catalog".to_string(), None)
        }
        (Route::Tags(name), Method::GET) => {
            let (st, n) = (state.clone(), name.to_string());
            let tags = blocking(move || st.store.tags(&n)).await?;
            paginate(
                &req,
                "tags",
                tags,
                format!("/v2/{name}/tags/list"),
                Some(name),
            )
        }
        (Route::Manifest(name, r), m @ (Method::GET | Method::HEAD)) => {
            let (st, n, r) = (state.clone(), name.to_string(), r.to_string());
            let man = blocking(move || st.store.manifest(&n, &r)).await?;
            let b = Response::builder()
                .status(200)
                .header("Content-Type", man.media_type)
                .header("Content-Length", man.data.len())
                .header("Docker-Content-Digest", man.digest.to_string())
                .header("ETag", format!("\"{}\"", man.digest));
            let body = if m == Method::HEAD {
                empty()
            } else {
                full(man.data)
            };
            b.body(body).map_err(ApiError::internal)
        }
        (Route::Manifest(name, r), Method::PUT) => put_manifest(state, name, r, req).await,
        (Route::Manifest(name, r), Method::DELETE) => {
            deletes_enabled(state)?;
            let (st, n, r) = (state.clone(), name.to_string(), r.to_string());
            blocking(move || st.store.delete_manifest(&n, &r)).await?;
            accepted()
        }
        (Route::Blob(name, d), m @ (Method::GET | Method::HEAD)) => {
            get_blob(state, name, d, &req, m == Method::HEAD).await
        }
        (Route::Blob(name, d), Method::DELETE) => {
            deletes_enabled(state)?;
            let (st, n, d) = (state.clone(), name.to_string(), d.to_string());
            blocking(move || st.store.delete_blob(&n, &d)).await?;
            accepted()
        }
        (Route::Referrers(name, d), Method::GET) => {
            let (st, n, subject) = (state.clone(), name.to_string(), d.to_string());
            let all = blocking(move || st.store.referrers(&n, &subject)).await?;
            super::referrers_page::respond(&query(&req), name, d, all)
        }
        (Route::UploadStart(name), Method::POST) => start_upload(state, name, req).await,
        (Route::Upload(name, id), Method::PATCH) => patch_upload(state, name, id, req).await,
        (Route::Upload(name, id), Method::PUT) => finish_upload(state, name, id, req).await,
        (Route::Upload(name, id), Method::GET) => {
            state.store.repo_dir(name)?;
            let u = state.uploads.peek(name, id)?;
            upload_status(204, name, id, u.size)
        }
        (Route::Upload(name, id), Method::DELETE) => {
            state.store.repo_dir(name)?;
            state.uploads.take(name, id)?;
            state.uploads.finish(id);
            Response::builder()
                .status(204)
                .body(empty())
                .map_err(ApiError::internal)
        }
        (_, m) => Err(ApiError::unsupported(format!("{m} is not supported here"))),
    }
}

fn deletes_enabled(state: &State) -> Result<(), ApiError> {
    if state.enable_delete {
        Ok(())
    } else {
        Err(ApiError::unsupported(
            "deletes are disabled (start the registry with --enable-delete)",
        ))
    }
}

fn accepted() -> Result<Response<Body>, ApiError> {
    Response::builder()
        .status(202)
        .header("Content-Length", 0)
        .body(empty())
        .map_err(ApiError::internal)
}

/// Runs blocking storage work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

pub(super) fn json(status: u16, body: Vec<u8>) -> Result<Response<Body>, ApiError> {
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Content-Length", body.len())
        .body(full(body))
        .map_err(ApiError::internal)
}

fn paginate(
    req: &Request<Incoming>,
    key: &str,
    all: Vec<String>,
    path: String,
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let q = query(req);
    let last = param(&q, "last");
    let n = param(&q, "n").and_then(|n| n.parse::<usize>().ok());
    let rest: Vec<String> = all
        .into_iter()
        .filter(|t| last.is_none_or(|l| t.as_str() > l))
        .collect();
    let take = n.unwrap_or(rest.len()).min(10_000);
    let page: Vec<String> = rest.iter().take(take).cloned().collect();
    let mut doc = serde_json::json!({ key: page });
    if let Some(name) = name {
        doc["name"] = serde_json::Value::String(name.to_string());
    }
    let mut resp = json(200, doc.to_string().into_bytes())?;
    if rest.len() > take {
        if let Some(l) = page.last() {
            let link = format!("<{path}?n={take}&last={l}>; rel=\"next\"");
            if let Ok(v) = hyper::header::HeaderValue::from_str(&link) {
                resp.headers_mut().insert("Link", v);
            }
        }
    }
    Ok(resp)
}

async fn get_blob(
    state: &Arc<State>,
    name: &str,
    digest: &str,
    req: &Request<Incoming>,
    head: bool,
) -> Result<Response<Body>, ApiError> {
    let (path, size, d) = state.store.blob(name, digest)?;
    let b = Response::builder()
        .header("Docker-Content-Digest", d.to_string())
        .header("ETag", format!("\"{d}\""))
        .header("Accept-Ranges", "bytes")
        .header("Content-Type", "application/octet-stream");
    let (b, start, len) = match parse_range(header(req, "range"), size) {
        RangeRequest::Full => (b.status(200), 0, size),
        RangeRequest::Partial { start, end } => (
            b.status(206)
                .header("Content-Range", format!("bytes {start}-{end}/{size}")),
            start,
            end - start + 1,
        ),
        RangeRequest::Unsatisfiable => {
            let e = ApiError {
                status: 416,
                code: "RANGE_INVALID",
                message: format!("range is outside the blob of {size} bytes"),
            };
            let body = e.body();
            return Response::builder()
                .status(416)
                .header("Content-Range", format!("bytes */{size}"))
                .header("Content-Type", "application/json")
                .header("Content-Length", body.len())
                .body(full(body))
                .map_err(ApiError::internal);
        }
    };
    let b = b.header("Content-Length", len);
    if head {
        return b.body(empty()).map_err(ApiError::internal);
    }
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(ApiError::internal)?;
    b.body(file_body(file, len)).map_err(ApiError::internal)
}

/// Streams `len` bytes of `file` from its current position.
fn file_body(file: tokio::fs::File, len: u64) -> Body {
    use futures_util::StreamExt as _;
    let frames = crate::stream::file_chunks(file, len).map(|r| r.map(Frame::data));
    BodyExt::boxed(StreamBody::new(frames))
}

async fn put_manifest(
    state: &Arc<State>,
    name: &str,
    reference: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    state.store.repo_dir(name)?;
    let ct = header(&req, "content-type").map(str::to_string);
    let data = read_body_bounded(req.into_body(), MAX_MANIFEST, state.body_timeout).await?;
    let (st, n, r) = (state.clone(), name.to_string(), reference.to_string());
    let put = blocking(move || st.store.put_manifest(&n, &r, ct.as_deref(), &data)).await?;
    let d = put.digest;
    let mut b = Response::builder()
        .status(201)
        .header("Location", format!("/v2/{name}/manifests/{d}"))
        .header("Docker-Content-Digest", d.to_string())
        .header("Content-Length", 0);
    if let Some(s) = put.subject {
        b = b.header("OCI-Subject", s.to_string());
    }
    b.body(empty()).map_err(ApiError::internal)
}

async fn read_body_bounded(
    mut body: Incoming,
    max: usize,
    stall: std::time::Duration,
) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(frame) = next_frame(&mut body, stall).await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(ApiError::too_large(format!(
                    "body is larger than {max} bytes"
                )));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// Appends a request body to an upload file; returns the new size.
async fn append_body(
    path: &std::path::Path,
    mut body: Incoming,
    size: u64,
    stall: std::time::Duration,
) -> Result<u64, ApiError> {
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .await
        .map_err(ApiError::internal)?;
    let mut total = size;
    while let Some(frame) = next_frame(&mut body, stall).await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            f.write_all(&data).await.map_err(ApiError::internal)?;
            total += data.len() as u64;
        }
    }
    f.flush().await.map_err(ApiError::internal)?;
    Ok(total)
}

fn upload_status(status: u16, name: &str, id: &str, size: u64) -> Result<Response<Body>, ApiError> {
    let mut b = Response::builder()
        .status(status)
        .header("Location", format!("/v2/{name}/blobs/uploads/{id}"))
        .header("Docker-Upload-UUID", id)
        .header("Content-Length", 0);
    // An empty upload has no byte range yet; "0-0" would claim one byte.
    if size > 0 {
        b = b.header("Range", format!("0-{}", size - 1));
    }
    b.body(empty()).map_err(ApiError::internal)
}

async fn start_upload(
    state: &Arc<State>,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    state.store.repo_dir(name)?;
    let q = query(&req);
    if let (Some(mount), Some(from)) = (param(&q, "mount"), param(&q, "from")) {
        let (st, n, f, m) = (
            state.clone(),
            name.to_string(),
            from.to_string(),
            mount.to_string(),
        );
        if let Ok(d) = blocking(move || st.store.mount_blob(&n, &f, &m)).await {
            return blob_created(name, &d.to_string());
        }
    }
    let digest = param(&q, "digest").map(str::to_string);
    let client = req.extensions().get::<Peer>().map(|p| p.0);
    let id = state.uploads.start(name, client)?;
    if let Some(digest) = digest {
        // Monolithic upload: the body is the whole blob.
        let u = state.uploads.take(name, &id)?;
        let r = complete(state, name, &id, &u.path, req.into_body(), 0, &digest).await;
        state.uploads.finish(&id);
        return r;
    }
    upload_status(202, name, &id, 0)
}

async fn patch_upload(
    state: &Arc<State>,
    name: &str,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    state.store.repo_dir(name)?;
    let u = state.uploads.take(name, id)?;
    if let Some(cr) = header(&req, "content-range") {
        let start = cr
            .trim()
            .trim_start_matches("bytes ")
            .split('-')
            .next()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if start != Some(u.size) {
            state.uploads.put_back(id, u.size);
            return Err(ApiError::upload_range(format!(
                "chunk must start at {}, Content-Range says {cr:?}",
                u.size
            )));
        }
    }
    let r = append_body(&u.path, req.into_body(), u.size, state.body_timeout).await;
    match r {
        Ok(size) => {
            state.uploads.put_back(id, size);
            upload_status(202, name, id, size)
        }
        Err(e) => {
            // Whatever reached the file is no longer a known prefix: drop the upload.
            state.uploads.finish(id);
            Err(e)
        }
    }
}

async fn finish_upload(
    state: &Arc<State>,
    name: &str,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    state.store.repo_dir(name)?;
    let q = query(&req);
    let digest = param(&q, "digest")
        .ok_or_else(|| ApiError::digest_invalid("digest query parameter is required"))?
        .to_string();
    let u = state.uploads.take(name, id)?;
    let r = complete(state, name, id, &u.path, req.into_body(), u.size, &digest).await;
    state.uploads.finish(id);
    r
}

async fn complete(
    state: &Arc<State>,
    name: &str,
    _id: &str,
    path: &std::path::Path,
    body: Incoming,
    size: u64,
    digest: &str,
) -> Result<Response<Body>, ApiError> {
    let want = parse_digest(digest)?;
    append_body(path, body, size, state.body_timeout).await?;
    let (st, n, p) = (state.clone(), name.to_string(), path.to_path_buf());
    blocking(move || {
        let (got, _) = crate::image::hash_file(&p).map_err(ApiError::internal)?;
        if got != want {
            return Err(ApiError::digest_invalid(format!(
                "uploaded content hashes to {got}, not {want}"
            )));
        }
        st.store.commit_blob(&n, &p, &want)
    })
    .await?;
    blob_created(name, &want.to_string())
}

fn blob_created(name: &str, d: &str) -> Result<Response<Body>, ApiError> {
    Response::builder()
        .status(StatusCode::CREATED)
        .header("Location", format!("/v2/{name}/blobs/{d}"))
        .header("Docker-Content-Digest", d)
        .header("Content-Length", 0)
        .body(empty())
        .map_err(ApiError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(parse_route("/v2/"), Some(Route::Base)));
        assert!(matches!(parse_route("/v2"), Some(Route::Base)));
        assert!(matches!(parse_route("/v2/_catalog"), Some(Route::Catalog)));
        assert!(matches!(
            parse_route("/v2/a/b/tags/list"),
            Some(Route::Tags("a/b"))
        ));
        assert!(matches!(
            parse_route("/v2/a/blobs/uploads/"),
            Some(Route::UploadStart("a"))
        ));
        assert!(matches!(
            parse_route("/v2/a/blobs/uploads/xyz"),
            Some(Route::Upload("a", "xyz"))
        ));
        assert!(matches!(
            parse_route("/v2/a/manifests/latest"),
            Some(Route::Manifest("a", "latest"))
        ));
        assert!(matches!(
            parse_route("/v2/a/blobs/sha256:00"),
            Some(Route::Blob("a", "sha256:00"))
        ));
        assert!(matches!(
            parse_route("/v2/a/b/referrers/sha256:00"),
            Some(Route::Referrers("a/b", "sha256:00"))
        ));
        assert!(matches!(
            parse_route("/v2/a/referrers/manifests/x"),
            Some(Route::Manifest("a/referrers", "x"))
        ));
        assert!(parse_route("/v3/").is_none());
    }
}
