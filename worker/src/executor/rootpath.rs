//! Paths inside a container root, resolved the way the kernel resolves them inside a chroot:
//! symlinks are followed, but an absolute target or a `..` starts again at the root and never
//! climbs above it. Everything the worker reads or writes inside a rootfs (`/etc/passwd`, the
//! working directory, COPY destinations) goes through here, so an image's symlink cannot
//! point a worker write at the host.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

/// Most symlinks followed in one resolution (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Why a path could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum RootPathError {
    /// A symlink loop, or too many links.
    #[error("{path}: too many levels of symbolic links")]
    Loop {
        /// The path asked for.
        path: String,
    },
    /// A component that must be a directory is something else.
    #[error("{path}: {component} is not a directory")]
    NotDir {
        /// The path asked for.
        path: String,
        /// The offending component.
        component: String,
    },
    /// A `..` or a symlink leads above the root (strict resolution only).
    #[error("{path}: leads outside its root")]
    Escapes {
        /// The path asked for.
        path: String,
    },
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The path asked for.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Resolves `path` (as seen inside the container) under `root`. The last component is
/// followed when it is a symlink only if `follow_last`. Missing components are allowed: the
/// result is where they would be created.
pub fn resolve(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, RootPathError> {
    walk(root, path, follow_last, false)
}

/// Like [`resolve`], but a `..` or a symlink that would climb above the root is an error
/// instead of stopping at the root (a build context, whose edges are a security boundary).
pub fn resolve_strict(
    root: &Path,
    path: &str,
    follow_last: bool,
) -> Result<PathBuf, RootPathError> {
    walk(root, path, follow_last, true)
}

fn walk(
    root: &Path,
    path: &str,
    follow_last: bool,
    strict: bool,
) -> Result<PathBuf, RootPathError> {
    let mut pending: Vec<String> = components(path);
    pending.reverse();
    let mut cur: Vec<String> = Vec::new();
    let mut links = 0;
    let mut missing = false;
    while let Some(comp) = pending.pop() {
        if comp == ".." {
            if cur.pop().is_none() && strict {
                return Err(RootPathError::Escapes { path: path.into() });
            }
            continue;
        }
        cur.push(comp);
        if missing {
            continue;
        }
        let full = join(root, &cur);
        let last = pending.is_empty();
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() && (!last || follow_last) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(RootPathError::Loop { path: path.into() });
                }
                let target = std::fs::read_link(&full).map_err(|source| RootPathError::Io {
                    path: path.into(),
                    source,
                })?;
                cur.pop();
                let t = target.to_string_lossy().to_string();
                if t.starts_with('/') {
                    if strict {
                        return Err(RootPathError::Escapes { path: path.into() });
                    }
                    cur.clear();
                }
                for c in components(&t).into_iter().rev() {
                    pending.push(c);
                }
            }
            Ok(m) if !last && !m.is_dir() => {
                return Err(RootPathError::NotDir {
                    path: path.into(),
                    component: format!("/{}", cur.join("/")),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => missing = true,
            Err(source) => {
                return Err(RootPathError::Io {
                    path: path.into(),
                    source,
                })
            }
        }
    }
    Ok(join(root, &cur))
}

/// Resolves `path` and creates the directories it names (and its missing ancestors), each
/// checked again after creation; returns the directory.
pub fn mkdir_all(root: &Path, path: &str, mode: u32) -> Result<PathBuf, RootPathError> {
    use std::os::unix::fs::DirBuilderExt;
    let mut so_far = String::new();
    let mut dir = root.to_path_buf();
    for comp in components(path) {
        so_far.push('/');
        so_far.push_str(&comp);
        dir = resolve(root, &so_far, true)?;
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(RootPathError::NotDir {
                    path: path.into(),
                    component: so_far.clone(),
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(mode)
                    .create(&dir)
                    .map_err(|source| RootPathError::Io {
                        path: path.into(),
                        source,
                    })?;
            }
            Err(source) => {
                return Err(RootPathError::Io {
                    path: path.into(),
                    source,
                })
            }
        }
    }
    Ok(dir)
}

fn components(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().to_string()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

fn join(root: &Path, comps: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(c);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_never_leave_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        symlink("../../../../etc", root.join("usr/escape")).unwrap();
        symlink("/", root.join("up")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        assert_eq!(
            resolve(root, "/lib/x", true).unwrap(),
            root.join("usr/lib/x")
        );
        assert_eq!(
            resolve(root, "/usr/escape/passwd", true).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(resolve(root, "/../../etc", true).unwrap(), root.join("etc"));
        assert_eq!(resolve(root, "/up/up/usr", true).unwrap(), root.join("usr"));
        assert_eq!(resolve(root, "/lib", false).unwrap(), root.join("lib"));
        assert!(matches!(
            resolve(root, "/loop1/x", true),
            Err(RootPathError::Loop { .. })
        ));
        let made = mkdir_all(root, "/lib/new/deeper", 0o755).unwrap();
        assert_eq!(made, root.join("usr/lib/new/deeper"));
        assert!(made.is_dir());
        std::fs::write(root.join("file"), b"x").unwrap();
        assert!(matches!(
            mkdir_all(root, "/file/sub", 0o755),
            Err(RootPathError::NotDir { .. })
        ));
    }
}
