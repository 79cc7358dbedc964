//! The snapshotter opens an image's other layers while containerd is still preparing the
//! first: the pull's `containerd.io/snapshot/remote/stargz.layers` label lists them, the
//! manifest gives their sizes and TOC digests, so each later Prepare finds its layer open (no
//! size probe of its own). The first layer's size comes with its tail, asked for as a suffix
//! range: no HEAD at all.

use stargaze_fs::image::sample::{build_sample_image, SampleOptions};
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_suite::fault_proxy::FaultProxy;
use stargaze_suite::mounts::fuse_mounts_under;
use stargaze_suite::servers::StargazeSnapshotter;
use stargaze_suite::{have, is_root, require, run, stargaze_bin, Containerd};
use std::path::Path;
use std::process::Command;

fn ready() -> bool {
    require(is_root(), "root")
        && require(Path::new("/dev/fuse").exists(), "/dev/fuse")
        && require(stargaze_bin().is_file(), "the stargaze binary")
        && require(
            have("containerd") && have("ctr") && have("ctr-remote") && have("runc"),
            "containerd, ctr, ctr-remote, runc",
        )
        && require(Path::new("/bin/busybox").is_file(), "busybox-static")
}

#[test]
fn later_layers_are_opened_while_the_first_is_prepared() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = tmp.path().join("oci");
    let opts = SampleOptions {
        small_files: 40,
        large_files: vec![1 << 20],
        ..SampleOptions::default()
    };
    build_sample_image(&oci, "sample", &opts).unwrap();
    run(Command::new(stargaze_bin())
        .arg("convert")
        .arg(format!("oci:{}:sample", oci.display()))
        .arg(format!("oci:{}:esgz", oci.display())));
    let registry = BackgroundRegistry::start(
        RegistryOptions::new(tmp.path().join("registry")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("oci:{}:esgz", oci.display()))
        .arg(format!("docker://{}/lab/ahead:v1", registry.addr())));
    let proxy = FaultProxy::start(registry.addr());
    let image = format!("{}/lab/ahead:v1", proxy.addr());

    let ctd = Containerd::start();
    let snap = StargazeSnapshotter::start(&ctd, &["--no-prefetch", "--no-background-fetch"]);
    run(ctd
        .cmd("ctr-remote")
        .args(["image", "rpull", "--plain-http", &image]));
    assert_eq!(
        fuse_mounts_under(&snap.root),
        2,
        "both layers mounted lazily\n{}",
        snap.log()
    );
    let log = snap.log();
    assert!(
        log.contains("layer opened ahead of its Prepare"),
        "the upper layer came from the early open:\n{log}"
    );
    let heads = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "HEAD" && s.target.contains("/blobs/"))
        .count();
    assert_eq!(heads, 0, "no blob HEAD: {:?}", proxy.seen());
    let suffixes = proxy
        .seen()
        .iter()
        .filter(|s| s.range.as_deref().is_some_and(|r| r.starts_with("bytes=-")))
        .count();
    assert_eq!(
        suffixes,
        1,
        "the first layer's tail by a suffix range: {:?}",
        proxy.seen()
    );
    let out = run(ctd.cmd("ctr").args([
        "run",
        "--rm",
        "--snapshotter=stargz",
        &image,
        "ahead1",
        "/bin/busybox",
        "cat",
        "/etc/hello.txt",
        "/app/run.sh",
    ]));
    assert!(
        !out.trim().is_empty(),
        "the upper layer's files read: {out:?}"
    );
}
