//! Running a bundle with the OCI runtime binary in the foreground (`runc run`): its own
//! state root under the executor directory, a JSON log read back for the runtime's own
//! errors, output pumped line by line, and `kill KILL` (every 50 ms until it is gone) on
//! cancel or timeout, then `delete --force`.

use super::{io, ExecError, ExecutorOptions, OutputSink};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Longest line passed on whole; longer ones are split.
const MAX_LINE: usize = 64 << 10;

async fn pump<R: AsyncRead + Unpin>(r: R, stream: Stream, sink: Arc<dyn OutputSink>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut r)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        sink.line(stream, &buf);
    }
}

use tokio::io::AsyncReadExt;

fn runtime(opts: &ExecutorOptions) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(&opts.binary);
    c.arg("--root").arg(opts.dir.join("runtime-state"));
    c
}

/// The runtime's error messages from its JSON log.
fn runtime_errors(log: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(log) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect()
}

async fn kill(opts: &ExecutorOptions, id: &str, child: &mut tokio::process::Child) {
    let started = std::time::Instant::now();
    loop {
        if started.elapsed() > Duration::from_secs(15) {
            // The runtime does not stop its container: kill the runtime's whole process
            // group (it was started as a group leader) and stop waiting for it.
            if let Some(pid) = child.id() {
                // SAFETY: killpg on the group our child leads.
                unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
            }
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            return;
        }
        let k = runtime(opts)
            .args(["kill", id, "KILL"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(7), k).await;
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(50), child.wait()).await {
            return;
        }
    }
}

/// Runs the bundle at `bundle` as container `id`; returns the exit code.
pub async fn run(
    opts: &ExecutorOptions,
    id: &str,
    bundle: &Path,
    sink: Arc<dyn OutputSink>,
    mut cancel: tokio::sync::watch::Receiver<bool>,
    timeout: Option<Duration>,
) -> Result<i32, ExecError> {
    let log = bundle.join("runtime-log.json");
    let mut cmd = runtime(opts);
    let pid_file = bundle.join("init.pid");
    cmd.arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "run", "--pid-file"])
        .arg(&pid_file)
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the child dies with the worker.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let binary = opts.binary.display().to_string();
    let mut child = cmd.spawn().map_err(io(format!("starting {binary}")))?;
    let out = child
        .stdout
        .take()
        .map(|o| tokio::spawn(pump(o, super::Stream::Stdout, sink.clone())));
    let err = child
        .stderr
        .take()
        .map(|e| tokio::spawn(pump(e, super::Stream::Stderr, sink.clone())));
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let cancelled = async {
        if cancel.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let outcome = tokio::select! {
        s = child.wait() => Ok(s.map_err(io(format!("waiting for {binary}")))?),
        _ = cancelled => Err(ExecError::Cancelled),
        _ = deadline => Err(ExecError::TimedOut(timeout.unwrap_or_default())),
    };
    if outcome.is_err() {
        kill(opts, id, &mut child).await;
    }
    // Output ends when every holder of the pipes has exited; a process that outlives its
    // container (it should not) must not hold the step open forever.
    for mut h in [out, err].into_iter().flatten() {
        if tokio::time::timeout(Duration::from_secs(10), &mut h)
            .await
            .is_err()
        {
            tracing::warn!(container = %id, "output still open 10 s after the container ended; no longer read");
            h.abort();
        }
    }
    let _ = runtime(opts)
        .args(["delete", "--force", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    let status = outcome?;
    let code = match status.code() {
        Some(c) => c,
        None => {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        }
    };
    if code != 0 {
        // The runtime writes the pid file once the step's process exists: without it, the
        // runtime itself failed (bad spec, cgroups it cannot use, a broken binary).
        let errors = runtime_errors(&log);
        if !errors.is_empty() || !pid_file.exists() {
            return Err(ExecError::Runtime {
                binary,
                message: if errors.is_empty() {
                    format!("exited with code {code} before starting the process")
                } else {
                    errors.join("; ")
                },
            });
        }
    }
    Ok(code)
}
