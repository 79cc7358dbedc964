//! A step's changes as an OCI layer tar. Over an overlay-style snapshot (overlayfs,
//! fuse-overlayfs, stargz) the upper directory *is* the change set: its 0/0 character
//! devices become `.wh.NAME` whiteouts and its opaque directories get `.wh..wh..opq`. Over a
//! copy (native) the new tree is compared with its parent's, entry by entry: what is new or
//! differs in type, mode, owner, size, mtime, link target or device goes in (with the
//! directories above it), and what vanished becomes a whiteout. Hardlinks inside the layer
//! stay hardlinks; the parent's files are only `lstat`ed, so a lazy parent stays lazy.

use crate::snapshot::Mount;
use stargaze_fs::format::tar::{HeaderSpec, TarBuilder, TarKind};
use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where a step's changes are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// An overlay upper directory.
    Upper(PathBuf),
    /// A whole new tree, compared with its parent's tree (none: everything is new).
    Compare {
        /// The step's tree.
        new: PathBuf,
        /// The parent's tree.
        old: Option<PathBuf>,
    },
}

/// What a diff wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries written (whiteouts included).
    pub entries: u64,
    /// Whiteouts written.
    pub whiteouts: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Why a diff failed.
#[derive(Debug, thiserror::Error)]
#[error("computing the layer: {context}: {source}")]
pub struct DiffError {
    context: String,
    #[source]
    source: std::io::Error,
}

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> DiffError {
    let context = context.to_string();
    move |source| DiffError { context, source }
}

fn option<'a>(m: &'a Mount, name: &str) -> Option<&'a str> {
    m.options
        .iter()
        .find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
}

/// How to read the changes of an active snapshot mounted as `active`, whose parent is
/// mounted (as a view) as `parent`.
pub fn changes_of(active: &[Mount], parent: Option<&[Mount]>) -> Option<Changes> {
    let [m] = active else { return None };
    if let Some(upper) = option(m, "upperdir") {
        return Some(Changes::Upper(PathBuf::from(upper)));
    }
    if m.kind != "bind" {
        return None;
    }
    let old = match parent {
        None | Some([]) => None,
        Some([p]) if p.kind == "bind" => Some(PathBuf::from(&p.source)),
        // A parent made of layers (an overlay view) is read through its lowerdirs' merge;
        // callers mount it and pass a bind of the mount point.
        Some(_) => return None,
    };
    Some(Changes::Compare {
        new: PathBuf::from(&m.source),
        old,
    })
}

/// Writes the changes as a tar to `out`.
pub fn write_tar<W: Write>(changes: &Changes, out: W) -> Result<(W, DiffStats), DiffError> {
    let mut w = Writer {
        tar: TarBuilder::new(out),
        stats: DiffStats::default(),
        links: HashMap::new(),
        pending: Vec::new(),
    };
    match changes {
        Changes::Upper(dir) => w.upper(dir, "")?,
        Changes::Compare { new, old } => w.compare(new, old.as_deref(), "")?,
    }
    let stats = w.stats;
    let out = w.tar.finish().map_err(io("finishing the tar"))?;
    Ok((out, stats))
}

struct Writer<W: Write> {
    tar: TarBuilder<W>,
    stats: DiffStats,
    links: HashMap<(u64, u64), String>,
    /// Directories above the walk not written yet: written before their first change.
    pending: Vec<(String, PathBuf, Metadata)>,
}

fn sorted_entries(dir: &Path) -> Result<Vec<String>, DiffError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io(format!("reading {}", dir.display())))?;
    names.sort();
    Ok(names)
}

fn child(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

fn is_whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|x| {
            stargaze_fs::sys::lgetxattrs(path)
                .map(|all| all.iter().any(|(k, v)| k == x && v == b"y"))
                .unwrap_or(false)
        })
}

/// Whether `a` (new) differs from `b` (old) for a layer.
fn differs(a: &Metadata, b: &Metadata, pa: &Path, pb: &Path) -> bool {
    if a.file_type() != b.file_type()
        || a.mode() != b.mode()
        || a.uid() != b.uid()
        || a.gid() != b.gid()
    {
        return true;
    }
    if a.is_dir() {
        return false;
    }
    if a.mtime() != b.mtime() || a.mtime_nsec() != b.mtime_nsec() || a.size() != b.size() {
        return true;
    }
    if a.file_type().is_symlink() {
        return std::fs::read_link(pa).ok() != std::fs::read_link(pb).ok();
    }
    if a.file_type().is_char_device() || a.file_type().is_block_device() {
        return a.rdev() != b.rdev();
    }
    false
}

impl<W: Write> Writer<W> {
    fn flush_pending(&mut self) -> Result<(), DiffError> {
        for (rel, path, meta) in std::mem::take(&mut self.pending) {
            self.entry(&rel, &path, &meta)?;
        }
        Ok(())
    }

    fn whiteout(&mut self, rel_dir: &str, name: &str) -> Result<(), DiffError> {
        self.flush_pending()?;
        let rel = child(rel_dir, &format!(".wh.{name}"));
        let mut s = HeaderSpec::new(&rel, TarKind::Reg);
        s.mode = 0;
        self.tar
            .append(&s, b"")
            .map_err(io(format!("writing whiteout {rel}")))?;
        self.stats.entries += 1;
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn entry(&mut self, rel: &str, path: &Path, meta: &Metadata) -> Result<(), DiffError> {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            TarKind::Dir
        } else if ft.is_symlink() {
            TarKind::Symlink
        } else if ft.is_char_device() {
            TarKind::Char
        } else if ft.is_block_device() {
            TarKind::Block
        } else if ft.is_fifo() {
            TarKind::Fifo
        } else if ft.is_file() {
            TarKind::Reg
        } else {
            tracing::debug!(path = %rel, "socket left out of the layer");
            return Ok(());
        };
        let mut s = HeaderSpec::new(rel, kind);
        s.mode = meta.mode() & 0o7777;
        s.uid = u64::from(meta.uid());
        s.gid = u64::from(meta.gid());
        s.mtime = meta.mtime();
        if kind == TarKind::Char || kind == TarKind::Block {
            let rdev = meta.rdev();
            s.dev = (libc::major(rdev), libc::minor(rdev));
        }
        if let Ok(x) = stargaze_fs::sys::lgetxattrs(path) {
            s.xattrs = x
                .into_iter()
                .filter(|(k, _)| {
                    !k.starts_with("trusted.overlay.") && !k.starts_with("user.overlay.")
                })
                .collect();
        }
        let ctx = || format!("archiving {rel}");
        match kind {
            TarKind::Symlink => {
                s.link_name = std::fs::read_link(path)
                    .map_err(io(ctx()))?
                    .to_string_lossy()
                    .into_owned();
                self.tar.append(&s, b"").map_err(io(ctx()))?;
            }
            TarKind::Reg if meta.nlink() > 1 => {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    s.kind = TarKind::Hardlink;
                    s.link_name = first.clone();
                    self.tar.append(&s, b"").map_err(io(ctx()))?;
                } else {
                    self.links.insert(key, rel.to_string());
                    self.file(&s, path, meta.size())?;
                }
            }
            TarKind::Reg => self.file(&s, path, meta.size())?,
            _ => self.tar.append(&s, b"").map_err(io(ctx()))?,
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn file(&mut self, s: &HeaderSpec, path: &Path, size: u64) -> Result<(), DiffError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io(format!("opening {}", s.path)))?;
        self.tar
            .append_reader(s, size, &mut f)
            .map_err(io(format!("archiving {}", s.path)))?;
        self.stats.bytes += size;
        Ok(())
    }

    fn upper(&mut self, dir: &Path, rel: &str) -> Result<(), DiffError> {
        for name in sorted_entries(dir)? {
            let path = dir.join(&name);
            let r = child(rel, &name);
            let meta = std::fs::symlink_metadata(&path).map_err(io(format!("inspecting {r}")))?;
            if is_whiteout(&meta) {
                self.whiteout(rel, &name)?;
                continue;
            }
            self.entry(&r, &path, &meta)?;
            if meta.is_dir() {
                if is_opaque(&path) {
                    self.whiteout(&r, ".wh..opq")?;
                }
                self.upper(&path, &r)?;
            }
        }
        Ok(())
    }

    fn compare(&mut self, new: &Path, old: Option<&Path>, rel: &str) -> Result<(), DiffError> {
        let names = sorted_entries(new)?;
        for name in &names {
            let pn = new.join(name);
            let r = child(rel, name);
            let mn = std::fs::symlink_metadata(&pn).map_err(io(format!("inspecting {r}")))?;
            let po = old.map(|o| o.join(name));
            let mo = po.as_ref().and_then(|p| std::fs::symlink_metadata(p).ok());
            let changed = match (&mo, &po) {
                (Some(mo), Some(po)) => differs(&mn, mo, &pn, po),
                _ => true,
            };
            if mn.is_dir() {
                let old_dir = match (&mo, &po) {
                    (Some(m), Some(p)) if m.is_dir() => Some(p.clone()),
                    _ => None,
                };
                if changed {
                    self.flush_pending()?;
                    self.entry(&r, &pn, &mn)?;
                } else {
                    self.pending.push((r.clone(), pn.clone(), mn.clone()));
                }
                let depth = self.pending.len();
                self.compare(&pn, old_dir.as_deref(), &r)?;
                if self.pending.len() >= depth && !changed {
                    self.pending.truncate(depth.saturating_sub(1));
                }
            } else if changed {
                self.flush_pending()?;
                self.entry(&r, &pn, &mn)?;
            }
        }
        if let Some(old) = old {
            for name in sorted_entries(old)? {
                if names.binary_search(&name).is_err() {
                    self.whiteout(rel, &name)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stargaze_fs::format::tar::TarReader;

    fn list(tar: &[u8]) -> Vec<String> {
        let mut r = TarReader::new(tar);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            out.push(e.path.trim_end_matches('/').to_string());
        }
        out
    }

    #[test]
    fn tree_comparison_finds_adds_changes_and_deletions() {
        let d = tempfile::tempdir().unwrap();
        let (old, new) = (d.path().join("old"), d.path().join("new"));
        for t in [&old, &new] {
            std::fs::create_dir_all(t.join("etc/deep/er")).unwrap();
            std::fs::create_dir_all(t.join("usr/bin")).unwrap();
            std::fs::write(t.join("etc/keep"), "same").unwrap();
            std::fs::write(t.join("usr/bin/tool"), "v1").unwrap();
            std::fs::write(t.join("gone"), "x").unwrap();
            std::fs::create_dir_all(t.join("gonedir/sub")).unwrap();
        }
        // Same times, long past, for what did not change: a rewrite below gets the time of
        // now, which a coarse clock could otherwise give both trees alike.
        for t in [&old, &new] {
            for p in ["etc/keep", "usr/bin/tool", "gone"] {
                stargaze_fs::sys::set_times_nofollow(&t.join(p), 1_600_000_000, 0).unwrap();
            }
        }
        std::fs::write(new.join("usr/bin/tool"), "v2").unwrap();
        std::fs::write(new.join("etc/deep/er/added"), "new").unwrap();
        std::fs::hard_link(new.join("etc/deep/er/added"), new.join("etc/deep/er/link")).unwrap();
        std::fs::remove_file(new.join("gone")).unwrap();
        std::fs::remove_dir_all(new.join("gonedir")).unwrap();
        let (tar, stats) = write_tar(
            &Changes::Compare {
                new: new.clone(),
                old: Some(old.clone()),
            },
            Vec::new(),
        )
        .unwrap();
        let names = list(&tar);
        assert_eq!(
            names,
            vec![
                "etc",
                "etc/deep",
                "etc/deep/er",
                "etc/deep/er/added",
                "etc/deep/er/link",
                "usr",
                "usr/bin",
                "usr/bin/tool",
                ".wh.gone",
                ".wh.gonedir"
            ]
        );
        assert_eq!(stats.whiteouts, 2);
        // Without a parent everything is in.
        let (tar, _) = write_tar(&Changes::Compare { new, old: None }, Vec::new()).unwrap();
        assert!(list(&tar).contains(&"etc/keep".to_string()));
    }

    #[test]
    fn upper_whiteouts_and_opaque_dirs() {
        if !stargaze_fs::sys::is_root() {
            eprintln!("SKIPPED: needs root for whiteout devices and trusted xattrs");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let u = d.path();
        std::fs::create_dir_all(u.join("opq")).unwrap();
        stargaze_fs::sys::lsetxattr(&u.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
        std::fs::write(u.join("opq/f"), "x").unwrap();
        stargaze_fs::sys::mknod(&u.join("removed"), libc::S_IFCHR, 0, 0).unwrap();
        let (tar, stats) = write_tar(&Changes::Upper(u.to_path_buf()), Vec::new()).unwrap();
        assert_eq!(
            list(&tar),
            vec!["opq", "opq/.wh..wh..opq", "opq/f", ".wh.removed"]
        );
        assert_eq!(stats.whiteouts, 2);
    }
}
