//! `stargaze registry gc`: finds the blobs of each repository that no manifest it lists
//! needs (config, layers, child manifests, followed through indexes) and removes them, or
//! only reports them in a dry run. Two things keep a blob that looks unreferenced:
//! - a grace period by mtime: a blob pushed (or pushed again, or mounted) within it is kept,
//!   because the manifest that will need it may not be pushed yet;
//! - the root's gc lock: a real run re-reads each repository's manifests holding it
//!   exclusively, while the server holds it shared from a blob or manifest check to the
//!   write, so nothing is removed between a manifest PUT's check and its `index.json` write.
//!
//! A repository whose manifests cannot all be read is left whole and reported.

use super::store::{read_bounded, referenced_digests};
use crate::digest::Digest;
use crate::image::OciLayout;
use crate::oci::MAX_MANIFEST;
use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How deep indexes are followed.
const MAX_NESTING: usize = 8;

/// Why gc could not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The root is not a registry root.
    #[error("{path} is not a registry root (no such directory)")]
    NoRoot {
        /// The path given.
        path: String,
    },
    /// The gc lock could not be taken.
    #[error("gc lock on {path}: {source}")]
    Lock {
        /// The root directory.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How to collect.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Really remove (otherwise only report).
    pub delete: bool,
    /// Blobs modified more recently than this are kept.
    pub grace: Duration,
}

/// One blob gc removed (or would remove).
#[derive(Debug, Clone)]
pub struct Unreferenced {
    /// Repository.
    pub repo: String,
    /// Blob digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// What gc found and did.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Repositories looked at.
    pub repos: usize,
    /// Blobs kept because a manifest needs them.
    pub referenced: usize,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub young: usize,
    /// Blobs removed (or, in a dry run, that would be).
    pub removed: Vec<Unreferenced>,
    /// Bytes of `removed`.
    pub bytes: u64,
    /// Repositories left whole, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Progress: called before each repository with (index, count, name).
pub type GcProgress<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// Collects garbage under a registry root.
pub fn collect(
    root: &Path,
    opts: &GcOptions,
    progress: GcProgress<'_>,
) -> Result<GcReport, GcError> {
    if !root.is_dir() {
        return Err(GcError::NoRoot {
            path: root.display().to_string(),
        });
    }
    let repos = super::store::catalog_of(root);
    let mut report = GcReport {
        repos: repos.len(),
        ..GcReport::default()
    };
    let now = SystemTime::now();
    for (i, repo) in repos.iter().enumerate() {
        progress(i, repos.len(), repo);
        let dir = root.join(repo);
        let Ok(layout) = OciLayout::open(&dir) else {
            continue;
        };
        let lock = if opts.delete {
            Some(exclusive(root)?)
        } else {
            None
        };
        let keep = match needed(&layout) {
            Ok(k) => k,
            Err(why) => {
                tracing::warn!(repo, reason = %why, "gc leaves repository whole");
                report.skipped.push((repo.clone(), why));
                continue;
            }
        };
        for (d, path, size, mtime) in blobs(&layout) {
            if keep.contains(&d) {
                report.referenced += 1;
                continue;
            }
            let age = now.duration_since(mtime).unwrap_or(Duration::ZERO);
            if age < opts.grace {
                report.young += 1;
                continue;
            }
            if opts.delete {
                if let Err(e) = fs::remove_file(&path) {
                    tracing::warn!(repo, digest = %d, error = %e, "cannot remove blob");
                    continue;
                }
                tracing::info!(repo, digest = %d, size, "blob removed");
            }
            report.bytes += size;
            report.removed.push(Unreferenced {
                repo: repo.clone(),
                digest: d,
                size,
            });
        }
        drop(lock);
    }
    Ok(report)
}

/// The root's gc lock: an flock on the root directory itself, so no file is added to it.
fn exclusive(root: &Path) -> Result<fs::File, GcError> {
    let err = |source| GcError::Lock {
        path: root.display().to_string(),
        source,
    };
    let f = fs::File::open(root).map_err(err)?;
    f.lock().map_err(err)?;
    Ok(f)
}

/// Digests a repository needs: its listed manifests and everything they refer to.
fn needed(layout: &OciLayout) -> Result<HashSet<Digest>, String> {
    let index = layout.index().map_err(|e| e.to_string())?;
    let mut keep = HashSet::new();
    let mut todo: Vec<(Digest, usize)> = Vec::new();
    for m in index.manifests() {
        let d: Digest = m
            .digest()
            .to_string()
            .parse()
            .map_err(|e| format!("index.json lists {}: {e}", m.digest()))?;
        todo.push((d, 0));
    }
    let mut walked = HashSet::new();
    while let Some((d, depth)) = todo.pop() {
        keep.insert(d);
        if !walked.insert(d) {
            continue;
        }
        let path = layout.blob_path(&d);
        if !path.is_file() {
            continue; // listed but gone: nothing of it to keep
        }
        let data = read_bounded(&path, MAX_MANIFEST).map_err(|e| format!("manifest {d}: {e}"))?;
        let refs = referenced_digests(&data).map_err(|e| format!("manifest {d}: {}", e.message))?;
        let v: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
        let children: HashSet<String> = v
            .get("manifests")
            .and_then(|m| m.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.get("digest")?.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for (r, _) in refs {
            if children.contains(&r.to_string()) {
                if depth + 1 > MAX_NESTING {
                    return Err(format!("indexes nest deeper than {MAX_NESTING}"));
                }
                todo.push((r, depth + 1));
            } else {
                keep.insert(r);
            }
        }
    }
    Ok(keep)
}

/// The blobs of a layout: digest, path, size, mtime. Files that are not named by a digest
/// (a writer's temp files) are not ours to judge.
fn blobs(layout: &OciLayout) -> Vec<(Digest, PathBuf, u64, SystemTime)> {
    let dir = layout.root().join("blobs/sha256");
    let Ok(rd) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(d) = format!("sha256:{name}").parse::<Digest>() else {
            continue;
        };
        let Ok(m) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if !m.is_file() {
            continue;
        }
        let mtime = m.modified().unwrap_or_else(|_| SystemTime::now());
        out.push((d, e.path(), m.len(), mtime));
    }
    out.sort_by_key(|b| b.0.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;

    fn desc(media: &str, d: &Digest, size: usize) -> serde_json::Value {
        serde_json::json!({"mediaType": media, "digest": d.to_string(), "size": size})
    }

    #[test]
    fn follows_indexes_and_leaves_unreadable_repositories_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let layout = OciLayout::open_or_create(&root.join("a/b")).unwrap();
        let cfg = layout.put_blob(b"{}").unwrap();
        let layer = layout.put_blob(b"layer").unwrap();
        let junk = layout.put_blob(b"junk").unwrap();
        let child = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": desc("x/cfg", &cfg, 2),
            "layers": [desc("x/layer", &layer, 5)],
        }))
        .unwrap();
        let child_d = layout.put_blob(&child).unwrap();
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [desc("application/vnd.oci.image.manifest.v1+json", &child_d, child.len())],
        }))
        .unwrap();
        layout
            .put_manifest_bytes(&index, MediaType::ImageIndex, Some("v1"))
            .unwrap();
        let keep = needed(&layout).unwrap();
        for d in [&cfg, &layer, &child_d, &Digest::of(&index)] {
            assert!(keep.contains(d), "{d} is needed");
        }
        assert!(!keep.contains(&junk));
        // A temp file in blobs/ is not a blob.
        std::fs::write(layout.root().join("blobs/sha256/.tmp123"), b"x").unwrap();
        let opts = GcOptions {
            delete: true,
            grace: Duration::ZERO,
        };
        let r = collect(root, &opts, &mut |_, _, _| {}).unwrap();
        assert_eq!((r.repos, r.removed.len(), r.bytes), (1, 1, 4));
        assert_eq!(r.removed[0].digest, junk);
        assert!(layout.root().join("blobs/sha256/.tmp123").is_file());
        assert!(!layout.blob_path(&junk).exists());
        // A listed manifest that does not parse: nothing of the repository is judged.
        let junk = layout.put_blob(b"junk again").unwrap();
        std::fs::write(layout.blob_path(&child_d), b"not json").unwrap();
        let r = collect(root, &opts, &mut |_, _, _| {}).unwrap();
        assert_eq!((r.removed.len(), r.skipped.len()), (0, 1));
        assert!(layout.blob_path(&junk).is_file());
        assert!(matches!(
            collect(&root.join("none"), &opts, &mut |_, _, _| {}),
            Err(GcError::NoRoot { .. })
        ));
    }
}
