//! Builds through `stargaze buildkitd` (started as BuildKit's sandbox starts buildkitd),
//! driven by the client of `stargaze_worker::buildkitd::client` the way buildctl v0.11 runs
//! `build --frontend dockerfile.v0`: a session serving the context over FileSync, Status,
//! Solve through the gateway. A multi-stage build whose context comes from the session with
//! a `.dockerignore` (the ignored files absent in the image), progress with BuildKit's
//! vertex names and the RUN output as logs, the image pushed to a local registry with its
//! label; a failing RUN reported as the vertex's error and in the Solve's error; unknown
//! frontends, bad attributes, unknown exporters and raw LLB answered with gRPC errors while
//! the daemon keeps serving; a session whose FileSync lies (a path escaping the target)
//! fails the build cleanly. Needs root, runc and busybox-static (the base image is built
//! locally and served by the built-in registry; no internet).

use futures_util::{Stream, StreamExt};
use stargaze_fs::image::OciLayout;
use stargaze_suite::buildkit_client::{
    assert_serving, build_prerequisites, busybox_registry, client_runtime, control, walk,
    Buildkitd, Printed,
};
use stargaze_suite::{run, stargaze_bin};
use stargaze_worker::buildkitd::client::build::{
    build, build_with, BuildOptions, BuildOutcome, Via,
};
use stargaze_worker::buildkitd::client::channel;
use stargaze_worker::buildkitd::proto::filesync::file_sync_server::FileSync;
use stargaze_worker::buildkitd::proto::fsutil::types::{packet::PacketType, Packet, Stat};
use std::pin::Pin;
use std::process::Command;
use tonic::{Code, Request, Response, Status, Streaming};

async fn go(addr: &str, opts: &BuildOptions) -> (BuildOutcome, String) {
    let p = Printed::default();
    let ch = channel(addr).await.unwrap();
    let o = build(ch, opts, Box::new(p.clone())).await.unwrap();
    (o, p.text())
}

fn multi_stage(reg: &str) -> String {
    format!(
        r#"FROM {reg}/base/bb:v1 AS build
ARG GREETING=hi
COPY src/ /src/
RUN echo "$GREETING from $(cat /src/a.txt)" > /out.txt && echo visible-output && echo to-stderr >&2

FROM {reg}/base/bb:v1
COPY --from=build /out.txt /out.txt
COPY . /ctx/
RUN test -e /ctx/keep.txt && test ! -e /ctx/secret.txt && test ! -e /ctx/logs/debug.log && grep -q "hello from ctx" /out.txt
"#
    )
}

#[test]
fn dockerfile_builds_through_the_gateway_with_the_context_from_the_session() {
    if !build_prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = busybox_registry(work.path());
    let host = reg.addr().to_string();
    let mut d = Buildkitd::start(&["--oci-worker-snapshotter=native"]);
    let addr = d.addr();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    std::fs::create_dir_all(ctx.join("logs")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), multi_stage(&host)).unwrap();
    std::fs::write(ctx.join(".dockerignore"), "# not sent\nsecret.txt\nlogs\n").unwrap();
    std::fs::write(ctx.join("src/a.txt"), "ctx").unwrap();
    std::fs::write(ctx.join("keep.txt"), "keep").unwrap();
    std::fs::write(ctx.join("secret.txt"), "secret").unwrap();
    std::fs::write(ctx.join("logs/debug.log"), "log").unwrap();
    client_runtime().block_on(async {
        // The multi-stage build, pushed.
        let mut opts = BuildOptions::dockerfile(&ctx);
        opts.attrs
            .insert("build-arg:GREETING".into(), "hello".into());
        opts.attrs.insert("label:team".into(), "infra".into());
        opts.exporter = "image".into();
        opts.exporter_attrs
            .insert("name".into(), format!("{host}/out/app:1"));
        opts.exporter_attrs.insert("push".into(), "true".into());
        let (o, printed) = go(&addr, &opts).await;
        let resp = o
            .result
            .unwrap_or_else(|e| panic!("build failed: {e:?}\n{printed}\n{}", d.log()));
        let digest = resp.exporter_response.get("containerimage.digest").cloned();
        assert!(
            digest.as_deref().is_some_and(|d| d.starts_with("sha256:")),
            "{resp:?}"
        );
        assert_eq!(
            resp.exporter_response.get("image.name"),
            Some(&format!("{host}/out/app:1"))
        );
        let p = &o.progress;
        for name in [
            "[internal] load build definition from Dockerfile",
            "[internal] load .dockerignore",
            "[internal] load build context",
        ] {
            let v = p
                .named(name)
                .unwrap_or_else(|| panic!("no vertex {name}:\n{printed}"));
            assert!(
                v.vertex.completed.is_some() && v.vertex.error.is_empty(),
                "{v:?}"
            );
            assert!(v.vertex.digest.starts_with("sha256:"));
        }
        assert!(p
            .named(&format!("[internal] load metadata for {host}/base/bb:v1"))
            .is_some());
        let run_v = p
            .vertices
            .iter()
            .find(|v| v.vertex.name.starts_with("[build 3/3] RUN echo"))
            .unwrap_or_else(|| panic!("no RUN vertex:\n{printed}"));
        assert!(run_v.vertex.started.is_some() && run_v.vertex.completed.is_some());
        let out: Vec<(i64, String)> = run_v
            .logs
            .iter()
            .map(|(s, m)| (*s, String::from_utf8_lossy(m).into_owned()))
            .collect();
        assert!(out.contains(&(1, "visible-output\n".into())), "{out:?}");
        assert!(out.contains(&(2, "to-stderr\n".into())), "{out:?}");
        assert!(
            printed.contains("[build 3/3] RUN echo") && printed.contains("visible-output"),
            "{printed}"
        );
        assert!(printed.contains(" DONE "), "{printed}");

        // The pushed image has the label.
        let layout = work.path().join("pulled");
        run(Command::new(stargaze_bin())
            .arg("copy")
            .arg(format!("docker://{host}/out/app:1"))
            .arg(format!("oci:{}:app", layout.display())));
        let l = OciLayout::open(&layout).unwrap();
        let (_, m) = l.resolve(Some("app")).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&l.read_small_blob(m.config()).unwrap()).unwrap();
        assert_eq!(cfg["config"]["Labels"]["team"], "infra", "{cfg}");

        // Again, directly in the control Solve: every step from the cache.
        opts.via = Via::Direct;
        opts.exporter = String::new();
        opts.exporter_attrs.clear();
        let (o, printed) = go(&addr, &opts).await;
        o.result.unwrap_or_else(|e| panic!("{e:?}\n{printed}"));
        assert!(printed.contains("CACHED"), "{printed}");

        // A failing RUN: the vertex's error and the Solve's name the step.
        let bad = work.path().join("bad");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(
            bad.join("Dockerfile"),
            format!("FROM {host}/base/bb:v1\nRUN echo about-to-fail && exit 3\n"),
        )
        .unwrap();
        let (o, printed) = go(&addr, &BuildOptions::dockerfile(&bad)).await;
        let e = o.result.expect_err("a failing RUN");
        assert!(
            e.message().contains("RUN echo about-to-fail && exit 3"),
            "{e:?}"
        );
        let v = o
            .progress
            .vertices
            .iter()
            .find(|v| v.vertex.name.contains("RUN echo about-to-fail"))
            .unwrap_or_else(|| panic!("{printed}"));
        assert!(!v.vertex.error.is_empty(), "{v:?}");
        assert!(printed.contains("ERROR:"), "{printed}");

        // Bad requests: gRPC errors, and the daemon keeps serving.
        let cases: Vec<(BuildOptions, Code)> = vec![
            {
                let mut o = BuildOptions::dockerfile(&ctx);
                o.frontend = "gateway.v0".into();
                (o, Code::InvalidArgument)
            },
            {
                let mut o = BuildOptions::dockerfile(&ctx);
                o.frontend = "gateway.v0".into();
                o.via = Via::Direct;
                (o, Code::InvalidArgument)
            },
            {
                let mut o = BuildOptions::dockerfile(&ctx);
                o.attrs
                    .insert("platform".into(), "not/a/platform/at/all".into());
                (o, Code::InvalidArgument)
            },
            {
                let mut o = BuildOptions::dockerfile(&ctx);
                o.attrs.insert("filename".into(), "../../etc/passwd".into());
                (o, Code::InvalidArgument)
            },
            {
                let mut o = BuildOptions::dockerfile(&ctx);
                o.attrs.insert("frobnicate".into(), "1".into());
                (o, Code::InvalidArgument)
            },
            {
                let mut o = BuildOptions::dockerfile(&ctx);
                o.exporter = "tarball".into();
                (o, Code::InvalidArgument)
            },
        ];
        for (o, code) in cases {
            let (got, printed) = go(&addr, &o).await;
            let e = got.result.expect_err("refused");
            assert_eq!(e.code(), code, "{e:?} {:?}\n{printed}", o.attrs);
            assert_serving(&addr).await;
        }
        let mut c = stargaze_suite::buildkit_client::connect(&addr)
            .await
            .unwrap();
        let e = c
            .solve(control::SolveRequest {
                r#ref: "raw-llb".into(),
                definition: Some(stargaze_suite::buildkit_client::pb::Definition {
                    def: vec![b"\x0a\x00".to_vec()],
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert_serving(&addr).await;
    });
    assert!(d.alive(), "{}", d.log());
    d.terminate();
}

/// A FileSync sender that lists one entry escaping the target.
#[derive(Clone)]
struct Liar;

type Packets = Pin<Box<dyn Stream<Item = Result<Packet, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FileSync for Liar {
    type DiffCopyStream = Packets;
    async fn diff_copy(
        &self,
        _req: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let stat = |path: &str, size: i64| Packet {
            r#type: PacketType::PacketStat as i32,
            stat: Some(Stat {
                path: path.into(),
                mode: 0o644,
                size,
                ..Stat::default()
            }),
            ..Packet::default()
        };
        let packets = vec![
            Ok(stat("Dockerfile", 4)),
            Ok(stat("../../../escaped", 4)),
            Ok(Packet::default()),
        ];
        Ok(Response::new(Box::pin(
            futures_util::stream::iter(packets).chain(futures_util::stream::pending()),
        )))
    }
    type TarStreamStream = Packets;
    async fn tar_stream(
        &self,
        _req: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::TarStreamStream>, Status> {
        Err(Status::unimplemented("test"))
    }
}

#[test]
fn a_session_lying_in_its_file_sync_stream_fails_the_build_cleanly() {
    if !build_prerequisites() {
        return;
    }
    let mut d = Buildkitd::start(&["--oci-worker-snapshotter=native"]);
    let addr = d.addr();
    client_runtime().block_on(async {
        let p = Printed::default();
        let ch = channel(&addr).await.unwrap();
        let o = build_with(
            ch,
            &BuildOptions::dockerfile("/nonexistent"),
            Liar,
            Box::new(p.clone()),
        )
        .await
        .unwrap();
        let e = o.result.expect_err("the lie is refused");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("escaped"), "{e:?}");
        let v = o
            .progress
            .named("[internal] load build definition from Dockerfile")
            .unwrap_or_else(|| panic!("{}", p.text()));
        assert!(!v.vertex.error.is_empty());
        assert_serving(&addr).await;
    });
    // Nothing escaped the worker's scratch space, and no temporary directory is left.
    assert!(!d.root.join("escaped").exists());
    let leftovers: Vec<_> = walk(&d.root)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("solve-") || n == "escaped")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(d.alive(), "{}", d.log());
    d.terminate();
}
