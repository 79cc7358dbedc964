//! Hostile registries, served by canned-response servers: huge or endless manifests, wrong
//! media types, content that does not match its digest, size lies, malformed challenges,
//! redirect loops. Each must end in a clear error, quickly, without panics.

use stargaze_fs::remote::Descriptor;
use stargaze_fs::remote::{
    ClientOptions, Platform, Reference, RegistryClient, RemoteError, RetryPolicy,
};
use stargaze_fs::Digest;
use stargaze_suite::http::{Reply, Request, Response, TestServer};
use std::time::Duration;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn client() -> RegistryClient {
    RegistryClient::new(ClientOptions {
        retry: RetryPolicy {
            attempts: 2,
            base: Duration::from_millis(5),
            max: Duration::from_millis(10),
        },
        read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    })
    .unwrap()
}

fn manifest_json() -> String {
    let zero = format!("sha256:{}", "0".repeat(64));
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{zero}","size":2}},"layers":[]}}"#
    )
}

/// Serves `handler` for manifests and fails the test's request with a timeout if it hangs.
fn ask(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static, object: &str) -> RemoteError {
    let server = TestServer::start(handler);
    let r = Reference::parse(&format!("{}/h/img:{object}", server.addr)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(60),
            client().resolve(&r, &Platform::parse("linux/amd64").unwrap(), &[]),
        )
        .await
        .expect("the client hung on a hostile registry")
        .expect_err("a hostile answer was accepted")
    })
}

fn ok(ct: &str, body: impl Into<Vec<u8>>) -> Reply {
    Reply::Send(Response::new(200, body).with("Content-Type", ct))
}

#[test]
fn huge_and_endless_manifests() {
    let e = ask(|_| ok(OCI_MANIFEST, vec![b' '; 5 << 20]), "v1");
    assert!(e.to_string().contains("larger than"), "{e}");
    let e = ask(
        |_| {
            Reply::Endless(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec())
        },
        "v1",
    );
    // Junk where chunk sizes should be: a transport error, not a hang.
    assert!(matches!(e, RemoteError::Transport { .. }), "{e}");
    // A body that never ends (no length, no chunks): cut off at the manifest limit.
    let e = ask(
        |_| {
            Reply::Endless(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n\r\n".to_vec())
        },
        "v1",
    );
    assert!(e.to_string().contains("larger than"), "{e}");
}

#[test]
fn wrong_media_types() {
    let e = ask(
        |_| {
            ok(
                "application/json",
                r#"{"schemaVersion":2,"mediaType":"text/html"}"#,
            )
        },
        "v1",
    );
    assert!(
        e.to_string().contains("unsupported manifest media type"),
        "{e}"
    );
    let m = manifest_json();
    let e = ask(move |_| ok(OCI_INDEX, m.clone()), "v1");
    assert!(e.to_string().contains("served as"), "{e}");
    let e = ask(|_| ok(OCI_MANIFEST, r#"{"schemaVersion":1}"#), "v1");
    assert!(e.to_string().contains("schemaVersion"), "{e}");
    let e = ask(|_| ok(OCI_MANIFEST, "<html>not json</html>"), "v1");
    assert!(e.to_string().contains("not valid JSON"), "{e}");
    let bad_digest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:../../etc","size":1},"layers":[]}"#;
    let e = ask(move |_| ok(OCI_MANIFEST, bad_digest), "v1");
    assert!(e.to_string().contains("digest"), "{e}");
}

#[test]
fn content_that_does_not_match_its_digest() {
    let m = manifest_json();
    let other = Digest::of(b"something else");
    // Asked by digest, served other bytes.
    let m2 = m.clone();
    let e = ask(
        move |_| ok(OCI_MANIFEST, m2.clone()),
        &format!("x@{other}").replace("x@", "v1@"),
    );
    assert!(matches!(e, RemoteError::Digest { .. }), "{e}");
    // Docker-Content-Digest that lies.
    let e = ask(
        move |_| {
            Reply::Send(
                Response::new(200, m.clone())
                    .with("Content-Type", OCI_MANIFEST)
                    .with("Docker-Content-Digest", other.to_string()),
            )
        },
        "v1",
    );
    assert!(matches!(e, RemoteError::Digest { .. }), "{e}");
}

#[test]
fn index_child_size_lie() {
    let child = manifest_json();
    let d = Digest::of(child.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        child.len() + 5
    );
    let e = ask(
        move |req| {
            if req.path().ends_with("/manifests/v1") {
                ok(OCI_INDEX, index.clone())
            } else {
                ok(OCI_MANIFEST, child.clone())
            }
        },
        "v1",
    );
    assert!(e.to_string().contains("descriptor says"), "{e}");
    // A descriptor claiming a giant manifest is refused before any request.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = TestServer::start(|_| ok(OCI_MANIFEST, manifest_json()));
    let r = Reference::parse(&format!("{}/h/img:v1", server.addr)).unwrap();
    let desc = Descriptor {
        media_type: OCI_MANIFEST.into(),
        digest: d.to_string(),
        size: 1 << 40,
        annotations: None,
        platform: None,
        urls: None,
    };
    let e = rt
        .block_on(client().manifest_by_descriptor(&r, &desc, &[]))
        .unwrap_err();
    assert!(e.to_string().contains("claims"), "{e}");
    // No platform match lists what there is.
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"s390x"}}}}]}}"#
    );
    let e = ask(move |_| ok(OCI_INDEX, index.clone()), "v1");
    assert!(
        matches!(e, RemoteError::Platform { .. }) && e.to_string().contains("s390x"),
        "{e}"
    );
}

#[test]
fn malformed_challenges_and_redirect_loops() {
    for header in [
        "",
        "Bearer",
        "Bearer service=\"x\"",
        "Bearer realm=\"unterminated",
        "Bearer realm=\"ftp://evil/token\"",
        "Bearer realm=\"http://evil.example/token\"",
        "Magic foo=bar",
    ] {
        let h = header.to_string();
        let e = ask(
            move |_| {
                let mut r = Response::new(401, "no");
                if !h.is_empty() {
                    r = r.with("WWW-Authenticate", h.clone());
                }
                Reply::Send(r)
            },
            "v1",
        );
        assert!(matches!(e, RemoteError::Auth { .. }), "{header:?}: {e}");
    }
    let e = ask(
        |req: &Request| Reply::Send(Response::new(302, "").with("Location", req.target.clone())),
        "v1",
    );
    assert!(matches!(e, RemoteError::Redirects { .. }), "{e}");
    let e = ask(
        |_| Reply::Send(Response::new(302, "").with("Location", "file:///etc/passwd")),
        "v1",
    );
    assert!(e.to_string().contains("refusing redirect"), "{e}");
    let e = ask(
        |_| Reply::Send(Response::new(302, "").with("Location", "http://198.51.100.7/x")),
        "v1",
    );
    assert!(e.to_string().contains("plain-HTTP"), "{e}");
    let e = ask(|_| Reply::Send(Response::new(500, "down")), "v1");
    assert!(matches!(e, RemoteError::Status { status: 500, .. }), "{e}");
}
