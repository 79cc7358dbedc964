//! The image tarballs of the `oci` and `docker` exporters, written from an OCI layout the
//! engine exported the image to (in a scratch directory): `oci-layout`, `index.json` and
//! `blobs/sha256/*` as a tar. `docker` adds `manifest.json` (`Config`, `RepoTags` from
//! `name=`, `Layers` as blob paths), as BuildKit v0.11's docker variant does: the OCI layout
//! and docker's manifest in one tar, so `docker load` and OCI tools both read it.
//! Separate from `exporter` (which parses attributes and dispatches) as the file format's
//! one job.

use stargaze_fs::format::tar::{HeaderSpec, TarBuilder, TarKind};
use stargaze_fs::remote::Reference;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a tarball could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the layout or writing the tar failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A document of the layout is not what the engine writes.
    #[error("layout {0}")]
    Layout(&'static str),
    /// A document is not JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `name` as docker shows it: Docker Hub's host and `library/` dropped.
pub fn familiar(name: &Reference) -> String {
    let mut r = name.clone();
    r.digest = None;
    let s = r.to_string();
    let s = s.strip_prefix("docker.io/").unwrap_or(&s).to_string();
    s.strip_prefix("library/").map_or(s.clone(), String::from)
}

/// `blobs/ALG/HEX` of a digest string from the layout.
fn blob_path(digest: &serde_json::Value) -> Result<String, ArchiveError> {
    let d = digest
        .as_str()
        .ok_or(ArchiveError::Layout("digest is not a string"))?;
    let d: stargaze_fs::Digest = d
        .parse()
        .map_err(|_| ArchiveError::Layout("digest is not valid"))?;
    let s = d.to_string();
    let (alg, hex) = s
        .split_once(':')
        .ok_or(ArchiveError::Layout("digest without algorithm"))?;
    Ok(format!("blobs/{alg}/{hex}"))
}

fn read_json(path: &Path) -> Result<serde_json::Value, ArchiveError> {
    let b = std::fs::read(path).map_err(io_err("reading", path))?;
    Ok(serde_json::from_slice(&b)?)
}

/// Docker's `manifest.json` for the layout's (first) image.
fn docker_manifest(layout: &Path, tags: &[Reference]) -> Result<Vec<u8>, ArchiveError> {
    let index = read_json(&layout.join("index.json"))?;
    let m = index["manifests"]
        .get(0)
        .ok_or(ArchiveError::Layout("index.json lists no manifest"))?;
    let manifest = read_json(&layout.join(blob_path(&m["digest"])?))?;
    let layers = manifest["layers"]
        .as_array()
        .ok_or(ArchiveError::Layout("manifest without layers"))?
        .iter()
        .map(|l| blob_path(&l["digest"]))
        .collect::<Result<Vec<_>, _>>()?;
    let doc = serde_json::json!([{
        "Config": blob_path(&manifest["config"]["digest"])?,
        "RepoTags": tags.iter().map(familiar).collect::<Vec<_>>(),
        "Layers": layers,
    }]);
    Ok(serde_json::to_vec(&doc)?)
}

fn add_tree<W: Write>(tar: &mut TarBuilder<W>, dir: &Path, rel: &str) -> Result<(), ArchiveError> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err("reading", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err("reading", dir))?;
    names.sort();
    for n in names {
        let Some(name) = n.to_str() else { continue };
        let path = dir.join(name);
        let r = format!("{rel}/{name}");
        let m = std::fs::symlink_metadata(&path).map_err(io_err("inspecting", &path))?;
        if m.is_dir() {
            tar.append(&HeaderSpec::new(&format!("{r}/"), TarKind::Dir), b"")
                .map_err(io_err("archiving", &path))?;
            add_tree(tar, &path, &r)?;
        } else if m.is_file() {
            add_file(tar, &path, &r, m.len())?;
        }
    }
    Ok(())
}

fn add_file<W: Write>(
    tar: &mut TarBuilder<W>,
    path: &Path,
    rel: &str,
    size: u64,
) -> Result<(), ArchiveError> {
    let mut f = std::fs::File::open(path).map_err(io_err("opening", path))?;
    tar.append_reader(&HeaderSpec::new(rel, TarKind::Reg), size, &mut f)
        .map_err(io_err("archiving", path))
}

/// Writes the OCI layout at `layout` as a tar to `out`; with `docker` (the tags, may be
/// empty) also docker's `manifest.json`.
pub fn write_image_tar<W: Write>(
    layout: &Path,
    docker: Option<&[Reference]>,
    out: W,
) -> Result<W, ArchiveError> {
    let mut tar = TarBuilder::new(out);
    for name in ["oci-layout", "index.json"] {
        let path = layout.join(name);
        let m = std::fs::metadata(&path).map_err(io_err("inspecting", &path))?;
        add_file(&mut tar, &path, name, m.len())?;
    }
    if let Some(tags) = docker {
        let doc = docker_manifest(layout, tags)?;
        tar.append(&HeaderSpec::new("manifest.json", TarKind::Reg), &doc)
            .map_err(io_err("archiving", Path::new("manifest.json")))?;
    }
    let blobs = layout.join("blobs");
    tar.append(&HeaderSpec::new("blobs/", TarKind::Dir), b"")
        .map_err(io_err("archiving", &blobs))?;
    add_tree(&mut tar, &blobs, "blobs")?;
    tar.finish().map_err(io_err("finishing", layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_are_familiar() {
        let f = |s: &str| familiar(&Reference::parse(s).unwrap());
        assert_eq!(f("busybox"), "busybox:latest");
        assert_eq!(f("user/app:v1"), "user/app:v1");
        assert_eq!(f("127.0.0.1:5000/lab/app:v2"), "127.0.0.1:5000/lab/app:v2");
    }
}
