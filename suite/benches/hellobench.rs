//! HelloBench-style cold starts across workloads: an interpreter, a compiler, a JIT runtime
//! (node, java), a database server start, a web server's first answer and a three-layer image
//! (`suite/src/bench/workloads.rs`; Debian bookworm + apt, built once under
//! `target/bench-cache/hellobench/`, never committed). Each image is converted by the reference
//! converter (`ctr-remote image convert --estargz --oci`, "ref") and by `stargaze convert`
//! ("ours"); both are served by the built-in registry behind the emulated link (delaying proxy
//! in a shaped network namespace, `suite/src/netem.rs`). Per workload and converter, from wiped
//! state every run (fresh containerd root, snapshotter roots, stargaze cache and run dir):
//! (a) full pull: `ctr image pull` + `ctr run` (overlayfs); a second, warm `ctr run` gives the
//!     workload's own run time;
//! (b) the reference `containerd-stargz-grpc` as containerd's proxy snapshotter
//!     (`ctr-remote image rpull` + `ctr run --snapshotter=stargz`);
//! (c) `stargaze snapshotter serve` in the same place;
//! (d) `stargaze mount` (`--writable` where the workload writes) + chroot with /proc and a
//!     container-like /dev (tmpfs with runc's nodes, /dev/shm) mounted inside.
//! The figure is the time to the first byte of stdout. Bytes are counted at the proxy for every
//! mode, up to the first output byte. One more (d) run without background fetch and without
//! FUSE passthrough (the daemon never sees a passthrough file's reads), recording the files
//! opened, gives the chunks read (`chunk_bytes_read` from `stargaze stats` when the
//! binary reports it, else an upper bound: the smaller of the TOC's chunks of the opened
//! files, whole, and the bytes that run fetched) and so the physical limit
//! (`suite/src/bench/limit.rs`). Prints a line per run and ends with a markdown table.
//!
//! Run (root): `cargo build --release -p stargaze && scripts/build-reference.sh &&
//! cargo bench --bench hellobench`. Environment: `HELLOBENCH_RATES=10,100,1000` (Mbit/s,
//! default 100; 20 ms each way always), `HELLOBENCH_WORKLOADS=python,gcc,…`,
//! `HELLOBENCH_CONVERTERS=ref,ours`, `HELLOBENCH_MODES=a,b,c,d` (a list with none of them,
//! e.g. `n`, runs only the chunks-read run), `HELLOBENCH_RUNS=N` (default
//! 3), `HELLOBENCH_FLAGS` (extra `stargaze mount` flags), `HELLOBENCH_SNAPSHOTTER_FLAGS`,
//! `HELLOBENCH_STATS_DIR` (keeps each (d) run's stats, timeline and server log there).

use stargaze_suite::bench::limit::{
    chunk_bytes_from_stats, chunk_bytes_of_files, layer_count, physical_limit,
};
use stargaze_suite::bench::{
    first_output, first_output_with, lazy_run, serve, stats_json, wan_prerequisites,
    workload_images, Wan, Workload, WorkloadImages, DELAY, RUNS, WORKLOADS,
};
use stargaze_suite::mounts::{container_dev, detach_under};
use stargaze_suite::servers::StargazeSnapshotter;
use stargaze_suite::{
    have, median, reference_stargz_grpc, run, stargaze_bin, Containerd, ReferenceStargz,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A comma-separated selection from the environment, or `all` when unset.
fn selection(var: &str, all: &[&str]) -> Vec<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => all.iter().map(|s| s.to_string()).collect(),
    }
}

fn words(var: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// One timed run: seconds to first output and bytes the registry sent until then.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    bytes: u64,
}

/// The medians of one mode.
#[derive(Debug, Clone, Copy)]
struct ModeResult {
    t: f64,
    mb: f64,
}

fn summarize(v: &[Sample]) -> Option<ModeResult> {
    if v.is_empty() {
        return None;
    }
    Some(ModeResult {
        t: median(v.iter().map(|s| s.t).collect()),
        mb: median(v.iter().map(|s| s.bytes as f64 / 1e6).collect()),
    })
}

/// Everything measured for one workload, converter and rate.
#[derive(Debug, Default)]
struct Row {
    a: Option<ModeResult>,
    warm: Option<f64>,
    b: Option<ModeResult>,
    c: Option<ModeResult>,
    d: Option<ModeResult>,
    /// Compressed bytes of the chunks read, and how they were found.
    chunks: Option<(u64, &'static str)>,
    /// Bytes the (d) run without background fetch took.
    needed: Option<u64>,
    layers: usize,
}

/// A shell-free environment for chroot runs: what a container gets from the image config.
fn image_env(c: &mut Command) -> &mut Command {
    c.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
}

/// (a): full pull + run, then a warm run; returns (cold sample, warm seconds).
fn full_pull(w: &Wan, image: &str, wl: &Workload, id: &str) -> (Sample, f64) {
    let ctd = Containerd::start_in(Some(&w.ns.path()));
    let start = Instant::now();
    let bytes0 = w.bytes_down();
    let mut pull = w.ns.cmd("ctr");
    pull.arg("--address")
        .arg(&ctd.socket)
        .args(["image", "pull", "--plain-http", image]);
    run(&mut pull);
    let mut r = w.ns.cmd("ctr");
    r.arg("--address")
        .arg(&ctd.socket)
        .args(["run", "--rm", image, id])
        .args(wl.cmd);
    let mut bytes = 0;
    let t = first_output_with(start, &mut r, &mut || bytes = w.bytes_down() - bytes0);
    let mut r = w.ns.cmd("ctr");
    r.arg("--address")
        .arg(&ctd.socket)
        .args(["run", "--rm", image, &format!("{id}-warm")])
        .args(wl.cmd);
    let warm = first_output(Instant::now(), &mut r);
    drop(ctd);
    (Sample { t, bytes }, warm)
}

/// The mounts of one (d) run, undone on drop (also after a failure): the container-like
/// /proc, /dev and /dev/shm inside, then `stargaze umount`, then anything left.
struct ChrootMount {
    mnt: PathBuf,
    run_dir: PathBuf,
}

impl Drop for ChrootMount {
    fn drop(&mut self) {
        for sub in ["dev", "proc"] {
            detach_under(&self.mnt.join(sub));
        }
        let _ = Command::new(stargaze_bin())
            .env("STARGAZE_RUN_DIR", &self.run_dir)
            .arg("umount")
            .arg(&self.mnt)
            .output();
        detach_under(&self.mnt);
    }
}

/// (d): `stargaze mount` + chroot; returns the sample and, after a stats refresh when
/// `want_stats`, the mount's `stats --json`, and the seconds `stargaze mount` took.
fn mount_chroot(
    w: &Wan,
    image: &str,
    wl: &Workload,
    dir: &Path,
    extra: &[String],
    want_stats: bool,
) -> (Sample, serde_json::Value, f64) {
    // Never remove through a mount an earlier run left behind.
    detach_under(dir);
    let _ = std::fs::remove_dir_all(dir);
    let mnt = dir.join("rootfs");
    let run_dir = dir.join("run");
    let start = Instant::now();
    let bytes0 = w.bytes_down();
    let mut mount = w.ns.cmd(stargaze_bin());
    mount
        .env("STARGAZE_RUN_DIR", &run_dir)
        .args(["mount", image])
        .arg(&mnt)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(extra);
    if wl.writable {
        mount.arg("--writable");
    }
    run(&mut mount);
    let mounted = start.elapsed().as_secs_f64();
    let guard = ChrootMount {
        mnt: mnt.clone(),
        run_dir: run_dir.clone(),
    };
    run(Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(mnt.join("proc")));
    container_dev(&mnt.join("dev"));
    let mut c = w.ns.cmd("chroot");
    c.arg(&mnt).args(wl.cmd);
    image_env(&mut c);
    let mut bytes = 0;
    let t = first_output_with(start, &mut c, &mut || bytes = w.bytes_down() - bytes0);
    let keep = std::env::var_os("HELLOBENCH_STATS_DIR").map(PathBuf::from);
    let stats = if want_stats || keep.is_some() {
        std::thread::sleep(Duration::from_millis(1200)); // one stats.json refresh
        let stats = stats_json(&run_dir, &mnt);
        if let Some(keep) = keep {
            save_stats(&keep, dir, &run_dir, &mnt, &stats);
        }
        stats
    } else {
        serde_json::Value::Null
    };
    drop(guard);
    // Each run has its own dir; its cache (whole layers after background fetch) goes now.
    detach_under(dir);
    let _ = std::fs::remove_dir_all(dir);
    (Sample { t, bytes }, stats, mounted)
}

/// With `HELLOBENCH_STATS_DIR`, each (d) run's `stats --json`, `stats --timeline` and server
/// log are kept there as `NAME.json` / `NAME.timeline.txt` / `NAME.log`, NAME being the run's work dir name (workload,
/// converter, rate and run): what the diagnosis of a slow workload reads afterwards.
fn save_stats(keep: &Path, dir: &Path, run_dir: &Path, mnt: &Path, stats: &serde_json::Value) {
    let name = dir
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy().into_owned());
    let _ = std::fs::create_dir_all(keep);
    let _ = std::fs::write(
        keep.join(format!("{name}.json")),
        serde_json::to_vec_pretty(stats).unwrap_or_default(),
    );
    if let Ok(out) = Command::new(stargaze_bin())
        .env("STARGAZE_RUN_DIR", run_dir)
        .args(["stats", "--timeline"])
        .arg(mnt)
        .output()
    {
        let _ = std::fs::write(keep.join(format!("{name}.timeline.txt")), out.stdout);
    }
    // The server's log (one line per range request with `--log stargaze_fs=debug`).
    for e in std::fs::read_dir(run_dir.join("mounts"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::copy(e.path().join("log"), keep.join(format!("{name}.log")));
    }
}

/// Runs one mode's measurement; a failure (a panic: the command failed, a mount did not come
/// up) is printed and leaves that mode's cells empty instead of ending the whole matrix. The
/// guards inside (mounts, daemons) are dropped while unwinding, so nothing stays behind.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(_) => {
            println!("{what} FAILED (the panic message is on stderr)");
            None
        }
    }
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

fn fmt_t(m: Option<ModeResult>) -> String {
    m.map_or("–".into(), |m| format!("{:.2}", m.t))
}

fn fmt_mb(m: Option<ModeResult>) -> String {
    m.map_or("–".into(), |m| format!("{:.1}", m.mb))
}

#[allow(clippy::too_many_lines)]
fn measure(
    w: &Wan,
    wl: &Workload,
    conv: &str,
    images: &WorkloadImages,
    modes: &[String],
    runs: usize,
    work: &Path,
) -> Row {
    let (repo, layout, tag) = match conv {
        "ref" => (format!("bench/{}-ref", wl.name), &images.reference, "esgz"),
        _ => (format!("bench/{}", wl.name), &images.layout, "esgz"),
    };
    let image = format!("{}/{repo}:{tag}", w.host);
    let label = format!("hellobench: {} Mbit/s {} {conv}", w.rate_mbit, wl.name);
    let tagname = format!("{}mbit-{}-{conv}", w.rate_mbit, wl.name);
    let mut row = Row {
        layers: layer_count(layout, tag),
        ..Row::default()
    };
    let has = |m: &str| modes.iter().any(|x| x == m);
    let ctd_tools = have("containerd") && have("ctr") && have("ctr-remote") && have("runc");
    let ns_path = w.ns.path();

    if has("a") && ctd_tools {
        let mut v = Vec::new();
        let mut warm = Vec::new();
        for i in 0..runs {
            let Some((s, wt)) = guarded(&format!("{label} (a) run {}", i + 1), || {
                full_pull(w, &image, wl, &format!("hb-full{i}"))
            }) else {
                continue;
            };
            println!(
                "{label} (a) run {}/{runs}: {:.2} s, {:.1} MB; warm run {wt:.2} s",
                i + 1,
                s.t,
                mb(s.bytes)
            );
            v.push(s);
            warm.push(wt);
        }
        row.a = summarize(&v);
        row.warm = (!warm.is_empty()).then(|| median(warm));
    }
    if has("b") && ctd_tools {
        if let Some(bin) = reference_stargz_grpc() {
            let mut v = Vec::new();
            for i in 0..runs {
                let Some(r) = guarded(&format!("{label} (b) run {}", i + 1), || {
                    lazy_run(
                        w,
                        &image,
                        wl.cmd,
                        &format!("hb-ref{i}"),
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
                    )
                }) else {
                    continue;
                };
                println!(
                    "{label} (b) run {}/{runs}: {:.2} s (rpull {:.2} s), {:.1} MB",
                    i + 1,
                    r.first,
                    r.pulled,
                    mb(r.bytes_at_first)
                );
                v.push(Sample {
                    t: r.first,
                    bytes: r.bytes_at_first,
                });
            }
            row.b = summarize(&v);
        } else {
            println!(
                "{label} (b) SKIPPED: no containerd-stargz-grpc (run scripts/build-reference.sh)"
            );
        }
    }
    if has("c") && ctd_tools {
        let extra = words("HELLOBENCH_SNAPSHOTTER_FLAGS");
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut v = Vec::new();
        for i in 0..runs {
            let Some(r) = guarded(&format!("{label} (c) run {}", i + 1), || {
                lazy_run(
                    w,
                    &image,
                    wl.cmd,
                    &format!("hb-sg{i}"),
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
                )
            }) else {
                continue;
            };
            println!(
                "{label} (c) run {}/{runs}: {:.2} s (rpull {:.2} s), {:.1} MB",
                i + 1,
                r.first,
                r.pulled,
                mb(r.bytes_at_first)
            );
            v.push(Sample {
                t: r.first,
                bytes: r.bytes_at_first,
            });
        }
        row.c = summarize(&v);
    }
    if (has("a") || has("b") || has("c")) && !ctd_tools {
        println!("{label} (a)-(c) SKIPPED: need containerd, ctr, ctr-remote, runc");
    }
    if has("d") {
        let extra = words("HELLOBENCH_FLAGS");
        let mut v = Vec::new();
        for i in 0..runs {
            let Some((s, _, mounted)) = guarded(&format!("{label} (d) run {}", i + 1), || {
                mount_chroot(
                    w,
                    &image,
                    wl,
                    &work.join(format!("{tagname}-d{i}")),
                    &extra,
                    false,
                )
            }) else {
                continue;
            };
            println!(
                "{label} (d) run {}/{runs}: {:.2} s (mount {mounted:.2} s), {:.1} MB",
                i + 1,
                s.t,
                mb(s.bytes)
            );
            v.push(s);
        }
        row.d = summarize(&v);
    }
    // What the workload reads: one (d) run without background fetch, recording opened files.
    let record = work.join("opened.txt");
    let _ = std::fs::remove_file(&record);
    let mut extra = words("HELLOBENCH_FLAGS");
    extra.push("--no-background-fetch".into());
    // A file opened by passthrough is read by the kernel from the local copy, unseen by the
    // daemon, so its chunks would be missing from `chunk_bytes_read`.
    extra.push("--no-passthrough".into());
    extra.push("--record-access".into());
    extra.push(record.display().to_string());
    let Some((s, stats, _)) = guarded(&format!("{label} needed-only (d) run"), || {
        mount_chroot(
            w,
            &image,
            wl,
            &work.join(format!("{tagname}-needed")),
            &extra,
            true,
        )
    }) else {
        return row;
    };
    row.needed = Some(s.bytes);
    let opened: Vec<String> = std::fs::read_to_string(&record)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    // Without the stats field, two upper bounds: the opened files' chunks taken whole (too
    // much where a large file is only partly read, e.g. mmap'd) and what the no-background
    // run fetched (too much by whatever the read path prefetched); the smaller one is used.
    row.chunks = chunk_bytes_from_stats(&stats)
        .map(|b| (b, "stats chunk_bytes_read"))
        .or_else(|| {
            chunk_bytes_of_files(layout, tag, &opened).map(|b| {
                if b <= s.bytes {
                    (b, "bound: TOC chunks of the opened files, whole")
                } else {
                    (s.bytes, "bound: fetched by the no-background (d) run")
                }
            })
        });
    let layers = stats["layers"].as_array().cloned().unwrap_or_default();
    let sum = |k: &str| -> u64 { layers.iter().map(|l| l[k].as_u64().unwrap_or(0)).sum() };
    println!(
        "{label} needed-only (d) run: {:.2} s, {:.1} MB through the link, stats: {} requests, {:.1} MB fetched, {:.1} MB served; {} files opened; chunks read {}",
        s.t,
        mb(s.bytes),
        sum("requests"),
        mb(sum("bytes_fetched")),
        mb(sum("bytes_served")),
        opened.len(),
        row.chunks
            .map_or("n/a".into(), |(b, how)| format!("{:.1} MB ({how})", mb(b)))
    );
    row
}

fn table(rate: f64, rows: &BTreeMap<(usize, String), (Workload, Row)>, rtt: f64) {
    println!();
    println!(
        "Link {rate} Mbit/s, {} ms each way. Times are seconds to the first output byte (medians); MB are fetched through the link until then.",
        DELAY.as_millis()
    );
    println!();
    println!("| workload | conv | (a) full pull | warm run | (b) reference | (c) stargaze snapshotter | (d) stargaze mount | MB a / b / c / d | MB chunks read | limit | c / limit | c / b | c − d | c extra bytes |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ((_, conv), (wl, r)) in rows {
        let limit = match (r.chunks, r.warm) {
            (Some((b, _)), Some(warm)) => Some(physical_limit(b, r.layers, rate, rtt, warm)),
            _ => None,
        };
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "–".into(),
        };
        let c = r.c.map(|m| m.t);
        let extra = match (r.c, r.chunks) {
            (Some(m), Some((b, _))) if b > 0 => {
                format!("{:+.0}%", 100.0 * (m.mb * 1e6 - b as f64) / b as f64)
            }
            _ => "–".into(),
        };
        println!(
            "| {} | {conv} | {} | {} | {} | {} | {} | {} / {} / {} / {} | {} | {} | {} | {} | {} | {} |",
            wl.what,
            fmt_t(r.a),
            r.warm.map_or("–".into(), |t| format!("{t:.2}")),
            fmt_t(r.b),
            fmt_t(r.c),
            fmt_t(r.d),
            fmt_mb(r.a),
            fmt_mb(r.b),
            fmt_mb(r.c),
            fmt_mb(r.d),
            r.chunks.map_or("n/a".into(), |(b, _)| format!("{:.1}", mb(b))),
            limit.map_or("–".into(), |l| format!("{l:.2}")),
            ratio(c, limit),
            ratio(c, r.b.map(|m| m.t)),
            match (r.c, r.d) {
                (Some(c), Some(d)) => format!("{:+.2}", c.t - d.t),
                _ => "–".into(),
            },
            extra
        );
    }
    println!();
    println!("Goals for (c): c / limit ≤ 1.3, c / b ≤ 1, c − d ≤ 0.15 s, extra bytes ≤ 10%. Limit = chunks read ÷ rate + (2 + layers + 1) RTT + warm run (a).");
}

fn hellobench() {
    if !wan_prerequisites("hellobench") {
        return;
    }
    let names: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
    let chosen = selection("HELLOBENCH_WORKLOADS", &names);
    let workloads: Vec<Workload> = WORKLOADS
        .iter()
        .filter(|w| chosen.iter().any(|c| c == w.name))
        .copied()
        .collect();
    let converters = selection("HELLOBENCH_CONVERTERS", &["ref", "ours"]);
    let modes = selection("HELLOBENCH_MODES", &["a", "b", "c", "d"]);
    let runs = std::env::var("HELLOBENCH_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(RUNS);
    let rates: Vec<f64> = selection("HELLOBENCH_RATES", &["100"])
        .iter()
        .filter_map(|r| r.parse().ok())
        .collect();
    if !(have("ctr-remote") && have("containerd")) {
        println!("hellobench: SKIPPED: needs containerd and ctr-remote (Debian's stargz-snapshotter) to convert the images");
        return;
    }
    let built: Vec<(Workload, WorkloadImages)> =
        workloads.iter().map(|w| (*w, workload_images(w))).collect();
    let mut repos: Vec<(String, PathBuf)> = Vec::new();
    for (w, i) in &built {
        repos.push((format!("bench/{}", w.name), i.layout.clone()));
        repos.push((format!("bench/{}-ref", w.name), i.reference.clone()));
    }
    let repo_refs: Vec<(&str, PathBuf)> =
        repos.iter().map(|(r, p)| (r.as_str(), p.clone())).collect();
    println!(
        "hellobench: {} workloads × converters {converters:?} × modes {modes:?}, {runs} runs each, rates {rates:?} Mbit/s, {} ms each way; stargaze {}",
        built.len(),
        DELAY.as_millis(),
        stargaze_bin().display()
    );
    // Both daemons log at info, the reference's default.
    std::env::set_var("STARGAZE_SNAPSHOTTER_LOG", "info");
    let work = tempfile::tempdir().expect("temp");
    let mut tables = Vec::new();
    for rate in rates {
        let w = serve(&repo_refs, rate);
        let mut rows = BTreeMap::new();
        for (k, (wl, images)) in built.iter().enumerate() {
            for conv in &converters {
                let r = measure(&w, wl, conv, images, &modes, runs, work.path());
                rows.insert((k, conv.clone()), (*wl, r));
            }
        }
        let rtt = w.rtt();
        drop(w);
        table(rate, &rows, rtt);
        tables.push((rate, rows, rtt));
    }
    // Nothing of the runs stays mounted when the work dir goes.
    detach_under(work.path());
    if tables.len() > 1 {
        println!("\nhellobench: all tables again:");
        for (rate, rows, rtt) in &tables {
            table(*rate, rows, *rtt);
        }
    }
}

fn main() {
    if stargaze_suite::bench_selection()("hellobench") {
        hellobench();
    }
}
