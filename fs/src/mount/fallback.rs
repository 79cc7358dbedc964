//! The fallback for layers that are not eStargz: pull the whole blob (verified against its
//! digest), turn it into an indexed layer locally (stored, not recompressed: level 0), and
//! unpack that with the same safe extractor the CLI uses, whiteouts in overlayfs form.

use super::MountError;
use crate::format::extract::{unpack_tar, ExtractOptions};
use crate::remote::{Descriptor, Reference, RegistryClient};
use std::path::Path;

/// Pulls `desc` and unpacks it into `dir`, whiteouts in overlayfs form.
pub async fn pull_and_unpack(
    client: &RegistryClient,
    reference: &Reference,
    desc: &Descriptor,
    dir: &Path,
    sessions: &[String],
) -> Result<(), MountError> {
    let eo = ExtractOptions {
        chown: crate::sys::is_root(),
        ..ExtractOptions::default()
    };
    pull_and_unpack_with(client, reference, desc, dir, sessions, eo).await
}

/// Pulls `desc` and unpacks it into `dir` as `eo` says.
pub async fn pull_and_unpack_with(
    client: &RegistryClient,
    reference: &Reference,
    desc: &Descriptor,
    dir: &Path,
    sessions: &[String],
    eo: ExtractOptions,
) -> Result<(), MountError> {
    let digest = desc.digest()?;
    let err = |reason: String| MountError::Unpack {
        digest: digest.to_string(),
        reason,
    };
    let parent = dir.parent().unwrap_or(dir);
    let blob =
        tempfile::NamedTempFile::new_in(parent).map_err(|e| err(format!("temp file: {e}")))?;
    let (file, blob_path) = blob.into_parts();
    let mut f = tokio::fs::File::from_std(file);
    client
        .blob_to_file(reference, &digest, desc.size, &mut f, sessions, &|_| {})
        .await?;
    drop(f);
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let input = std::fs::File::open(&blob_path).map_err(|e| e.to_string())?;
        let scratch = dir.parent().unwrap_or(&dir).to_path_buf();
        unpack_tar(input, &dir, &scratch, &eo).map_err(|e| format!("unpacking: {e}"))?;
        drop(blob_path);
        Ok(())
    })
    .await
    .map_err(|e| err(e.to_string()))?
    .map_err(err)
}
