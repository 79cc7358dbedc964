//! Cold builds under the cold-start bench's WAN (`suite/src/bench/`): a cold `stargaze build`
//! of `FROM <that image>` + `RUN python3 -c …`, each run from an empty worker root: the stargz
//! snapshotter on the eStargz image (the base is mounted lazily) against overlayfs on the gzip
//! image (full pull and unpack); medians of 3 and their ratio (goal <= 0.3). The daemon row
//! runs the same lazy build through a running `stargaze buildkitd` (fresh root, started
//! before the clock) with `stargaze build --addr`, next to the in-process build (goal:
//! within 0.1 s of it).
//!
//! Run (root): `cargo build --release -p stargaze && cargo bench --bench build`.

use stargaze_suite::bench::{wan, Wan, CMD, DELAY, RATE_MBIT, RUNS};
use stargaze_suite::{have, median, stargaze_bin};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A `stargaze buildkitd` in the WAN namespace, stopped by PID when dropped.
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start(w: &Wan, dir: &Path) -> Daemon {
        std::fs::create_dir_all(dir).expect("daemon dir");
        let socket = dir.join("buildkitd.sock");
        let log = std::fs::File::create(dir.join("buildkitd.log")).expect("log");
        let child =
            w.ns.cmd(stargaze_bin())
                .arg("buildkitd")
                .arg("--root")
                .arg(dir.join("root"))
                .arg(format!("--addr=unix://{}", socket.display()))
                .args(["--oci-worker-snapshotter=stargz", "--oci-worker-gc=false"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("stargaze buildkitd");
        let d = Daemon {
            child,
            addr: format!("unix://{}", socket.display()),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "buildkitd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // nsenter execs the daemon: this PID is the daemon's.
        // SAFETY: kill(2) on the PID of our own child, which has not been waited for.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// The Dockerfile of the bench in a fresh context `dir/ctx`.
fn context(dir: &Path, image: &str) -> std::path::PathBuf {
    let ctx = dir.join("ctx");
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
    ctx
}

/// One cold `stargaze build --addr` of the same Dockerfile through a fresh daemon (started
/// before the clock); (seconds, the summary line).
fn daemon_build(w: &Wan, work: &Path, name: &str, image: &str) -> (f64, String) {
    let d = work.join(name);
    let ctx = context(&d, image);
    let daemon = Daemon::start(w, &d.join("daemon"));
    let start = Instant::now();
    let out =
        w.ns.cmd(stargaze_bin())
            .arg("build")
            .arg(&ctx)
            .args(["--addr", &daemon.addr])
            .output()
            .expect("stargaze build --addr");
    let t = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("12345"),
        "build --addr failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = text
        .lines()
        .filter(|l| l.starts_with("built in"))
        .collect::<Vec<_>>()
        .join("; ");
    (t, summary)
}

/// One cold `stargaze build` of `FROM image / RUN python3 …` in a fresh worker root inside
/// the WAN namespace; (seconds, the summary lines).
fn cold_build(w: &Wan, work: &Path, name: &str, image: &str, snapshotter: &str) -> (f64, String) {
    let d = work.join(name);
    let ctx = context(&d, image);
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
    let (mut lazy, mut full, mut daemon) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let (t, s) = daemon_build(&w, work.path(), &format!("bk{i}"), &w.esgz);
        println!("build: stargz through buildkitd run {i}: {t:.2} s ({s})");
        daemon.push(t);
        let (t, s) = cold_build(&w, work.path(), &format!("sg{i}"), &w.esgz, "stargz");
        println!("build: stargz run {i}: {t:.2} s ({s})");
        lazy.push(t);
        let (t, s) = cold_build(&w, work.path(), &format!("ov{i}"), &w.plain, "overlayfs");
        println!("build: overlayfs run {i}: {t:.2} s ({s})");
        full.push(t);
    }
    let (l, f, b) = (median(lazy), median(full), median(daemon));
    println!(
        "build: through buildkitd (stargaze build --addr, stargz) {b:.2} s vs in process {l:.2} s: {:+.2} s (goal: within 0.1 s)",
        b - l
    );
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
