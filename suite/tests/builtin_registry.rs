//! The built-in registry (`stargaze registry serve`) against real clients: skopeo in and
//! out, `stargaze copy`, Range edge cases, chunked and concurrent uploads, basic auth, and
//! hostile names and digests that must not write outside the root.

use stargaze_fs::remote::auth::{Credentials, StaticCredentials};
use stargaze_fs::remote::{copy_image, CopyOptions, ImageLocation, Quiet};
use stargaze_fs::remote::{ClientOptions, Reference, RegistryClient, RemoteError};
use stargaze_fs::Digest;
use stargaze_suite::http::send;
use stargaze_suite::servers::StargazeRegistry;
use stargaze_suite::{have, require, run, sample_estargz, stargaze_bin};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn blobs(layout: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn manifest_digest(layout: &Path, tag: &str) -> String {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .unwrap()
}

#[test]
fn skopeo_and_stargaze_copy_in_and_out() {
    if !require(have("skopeo"), "skopeo")
        || !require(stargaze_bin().is_file(), "the stargaze binary")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 200);
    let reg = StargazeRegistry::start(None);
    let src = format!("oci:{}:esgz", oci.display());
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", &src])
        .arg(format!("docker://{}/lab/sample:v1", reg.host())));
    // Out with skopeo: same manifest digest, same blobs.
    let out = tmp.path().join("out");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{}/lab/sample:v1", reg.host()))
        .arg(format!("oci:{}:v1", out.display())));
    assert_eq!(manifest_digest(&out, "v1"), manifest_digest(&oci, "esgz"));
    // In with stargaze copy under another name, out with stargaze copy.
    run(Command::new(stargaze_bin())
        .args(["copy", &src])
        .arg(format!("docker://{}/other/img:v2", reg.host())));
    let back = tmp.path().join("back");
    let summary = run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("docker://{}/other/img:v2", reg.host()))
        .arg(format!("oci:{}:v2", back.display())));
    assert!(summary.contains("copied"), "{summary}");
    assert_eq!(manifest_digest(&back, "v2"), manifest_digest(&oci, "esgz"));
    let expected: Vec<String> = blobs(&out);
    for b in &expected {
        assert!(
            back.join("blobs/sha256").join(b).is_file(),
            "missing blob {b}"
        );
    }
    // Catalog and tags.
    let cat = send(reg.addr, "GET", "/v2/_catalog", &[], b"").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&cat.body).unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["lab/sample", "other/img"])
    );
    let tags = send(reg.addr, "GET", "/v2/lab/sample/tags/list", &[], b"").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&tags.body).unwrap();
    assert_eq!(v["tags"], serde_json::json!(["v1"]));
    // A second push skips every blob.
    let again = run(Command::new(stargaze_bin())
        .args(["copy", &src])
        .arg(format!("docker://{}/other/img:v2", reg.host())));
    assert!(again.contains("0 blobs"), "{again}");
}

fn first_layer(reg: &StargazeRegistry, repo: &str) -> (String, u64) {
    let m = send(
        reg.addr,
        "GET",
        &format!("/v2/{repo}/manifests/v1"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    )
    .unwrap();
    assert_eq!(m.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    let l = &v["layers"][0];
    (
        l["digest"].as_str().unwrap().to_string(),
        l["size"].as_u64().unwrap(),
    )
}

fn push_sample(reg: &StargazeRegistry, dir: &Path, repo: &str) -> std::path::PathBuf {
    let oci = sample_estargz(dir, 50);
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    rt().block_on(copy_image(
        &client,
        &ImageLocation::Layout(format!("oci:{}:esgz", oci.display()).parse().unwrap()),
        &ImageLocation::Registry(Reference::parse(&format!("{}/{repo}:v1", reg.host())).unwrap()),
        &CopyOptions::default(),
        &Quiet,
    ))
    .unwrap();
    oci
}

#[test]
fn range_edge_cases() {
    if !require(stargaze_bin().is_file(), "the stargaze binary") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let reg = StargazeRegistry::start(None);
    let oci = push_sample(&reg, tmp.path(), "lab/r");
    let (digest, size) = first_layer(&reg, "lab/r");
    let blob = std::fs::read(oci.join("blobs/sha256").join(&digest[7..])).unwrap();
    let path = format!("/v2/lab/r/blobs/{digest}");
    let get = |range: &str| send(reg.addr, "GET", &path, &[("Range", range)], b"").unwrap();
    let r = get("bytes=0-9");
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-9/{size}").as_str())
    );
    assert_eq!(r.body, &blob[..10]);
    let r = get("bytes=-51");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &blob[blob.len() - 51..])
    );
    let r = get(&format!("bytes={}-", size - 5));
    assert_eq!(
        (r.status, r.body.as_slice()),
        (206, &blob[blob.len() - 5..])
    );
    let r = get(&format!("bytes={}-{}", size - 5, size + 100));
    assert_eq!(r.body.len(), 5, "range end clamps to the blob");
    let r = get(&format!("bytes={size}-"));
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    let r = get("bytes=5-1");
    assert_eq!(
        (r.status, r.body.len() as u64),
        (200, size),
        "invalid range is ignored"
    );
    let r = get("bytes=0-1,5-6");
    assert_eq!(r.status, 200, "multi-range is answered with the whole blob");
    let h = send(reg.addr, "HEAD", &path, &[], b"").unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some(size.to_string().as_str()));
    assert_eq!(h.header("docker-content-digest"), Some(digest.as_str()));
    // Through the client: exact bytes, and its own checks pass.
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    let r = Reference::parse(&format!("{}/lab/r:v1", reg.host())).unwrap();
    let d: Digest = digest.parse().unwrap();
    let got = rt()
        .block_on(client.blob_range(&r, &d, 100, 1000, &[]))
        .unwrap();
    assert_eq!(&got.data[..], &blob[100..1100]);
    assert_eq!(got.total, size);
    let past = rt().block_on(client.blob_range(&r, &d, size, 10, &[]));
    assert!(past.is_err());
}

#[test]
fn chunked_and_concurrent_uploads() {
    if !require(stargaze_bin().is_file(), "the stargaze binary") {
        return;
    }
    let reg = StargazeRegistry::start(None);
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let d = Digest::of(&data);
    // Chunked: POST, PATCH twice (second at the wrong offset first), PUT.
    let r = send(reg.addr, "POST", "/v2/up/chunked/blobs/uploads/", &[], b"").unwrap();
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_string();
    let r = send(
        reg.addr,
        "PATCH",
        &loc,
        &[("Content-Range", "0-999999")],
        &data[..1_000_000],
    )
    .unwrap();
    assert_eq!((r.status, r.header("range")), (202, Some("0-999999")));
    let r = send(
        reg.addr,
        "PATCH",
        &loc,
        &[("Content-Range", "5-10")],
        b"xxxxxx",
    )
    .unwrap();
    assert_eq!(r.status, 416);
    let r = send(
        reg.addr,
        "PATCH",
        &loc,
        &[("Content-Range", "1000000-2999999")],
        &data[1_000_000..],
    )
    .unwrap();
    assert_eq!(r.status, 202);
    let wrong = send(
        reg.addr,
        "PUT",
        &format!("{loc}?digest=sha256:{}", "0".repeat(64)),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(wrong.status, 400, "digest mismatch is refused");
    // The failed completion ended that upload; do it again properly.
    let r = send(reg.addr, "POST", "/v2/up/chunked/blobs/uploads/", &[], b"").unwrap();
    let loc = r.header("location").unwrap().to_string();
    let r = send(reg.addr, "PATCH", &loc, &[], &data[..10]).unwrap();
    assert_eq!(r.status, 202);
    let r = send(
        reg.addr,
        "PUT",
        &format!("{loc}?digest={d}"),
        &[],
        &data[10..],
    )
    .unwrap();
    assert_eq!(r.status, 201);
    let got = send(
        reg.addr,
        "GET",
        &format!("/v2/up/chunked/blobs/{d}"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(got.body, data);

    // Eight clients push the same blob at once.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("blob");
    std::fs::write(&file, &data).unwrap();
    let client = Arc::new(RegistryClient::new(ClientOptions::default()).unwrap());
    let r = Reference::parse(&format!("{}/up/concurrent:v1", reg.host())).unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (c, r, f) = (client.clone(), r.clone(), file.clone());
            tasks.push(tokio::spawn(async move {
                c.push_blob(&r, &d, &f, 3_000_000, &[]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    });
    let got = send(
        reg.addr,
        "GET",
        &format!("/v2/up/concurrent/blobs/{d}"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(got.body, data);
    let leftovers = std::fs::read_dir(reg.root.join("_uploads"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0, "finished uploads leave no files");
}

#[test]
fn basic_auth_right_and_wrong_password() {
    if !require(stargaze_bin().is_file(), "the stargaze binary") {
        return;
    }
    let reg = StargazeRegistry::start(Some(("alice", "s3cret")));
    let r = send(reg.addr, "GET", "/v2/", &[], b"").unwrap();
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic "));
    let reference = Reference::parse(&format!("{}/a/b:v1", reg.host())).unwrap();
    let client_with = |user: &str, pass: &str| {
        let o = ClientOptions {
            fallback: vec![Arc::new(
                StaticCredentials::default().with(&reg.host(), Credentials::basic(user, pass)),
            )],
            ..ClientOptions::default()
        };
        RegistryClient::new(o).unwrap()
    };
    let wrong = rt().block_on(client_with("alice", "nope").tags(&reference, &[]));
    match wrong {
        Err(RemoteError::Auth { reason, .. }) => assert!(!reason.contains("nope"), "{reason}"),
        other => panic!("expected an auth error, got {other:?}"),
    }
    let anonymous = rt().block_on(
        RegistryClient::new(ClientOptions::default())
            .unwrap()
            .tags(&reference, &[]),
    );
    assert!(
        matches!(anonymous, Err(RemoteError::Auth { .. })),
        "{anonymous:?}"
    );
    // Right password: the repository does not exist yet, which is a 404, not an auth error.
    let right = rt().block_on(client_with("alice", "s3cret").tags(&reference, &[]));
    assert!(matches!(right, Err(RemoteError::NotFound(_))), "{right:?}");
}

#[test]
fn hostile_names_and_digests_stay_inside_the_root() {
    if !require(stargaze_bin().is_file(), "the stargaze binary") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let reg = StargazeRegistry::start_at(&root, None, tmp.path());
    let before: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},"layers":[]}"#;
    let cases: Vec<(&str, String)> = vec![
        ("POST", "/v2/../evil/blobs/uploads/".into()),
        ("POST", "/v2/a/../../evil/blobs/uploads/".into()),
        ("POST", "/v2/a/%2e%2e/evil/blobs/uploads/".into()),
        ("POST", "/v2/UPPER/blobs/uploads/".into()),
        ("POST", "/v2/a/blobs/x/blobs/uploads/".into()),
        (
            "POST",
            format!("/v2/ok/blobs/uploads/?digest=sha256:{}", "../".repeat(20)),
        ),
        (
            "POST",
            "/v2/ok/blobs/uploads/?digest=md5:d41d8cd98f00b204e9800998ecf8427e".into(),
        ),
        ("PUT", "/v2/../evil/manifests/latest".into()),
        ("PUT", "/v2/ok/manifests/..%2f..%2fevil".into()),
        ("PUT", "/v2/ok/manifests/sha512:00".into()),
        ("PUT", "/v2/ok/manifests/latest".into()),
        ("GET", "/v2/ok/blobs/sha256:../../../../etc/passwd".into()),
        ("GET", "/v2/ok/blobs/uploads/../../../etc".into()),
        ("PATCH", "/v2/ok/blobs/uploads/..%2f..%2f..%2fx".into()),
        ("GET", "/v2/ok/manifests/../../../../etc/passwd".into()),
    ];
    for (m, path) in &cases {
        let r = send(
            reg.addr,
            m,
            path,
            &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
            body,
        )
        .unwrap();
        assert!(
            (400..500).contains(&r.status),
            "{m} {path} answered {}",
            r.status
        );
    }
    let after: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "nothing new beside the root");
    let repos: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        repos,
        vec![std::ffi::OsString::from("_uploads")],
        "no repository was created"
    );
}
