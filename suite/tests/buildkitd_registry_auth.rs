//! Registry credentials that exist only on the client's side, through `stargaze buildkitd`
//! with the stargz snapshotter: a registry with token auth (docker-registry and a token
//! issuer) behind a proxy that counts the bytes it passes, an eStargz base there, and a
//! client whose session answers `Auth.Credentials` from its own docker config. The build
//! resolves the base, mounts it lazily (a small part of its layer fetched, counted at the
//! proxy) and pushes the result with the session's credentials; the same build without
//! them fails naming the registry's refusal; two builds at once with different credentials
//! for the same registry each get their own answer. The daemon has no credentials of its
//! own. Needs root, runc, umoci, busybox-static, docker-registry and openssl.

use stargaze_fs::remote::auth::{Credentials, DockerConfig, StaticCredentials};
use stargaze_fs::remote::{ClientOptions, Reference, RegistryClient};
use stargaze_suite::buildkit_client::{
    assert_serving, build_prerequisites, build_quietly, client_runtime, Buildkitd,
};
use stargaze_suite::fault_proxy::FaultProxy;
use stargaze_suite::servers::{DockerRegistry, RegistryAuth, TokenIssuer};
use stargaze_suite::{busybox, have, require, run, stargaze_bin};
use stargaze_worker::buildkitd::client::build::BuildOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const USER: &str = "builder";
const PASS: &str = "client-side-secret";

fn ready() -> bool {
    build_prerequisites()
        && require(have("docker-registry"), "docker-registry")
        && require(have("openssl"), "openssl")
}

/// A docker config with `creds` for `host` (none: an empty config).
fn docker_config(dir: &Path, host: &str, creds: Option<(&str, &str)>) -> PathBuf {
    use base64::Engine as _;
    std::fs::create_dir_all(dir).unwrap();
    let auths = match creds {
        Some((u, p)) => {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!(r#"{{"{host}": {{"auth": "{b}"}}}}"#)
        }
        None => "{}".into(),
    };
    let path = dir.join("config.json");
    std::fs::write(&path, format!(r#"{{"auths": {auths}}}"#)).unwrap();
    path
}

/// busybox with 16 MiB of data beside it, as eStargz, pushed to `host` as `base/big:esgz`
/// with the client's credentials. Returns the layer sizes of the pushed image.
fn push_base(work: &Path, host: &str, config: &Path) -> Vec<u64> {
    let oci = work.join("oci");
    let data = work.join("data");
    std::fs::create_dir_all(data.join("data")).unwrap();
    for i in 0..16 {
        let bytes = stargaze_fs::image::sample::sample_bytes(11 + i, 1 << 20, 255);
        std::fs::write(data.join(format!("data/part{i:02}")), &bytes).unwrap();
    }
    let tar = work.join("data.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&data)
        .arg("-cf")
        .arg(&tar)
        .arg("data"));
    busybox::write_image_with(&oci, "big", work, &[tar]);
    run(Command::new(stargaze_bin())
        .arg("convert")
        .arg(format!("oci:{}:big", oci.display()))
        .arg(format!("oci:{}:big-esgz", oci.display())));
    run(Command::new(stargaze_bin())
        .env("DOCKER_CONFIG", config.parent().unwrap())
        .arg("copy")
        .arg(format!("oci:{}:big-esgz", oci.display()))
        .arg(format!("docker://{host}/base/big:esgz")));
    let l = stargaze_fs::image::OciLayout::open(&oci).unwrap();
    let (_, m) = l.resolve(Some("big-esgz")).unwrap();
    m.layers().iter().map(|d| d.size()).collect()
}

fn dockerfile_dir(work: &Path, name: &str, host: &str, run_line: &str) -> PathBuf {
    let ctx = work.join(name);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {host}/base/big:esgz\nRUN {run_line}\n"),
    )
    .unwrap();
    ctx
}

fn options(ctx: &Path, config: Option<&Path>, push_to: Option<&str>) -> BuildOptions {
    let mut opts = BuildOptions::dockerfile(ctx);
    opts.attrs.insert("no-cache".into(), String::new());
    opts.docker_config = config.map(|c| DockerConfig::load(c).unwrap());
    if let Some(name) = push_to {
        opts.exporter = "image".into();
        opts.exporter_attrs.insert("name".into(), name.into());
        opts.exporter_attrs.insert("push".into(), "true".into());
    }
    opts
}

/// A registry client of the test's own, with the right credentials.
fn checker(host: &str) -> RegistryClient {
    let o = ClientOptions {
        fallback: vec![Arc::new(
            StaticCredentials::default().with(host, Credentials::basic(USER, PASS)),
        )],
        ..ClientOptions::default()
    };
    RegistryClient::new(o).unwrap()
}

fn refused(e: &tonic::Status) -> bool {
    let m = e.message().to_ascii_lowercase();
    m.contains("401")
        || m.contains("unauthorized")
        || m.contains("refused")
        || m.contains("auth")
        || m.contains("denied")
}

#[test]
fn a_build_reaches_a_token_registry_only_with_the_clients_credentials() {
    if !ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let issuer = TokenIssuer::start(USER, PASS);
    let reg = DockerRegistry::start(RegistryAuth::Token(&issuer));
    let proxy = FaultProxy::start(reg.addr);
    let host = proxy.addr().to_string();
    let right = docker_config(&work.path().join("right"), &host, Some((USER, PASS)));
    let wrong = docker_config(&work.path().join("wrong"), &host, Some((USER, "guess")));
    let none = docker_config(&work.path().join("none"), &host, None);
    let layers = push_base(work.path(), &host, &right);
    let base_bytes: u64 = layers.iter().sum();
    assert!(base_bytes > 8 << 20, "the base is large: {layers:?}");

    let d = Buildkitd::start(&["--oci-worker-snapshotter=stargz"]);
    let addr = d.addr();
    let rt = client_runtime();
    rt.block_on(async {
        // With the session's credentials: resolved, mounted lazily, pushed.
        proxy.reset_log();
        let sent_before = proxy.bytes_sent();
        let tokens_before = issuer.requests.load(std::sync::atomic::Ordering::SeqCst);
        let ctx = dockerfile_dir(
            work.path(),
            "ok",
            &host,
            "head -c 64 /data/part03 | wc -c > /read.txt",
        );
        let out = format!("{host}/out/app:1");
        let o = build_quietly(&addr, &options(&ctx, Some(&right), Some(&out))).await;
        o.result
            .unwrap_or_else(|e| panic!("build with the client's credentials: {e:?}\n{}", d.log()));
        let fetched = proxy.bytes_sent() - sent_before;
        eprintln!("lazy base: {fetched} of {base_bytes} bytes through the registry's proxy");
        assert!(
            fetched < base_bytes / 4,
            "the base is mounted lazily: {fetched} bytes through the proxy of a {base_bytes}-byte base\n{}",
            d.log()
        );
        assert!(
            issuer.requests.load(std::sync::atomic::Ordering::SeqCst) > tokens_before,
            "tokens were asked with the session's credentials"
        );
        let r = Reference::parse(&out).unwrap();
        let pushed = checker(&host).manifest(&r, &[]).await;
        assert!(pushed.is_ok(), "the result was pushed: {pushed:?}");

        // Without credentials, or with wrong ones: a clear refusal, the daemon serves on.
        for (name, config) in [("none", Some(none.as_path())), ("no-auth", None)] {
            let ctx = dockerfile_dir(work.path(), name, &host, "true");
            let o = build_quietly(&addr, &options(&ctx, config, None)).await;
            let e = o
                .result
                .expect_err("a build without the session's credentials fails");
            assert!(refused(&e), "{name}: {e:?}");
            eprintln!("{name}: {}", e.message());
            assert_serving(&addr).await;
        }

        // Two builds at once with different credentials for the same registry.
        let ok_ctx = dockerfile_dir(work.path(), "ok2", &host, "cat /data/part07 > /dev/null");
        let bad_ctx = dockerfile_dir(work.path(), "bad2", &host, "cat /data/part08 > /dev/null");
        let ok_opts = options(&ok_ctx, Some(&right), Some(&format!("{host}/out/app:2")));
        let bad_opts = options(&bad_ctx, Some(&wrong), Some(&format!("{host}/out/app:3")));
        let (good, bad) = tokio::join!(build_quietly(&addr, &ok_opts), build_quietly(&addr, &bad_opts));
        good.result
            .unwrap_or_else(|e| panic!("the build with the right credentials: {e:?}\n{}", d.log()));
        let e = bad
            .result
            .expect_err("the build with the wrong credentials fails");
        assert!(refused(&e), "{e:?}");
        let not_pushed = checker(&host)
            .manifest(&Reference::parse(&format!("{host}/out/app:3")).unwrap(), &[])
            .await;
        assert!(not_pushed.is_err(), "nothing pushed with wrong credentials");
        assert_serving(&addr).await;
    });
    drop(d);
}
