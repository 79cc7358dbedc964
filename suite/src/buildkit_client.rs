//! `stargaze buildkitd` under test, started the way BuildKit's integration sandbox starts
//! buildkitd: a `buildkitd` on PATH (here a symlink to the stargaze binary) run with
//! `--oci-worker=true --containerd-worker=false --oci-worker-gc=false
//! --oci-worker-labels=org.mobyproject.buildkit.worker.sandbox=true --root DIR --addr
//! unix://DIR/buildkitd.sock` and any extra flags, ready when its socket accepts; stopped
//! by PID (also when a test fails, on drop). The control API client is the one generated
//! from the same protocol definitions as the daemon (`stargaze_worker::buildkitd::client`).
//! The build tests' fixtures live here too: their prerequisites, a registry serving a
//! busybox base, a walk of the daemon's root for leftovers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use stargaze_worker::buildkitd::client::connect;
pub use stargaze_worker::buildkitd::proto::{control, pb, types};

/// Whether a build through the daemon can run here: root, runc, umoci, busybox-static and
/// the stargaze binary (a missing one is reported, and fails under `CI=true`).
pub fn build_prerequisites() -> bool {
    use crate::{busybox, have, is_root, require, stargaze_bin};
    require(is_root(), "root")
        && require(have("runc") || have("buildkit-runc"), "runc")
        && require(have("umoci"), "umoci")
        && require(Path::new(busybox::BUSYBOX).is_file(), "busybox-static")
        && require(stargaze_bin().is_file(), "the stargaze binary")
}

/// A registry serving `base/bb:v1` (busybox, built under `work`).
pub fn busybox_registry(work: &Path) -> stargaze_fs::registry::BackgroundRegistry {
    use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
    let oci = work.join("oci");
    crate::busybox::write_image(&oci, "bb", work);
    let reg = BackgroundRegistry::start(
        RegistryOptions::new(work.join("registry")),
        "127.0.0.1:0".parse().expect("address"),
    )
    .expect("registry");
    crate::run(
        Command::new(crate::stargaze_bin())
            .arg("copy")
            .arg(format!("oci:{}:bb", oci.display()))
            .arg(format!("docker://{}/base/bb:v1", reg.addr())),
    );
    reg
}

/// A runtime for driving the daemon from a test (2 worker threads).
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// What a client printed (its plain progress), shared with the test.
#[derive(Clone, Default)]
pub struct Printed(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Printed {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Printed {
    /// Everything printed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// A build with `opts` through the daemon at `addr`, its progress discarded.
pub async fn build_quietly(
    addr: &str,
    opts: &stargaze_worker::buildkitd::client::build::BuildOptions,
) -> stargaze_worker::buildkitd::client::build::BuildOutcome {
    let ch = stargaze_worker::buildkitd::client::channel(addr)
        .await
        .expect("connecting to the daemon");
    stargaze_worker::buildkitd::client::build::build(ch, opts, Box::new(std::io::sink()))
        .await
        .expect("the build's calls")
}

/// Asserts the daemon at `addr` still serves (`ListWorkers` answers one worker).
pub async fn assert_serving(addr: &str) {
    let mut c = connect(addr).await.expect("connecting to the daemon");
    let w = c
        .list_workers(control::ListWorkersRequest::default())
        .await
        .expect("ListWorkers")
        .into_inner();
    assert_eq!(w.record.len(), 1);
}

/// Every path under `dir`, parents before their entries.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            }
        }
    }
    out
}

/// The label the sandbox gives its workers.
pub const SANDBOX_LABEL: &str = "org.mobyproject.buildkit.worker.sandbox=true";

/// A directory with `buildkitd` → the stargaze binary, to put first on PATH.
pub fn buildkitd_on_path(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let link = bin.join("buildkitd");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(crate::stargaze_bin(), &link).expect("buildkitd symlink");
    bin
}

/// The sandbox's command line for `root` and `socket`, with `extra` flags (an
/// `--oci-worker-gc=` among them replaces the sandbox's `--oci-worker-gc=false`).
pub fn sandbox_args(root: &Path, socket: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--oci-worker=true".into(),
        "--containerd-worker=false".into(),
        format!("--oci-worker-labels={SANDBOX_LABEL}"),
    ];
    // A test that turns GC on says so instead of the sandbox's --oci-worker-gc=false.
    if !extra.iter().any(|e| e.starts_with("--oci-worker-gc=")) {
        a.push("--oci-worker-gc=false".into());
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a.push("--root".into());
    a.push(root.display().to_string());
    a.push("--addr".into());
    a.push(format!("unix://{}", socket.display()));
    a
}

fn command(dir: &Path, args: &[String]) -> Command {
    let bin = buildkitd_on_path(dir);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin];
    paths.extend(std::env::split_paths(&path));
    let mut c = Command::new("buildkitd");
    c.args(args)
        .env("PATH", std::env::join_paths(paths).expect("PATH"))
        .env_remove("STARGAZE_LOG");
    c
}

/// Runs `buildkitd ARGS` to its end (for flags that must be refused), in `dir`.
pub fn run_buildkitd(dir: &Path, args: &[String]) -> Output {
    command(dir, args)
        .stdin(Stdio::null())
        .output()
        .expect("running buildkitd")
}

/// A running daemon.
pub struct Buildkitd {
    child: Option<Child>,
    /// Its scratch directory (root, socket, log).
    pub dir: tempfile::TempDir,
    /// `--root`.
    pub root: PathBuf,
    /// The socket.
    pub socket: PathBuf,
    log: PathBuf,
}

impl Buildkitd {
    /// Starts it as the sandbox does, with `extra` flags, and waits for its socket.
    pub fn start(extra: &[&str]) -> Buildkitd {
        Self::start_with(extra, |_| {})
    }

    /// Like [`Self::start`], calling `before(root)` first (to lay out state).
    pub fn start_with(extra: &[&str], before: impl FnOnce(&Path)) -> Buildkitd {
        let dir = tempfile::Builder::new()
            .prefix("stargaze-bk-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().join("root");
        before(&root);
        let socket = dir.path().join("buildkitd.sock");
        let args = sandbox_args(&root, &socket, extra);
        Self::spawn(dir, root, socket, &args)
    }

    /// Starts `buildkitd ARGS` in `dir`, expecting it to keep state in `root` and serve
    /// `socket` (where the arguments or its config file say).
    pub fn spawn(
        dir: tempfile::TempDir,
        root: PathBuf,
        socket: PathBuf,
        args: &[String],
    ) -> Buildkitd {
        let cmd = command(dir.path(), args);
        Self::spawn_command(dir, root, socket, cmd)
    }

    /// Like [`Self::spawn`] with the whole command given (e.g. behind sudo and rootlesskit).
    pub fn spawn_command(
        dir: tempfile::TempDir,
        root: PathBuf,
        socket: PathBuf,
        mut cmd: Command,
    ) -> Buildkitd {
        let log = dir.path().join("buildkitd.log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(
                std::fs::File::create(&log)
                    .expect("log")
                    .try_clone()
                    .expect("log"),
            )
            .spawn()
            .expect("spawning buildkitd");
        let mut d = Buildkitd {
            child: Some(child),
            dir,
            root,
            socket,
            log,
        };
        d.wait_socket();
        d
    }

    fn wait_socket(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("buildkitd exited ({st}) before serving:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "buildkitd did not serve {}:\n{}",
            self.socket.display(),
            self.log()
        );
    }

    /// `unix://SOCKET`.
    pub fn addr(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends SIGTERM and waits (up to a minute) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's PID.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("buildkitd did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Buildkitd {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            crate::servers::stop_child(c);
        }
    }
}
