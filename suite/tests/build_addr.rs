//! `stargaze build --addr`: the same build, in process and through a running `stargaze
//! buildkitd` (started as BuildKit's sandbox starts buildkitd), gives the same files —
//! a multi-stage Dockerfile outside the context with a build argument and a target stage,
//! exported to an OCI layout (`-t oci:DIR:TAG`, which comes back over the session and is
//! imported) and pushed to a registry (`-t REF --push`, the daemon's image exporter). A
//! failing RUN fails the command with the step's error; the daemon's build history holds
//! a record of each build; in-process worker flags are refused
//! with `--addr`, and so is a daemon address where nothing listens. Needs root, runc,
//! umoci and busybox-static.

use flate2::read::GzDecoder;
use stargaze_fs::format::tar::TarReader;
use stargaze_fs::image::OciLayout;
use stargaze_suite::buildkit_client::{build_prerequisites, busybox_registry, Buildkitd};
use stargaze_suite::stargaze_bin;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output, what: &str) -> String {
    let t = text(&o);
    assert!(o.status.success(), "{what} failed ({}):\n{t}", o.status);
    t
}

/// The regular files of the top layer of `oci:DIR:TAG`: path → content.
fn top_files(dir: &Path, tag: &str) -> BTreeMap<String, Vec<u8>> {
    let layout = OciLayout::open(dir).unwrap();
    let (_, m) = layout.resolve(Some(tag)).unwrap();
    let top = m.layers().last().unwrap();
    let blob = layout.blob_path(&OciLayout::digest_of(top).unwrap());
    let mut t = TarReader::new(GzDecoder::new(std::fs::File::open(blob).unwrap()));
    let mut out = BTreeMap::new();
    while let Some(e) = t.next_entry().unwrap() {
        let mut data = vec![0u8; e.size as usize];
        t.read_data_exact(&mut data).unwrap();
        if e.kind == stargaze_fs::format::tar::TarKind::Reg {
            out.insert(e.path.trim_start_matches("./").to_string(), data);
        }
    }
    out
}

#[test]
fn build_through_the_daemon_matches_the_build_in_process() {
    if !build_prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = busybox_registry(work.path());
    let d = Buildkitd::start(&["--oci-worker-snapshotter=native"]);
    let addr = d.addr();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("greeting.txt"), "hello\n").unwrap();
    let df_dir = work.path().join("dockerfiles");
    std::fs::create_dir_all(&df_dir).unwrap();
    let df = df_dir.join("app.Dockerfile");
    std::fs::write(
        &df,
        format!(
            "FROM {r}/base/bb:v1 AS gen\nARG MSG=unset\nRUN echo \"$MSG\" > /msg.txt\n\
             FROM {r}/base/bb:v1 AS app\nCOPY --from=gen /msg.txt /out/msg.txt\nCOPY greeting.txt /out/\n\
             FROM app AS extra\nRUN echo never > /out/never.txt\n",
            r = reg.addr()
        ),
    )
    .unwrap();
    let common = |c: &mut Command| {
        c.arg("build").arg(&ctx).arg("-f").arg(&df).args([
            "--build-arg",
            "MSG=from-arg",
            "--target",
            "app",
        ]);
    };

    // In process.
    let local = work.path().join("local-layout");
    let mut c = Command::new(stargaze_bin());
    common(&mut c);
    c.arg("--root")
        .arg(work.path().join("worker-root"))
        .arg("--oci-worker-snapshotter=native")
        .arg("-t")
        .arg(format!("oci:{}:v1", local.display()));
    ok(c.output().unwrap(), "in-process build");

    // Through the daemon, into a layout.
    let remote = work.path().join("remote-layout");
    let mut c = Command::new(stargaze_bin());
    common(&mut c);
    c.args(["--addr", &addr])
        .arg("-t")
        .arg(format!("oci:{}:v1", remote.display()));
    let t = ok(c.output().unwrap(), "build --addr");
    assert!(t.contains("through the daemon at"), "{t}");
    assert!(t.contains("COPY greeting.txt /out/"), "progress: {t}");
    assert!(!t.contains("never"), "the target stage only: {t}");
    let want = top_files(&local, "v1");
    assert_eq!(
        want.get("out/greeting.txt").map(Vec::as_slice),
        Some(&b"hello\n"[..])
    );
    assert_eq!(top_files(&remote, "v1"), want);
    // The first stage's file came through the build argument.
    let (_, m) = OciLayout::open(&remote)
        .unwrap()
        .resolve(Some("v1"))
        .unwrap();
    let below = &m.layers()[m.layers().len() - 2];
    let layout = OciLayout::open(&remote).unwrap();
    let mut tr = TarReader::new(GzDecoder::new(
        std::fs::File::open(layout.blob_path(&OciLayout::digest_of(below).unwrap())).unwrap(),
    ));
    let mut msg = None;
    while let Some(e) = tr.next_entry().unwrap() {
        let mut data = vec![0u8; e.size as usize];
        tr.read_data_exact(&mut data).unwrap();
        if e.path.trim_start_matches("./") == "out/msg.txt" {
            msg = Some(data);
        }
    }
    assert_eq!(msg.as_deref(), Some(&b"from-arg\n"[..]));

    // Through the daemon, pushed; the registry then serves it.
    let pushed = format!("{}/app/built:v1", reg.addr());
    let mut c = Command::new(stargaze_bin());
    common(&mut c);
    c.args(["--addr", &addr, "-t", &pushed, "--push"]);
    ok(c.output().unwrap(), "build --addr --push");
    let back = work.path().join("pulled");
    ok(
        Command::new(stargaze_bin())
            .arg("copy")
            .arg(format!("docker://{pushed}"))
            .arg(format!("oci:{}:v1", back.display()))
            .output()
            .unwrap(),
        "copy back",
    );
    assert_eq!(top_files(&back, "v1"), want);

    // A failing RUN: the command fails naming the step.
    let bad = ctx.join("Bad.Dockerfile");
    std::fs::write(
        &bad,
        format!("FROM {}/base/bb:v1\nRUN exit 3\n", reg.addr()),
    )
    .unwrap();
    let o = Command::new(stargaze_bin())
        .arg("build")
        .arg(&ctx)
        .arg("-f")
        .arg(&bad)
        .args(["--addr", &addr])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("exit code: 3"), "{t}");

    // The daemon's build history has a record of each build, the failed one with its error.
    let records = stargaze_suite::buildkit_client::client_runtime().block_on(async {
        use stargaze_suite::buildkit_client::control::BuildHistoryRequest;
        let mut c = stargaze_suite::buildkit_client::connect(&addr)
            .await
            .unwrap();
        let mut s = c
            .listen_build_history(BuildHistoryRequest {
                early_exit: true,
                ..BuildHistoryRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(ev) = s.message().await.unwrap() {
            out.push(ev.record.unwrap());
        }
        out
    });
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(records.iter().all(|r| r.completed_at.is_some()));
    assert_eq!(records.iter().filter(|r| r.error.is_some()).count(), 1);
    assert!(records
        .iter()
        .any(|r| r.exporters.iter().any(|e| e.r#type == "oci")));

    // Worker flags belong to the daemon; an address where nothing listens fails clearly.
    let o = Command::new(stargaze_bin())
        .arg("build")
        .arg(&ctx)
        .args(["--addr", &addr, "--oci-worker-snapshotter=native"])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o).contains("belong to the daemon"),
        "{}",
        text(&o)
    );
    let nowhere = format!("unix://{}", work.path().join("none.sock").display());
    let o = Command::new(stargaze_bin())
        .arg("build")
        .arg(&ctx)
        .arg("-f")
        .arg(&bad)
        .args(["--addr", &nowhere])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o).contains("connecting to the daemon"),
        "{}",
        text(&o)
    );
}
