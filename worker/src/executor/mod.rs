//! The runc executor: runs one build step as an OCI container over a snapshot's mounts,
//! the way BuildKit's OCI worker does (a bundle per step, runc in the foreground, host or
//! CNI networking). A step gets a bundle under the
//! executor directory, its rootfs mounted from the snapshotter, a spec from [`spec`], and
//! runs in the foreground of the configured runtime binary with its output streamed line by
//! line; cancellation or a timeout kills it through the runtime, and the rootfs and bundle
//! are removed whatever happened.

pub mod cni;
pub mod netfiles;
mod network;
pub mod rootpath;
mod runc;
pub mod spec;
pub mod user;

pub use network::{NetworkKind, UnknownNetworkKind};
pub use runc::Stream;
pub use spec::{Network, StepMount};

use crate::snapshot::{mounts, Mount, SnapshotError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How the executor runs steps.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The OCI runtime binary (runc by default).
    pub binary: PathBuf,
    /// Executor state: bundles, the runtime's state, shared resolv.conf and hosts.
    pub dir: PathBuf,
    /// Network of every step.
    pub network: NetworkMode,
    /// Own PID namespace per step.
    pub process_sandbox: bool,
    /// AppArmor profile.
    pub apparmor_profile: Option<String>,
    /// Rootless mode.
    pub rootless: bool,
}

/// The worker's network mode.
#[derive(Debug, Clone)]
pub enum NetworkMode {
    /// Steps share the host's network.
    Host,
    /// Steps get a network namespace with only loopback.
    None,
    /// Steps get a network namespace set up by CNI plugins.
    Cni(cni::CniConfig),
}

/// One step's process.
#[derive(Debug, Clone, Default)]
pub struct StepProcess {
    /// Arguments (`sh -c …` or the exec form).
    pub args: Vec<String>,
    /// `K=V` environment.
    pub env: Vec<String>,
    /// Working directory (created, owned by the user, when missing).
    pub cwd: String,
    /// Docker `USER` form; empty means root.
    pub user: String,
    /// Hostname; empty means `buildkitsandbox`.
    pub hostname: String,
    /// The step's own mounts (`RUN --mount`); their mount points, when the rootfs lacks
    /// them, are made for the step and removed after it when still empty.
    pub mounts: Vec<StepMount>,
}

/// Receives a step's output, one line (or partial final line) at a time.
pub trait OutputSink: Send + Sync {
    /// One line of `stream`, without its newline.
    fn line(&self, stream: Stream, line: &[u8]);
}

/// Why a step did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The process ran and exited non-zero. Worded as BuildKit words it (the arguments
    /// joined by spaces, in quotes), which clients and scripts match on.
    #[error("process \"{}\" did not complete successfully: exit code: {code}", .args.join(" "))]
    Exit {
        /// The step's arguments.
        args: Vec<String>,
        /// Exit code (128+N for signal N).
        code: i32,
    },
    /// The runtime could not create or start the container.
    #[error("{binary}: {message}")]
    Runtime {
        /// The runtime binary.
        binary: String,
        /// What it said.
        message: String,
    },
    /// Cancelled by the caller; the container was killed.
    #[error("cancelled; the step was killed")]
    Cancelled,
    /// Ran past its timeout; the container was killed.
    #[error("timed out after {0:?}; the step was killed")]
    TimedOut(Duration),
    /// The rootfs could not be mounted.
    #[error("mounting the rootfs: {0}")]
    Mount(#[from] SnapshotError),
    /// The user does not exist in the image.
    #[error(transparent)]
    User(#[from] user::UserError),
    /// The working directory could not be made.
    #[error("working directory: {0}")]
    Workdir(#[from] rootpath::RootPathError),
    /// The spec could not be made.
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    /// The step's network could not be set up.
    #[error(transparent)]
    Network(#[from] cni::CniError),
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ExecError {
    let context = context.into();
    move |source| ExecError::Io { context, source }
}

/// The executor of one worker.
#[derive(Debug)]
pub struct Executor {
    opts: ExecutorOptions,
    resolv: PathBuf,
    hosts: PathBuf,
}

/// Unmounts a step's rootfs and removes its bundle when dropped.
struct Bundle {
    dir: PathBuf,
    rootfs: PathBuf,
    mounted: bool,
}

impl Drop for Bundle {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = mounts::unmount(&self.rootfs) {
                tracing::warn!(rootfs = %self.rootfs.display(), error = %e, "unmounting a step's rootfs");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(bundle = %self.dir.display(), error = %e, "removing a step's bundle");
            }
        }
    }
}

fn new_id() -> String {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "stargaze-{}{:x}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>(),
        t & 0xffff
    )
}

impl Executor {
    /// An executor with its state in `opts.dir` (created 0711).
    pub fn new(opts: ExecutorOptions) -> Result<Self, ExecError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&opts.dir)
            .map_err(io(format!("creating {}", opts.dir.display())))?;
        std::fs::set_permissions(&opts.dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io(format!("chmod {}", opts.dir.display())))?;
        let (resolv, hosts) =
            netfiles::ensure(&opts.dir, matches!(opts.network, NetworkMode::Host))
                .map_err(io("writing resolv.conf and hosts"))?;
        Ok(Executor {
            opts,
            resolv,
            hosts,
        })
    }

    /// The options.
    pub fn options(&self) -> &ExecutorOptions {
        &self.opts
    }

    /// Runs `p` on a rootfs made of `root` until it exits, `cancel` turns true, or `timeout`
    /// passes. Output goes to `sink`.
    pub async fn run(
        &self,
        root: &[Mount],
        p: &StepProcess,
        sink: Arc<dyn OutputSink>,
        cancel: tokio::sync::watch::Receiver<bool>,
        timeout: Option<Duration>,
    ) -> Result<(), ExecError> {
        let id = new_id();
        let dir = self.opts.dir.join(&id);
        let rootfs = dir.join("rootfs");
        let mut bundle = Bundle {
            dir: dir.clone(),
            rootfs: rootfs.clone(),
            mounted: false,
        };
        let (input, stubs) = {
            let root = root.to_vec();
            let p = p.clone();
            let opts = self.opts.clone();
            let (resolv, hosts) = (self.resolv.clone(), self.hosts.clone());
            let rootfs = rootfs.clone();
            let dir = dir.clone();
            let mounted = tokio::task::spawn_blocking(move || {
                prepare(&dir, &rootfs, &root, &p, &opts, resolv, hosts)
            })
            .await
            .map_err(|e| ExecError::Io {
                context: "preparing the step".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            match mounted {
                Ok(i) => {
                    bundle.mounted = true;
                    i
                }
                Err((was_mounted, e)) => {
                    bundle.mounted = was_mounted;
                    return Err(e);
                }
            }
        };
        let mut input = input;
        let _network = match &self.opts.network {
            NetworkMode::Cni(cfg) => {
                let (cfg, id2) = (cfg.clone(), id.clone());
                let n = tokio::task::spawn_blocking(move || cni::StepNetwork::create(&cfg, &id2))
                    .await
                    .map_err(|e| ExecError::Io {
                        context: "setting up the step's network".into(),
                        source: std::io::Error::other(e.to_string()),
                    })??;
                input.network = Network::Join(n.path());
                Some(n)
            }
            _ => None,
        };
        let spec = spec::generate(&input)?;
        spec.save(dir.join("config.json"))
            .map_err(|e| ExecError::Io {
                context: "writing config.json".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let r = runc::run(&self.opts, &id, &dir, sink, cancel, timeout).await;
        remove_stubs(&stubs);
        drop(bundle);
        match r {
            Ok(0) => Ok(()),
            Ok(code) => Err(ExecError::Exit {
                args: p.args.clone(),
                code,
            }),
            Err(e) => Err(e),
        }
    }
}

/// Mounts the rootfs and resolves what the spec needs; on failure says whether the rootfs
/// was mounted (so it is unmounted).
fn prepare(
    dir: &Path,
    rootfs: &Path,
    root: &[Mount],
    p: &StepProcess,
    opts: &ExecutorOptions,
    resolv: PathBuf,
    hosts: PathBuf,
) -> Result<(spec::SpecInput, Vec<PathBuf>), (bool, ExecError)> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .mode(0o711)
        .create(dir)
        .map_err(|e| (false, io(format!("creating {}", dir.display()))(e)))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(rootfs)
        .map_err(|e| (false, io(format!("creating {}", rootfs.display()))(e)))?;
    mounts::mount_all(root, rootfs).map_err(|e| (false, ExecError::Mount(e)))?;
    let user = user::resolve(rootfs, &p.user).map_err(|e| (true, e.into()))?;
    let cwd = if p.cwd.is_empty() { "/" } else { &p.cwd };
    let path = rootpath::resolve(rootfs, cwd, true).map_err(|e| (true, e.into()))?;
    if !path.exists() {
        let made = rootpath::mkdir_all(rootfs, cwd, 0o755).map_err(|e| (true, e.into()))?;
        let _ = std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o755));
        if let Err(e) = std::os::unix::fs::lchown(&made, Some(user.uid), Some(user.gid)) {
            tracing::debug!(error = %e, "chown of the new working directory");
        }
    }
    let mut stubs = Vec::new();
    for m in &p.mounts {
        let file = matches!(m, StepMount::Bind { source, .. } if !source.is_dir());
        stubs.extend(make_stub(rootfs, m.target(), file).map_err(|e| (true, e))?);
    }
    let input = spec::SpecInput {
        rootfs: rootfs.to_path_buf(),
        args: p.args.clone(),
        env: p.env.clone(),
        cwd: cwd.to_string(),
        user,
        hostname: if p.hostname.is_empty() {
            netfiles::HOSTNAME.to_string()
        } else {
            p.hostname.clone()
        },
        resolv_conf: resolv,
        hosts,
        network: match opts.network {
            NetworkMode::Host => Network::Host,
            // CNI namespaces are made per step, just before the spec.
            NetworkMode::None | NetworkMode::Cni(_) => Network::None,
        },
        process_sandbox: opts.process_sandbox,
        apparmor_profile: opts.apparmor_profile.clone(),
        rootless: opts.rootless,
        mounts: p.mounts.clone(),
    };
    Ok((input, stubs))
}

/// Makes the mount point `target` (a directory, or an empty file when `file`) in `rootfs`
/// when missing; returns what was made, deepest last (nothing when it was there).
fn make_stub(rootfs: &Path, target: &str, file: bool) -> Result<Vec<PathBuf>, ExecError> {
    let path = rootpath::resolve(rootfs, target, true)?;
    if std::fs::symlink_metadata(&path).is_ok() {
        return Ok(Vec::new());
    }
    // The missing ancestors, outermost first.
    let mut made = Vec::new();
    let mut cur = path.clone();
    while let Some(parent) = cur.parent() {
        if !parent.starts_with(rootfs) || parent.exists() {
            break;
        }
        made.insert(0, parent.to_path_buf());
        cur = parent.to_path_buf();
    }
    let parent_in = Path::new(target)
        .parent()
        .and_then(|p| p.to_str())
        .unwrap_or("/");
    rootpath::mkdir_all(rootfs, parent_in, 0o755)?;
    if file {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(format!("creating {}", path.display())))?;
    } else {
        std::fs::create_dir(&path).map_err(io(format!("creating {}", path.display())))?;
    }
    made.push(path);
    Ok(made)
}

/// Removes the mount points a step's mounts needed, deepest first, where still empty (a
/// step that wrote next to them keeps its files).
fn remove_stubs(stubs: &[PathBuf]) {
    for s in stubs.iter().rev() {
        let r = match std::fs::symlink_metadata(s) {
            Ok(m) if m.is_dir() => std::fs::remove_dir(s),
            Ok(m) if m.is_file() && m.len() == 0 => std::fs::remove_file(s),
            _ => continue,
        };
        if let Err(e) = r {
            tracing::debug!(stub = %s.display(), error = %e, "mount point kept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ExecError;

    #[test]
    fn a_failed_process_is_named_as_buildkit_names_it() {
        let e = ExecError::Exit {
            args: vec!["/bin/sh".into(), "-c".into(), "invalidcmd".into()],
            code: 127,
        };
        assert_eq!(
            e.to_string(),
            "process \"/bin/sh -c invalidcmd\" did not complete successfully: exit code: 127"
        );
    }
}
