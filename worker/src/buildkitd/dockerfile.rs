//! The `dockerfile.v0` frontend run by the daemon: buildctl's attributes checked
//! ([`Attrs::parse`]), the Dockerfile and the context fetched from the Solve's session with
//! `FileSync.DiffCopy` (`dockerfile` with only the file, the context's `.dockerignore`, then
//! the context with its exclude patterns) into a private temporary directory under the
//! worker's scratch space, bounded by the receiver's limits and removed after the build,
//! and the build run by the one engine, `crate::frontend::build`, with the session's ID for
//! its registry accesses. Progress shows the transfers as BuildKit names them
//! (`[internal] load build definition from Dockerfile`, `[internal] load .dockerignore`,
//! `[internal] load build context`).

use super::session::filesync::{receive, DiffCopyOptions, ReceiveLimits};
use super::session::secrets::{SessionSecrets, GET_SECRET};
use super::session::ssh::{SessionSsh, CHECK_AGENT};
use super::session::Session;
use crate::executor::rootpath;
use crate::frontend::dockerfile::{self, MAX_DOCKERFILE};
use crate::frontend::progress::Progress;
use crate::frontend::{build, BuildError, BuildRequest, StageResult, Worker};
use stargaze_fs::remote::Platform;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use tonic::Status;

/// The frontend's name.
pub const DOCKERFILE_FRONTEND: &str = "dockerfile.v0";

/// Bytes of a `.dockerignore` read.
const MAX_DOCKERIGNORE: u64 = 1 << 20;

/// Attributes BuildKit's Dockerfile frontend knows that this one accepts and ignores
/// (exact keys, and prefixes ending in `:`).
const IGNORED: &[&str] = &[
    "image-resolve-mode",
    "force-network-mode",
    "add-hosts",
    "hostname",
    "shm-size",
    "ulimit",
    "cgroup-parent",
    "multi-platform",
    "cache-imports",
    "cache-from",
    "contextkey",
    "dockerfilekey",
    "attest:",
    "input-metadata:",
    "build-arg:BUILDKIT_",
];

/// buildctl's attributes for `dockerfile.v0`, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    /// `filename` (default `Dockerfile`): the Dockerfile's path in the `dockerfile` local.
    pub filename: String,
    /// `target`.
    pub target: Option<String>,
    /// `build-arg:K`.
    pub build_args: BTreeMap<String, String>,
    /// `platform` (one).
    pub platform: Option<Platform>,
    /// `no-cache` (any value: every stage).
    pub no_cache: bool,
    /// `label:K`, set on the result's config.
    pub labels: BTreeMap<String, String>,
}

fn bad(m: String) -> Status {
    Status::invalid_argument(m)
}

impl Attrs {
    /// Checks `attrs`: a known attribute with a bad value, or an unknown one, is
    /// `InvalidArgument`.
    pub fn parse(attrs: &HashMap<String, String>) -> Result<Attrs, Status> {
        let mut a = Attrs {
            filename: "Dockerfile".into(),
            ..Attrs::default()
        };
        let mut keys: Vec<_> = attrs.keys().collect();
        keys.sort();
        for k in keys {
            let v = &attrs[k];
            if k.len() > 256 || v.len() > 64 << 10 {
                return Err(bad(format!("frontend attribute {:.64}: too long", k)));
            }
            if let Some(name) = k.strip_prefix("build-arg:") {
                if name.starts_with("BUILDKIT_") {
                    continue;
                }
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(bad(format!(
                        "frontend attribute {k:?}: not a build argument name"
                    )));
                }
                a.build_args.insert(name.to_string(), v.clone());
            } else if let Some(name) = k.strip_prefix("label:") {
                if name.is_empty() {
                    return Err(bad(format!("frontend attribute {k:?}: empty label name")));
                }
                a.labels.insert(name.to_string(), v.clone());
            } else {
                match k.as_str() {
                    "filename" => a.filename = check_filename(v)?,
                    "target" => a.target = (!v.is_empty()).then(|| v.clone()),
                    "no-cache" => a.no_cache = true,
                    "platform" => {
                        if v.contains(',') {
                            return Err(bad(format!(
                                "platform={v}: stargaze builds one platform at a time"
                            )));
                        }
                        if !v.is_empty() {
                            let p = Platform::parse(v)
                                .map_err(|e| bad(format!("platform={v}: {e}")))?;
                            a.platform = Some(p);
                        }
                    }
                    _ if IGNORED
                        .iter()
                        .any(|i| k == i || (i.ends_with(':') && k.starts_with(i))) =>
                    {
                        tracing::debug!(attribute = %k, "frontend attribute ignored");
                    }
                    _ => {
                        return Err(bad(format!(
                            "frontend attribute {k:?} is not supported by stargaze's dockerfile.v0 \
                             (filename, target, build-arg:K, platform, no-cache, label:K are)"
                        )))
                    }
                }
            }
        }
        Ok(a)
    }
}

/// A Dockerfile path inside the `dockerfile` local: relative, no `..`.
fn check_filename(v: &str) -> Result<String, Status> {
    let f = v.trim_start_matches("./");
    let ok = !f.is_empty()
        && f.len() <= 1024
        && !f.starts_with('/')
        && f.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(f.to_string())
    } else {
        Err(bad(format!(
            "filename={v:?}: must be a relative path inside the dockerfile directory"
        )))
    }
}

/// The lines of a `.dockerignore` as exclude patterns (comments and blanks dropped).
pub fn dockerignore_patterns(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.to_string())
        .collect()
}

/// Why the frontend failed, as a gRPC status naming what failed.
pub fn build_status(e: &BuildError) -> Status {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    match e {
        BuildError::Parse(_) | BuildError::Instruction { .. } => Status::invalid_argument(msg),
        _ => Status::unknown(msg),
    }
}

/// Receives `dir_name` from `session` into a new directory `sub` under `tmp`.
async fn fetch(
    session: &Session,
    tmp: &Path,
    sub: &str,
    opts: DiffCopyOptions,
    progress: &Arc<Progress>,
    title: &str,
    task: &str,
) -> Result<std::path::PathBuf, Status> {
    let v = progress.vertex(title);
    let started = std::time::SystemTime::now();
    let target = tmp.join(sub);
    if let Err(e) = std::fs::create_dir(&target) {
        v.error(&e);
        return Err(Status::internal(format!(
            "creating {}: {e}",
            target.display()
        )));
    }
    match receive(session.channel(), &opts, &target, &ReceiveLimits::default()).await {
        Ok(got) => {
            tracing::debug!(dir = %opts.dir_name, files = got.files, bytes = got.bytes, "received");
            v.task(task, i64::try_from(got.bytes).unwrap_or(i64::MAX), started);
            v.done();
            Ok(target)
        }
        Err(e) => {
            v.error(&e);
            Err(Status::failed_precondition(format!(
                "{title}: receiving {:?} from the session: {e}",
                opts.dir_name
            )))
        }
    }
}

fn read_bounded(path: &Path, max: u64) -> Result<Option<String>, Status> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Status::internal(format!("{}: {e}", path.display()))),
    };
    let mut text = String::new();
    f.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("{}: {e} (must be UTF-8 text)", path.display())))?;
    if text.len() as u64 > max {
        return Err(bad(format!("{}: larger than {max} bytes", path.display())));
    }
    Ok(Some(text))
}

/// What to fetch from the `dockerfile` local for the Dockerfile `filename`: the file, its own
/// `FILENAME.dockerignore` (used instead of the context's `.dockerignore` when present) and,
/// for the default name, the lower-case `dockerfile` that BuildKit falls back to. Symlinks
/// among them are followed by the client, so their targets come along.
fn dockerfile_paths(filename: &str) -> Vec<String> {
    let mut v = vec![filename.to_string(), format!("{filename}.dockerignore")];
    if filename == "Dockerfile" {
        v.push("dockerfile".into());
    }
    v
}

/// Reads `rel` inside the received directory `dir`, following symlinks only inside it
/// (one that leads out is an error, never a read of the daemon's files); `None` when it
/// does not exist.
fn read_in(dir: &Path, rel: &str, max: u64) -> Result<Option<String>, Status> {
    let path = rootpath::resolve_strict(dir, rel, true).map_err(|e| bad(format!("{rel}: {e}")))?;
    read_bounded(&path, max)
}

/// The Dockerfile `filename` from the received `dir` (the default name falling back to
/// `dockerfile`), bounded.
fn read_dockerfile(dir: &Path, filename: &str) -> Result<String, Status> {
    if let Some(t) = read_in(dir, filename, MAX_DOCKERFILE as u64)? {
        return Ok(t);
    }
    if filename == "Dockerfile" {
        if let Some(t) = read_in(dir, "dockerfile", MAX_DOCKERFILE as u64)? {
            return Ok(t);
        }
    }
    Err(bad(format!(
        "failed to read dockerfile: {filename} not found in the dockerfile directory"
    )))
}

/// Runs `dockerfile.v0` with `attrs` over the session `session` (its ID in `session_id`),
/// its layers as eStargz when `estargz`.
pub async fn run(
    worker: &Arc<Worker>,
    session: &Session,
    session_id: &str,
    attrs: &Attrs,
    estargz: bool,
    progress: &Arc<Progress>,
) -> Result<StageResult, Status> {
    let tmp = tempfile::Builder::new()
        .prefix("solve-")
        .tempdir_in(&worker.tmp)
        .map_err(|e| {
            Status::internal(format!(
                "a temporary directory in {}: {e}",
                worker.tmp.display()
            ))
        })?;
    let wanted = dockerfile_paths(&attrs.filename);
    let df_dir = fetch(
        session,
        tmp.path(),
        "dockerfile",
        DiffCopyOptions {
            dir_name: "dockerfile".into(),
            include_patterns: wanted.clone(),
            follow_paths: wanted,
            ..DiffCopyOptions::default()
        },
        progress,
        &format!("[internal] load build definition from {}", attrs.filename),
        "transferring dockerfile",
    )
    .await?;
    let text = read_dockerfile(&df_dir, &attrs.filename)?;
    let df = dockerfile::parse(&text).map_err(|e| bad(format!("{}: {e}", attrs.filename)))?;
    let own_ignore = read_in(
        &df_dir,
        &format!("{}.dockerignore", attrs.filename),
        MAX_DOCKERIGNORE,
    )?;
    let ignore = match own_ignore {
        Some(t) => Some(t),
        None => {
            let ign_dir = fetch(
                session,
                tmp.path(),
                "dockerignore",
                DiffCopyOptions {
                    dir_name: "context".into(),
                    include_patterns: vec![".dockerignore".into()],
                    ..DiffCopyOptions::default()
                },
                progress,
                "[internal] load .dockerignore",
                "transferring context",
            )
            .await?;
            read_bounded(&ign_dir.join(".dockerignore"), MAX_DOCKERIGNORE)?
        }
    };
    let excludes = ignore
        .map(|t| dockerignore_patterns(&t))
        .unwrap_or_default();
    let context = fetch(
        session,
        tmp.path(),
        "context",
        DiffCopyOptions {
            dir_name: "context".into(),
            exclude_patterns: excludes,
            override_excludes: true,
            ..DiffCopyOptions::default()
        },
        progress,
        "[internal] load build context",
        "transferring context",
    )
    .await?;
    let req = BuildRequest {
        dockerfile: df,
        context,
        build_args: attrs.build_args.clone(),
        target: attrs.target.clone(),
        platform: attrs.platform.clone().unwrap_or_else(Platform::host),
        estargz,
        no_cache: attrs.no_cache,
        sessions: vec![session_id.to_string()],
        secrets: Some(Arc::new(SessionSecrets::new(
            session_id,
            session.channel(),
            session.serves(GET_SECRET),
        ))),
        ssh: Some(Arc::new(SessionSsh::new(
            session_id,
            session.channel(),
            session.serves(CHECK_AGENT),
        ))),
    };
    // Its own task and cancel signal: when this call is dropped (the client went away) the
    // guard cancels the steps and the task cleans up; the context goes with the task.
    let (w, _cancel) = super::cancel::per_build(worker);
    let p = progress.clone();
    let task = tokio::spawn(async move {
        let out = build(Arc::new(w), req, p).await;
        drop(tmp);
        out
    });
    let out = task
        .await
        .map_err(|e| Status::internal(format!("the build task failed: {e}")))?
        .map_err(|e| build_status(&e))?;
    let mut image = out.image;
    if !attrs.labels.is_empty() {
        image.config.edit_config(|c| {
            let mut l = c.labels().clone().unwrap_or_default();
            l.extend(attrs.labels.clone());
            c.set_labels(Some(l));
        });
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn buildctl_attributes_are_read_and_bad_ones_refused() {
        let a = Attrs::parse(&attrs(&[
            ("filename", "sub/Dockerfile.dev"),
            ("target", "build"),
            ("build-arg:GREETING", "hi"),
            ("build-arg:BUILDKIT_INLINE_CACHE", "1"),
            ("label:team", "infra"),
            ("no-cache", ""),
            ("platform", "linux/amd64"),
            ("image-resolve-mode", "default"),
        ]))
        .unwrap();
        assert_eq!(a.filename, "sub/Dockerfile.dev");
        assert_eq!(a.target.as_deref(), Some("build"));
        assert_eq!(a.build_args.len(), 1);
        assert_eq!(a.labels["team"], "infra");
        assert!(a.no_cache && a.platform.is_some());
        assert_eq!(
            Attrs::parse(&HashMap::new()).unwrap().filename,
            "Dockerfile"
        );
        for bad in [
            ("filename", "../Dockerfile"),
            ("filename", "/etc/passwd"),
            ("platform", "linux/amd64,linux/arm64"),
            ("platform", "no"),
            ("build-arg:A-B", "x"),
            ("context:base", "docker-image://x"),
            ("frobnicate", "1"),
        ] {
            let e = Attrs::parse(&attrs(&[bad])).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn the_dockerfile_is_found_through_symlinks_inside_only_and_lower_case() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("Dockerfile.web"), "FROM scratch\n").unwrap();
        std::os::unix::fs::symlink("Dockerfile.web", p.join("Dockerfile")).unwrap();
        assert_eq!(read_dockerfile(p, "Dockerfile").unwrap(), "FROM scratch\n");
        // An absolute target is taken inside the directory, never on the daemon's side.
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), "FROM secret\n").unwrap();
        std::os::unix::fs::symlink(outside.path(), p.join("Abs")).unwrap();
        assert_eq!(
            read_dockerfile(p, "Abs").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        std::os::unix::fs::symlink("../../etc/passwd", p.join("Up")).unwrap();
        assert_eq!(
            read_dockerfile(p, "Up").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let l = tempfile::tempdir().unwrap();
        std::fs::write(l.path().join("dockerfile"), "FROM a\n").unwrap();
        assert_eq!(read_dockerfile(l.path(), "Dockerfile").unwrap(), "FROM a\n");
        assert!(read_dockerfile(l.path(), "Other").is_err());
        assert_eq!(
            dockerfile_paths("Dockerfile"),
            vec!["Dockerfile", "Dockerfile.dockerignore", "dockerfile"]
        );
        assert_eq!(dockerfile_paths("x/D2"), vec!["x/D2", "x/D2.dockerignore"]);
    }

    #[test]
    fn dockerignore_lines_become_patterns() {
        assert_eq!(
            dockerignore_patterns("# c\n\n secret.txt \n*.log\n!keep.log\n"),
            vec!["secret.txt", "*.log", "!keep.log"]
        );
    }
}
