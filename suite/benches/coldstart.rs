//! Cold start under an emulated WAN, warm reads through a mount, and cold builds.
//!
//! `coldstart`: time from "pull/mount requested" to the first output byte of
//! `python3 -c 'print(12345)'` in a debootstrap'd Debian bookworm with python3 (~170 MB
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
//!
//! `warm`: sequential (dd, 1 MiB blocks) and random (fio 4 KiB randread, when installed)
//! read throughput of a fully fetched 256 MiB file through a lazy mount, page cache dropped,
//! next to the same file on local disk.
//!
//! `snapshotter`: stargaze's snapshotter (`stargaze snapshotter serve`) and the reference
//! (`containerd-stargz-grpc`) side by side as containerd's proxy snapshotter on the same WAN
//! and image: `ctr-remote image rpull` time, time to the first output of `ctr run`, and the
//! daemon's RSS after the run, alone and with the FUSE holder stargaze runs beside it (medians
//! of 3); ratios (goals: faster, RSS at most half). Both daemons log at info level.
//!
//! `build`: a cold `stargaze build` of `FROM <that image>` + `RUN python3 -c …` on the same
//! WAN, each run from an empty worker root: the stargz snapshotter on the eStargz image
//! (the base is mounted lazily) against overlayfs on the gzip image (full pull and unpack);
//! medians of 3 and their ratio (goal <= 0.3).
//!
//! Run (root): `cargo build --release -p stargaze && scripts/build-reference.sh &&
//! cargo bench --bench coldstart [-- coldstart|warm|snapshotter|build]`; with
//! `STARGAZE_BIN=$PWD/target/dist/stargaze` (after `cargo build --profile dist -p stargaze`)
//! it runs the deployable build instead of the test build.

use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_suite::netem::{DelayProxy, Netns};
use stargaze_suite::servers::StargazeSnapshotter;
use stargaze_suite::{
    bench_cache_dir, have, is_root, median, reference_stargz_grpc, run, stargaze_bin, Containerd,
    ReferenceStargz,
};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RATE_MBIT: f64 = 100.0;
const DELAY: Duration = Duration::from_millis(20);
const CMD: [&str; 3] = ["python3", "-c", "print(12345)"];
const RUNS: usize = 3;

/// The debian+python3 image as an OCI layout with tags `plain` (gzip) and `esgz`.
fn debian_image() -> PathBuf {
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

/// Seconds from `start` until `cmd` prints its first byte; the command must succeed.
fn first_output(start: Instant, cmd: &mut Command) -> f64 {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut b = [0u8; 1];
    let n = out.read(&mut b).expect("read");
    let t = start.elapsed().as_secs_f64();
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    let o = child.wait_with_output().expect("wait");
    assert!(
        n == 1 && o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    t
}

/// The emulated WAN: the bench image in the built-in registry, reached through a delaying
/// proxy inside a network namespace with a shaped loopback.
struct Wan {
    _work: tempfile::TempDir,
    _reg: BackgroundRegistry,
    ns: Netns,
    _proxy: DelayProxy,
    host: String,
    plain: String,
    esgz: String,
}

fn wan(what: &str) -> Option<Wan> {
    if !(is_root() && have("debootstrap") && have("ip") && have("tc") && have("nsenter")) {
        println!("{what}: SKIPPED: needs root, debootstrap, iproute2 (ip, tc) and nsenter");
        return None;
    }
    let layout = debian_image();
    let work = tempfile::tempdir().expect("temp");
    let root = work.path().join("registry");
    std::fs::create_dir_all(root.join("bench")).expect("root");
    std::os::unix::fs::symlink(&layout, root.join("bench/debian")).expect("symlink");
    let reg = BackgroundRegistry::start(
        RegistryOptions::new(&root),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("registry");
    let ns = Netns::create(Some(&format!("{RATE_MBIT}mbit")));
    let proxy = DelayProxy::start(&ns, reg.addr(), DELAY);
    let host = proxy.addr.to_string();
    Some(Wan {
        plain: format!("{host}/bench/debian:plain"),
        esgz: format!("{host}/bench/debian:esgz"),
        host,
        _work: work,
        _reg: reg,
        ns,
        _proxy: proxy,
    })
}

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

/// A "Key: N kB" figure of `/proc/PID/FILE`, in MB (0 when it cannot be read).
fn proc_mb(pid: u32, file: &str, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1000.0)
}

/// VmRSS of a process, MB.
fn rss_mb(pid: u32) -> f64 {
    proc_mb(pid, "status", "VmRSS:")
}

/// Proportional set size of a process, MB: its shared pages (the binary, libc) divided among
/// the processes that map them.
fn pss_mb(pid: u32) -> f64 {
    proc_mb(pid, "smaps_rollup", "Pss:")
}

/// Distinct physical pages resident in any of `pids`, MB: the group's memory with the pages
/// they share (the binary, libc, copy-on-write pages of a fork) counted once, which summing
/// RSS would count per process. Reads the frame numbers in `/proc/PID/pagemap` (root only);
/// 0 when they cannot be read.
fn resident_union_mb(pids: &[u32]) -> f64 {
    use std::os::unix::fs::FileExt;
    let mut frames = std::collections::HashSet::new();
    for pid in pids {
        let (Ok(maps), Ok(pagemap)) = (
            std::fs::read_to_string(format!("/proc/{pid}/maps")),
            std::fs::File::open(format!("/proc/{pid}/pagemap")),
        ) else {
            return 0.0;
        };
        for line in maps.lines() {
            let Some((start, end)) = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| {
                    Some((
                        u64::from_str_radix(a, 16).ok()?,
                        u64::from_str_radix(b, 16).ok()?,
                    ))
                })
            else {
                continue;
            };
            let mut buf = vec![0u8; ((end - start) / 4096 * 8) as usize];
            if pagemap.read_exact_at(&mut buf, start / 4096 * 8).is_err() {
                continue;
            }
            for e in buf.chunks_exact(8) {
                let e = u64::from_le_bytes(e.try_into().unwrap_or_default());
                let pfn = e & ((1 << 55) - 1);
                if e >> 63 == 1 && pfn != 0 {
                    frames.insert(pfn);
                }
            }
        }
    }
    frames.len() as f64 * 4096.0 / 1e6
}

/// One lazy pull + run through containerd with the proxy snapshotter started by `daemon`;
/// returns (rpull seconds, seconds to first output, daemon RSS MB after the run, resident MB
/// (each page once) and PSS MB of the daemon and its helper processes together).
fn through_containerd(
    w: &Wan,
    id: &str,
    daemon: &dyn Fn(&Containerd) -> Box<dyn std::any::Any>,
    pid: &dyn Fn(&dyn std::any::Any) -> u32,
    helpers: &dyn Fn(&dyn std::any::Any) -> Vec<u32>,
) -> (f64, f64, f64, f64, f64) {
    let ctd = Containerd::start_in(Some(&w.ns.path()));
    let d = daemon(&ctd);
    let start = Instant::now();
    let mut pull = w.ns.cmd("ctr-remote");
    pull.arg("--address")
        .arg(&ctd.socket)
        .args(["image", "rpull", "--plain-http", &w.esgz]);
    run(&mut pull);
    let pulled = start.elapsed().as_secs_f64();
    if std::env::var_os("SNAPSHOTTER_RSS_DETAIL").is_some() {
        println!("snapshotter: {id}: after rpull {:.1} MB", rss_mb(pid(&*d)));
    }
    let mut r = w.ns.cmd("ctr");
    r.arg("--address")
        .arg(&ctd.socket)
        .args(["run", "--rm", "--snapshotter=stargz", &w.esgz, id])
        .args(CMD);
    let first = first_output(start, &mut r);
    let rss = rss_mb(pid(&*d));
    let others = helpers(&*d);
    let group: Vec<u32> = std::iter::once(pid(&*d))
        .chain(others.iter().copied())
        .collect();
    let all = resident_union_mb(&group);
    let pss = pss_mb(pid(&*d)) + others.iter().copied().map(pss_mb).sum::<f64>();
    if std::env::var_os("SNAPSHOTTER_RSS_DETAIL").is_some() {
        let st = std::fs::read_to_string(format!("/proc/{}/status", pid(&*d))).unwrap_or_default();
        let keep: Vec<&str> = st
            .lines()
            .filter(|l| l.starts_with("Rss") || l.starts_with("Threads"))
            .collect();
        println!("snapshotter: {id}: {}", keep.join(" "));
        let roll =
            std::fs::read_to_string(format!("/proc/{}/smaps_rollup", pid(&*d))).unwrap_or_default();
        let parts: Vec<&str> = roll
            .lines()
            .filter(|l| {
                l.starts_with("Rss")
                    || l.starts_with("Anonymous")
                    || l.starts_with("Pss_File")
                    || l.starts_with("Pss_Anon")
            })
            .collect();
        println!("snapshotter: {id}: {}", parts.join(" "));
        for h in &others {
            println!(
                "snapshotter: {id}: helper {h}: RSS {:.1} MB, PSS {:.1} MB",
                rss_mb(*h),
                pss_mb(*h)
            );
        }
    }
    // SNAPSHOTTER_PAUSE_SECS keeps both running a while after the measurement (profiling).
    if let Some(s) = std::env::var("SNAPSHOTTER_PAUSE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        println!("snapshotter: {id}: pid {}, pausing {s} s", pid(&*d));
        std::thread::sleep(Duration::from_secs(s));
    }
    drop(d);
    drop(ctd);
    (pulled, first, rss, all, pss)
}

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

/// `stargaze stats --json` of the mount at `mnt` (null when it cannot be read).
fn stats_json(run_dir: &Path, mnt: &Path) -> serde_json::Value {
    let out = Command::new(stargaze_bin())
        .env("STARGAZE_RUN_DIR", run_dir)
        .args(["stats", "--json"])
        .arg(mnt)
        .output()
        .expect("stats");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

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
    let want = stargaze_suite::bench_selection();
    if want("build") {
        build();
    }
    if want("coldstart") {
        coldstart();
    }
    if want("warm") {
        warm();
    }
    if want("snapshotter") {
        snapshotter();
    }
}
