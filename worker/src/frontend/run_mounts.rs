//! What each `RUN --mount` puts in the step, and what it adds to the step's key, as
//! BuildKit v0.11 does it: a bind shows a directory (or file) of the context, a stage or an
//! image (read-only, or writable over an overlay whose writes are thrown away), keyed by
//! the content it shows; a cache is a directory of the worker that outlives builds (keyed
//! by its ID and place, never its content), made with the mount's owner and mode and
//! shared, locked or private among concurrent steps; a tmpfs is fresh; a secret is a file
//! the build's sessions answer, written for the step only (never into the image); an ssh
//! mount is a socket whose connections are forwarded to the sessions' agent.
//! Everything is undone when the [`StepMounts`] drop.

use super::copy::{self, Source, SourceRoot};
use super::guards::{random_suffix, Mounted, SourceTree};
use super::instructions::InstructionError;
use super::request::{SecretError, SshError, SshSource};
use super::run_mount::{MountType, RunMount, Sharing};
use super::solve::{blocking, Ctx};
use super::{io, BuildError};
use crate::executor::{rootpath, StepMount};
use crate::snapshot::Mount;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// What keeps a step's mounts there; dropped (on a blocking thread) after the step.
#[derive(Default)]
pub(super) struct StepMounts {
    /// For the executor, in order.
    pub(super) mounts: Vec<StepMount>,
    /// Key parts.
    pub(super) key: Vec<String>,
    /// Environment the mounts add (`SSH_AUTH_SOCK`).
    pub(super) env: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    overlays: Vec<Mounted>,
    trees: Vec<SourceTree>,
    dirs: Vec<PathBuf>,
    _locks: Vec<tokio::sync::OwnedMutexGuard<()>>,
    private: Vec<PrivateUse>,
}

impl Drop for StepMounts {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Overlays first (they sit on the trees and on the scratch directories).
        self.overlays.clear();
        self.trees.clear();
        for d in &self.dirs {
            if let Err(e) = std::fs::remove_dir_all(d) {
                tracing::warn!(dir = %d.display(), error = %e, "removing a step mount's scratch directory");
            }
        }
    }
}

/// A private cache directory in use: given back on drop.
struct PrivateUse(String);

impl Drop for PrivateUse {
    fn drop(&mut self) {
        if let Ok(mut m) = in_use().lock() {
            m.remove(&self.0);
        }
    }
}

/// Locks of `locked` cache mounts and the `private` ones in use, by cache directory.
fn locks() -> &'static Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
    static L: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    L.get_or_init(Mutex::default)
}

fn in_use() -> &'static Mutex<std::collections::HashSet<String>> {
    static U: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
    U.get_or_init(Mutex::default)
}

/// The cache directory name of `id` (its digest: any ID is a safe name).
fn cache_name(id: &str) -> String {
    super::solve::hex_key(&["cache-mount", id])
}

/// A directory `path` with `mode`, `uid`, `gid` (made with its parents when missing).
fn make_dir(path: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), BuildError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(io(format!("creating {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(io(format!("chown {}", path.display())))
}

/// The overlay of a writable bind: `lower` under a scratch upper directory in `dir`.
fn overlay(tmp: &Path, dir: &Path, lower: &Path) -> Result<Mounted, BuildError> {
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
    }
    let m = Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec![
            format!("lowerdir={}", lower.display()),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        ],
    };
    Mounted::new(tmp, &[m])
}

impl Ctx {
    /// Sets up the mounts `ms` of a RUN step of stage `stage` with working directory `cwd`.
    pub(super) async fn step_mounts(
        self: &Arc<Self>,
        ms: &[RunMount],
        stage: usize,
        cwd: &str,
        line: usize,
    ) -> Result<StepMounts, BuildError> {
        let mut out = StepMounts::default();
        let bad = |e: super::run_mount::MountError| BuildError::RunMount { line, source: e };
        for (n, m) in ms.iter().enumerate() {
            let target = m.target_in(cwd, n).map_err(bad)?;
            match m.typ {
                MountType::Tmpfs => {
                    out.key.push(format!("tmpfs\0{target}\0{:?}", m.size));
                    out.mounts.push(StepMount::Tmpfs {
                        target,
                        size: m.size,
                    });
                }
                MountType::Bind => {
                    let (from_key, top) = self.mount_source(m, stage, line).await?;
                    let (snap, tmp, context) = (
                        self.w.snapshotter.clone(),
                        self.w.tmp.clone(),
                        self.req.context.clone(),
                    );
                    let (src, rw) = (m.source.clone(), !m.readonly);
                    let (tree, path, digest, ov, scratch) = blocking(move || {
                        let tree = SourceTree::open(&snap, &tmp, &context, top.as_ref())?;
                        let path = match &tree.root {
                            SourceRoot::Context(root) => rootpath::resolve_strict(root, &src, true)
                                .map_err(|e| {
                                    BuildError::Exec(crate::executor::ExecError::Workdir(e))
                                })?,
                            SourceRoot::Image(root) => rootpath::resolve(root, &src, true)
                                .map_err(|e| {
                                    BuildError::Exec(crate::executor::ExecError::Workdir(e))
                                })?,
                        };
                        if std::fs::symlink_metadata(&path).is_err() {
                            return Err(BuildError::Io {
                                context: format!("mount source {src:?}"),
                                source: std::io::Error::from(std::io::ErrorKind::NotFound),
                            });
                        }
                        let digest = copy::digest_sources(&[Source {
                            written: String::new(),
                            path: path.clone(),
                        }])?
                        .hex();
                        let (mut ov, mut scratch) = (None, None);
                        let mut path = path;
                        if rw && path.is_dir() {
                            let dir = tmp.join(format!("rw-{}", random_suffix()));
                            scratch = Some(dir.clone());
                            let o = overlay(&tmp, &dir, &path)?;
                            path = o.dir.clone();
                            ov = Some(o);
                        } else if rw {
                            // A single file: the step writes a copy.
                            let dir = tmp.join(format!("rw-{}", random_suffix()));
                            std::fs::create_dir_all(&dir)
                                .map_err(io(format!("creating {}", dir.display())))?;
                            let copy = dir.join("file");
                            std::fs::copy(&path, &copy)
                                .map_err(io(format!("copying {}", path.display())))?;
                            scratch = Some(dir);
                            path = copy;
                        }
                        Ok((tree, path, digest, ov, scratch))
                    })
                    .await?;
                    out.trees.push(tree);
                    out.overlays.extend(ov);
                    out.dirs.extend(scratch);
                    out.key.push(format!(
                        "bind\0{target}\0{from_key}\0{digest}\0{}",
                        m.readonly
                    ));
                    out.mounts.push(StepMount::Bind {
                        target,
                        source: path,
                        readonly: m.readonly,
                    });
                }
                MountType::Cache => {
                    let id = m.cache_id();
                    out.key
                        .push(format!("cache\0{target}\0{id}\0{}", m.readonly));
                    let base = self.w.cache_mounts.clone();
                    let mut name = cache_name(&id);
                    match m.sharing {
                        Sharing::Shared => {}
                        Sharing::Locked => {
                            let l = locks()
                                .lock()
                                .map(|mut l| l.entry(name.clone()).or_default().clone())
                                .ok();
                            if let Some(l) = l {
                                out._locks.push(l.lock_owned().await);
                            }
                        }
                        Sharing::Private => {
                            let free = in_use()
                                .lock()
                                .map(|mut u| u.insert(name.clone()))
                                .unwrap_or(true);
                            if free {
                                out.private.push(PrivateUse(name.clone()));
                            } else {
                                // In use: this step gets a directory of its own, for now.
                                name = format!("private-{}", random_suffix());
                            }
                        }
                    }
                    let dir = base.join(&name);
                    let temporary = name.starts_with("private-");
                    let (mode, uid, gid) = (
                        m.mode.unwrap_or(0o755),
                        m.uid.unwrap_or(0),
                        m.gid.unwrap_or(0),
                    );
                    let d = dir.clone();
                    blocking(move || {
                        if !d.exists() {
                            let tmp_dir = d.with_extension(format!("new-{}", random_suffix()));
                            make_dir(&tmp_dir, mode, uid, gid)?;
                            if let Err(e) = std::fs::rename(&tmp_dir, &d) {
                                let _ = std::fs::remove_dir(&tmp_dir);
                                if !d.exists() {
                                    return Err(io(format!("creating {}", d.display()))(e));
                                }
                            }
                        } else if m_has_owner(mode, uid, gid) {
                            // An existing cache keeps its contents; the root takes the
                            // asked owner and mode, as a fresh one would have.
                            make_dir(&d, mode, uid, gid)?;
                        }
                        Ok(())
                    })
                    .await?;
                    if temporary {
                        out.dirs.push(dir.clone());
                    }
                    out.mounts.push(StepMount::Bind {
                        target,
                        source: dir,
                        readonly: m.readonly,
                    });
                }
                MountType::Secret => {
                    let id = m.secret_id();
                    out.key.push(format!("secret\0{target}\0{id}"));
                    let data = match &self.req.secrets {
                        Some(s) => s.secret(&id).await,
                        None => Err(SecretError::NotFound(id.clone())),
                    };
                    let data = match data {
                        Ok(d) => d,
                        Err(SecretError::NotFound(_)) if !m.required => continue,
                        Err(e) => return Err(BuildError::Secret(e)),
                    };
                    let (mode, uid, gid) = (
                        m.mode.unwrap_or(0o400),
                        m.uid.unwrap_or(0),
                        m.gid.unwrap_or(0),
                    );
                    let dir = self.w.tmp.join(format!("secret-{}", random_suffix()));
                    let d = dir.clone();
                    let file = blocking(move || {
                        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
                        std::fs::DirBuilder::new()
                            .mode(0o700)
                            .create(&d)
                            .map_err(io(format!("creating {}", d.display())))?;
                        let f = d.join("secret");
                        let mut fh = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&f)
                            .map_err(io(format!("creating {}", f.display())))?;
                        std::io::Write::write_all(&mut fh, &data)
                            .map_err(io(format!("writing {}", f.display())))?;
                        std::os::unix::fs::chown(&f, Some(uid), Some(gid))
                            .map_err(io(format!("chown {}", f.display())))?;
                        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode))
                            .map_err(io(format!("chmod {}", f.display())))?;
                        Ok(f)
                    })
                    .await;
                    out.dirs.push(dir);
                    out.mounts.push(StepMount::Bind {
                        target,
                        source: file?,
                        readonly: true,
                    });
                }
                MountType::Ssh => {
                    let id = if m.id.is_empty() {
                        "default".to_string()
                    } else {
                        m.id.clone()
                    };
                    out.key.push(format!("ssh\0{target}\0{id}"));
                    let Some(src) = self.req.ssh.clone() else {
                        if m.required {
                            return Err(BuildError::Ssh(SshError::NotFound(id)));
                        }
                        continue;
                    };
                    match src.check(&id).await {
                        Ok(()) => {}
                        Err(SshError::NotFound(_)) if !m.required => continue,
                        Err(e) => return Err(BuildError::Ssh(e)),
                    }
                    let dir = self.w.tmp.join(format!("ssh-{}", random_suffix()));
                    out.dirs.push(dir.clone());
                    let sock = self.ssh_socket(&dir, m).await?;
                    let listener = tokio::net::UnixListener::bind(&sock)
                        .map_err(io(format!("listening on {}", sock.display())))?;
                    let s = sock.clone();
                    let (mode, uid, gid) = (
                        m.mode.unwrap_or(0o600),
                        m.uid.unwrap_or(0),
                        m.gid.unwrap_or(0),
                    );
                    blocking(move || {
                        use std::os::unix::fs::PermissionsExt;
                        std::os::unix::fs::chown(&s, Some(uid), Some(gid))
                            .map_err(io(format!("chown {}", s.display())))?;
                        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(mode))
                            .map_err(io(format!("chmod {}", s.display())))
                    })
                    .await?;
                    out.tasks.push(tokio::spawn(serve_agent(listener, src, id)));
                    if m.target.is_empty()
                        && !out.env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK="))
                    {
                        out.env.push(format!("SSH_AUTH_SOCK={target}"));
                    }
                    out.mounts.push(StepMount::Bind {
                        target,
                        source: sock,
                        readonly: false,
                    });
                }
            }
        }
        Ok(out)
    }

    /// A fresh directory `dir` for the agent socket of `m`; the socket's path.
    async fn ssh_socket(&self, dir: &Path, _m: &RunMount) -> Result<PathBuf, BuildError> {
        let d = dir.to_path_buf();
        blocking(move || {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&d)
                .map_err(io(format!("creating {}", d.display())))?;
            Ok(d.join("agent.sock"))
        })
        .await
    }

    /// The key and top snapshot of what a bind shows: the context (`None`), a stage or
    /// an image.
    async fn mount_source(
        self: &Arc<Self>,
        m: &RunMount,
        stage: usize,
        line: usize,
    ) -> Result<(String, Option<Option<String>>), BuildError> {
        let Some(f) = &m.from else {
            return Ok(("context".into(), None));
        };
        let r = match self.stage_index(f, stage) {
            Some(j) => self.clone().stage(j).await?,
            None if self
                .req
                .dockerfile
                .stages
                .iter()
                .any(|s| s.name.as_deref() == Some(&f.to_ascii_lowercase())) =>
            {
                return Err(InstructionError::CopyFromLater(f.clone()).at(line))
            }
            None => self.image(f, None, line).await?,
        };
        // The content digest keys the mount; the source's key is not needed.
        Ok(("from".into(), Some(r.top)))
    }
}

/// Whether a cache mount asks for other than the default owner and mode.
fn m_has_owner(mode: u32, uid: u32, gid: u32) -> bool {
    mode != 0o755 || uid != 0 || gid != 0
}

/// Accepts the step's connections to its agent socket, each forwarded to `src` until it
/// closes; ends (and with it every forward) when the step's mounts are dropped.
async fn serve_agent(listener: tokio::net::UnixListener, src: Arc<dyn SshSource>, id: String) {
    let mut forwards = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            c = listener.accept() => match c {
                Ok((conn, _)) => {
                    let f = src.forward(id.clone(), conn);
                    forwards.spawn(async move {
                        if let Err(e) = f.await {
                            tracing::debug!(error = %e, "an SSH agent connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on a step's SSH agent socket");
                    return;
                }
            },
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
}
