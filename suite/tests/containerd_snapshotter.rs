//! stargaze as containerd's proxy snapshotter (`stargaze snapshotter serve` on the socket of
//! the `stargz` proxy plugin), with a real containerd 1.6 and runc: images pull and unpack
//! through it, containers run from its mounts, `ctr snapshots` sees containerd's view of it,
//! and a kill -9 of the daemon loses nothing.

use stargaze_fs::image::sample::{build_sample_image, SampleOptions};
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_suite::mounts::fuse_mounts_under;
use stargaze_suite::servers::StargazeSnapshotter;
use stargaze_suite::{have, is_root, require, run, stargaze_bin, Containerd};
use std::path::Path;
use std::process::Command;

fn ready() -> bool {
    require(is_root(), "root")
        && require(
            have("containerd") && have("ctr") && have("runc"),
            "containerd, ctr, runc",
        )
        && require(Path::new("/bin/busybox").is_file(), "busybox-static")
        && require(stargaze_bin().is_file(), "the stargaze binary")
}

/// A plain (gzip, not eStargz) image with busybox, pushed to a fresh registry as
/// `plain/busybox:v1`, and its eStargz conversion as `esgz/busybox:v1`; the registry and the
/// plain image's name.
fn plain_image(dir: &Path) -> (BackgroundRegistry, String) {
    let oci = dir.join("oci");
    let opts = SampleOptions {
        small_files: 40,
        large_files: vec![2 << 20],
        ..SampleOptions::default()
    };
    build_sample_image(&oci, "sample", &opts).unwrap();
    let reg = BackgroundRegistry::start(
        RegistryOptions::new(dir.join("registry")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let name = format!("{}/plain/busybox:v1", reg.addr());
    run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("oci:{}:sample", oci.display()))
        .arg(format!("docker://{name}")));
    run(Command::new(stargaze_bin())
        .arg("convert")
        .arg(format!("oci:{}:sample", oci.display()))
        .arg(format!("oci:{}:esgz", oci.display())));
    run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("oci:{}:esgz", oci.display()))
        .arg(format!("docker://{}/esgz/busybox:v1", reg.addr())));
    (reg, name)
}

fn snapshots(ctd: &Containerd, args: &[&str]) -> std::process::Output {
    ctd.cmd("ctr")
        .args(["snapshots", "--snapshotter", "stargz"])
        .args(args)
        .output()
        .unwrap()
}

/// Rows of `ctr snapshots ls`: (key, parent, kind).
fn table(ls: &str) -> Vec<(String, String, String)> {
    ls.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.len() {
                2 => Some((f[0].to_string(), String::new(), f[1].to_string())),
                3 => Some((f[0].to_string(), f[1].to_string(), f[2].to_string())),
                _ => None,
            }
        })
        .collect()
}

fn run_hello(ctd: &Containerd, name: &str, id: &str) -> String {
    run(ctd.cmd("ctr").args([
        "run",
        "--rm",
        "--snapshotter=stargz",
        name,
        id,
        "/bin/busybox",
        "sh",
        "-c",
        "cat /etc/hello.txt; echo written > /tmp/x; cat /tmp/x",
    ]))
}

#[test]
fn containerd_pulls_and_runs_through_stargaze_and_survives_a_crash() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_reg, name) = plain_image(tmp.path());
    let ctd = Containerd::start();
    let backend = ["--backend", "overlayfs"];
    let mut snap = StargazeSnapshotter::start(&ctd, &backend);
    run(ctd.cmd("ctr").args([
        "image",
        "pull",
        "--plain-http",
        "--snapshotter",
        "stargz",
        &name,
    ]));
    assert_eq!(
        run_hello(&ctd, &name, "c1"),
        "hello from the top layer\nwritten\n"
    );
    // containerd's view: a committed chain, one per layer, with usage.
    let ls = String::from_utf8_lossy(&snapshots(&ctd, &["ls"]).stdout).into_owned();
    let rows = table(&ls);
    let committed: Vec<&(String, String, String)> =
        rows.iter().filter(|r| r.2 == "Committed").collect();
    assert!(committed.len() >= 2, "{ls}");
    let child = committed
        .iter()
        .find(|r| !r.1.is_empty())
        .unwrap_or_else(|| panic!("a committed snapshot with a parent:\n{ls}"));
    let usage = String::from_utf8_lossy(&snapshots(&ctd, &["usage", &child.0]).stdout).into_owned();
    assert!(usage.contains(&child.0), "{usage}");
    let info = String::from_utf8_lossy(&snapshots(&ctd, &["info", &child.0]).stdout).into_owned();
    assert!(
        info.contains(&child.1) && info.contains("Committed"),
        "{info}"
    );
    // A parent cannot be removed while it has a child; containerd gets the error kind.
    let out = snapshots(&ctd, &["rm", &child.1]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed precondition"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Labels set through containerd land in our store.
    run(ctd.cmd("ctr").args([
        "snapshots",
        "--snapshotter",
        "stargz",
        "label",
        &child.0,
        "team=infra",
    ]));
    let info = String::from_utf8_lossy(&snapshots(&ctd, &["info", &child.0]).stdout).into_owned();
    assert!(info.contains("\"team\": \"infra\""), "{info}");

    // kill -9 mid-way and restart: the store is whole, containerd carries on.
    snap.crash_and_restart(&ctd, &backend);
    let ls2 = String::from_utf8_lossy(&snapshots(&ctd, &["ls"]).stdout).into_owned();
    assert_eq!(table(&ls2).len(), rows.len(), "{ls}\n{ls2}");
    assert_eq!(
        run_hello(&ctd, &name, "c2"),
        "hello from the top layer\nwritten\n"
    );
    // Removing the image and its snapshots leaves the root empty of snapshot dirs.
    run(ctd.cmd("ctr").args(["image", "rm", "--sync", &name]));
    let mut keys: Vec<String> = table(&String::from_utf8_lossy(&snapshots(&ctd, &["ls"]).stdout))
        .into_iter()
        .map(|r| r.0)
        .collect();
    // Children first: remove until nothing is left (each pass removes the leaves).
    for _ in 0..10 {
        keys.retain(|k| !snapshots(&ctd, &["rm", k]).status.success());
        if keys.is_empty() {
            break;
        }
    }
    assert!(keys.is_empty(), "left: {keys:?}\n{}", snap.log());
    let dirs = std::fs::read_dir(snap.root.join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(dirs, 0);
    drop(snap);
    drop(ctd);
}

#[test]
fn rpull_mounts_estargz_layers_lazily_falls_back_loudly_and_remounts_after_a_crash() {
    if !ready()
        || !require(have("ctr-remote"), "ctr-remote")
        || !require(Path::new("/dev/fuse").exists(), "/dev/fuse")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (reg, plain) = plain_image(tmp.path());
    let esgz = format!("{}/esgz/busybox:v1", reg.addr());
    let ctd = Containerd::start();
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", stargaze_suite::http::free_port())
        .parse()
        .unwrap();
    let metrics_flag = metrics.to_string();
    let flags = ["--metrics-address", metrics_flag.as_str()];
    let mut snap = StargazeSnapshotter::start(&ctd, &flags);
    run(ctd
        .cmd("ctr-remote")
        .args(["image", "rpull", "--plain-http", &esgz]));
    let lazy = fuse_mounts_under(&snap.root);
    assert!(lazy >= 2, "{lazy} lazy layers\n{}", snap.log());
    // containerd did not download the layers: they are not in its content store.
    let content = run(ctd.cmd("ctr").args(["content", "ls", "-q"]));
    let manifest = run(ctd.cmd("ctr").args(["image", "ls"]));
    let layer_blobs = stargaze_fs::image::OciLayout::open(&tmp.path().join("oci"))
        .unwrap()
        .resolve(Some("esgz"))
        .unwrap()
        .1
        .layers()
        .iter()
        .map(|d| {
            stargaze_fs::image::OciLayout::digest_of(d)
                .unwrap()
                .to_string()
        })
        .collect::<Vec<_>>();
    for d in &layer_blobs {
        assert!(
            !content.contains(d.as_str()),
            "layer {d} was downloaded:\n{content}\n{manifest}"
        );
    }
    let hello =
        "cat /etc/hello.txt; /bin/busybox sha256sum /usr/lib/libsample0.so 2>&1 | cut -c1-60";
    let want =
        stargaze_fs::Digest::of(&stargaze_fs::image::sample::sample_bytes(1000, 2 << 20, 40)).hex();
    let expect = format!("hello from the top layer\n{}\n", &want[..60]);
    let ctr_run = |id: &str, image: &str| {
        run(ctd.cmd("ctr").args([
            "run",
            "--rm",
            "--snapshotter=stargz",
            image,
            id,
            "/bin/busybox",
            "sh",
            "-c",
            hello,
        ]))
    };
    assert_eq!(ctr_run("lazy1", &esgz), expect);

    // A plain image: every layer falls back, loudly, and still runs.
    run(ctd
        .cmd("ctr-remote")
        .args(["image", "rpull", "--plain-http", &plain]));
    assert_eq!(ctr_run("plain1", &plain), expect);
    let log = snap.log();
    assert!(
        log.contains("layer not mounted lazily") && log.contains("not eStargz"),
        "{log}"
    );
    // The same story in the metrics.
    let page = stargaze_suite::http::send(metrics, "GET", "/metrics", &[], b"").unwrap();
    let text = String::from_utf8_lossy(&page.body).into_owned();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in:\n{text}"))
    };
    assert!(value("stargaze_lazy_mounts_total") >= 2, "{text}");
    assert!(value("stargaze_fallbacks_total") >= 1, "{text}");
    assert!(value("stargaze_range_request_seconds_count") >= 1, "{text}");
    assert!(
        text.contains("stargaze_layer_fetched_bytes_total{layer=\"sha256:"),
        "{text}"
    );

    // kill -9, restart: the lazy layers come back and serve the same bytes.
    snap.crash_and_restart(&ctd, &flags);
    assert!(fuse_mounts_under(&snap.root) >= lazy, "{}", snap.log());
    assert_eq!(ctr_run("lazy2", &esgz), expect);
    drop(snap);
    drop(ctd);
}

#[test]
fn kill_9_during_a_lazy_pull_leaves_a_consistent_store_and_no_stale_mounts() {
    if !ready()
        || !require(have("ctr-remote"), "ctr-remote")
        || !require(Path::new("/dev/fuse").exists(), "/dev/fuse")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = plain_image(tmp.path());
    // Every blob range read takes 1.5 s, so the kill lands inside a lazy prepare.
    let proxy = stargaze_suite::fault_proxy::FaultProxy::start(reg.addr());
    proxy.add(
        stargaze_suite::fault_proxy::Rule::new(
            "/blobs/",
            usize::MAX,
            stargaze_suite::fault_proxy::Fault::Delay(std::time::Duration::from_millis(1500)),
        )
        .ranges(),
    );
    let esgz = format!("{}/esgz/busybox:v1", proxy.addr());
    let ctd = Containerd::start();
    let mut snap = StargazeSnapshotter::start(&ctd, &[]);
    let mut pull = ctd
        .cmd("ctr-remote")
        .args(["image", "rpull", "--plain-http", &esgz])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    snap.crash_and_restart(&ctd, &[]);
    let _ = pull.wait();
    // Whatever the crash interrupted: no dead mounts, no orphan directories.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = snap.root.to_string_lossy().into_owned();
    for l in mounts.lines().filter(|l| l.contains(&root)) {
        let point = l.split(' ').nth(4).unwrap();
        assert!(
            std::fs::read_dir(point).is_ok(),
            "a dead mount was left at {point}"
        );
    }
    proxy.clear();
    run(ctd
        .cmd("ctr-remote")
        .args(["image", "rpull", "--plain-http", &esgz]));
    let out = run(ctd.cmd("ctr").args([
        "run",
        "--rm",
        "--snapshotter=stargz",
        &esgz,
        "after-crash",
        "/bin/busybox",
        "cat",
        "/etc/hello.txt",
    ]));
    assert_eq!(out, "hello from the top layer\n");
    // Every directory belongs to a snapshot the backend knows (asked over its own socket).
    let owned = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut c = stargaze_worker::grpc::connect(&snap.socket).await.unwrap();
        let mut stream = c
            .list(stargaze_worker::grpc::pb::ListSnapshotsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(batch) = stream.message().await.unwrap() {
            n += batch.info.len();
        }
        n
    });
    let dirs = std::fs::read_dir(snap.root.join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(dirs, owned, "directories vs snapshots:\n{}", snap.log());
    drop(snap);
    drop(ctd);
}

#[test]
fn running_containers_keep_reading_through_a_daemon_restart() {
    if !ready()
        || !require(have("ctr-remote"), "ctr-remote")
        || !require(Path::new("/dev/fuse").exists(), "/dev/fuse")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (reg, _) = plain_image(tmp.path());
    let esgz = format!("{}/esgz/busybox:v1", reg.addr());
    let ctd = Containerd::start();
    let mut snap = StargazeSnapshotter::start(&ctd, &[]);
    run(ctd
        .cmd("ctr-remote")
        .args(["image", "rpull", "--plain-http", &esgz]));
    // A unique name, and a guard that removes the container even when the test fails.
    let id = format!("keep-{}", std::process::id());
    struct Task<'a>(&'a Containerd, String);
    impl Drop for Task<'_> {
        fn drop(&mut self) {
            let ctr = |args: &[&str]| self.0.cmd("ctr").args(args).output();
            let _ = ctr(&["task", "kill", "-s", "KILL", &self.1]);
            for _ in 0..50 {
                if ctr(&["task", "rm", &self.1]).is_ok_and(|o| o.status.success()) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = ctr(&["container", "rm", &self.1]);
        }
    }
    run(ctd.cmd("ctr").args([
        "run",
        "-d",
        "--snapshotter=stargz",
        &esgz,
        &id,
        "/bin/busybox",
        "sleep",
        "600",
    ]));
    let task = Task(&ctd, id.clone());
    let exec = |exec_id: &str, script: &str| -> String {
        run(ctd.cmd("ctr").args([
            "task",
            "exec",
            "--exec-id",
            exec_id,
            &id,
            "/bin/busybox",
            "sh",
            "-c",
            script,
        ]))
    };
    assert_eq!(
        exec("e1", "cat /etc/hello.txt"),
        "hello from the top layer\n"
    );

    // kill -9: the container's layers stay mounted (the holder keeps their connections),
    // and a file it never read before comes through the restarted daemon.
    snap.crash_and_restart(&ctd, &[]);
    let want =
        stargaze_fs::Digest::of(&stargaze_fs::image::sample::sample_bytes(1000, 2 << 20, 40)).hex();
    let sum = exec("e2", "/bin/busybox sha256sum /usr/lib/libsample0.so");
    assert!(sum.starts_with(&want), "{sum}\n{}", snap.log());
    assert!(
        snap.log().contains("resumed on its kept FUSE connection"),
        "{}",
        snap.log()
    );

    // A clean stop leaves the layers a container uses mounted; the next start serves them.
    snap.stop_and_restart(&ctd, &[]);
    let log = snap.log();
    assert!(log.contains("left mounted for the next start"), "{log}");
    let all = exec(
        "e3",
        "/bin/busybox find / -xdev -type f -exec /bin/busybox cat {} + | /bin/busybox wc -c",
    );
    assert!(all.trim().parse::<u64>().unwrap_or(0) > 2 << 20, "{all}");
    drop(task);
    drop(snap);
    drop(ctd);
}
