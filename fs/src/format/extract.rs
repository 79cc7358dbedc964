//! Safe extraction of a layer into a directory, ready to be an overlayfs lower layer.
//!
//! Safety: every TOC name is already normalised to normal names (see [`super::index`] and
//! [`super::names`]); extraction checks again — every component of every path it touches and
//! every whiteout target must be a normal name — so an index built any other way cannot make
//! it create, change or delete anything outside the root. Each ancestor of a path is checked
//! with `lstat` to be a real directory inside the root, so a symlink — from the layer or
//! already in the directory — is never followed, and a final symlink is replaced, never
//! written through. Whiteouts become what overlayfs expects: `.wh.X` → character device 0/0
//! named X, `.wh..wh..opq` → `trusted.overlay.opaque=y`; other aufs `.wh..wh.*` metadata is
//! skipped, as containerd skips it.

use super::names::{self, NameKind};
use super::reader::{BlobSource, LayerReader};
use super::{FormatError, NodeKind, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};
use crate::sys;
use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use super::names::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};

/// What to do with whiteout entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Write them as overlayfs expects (a lower or upper layer directory).
    Overlay,
    /// Apply them: remove what they hide (extracting onto a merged tree).
    Apply,
    /// Keep them as plain files.
    Keep,
}

/// How to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Whiteout handling.
    pub whiteouts: Whiteouts,
    /// Xattr names used to mark opaque directories.
    pub opaque_xattrs: Vec<String>,
    /// Apply uid/gid (needs root; otherwise ownership is left to the caller).
    pub chown: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            whiteouts: Whiteouts::Overlay,
            opaque_xattrs: vec!["trusted.overlay.opaque".into()],
            chown: sys::is_root(),
        }
    }
}

/// What an extraction did.
#[derive(Debug, Clone, Default)]
pub struct ExtractReport {
    /// Names created.
    pub entries: usize,
    /// Regular-file bytes written (verified).
    pub bytes: u64,
    /// Whiteouts turned into overlay form.
    pub whiteouts: usize,
    /// Things the OS refused to non-root users (devices, trusted xattrs, ownership).
    pub skipped: Vec<String>,
}

fn io_at(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> FormatError {
    let ctx = format!("{what} {}", path.display());
    move |e| FormatError::io(ctx, e)
}

/// Refuses a relative path with a component that is not a normal name, or that names a
/// whiteout of something that is not one.
fn check_rel(rel: &str) -> Result<(), FormatError> {
    names::check_path(rel).map_err(|e| FormatError::UnsafePath {
        path: rel.to_string(),
        reason: e.to_string(),
    })
}

/// Makes sure every ancestor of `rel` under `root` is a real directory (creating missing
/// ones), and returns the full path of `rel`. `rel` must be made of normal names.
fn safe_parent(root: &Path, rel: &str) -> Result<PathBuf, FormatError> {
    check_rel(rel)?;
    if rel.is_empty() {
        return Err(FormatError::UnsafePath {
            path: rel.to_string(),
            reason: "the root itself is not an entry to replace".into(),
        });
    }
    let mut cur = root.to_path_buf();
    let comps: Vec<&str> = rel.split('/').collect();
    for comp in &comps[..comps.len().saturating_sub(1)] {
        cur.push(comp);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => {
                return Err(FormatError::UnsafePath {
                    path: rel.to_string(),
                    reason: format!(
                        "ancestor {} is not a directory (a symlink is never followed)",
                        cur.strip_prefix(root).unwrap_or(&cur).display()
                    ),
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(io_at(&cur, "creating directory"))?;
            }
            Err(e) => return Err(io_at(&cur, "inspecting")(e)),
        }
    }
    Ok(root.join(rel))
}

/// Makes sure `rel` and its ancestors are real directories under `root`.
fn safe_dir(root: &Path, rel: &str) -> Result<PathBuf, FormatError> {
    if rel.is_empty() {
        return Ok(root.to_path_buf());
    }
    check_rel(rel)?;
    safe_parent(root, &format!("{rel}/_"))?;
    Ok(root.join(rel))
}

/// Removes whatever non-directory sits at `path` (a symlink itself, never its target).
fn clear(path: &Path, keep_dir: bool) -> Result<(), FormatError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => {
            if keep_dir {
                Ok(())
            } else {
                fs::remove_dir_all(path).map_err(io_at(path, "replacing"))
            }
        }
        Ok(_) => fs::remove_file(path).map_err(io_at(path, "replacing")),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_at(path, "inspecting")(e)),
    }
}

/// Extracts the whole layer under `root` (created if missing).
pub fn extract_layer<S: BlobSource>(
    reader: &LayerReader<S>,
    root: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport, FormatError> {
    fs::create_dir_all(root).map_err(io_at(root, "creating"))?;
    let index = reader.index();
    let mut report = ExtractReport::default();
    let mut dirs: Vec<(PathBuf, u32)> = Vec::new();
    let names: HashSet<&str> = index.entries.iter().map(|e| e.path.as_str()).collect();
    let skip = |report: &mut ExtractReport, what: String| {
        if report.skipped.len() < 1000 {
            report.skipped.push(what);
        }
    };

    for entry in &index.entries {
        let rel = entry.path.as_str();
        if rel == PREFETCH_LANDMARK || rel == NO_PREFETCH_LANDMARK {
            continue;
        }
        let node = index.node(entry.node);
        if rel.is_empty() {
            dirs.push((root.to_path_buf(), entry.node));
            continue;
        }
        let (parent_rel, base) = rel.rsplit_once('/').unwrap_or(("", rel));
        let kind = names::classify(base).map_err(|e| FormatError::UnsafePath {
            path: rel.to_string(),
            reason: e.to_string(),
        })?;
        if opts.whiteouts != Whiteouts::Keep && names::in_aufs_meta(rel) {
            tracing::debug!(entry = rel, "skipping aufs metadata entry");
            continue;
        }
        if opts.whiteouts != Whiteouts::Keep && kind != NameKind::Plain {
            if opts.whiteouts == Whiteouts::Apply {
                apply_whiteout(root, parent_rel, kind, &names)?;
                report.whiteouts += 1;
                continue;
            }
            match kind {
                NameKind::Opaque => {
                    let dir = safe_dir(root, parent_rel)?;
                    for x in &opts.opaque_xattrs {
                        if let Err(e) = sys::lsetxattr(&dir, x, b"y") {
                            skip(&mut report, format!("{x} on {parent_rel}/: {e}"));
                        }
                    }
                }
                NameKind::Whiteout(target) => {
                    let target_rel = join_rel(parent_rel, target);
                    if names.contains(target_rel.as_str()) {
                        continue; // the layer itself recreates it; the whiteout only hides lowers
                    }
                    let path = safe_parent(root, &target_rel)?;
                    clear(&path, false)?;
                    if let Err(e) = sys::mknod(&path, libc::S_IFCHR, 0, 0) {
                        skip(&mut report, format!("whiteout {target_rel}: {e}"));
                    } else {
                        // The whiteout entry's own time, so two extractions of a layer agree.
                        let _ = sys::set_times_nofollow(&path, node.mtime, node.mtime_nsec);
                    }
                }
                NameKind::AufsMeta | NameKind::Plain => {}
            }
            report.whiteouts += 1;
            continue;
        }

        let path = safe_parent(root, rel)?;
        if entry.hardlink {
            clear(&path, false)?;
            let target_rel = index.path(entry.node);
            check_rel(&target_rel)?;
            let target = root.join(target_rel);
            fs::hard_link(&target, &path).map_err(io_at(&path, "hardlinking"))?;
            report.entries += 1;
            continue;
        }
        clear(&path, node.kind == NodeKind::Dir)?;
        match node.kind {
            NodeKind::Dir => {
                if !path.is_dir() {
                    fs::create_dir(&path).map_err(io_at(&path, "creating directory"))?;
                }
                dirs.push((path.clone(), entry.node));
            }
            NodeKind::Reg => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_at(&path, "creating"))?;
                report.bytes += reader.copy_file(entry.node, &mut f)?;
            }
            NodeKind::Symlink => {
                std::os::unix::fs::symlink(node.link_target(), &path)
                    .map_err(io_at(&path, "creating symlink"))?;
            }
            NodeKind::Char | NodeKind::Block | NodeKind::Fifo => {
                let mode = node.kind.file_type_bits() | node.mode;
                let (major, minor) = node.dev();
                if let Err(e) = sys::mknod(&path, mode, major, minor) {
                    skip(&mut report, format!("{} {rel}: {e}", node.kind.as_str()));
                    continue;
                }
            }
        }
        if node.kind != NodeKind::Dir {
            apply_metadata(&path, node, opts, &mut report, rel)?;
        }
        report.entries += 1;
    }
    // Directories last, deepest first, so creating children does not disturb their times.
    for (path, id) in dirs.iter().rev() {
        let node = index.node(*id);
        apply_metadata(path, node, opts, &mut report, &index.path(*id))?;
        report.entries += usize::from(*id != 0);
    }
    Ok(report)
}

/// `parent/name`, or `name` at the root.
fn join_rel(parent_rel: &str, name: &str) -> String {
    if parent_rel.is_empty() {
        name.to_string()
    } else {
        format!("{parent_rel}/{name}")
    }
}

/// Removes what a whiteout hides from a merged tree: `.wh.X` removes X; the opaque marker
/// removes every entry of its directory that this layer does not itself create; aufs
/// metadata does nothing.
fn apply_whiteout(
    root: &Path,
    parent_rel: &str,
    kind: NameKind<'_>,
    names: &HashSet<&str>,
) -> Result<(), FormatError> {
    match kind {
        NameKind::Opaque => {
            let dir = safe_dir(root, parent_rel)?;
            let entries = fs::read_dir(&dir).map_err(io_at(&dir, "reading"))?;
            for e in entries {
                let e = e.map_err(io_at(&dir, "reading"))?;
                let n = e.file_name().to_string_lossy().into_owned();
                if !names.contains(join_rel(parent_rel, &n).as_str()) {
                    clear(&e.path(), false)?;
                }
            }
            Ok(())
        }
        NameKind::Whiteout(target) => {
            let target_rel = join_rel(parent_rel, target);
            if names.contains(target_rel.as_str()) {
                return Ok(());
            }
            let path = safe_parent(root, &target_rel)?;
            clear(&path, false)
        }
        NameKind::AufsMeta | NameKind::Plain => Ok(()),
    }
}

/// Unpacks a tar stream (plain, gzip or zstd) under `root`. It is first indexed by the
/// layer converter (stored, level 0, into a temporary file under `scratch`), so the same tar
/// checks and the same safe extraction apply as to an eStargz layer.
pub fn unpack_tar<R: std::io::Read>(
    input: R,
    root: &Path,
    scratch: &Path,
    opts: &ExtractOptions,
) -> Result<ExtractReport, FormatError> {
    use super::{convert_layer, Compression, FileBlob, OpenOptions, WriterOptions};
    let mut indexed = tempfile::NamedTempFile::new_in(scratch)
        .map_err(|e| FormatError::io(format!("temporary file in {}", scratch.display()), e))?;
    let wo = WriterOptions {
        compression: Compression::Gzip,
        level: 0,
        ..WriterOptions::default()
    };
    convert_layer(
        std::io::BufReader::new(input),
        indexed.as_file_mut(),
        &wo,
        &mut |_| {},
    )?;
    let reader = LayerReader::open(FileBlob::open(indexed.path())?, &OpenOptions::default())?;
    extract_layer(&reader, root, opts)
}

fn apply_metadata(
    path: &Path,
    node: &super::Node,
    opts: &ExtractOptions,
    report: &mut ExtractReport,
    rel: &str,
) -> Result<(), FormatError> {
    if opts.chown {
        sys::lchown(path, node.uid, node.gid).map_err(io_at(path, "chown"))?;
    }
    for (k, v) in node.xattrs() {
        if let Err(e) = sys::lsetxattr(path, k, v) {
            if report.skipped.len() < 1000 {
                report.skipped.push(format!("xattr {k} on {rel}: {e}"));
            }
        }
    }
    if node.kind != NodeKind::Symlink {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(node.mode))
            .map_err(io_at(path, "chmod"))?;
    }
    sys::set_times_nofollow(path, node.mtime, node.mtime_nsec).map_err(io_at(path, "utimes"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_are_not_normal_names_are_refused_before_touching_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("target");
        fs::create_dir(&root).unwrap();
        for rel in [
            "..", "a/..", "../x", ".", "a/./b", "a//b", "/abs", "a/.wh...", "",
        ] {
            let e = safe_parent(&root, rel).unwrap_err();
            assert!(matches!(e, FormatError::UnsafePath { .. }), "{rel:?}: {e}");
        }
        for rel in ["..", "a/../..", "a/.wh../b"] {
            let e = safe_dir(&root, rel).unwrap_err();
            assert!(matches!(e, FormatError::UnsafePath { .. }), "{rel:?}: {e}");
        }
        let names = HashSet::new();
        for kind in [NameKind::Whiteout(".."), NameKind::Whiteout(".")] {
            assert!(apply_whiteout(&root, "", kind, &names).is_err());
        }
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        assert!(root.exists());
    }
}
