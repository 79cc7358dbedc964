//! Credentials from docker's config.json (plain `auths`, a `credHelpers` helper and a
//! `credsStore`, each a real `docker-credential-*` program speaking the protocol) against a
//! registry with basic auth, and pull mirrors tried before the origin. A test binary of its
//! own because it puts the helper on PATH.

use base64::Engine as _;
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_fs::remote::auth::{CredentialProvider, DockerConfig};
use stargaze_fs::remote::{copy_image, CopyOptions, ImageLocation, Quiet};
use stargaze_fs::remote::{ClientOptions, Reference, RegistryClient, RemoteError};
use stargaze_suite::fault_proxy::FaultProxy;
use stargaze_suite::sample_estargz;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

fn registry(dir: &Path, user: Option<(&str, &str)>) -> BackgroundRegistry {
    let mut o = RegistryOptions::new(dir.join("root"));
    if let Some((u, p)) = user {
        let f = dir.join("htpasswd");
        std::fs::write(&f, format!("{u}:{}\n", bcrypt::hash(p, 5).unwrap())).unwrap();
        o.htpasswd = Some(f);
    }
    BackgroundRegistry::start(o, "127.0.0.1:0".parse().unwrap()).unwrap()
}

fn push(
    rt: &tokio::runtime::Runtime,
    client: &RegistryClient,
    oci: &Path,
    dst: &str,
) -> Result<(), RemoteError> {
    rt.block_on(copy_image(
        client,
        &ImageLocation::Layout(format!("oci:{}:esgz", oci.display()).parse().unwrap()),
        &ImageLocation::Registry(Reference::parse(dst).unwrap()),
        &CopyOptions::default(),
        &Quiet,
    ))
    .map(|_| ())
}

fn client_from_config(path: &Path) -> RegistryClient {
    let cfg = DockerConfig::load(path).unwrap();
    RegistryClient::new(ClientOptions {
        fallback: vec![Arc::new(cfg) as Arc<dyn CredentialProvider>],
        ..ClientOptions::default()
    })
    .unwrap()
}

#[test]
fn docker_config_auths_helpers_and_store() {
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 10);
    let reg = registry(tmp.path(), Some(("erin", "pa55")));
    let host = reg.addr().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = tmp.path().join("config.json");

    // auths: base64 user:pass.
    let b64 = base64::engine::general_purpose::STANDARD.encode("erin:pa55");
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"http://{host}":{{"auth":"{b64}"}}}}}}"#),
    )
    .unwrap();
    push(
        &rt,
        &client_from_config(&cfg),
        &oci,
        &format!("{host}/c/auths:v1"),
    )
    .unwrap();

    // A helper on PATH that knows this host only (and logs what it was asked).
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = tmp.path().join("helper.log");
    let script = format!(
        "#!/bin/sh\nread server\necho \"$1 $server\" >> {log}\nif [ \"$server\" = \"{host}\" ]; then\n  echo '{{\"ServerURL\":\"{host}\",\"Username\":\"erin\",\"Secret\":\"pa55\"}}'\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
        log = log.display()
    );
    let helper = bin.join("docker-credential-stargazetest");
    std::fs::write(&helper, script).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::env::set_var("PATH", path);

    std::fs::write(
        &cfg,
        format!(r#"{{"credHelpers":{{"{host}":"stargazetest"}}}}"#),
    )
    .unwrap();
    push(
        &rt,
        &client_from_config(&cfg),
        &oci,
        &format!("{host}/c/helper:v1"),
    )
    .unwrap();
    let asked = std::fs::read_to_string(&log).unwrap();
    assert!(asked.contains(&format!("get {host}")), "{asked}");

    std::fs::write(&cfg, r#"{"credsStore":"stargazetest"}"#).unwrap();
    push(
        &rt,
        &client_from_config(&cfg),
        &oci,
        &format!("{host}/c/store:v1"),
    )
    .unwrap();

    // A helper for another host: no credentials for this one, and the push is refused.
    std::fs::write(
        &cfg,
        r#"{"credHelpers":{"elsewhere.example":"stargazetest"}}"#,
    )
    .unwrap();
    let e = push(
        &rt,
        &client_from_config(&cfg),
        &oci,
        &format!("{host}/c/none:v1"),
    )
    .unwrap_err();
    assert!(matches!(e, RemoteError::Auth { .. }), "{e}");
    // A helper that is not installed is a clear error, not a hang.
    std::fs::write(
        &cfg,
        format!(r#"{{"credHelpers":{{"{host}":"notinstalled"}}}}"#),
    )
    .unwrap();
    let e = push(
        &rt,
        &client_from_config(&cfg),
        &oci,
        &format!("{host}/c/missing:v1"),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("docker-credential-notinstalled"),
        "{e}"
    );
}

#[test]
fn mirrors_are_tried_in_order_before_the_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 10);
    let origin = registry(&tmp.path().join("o"), None);
    let empty_mirror = registry(&tmp.path().join("m1"), None);
    let full_mirror = registry(&tmp.path().join("m2"), None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let plain = RegistryClient::new(ClientOptions::default()).unwrap();
    let name = format!("{}/mir/img:v1", origin.addr());
    push(&rt, &plain, &oci, &name).unwrap();
    push(
        &rt,
        &plain,
        &oci,
        &format!("{}/mir/img:v1", full_mirror.addr()),
    )
    .unwrap();
    let (p_origin, p_empty, p_full) = (
        FaultProxy::start(origin.addr()),
        FaultProxy::start(empty_mirror.addr()),
        FaultProxy::start(full_mirror.addr()),
    );
    let reference = Reference::parse(&format!("{}/mir/img:v1", p_origin.addr())).unwrap();
    let with_mirrors = |mirrors: &[&FaultProxy]| {
        let mut o = ClientOptions::default();
        for m in mirrors {
            o.hosts
                .add_mirror(&reference.registry, &format!("http://{}", m.addr()))
                .unwrap();
        }
        RegistryClient::new(o).unwrap()
    };
    // Empty mirror first (404), then the full one answers; the origin is never asked.
    let c = with_mirrors(&[&p_empty, &p_full]);
    let m = rt.block_on(c.manifest(&reference, &[])).unwrap();
    assert!(p_empty.count("/manifests/v1") == 1 && p_full.count("/manifests/v1") == 1);
    assert_eq!(p_origin.count("/manifests/"), 0);
    assert!(
        p_full.seen()[0].target.contains("ns="),
        "mirrors are told the origin namespace"
    );
    // Only the empty mirror: falls back to the origin, same manifest.
    let c = with_mirrors(&[&p_empty]);
    let m2 = rt.block_on(c.manifest(&reference, &[])).unwrap();
    assert_eq!(m.digest, m2.digest);
    assert_eq!(p_origin.count("/manifests/v1"), 1);
    // A dead mirror is skipped too.
    drop(empty_mirror);
    drop(p_empty);
    let mut o = ClientOptions::default();
    o.retry.attempts = 1;
    o.hosts
        .add_mirror(&reference.registry, "http://127.0.0.1:9")
        .unwrap();
    let c = RegistryClient::new(o).unwrap();
    assert_eq!(
        rt.block_on(c.manifest(&reference, &[])).unwrap().digest,
        m.digest
    );
}

#[test]
fn secrets_never_reach_logs_or_errors() {
    use stargaze_suite::servers::StargazeRegistry;
    use stargaze_suite::{require, stargaze_bin};
    if !require(stargaze_bin().is_file(), "the stargaze binary") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 5);
    let secret = "Sup3r-Secret-Pw";
    let reg = StargazeRegistry::start(Some(("frank", secret)));
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("frank:{secret}"));
    let cfg = tmp.path().join("config.json");
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let copy = |dst: &str| {
        std::process::Command::new(stargaze_bin())
            .args(["--log", "trace", "copy", "--docker-config"])
            .arg(&cfg)
            .arg(format!("oci:{}:esgz", oci.display()))
            .arg(dst)
            .output()
            .unwrap()
    };
    let ok = copy(&format!("docker://{}/s/img:v1", reg.host()));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A failing run too: wrong password for another registry user.
    let wrong = format!("frank:{secret}-but-wrong");
    let b64w = base64::engine::general_purpose::STANDARD.encode(&wrong);
    std::fs::write(
        &cfg,
        format!(r#"{{"auths":{{"{}":{{"auth":"{b64w}"}}}}}}"#, reg.host()),
    )
    .unwrap();
    let bad = copy(&format!("docker://{}/s/img:v2", reg.host()));
    assert!(!bad.status.success());
    for out in [&ok, &bad] {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.len() > 100, "trace logging produced output");
        for needle in [secret, b64.as_str(), b64w.as_str()] {
            assert!(!text.contains(needle), "a secret reached the output");
        }
    }
}

#[test]
fn config_file_mirrors_reach_the_cli() {
    use stargaze_suite::{require, run, stargaze_bin};
    if !require(stargaze_bin().is_file(), "the stargaze binary") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 5);
    let mirror = registry(&tmp.path().join("m"), None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let plain = RegistryClient::new(ClientOptions::default()).unwrap();
    push(&rt, &plain, &oci, &format!("{}/cfg/img:v1", mirror.addr())).unwrap();
    // The origin does not exist; only the mirror from the config file can answer.
    let cfg = tmp.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[registry.\"origin.invalid:5000\"]\n  mirrors = [\"{}\"]\n",
            mirror.addr()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let summary = run(std::process::Command::new(stargaze_bin())
        .args(["copy", "--config"])
        .arg(&cfg)
        .arg("docker://origin.invalid:5000/cfg/img:v1")
        .arg(format!("oci:{}:v1", out.display())));
    assert!(summary.contains("copied"), "{summary}");
    // A bad config file is a clear error.
    std::fs::write(
        &cfg,
        "[registry.\"x\"]\n  mirrors = [\"http://no-scheme-here\"]\n",
    )
    .unwrap();
    let bad = std::process::Command::new(stargaze_bin())
        .args(["copy", "--config"])
        .arg(&cfg)
        .arg("docker://origin.invalid:5000/cfg/img:v1")
        .arg(format!("oci:{}:v2", out.display()))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("host[:port]"));
}
