//! `copy`: moves an image between OCI layouts (`oci:DIR[:TAG]`) and registries
//! (`docker://HOST/REPO[:TAG]`), any direction. Manifests travel as their exact bytes (their
//! digest is their identity); every blob is verified against its descriptor on the way in;
//! blobs the destination already has are skipped. From an index, one platform is copied
//! unless `all_platforms` is set, in which case the index and all its children are. With
//! `referrers` set, the manifests that refer to what was copied follow (see `referrers`).

mod referrers;

use super::client::RegistryClient;
use super::error::RemoteError;
use super::manifest::{Descriptor, Manifest};
use super::platform::Platform;
use super::reference::Reference;
use crate::digest::Digest;
use crate::image::{ImageRef, OciLayout};
use oci_spec::image::MediaType;
use std::path::PathBuf;

/// One end of a copy.
#[derive(Debug, Clone)]
pub enum ImageLocation {
    /// An OCI layout directory.
    Layout(ImageRef),
    /// A registry repository.
    Registry(Reference),
}

impl std::str::FromStr for ImageLocation {
    type Err = RemoteError;
    fn from_str(s: &str) -> Result<Self, RemoteError> {
        if let Some(rest) = s.strip_prefix("docker://") {
            return Ok(ImageLocation::Registry(Reference::parse(rest)?));
        }
        if s.starts_with("oci:") {
            return s
                .parse::<ImageRef>()
                .map(ImageLocation::Layout)
                .map_err(|e| RemoteError::Config(e.to_string()));
        }
        Err(RemoteError::Config(format!(
            "{s:?}: expected oci:DIR[:TAG] or docker://HOST/REPO[:TAG]"
        )))
    }
}

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Platform picked from an index.
    pub platform: Platform,
    /// Copy a whole index with every platform.
    pub all_platforms: bool,
    /// Also copy referrers this many levels deep (0: none; 1: the image's referrers; 2:
    /// theirs too, e.g. a signature of an SBOM).
    pub referrers: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            platform: Platform::host(),
            all_platforms: false,
            referrers: 0,
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Default)]
pub struct CopyReport {
    /// Digest of the top manifest written.
    pub manifest: Option<Digest>,
    /// Blobs transferred.
    pub blobs_copied: usize,
    /// Blobs the destination already had.
    pub blobs_skipped: usize,
    /// Bytes transferred.
    pub bytes: u64,
    /// Manifests written.
    pub manifests: usize,
    /// Referrers copied (each counted once, with its children).
    pub referrers: usize,
}

/// Progress events.
pub trait CopyProgress: Send + Sync {
    /// A blob starts (or is skipped when `skipped`).
    fn blob(&self, digest: &Digest, size: u64, skipped: bool);
    /// Bytes of the current blob arrived.
    fn bytes(&self, n: u64);
}

/// No progress output.
pub struct Quiet;
impl CopyProgress for Quiet {
    fn blob(&self, _: &Digest, _: u64, _: bool) {}
    fn bytes(&self, _: u64) {}
}

struct Ctx<'a> {
    client: &'a RegistryClient,
    progress: &'a dyn CopyProgress,
    report: CopyReport,
    scratch: tempfile::TempDir,
}

/// Copies `src` to `dst`.
pub async fn copy_image(
    client: &RegistryClient,
    src: &ImageLocation,
    dst: &ImageLocation,
    opts: &CopyOptions,
    progress: &dyn CopyProgress,
) -> Result<CopyReport, RemoteError> {
    let scratch = tempfile::tempdir().map_err(|e| RemoteError::io("scratch dir", e))?;
    let mut cx = Ctx {
        client,
        progress,
        report: CopyReport::default(),
        scratch,
    };
    let top = read_top(&cx, src).await?;
    let src_tag = match src {
        ImageLocation::Layout(r) => r.tag.clone(),
        ImageLocation::Registry(r) => r.tag.clone(),
    };
    let to_write = if top.is_index() && !opts.all_platforms {
        let child = top.select(&opts.platform, &location_name(src))?;
        read_child(&cx, src, &child).await?
    } else {
        top
    };
    let mut subjects = vec![to_write.digest];
    if to_write.is_index() {
        for child in &to_write.manifests {
            subjects.push(child.digest()?);
            let m = read_child(&cx, src, child).await?;
            if m.is_index() {
                return Err(RemoteError::protocol(location_name(src), "nested index"));
            }
            copy_blobs(&mut cx, src, dst, &m).await?;
            write_manifest(&mut cx, dst, &m, None).await?;
        }
    } else {
        copy_blobs(&mut cx, src, dst, &to_write).await?;
    }
    let tag = match dst {
        ImageLocation::Layout(r) => r.tag.clone().or(src_tag),
        ImageLocation::Registry(r) => r.tag.clone(),
    };
    write_manifest(&mut cx, dst, &to_write, tag.as_deref()).await?;
    if opts.referrers > 0 {
        referrers::copy_referrers(&mut cx, src, dst, subjects, opts.referrers).await?;
    }
    cx.report.manifest = Some(to_write.digest);
    Ok(cx.report)
}

fn location_name(l: &ImageLocation) -> String {
    match l {
        ImageLocation::Layout(r) => format!("oci:{}", r.dir.display()),
        ImageLocation::Registry(r) => r.to_string(),
    }
}

fn layout_err(e: crate::image::ImageError) -> RemoteError {
    RemoteError::Config(e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RemoteError> + Send + 'static,
) -> Result<T, RemoteError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RemoteError::Config(format!("worker thread failed: {e}")))?
}

fn layout_manifest(
    layout: &OciLayout,
    d: &Digest,
    size: u64,
    media: &str,
) -> Result<Manifest, RemoteError> {
    let desc = oci_spec::image::Descriptor::new(
        MediaType::from(media),
        size,
        OciLayout::to_oci(d).map_err(layout_err)?,
    );
    let data = layout.read_small_blob(&desc).map_err(layout_err)?;
    let ct = (!media.is_empty()).then_some(media);
    Manifest::parse(
        data,
        ct,
        Some(d),
        &format!("{}@{d}", layout.root().display()),
    )
}

async fn read_top(cx: &Ctx<'_>, src: &ImageLocation) -> Result<Manifest, RemoteError> {
    match src {
        ImageLocation::Registry(r) => cx.client.manifest(r, &[]).await,
        ImageLocation::Layout(r) => {
            let r = r.clone();
            blocking(move || {
                let layout = OciLayout::open(&r.dir).map_err(layout_err)?;
                let index = layout.index().map_err(layout_err)?;
                let entries: Vec<_> = match &r.tag {
                    Some(t) => layout
                        .tags()
                        .map_err(layout_err)?
                        .into_iter()
                        .filter(|(n, _)| n == t)
                        .map(|(_, d)| d)
                        .collect(),
                    None => index.manifests().clone(),
                };
                let desc = match entries.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(RemoteError::NotFound(format!(
                            "image {} in {}",
                            r.tag.as_deref().unwrap_or("(any)"),
                            r.dir.display()
                        )))
                    }
                    _ => {
                        return Err(RemoteError::Config(format!(
                            "{} holds several images; name one with oci:DIR:TAG",
                            r.dir.display()
                        )))
                    }
                };
                let d = OciLayout::digest_of(&desc).map_err(layout_err)?;
                layout_manifest(&layout, &d, desc.size(), desc.media_type().as_ref())
            })
            .await
        }
    }
}

async fn read_child(
    cx: &Ctx<'_>,
    src: &ImageLocation,
    child: &Descriptor,
) -> Result<Manifest, RemoteError> {
    match src {
        ImageLocation::Registry(r) => cx.client.manifest_by_descriptor(r, child, &[]).await,
        ImageLocation::Layout(r) => {
            let (dir, child) = (r.dir.clone(), child.clone());
            blocking(move || {
                let layout = OciLayout::open(&dir).map_err(layout_err)?;
                layout_manifest(&layout, &child.digest()?, child.size, &child.media_type)
            })
            .await
        }
    }
}

async fn copy_blobs(
    cx: &mut Ctx<'_>,
    src: &ImageLocation,
    dst: &ImageLocation,
    m: &Manifest,
) -> Result<(), RemoteError> {
    for desc in m.config.iter().chain(&m.layers) {
        if desc.urls.as_ref().is_some_and(|u| !u.is_empty()) {
            continue; // foreign layer: not ours to copy
        }
        let d = desc.digest()?;
        if has_blob(cx, dst, &d, desc.size).await? {
            cx.progress.blob(&d, desc.size, true);
            cx.report.blobs_skipped += 1;
            continue;
        }
        cx.progress.blob(&d, desc.size, false);
        let (path, _keep) = fetch_blob(cx, src, &d, desc.size).await?;
        put_blob(cx, dst, &d, desc.size, &path).await?;
        cx.report.blobs_copied += 1;
        cx.report.bytes += desc.size;
    }
    Ok(())
}

async fn has_blob(
    cx: &Ctx<'_>,
    dst: &ImageLocation,
    d: &Digest,
    size: u64,
) -> Result<bool, RemoteError> {
    match dst {
        ImageLocation::Layout(r) => {
            let p = r.dir.join("blobs/sha256").join(d.hex());
            Ok(std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == size))
        }
        ImageLocation::Registry(r) => {
            Ok(cx.client.blob_size(r, d, &[]).await.ok().flatten() == Some(size))
        }
    }
}

/// A local file holding the verified blob (a temp file when it came from a registry).
async fn fetch_blob(
    cx: &Ctx<'_>,
    src: &ImageLocation,
    d: &Digest,
    size: u64,
) -> Result<(PathBuf, Option<tempfile::TempPath>), RemoteError> {
    match src {
        ImageLocation::Layout(r) => {
            let path = r.dir.join("blobs/sha256").join(d.hex());
            let (p2, want) = (path.clone(), *d);
            let progress_total = size;
            blocking(move || {
                let (got, n) = crate::image::hash_file(&p2).map_err(layout_err)?;
                if got != want || n != progress_total {
                    return Err(RemoteError::Digest {
                        what: format!("{}", p2.display()),
                        expected: want.to_string(),
                        actual: got.to_string(),
                    });
                }
                Ok(())
            })
            .await?;
            cx.progress.bytes(size);
            Ok((path, None))
        }
        ImageLocation::Registry(r) => {
            let tmp = tempfile::NamedTempFile::new_in(cx.scratch.path())
                .map_err(|e| RemoteError::io("temp file", e))?;
            let (std_file, tpath) = tmp.into_parts();
            let mut f = tokio::fs::File::from_std(std_file);
            let progress = cx.progress;
            cx.client
                .blob_to_file(r, d, size, &mut f, &[], &|n| progress.bytes(n))
                .await?;
            Ok((tpath.to_path_buf(), Some(tpath)))
        }
    }
}

async fn put_blob(
    cx: &Ctx<'_>,
    dst: &ImageLocation,
    d: &Digest,
    size: u64,
    path: &std::path::Path,
) -> Result<(), RemoteError> {
    match dst {
        ImageLocation::Registry(r) => {
            cx.client.push_blob(r, d, path, size, &[]).await?;
            Ok(())
        }
        ImageLocation::Layout(r) => {
            let (dir, src, d) = (r.dir.clone(), path.to_path_buf(), *d);
            blocking(move || {
                let layout = OciLayout::open_or_create(&dir).map_err(layout_err)?;
                let tmp = layout.temp_blob().map_err(layout_err)?;
                // `src` was verified against the digest when it was fetched.
                std::fs::copy(&src, tmp.path())
                    .map_err(|e| RemoteError::io(format!("copying blob {d}"), e))?;
                layout.commit_blob(tmp, &d).map_err(layout_err)
            })
            .await
        }
    }
}

async fn write_manifest(
    cx: &mut Ctx<'_>,
    dst: &ImageLocation,
    m: &Manifest,
    tag: Option<&str>,
) -> Result<(), RemoteError> {
    match dst {
        ImageLocation::Registry(r) => {
            let object = tag
                .map(str::to_string)
                .unwrap_or_else(|| m.digest.to_string());
            cx.client
                .push_manifest(r, &object, &m.media_type, &m.data, &[])
                .await?;
        }
        ImageLocation::Layout(r) => {
            let (dir, data, media, tag) = (
                r.dir.clone(),
                m.data.clone(),
                m.media_type.clone(),
                tag.map(str::to_string),
            );
            blocking(move || {
                let layout = OciLayout::open_or_create(&dir).map_err(layout_err)?;
                layout
                    .put_manifest_bytes(&data, MediaType::from(media.as_str()), tag.as_deref())
                    .map_err(layout_err)?;
                Ok(())
            })
            .await?;
        }
    }
    cx.report.manifests += 1;
    Ok(())
}
