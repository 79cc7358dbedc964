//! The worker integration sandbox through the daemon: for every worker variant (`oci`,
//! `oci-snapshotter-NAME` from `STARGAZE_INTEGRATION_SNAPSHOTTER`, `oci-rootless` from
//! `STARGAZE_INTEGRATION_ROOTLESS_IDPAIR`), `buildkitd` is started exactly as BuildKit's
//! OCI backend starts it (rootless through sudo and rootlesskit) and driven by the
//! project's buildctl-like client (`stargaze build --addr`: a session with file-sync and
//! auth, Solve through the gateway, Status): a multi-stage build from the session's
//! context with a `.dockerignore`, exported to an OCI layout, then again from the cache; a
//! failing RUN named with its exit code; the daemon keeps serving and leaves no mounts.
//! Needs root, runc, umoci and busybox-static.

use stargaze_fs::image::OciLayout;
use stargaze_suite::buildkit_client::{build_prerequisites, busybox_registry};
use stargaze_suite::worker_sandbox::{self, text, Sandbox};
use std::process::Command;

const DOCKERFILE: &str = r#"ARG BASE
FROM $BASE AS builder
COPY src/ /src/
RUN cat /src/a.txt > /built.txt && echo "built-by-run" >> /built.txt && ls /src > /listing.txt

FROM $BASE
COPY --from=builder /built.txt /listing.txt /out/
RUN echo second-stage-ran > /out/run.txt
"#;

fn build_twice_and_fail(sb: &Sandbox, host: &str) {
    let d = sb.daemon(&[]);
    let ctx = sb.dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(ctx.join("src/a.txt"), "from the context\n").unwrap();
    std::fs::write(ctx.join("src/secret.key"), "must not be sent\n").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "src/*.key\n").unwrap();
    let out = sb.dir.path().join("out");
    let base = format!("BASE={host}/base/bb:v1");
    let dest = format!("oci:{}:v1", out.display());
    let args = [ctx.to_str().unwrap(), "--build-arg", &base, "-t", &dest];

    let o = sb.build_on(&d, &args);
    let t = text(&o);
    assert!(
        o.status.success(),
        "first build:\n{t}\ndaemon:\n{}",
        d.log()
    );
    assert!(t.contains("through the daemon"), "{t}");
    assert!(
        t.contains("RUN echo second-stage-ran > /out/run.txt"),
        "{t}"
    );
    let bundle = sb.dir.path().join("bundle");
    stargaze_suite::run(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", out.display()))
            .arg(&bundle),
    );
    let read = |p: &str| std::fs::read_to_string(bundle.join("rootfs").join(p)).unwrap();
    assert_eq!(read("out/built.txt"), "from the context\nbuilt-by-run\n");
    assert_eq!(read("out/listing.txt"), "a.txt\n", ".dockerignore applied");
    assert_eq!(read("out/run.txt"), "second-stage-ran\n");
    let layout = OciLayout::open(&out).unwrap();
    let (_, first) = layout.resolve(Some("v1")).unwrap();

    // Again: every step from the cache, the same layers (the config's times are new).
    let o = sb.build_on(&d, &args);
    let t = text(&o);
    assert!(o.status.success(), "second build:\n{t}");
    assert!(t.contains("CACHED"), "{t}");
    assert!(
        !t.contains("second-stage-ran\n#") && !t.lines().any(|l| l.ends_with(" second-stage-ran")),
        "the RUN did not run again: {t}"
    );
    let (_, again) = layout.resolve(Some("v1")).unwrap();
    assert_eq!(first.layers(), again.layers());

    // A failing RUN: named, with its exit code; the daemon serves the next build.
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {host}/base/bb:v1\nRUN echo before-failing && exit 3\n"),
    )
    .unwrap();
    let o = sb.build_on(&d, &[ctx.to_str().unwrap()]);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("RUN echo before-failing && exit 3"), "{t}");
    assert!(t.contains("exit code: 3"), "{t}");
    assert!(
        t.contains("before-failing"),
        "the step's output streams: {t}"
    );
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {host}/base/bb:v1\nRUN echo after\n"),
    )
    .unwrap();
    let o = sb.build_on(&d, &[ctx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    drop(d);
    assert!(sb.mounts().is_empty(), "mounts left: {:?}", sb.mounts());
}

#[test]
fn daemon_builds_for_every_worker_variant() {
    if !build_prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = busybox_registry(work.path());
    let host = reg.addr().to_string();
    worker_sandbox::run("daemon_builds_for_every_worker_variant", |sb| {
        build_twice_and_fail(sb, &host)
    });
}
