//! Whole-workflow benchmarks, each printed next to its named baseline in one run.
//!
//! `convert`: `stargaze convert` vs the reference `ctr-remote image convert --estargz --oci`
//! (Debian's stargz-snapshotter, against a private containerd) on the same image: the
//! sample image scaled up (20k small files, 80 MiB of large files), built once and cached in
//! `target/bench-cache/`. Prints the median of 3 runs each and the ratio (goal ≥ 1.5).
//!
//! Run: `cargo build --release -p stargaze && cargo bench --bench workflows [-- convert]`
//! (root is needed for containerd).

use stargaze_fs::image::sample::{build_sample_image, SampleOptions};
use stargaze_suite::{have, is_root, run, stargaze_bin, Containerd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-cache")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench_image() -> PathBuf {
    let dir = cache_dir().join("convert-src");
    if !dir.join("index.json").is_file() {
        eprintln!("building the bench image in {} (once)", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        let opts = SampleOptions {
            small_files: 20_000,
            large_files: vec![48 << 20, 24 << 20, 8 << 20],
            ..Default::default()
        };
        build_sample_image(&dir, "sample", &opts).expect("building bench image");
    }
    dir
}

fn convert_bench() {
    let src = bench_image();
    let bin = stargaze_bin();
    if !bin.is_file() {
        println!("convert: SKIPPED: build the binary first (cargo build --release -p stargaze)");
        return;
    }
    let runs = 3;
    let mut ours = Vec::new();
    for i in 0..runs {
        let out = tempfile::tempdir().expect("temp");
        let t = Instant::now();
        run(Command::new(&bin).args([
            "convert",
            &format!("oci:{}:sample", src.display()),
            &format!("oci:{}:esgz{i}", out.path().display()),
        ]));
        ours.push(t.elapsed().as_secs_f64());
    }
    let ours = median(ours);
    println!(
        "convert: stargaze convert (gzip 9, 4 MiB chunks, 2 cores): {ours:.2} s (median of {runs})"
    );

    if !(is_root() && have("containerd") && have("ctr") && have("ctr-remote")) {
        println!("convert: reference SKIPPED: needs root, containerd, ctr and ctr-remote");
        return;
    }
    let ctd = Containerd::start();
    ctd.import_layout(&src, "bench.local/img");
    let mut theirs = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        run(ctd.cmd("ctr-remote").args([
            "image",
            "convert",
            "--estargz",
            "--oci",
            "bench.local/img:sample",
            &format!("bench.local/img:esgz{i}"),
        ]));
        theirs.push(t.elapsed().as_secs_f64());
    }
    drop(ctd);
    let theirs = median(theirs);
    println!("convert: ctr-remote image convert --estargz --oci (baseline): {theirs:.2} s (median of {runs})");
    println!(
        "RATIO convert: stargaze is {:.2}x faster than ctr-remote (goal >= 1.5)",
        theirs / ours
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    if want("convert") {
        convert_bench();
    }
}
