//! Shared parts of the whole-workflow benches in `suite/benches/` (coldstart.rs,
//! snapshotter.rs, warm.rs, build.rs, hellobench.rs), one bench a file: the Debian image, the
//! HelloBench workloads and their images, the emulated WAN, process memory figures, one run
//! through containerd's proxy snapshotter, and timing the first output of a command.

mod debian;
pub mod limit;
mod procmem;
mod proxy_run;
mod wan;
mod workloads;

pub use debian::debian_image;
pub use procmem::{pss_mb, resident_union_mb, rss_mb};
pub use proxy_run::{lazy_run, through_containerd, LazyRun};
pub use wan::{serve, wan, wan_prerequisites, Wan, CMD, DELAY, RATE_MBIT, RUNS};
pub use workloads::{workload_images, Workload, WorkloadImages, WORKLOADS};

use crate::stargaze_bin;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Seconds from `start` until `cmd` prints its first byte; the command must succeed.
pub fn first_output(start: Instant, cmd: &mut Command) -> f64 {
    first_output_with(start, cmd, &mut || {})
}

/// As [`first_output`], calling `at_first` the moment the first byte arrives (to read
/// counters then, before the command finishes).
pub fn first_output_with(start: Instant, cmd: &mut Command, at_first: &mut dyn FnMut()) -> f64 {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = child.stdout.take().expect("stdout");
    let mut b = [0u8; 1];
    let n = out.read(&mut b).expect("read");
    let t = start.elapsed().as_secs_f64();
    at_first();
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

/// `stargaze stats --json` of the mount at `mnt` (null when it cannot be read).
pub fn stats_json(run_dir: &Path, mnt: &Path) -> serde_json::Value {
    let out = Command::new(stargaze_bin())
        .env("STARGAZE_RUN_DIR", run_dir)
        .args(["stats", "--json"])
        .arg(mnt)
        .output()
        .expect("stats");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}
