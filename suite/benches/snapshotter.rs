//! stargaze's snapshotter (`stargaze snapshotter serve`) and the reference
//! (`containerd-stargz-grpc`) side by side as containerd's proxy snapshotter on the cold-start
//! bench's WAN and image (`suite/src/bench/`): `ctr-remote image rpull` time, time to the first
//! output of `ctr run`, and the daemon's RSS after the run, alone and with the FUSE holder
//! stargaze runs beside it (medians of 3); ratios (goals: faster, RSS at most half). Both
//! daemons log at info level.
//!
//! Run (root): `cargo build --release -p stargaze && scripts/build-reference.sh &&
//! cargo bench --bench snapshotter`; `STARGAZE_BIN=$PWD/target/dist/stargaze` runs the
//! deployable build, `SNAPSHOTTER_RSS_DETAIL=1` prints more memory figures,
//! `SNAPSHOTTER_FLAGS` adds flags to ours, `SNAPSHOTTER_PAUSE_SECS` keeps both running after
//! each measurement.

use stargaze_suite::bench::{through_containerd, wan, CMD, DELAY, RATE_MBIT, RUNS};
use stargaze_suite::servers::StargazeSnapshotter;
use stargaze_suite::{have, median, reference_stargz_grpc, ReferenceStargz};

/// stargaze's snapshotter next to the reference, both as containerd's proxy snapshotter.
fn snapshotter() {
    let Some(w) = wan("snapshotter") else {
        return;
    };
    if !(have("containerd") && have("ctr") && have("ctr-remote") && have("runc")) {
        println!("snapshotter: SKIPPED: need containerd, ctr, ctr-remote, runc");
        return;
    }
    let Some(bin) = reference_stargz_grpc() else {
        println!("snapshotter: SKIPPED: no containerd-stargz-grpc (Go missing? run scripts/build-reference.sh)");
        return;
    };
    println!(
        "snapshotter: ctr-remote rpull + ctr run --snapshotter=stargz `{}`, debian bookworm + python3, {RATE_MBIT} Mbit/s, {} ms each way",
        CMD.join(" "),
        DELAY.as_millis()
    );
    let ns_path = w.ns.path();
    // Both daemons log at info, the reference's default (the tests run ours at debug).
    std::env::set_var("STARGAZE_SNAPSHOTTER_LOG", "info");
    // SNAPSHOTTER_FLAGS adds flags to `stargaze snapshotter serve` (experiments).
    let extra: Vec<String> = std::env::var("SNAPSHOTTER_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..RUNS {
        ours.push(through_containerd(
            &w,
            &format!("sg{i}"),
            &|ctd| Box::new(StargazeSnapshotter::start_in(ctd, &extra, Some(&ns_path))),
            &|d| {
                d.downcast_ref::<StargazeSnapshotter>()
                    .map_or(0, |s| s.pid())
            },
            &|d| {
                d.downcast_ref::<StargazeSnapshotter>()
                    .and_then(|s| s.holder_pid())
                    .into_iter()
                    .collect()
            },
        ));
        theirs.push(through_containerd(
            &w,
            &format!("ref{i}"),
            &|ctd| {
                Box::new(ReferenceStargz::start_in(
                    &bin,
                    ctd,
                    &w.host,
                    Some(&ns_path),
                ))
            },
            &|d| d.downcast_ref::<ReferenceStargz>().map_or(0, |r| r.pid()),
            &|_| Vec::new(),
        ));
    }
    let col = |v: &[(f64, f64, f64, f64, f64)], k: usize| -> f64 {
        median(v.iter().map(|t| [t.0, t.1, t.2, t.3, t.4][k]).collect())
    };
    for (k, what, unit) in [
        (0, "rpull", "s"),
        (1, "time to first output", "s"),
        (2, "daemon RSS after the run", "MB"),
        (
            3,
            "resident with helper processes (our FUSE holder), shared pages once",
            "MB",
        ),
        (4, "PSS with helper processes (shared pages split)", "MB"),
    ] {
        let (a, b) = (col(&ours, k), col(&theirs, k));
        println!("snapshotter: {what}: stargaze {a:.2} {unit} vs reference {b:.2} {unit}");
        println!(
            "RATIO snapshotter {what}: stargaze / reference = {:.2}{}",
            a / b,
            if k >= 2 {
                " (goal <= 0.5)"
            } else {
                " (goal < 1)"
            }
        );
    }
    drop(w);
}

fn main() {
    if stargaze_suite::bench_selection()("snapshotter") {
        snapshotter();
    }
}
