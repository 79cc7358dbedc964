//! A client that goes away mid-build: `stargaze buildkitd` (started as BuildKit's sandbox
//! starts buildkitd) runs a build whose RUN sleeps; once the step's output arrives, the
//! client drops its calls and its session. The daemon cancels the build: the step's
//! process is killed, runc forgets the container, no mount is left under the daemon's root,
//! and the daemon serves the next build. Needs root, runc, umoci and busybox-static.

use stargaze_suite::buildkit_client::{
    build_prerequisites, build_quietly, busybox_registry, client_runtime, Buildkitd, Printed,
};
use stargaze_suite::mounts::DetachOnDrop;
use stargaze_suite::run;
use stargaze_worker::buildkitd::client::build::{build, BuildOptions};
use stargaze_worker::buildkitd::client::channel;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// PIDs of the processes whose command line is exactly `args`.
fn pids(args: &str) -> Vec<i32> {
    let ps = run(Command::new("ps").args(["-eo", "pid=,args="]));
    ps.lines()
        .filter_map(|l| {
            let (pid, rest) = l.trim().split_once(' ')?;
            (rest.trim() == args).then(|| pid.parse().ok())?
        })
        .collect()
}

fn processes(args: &str) -> usize {
    pids(args).len()
}

/// Kills what is left of the step when the test fails (a survivor is the failure).
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in pids(&self.0) {
            // SAFETY: kill(2) on a PID just listed as running the test's own command.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&root))
        .map(str::to_string)
        .collect()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool, detail: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "{what}:\n{}", detail());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_client_that_disconnects_mid_build_has_its_steps_cancelled() {
    if !build_prerequisites() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = busybox_registry(work.path());
    let host = reg.addr().to_string();
    let mut d = Buildkitd::start(&["--oci-worker-snapshotter=overlayfs"]);
    let _detach = DetachOnDrop(d.root.clone());
    let addr = d.addr();
    // A sleep no other process on the machine runs.
    let seconds = 6000 + std::process::id() % 1000;
    let sleep = format!("sleep {seconds}");
    let _kill = KillOnDrop(sleep.clone());
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {host}/base/bb:v1\nRUN echo step-started && {sleep}\n"),
    )
    .unwrap();

    let rt = client_runtime();
    let printed = Printed::default();
    let p = printed.clone();
    let opts = BuildOptions::dockerfile(&ctx);
    let a = addr.clone();
    let client = rt.spawn(async move {
        let ch = channel(&a).await.unwrap();
        build(ch, &opts, Box::new(p)).await
    });
    wait_until(
        "the step started",
        || printed.text().contains("step-started") && processes(&sleep) == 1,
        || format!("{}\n{}", printed.text(), d.log()),
    );
    assert!(
        !mounts_under(&d.root).is_empty(),
        "the running step has its rootfs mounted"
    );

    // The client goes away: its calls and its session end.
    client.abort();
    let _ = rt.block_on(client);
    wait_until(
        "the step's process was killed",
        || processes(&sleep) == 0,
        || d.log(),
    );
    wait_until(
        "no mounts left under the daemon's root",
        || mounts_under(&d.root).is_empty(),
        || format!("{:?}\n{}", mounts_under(&d.root), d.log()),
    );
    let state = d.root.join("runc-overlayfs/executor/runtime-state");
    wait_until(
        "runc forgot the container",
        || std::fs::read_dir(&state).map(|e| e.count()).unwrap_or(0) == 0,
        || d.log(),
    );
    assert!(d.log().contains("cancelling its steps"), "{}", d.log());

    // The daemon serves on: the next build runs.
    let ok = ctx.join("next");
    std::fs::create_dir_all(&ok).unwrap();
    std::fs::write(
        ok.join("Dockerfile"),
        format!("FROM {host}/base/bb:v1\nRUN echo next-build\n"),
    )
    .unwrap();
    let o = rt.block_on(build_quietly(&addr, &BuildOptions::dockerfile(&ok)));
    o.result
        .unwrap_or_else(|e| panic!("the next build: {e:?}\n{}", d.log()));
    assert!(d.alive());
}
