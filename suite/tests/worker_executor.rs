//! The runc executor with the real runc: a step runs in its own namespaces over a bind
//! rootfs, its output streams line by line, exit codes come back, the image's user is
//! used, a missing working directory is made, cancel and timeout kill the container, a
//! broken runtime is a runtime error, and nothing stays mounted or registered.

use stargaze_suite::busybox::{make_rootfs, BUSYBOX};
use stargaze_suite::{have, is_root, require};
use stargaze_worker::executor::{
    ExecError, Executor, ExecutorOptions, NetworkMode, OutputSink, StepProcess, Stream,
};
use stargaze_worker::snapshot::Mount;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn ready() -> bool {
    require(is_root(), "root")
        && require(have("runc"), "runc")
        && require(Path::new(BUSYBOX).is_file(), "busybox-static")
}

#[derive(Default)]
struct Lines(Mutex<Vec<(Stream, String)>>);

impl OutputSink for Lines {
    fn line(&self, stream: Stream, line: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((stream, String::from_utf8_lossy(line).into_owned()));
    }
}

impl Lines {
    fn text(&self, s: Stream) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(x, _)| *x == s)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

fn runc() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
        .unwrap()
}

fn bind(dir: &Path) -> Vec<Mount> {
    vec![Mount {
        kind: "bind".into(),
        source: dir.display().to_string(),
        target: String::new(),
        options: vec!["rbind".into(), "rw".into()],
    }]
}

fn sh(script: &str) -> StepProcess {
    StepProcess {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["GREETING=hello".into()],
        cwd: "/".into(),
        ..StepProcess::default()
    }
}

fn mounted_under(dir: &Path) -> usize {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&d)))
        .count()
}

fn runtime_state_empty(state: &Path) -> bool {
    std::fs::read_dir(state.join("runtime-state"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_run_stream_fail_and_get_killed() {
    if !ready() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    make_rootfs(&rootfs);
    let state = work.path().join("executor");
    let ex = Executor::new(ExecutorOptions {
        binary: runc(),
        dir: state.clone(),
        network: NetworkMode::None,
        process_sandbox: true,
        apparmor_profile: None,
        rootless: false,
    })
    .unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(false);

    // Output, environment, namespaces, resolv/hosts, hostname.
    let lines = Arc::new(Lines::default());
    ex.run(
        &bind(&rootfs),
        &sh("echo $GREETING; echo oops >&2; echo pid=$$; hostname; grep -c localhost /etc/hosts; echo $PATH; ip link 2>/dev/null | grep -c '^[0-9]' ; touch /made-here"),
        lines.clone(),
        rx.clone(),
        None,
    )
    .await
    .unwrap();
    let out = lines.text(Stream::Stdout);
    assert_eq!(out[0], "hello", "{out:?}");
    assert_eq!(out[1], "pid=1", "own PID namespace: {out:?}");
    assert_eq!(out[2], "buildkitsandbox");
    assert_eq!(out[3], "2", "two localhost lines in the hosts file");
    assert!(out[4].contains("/usr/bin"), "{out:?}");
    assert_eq!(out[5], "1", "only loopback in network mode none: {out:?}");
    assert_eq!(lines.text(Stream::Stderr), vec!["oops".to_string()]);
    assert!(
        rootfs.join("made-here").is_file(),
        "writes land in the rootfs"
    );

    // The image's user, and a working directory made for them.
    let lines = Arc::new(Lines::default());
    let mut p = sh("id -u; id -g; id -G; pwd; echo $HOME; stat -c %u .");
    p.user = "app".into();
    p.cwd = "/srv/work".into();
    ex.run(&bind(&rootfs), &p, lines.clone(), rx.clone(), None)
        .await
        .unwrap();
    assert_eq!(
        lines.text(Stream::Stdout),
        vec!["1000", "1000", "1000 10", "/srv/work", "/home/app", "1000"]
    );
    let mut p = sh("true");
    p.user = "nobody-here".into();
    let e = ex
        .run(&bind(&rootfs), &p, lines.clone(), rx.clone(), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nobody-here"), "{e}");

    // Exit codes.
    let e = ex
        .run(
            &bind(&rootfs),
            &sh("exit 3"),
            Arc::new(Lines::default()),
            rx.clone(),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::Exit { code: 3, .. }), "{e}");
    assert!(e.to_string().contains("exit code: 3"), "{e}");

    // Timeout and cancel kill the container.
    let started = std::time::Instant::now();
    let e = ex
        .run(
            &bind(&rootfs),
            &sh("sleep 100"),
            Arc::new(Lines::default()),
            rx.clone(),
            Some(Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ExecError::TimedOut(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let (tx, crx) = tokio::sync::watch::channel(false);
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send(true).unwrap();
    });
    let e = ex
        .run(
            &bind(&rootfs),
            &sh("sleep 100"),
            Arc::new(Lines::default()),
            crx,
            None,
        )
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert!(matches!(e, ExecError::Cancelled), "{e}");

    // A missing program is the runtime's error, named.
    let e = ex
        .run(
            &bind(&rootfs),
            &StepProcess {
                args: vec!["/no/such/program".into()],
                ..StepProcess::default()
            },
            Arc::new(Lines::default()),
            rx.clone(),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("/no/such/program"), "{e}");

    // Parallel steps.
    let ex = Arc::new(ex);
    let mut handles = Vec::new();
    for i in 0..3 {
        let (ex, rootfs, rx) = (ex.clone(), rootfs.clone(), rx.clone());
        handles.push(tokio::spawn(async move {
            ex.run(
                &bind(&rootfs),
                &sh(&format!("sleep 1; touch /par{i}")),
                Arc::new(Lines::default()),
                rx,
                None,
            )
            .await
        }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    for i in 0..3 {
        assert!(rootfs.join(format!("par{i}")).exists());
    }

    assert_eq!(mounted_under(&state), 0, "no step rootfs stays mounted");
    assert!(
        runtime_state_empty(&state),
        "no container stays registered with runc"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("stargaze-"))
        .collect();
    assert!(leftovers.is_empty(), "bundles left: {leftovers:?}");
}
