//! `stargaze build` on the OCI worker with real runc, overlayfs, FUSE and a registry, run
//! for every worker variant of the sandbox (`oci`, `oci-snapshotter-NAME`, `oci-rootless`):
//! multi-stage builds with RUN (both forms), COPY/ADD (--chown, --from), metadata
//! instructions and the step cache; a failing RUN names its step and exit code and leaves
//! no mounts; a runtime that cannot start containers is an error naming the step; GC
//! trims to keep-storage; a stargz build on an eStargz base fetches a small part of it;
//! a proxy snapshotter socket works; bad input is refused without writing outside the root.

use stargaze_fs::image::OciLayout;
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_suite::worker_sandbox::{self, mounts_under, text, Sandbox, Variant};
use stargaze_suite::{busybox, have, is_root, require, run, stargaze_bin};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

fn ready() -> bool {
    require(is_root(), "root")
        && require(have("runc"), "runc")
        && require(have("umoci"), "umoci")
        && require(Path::new(busybox::BUSYBOX).is_file(), "busybox-static")
        && require(stargaze_bin().is_file(), "the stargaze binary")
}

/// A registry with `base/bb:v1` (busybox, gzip), `base/bb:esgz` (eStargz) and
/// `base/big:esgz` (busybox plus 32 incompressible files of 1 MiB, eStargz).
fn registry(work: &Path) -> BackgroundRegistry {
    let oci = work.join("oci");
    busybox::write_image(&oci, "bb", work);
    let data = work.join("data");
    std::fs::create_dir_all(data.join("data")).unwrap();
    for i in 0..32 {
        let bytes = stargaze_fs::image::sample::sample_bytes(7 + i, 1 << 20, 255);
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
    let reg = BackgroundRegistry::start(
        RegistryOptions::new(work.join("registry")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let copy = |from: &str, to: &str| {
        run(Command::new(stargaze_bin())
            .arg("copy")
            .arg(format!("oci:{}:{from}", oci.display()))
            .arg(format!("docker://{}/{to}", reg.addr())));
    };
    let convert = |from: &str, to: &str| {
        run(Command::new(stargaze_bin())
            .arg("convert")
            .arg(format!("oci:{}:{from}", oci.display()))
            .arg(format!("oci:{}:{to}", oci.display())));
    };
    copy("bb", "base/bb:v1");
    convert("bb", "bb-esgz");
    copy("bb-esgz", "base/bb:esgz");
    convert("big", "big-esgz");
    copy("big-esgz", "base/big:esgz");
    reg
}

fn ok(o: &std::process::Output, what: &str) -> String {
    let t = text(o);
    assert!(o.status.success(), "{what} failed:\n{t}");
    t
}

/// The image config of `tag` in the layout at `dir`.
fn image_config(dir: &Path, tag: &str) -> serde_json::Value {
    let l = OciLayout::open(dir).unwrap();
    let (_, m) = l.resolve(Some(tag)).unwrap();
    serde_json::from_slice(&l.read_small_blob(m.config()).unwrap()).unwrap()
}

const MULTI_STAGE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE} AS builder
ARG GREETING=hello
ENV APP_HOME=/app \
    MODE=test
WORKDIR $APP_HOME
ADD notes.txt /notes/
COPY --chown=app:app src/ ./src/
RUN ["/bin/sh", "-c", "echo exec-form > exec.txt"]
RUN echo "$GREETING $MODE" > greeting.txt && cat src/a.txt >> greeting.txt && stat -c %u src/a.txt > owner.txt

FROM ${BASE}
ADD bundle.tar.gz /opt/
LABEL org.example.team=infra version="1.0"
EXPOSE 8080 53/udp
COPY --from=builder /app/greeting.txt /app/owner.txt /app/exec.txt /out/
RUN rm /etc/group
USER app
WORKDIR /home/app
RUN id -u > uid.txt
ENTRYPOINT ["/bin/cat"]
CMD ["/out/greeting.txt"]
"#;

fn multi_stage(sb: &Sandbox, host: &str) {
    let ctx = sb.dir.path().join("ctx");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), MULTI_STAGE).unwrap();
    std::fs::write(ctx.join("src/a.txt"), "from the context\n").unwrap();
    std::fs::write(ctx.join("notes.txt"), "notes\n").unwrap();
    let pkg = sb.dir.path().join("pkg");
    std::fs::create_dir_all(pkg.join("pkg")).unwrap();
    std::fs::write(pkg.join("pkg/readme"), "unpacked by ADD\n").unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&pkg)
        .arg("-czf")
        .arg(ctx.join("bundle.tar.gz"))
        .arg("pkg"));
    let out = sb.dir.path().join("out");
    let base = format!("BASE={host}/base/bb:v1");
    let dest = format!("oci:{}:v1", out.display());
    let args = [
        ctx.to_str().unwrap(),
        "--build-arg",
        &base,
        "--build-arg",
        "GREETING=hi",
        "-t",
        &dest,
    ];
    let t = ok(&sb.build(&args), "first build");
    assert!(t.contains("10 steps run, 0 cached"), "{t}");
    assert!(
        t.contains("#") && t.contains("RUN echo \"$GREETING $MODE\""),
        "progress names steps: {t}"
    );

    // The image: config fields and files.
    let cfg = image_config(&out, "v1");
    let c = &cfg["config"];
    assert_eq!(c["User"], "app");
    assert_eq!(c["WorkingDir"], "/home/app");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/cat"]));
    assert_eq!(c["Cmd"], serde_json::json!(["/out/greeting.txt"]));
    assert_eq!(c["Labels"]["org.example.team"], "infra");
    assert_eq!(c["Labels"]["version"], "1.0");
    assert!(c["ExposedPorts"]["8080/tcp"].is_object() && c["ExposedPorts"]["53/udp"].is_object());
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 6);
    let bundle = sb.dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", out.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let read =
        |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("out/greeting.txt"), "hi test\nfrom the context\n");
    assert_eq!(read("out/owner.txt"), "1000\n", "COPY --chown=app:app");
    assert_eq!(read("out/exec.txt"), "exec-form\n");
    assert_eq!(
        read("opt/pkg/readme"),
        "unpacked by ADD\n",
        "ADD unpacks a local archive"
    );
    assert_eq!(read("home/app/uid.txt"), "1000\n", "USER app");
    assert!(
        !rootfs.join("etc/group").exists(),
        "a deletion is a whiteout in the layer"
    );
    assert!(
        !rootfs.join("app").exists(),
        "the builder stage stays out of the image"
    );
    assert_eq!(
        std::fs::metadata(rootfs.join("out/greeting.txt"))
            .unwrap()
            .uid(),
        0
    );

    // Again: everything from the cache.
    let t = ok(&sb.build(&args), "second build");
    assert!(t.contains("0 steps run, 10 cached"), "{t}");
    assert!(t.contains("CACHED"), "{t}");
    // A changed context file re-runs its COPY and what follows (the WORKDIR before it and the
    // ADDs stay cached; a WORKDIR makes its directory as a layer, as in BuildKit).
    std::fs::write(ctx.join("src/a.txt"), "changed\n").unwrap();
    let t = ok(&sb.build(&args), "third build");
    assert!(t.contains("7 steps run, 3 cached"), "{t}");
    let bundle2 = sb.dir.path().join("bundle2");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", out.display()))
        .arg(&bundle2));
    assert_eq!(
        std::fs::read_to_string(bundle2.join("rootfs/out/greeting.txt")).unwrap(),
        "hi test\nchanged\n"
    );
}

#[test]
fn builds_run_copy_multistage_and_cache() {
    if !ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry(work.path());
    let host = reg.addr().to_string();
    worker_sandbox::run("builds_run_copy_multistage_and_cache", |sb| {
        multi_stage(sb, &host)
    });
}

#[test]
fn failing_steps_name_the_step_and_leave_no_mounts() {
    if !ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry(work.path());
    let host = reg.addr().to_string();
    worker_sandbox::run("failing_steps", |sb| {
        let ctx = sb.dir.path().join("ctx");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM {host}/base/bb:v1\nRUN echo step-output\nRUN echo before-failing && exit 3\n"
            ),
        )
        .unwrap();
        let o = sb.build(&[ctx.to_str().unwrap()]);
        let t = text(&o);
        assert!(!o.status.success(), "{t}");
        assert!(t.contains("RUN echo before-failing && exit 3"), "{t}");
        assert!(t.contains("line 3"), "{t}");
        assert!(t.contains("exit code: 3"), "{t}");
        assert!(
            t.contains("before-failing"),
            "the step's output streams: {t}"
        );
        assert!(sb.mounts().is_empty(), "mounts left: {:?}", sb.mounts());

        // A runtime that cannot start containers (as crun on hybrid cgroups): its error,
        // naming the step.
        let fake = sb.dir.path().join("fake-runtime");
        std::fs::write(
            &fake,
            "#!/bin/sh\nlog=''\nwhile [ $# -gt 0 ]; do [ \"$1\" = --log ] && log=$2; shift; done\n[ -n \"$log\" ] && echo '{\"level\":\"error\",\"msg\":\"cannot set up cgroups: hybrid hierarchy\"}' > \"$log\"\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let o = sb.build(&[
            ctx.to_str().unwrap(),
            "--oci-worker-binary",
            fake.to_str().unwrap(),
            "--no-cache",
        ]);
        let t = text(&o);
        assert!(!o.status.success(), "{t}");
        assert!(
            t.contains("RUN echo step-output")
                && t.contains("cannot set up cgroups: hybrid hierarchy"),
            "{t}"
        );
        assert!(sb.mounts().is_empty(), "mounts left: {:?}", sb.mounts());
    });
}

#[test]
fn gc_keepstorage_trims_to_the_bound() {
    if !ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry(work.path());
    let host = reg.addr().to_string();
    let variant = Variant::with_snapshotter("oci", Some("overlayfs"));
    let sb = Sandbox::new(&variant);
    let ctx = sb.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {host}/base/bb:v1\nARG N\nRUN echo $N > /n && head -c 3000000 /dev/urandom > /blob\n"),
    )
    .unwrap();
    for n in 0..4 {
        let arg = format!("N={n}");
        ok(
            &sb.build(&[
                ctx.to_str().unwrap(),
                "--build-arg",
                &arg,
                "--oci-worker-gc=false",
            ]),
            "build",
        );
    }
    let o = ok(
        &sb.cmd(&["worker", "prune", "--keep-storage", "8"])
            .output()
            .unwrap(),
        "prune",
    );
    let remain: f64 = o
        .split(" MB remain")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no remaining figure in {o}"));
    assert!(remain <= 8.0, "{o}");
    assert!(o.contains("removed build/"), "{o}");
    // The newest build survives; the oldest went first.
    let o2 = ok(
        &sb.build(&[
            ctx.to_str().unwrap(),
            "--build-arg",
            "N=3",
            "--oci-worker-gc=false",
        ]),
        "rebuild",
    );
    assert!(o2.contains("0 steps run, 1 cached"), "{o2}");
    // GC after a build with a keep-storage bound.
    let o3 = ok(
        &sb.build(&[
            ctx.to_str().unwrap(),
            "--build-arg",
            "N=9",
            "--oci-worker-gc-keepstorage=5",
        ]),
        "build with GC",
    );
    assert!(o3.contains("GC: removed"), "{o3}");
    let o4 = ok(
        &sb.cmd(&["worker", "prune", "--all"]).output().unwrap(),
        "prune --all",
    );
    assert!(o4.contains("0.0 MB remain"), "{o4}");
}

#[test]
fn stargz_builds_fetch_a_small_part_of_the_base() {
    if !ready() || !require(Path::new("/dev/fuse").exists(), "/dev/fuse") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry(work.path());
    let host = reg.addr().to_string();
    let variant = Variant::with_snapshotter("oci-snapshotter-stargz", Some("stargz"));
    let sb = Sandbox::new(&variant);
    let ctx = sb.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {host}/base/big:esgz\nRUN head -c 4096 /data/part07 | wc -c > /n && cat /n\n"
        ),
    )
    .unwrap();
    let dest = format!("{host}/built/app:v1");
    let t = ok(
        &sb.build(&[ctx.to_str().unwrap(), "-t", &dest, "--push", "--estargz"]),
        "stargz build",
    );
    assert!(t.contains("2 mounted lazily, 0 pulled"), "{t}");
    let line = t
        .lines()
        .find(|l| l.starts_with("lazy base layers: fetched"))
        .unwrap();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (fetched, size) = (nums[0], nums[1]);
    assert!(size > 32 << 20, "{line}");
    assert!(
        fetched * 5 < size,
        "a lazy base is mostly not fetched: {line}"
    );
    assert!(
        t.contains("2 base layers kept, 0 base layers fetched"),
        "pushing keeps the base lazy: {t}"
    );
    // The pushed image runs its base from the registry: mount it lazily and read.
    let mnt = sb.dir.path().join("mnt");
    let m = stargaze_suite::mounts::Mounted::mount(&dest, &mnt, &[]);
    assert_eq!(std::fs::read_to_string(m.dir.join("n")).unwrap(), "4096\n");
    m.umount();
    // The same build on overlayfs pulls the whole base.
    let plain = Sandbox::new(&Variant::with_snapshotter(
        "oci-snapshotter-overlayfs",
        Some("overlayfs"),
    ));
    let t = ok(&plain.build(&[ctx.to_str().unwrap()]), "overlayfs build");
    assert!(t.contains("0 mounted lazily, 2 pulled"), "{t}");
}

#[test]
fn builds_through_a_proxy_snapshotter() {
    if !ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry(work.path());
    let host = reg.addr().to_string();
    let snap =
        stargaze_suite::servers::StargazeSnapshotter::start_alone(&["--backend", "overlayfs"]);
    let sb = Sandbox::new(&Variant::with_snapshotter("oci-proxy", Some("overlayfs")));
    let ctx = sb.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {host}/base/bb:v1\nRUN echo via-proxy > /p\n"),
    )
    .unwrap();
    let sock = snap.socket.display().to_string();
    let out = sb.dir.path().join("out");
    let dest = format!("oci:{}:v1", out.display());
    let t = ok(
        &sb.build(&[
            ctx.to_str().unwrap(),
            "--oci-worker-proxy-snapshotter-path",
            &sock,
            "-t",
            &dest,
        ]),
        "proxy build",
    );
    assert!(t.contains("1 steps run"), "{t}");
    assert!(mounts_under(&sb.root()).is_empty());
    let bad = sb.build(&[
        ctx.to_str().unwrap(),
        "--oci-worker-proxy-snapshotter-path",
        "/nonexistent.sock",
    ]);
    assert!(
        !bad.status.success() && text(&bad).contains("/nonexistent.sock"),
        "{}",
        text(&bad)
    );
}

#[test]
fn bad_input_is_refused_without_writing_outside_the_root() {
    if !ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry(work.path());
    let host = reg.addr().to_string();
    let sb = Sandbox::new(&Variant::with_snapshotter("oci", None));
    let ctx = sb.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let outside = sb.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "s").unwrap();
    std::os::unix::fs::symlink(&outside, ctx.join("escape")).unwrap();
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (
            format!("FROM {host}/base/bb:v1\nHEALTHCHECK CMD true\n"),
            vec![],
            "line 2",
        ),
        (
            format!("FROM {host}/base/bb:v1\nRUN --mount=typ=cache,target=/x true\n"),
            vec![],
            "unexpected key 'typ'",
        ),
        ("RUN true\n".into(), vec![], "line 1"),
        (
            format!("FROM {host}/base/bb:v1\nCOPY ../outside/secret /x\n"),
            vec![],
            "outside the build context",
        ),
        (
            format!("FROM {host}/base/bb:v1\nCOPY /etc/passwd /x\n"),
            vec![],
            "outside the build context",
        ),
        (
            format!("FROM {host}/base/bb:v1\nCOPY escape/secret /x\n"),
            vec![],
            "outside the build context",
        ),
        (
            format!("FROM {host}/base/bb:v1\nENV =x\n"),
            vec![],
            "line 2",
        ),
        (
            format!("FROM {host}/base/bb:v1\nEXPOSE eighty\n"),
            vec![],
            "line 2",
        ),
        (
            format!("FROM {host}/base/bb:v1\n"),
            vec!["--oci-worker-labels", "novalue"],
            "novalue",
        ),
        (
            format!("FROM {host}/base/bb:v1\n"),
            vec!["--oci-worker-platform", "not/a/plat/form"],
            "not/a/plat/form",
        ),
        (
            format!("FROM {host}/base/bb:v1\n"),
            vec!["--platform", "bogus"],
            "bogus",
        ),
        (
            format!("FROM {host}/base/bb:v1\n"),
            vec!["--oci-worker-snapshotter", "zfs"],
            "zfs",
        ),
        (
            format!("FROM {host}/base/bb:v1\n"),
            vec!["-t", "../../x:bad"],
            "../../x:bad",
        ),
        ("FROM ../../etc/passwd\n".into(), vec![], "../../etc/passwd"),
        (
            format!("FROM --platform=nope {host}/base/bb:v1\n"),
            vec![],
            "--platform=nope",
        ),
    ];
    for (df, extra, expect) in cases {
        std::fs::write(ctx.join("Dockerfile"), &df).unwrap();
        let mut args = vec![ctx.to_str().unwrap()];
        args.extend(extra.iter().copied());
        let o = sb.build(&args);
        let t = text(&o);
        assert!(!o.status.success(), "accepted {df:?} {extra:?}:\n{t}");
        assert!(
            t.contains(expect),
            "{df:?} {extra:?}: error should name {expect:?}:\n{t}"
        );
        assert!(!t.contains("panicked"), "{t}");
    }
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "nothing written outside: {names:?}");
    assert!(sb.mounts().is_empty());
}

#[test]
fn cni_gives_each_step_its_own_network() {
    if !ready()
        || !require(
            Path::new("/usr/lib/cni/bridge").is_file(),
            "containernetworking-plugins",
        )
    {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry(work.path());
    // Everything happens inside a namespace of the test's own: the CNI bridge is made there.
    let ns = stargaze_suite::netem::Netns::create(None);
    let proxy =
        stargaze_suite::netem::DelayProxy::start(&ns, reg.addr(), std::time::Duration::ZERO);
    let sb = Sandbox::new(&Variant::with_snapshotter("oci-cni", Some("overlayfs")));
    let conf = sb.dir.path().join("cni.conflist");
    std::fs::write(
        &conf,
        serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "stargaze-test",
            "plugins": [{
                "type": "bridge",
                "bridge": "sgz0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.231.7.0/24"}]],
                    "dataDir": sb.dir.path().join("ipam"),
                },
            }],
        })
        .to_string(),
    )
    .unwrap();
    let ctx = sb.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/base/bb:v1\nRUN ip -4 addr show eth0 | grep -o 'inet 10.231.7.[0-9]*' && ip link show lo | grep -q UP && echo cni-ok\n",
            proxy.addr
        ),
    )
    .unwrap();
    let mut c = ns.cmd(stargaze_bin());
    c.arg("build")
        .arg(&ctx)
        .arg("--root")
        .arg(sb.root())
        .arg("--oci-worker-snapshotter=overlayfs")
        .arg("--oci-worker-net=cni")
        .arg(format!("--oci-cni-config-path={}", conf.display()))
        .arg("--oci-cni-binary-dir=/usr/lib/cni");
    let t = ok(&c.output().unwrap(), "CNI build");
    assert!(t.contains("inet 10.231.7.") && t.contains("cni-ok"), "{t}");
    let left = run(Command::new("ip").args(["netns", "list"]));
    assert!(
        !left.contains("stargaze-stargaze-"),
        "step namespaces left: {left}"
    );
    // A config that names a missing plugin is refused up front.
    std::fs::write(
        &conf,
        r#"{"cniVersion":"0.4.0","name":"x","plugins":[{"type":"nosuchplugin"}]}"#,
    )
    .unwrap();
    let mut c = ns.cmd(stargaze_bin());
    c.arg("build")
        .arg(&ctx)
        .arg("--root")
        .arg(sb.root())
        .arg("--oci-worker-net=cni")
        .arg(format!("--oci-cni-config-path={}", conf.display()))
        .arg("--oci-cni-binary-dir=/usr/lib/cni");
    let o = c.output().unwrap();
    assert!(
        !o.status.success() && text(&o).contains("nosuchplugin"),
        "{}",
        text(&o)
    );
}

#[test]
fn an_interrupted_build_kills_its_steps_and_cleans_up() {
    if !ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry(work.path());
    let sb = Sandbox::new(&Variant::with_snapshotter("oci", Some("overlayfs")));
    let ctx = sb.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}/base/bb:v1\nRUN echo started && sleep 600\n",
            reg.addr()
        ),
    )
    .unwrap();
    let mut child = sb
        .cmd(&["build", ctx.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the step to start, then interrupt.
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "build ended before its step started:\n{seen}");
        seen.push_str(&line);
        if line.contains("started") {
            break;
        }
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the interrupted build did not end:\n{seen}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{seen}{err}");
    assert!(err.contains("cancelled"), "{err}");
    let exec = sb.root().join("runc-overlayfs/executor");
    let state = exec.join("runtime-state");
    let containers = std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0);
    assert_eq!(containers, 0, "containers left registered with runc");
    let bundles: Vec<_> = std::fs::read_dir(&exec)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("stargaze-"))
        .collect();
    assert!(bundles.is_empty(), "bundles left: {bundles:?}");
    assert!(sb.mounts().is_empty(), "mounts left: {:?}", sb.mounts());
    let sleeping = run(Command::new("ps").args(["-eo", "args"]));
    assert!(
        !sleeping.lines().any(|l| l.trim() == "sleep 600"),
        "the step's process survived"
    );
}

/// The (start, end) uptime seconds each of two stages' steps recorded.
fn step_intervals(sb: &Sandbox, ctx: &Path, extra: &[&str]) -> ((f64, f64), (f64, f64)) {
    let out = sb.dir.path().join(format!("out{}", extra.len()));
    let dest = format!("oci:{}:v1", out.display());
    let mut args = vec![ctx.to_str().unwrap(), "--no-cache", "-t", &dest];
    args.extend_from_slice(extra);
    ok(&sb.build(&args), "parallel stages");
    let bundle = sb.dir.path().join(format!("bundle{}", extra.len()));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", out.display()))
        .arg(&bundle));
    let read = |stage: &str| -> (f64, f64) {
        let t = std::fs::read_to_string(bundle.join(format!("rootfs/{stage}.times"))).unwrap();
        let v: Vec<f64> = t
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        (v[0], v[1])
    };
    (read("a"), read("b"))
}

#[test]
fn independent_stages_run_in_parallel_up_to_max_parallelism() {
    if !ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry(work.path());
    let sb = Sandbox::new(&Variant::with_snapshotter("oci", Some("overlayfs")));
    let ctx = sb.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let step = "RUN cat /proc/uptime > /times && sleep 1 && cat /proc/uptime >> /times";
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {h}/base/bb:v1 AS a\n{step}\nFROM {h}/base/bb:v1 AS b\n{step}\nFROM {h}/base/bb:v1\nCOPY --from=a /times /a.times\nCOPY --from=b /times /b.times\n",
            h = reg.addr()
        ),
    )
    .unwrap();
    let overlap = |(a, b): ((f64, f64), (f64, f64))| a.0 < b.1 && b.0 < a.1;
    let unbounded = step_intervals(&sb, &ctx, &[]);
    assert!(
        overlap(unbounded),
        "stages a and b ran one after the other: {unbounded:?}"
    );
    let one = step_intervals(&sb, &ctx, &["--oci-max-parallelism=1"]);
    assert!(
        !overlap(one),
        "with max parallelism 1 the steps overlapped: {one:?}"
    );
}
