//! The built-in registry against the OCI distribution-spec (v1.1) conformance workflows,
//! re-expressed as our own checks: pull, push, content discovery (tags, referrers with and
//! without filters) and content management (deletes on and off), then `registry gc` (dry
//! run and real run, grace period) and `stargaze copy --referrers` between registries and
//! OCI layouts, and to a registry without the referrers API (distribution 2.8: the fallback
//! tag). Everything runs on loopback against `stargaze registry serve`.

use stargaze_fs::Digest;
use stargaze_suite::http::{send, Response};
use stargaze_suite::servers::StargazeRegistry;
use stargaze_suite::{have, require, run, stargaze_bin};
use std::net::SocketAddr;
use std::process::Command;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY: &str = "application/vnd.oci.empty.v1+json";

fn ready() -> bool {
    require(stargaze_bin().is_file(), "the stargaze binary")
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)))
}

fn error_code(r: &Response) -> String {
    json(r)["errors"][0]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn get(addr: SocketAddr, path: &str) -> Response {
    send(addr, "GET", path, &[], b"").unwrap()
}

/// Pushes a blob monolithically; returns its descriptor parts.
fn push_blob(addr: SocketAddr, repo: &str, data: &[u8]) -> (Digest, u64) {
    let d = Digest::of(data);
    let r = send(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    )
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/{repo}/blobs/{d}").as_str())
    );
    (d, data.len() as u64)
}

fn desc(media_type: &str, d: &Digest, size: u64) -> serde_json::Value {
    serde_json::json!({"mediaType": media_type, "digest": d.to_string(), "size": size})
}

/// An image manifest: config, layers, and optionally subject, artifactType, annotations.
fn manifest(
    config: serde_json::Value,
    layers: &[serde_json::Value],
    subject: Option<serde_json::Value>,
    artifact_type: Option<&str>,
    annotations: Option<serde_json::Value>,
) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config,
        "layers": layers,
    });
    if let Some(s) = subject {
        m["subject"] = s;
    }
    if let Some(a) = artifact_type {
        m["artifactType"] = serde_json::Value::String(a.into());
    }
    if let Some(a) = annotations {
        m["annotations"] = a;
    }
    serde_json::to_vec(&m).unwrap()
}

fn put_manifest(addr: SocketAddr, repo: &str, reference: &str, body: &[u8]) -> Response {
    send(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", MANIFEST)],
        body,
    )
    .unwrap()
}

/// A small image in `repo` tagged `tag`: (manifest digest, manifest bytes, config, layer).
fn push_image(
    addr: SocketAddr,
    repo: &str,
    tag: &str,
    seed: &str,
) -> (Digest, Vec<u8>, Digest, Digest) {
    let (cfg, cfg_size) = push_blob(
        addr,
        repo,
        format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}").as_bytes(),
    );
    let (layer, layer_size) = push_blob(addr, repo, format!("layer bytes of {seed}").as_bytes());
    let body = manifest(
        desc("application/vnd.oci.image.config.v1+json", &cfg, cfg_size),
        &[desc(
            "application/vnd.oci.image.layer.v1.tar",
            &layer,
            layer_size,
        )],
        None,
        None,
        None,
    );
    let r = put_manifest(addr, repo, tag, &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    (Digest::of(&body), body, cfg, layer)
}

/// Pushes an artifact manifest referring to `subject` by digest; checks `OCI-Subject`.
fn push_referrer(
    addr: SocketAddr,
    repo: &str,
    subject: (&Digest, u64),
    artifact_type: Option<&str>,
    payload: &str,
) -> Digest {
    let (empty, _) = push_blob(addr, repo, b"{}");
    let (layer, size) = push_blob(addr, repo, payload.as_bytes());
    let body = manifest(
        desc(EMPTY, &empty, 2),
        &[desc("application/octet-stream", &layer, size)],
        Some(desc(MANIFEST, subject.0, subject.1)),
        artifact_type,
        Some(serde_json::json!({"org.example.payload": payload})),
    );
    let d = Digest::of(&body);
    let r = put_manifest(addr, repo, &d.to_string(), &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("oci-subject"),
        Some(subject.0.to_string().as_str())
    );
    d
}

fn referrers(addr: SocketAddr, repo: &str, subject: &Digest, query: &str) -> Response {
    get(addr, &format!("/v2/{repo}/referrers/{subject}{query}"))
}

fn referrer_digests(r: &Response) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = json(r);
    assert_eq!(v["mediaType"], INDEX);
    assert_eq!(v["schemaVersion"], 2);
    let mut out: Vec<String> = v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn sorted(v: &[&Digest]) -> Vec<String> {
    let mut out: Vec<String> = v.iter().map(|d| d.to_string()).collect();
    out.sort();
    out
}

fn tags(addr: SocketAddr, repo: &str) -> serde_json::Value {
    let r = get(addr, &format!("/v2/{repo}/tags/list"));
    assert_eq!(r.status, 200);
    json(&r)["tags"].clone()
}

#[test]
fn pull_and_push_workflows() {
    if !ready() {
        return;
    }
    let reg = StargazeRegistry::start(None);
    let a = reg.addr;
    assert_eq!(get(a, "/v2/").status, 200);

    // Push: monolithic POST, session POST + PUT, chunked PATCH with status, mount.
    let (cfg, cfg_size) = push_blob(
        a,
        "conf/app",
        b"{\"architecture\":\"amd64\",\"os\":\"linux\"}",
    );
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let d = Digest::of(&data);
    let r = send(a, "POST", "/v2/conf/app/blobs/uploads/", &[], b"").unwrap();
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_string();
    let r = send(
        a,
        "PATCH",
        &loc,
        &[("Content-Range", "0-49999")],
        &data[..50_000],
    )
    .unwrap();
    assert_eq!((r.status, r.header("range")), (202, Some("0-49999")));
    let r = send(a, "GET", &loc, &[], b"").unwrap();
    assert_eq!((r.status, r.header("range")), (204, Some("0-49999")));
    let r = send(a, "PUT", &format!("{loc}?digest={d}"), &[], &data[50_000..]).unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(d.to_string().as_str())
    );
    let r = send(
        a,
        "POST",
        &format!("/v2/conf/mounted/blobs/uploads/?mount={d}&from=conf/app"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 201, "cross-repository mount");
    // A digest that does not match the upload, or is malformed, is 400 DIGEST_INVALID.
    let r = send(
        a,
        "POST",
        &format!(
            "/v2/conf/app/blobs/uploads/?digest=sha256:{}",
            "0".repeat(64)
        ),
        &[],
        b"xyz",
    )
    .unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (400, "DIGEST_INVALID"));
    let r = send(
        a,
        "POST",
        "/v2/conf/app/blobs/uploads/?digest=sha256:nothex",
        &[],
        b"xyz",
    )
    .unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (400, "DIGEST_INVALID"));

    // Manifests: PUT by tag, invalid ones refused with the spec's 400s.
    let body = manifest(
        desc("application/vnd.oci.image.config.v1+json", &cfg, cfg_size),
        &[desc("application/vnd.oci.image.layer.v1.tar", &d, 100_000)],
        None,
        None,
        None,
    );
    let md = Digest::of(&body);
    let r = put_manifest(a, "conf/app", "v1", &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("location"),
        Some(format!("/v2/conf/app/manifests/{md}").as_str())
    );
    assert_eq!(r.header("oci-subject"), None, "no subject, no OCI-Subject");
    let missing = manifest(
        desc(
            "application/vnd.oci.image.config.v1+json",
            &Digest::of(b"nope"),
            4,
        ),
        &[],
        None,
        None,
        None,
    );
    let r = put_manifest(a, "conf/app", "v2", &missing);
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "MANIFEST_BLOB_UNKNOWN")
    );
    let r = put_manifest(a, "conf/app", "v2", b"{\"schemaVersion\": 1}");
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "MANIFEST_INVALID")
    );
    let r = put_manifest(a, "conf/app", &Digest::of(b"other").to_string(), &body);
    assert_eq!((r.status, error_code(&r).as_str()), (400, "DIGEST_INVALID"));

    // Pull: by tag and digest, GET and HEAD, blobs GET and HEAD.
    for reference in ["v1".to_string(), md.to_string()] {
        let path = format!("/v2/conf/app/manifests/{reference}");
        let r = send(a, "GET", &path, &[("Accept", MANIFEST)], b"").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body);
        assert_eq!(r.header("content-type"), Some(MANIFEST));
        assert_eq!(
            r.header("docker-content-digest"),
            Some(md.to_string().as_str())
        );
        let h = send(a, "HEAD", &path, &[], b"").unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(
            h.header("content-length"),
            Some(body.len().to_string().as_str())
        );
    }
    let r = get(a, &format!("/v2/conf/mounted/blobs/{d}"));
    assert_eq!((r.status, r.body.as_slice()), (200, data.as_slice()));
    let h = send(a, "HEAD", &format!("/v2/conf/app/blobs/{d}"), &[], b"").unwrap();
    assert_eq!(h.header("content-length"), Some("100000"));
    let r = get(a, &format!("/v2/conf/app/blobs/{}", Digest::of(b"absent")));
    assert_eq!((r.status, error_code(&r).as_str()), (404, "BLOB_UNKNOWN"));

    // Unknown manifests are 404 MANIFEST_UNKNOWN, whatever the reference looks like.
    for reference in [
        "v9".to_string(),
        Digest::of(b"absent").to_string(),
        "-not-a-tag".to_string(),
        "sha256:zz".to_string(),
        "sha512:00".to_string(),
        "a".repeat(200),
    ] {
        for m in ["GET", "HEAD"] {
            let r = send(
                a,
                m,
                &format!("/v2/conf/app/manifests/{reference}"),
                &[],
                b"",
            )
            .unwrap();
            assert_eq!(r.status, 404, "{m} {reference}");
            if m == "GET" {
                assert_eq!(error_code(&r), "MANIFEST_UNKNOWN", "{reference}");
            }
        }
    }
    let r = get(a, "/v2/conf/nothing/manifests/v1");
    assert_eq!(r.status, 404);

    // Content discovery: tags with pagination.
    for t in ["v3", "v2"] {
        assert_eq!(put_manifest(a, "conf/app", t, &body).status, 201);
    }
    assert_eq!(tags(a, "conf/app"), serde_json::json!(["v1", "v2", "v3"]));
    let r = get(a, "/v2/conf/app/tags/list?n=1");
    assert_eq!(json(&r)["tags"], serde_json::json!(["v1"]));
    assert!(
        r.header("link").unwrap().contains("last=v1"),
        "{:?}",
        r.headers
    );
    let r = get(a, "/v2/conf/app/tags/list?n=5&last=v1");
    assert_eq!(json(&r)["tags"], serde_json::json!(["v2", "v3"]));

    // Content management is off by default: 405 UNSUPPORTED, nothing deleted.
    for path in [
        "/v2/conf/app/manifests/v1".to_string(),
        format!("/v2/conf/app/manifests/{md}"),
        format!("/v2/conf/app/blobs/{d}"),
    ] {
        let r = send(a, "DELETE", &path, &[], b"").unwrap();
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (405, "UNSUPPORTED"),
            "{path}"
        );
    }
    assert_eq!(get(a, "/v2/conf/app/manifests/v1").status, 200);
    assert_eq!(get(a, &format!("/v2/conf/app/blobs/{d}")).status, 200);
}

#[test]
fn referrers_with_and_without_filters() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let reg = StargazeRegistry::start_at(&root, None, tmp.path());
    let a = reg.addr;
    let repo = "disc/app";
    let (subject, body, _, _) = push_image(a, repo, "v1", "subject");
    let s = (&subject, body.len() as u64);
    // Nothing refers to it yet: an empty index, not a 404.
    assert!(referrer_digests(&referrers(a, repo, &subject, "")).is_empty());

    let sig1 = push_referrer(a, repo, s, Some("application/vnd.example.sig"), "sig one");
    let sig2 = push_referrer(a, repo, s, Some("application/vnd.example.sig"), "sig two");
    let sbom = push_referrer(
        a,
        repo,
        s,
        Some("application/vnd.example.sbom+json"),
        "sbom",
    );
    // An image manifest without artifactType is listed with its config's media type.
    let plain = push_referrer(a, repo, s, None, "plain");
    // A referrer pushed before its subject exists is accepted and listed.
    let later = Digest::of(b"a manifest that is pushed later");
    let early = push_referrer(
        a,
        repo,
        (&later, 100),
        Some("application/vnd.example.sig"),
        "early",
    );
    assert_eq!(
        referrer_digests(&referrers(a, repo, &later, "")),
        sorted(&[&early])
    );

    let r = referrers(a, repo, &subject, "");
    assert_eq!(r.header("content-type"), Some(INDEX));
    assert_eq!(r.header("oci-filters-applied"), None);
    assert_eq!(referrer_digests(&r), sorted(&[&sig1, &sig2, &sbom, &plain]));
    let v = json(&r);
    let entry = |d: &Digest| {
        v["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["digest"] == d.to_string())
            .unwrap()
            .clone()
    };
    let e = entry(&sbom);
    assert_eq!(e["mediaType"], MANIFEST);
    assert_eq!(e["artifactType"], "application/vnd.example.sbom+json");
    assert_eq!(e["annotations"]["org.example.payload"], "sbom");
    let sbom_body = get(a, &format!("/v2/{repo}/manifests/{sbom}")).body;
    assert_eq!(e["size"], sbom_body.len());
    assert_eq!(entry(&plain)["artifactType"], EMPTY);

    // Filtered: only the signatures, and the header says a filter was applied.
    let r = referrers(
        a,
        repo,
        &subject,
        "?artifactType=application/vnd.example.sig",
    );
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    assert_eq!(referrer_digests(&r), sorted(&[&sig1, &sig2]));
    let r = referrers(
        a,
        repo,
        &subject,
        "?artifactType=application%2Fvnd.example.sbom%2Bjson",
    );
    assert_eq!(referrer_digests(&r), sorted(&[&sbom]));
    let r = referrers(a, repo, &subject, "?artifactType=application/none");
    assert_eq!(r.header("oci-filters-applied"), Some("artifactType"));
    assert!(referrer_digests(&r).is_empty());

    // Unknown subject or repository: empty index. A malformed digest: 400.
    assert!(referrer_digests(&referrers(a, repo, &Digest::of(b"x"), "")).is_empty());
    assert!(referrer_digests(&referrers(a, "disc/none", &subject, "")).is_empty());
    for bad in [
        "sha256:zz",
        "latest",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
    ] {
        let r = get(a, &format!("/v2/{repo}/referrers/{bad}"));
        assert_eq!(
            (r.status, error_code(&r).as_str()),
            (400, "DIGEST_INVALID"),
            "{bad}"
        );
    }

    // After a restart the index is rebuilt from the store: same answers.
    drop(reg);
    let reg = StargazeRegistry::start_at(&root, None, tmp.path());
    let r = referrers(
        reg.addr,
        repo,
        &subject,
        "?artifactType=application/vnd.example.sig",
    );
    assert_eq!(referrer_digests(&r), sorted(&[&sig1, &sig2]));
    assert_eq!(
        referrer_digests(&referrers(reg.addr, repo, &subject, "")).len(),
        4
    );
}

#[test]
fn deletes_of_manifests_tags_and_blobs() {
    if !ready() {
        return;
    }
    let reg = StargazeRegistry::start_with(None, &["--enable-delete"]);
    let a = reg.addr;
    let repo = "mgmt/app";
    let (md, body, cfg, layer) = push_image(a, repo, "v1", "one");
    assert_eq!(put_manifest(a, repo, "v2", &body).status, 201);
    let sig = push_referrer(a, repo, (&md, body.len() as u64), Some("x/sig"), "sig");

    // Tag delete: the tag goes, the manifest stays (by digest, and under its other tag).
    let r = send(a, "DELETE", &format!("/v2/{repo}/manifests/v1"), &[], b"").unwrap();
    assert_eq!(r.status, 202);
    assert_eq!(tags(a, repo), serde_json::json!(["v2"]));
    assert_eq!(get(a, &format!("/v2/{repo}/manifests/v1")).status, 404);
    assert_eq!(get(a, &format!("/v2/{repo}/manifests/{md}")).status, 200);
    let r = send(a, "DELETE", &format!("/v2/{repo}/manifests/v1"), &[], b"").unwrap();
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    // The last tag of a manifest: still pullable by digest.
    assert_eq!(
        send(a, "DELETE", &format!("/v2/{repo}/manifests/v2"), &[], b"")
            .unwrap()
            .status,
        202
    );
    assert_eq!(tags(a, repo), serde_json::json!([]));
    assert_eq!(get(a, &format!("/v2/{repo}/manifests/{md}")).status, 200);

    // Referrer delete: it leaves the referrers index.
    assert_eq!(
        referrer_digests(&referrers(a, repo, &md, "")),
        sorted(&[&sig])
    );
    let r = send(
        a,
        "DELETE",
        &format!("/v2/{repo}/manifests/{sig}"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 202);
    assert!(referrer_digests(&referrers(a, repo, &md, "")).is_empty());
    assert_eq!(get(a, &format!("/v2/{repo}/manifests/{sig}")).status, 404);

    // Manifest delete by digest: gone, its tags with it.
    assert_eq!(put_manifest(a, repo, "v3", &body).status, 201);
    let r = send(a, "DELETE", &format!("/v2/{repo}/manifests/{md}"), &[], b"").unwrap();
    assert_eq!(r.status, 202);
    let r = get(a, &format!("/v2/{repo}/manifests/{md}"));
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    assert_eq!(get(a, &format!("/v2/{repo}/manifests/v3")).status, 404);
    assert_eq!(tags(a, repo), serde_json::json!([]));
    let r = send(a, "DELETE", &format!("/v2/{repo}/manifests/{md}"), &[], b"").unwrap();
    assert_eq!(r.status, 404, "deleting twice");

    // Blob delete.
    for b in [&cfg, &layer] {
        let path = format!("/v2/{repo}/blobs/{b}");
        assert_eq!(send(a, "DELETE", &path, &[], b"").unwrap().status, 202);
        let r = get(a, &path);
        assert_eq!((r.status, error_code(&r).as_str()), (404, "BLOB_UNKNOWN"));
        let r = send(a, "DELETE", &path, &[], b"").unwrap();
        assert_eq!((r.status, error_code(&r).as_str()), (404, "BLOB_UNKNOWN"));
    }
    let r = send(
        a,
        "DELETE",
        &format!("/v2/{repo}/blobs/sha256:zz"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!((r.status, error_code(&r).as_str()), (400, "DIGEST_INVALID"));
    // A listed manifest is not deleted through /blobs/.
    let (md2, _, _, _) = push_image(a, repo, "v4", "two");
    let r = send(a, "DELETE", &format!("/v2/{repo}/blobs/{md2}"), &[], b"").unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(get(a, &format!("/v2/{repo}/manifests/v4")).status, 200);
    let r = send(a, "DELETE", "/v2/mgmt/none/manifests/v1", &[], b"").unwrap();
    assert_eq!(r.status, 404);
}

fn gc(root: &std::path::Path, args: &[&str]) -> String {
    run(Command::new(stargaze_bin())
        .args(["registry", "gc", "--root"])
        .arg(root)
        .args(args))
}

fn blob_file(root: &std::path::Path, repo: &str, d: &Digest) -> std::path::PathBuf {
    root.join(repo).join("blobs/sha256").join(d.hex())
}

#[test]
fn gc_dry_run_real_run_and_grace_period() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let reg = StargazeRegistry::start_at_with(&root, None, tmp.path(), &["--enable-delete"]);
    let a = reg.addr;
    let (keep_md, _, keep_cfg, keep_layer) = push_image(a, "gc/app", "keep", "kept");
    let (drop_md, _, drop_cfg, drop_layer) = push_image(a, "gc/app", "drop", "dropped");
    let (other_md, _, _, _) = push_image(a, "gc/other", "v1", "other");
    // An untagged manifest is still a manifest: kept with its blobs.
    assert_eq!(
        send(a, "DELETE", "/v2/gc/other/manifests/v1", &[], b"")
            .unwrap()
            .status,
        202
    );

    // Everything is referenced: nothing to free, even with no grace.
    let out = gc(&root, &["--grace-minutes", "0"]);
    assert!(out.contains("dry run"), "{out}");
    assert!(out.contains(" 0 blobs would remove"), "{out}");

    // The manifest goes; its blobs are now garbage, but a dry run only reports them.
    let r = send(
        a,
        "DELETE",
        &format!("/v2/gc/app/manifests/{drop_md}"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 202);
    let out = gc(&root, &["--grace-minutes", "0"]);
    for d in [&drop_cfg, &drop_layer] {
        assert!(out.contains(&format!("would remove gc/app@{d}")), "{out}");
        assert!(
            blob_file(&root, "gc/app", d).is_file(),
            "dry run removed {d}"
        );
    }
    assert!(out.contains(" 2 blobs would remove"), "{out}");

    // With the default grace period these fresh blobs are kept, and the output says why.
    let out = gc(&root, &["--delete"]);
    assert!(
        out.contains("2 unreferenced kept as younger than 60 min"),
        "{out}"
    );
    assert!(out.contains(" 0 blobs removed"), "{out}");
    assert!(blob_file(&root, "gc/app", &drop_layer).is_file());

    // Real run without grace: the garbage goes, everything referenced stays and is served.
    let out = gc(&root, &["--delete", "--grace-minutes", "0"]);
    assert!(out.contains(" 2 blobs removed"), "{out}");
    for d in [&drop_cfg, &drop_layer] {
        assert!(!blob_file(&root, "gc/app", d).exists(), "{d} survived");
    }
    for d in [&keep_md, &keep_cfg, &keep_layer] {
        assert!(blob_file(&root, "gc/app", d).is_file(), "{d} was removed");
    }
    assert_eq!(get(a, "/v2/gc/app/manifests/keep").status, 200);
    assert_eq!(
        get(a, &format!("/v2/gc/app/blobs/{keep_layer}")).status,
        200
    );
    assert_eq!(
        get(a, &format!("/v2/gc/other/manifests/{other_md}")).status,
        200
    );

    // A blob pushed again becomes young again: a manifest may be on its way.
    let (young, _) = push_blob(a, "gc/app", b"layer bytes of dropped");
    assert_eq!(young, drop_layer);
    let out = gc(&root, &["--delete"]);
    assert!(out.contains("1 unreferenced kept"), "{out}");
    assert!(blob_file(&root, "gc/app", &young).is_file());
    let out = gc(&root, &["--delete", "--grace-minutes", "0"]);
    assert!(out.contains(" 1 blobs removed"), "{out}");
    assert!(!blob_file(&root, "gc/app", &young).exists());
    let missing = Command::new(stargaze_bin())
        .args(["registry", "gc", "--root"])
        .arg(tmp.path().join("missing"))
        .output()
        .unwrap();
    assert!(!missing.status.success(), "gc of a missing root must fail");
}

/// An image with a signature and an SBOM, and a signature of the SBOM, in `repo`.
fn image_with_referrers(a: SocketAddr, repo: &str) -> (Digest, Digest, Digest, Digest) {
    let (md, body, _, _) = push_image(a, repo, "v1", "app");
    let s = (&md, body.len() as u64);
    let sig = push_referrer(a, repo, s, Some("application/vnd.example.sig"), "image sig");
    let sbom = push_referrer(a, repo, s, Some("application/vnd.example.sbom"), "sbom");
    let sbom_size = get(a, &format!("/v2/{repo}/manifests/{sbom}")).body.len() as u64;
    let sbom_sig = push_referrer(
        a,
        repo,
        (&sbom, sbom_size),
        Some("application/vnd.example.sig"),
        "sbom sig",
    );
    (md, sig, sbom, sbom_sig)
}

fn copy(args: &[&str]) -> String {
    run(Command::new(stargaze_bin()).arg("copy").args(args))
}

#[test]
fn copy_with_referrers_between_registries_and_layouts() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = StargazeRegistry::start(None);
    let dst = StargazeRegistry::start(None);
    let (md, sig, sbom, sbom_sig) = image_with_referrers(src.addr, "lab/app");
    let from = format!("docker://{}/lab/app:v1", src.host());
    let at = |name: &str| format!("docker://{}/{name}:v1", dst.host());

    // Without --referrers: the image only.
    copy(&[&from, &at("plain/app")]);
    assert!(referrer_digests(&referrers(dst.addr, "plain/app", &md, "")).is_empty());

    // Registry → registry, all levels.
    let out = copy(&["--referrers", &from, &at("full/app")]);
    assert!(out.contains("3 referrer(s)"), "{out}");
    assert_eq!(
        referrer_digests(&referrers(dst.addr, "full/app", &md, "")),
        sorted(&[&sig, &sbom])
    );
    assert_eq!(
        referrer_digests(&referrers(dst.addr, "full/app", &sbom, "")),
        sorted(&[&sbom_sig])
    );
    let r = get(dst.addr, &format!("/v2/full/app/manifests/{sbom_sig}"));
    assert_eq!(r.status, 200, "the referrer's manifest and blobs are there");

    // Depth 1: the image's referrers, not the SBOM's signature.
    let out = copy(&[
        "--referrers",
        "--referrers-depth",
        "1",
        &from,
        &at("one/app"),
    ]);
    assert!(out.contains("2 referrer(s)"), "{out}");
    assert!(referrer_digests(&referrers(dst.addr, "one/app", &sbom, "")).is_empty());

    // Registry → layout → registry keeps them all.
    let layout = tmp.path().join("layout");
    let out = copy(&[
        "--referrers",
        &from,
        &format!("oci:{}:v1", layout.display()),
    ]);
    assert!(out.contains("3 referrer(s)"), "{out}");
    let out = copy(&[
        "--referrers",
        &format!("oci:{}:v1", layout.display()),
        &at("back/app"),
    ]);
    assert!(out.contains("3 referrer(s)"), "{out}");
    assert_eq!(
        referrer_digests(&referrers(dst.addr, "back/app", &md, "")),
        sorted(&[&sig, &sbom])
    );
    assert_eq!(
        referrer_digests(&referrers(dst.addr, "back/app", &sbom, "")),
        sorted(&[&sbom_sig])
    );
    // A second copy finds everything there.
    let again = copy(&["--referrers", &from, &at("full/app")]);
    assert!(again.contains(" 0 blobs"), "{again}");
}

#[test]
fn gc_waits_while_a_writer_holds_the_root_lock() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let reg = StargazeRegistry::start_at(&root, None, tmp.path());
    let (garbage, _) = push_blob(reg.addr, "lock/app", b"nobody needs this");
    // What the server holds from a manifest check to its index.json write.
    let writer = std::fs::File::open(&root).unwrap();
    writer.lock_shared().unwrap();
    let mut child = Command::new(stargaze_bin())
        .args([
            "registry",
            "gc",
            "--delete",
            "--grace-minutes",
            "0",
            "--root",
        ])
        .arg(&root)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "gc went on while a writer held the lock"
    );
    assert!(blob_file(&root, "lock/app", &garbage).is_file());
    drop(writer);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains(" 1 blobs removed"), "{out}");
    assert!(!blob_file(&root, "lock/app", &garbage).exists());
}

#[test]
fn copy_referrers_through_the_fallback_tag_of_a_registry_without_the_api() {
    if !ready() {
        return;
    }
    use stargaze_suite::fault_proxy::{Fault, FaultProxy, Rule};
    let src = StargazeRegistry::start(None);
    let dst = StargazeRegistry::start(None);
    let (md, body, _, _) = push_image(src.addr, "old/app", "v1", "old");
    let sig = push_referrer(
        src.addr,
        "old/app",
        (&md, body.len() as u64),
        Some("application/vnd.example.sig"),
        "sig",
    );
    let sig_size = get(src.addr, &format!("/v2/old/app/manifests/{sig}"))
        .body
        .len() as u64;
    // What a client writes to a registry without the referrers API: an index under the tag.
    let mut entry = desc(MANIFEST, &sig, sig_size);
    entry["artifactType"] = "application/vnd.example.sig".into();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [entry],
    }))
    .unwrap();
    let r = send(
        src.addr,
        "PUT",
        &format!("/v2/old/app/manifests/sha256-{}", md.hex()),
        &[("Content-Type", INDEX)],
        &index,
    )
    .unwrap();
    assert_eq!(r.status, 201);
    // In front of it, a proxy that answers the referrers API with 404, as such registries do.
    let proxy = FaultProxy::start(src.addr);
    proxy.add(Rule::new("/referrers/", usize::MAX, Fault::Status(404)));
    let out = copy(&[
        "--referrers",
        &format!("docker://{}/old/app:v1", proxy.addr()),
        &format!("docker://{}/new/app:v1", dst.host()),
    ]);
    assert!(out.contains("1 referrer(s)"), "{out}");
    assert!(proxy.count("/referrers/") >= 1, "the API was tried first");
    assert!(proxy.count(&format!("/manifests/sha256-{}", md.hex())) >= 1);
    assert_eq!(
        referrer_digests(&referrers(dst.addr, "new/app", &md, "")),
        sorted(&[&sig])
    );
}

#[test]
fn copy_referrers_to_a_registry_without_the_api_writes_the_fallback_tag() {
    if !ready() || !require(have("docker-registry"), "docker-registry") {
        return;
    }
    use stargaze_suite::servers::{DockerRegistry, RegistryAuth};
    let src = StargazeRegistry::start(None);
    let back = StargazeRegistry::start(None);
    let (md, body, _, _) = push_image(src.addr, "app", "v1", "fb");
    let sig = push_referrer(
        src.addr,
        "app",
        (&md, body.len() as u64),
        Some("application/vnd.example.sig"),
        "sig",
    );
    // distribution 2.8 hides OCI manifests from clients that do not accept their type.
    let get_index =
        |a: SocketAddr, path: &str| send(a, "GET", path, &[("Accept", INDEX)], b"").unwrap();
    // distribution 2.8: no referrers API, no OCI-Subject header.
    let dist = DockerRegistry::start(RegistryAuth::None);
    let out = copy(&[
        "--referrers",
        &format!("docker://{}/app:v1", src.host()),
        &format!("docker://{}/app:v1", dist.host()),
    ]);
    assert!(out.contains("1 referrer(s)"), "{out}");
    let tag = get_index(dist.addr, &format!("/v2/app/manifests/sha256-{}", md.hex()));
    assert_eq!(tag.status, 200, "the fallback tag is there");
    let listed = json(&tag);
    assert_eq!(listed["manifests"][0]["digest"], sig.to_string().as_str());
    assert_eq!(
        listed["manifests"][0]["artifactType"],
        "application/vnd.example.sig"
    );
    // A second copy does not list it twice, and the referrer comes back out through the tag.
    copy(&[
        "--referrers",
        &format!("docker://{}/app:v1", src.host()),
        &format!("docker://{}/app:v1", dist.host()),
    ]);
    let tag = get_index(dist.addr, &format!("/v2/app/manifests/sha256-{}", md.hex()));
    assert_eq!(json(&tag)["manifests"].as_array().unwrap().len(), 1);
    let out = copy(&[
        "--referrers",
        &format!("docker://{}/app:v1", dist.host()),
        &format!("docker://{}/app:v1", back.host()),
    ]);
    assert!(out.contains("1 referrer(s)"), "{out}");
    assert_eq!(
        referrer_digests(&referrers(back.addr, "app", &md, "")),
        sorted(&[&sig])
    );
}
