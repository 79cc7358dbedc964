//! The OCI worker's identity and labels, as buildkitd keeps them: a state directory per
//! (root, snapshotter) — `ROOT/runc-<snapshotter>` — holding a `workerid` file with a random
//! 25-character base-36 ID written once (mode 0400), and the `org.mobyproject.buildkit.worker.*`
//! labels (executor, snapshotter, hostname, process mode, network, SELinux, AppArmor profile)
//! with the user's labels
//! merged over them.

use crate::config::OciWorkerConfig;
use crate::executor::NetworkKind;
use crate::snapshot::Backend;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Label prefix.
pub const LABEL_PREFIX: &str = "org.mobyproject.buildkit.worker.";
/// Length of a worker ID.
const ID_LEN: usize = 25;

/// Why the identity could not be had.
#[derive(Debug, thiserror::Error)]
#[error("worker state {path}: {source}")]
pub struct IdentityError {
    /// The file or directory.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError {
        path: path.to_path_buf(),
        source,
    }
}

/// The worker's state directory for `snapshotter` (resolved, not `auto`) under `root`
/// (created, mode 0700).
pub fn state_dir(root: &Path, snapshotter: Backend) -> Result<PathBuf, IdentityError> {
    let dir = root.join(format!("runc-{snapshotter}"));
    stargaze_fs::sys::private_dir(&dir).map_err(err(&dir))?;
    Ok(dir)
}

fn valid_id(s: &str) -> bool {
    s.len() == ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

fn new_id() -> Result<String, std::io::Error> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut n = u128::from_le_bytes(bytes);
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(ID_LEN);
    for _ in 0..ID_LEN {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The worker ID kept in `dir/workerid`, made on first use. A file that does not hold a
/// valid ID is an error (it is not silently replaced: jobs and caches refer to the ID).
pub fn worker_id(dir: &Path) -> Result<String, IdentityError> {
    let path = dir.join("workerid");
    match std::fs::read_to_string(&path) {
        Ok(s) if valid_id(s.trim()) => return Ok(s.trim().to_string()),
        Ok(_) => {
            return Err(IdentityError {
                path,
                source: std::io::Error::other("not a worker ID (25 lowercase base-36 characters)"),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(&path)(e)),
    }
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let id = new_id().map_err(err(&path))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err(dir))?;
    tmp.write_all(id.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o400))
        })
        .map_err(err(&path))?;
    // Another process may have written one meanwhile: the first stays.
    match tmp.persist_noclobber(&path) {
        Ok(_) => Ok(id),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => worker_id(dir),
        Err(e) => Err(err(&path)(e.error)),
    }
}

/// The worker's labels: built-ins for the resolved `snapshotter` and `network` mode, then
/// the user's (which may override them).
pub fn labels(
    cfg: &OciWorkerConfig,
    snapshotter: Backend,
    network: NetworkKind,
) -> BTreeMap<String, String> {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        out.insert(format!("{LABEL_PREFIX}{k}"), v.to_string());
    };
    put("executor", "oci");
    put("snapshotter", snapshotter.as_str());
    put("hostname", &hostname);
    put(
        "oci.process-mode",
        if cfg.no_process_sandbox {
            "no-sandbox"
        } else {
            "sandbox"
        },
    );
    put("network", network.as_str());
    // Build steps get no SELinux labels here (buildkitd's `--oci-worker-selinux` off).
    put("selinux.enabled", "false");
    if !cfg.apparmor_profile.is_empty() {
        put("apparmor.profile", &cfg.apparmor_profile);
    }
    out.extend(cfg.labels.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_made_once_and_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = state_dir(root.path(), Backend::Overlayfs).unwrap();
        let a = worker_id(&dir).unwrap();
        assert!(valid_id(&a), "{a}");
        assert_eq!(worker_id(&dir).unwrap(), a);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("workerid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        // Another snapshotter, another identity.
        let other = state_dir(root.path(), Backend::Native).unwrap();
        assert_ne!(worker_id(&other).unwrap(), a);
        // A damaged file is reported, not replaced.
        let bad = state_dir(root.path(), Backend::Stargz).unwrap();
        std::fs::write(bad.join("workerid"), "../../etc").unwrap();
        assert!(worker_id(&bad).is_err());
    }

    #[test]
    fn user_labels_win() {
        let mut cfg = OciWorkerConfig::default();
        cfg.labels
            .insert(format!("{LABEL_PREFIX}network"), "mine".into());
        cfg.labels.insert("team".into(), "infra".into());
        let l = labels(&cfg, Backend::Overlayfs, NetworkKind::Host);
        assert_eq!(l[&format!("{LABEL_PREFIX}executor")], "oci");
        assert_eq!(l[&format!("{LABEL_PREFIX}snapshotter")], "overlayfs");
        assert_eq!(l[&format!("{LABEL_PREFIX}oci.process-mode")], "sandbox");
        assert_eq!(l[&format!("{LABEL_PREFIX}network")], "mine");
        assert_eq!(l["team"], "infra");
    }
}
