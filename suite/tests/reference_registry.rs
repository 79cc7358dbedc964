//! The registry client against the reference registry (distribution 2.8, Debian's
//! `docker-registry`, private instances started and stopped by PID): pushes with skopeo and
//! `stargaze copy`, lazy Range reads equal to local reads, htpasswd basic auth, token auth
//! through a real token issuer (caching, sessions), and redirects (auth dropped across hosts,
//! endless loops refused).

use stargaze_fs::cache::{ChunkCache, MemoryCache};
use stargaze_fs::fetcher::FetchOptions;
use stargaze_fs::format::{FileBlob, LayerReader, NodeKind, OpenOptions};
use stargaze_fs::image::OciLayout;
use stargaze_fs::layer::RemoteLayer;
use stargaze_fs::remote::auth::{Credentials, SessionManager, StaticCredentials};
use stargaze_fs::remote::{copy_image, CopyOptions, ImageLocation, Quiet};
use stargaze_fs::remote::{ClientOptions, Platform, Reference, RegistryClient, RemoteError};
use stargaze_suite::fault_proxy::{Fault, FaultProxy, Rule};
use stargaze_suite::http::{Reply, Response, TestServer};
use stargaze_suite::servers::{DockerRegistry, RegistryAuth, TokenIssuer};
use stargaze_suite::{have, require, run, sample_estargz, stargaze_bin};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn ready() -> bool {
    require(have("docker-registry"), "docker-registry (Debian package)")
        && require(have("skopeo"), "skopeo")
        && require(have("openssl"), "openssl")
        && require(stargaze_bin().is_file(), "the stargaze binary")
}

fn client_with(host: &str, creds: Option<(&str, &str)>) -> Arc<RegistryClient> {
    let mut o = ClientOptions::default();
    if let Some((u, p)) = creds {
        o.fallback = vec![Arc::new(
            StaticCredentials::default().with(host, Credentials::basic(u, p)),
        )];
    }
    Arc::new(RegistryClient::new(o).unwrap())
}

async fn push(client: &RegistryClient, oci: &Path, dst: &str) {
    copy_image(
        client,
        &ImageLocation::Layout(format!("oci:{}:esgz", oci.display()).parse().unwrap()),
        &ImageLocation::Registry(Reference::parse(dst).unwrap()),
        &CopyOptions::default(),
        &Quiet,
    )
    .await
    .unwrap();
}

/// Reads every regular file of the image's first layer remotely and compares with the local
/// layer; returns the counters.
async fn compare_lazy_reads(
    client: Arc<RegistryClient>,
    reference: &Reference,
    oci: &Path,
    sessions: Vec<String>,
) -> stargaze_fs::fetcher::CounterSnapshot {
    let (m, _) = client
        .resolve(reference, &Platform::host(), &sessions)
        .await
        .unwrap();
    let desc = &m.layers[0];
    let cache = Arc::new(ChunkCache::new(Some(MemoryCache::new(1 << 20)), None));
    let layer = RemoteLayer::open(
        client.clone(),
        reference,
        desc,
        cache,
        sessions,
        FetchOptions::default(),
    )
    .await
    .unwrap();
    let layout = OciLayout::open(oci).unwrap();
    let local = LayerReader::open(
        FileBlob::open(&layout.blob_path(&desc.digest().unwrap())).unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(layer.toc_digest(), local.toc_digest());
    let mut files = 0;
    for (id, n) in layer.index().nodes.iter().enumerate() {
        if n.kind != NodeKind::Reg || n.size == 0 {
            continue;
        }
        let id = id as u32;
        // Whole file, and a slice across a chunk boundary when there is one.
        let remote = layer.read(id, 0, n.size).await.unwrap();
        assert_eq!(
            remote,
            local.read_file(id, 0, n.size).unwrap(),
            "{}",
            layer.index().path(id)
        );
        if n.chunks.len() > 1 {
            let at = n.chunks[1].file_offset - 7;
            assert_eq!(
                layer.read(id, at, 100).await.unwrap(),
                local.read_file(id, at, 100).unwrap()
            );
        }
        files += 1;
        if files > 60 {
            break;
        }
    }
    layer.counters()
}

#[test]
fn skopeo_push_and_lazy_reads() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 100);
    let reg = DockerRegistry::start(RegistryAuth::None);
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:esgz", oci.display()))
        .arg(format!("docker://{}/lab/skopeo:v1", reg.host())));
    run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("oci:{}:esgz", oci.display()))
        .arg(format!("docker://{}/lab/ours:v1", reg.host())));
    let client = client_with(&reg.host(), None);
    let rt = rt();
    for repo in ["lab/skopeo", "lab/ours"] {
        let r = Reference::parse(&format!("{}/{repo}:v1", reg.host())).unwrap();
        let c = rt.block_on(compare_lazy_reads(client.clone(), &r, &oci, vec![]));
        assert!(c.requests > 1 && c.bytes_served > 0, "{c:?}");
        assert_eq!(c.verify_failures, 0);
    }
    // Pulling back with stargaze copy gives the same manifest digest skopeo pushed.
    let back = tmp.path().join("back");
    run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("docker://{}/lab/skopeo:v1", reg.host()))
        .arg(format!("oci:{}:v1", back.display())));
    let a = OciLayout::open(&oci).unwrap().tags().unwrap();
    let b = OciLayout::open(&back).unwrap().tags().unwrap();
    let digest = |v: &[(String, oci_spec::image::Descriptor)], t: &str| {
        v.iter()
            .find(|(n, _)| n == t)
            .map(|(_, d)| d.digest().to_string())
            .unwrap()
    };
    assert_eq!(digest(&a, "esgz"), digest(&b, "v1"));
}

#[test]
fn htpasswd_basic_auth() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 20);
    let reg = DockerRegistry::start(RegistryAuth::Htpasswd("bob", "hunter2"));
    let dst = format!("{}/auth/img:v1", reg.host());
    let rt = rt();
    rt.block_on(push(
        &client_with(&reg.host(), Some(("bob", "hunter2"))),
        &oci,
        &dst,
    ));
    let r = Reference::parse(&dst).unwrap();
    let wrong = rt.block_on(client_with(&reg.host(), Some(("bob", "wrong"))).manifest(&r, &[]));
    match wrong {
        Err(e @ RemoteError::Auth { .. }) => assert!(!e.to_string().contains("wrong")),
        other => panic!("expected an auth error, got {other:?}"),
    }
    let c = rt.block_on(compare_lazy_reads(
        client_with(&reg.host(), Some(("bob", "hunter2"))),
        &r,
        &oci,
        vec![],
    ));
    assert!(c.requests > 0);
}

#[test]
fn token_auth_with_cache_and_sessions() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 20);
    let issuer = TokenIssuer::start("carol", "t0ken-pass");
    let reg = DockerRegistry::start(RegistryAuth::Token(&issuer));
    let host = reg.host();
    let dst = format!("{host}/tok/img:v1");
    let rt = rt();
    rt.block_on(push(
        &client_with(&host, Some(("carol", "t0ken-pass"))),
        &oci,
        &dst,
    ));
    let r = Reference::parse(&dst).unwrap();

    // Right credentials: many requests, one token for the pull scope.
    let client = client_with(&host, Some(("carol", "t0ken-pass")));
    let before = issuer.requests.load(std::sync::atomic::Ordering::SeqCst);
    let c = rt.block_on(compare_lazy_reads(client, &r, &oci, vec![]));
    let tokens = issuer.requests.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(c.requests > 5);
    assert_eq!(
        tokens, 1,
        "the pull token is cached across {} requests",
        c.requests
    );

    // Wrong password: the token server refuses; the message names no secret.
    let bad = rt.block_on(client_with(&host, Some(("carol", "nope"))).manifest(&r, &[]));
    match bad {
        Err(e @ RemoteError::Auth { .. }) => {
            let s = e.to_string();
            assert!(s.contains("refused") && !s.contains("nope"), "{s}");
        }
        other => panic!("expected an auth error, got {other:?}"),
    }
    // Anonymous: a token without access, then the registry refuses.
    let anon = rt.block_on(client_with(&host, None).manifest(&r, &[]));
    assert!(matches!(anon, Err(RemoteError::Auth { .. })), "{anon:?}");

    // Sessions: only a fetch naming a session that has credentials gets in, first answer wins.
    let sessions = Arc::new(SessionManager::new());
    sessions.register("empty", Arc::new(StaticCredentials::default()));
    sessions.register(
        "wrong",
        Arc::new(StaticCredentials::default().with(&host, Credentials::basic("carol", "bad"))),
    );
    sessions.register(
        "right",
        Arc::new(
            StaticCredentials::default().with(&host, Credentials::basic("carol", "t0ken-pass")),
        ),
    );
    let o = ClientOptions {
        sessions: sessions.clone(),
        ..ClientOptions::default()
    };
    let client = Arc::new(RegistryClient::new(o).unwrap());
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(rt
        .block_on(client.manifest(&r, &ids(&["empty", "right"])))
        .is_ok());
    assert!(rt.block_on(client.manifest(&r, &ids(&["empty"]))).is_err());
    assert!(
        rt.block_on(client.manifest(&r, &ids(&["wrong", "right"])))
            .is_err(),
        "first answer wins"
    );
    let c = rt.block_on(compare_lazy_reads(
        client.clone(),
        &r,
        &oci,
        ids(&["right"]),
    ));
    assert!(c.bytes_served > 0);
    sessions.unregister("right");
    // The cached token belongs to the session's credentials: a fresh client shows the
    // session is gone.
    let o = ClientOptions {
        sessions,
        ..ClientOptions::default()
    };
    let fresh = RegistryClient::new(o).unwrap();
    assert!(rt.block_on(fresh.manifest(&r, &ids(&["right"]))).is_err());
}

/// Serves a blob file with Range support, like object storage behind a registry redirect.
fn storage_server(blob_dir: std::path::PathBuf) -> TestServer {
    TestServer::start(move |req| {
        let name = req
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .trim_start_matches("sha256:")
            .to_string();
        let Ok(data) = std::fs::read(blob_dir.join(&name)) else {
            return Reply::Send(Response::new(404, "no"));
        };
        let auth = if req.header("authorization").is_some() {
            "yes"
        } else {
            "no"
        };
        match req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
        {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                Reply::Send(
                    Response::new(206, data[a..=b].to_vec())
                        .with("Content-Range", format!("bytes {a}-{b}/{}", data.len()))
                        .with("X-Saw-Authorization", auth),
                )
            }
            None => Reply::Send(Response::new(200, data).with("X-Saw-Authorization", auth)),
        }
    })
}

#[test]
fn redirects_drop_auth_across_hosts_and_loops_are_refused() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 20);
    let reg = DockerRegistry::start(RegistryAuth::Htpasswd("dave", "pw-dave"));
    let front = FaultProxy::start(reg.addr);
    let storage = storage_server(oci.join("blobs/sha256"));
    let recorder = FaultProxy::start(storage.addr);
    let host = front.addr().to_string();
    let dst = format!("{host}/redir/img:v1");
    let rt = rt();
    rt.block_on(push(
        &client_with(&host, Some(("dave", "pw-dave"))),
        &oci,
        &dst,
    ));
    let r = Reference::parse(&dst).unwrap();
    // Blob reads are redirected to "localhost:PORT": another host than 127.0.0.1:FRONT.
    front.add(
        Rule::new(
            "/blobs/sha256:",
            usize::MAX,
            Fault::RedirectTo(format!("http://localhost:{}", recorder.addr().port())),
        )
        .ranges(),
    );
    let client = client_with(&host, Some(("dave", "pw-dave")));
    let c = rt.block_on(compare_lazy_reads(client.clone(), &r, &oci, vec![]));
    assert!(c.requests > 1);
    let at_storage = recorder.seen();
    assert!(!at_storage.is_empty(), "reads went through the redirect");
    assert!(
        at_storage.iter().all(|s| !s.authorization),
        "credentials never cross hosts"
    );
    assert!(
        front.seen().iter().any(|s| s.authorization),
        "the registry itself got them"
    );

    // A redirect loop ends with a clear error.
    front.clear();
    front.add(
        Rule::new(
            "/blobs/sha256:",
            usize::MAX,
            Fault::RedirectTo(format!("http://{host}")),
        )
        .ranges(),
    );
    let (m, _) = rt
        .block_on(client.resolve(&r, &Platform::host(), &[]))
        .unwrap();
    let d = m.layers[0].digest().unwrap();
    let err = rt
        .block_on(client.blob_range(&r, &d, 0, 10, &[]))
        .unwrap_err();
    assert!(matches!(err, RemoteError::Redirects { .. }), "{err}");
}

#[test]
fn docker_schema2_and_platform_selection() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 20);
    let reg = DockerRegistry::start(RegistryAuth::None);
    let rt = rt();
    let client = client_with(&reg.host(), None);

    // Docker schema 2, as skopeo writes it.
    run(Command::new("skopeo")
        .args(["copy", "--format", "v2s2", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:esgz", oci.display()))
        .arg(format!("docker://{}/d2/img:v1", reg.host())));
    let r = Reference::parse(&format!("{}/d2/img:v1", reg.host())).unwrap();
    let m = rt.block_on(client.manifest(&r, &[])).unwrap();
    assert_eq!(m.media_type, stargaze_fs::oci::DOCKER_MANIFEST);
    let back = tmp.path().join("d2");
    run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("docker://{}/d2/img:v1", reg.host()))
        .arg(format!("oci:{}:v1", back.display())));
    let tags = OciLayout::open(&back).unwrap().tags().unwrap();
    assert_eq!(
        tags[0].1.digest().to_string(),
        m.digest.to_string(),
        "exact manifest bytes kept"
    );
    assert_eq!(
        tags[0].1.media_type().to_string(),
        stargaze_fs::oci::DOCKER_MANIFEST
    );

    // A two-platform index (both entries point at the sample manifest).
    let layout = OciLayout::open(&oci).unwrap();
    let esgz = layout
        .tags()
        .unwrap()
        .into_iter()
        .find(|(t, _)| t == "esgz")
        .unwrap()
        .1;
    let entry = |arch: &str, variant: Option<&str>| {
        let mut p = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            p["variant"] = serde_json::Value::String(v.into());
        }
        serde_json::json!({"mediaType": esgz.media_type().to_string(), "digest": esgz.digest().to_string(), "size": esgz.size(), "platform": p})
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("amd64", None), entry("arm64", Some("v8"))],
    });
    layout
        .put_manifest_bytes(
            index.to_string().as_bytes(),
            oci_spec::image::MediaType::ImageIndex,
            Some("multi"),
        )
        .unwrap();
    run(Command::new(stargaze_bin())
        .args(["copy", "--all"])
        .arg(format!("oci:{}:multi", oci.display()))
        .arg(format!("docker://{}/multi/img:v1", reg.host())));
    let r = Reference::parse(&format!("{}/multi/img:v1", reg.host())).unwrap();
    let (m, idx) = rt
        .block_on(client.resolve(&r, &Platform::parse("linux/arm64/v8").unwrap(), &[]))
        .unwrap();
    assert!(idx.is_some_and(|i| i.is_index()));
    assert_eq!(m.digest.to_string(), esgz.digest().to_string());
    let e = rt
        .block_on(client.resolve(&r, &Platform::parse("linux/s390x").unwrap(), &[]))
        .unwrap_err();
    assert!(matches!(e, RemoteError::Platform { .. }), "{e}");
    let one = tmp.path().join("one");
    run(Command::new(stargaze_bin())
        .args(["copy", "--platform", "linux/arm64"])
        .arg(format!("docker://{}/multi/img:v1", reg.host()))
        .arg(format!("oci:{}:x", one.display())));
    let tags = OciLayout::open(&one).unwrap().tags().unwrap();
    assert_eq!(tags[0].1.digest().to_string(), esgz.digest().to_string());
}
