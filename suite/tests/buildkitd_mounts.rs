//! `RUN --mount` through `stargaze buildkitd` (started as BuildKit's sandbox starts
//! buildkitd), driven by `stargaze_worker::buildkitd::client` as buildctl v0.11 runs
//! `build --secret id=tok,src=FILE --output type=local,dest=…`: a cache mount seen by a
//! second build (its file written by the first), a secret the client's session serves
//! (readable in the step, absent from the image), a tmpfs (a tmpfs in the step, its files
//! gone), a bind of another stage's directory; no mount point, scratch directory or mount
//! left behind, and a required secret the session lacks fails the build naming it. Needs
//! root, runc, umoci and busybox-static.

use stargaze_suite::buildkit_client::{
    build_prerequisites, build_quietly, busybox_registry, client_runtime, walk, Buildkitd,
};
use stargaze_worker::buildkitd::client::build::BuildOptions;

#[test]
fn cache_secret_tmpfs_and_stage_binds_reach_the_step_only() {
    if !build_prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = busybox_registry(work.path());
    let mut d = Buildkitd::start(&["--oci-worker-snapshotter=native"]);
    let addr = d.addr();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let base = format!("{}/base/bb:v1", reg.addr());
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {base} AS src\n\
             RUN mkdir /data && echo from-stage > /data/f\n\
             FROM {base}\n\
             ARG RUNID\n\
             RUN --mount=type=cache,target=/c echo $RUNID >> /c/log && cp /c/log /cache-seen\n\
             RUN --mount=type=secret,id=tok,required [ \"$(cat /run/secrets/tok)\" = s3cret ] && echo ok > /got-secret\n\
             RUN --mount=type=tmpfs,target=/t grep ' /t tmpfs ' /proc/mounts > /tmpfs-line && touch /t/x\n\
             RUN --mount=from=src,source=/data,target=/d cat /d/f > /bound\n"
        ),
    )
    .unwrap();
    let secret = work.path().join("tok.txt");
    std::fs::write(&secret, "s3cret").unwrap();
    client_runtime().block_on(async {
        let build = |run: &str, with_secret: bool| {
            let out = work.path().join(format!("out-{run}"));
            let mut o = BuildOptions::dockerfile(&ctx);
            o.set_output(&format!("type=local,dest={}", out.display()))
                .unwrap();
            o.attrs.insert("build-arg:RUNID".into(), run.into());
            if with_secret {
                o.secrets.insert("tok".into(), secret.clone());
            }
            (o, out)
        };

        let (o, out) = build("1", true);
        build_quietly(&addr, &o).await.result.expect("first build");
        assert_eq!(
            std::fs::read_to_string(out.join("cache-seen")).unwrap(),
            "1\n"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("got-secret")).unwrap(),
            "ok\n"
        );
        assert!(!out.join("run/secrets/tok").exists());
        assert!(!out.join("run/secrets").exists(), "the mount point is left");
        assert!(std::fs::read_to_string(out.join("tmpfs-line"))
            .unwrap()
            .contains("tmpfs"));
        assert!(!out.join("t").exists(), "the tmpfs's mount point is left");
        assert_eq!(
            std::fs::read_to_string(out.join("bound")).unwrap(),
            "from-stage\n"
        );
        assert!(!out.join("d").exists());
        assert!(!out.join("c").exists());

        // A second build sees what the first wrote into the cache.
        let (o, out) = build("2", true);
        build_quietly(&addr, &o).await.result.expect("second build");
        assert_eq!(
            std::fs::read_to_string(out.join("cache-seen")).unwrap(),
            "1\n2\n"
        );

        // A required secret the session does not have: the build fails naming it.
        let (o, _) = build("3", false);
        let e = build_quietly(&addr, &o)
            .await
            .result
            .expect_err("a required secret is missing");
        assert!(e.message().contains("secret tok: not found"), "{e:?}");
    });
    // No scratch directory or mount left behind.
    let left: Vec<_> = walk(&d.root)
        .into_iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                ["secret-", "rw-", "mnt-", "view-", "private-"]
                    .iter()
                    .any(|s| n.starts_with(s))
            })
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(d.alive(), "{}", d.log());
    d.terminate();
}
