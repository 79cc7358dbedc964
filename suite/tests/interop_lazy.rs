//! Lazy mounts across implementations: an image converted by the reference (`ctr-remote image
//! convert --estargz`) mounts with `stargaze mount` and equals its unpacked source; an image
//! converted by stargaze is pulled lazily by the reference snapshotter (`containerd-stargz-grpc`,
//! built from Debian's Go packages by `scripts/build-reference.sh`) and a program runs from it
//! with `ctr run --snapshotter=stargz`.

use stargaze_fs::image::sample::{build_sample_image, SampleOptions};
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_suite::mounts::Mounted;
use stargaze_suite::{
    assert_same_tree, have, is_root, reference_stargz_grpc, require, run, stargaze_bin, tree,
    Containerd, ReferenceStargz,
};
use std::path::Path;
use std::process::Command;

const FORMAT_FILES: [&str; 3] = [
    ".no.prefetch.landmark",
    ".prefetch.landmark",
    "stargz.index.json",
];

fn ready() -> bool {
    require(is_root(), "root")
        && require(Path::new("/dev/fuse").exists(), "/dev/fuse")
        && require(
            have("containerd") && have("ctr") && have("ctr-remote"),
            "containerd, ctr, ctr-remote",
        )
        && require(stargaze_bin().is_file(), "the stargaze binary")
}

fn sample(dir: &Path, busybox: bool) {
    let opts = SampleOptions {
        small_files: 80,
        large_files: vec![3 << 20],
        busybox: if busybox {
            SampleOptions::default().busybox
        } else {
            None
        },
    };
    build_sample_image(dir, "sample", &opts).unwrap();
}

fn registry(dir: &Path) -> BackgroundRegistry {
    BackgroundRegistry::start(
        RegistryOptions::new(dir.join("registry")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

#[test]
fn a_reference_converted_image_mounts_with_stargaze() {
    if !ready() || !require(have("umoci"), "umoci") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = tmp.path().join("oci");
    sample(&oci, false);
    let refdir = stargaze_suite::reference_convert(&oci, tmp.path());
    let reg = registry(tmp.path());
    let name = format!("{}/ref/esgz:v1", reg.addr());
    run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("oci:{}", refdir.display()))
        .arg(format!("docker://{name}")));
    let m = Mounted::mount(&name, &tmp.path().join("m"), &["--no-background-fetch"]);
    let stats = m.stats();
    assert!(
        stats["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mode"] == "lazy"),
        "{stats}"
    );
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:sample", oci.display())])
        .arg(&bundle));
    assert_same_tree(
        &tree(&bundle.join("rootfs"), &FORMAT_FILES),
        &tree(&m.dir, &[]),
    );
}

#[test]
fn a_stargaze_converted_image_runs_lazily_with_the_reference_snapshotter() {
    if !ready()
        || !require(Path::new("/bin/busybox").is_file(), "busybox-static")
        || !require(have("runc"), "runc")
    {
        return;
    }
    let Some(bin) = reference_stargz_grpc() else {
        require(false, "containerd-stargz-grpc (scripts/build-reference.sh)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let oci = tmp.path().join("oci");
    sample(&oci, true);
    run(Command::new(stargaze_bin())
        .arg("convert")
        .arg(format!("oci:{}:sample", oci.display()))
        .arg(format!("oci:{}:esgz", oci.display())));
    let reg = registry(tmp.path());
    let name = format!("{}/ours/esgz:v1", reg.addr());
    run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("oci:{}:esgz", oci.display()))
        .arg(format!("docker://{name}")));
    let ctd = Containerd::start();
    let reference = ReferenceStargz::start(&bin, &ctd, &reg.addr().to_string());
    run(ctd
        .cmd("ctr-remote")
        .args(["image", "rpull", "--plain-http", &name]));
    // The reference mounted our layers lazily (FUSE), it did not unpack them.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = reference.dir.path().to_string_lossy().into_owned();
    let fuse_layers = mounts
        .lines()
        .filter(|l| l.contains(&root) && l.contains("fuse"))
        .count();
    assert!(
        fuse_layers >= 2,
        "the reference mounted {fuse_layers} lazy layers"
    );
    let out = run(ctd.cmd("ctr").args([
        "run",
        "--rm",
        "--snapshotter=stargz",
        &name,
        "stargaze-interop",
        "/bin/busybox",
        "sh",
        "-c",
        "cat /etc/hello.txt; /bin/busybox sha256sum /usr/lib/libsample0.so | cut -c1-16",
    ]));
    let want =
        stargaze_fs::Digest::of(&stargaze_fs::image::sample::sample_bytes(1000, 3 << 20, 40)).hex();
    assert_eq!(out, format!("hello from the top layer\n{}\n", &want[..16]));
    drop(ctd);
    drop(reference);
}
