//! One lazy pull and run through containerd with a proxy snapshotter (ours or the reference),
//! timed and measured: what the cold-start bench's way (b), the snapshotter bench and the
//! HelloBench suite's modes (b) and (c) repeat.

use super::{first_output_with, pss_mb, resident_union_mb, rss_mb, Wan, CMD};
use crate::{run, Containerd};
use std::time::{Duration, Instant};

/// What one lazy pull + run measured.
#[derive(Debug, Clone, Copy)]
pub struct LazyRun {
    /// Seconds until `rpull` returned.
    pub pulled: f64,
    /// Seconds until the first output byte.
    pub first: f64,
    /// Bytes the registry sent from the start until the first output byte.
    pub bytes_at_first: u64,
    /// Daemon RSS MB after the run.
    pub rss: f64,
    /// Resident MB of the daemon and its helpers (each page once).
    pub resident: f64,
    /// PSS MB of the daemon and its helpers.
    pub pss: f64,
}

/// One lazy pull + run through containerd with the proxy snapshotter started by `daemon`;
/// returns (rpull seconds, seconds to first output, daemon RSS MB after the run, resident MB
/// (each page once) and PSS MB of the daemon and its helper processes together).
pub fn through_containerd(
    w: &Wan,
    id: &str,
    daemon: &dyn Fn(&Containerd) -> Box<dyn std::any::Any>,
    pid: &dyn Fn(&dyn std::any::Any) -> u32,
    helpers: &dyn Fn(&dyn std::any::Any) -> Vec<u32>,
) -> (f64, f64, f64, f64, f64) {
    let r = lazy_run(w, &w.esgz, &CMD, id, daemon, pid, helpers);
    (r.pulled, r.first, r.rss, r.resident, r.pss)
}

/// One lazy pull of `image` + `ctr run … cmd` through containerd with the proxy snapshotter
/// started by `daemon`, from a fresh containerd and daemon.
pub fn lazy_run(
    w: &Wan,
    image: &str,
    cmd: &[&str],
    id: &str,
    daemon: &dyn Fn(&Containerd) -> Box<dyn std::any::Any>,
    pid: &dyn Fn(&dyn std::any::Any) -> u32,
    helpers: &dyn Fn(&dyn std::any::Any) -> Vec<u32>,
) -> LazyRun {
    let ctd = Containerd::start_in(Some(&w.ns.path()));
    let d = daemon(&ctd);
    let start = Instant::now();
    let bytes0 = w.bytes_down();
    let mut pull = w.ns.cmd("ctr-remote");
    pull.arg("--address")
        .arg(&ctd.socket)
        .args(["image", "rpull", "--plain-http", image]);
    run(&mut pull);
    let pulled = start.elapsed().as_secs_f64();
    if std::env::var_os("SNAPSHOTTER_RSS_DETAIL").is_some() {
        println!("snapshotter: {id}: after rpull {:.1} MB", rss_mb(pid(&*d)));
    }
    let mut r = w.ns.cmd("ctr");
    r.arg("--address")
        .arg(&ctd.socket)
        .args(["run", "--rm", "--snapshotter=stargz", image, id])
        .args(cmd);
    let mut bytes_at_first = 0;
    let first = first_output_with(start, &mut r, &mut || {
        bytes_at_first = w.bytes_down() - bytes0;
    });
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
    LazyRun {
        pulled,
        first,
        bytes_at_first,
        rss,
        resident: all,
        pss,
    }
}
