//! Warm reads through a mount: sequential (dd, 1 MiB blocks) and random (fio 4 KiB randread,
//! when installed) read throughput of a fully fetched 256 MiB file through a lazy mount, page
//! cache dropped, next to the same file on local disk.
//!
//! Run (root): `cargo build --release -p stargaze && cargo bench --bench warm`.

use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_suite::bench::stats_json;
use stargaze_suite::{have, is_root, median, run, stargaze_bin};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn dd_mb_s(path: &Path) -> f64 {
    drop_caches();
    let size = std::fs::metadata(path).expect("size").len() as f64;
    let t = Instant::now();
    run(Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["of=/dev/null", "bs=1M"]));
    size / 1e6 / t.elapsed().as_secs_f64()
}

fn fio_mb_s(path: &Path) -> Option<f64> {
    if !have("fio") {
        return None;
    }
    drop_caches();
    let out = Command::new("fio")
        .args([
            "--name=r",
            "--rw=randread",
            "--bs=4k",
            "--ioengine=psync",
            "--runtime=5",
            "--time_based",
            "--readonly",
            "--output-format=json",
        ])
        .arg(format!("--filename={}", path.display()))
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["jobs"][0]["read"]["bw_bytes"].as_f64().map(|b| b / 1e6)
}

fn warm() {
    if !is_root() {
        println!("warm: SKIPPED: needs root");
        return;
    }
    let work = tempfile::tempdir().expect("temp");
    let oci = work.path().join("oci");
    let opts = stargaze_fs::image::sample::SampleOptions {
        small_files: 10,
        large_files: vec![256 << 20],
        busybox: None,
    };
    stargaze_fs::image::sample::build_sample_image(&oci, "sample", &opts).expect("sample");
    run(Command::new(stargaze_bin())
        .arg("convert")
        .arg(format!("oci:{}:sample", oci.display()))
        .arg(format!("oci:{}:esgz", oci.display())));
    let reg = BackgroundRegistry::start(
        RegistryOptions::new(work.path().join("reg")),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("registry");
    let name = format!("{}/warm/img:v1", reg.addr());
    run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("oci:{}:esgz", oci.display()))
        .arg(format!("docker://{name}")));
    let mnt = work.path().join("rootfs");
    let run_dir = work.path().join("run");
    run(Command::new(stargaze_bin())
        .env("STARGAZE_RUN_DIR", &run_dir)
        .args(["mount", &name])
        .arg(&mnt)
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .args(["--background-mib-per-sec", "1024"]));
    // Wait for the background fetch to finish.
    for _ in 0..600 {
        let v = stats_json(&run_dir, &mnt);
        if v["layers"]
            .as_array()
            .is_some_and(|l| l.iter().all(|l| l["prefetch"]["state"] == "done"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let file = mnt.join("usr/lib/libsample0.so");
    let local = work.path().join("local.so");
    std::fs::copy(&file, &local).expect("copy");
    let (mut m, mut l) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        m.push(dd_mb_s(&file));
        l.push(dd_mb_s(&local));
    }
    let (m, l) = (median(m), median(l));
    println!("warm: sequential read of a fetched 256 MiB file: mount {m:.0} MB/s vs local disk {l:.0} MB/s");
    println!(
        "RATIO warm sequential: {:.2} of local (goal >= 0.8 with passthrough)",
        m / l
    );
    if let (Some(fm), Some(fl)) = (fio_mb_s(&file), fio_mb_s(&local)) {
        println!("warm: random 4 KiB reads: mount {fm:.1} MB/s vs local disk {fl:.1} MB/s");
        println!(
            "RATIO warm random: {:.2} of local (through passthrough the kernel reads the backing \
             file ahead in large requests, so the mount is soon served from page cache)",
            fm / fl
        );
    } else {
        println!("warm: random reads SKIPPED: fio not installed");
    }
    let stats = run(Command::new(stargaze_bin())
        .env("STARGAZE_RUN_DIR", &run_dir)
        .arg("stats")
        .arg(&mnt));
    print!("warm: {stats}");
    run(Command::new(stargaze_bin())
        .env("STARGAZE_RUN_DIR", &run_dir)
        .arg("umount")
        .arg(&mnt));
}

fn main() {
    if stargaze_suite::bench_selection()("warm") {
        warm();
    }
}
