//! Cold builds under the cold-start bench's WAN (`suite/src/bench/`): a cold `stargaze build`
//! of `FROM <that image>` + `RUN python3 -c …`, each run from an empty worker root: the stargz
//! snapshotter on the eStargz image (the base is mounted lazily) against overlayfs on the gzip
//! image (full pull and unpack); medians of 3 and their ratio (goal <= 0.3).
//!
//! Run (root): `cargo build --release -p stargaze && cargo bench --bench build`.

use stargaze_suite::bench::{wan, Wan, CMD, DELAY, RATE_MBIT, RUNS};
use stargaze_suite::{have, median, stargaze_bin};
use std::path::Path;
use std::time::Instant;

/// One cold `stargaze build` of `FROM image / RUN python3 …` in a fresh worker root inside
/// the WAN namespace; (seconds, the summary lines).
fn cold_build(w: &Wan, work: &Path, name: &str, image: &str, snapshotter: &str) -> (f64, String) {
    let d = work.join(name);
    let ctx = d.join("ctx");
    std::fs::create_dir_all(&ctx).expect("ctx");
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {image}\nRUN {}\n",
            CMD.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    )
    .expect("Dockerfile");
    let start = Instant::now();
    let out =
        w.ns.cmd(stargaze_bin())
            .arg("build")
            .arg(&ctx)
            .arg("--root")
            .arg(d.join("root"))
            .arg(format!("--oci-worker-snapshotter={snapshotter}"))
            .arg("--oci-worker-gc=false")
            .output()
            .expect("stargaze build");
    let t = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("12345"),
        "build failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = text
        .lines()
        .filter(|l| l.starts_with("built in") || l.starts_with("lazy base layers"))
        .collect::<Vec<_>>()
        .join("; ");
    (t, summary)
}

/// Cold builds: the stargz snapshotter on the eStargz image against overlayfs with a full
/// pull of the gzip image (goal: ratio <= 0.3).
fn build() {
    let Some(w) = wan("build") else {
        return;
    };
    if !have("runc") {
        println!("build: SKIPPED: needs runc");
        return;
    }
    let work = tempfile::tempdir().expect("temp");
    println!(
        "build: `FROM debian bookworm + python3` / `RUN {}`, link {RATE_MBIT} Mbit/s, {} ms each way, fresh worker root each run",
        CMD.join(" "),
        DELAY.as_millis()
    );
    let (mut lazy, mut full) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let (t, s) = cold_build(&w, work.path(), &format!("sg{i}"), &w.esgz, "stargz");
        println!("build: stargz run {i}: {t:.2} s ({s})");
        lazy.push(t);
        let (t, s) = cold_build(&w, work.path(), &format!("ov{i}"), &w.plain, "overlayfs");
        println!("build: overlayfs run {i}: {t:.2} s ({s})");
        full.push(t);
    }
    let (l, f) = (median(lazy), median(full));
    println!(
        "build: stargz (lazy base) {l:.2} s vs overlayfs (full pull) {f:.2} s: ratio {:.2} (goal <= 0.3)",
        l / f
    );
}

fn main() {
    if stargaze_suite::bench_selection()("build") {
        build();
    }
}
