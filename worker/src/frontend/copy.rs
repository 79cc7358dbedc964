//! COPY and ADD: sources from the build context (which must stay inside it: `..`, absolute
//! paths and symlinks that lead out are errors naming the source) or from another stage's
//! rootfs (resolved as inside that image), with `*`/`?`/`[...]` wildcards; destinations
//! resolved inside the step's rootfs like the kernel would in a chroot, so an image's
//! symlink never sends a write to the host. A digest of everything a COPY would write is
//! its cache key part, taken before anything is written.

use crate::executor::rootpath::{self, RootPathError};
use stargaze_fs::digest::Hasher;
use stargaze_fs::format::FormatError;
use stargaze_fs::Digest;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where COPY sources are read from.
#[derive(Debug, Clone)]
pub enum SourceRoot {
    /// The build context: sources must stay inside it.
    Context(PathBuf),
    /// Another stage's (or image's) rootfs, mounted here.
    Image(PathBuf),
}

/// Why a COPY failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A source leaves the context.
    #[error("COPY source {src:?} is outside the build context ({why})")]
    Outside {
        /// The source as written.
        src: String,
        /// How.
        why: &'static str,
    },
    /// A source could not be resolved inside the context.
    #[error("COPY source {src:?} is outside the build context ({source})")]
    Unresolved {
        /// The source as written.
        src: String,
        /// Why.
        #[source]
        source: RootPathError,
    },
    /// A source matches nothing.
    #[error("COPY source {0:?} not found in the build context")]
    NotFound(String),
    /// A destination (or a stage source) could not be resolved or made.
    #[error("COPY destination {dest:?}: {source}")]
    Dest {
        /// The destination as written.
        dest: String,
        /// Why.
        #[source]
        source: RootPathError,
    },
    /// Several sources, and the destination is not a directory.
    #[error(
        "COPY destination {0:?}: with more than one source the destination must be a directory ending in /"
    )]
    DestNotDir(String),
    /// ADD could not unpack an archive.
    #[error("COPY destination {dest:?}: unpacking the archive: {source}")]
    Unpack {
        /// The archive as written.
        dest: String,
        /// Why.
        #[source]
        source: Box<FormatError>,
    },
    /// A bad `--chmod`.
    #[error("--chmod={0}: not an octal mode")]
    Chmod(String),
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

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CopyError {
    let context = context.to_string();
    move |source| CopyError::Io { context, source }
}

/// One matched source.
#[derive(Debug, Clone)]
pub struct Source {
    /// As written in the Dockerfile (after expansion).
    pub written: String,
    /// Its path on this machine.
    pub path: PathBuf,
}

/// Whether `name` matches a Dockerfile wildcard `pat` (`*`, `?`, `[...]`). Greedy with
/// one backtrack point (the last `*`), so any pattern runs in O(len(pat) × len(name)): a
/// hostile pattern like `*a*a*a*…b` cannot make it take exponential time.
pub fn glob_match(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // One pattern item at `i`: (matches `c`?, length of the item in `p`).
    let item = |i: usize, c: char| -> (bool, usize) {
        match p[i] {
            '?' => (true, 1),
            '[' => match p[i + 1..].iter().position(|&x| x == ']') {
                None => (c == '[', 1),
                Some(len) => {
                    let set = &p[i + 1..i + 1 + len];
                    let (neg, set) = match set.first() {
                        Some('!' | '^') => (true, &set[1..]),
                        _ => (false, set),
                    };
                    let mut hit = false;
                    let mut k = 0;
                    while k < set.len() {
                        if k + 2 < set.len() && set[k + 1] == '-' {
                            hit |= set[k] <= c && c <= set[k + 2];
                            k += 3;
                        } else {
                            hit |= set[k] == c;
                            k += 1;
                        }
                    }
                    (hit != neg, len + 2)
                }
            },
            x => (x == c, 1),
        }
    };
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == '*' {
            star = Some((i + 1, j));
            i += 1;
            continue;
        }
        if i < p.len() {
            let (ok, len) = item(i, n[j]);
            if ok {
                i += len;
                j += 1;
                continue;
            }
        }
        match star {
            Some((si, sj)) => {
                i = si;
                j = sj + 1;
                star = Some((si, sj + 1));
            }
            None => return false,
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn resolve_in(root: &SourceRoot, rel: &str, written: &str) -> Result<PathBuf, CopyError> {
    match root {
        SourceRoot::Context(dir) => rootpath::resolve_strict(dir, rel, true).map_err(|e| match e {
            RootPathError::Escapes { .. } => CopyError::Outside {
                src: written.into(),
                why: "a `..` or a symlink leads out of it",
            },
            source => CopyError::Unresolved {
                src: written.into(),
                source,
            },
        }),
        SourceRoot::Image(dir) => {
            rootpath::resolve(dir, rel, true).map_err(|source| CopyError::Dest {
                dest: written.into(),
                source,
            })
        }
    }
}

/// Resolves the sources, expanding wildcards (in the last path component; one matching nothing
/// gives no source).
pub fn resolve_sources(root: &SourceRoot, srcs: &[String]) -> Result<Vec<Source>, CopyError> {
    let mut out = Vec::new();
    for s in srcs {
        if let SourceRoot::Context(_) = root {
            if s.starts_with('/') {
                return Err(CopyError::Outside {
                    src: s.clone(),
                    why: "absolute paths are not in the context; write it relative to the context",
                });
            }
        }
        let trimmed = s.trim_end_matches('/');
        let (dir_part, last) = match trimmed.rsplit_once('/') {
            Some((d, l)) => (d, l),
            None => ("", trimmed),
        };
        if has_wildcard(dir_part) {
            return Err(CopyError::NotFound(format!(
                "{s} (wildcards only in the last component)"
            )));
        }
        if !has_wildcard(last) {
            let path = resolve_in(root, if trimmed.is_empty() { "." } else { trimmed }, s)?;
            if std::fs::symlink_metadata(&path).is_err() {
                return Err(CopyError::NotFound(s.clone()));
            }
            out.push(Source {
                written: s.clone(),
                path,
            });
            continue;
        }
        let dir = resolve_in(root, if dir_part.is_empty() { "." } else { dir_part }, s)?;
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(d) => d
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| glob_match(last, n))
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        // A wildcard that matches nothing copies nothing (as in BuildKit), not an error.
        for n in names {
            let rel = if dir_part.is_empty() {
                n.clone()
            } else {
                format!("{dir_part}/{n}")
            };
            out.push(Source {
                written: rel.clone(),
                path: resolve_in(root, &rel, s)?,
            });
        }
    }
    Ok(out)
}

/// A digest of the sources' names, types, modes, link targets and contents.
pub fn digest_sources(sources: &[Source]) -> Result<Digest, CopyError> {
    let mut h = Hasher::new();
    for s in sources {
        h.update(s.written.as_bytes());
        h.update(b"\0");
        hash_tree(&mut h, &s.path, "")?;
    }
    Ok(h.finish())
}

fn hash_tree(h: &mut Hasher, path: &Path, rel: &str) -> Result<(), CopyError> {
    let m =
        std::fs::symlink_metadata(path).map_err(io(format!("inspecting {}", path.display())))?;
    h.update(format!("{rel}\0{:o}\0", m.mode()).as_bytes());
    let ft = m.file_type();
    if ft.is_symlink() {
        let t = std::fs::read_link(path).map_err(io(format!("reading link {}", path.display())))?;
        h.update(t.as_os_str().as_encoded_bytes());
    } else if ft.is_file() {
        let mut f = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
        std::io::copy(&mut f, h).map_err(io(format!("reading {}", path.display())))?;
    } else if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .map_err(io(format!("reading {}", path.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let r = format!("{rel}/{}", n.to_string_lossy());
            hash_tree(h, &path.join(&n), &r)?;
        }
    }
    h.update(b"\n");
    Ok(())
}

/// How to write.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// Owner of everything written; `None` keeps the source's owner (stage sources) or
    /// uses root (context sources).
    pub owner: Option<(u32, u32)>,
    /// Mode of everything written (`--chmod`).
    pub mode: Option<u32>,
    /// The sources come from the context (owner defaults to root).
    pub from_context: bool,
    /// ADD: local tar archives (plain, gzip, zstd) are unpacked into the destination.
    pub unpack_archives: bool,
}

/// Parses `--chmod`.
pub fn parse_chmod(s: &str) -> Result<u32, CopyError> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| CopyError::Chmod(s.into()))
}

/// What a copy wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct CopyStats {
    /// Entries written.
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Copies `sources` to `dest` (inside the container; relative to `workdir`) in `rootfs`.
pub fn copy_into(
    rootfs: &Path,
    sources: &[Source],
    dest: &str,
    workdir: &str,
    opts: &CopyOptions,
) -> Result<CopyStats, CopyError> {
    let dest_abs = if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!("{}/{dest}", workdir.trim_end_matches('/'))
    };
    let dest_err = |source| CopyError::Dest {
        dest: dest.into(),
        source,
    };
    let mut stats = CopyStats::default();
    if sources.is_empty() {
        return Ok(stats);
    }
    let single_file = sources.len() == 1
        && std::fs::symlink_metadata(&sources[0].path).is_ok_and(|m| !m.is_dir());
    let into_dir = dest.ends_with('/') || dest.ends_with("/.") || dest == "." || !single_file || {
        let p = rootpath::resolve(rootfs, &dest_abs, true).map_err(dest_err)?;
        p.is_dir()
    };
    let archives: Vec<bool> = sources
        .iter()
        .map(|s| opts.unpack_archives && is_archive(&s.path))
        .collect();
    // Archives ADD unpacks all go into the destination as a directory.
    if sources.len() > 1 && !archives.iter().all(|a| *a) && !(dest.ends_with('/') || dest == ".") {
        let p = rootpath::resolve(rootfs, &dest_abs, true).map_err(dest_err)?;
        if !p.is_dir() {
            return Err(CopyError::DestNotDir(dest.into()));
        }
    }
    if into_dir || archives.iter().any(|a| *a) {
        let dir = make_dest_dir(rootfs, &dest_abs, opts.owner, dest)?;
        for (s, archive) in sources.iter().zip(archives) {
            let m = std::fs::symlink_metadata(&s.path)
                .map_err(io(format!("inspecting {}", s.written)))?;
            if archive {
                stats.bytes += unpack_archive(&s.path, &dir, &s.written)?;
                stats.entries += 1;
            } else if m.is_dir() {
                copy_dir_contents(&s.path, &dir, opts, &mut stats)?;
            } else {
                // Named as written: a symlink source is copied as its target's content
                // under the link's name.
                let name = Path::new(s.written.trim_end_matches('/'))
                    .file_name()
                    .or_else(|| s.path.file_name())
                    .map(|n| n.to_os_string())
                    .unwrap_or_default();
                copy_entry(&s.path, &dir.join(name), opts, &mut stats)?;
            }
        }
    } else {
        let (parent, name) = match dest_abs.trim_end_matches('/').rsplit_once('/') {
            Some((p, n)) => (if p.is_empty() { "/" } else { p }, n.to_string()),
            None => ("/", dest_abs.clone()),
        };
        let dir = make_dest_dir(rootfs, parent, opts.owner, dest)?;
        copy_entry(&sources[0].path, &dir.join(name), opts, &mut stats)?;
    }
    Ok(stats)
}

/// Makes the destination directory `path` inside `rootfs` and the missing ones above it,
/// owned by `owner` when the copy has one (`--chown`), else by root, as BuildKit creates
/// them; directories that exist keep their owner (WORKDIR makes its directory so too).
pub fn make_dest_dir(
    rootfs: &Path,
    path: &str,
    owner: Option<(u32, u32)>,
    dest: &str,
) -> Result<PathBuf, CopyError> {
    let dest_err = |source| CopyError::Dest {
        dest: dest.into(),
        source,
    };
    let Some((uid, gid)) = owner else {
        return rootpath::mkdir_all(rootfs, path, 0o755).map_err(dest_err);
    };
    let mut missing = Vec::new();
    let mut so_far = String::new();
    for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        so_far.push('/');
        so_far.push_str(comp);
        let p = rootpath::resolve(rootfs, &so_far, true).map_err(dest_err)?;
        if std::fs::symlink_metadata(&p).is_err() {
            missing.push(so_far.clone());
        }
    }
    let dir = rootpath::mkdir_all(rootfs, path, 0o755).map_err(dest_err)?;
    for m in missing {
        let p = rootpath::resolve(rootfs, &m, true).map_err(dest_err)?;
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", p.display())))?;
    }
    Ok(dir)
}

/// Whether `path` is a regular file holding a tar archive: gzip or zstd compressed, or
/// plain (`ustar` magic).
pub fn is_archive(path: &Path) -> bool {
    use std::io::Read;
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !m.is_file() {
        return false;
    }
    let mut head = [0u8; 263];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    let h = &head[..n];
    h.starts_with(&[0x1f, 0x8b])
        || h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (n >= 262 && &h[257..262] == b"ustar")
}

/// Unpacks a local tar archive into `dir` (ADD): read through the layer converter (which
/// checks the tar and its names) and extracted by the safe extractor, which never follows
/// a symlink out of `dir`. Returns the file bytes written.
fn unpack_archive(src: &Path, dir: &Path, written: &str) -> Result<u64, CopyError> {
    use stargaze_fs::format::extract::{unpack_tar, ExtractOptions, Whiteouts};
    let input = std::fs::File::open(src).map_err(io(format!("opening {written}")))?;
    let eo = ExtractOptions {
        whiteouts: Whiteouts::Keep,
        chown: stargaze_fs::sys::is_root(),
        ..ExtractOptions::default()
    };
    let r =
        unpack_tar(input, dir, &std::env::temp_dir(), &eo).map_err(|source| CopyError::Unpack {
            dest: written.into(),
            source: Box::new(source),
        })?;
    Ok(r.bytes)
}

fn copy_dir_contents(
    from: &Path,
    to: &Path,
    opts: &CopyOptions,
    stats: &mut CopyStats,
) -> Result<(), CopyError> {
    let mut names: Vec<_> = std::fs::read_dir(from)
        .map_err(io(format!("reading {}", from.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        copy_entry(&from.join(&n), &to.join(&n), opts, stats)?;
    }
    Ok(())
}

/// Removes a non-directory at `path` (never following it).
fn clear(path: &Path, keep_dir: bool) -> Result<(), CopyError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(path).map_err(io(format!("replacing {}", path.display())))
        }
        Ok(_) => std::fs::remove_file(path).map_err(io(format!("replacing {}", path.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("inspecting {}", path.display()))(e)),
    }
}

/// Copies one entry (recursively for directories) to `to`, whose parent is a real
/// directory inside the rootfs.
fn copy_entry(
    from: &Path,
    to: &Path,
    opts: &CopyOptions,
    stats: &mut CopyStats,
) -> Result<(), CopyError> {
    let m =
        std::fs::symlink_metadata(from).map_err(io(format!("inspecting {}", from.display())))?;
    let ft = m.file_type();
    let ctx = || format!("writing {}", to.display());
    clear(to, ft.is_dir())?;
    if ft.is_dir() {
        if !to.exists() {
            std::fs::create_dir(to).map_err(io(ctx()))?;
        }
        copy_dir_contents(from, to, opts, stats)?;
    } else if ft.is_symlink() {
        let t = std::fs::read_link(from).map_err(io(ctx()))?;
        std::os::unix::fs::symlink(t, to).map_err(io(ctx()))?;
    } else if ft.is_file() {
        let mut src =
            std::fs::File::open(from).map_err(io(format!("opening {}", from.display())))?;
        let mut dst = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(to)
            .map_err(io(ctx()))?;
        stats.bytes += std::io::copy(&mut src, &mut dst).map_err(io(ctx()))?;
    } else {
        // Devices, fifos and sockets are not copied from a context.
        tracing::debug!(path = %from.display(), "special file not copied");
        return Ok(());
    }
    let (uid, gid) = match (opts.owner, opts.from_context) {
        (Some(o), _) => o,
        (None, true) => (0, 0),
        (None, false) => (m.uid(), m.gid()),
    };
    std::os::unix::fs::lchown(to, Some(uid), Some(gid))
        .map_err(io(format!("chown {}", to.display())))?;
    if !ft.is_symlink() {
        let mode = opts.mode.unwrap_or(m.mode() & 0o7777);
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
            .map_err(io(format!("chmod {}", to.display())))?;
    }
    stargaze_fs::sys::set_times_nofollow(to, m.mtime(), m.mtime_nsec() as u32)
        .map_err(io(format!("utimes {}", to.display())))?;
    stats.entries += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*", "a"));
        assert!(!glob_match("?", ""));
        assert!(glob_match("*a*b", "xxaxxb"));
        assert!(!glob_match("*a*b", "xxaxxc"));
        assert!(glob_match("[ab]*[!c]", "bzzd"));
        // No exponential backtracking on a hostile pattern.
        let hostile = format!("{}b", "*a".repeat(60));
        assert!(!glob_match(&hostile, &"a".repeat(5000)));
        assert!(glob_match("*.txt", "a.txt"));
        assert!(!glob_match("*.txt", "a.txtx"));
        assert!(glob_match("f?o", "foo"));
        assert!(glob_match("[a-c]x", "bx"));
        assert!(!glob_match("[!a-c]x", "bx"));
    }

    #[test]
    fn sources_stay_in_the_context() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("ctx");
        std::fs::create_dir_all(ctx.join("dir/sub")).unwrap();
        std::fs::write(ctx.join("a.txt"), "a").unwrap();
        std::fs::write(ctx.join("b.txt"), "b").unwrap();
        std::fs::write(ctx.join("dir/sub/c"), "c").unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("../secret", ctx.join("leak")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("abs")).unwrap();
        let root = SourceRoot::Context(ctx.clone());
        let r = |s: &str| resolve_sources(&root, &[s.to_string()]);
        assert!(matches!(r("../secret"), Err(CopyError::Outside { .. })));
        assert!(matches!(r("/etc/passwd"), Err(CopyError::Outside { .. })));
        assert!(matches!(r("leak"), Err(CopyError::Outside { .. })));
        assert!(matches!(r("abs"), Err(CopyError::Outside { .. })));
        assert!(matches!(r("missing"), Err(CopyError::NotFound(_))));
        assert_eq!(r("*.txt").unwrap().len(), 2);
        assert!(r("nomatch*").unwrap().is_empty());
        let d1 = digest_sources(&r("dir").unwrap()).unwrap();
        std::fs::write(ctx.join("dir/sub/c"), "changed").unwrap();
        assert_ne!(d1, digest_sources(&r("dir").unwrap()).unwrap());

        // Destinations: file, into a dir, dir contents, through an image symlink.
        let rootfs = d.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("usr/local")).unwrap();
        std::os::unix::fs::symlink("/usr/local", rootfs.join("opt")).unwrap();
        std::os::unix::fs::symlink("/", rootfs.join("host")).unwrap();
        let o = CopyOptions {
            from_context: true,
            owner: Some((5, 6)),
            mode: None,
            unpack_archives: false,
        };
        copy_into(&rootfs, &r("a.txt").unwrap(), "/x/renamed", "/", &o).unwrap();
        assert_eq!(
            std::fs::read_to_string(rootfs.join("x/renamed")).unwrap(),
            "a"
        );
        assert_eq!(
            std::fs::metadata(rootfs.join("x/renamed")).unwrap().uid(),
            5
        );
        // The directory made for the destination takes the copy's owner; one that
        // existed keeps its own, and without --chown a made one is root's.
        assert_eq!(std::fs::metadata(rootfs.join("x")).unwrap().uid(), 5);
        assert_eq!(std::fs::metadata(rootfs.join("x")).unwrap().gid(), 6);
        copy_into(&rootfs, &r("dir").unwrap(), "/x/made/deeper", "/", &o).unwrap();
        assert_eq!(std::fs::metadata(rootfs.join("x/made")).unwrap().uid(), 5);
        assert_eq!(
            std::fs::metadata(rootfs.join("x/made/deeper"))
                .unwrap()
                .uid(),
            5
        );
        assert_eq!(std::fs::metadata(rootfs.join("usr")).unwrap().uid(), 0);
        let root_owned = CopyOptions {
            owner: None,
            ..o.clone()
        };
        copy_into(&rootfs, &r("dir").unwrap(), "/byroot", "/", &root_owned).unwrap();
        assert_eq!(std::fs::metadata(rootfs.join("byroot")).unwrap().uid(), 0);
        copy_into(&rootfs, &r("*.txt").unwrap(), "/opt/", "/", &o).unwrap();
        assert_eq!(
            std::fs::metadata(rootfs.join("usr/local")).unwrap().uid(),
            0
        );
        assert!(rootfs.join("usr/local/b.txt").is_file());
        copy_into(&rootfs, &r("dir").unwrap(), "rel/", "/work", &o).unwrap();
        assert!(rootfs.join("work/rel/sub/c").is_file());
        copy_into(&rootfs, &r("a.txt").unwrap(), "/host/tmp/", "/", &o).unwrap();
        assert!(
            rootfs.join("tmp/a.txt").is_file(),
            "an absolute image symlink stays in the rootfs"
        );
        assert!(matches!(
            copy_into(&rootfs, &r("*.txt").unwrap(), "/notadir", "/", &o),
            Err(CopyError::DestNotDir(d)) if d == "/notadir"
        ));
        assert!(parse_chmod("0755").is_ok() && parse_chmod("999").is_err());
    }
}
