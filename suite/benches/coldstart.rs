//! Cold start under an emulated WAN: time from "pull/mount requested" to the first output
//! byte of `python3 -c 'print(12345)'` in a debootstrap'd Debian bookworm with python3 (~170 MB
//! unpacked; built once with debootstrap + apt into `target/bench-cache/coldstart/`, never
//! committed), served by the built-in registry behind a delaying proxy (20 ms each way) that
//! listens inside a private network namespace whose loopback is shaped with `tc tbf` to
//! 100 Mbit/s. Every run starts from wiped state. Three ways, three runs each (medians):
//! (a) full pull + unpack + run: containerd `ctr image pull` + `ctr run` (overlayfs);
//! (b) the reference lazy snapshotter: `containerd-stargz-grpc` (scripts/build-reference.sh)
//!     with `ctr-remote image rpull` + `ctr run --snapshotter=stargz`;
//! (c) `stargaze mount` + `chroot DIR python3 …`.
//! Prints each time, the ratios c/b (goal <= 0.5) and c/a (goal <= 0.15), the physical limit
//! of (c) (compressed bytes it fetched / link rate + 4 round trips: connect, manifest, TOC,
//! data) and (c) as a multiple of it, and bytes fetched next to bytes the program read.
//! The shared parts (image, WAN, the run through containerd) are in `suite/src/bench/`.
//!
//! Run (root): `cargo build --release -p stargaze && scripts/build-reference.sh &&
//! cargo bench --bench coldstart`; with `STARGAZE_BIN=$PWD/target/dist/stargaze` (after
//! `cargo build --profile dist -p stargaze`) it runs the deployable build instead of the test
//! build. `COLDSTART_ONLY=c` skips (a) and (b), `COLDSTART_FLAGS` adds mount flags,
//! `COLDSTART_LOG_DIR` keeps the servers' logs.

use stargaze_suite::bench::{
    first_output, stats_json, through_containerd, wan, CMD, DELAY, RATE_MBIT, RUNS,
};
use stargaze_suite::{
    have, median, reference_stargz_grpc, run, stargaze_bin, Containerd, ReferenceStargz,
};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn coldstart() {
    let Some(w) = wan("coldstart") else {
        return;
    };
    let work = tempfile::tempdir().expect("temp");
    let (ns, host, plain, esgz) = (&w.ns, &w.host, &w.plain, &w.esgz);
    println!(
        "coldstart: image debian bookworm + python3, link {RATE_MBIT} Mbit/s, {} ms each way; `{}`",
        DELAY.as_millis(),
        CMD.join(" ")
    );

    // (c) stargaze. COLDSTART_ONLY=c skips (a) and (b); COLDSTART_FLAGS adds mount flags;
    // COLDSTART_LOG_DIR keeps the servers' logs.
    let only_c = std::env::var("COLDSTART_ONLY").is_ok_and(|v| v == "c");
    let extra: Vec<String> = std::env::var("COLDSTART_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut ours = Vec::new();
    let mut last_stats = serde_json::Value::Null;
    // One more run without background fetching measures what the command itself needed.
    for i in 0..=RUNS {
        let needed_only = i == RUNS;
        let d = work.path().join(format!("sg{i}"));
        let mnt = d.join("rootfs");
        let run_dir = d.join("run");
        let start = Instant::now();
        let mut mount = ns.cmd(stargaze_bin());
        mount
            .env("STARGAZE_RUN_DIR", &run_dir)
            .args(["mount", esgz.as_str()])
            .arg(&mnt)
            .arg("--cache-dir")
            .arg(d.join("cache"))
            .args(&extra);
        if needed_only {
            mount.arg("--no-background-fetch");
        }
        run(&mut mount);
        let mounted = start.elapsed().as_secs_f64();
        let t = first_output(start, Command::new("chroot").arg(&mnt).args(CMD));
        if needed_only {
            println!("coldstart: (c) without background fetch: {t:.2} s (mount ready after {mounted:.2} s)");
        } else {
            ours.push(t);
        }
        std::thread::sleep(Duration::from_millis(1200)); // one stats.json refresh
        last_stats = stats_json(&run_dir, &mnt);
        // COLDSTART_LOG_DIR keeps each server's log (with COLDSTART_FLAGS="--log ...").
        if let Some(keep) = std::env::var_os("COLDSTART_LOG_DIR") {
            for m in std::fs::read_dir(run_dir.join("mounts"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = std::fs::create_dir_all(&keep);
                let _ = std::fs::copy(
                    m.path().join("log"),
                    Path::new(&keep).join(format!("sg{i}.log")),
                );
            }
        }
        run(Command::new(stargaze_bin())
            .env("STARGAZE_RUN_DIR", &run_dir)
            .arg("umount")
            .arg(&mnt));
    }
    let c = median(ours.clone());
    println!("coldstart: (c) stargaze mount + chroot run: {c:.2} s (runs {ours:.2?})");

    // (b) reference and (a) full pull, when containerd is here.
    let mut b_time = None;
    let mut a_time = None;
    if only_c {
        println!("coldstart: (a), (b) skipped (COLDSTART_ONLY=c)");
    } else if have("containerd") && have("ctr") && have("ctr-remote") && have("runc") {
        if let Some(bin) = reference_stargz_grpc() {
            let ns_path = ns.path();
            let v: Vec<f64> = (0..RUNS)
                .map(|i| {
                    through_containerd(
                        &w,
                        &format!("ref{i}"),
                        &|ctd| Box::new(ReferenceStargz::start_in(&bin, ctd, host, Some(&ns_path))),
                        &|d| d.downcast_ref::<ReferenceStargz>().map_or(0, |r| r.pid()),
                        &|_| Vec::new(),
                    )
                    .1
                })
                .collect();
            let b = median(v.clone());
            println!("coldstart: (b) reference containerd-stargz-grpc, rpull + ctr run: {b:.2} s (runs {v:.2?})");
            b_time = Some(b);
        } else {
            println!("coldstart: (b) SKIPPED: no containerd-stargz-grpc (Go missing? run scripts/build-reference.sh)");
        }
        let mut v = Vec::new();
        for i in 0..RUNS {
            let ctd = Containerd::start_in(Some(&ns.path()));
            let start = Instant::now();
            let mut pull = ns.cmd("ctr");
            pull.arg("--address")
                .arg(&ctd.socket)
                .args(["image", "pull", "--plain-http", plain]);
            run(&mut pull);
            let mut r = ns.cmd("ctr");
            r.arg("--address")
                .arg(&ctd.socket)
                .args(["run", "--rm", plain, &format!("full{i}")])
                .args(CMD);
            v.push(first_output(start, &mut r));
            drop(ctd);
        }
        let a = median(v.clone());
        println!("coldstart: (a) full pull + unpack + run (containerd, overlayfs): {a:.2} s (runs {v:.2?})");
        a_time = Some(a);
    } else {
        println!("coldstart: (a), (b) SKIPPED: need containerd, ctr, ctr-remote, runc");
    }

    let layers = last_stats["layers"].as_array().cloned().unwrap_or_default();
    let fetched: u64 = layers
        .iter()
        .map(|l| l["bytes_fetched"].as_u64().unwrap_or(0))
        .sum();
    let served: u64 = layers
        .iter()
        .map(|l| l["bytes_served"].as_u64().unwrap_or(0))
        .sum();
    let requests: u64 = layers
        .iter()
        .map(|l| l["requests"].as_u64().unwrap_or(0))
        .sum();
    let size: u64 = layers.iter().map(|l| l["size"].as_u64().unwrap_or(0)).sum();
    let rtt = 2.0 * DELAY.as_secs_f64();
    let limit = fetched as f64 * 8.0 / (RATE_MBIT * 1e6) + 4.0 * rtt;
    println!(
        "coldstart: (c) the command needed {:.1} MB of the {:.1} MB image ({:.1}%) in {requests} requests; it read {:.1} MB",
        fetched as f64 / 1e6,
        size as f64 / 1e6,
        100.0 * fetched as f64 / size.max(1) as f64,
        served as f64 / 1e6
    );
    println!("coldstart: physical limit for (c): {limit:.2} s ({:.1} MB at {RATE_MBIT} Mbit/s + 4 RTT); (c) is {:.1}x of it", fetched as f64 / 1e6, c / limit);
    if let Some(b) = b_time {
        println!(
            "RATIO coldstart: stargaze / reference = {:.2} (goal <= 0.5)",
            c / b
        );
    }
    if let Some(a) = a_time {
        println!(
            "RATIO coldstart: stargaze / full pull = {:.2} (goal <= 0.15)",
            c / a
        );
    }
    drop(w);
}

fn main() {
    if stargaze_suite::bench_selection()("coldstart") {
        coldstart();
    }
}
