//! The cold-start benches' image: Debian bookworm with python3 (~170 MB unpacked), built once
//! with debootstrap + apt into `target/bench-cache/coldstart/` (never committed) and kept as an
//! OCI layout with a gzip and an eStargz tag, so every WAN bench runs the same image.

use crate::{bench_cache_dir, run, stargaze_bin};
use std::path::PathBuf;
use std::process::Command;

/// The debian+python3 image as an OCI layout with tags `plain` (gzip) and `esgz`.
pub fn debian_image() -> PathBuf {
    let dir = bench_cache_dir().join("coldstart");
    let layout = dir.join("layout");
    if layout.join("ready").is_file() {
        return layout;
    }
    let rootfs = dir.join("rootfs");
    if !rootfs.join("usr/bin/python3").exists() {
        eprintln!("coldstart: building debian bookworm + python3 with debootstrap (once, ~2 min)");
        let _ = std::fs::remove_dir_all(&rootfs);
        std::fs::create_dir_all(&dir).expect("cache dir");
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&rootfs)
            .arg("http://deb.debian.org/debian"));
        run(Command::new("chroot")
            .arg(&rootfs)
            .args(["apt-get", "update", "-qq"]));
        run(Command::new("chroot")
            .arg(&rootfs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "python3",
            ]));
        run(Command::new("chroot")
            .arg(&rootfs)
            .args(["apt-get", "clean"]));
        let _ = std::fs::remove_dir_all(rootfs.join("var/lib/apt/lists"));
    }
    let tar = dir.join("rootfs.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    let _ = std::fs::remove_dir_all(&layout);
    let l = stargaze_fs::image::OciLayout::open_or_create(&layout).expect("layout");
    stargaze_fs::image::write_image(
        &l,
        "plain",
        &[stargaze_fs::image::LayerInput { tar: tar.clone() }],
        &stargaze_fs::image::ImageConfig {
            cmd: vec!["/bin/bash".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        },
    )
    .expect("image");
    let _ = std::fs::remove_file(&tar);
    run(Command::new(stargaze_bin())
        .arg("convert")
        .arg(format!("oci:{}:plain", layout.display()))
        .arg(format!("oci:{}:esgz", layout.display())));
    std::fs::write(layout.join("ready"), b"").expect("marker");
    layout
}
