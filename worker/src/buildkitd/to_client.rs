//! The exporters whose result goes to the client, over its session's `FileSend`
//! (`session::filesend`), as BuildKit v0.11's do:
//!
//! - `oci` / `docker`: the engine exports the image to an OCI layout in a scratch directory
//!   of the worker (base layers fetched as for any layout export), which is sent as a tar
//!   (`archive`), the exporter's response as `exporter-md-*` metadata;
//! - `tar`: the result's rootfs, mounted read-only, sent as a tar (the diff writer over the
//!   whole tree);
//! - `local`: that rootfs sent as a directory, the client writing it into its own.
//!
//! Each is one progress vertex named as BuildKit names it. Nothing is kept: the scratch
//! layout and the mount are removed when the export ends, however it ends.

use super::archive::write_image_tar;
use super::exporter::{Exporter, TarballFormat};
use super::session::filesend::{send_bytes, send_dir, FileSendError};
use super::session::Session;
use crate::frontend::diff::{write_tar, Changes};
use crate::frontend::export::{export, Destination};
use crate::frontend::guards::RootfsView;
use crate::frontend::progress::Progress;
use crate::frontend::{StageResult, Worker};
use crate::oci_worker::OciWorker;
use stargaze_fs::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::Status;

fn status(e: FileSendError) -> Status {
    match e {
        FileSendError::Call(s) => Status::new(
            s.code(),
            format!("sending the export to the client: {}", s.message()),
        ),
        e => Status::unknown(format!("sending the export to the client: {e}")),
    }
}

/// Sends `img` to the client of `session` as `exp` says; the answer is the Solve's
/// `ExporterResponse`.
pub async fn export_to_client(
    exp: &Exporter,
    worker: &OciWorker,
    img: &StageResult,
    progress: &Arc<Progress>,
    sessions: &[String],
    session: &Session,
) -> Result<HashMap<String, String>, Status> {
    let title = match exp {
        Exporter::Tarball {
            format: TarballFormat::Oci,
            ..
        } => "exporting to oci image format",
        Exporter::Tarball { .. } => "exporting to docker image format",
        Exporter::Tar => "exporting to client tarball",
        Exporter::Local => "exporting to client directory",
        Exporter::None | Exporter::Image { .. } => return Ok(HashMap::new()),
    };
    let v = progress.vertex(title);
    let r = match exp {
        Exporter::Tarball { format, names, .. } => {
            tarball(worker, img, sessions, session, *format, names).await
        }
        Exporter::Tar => rootfs_tar(worker.worker().clone(), img, session).await,
        _ => local(worker.worker().clone(), img, session).await,
    };
    match &r {
        Ok((out, sent)) => {
            v.log(&format!("sent {sent}"));
            v.done();
            tracing::info!(exporter = title, %sent, entries = out.len(), "export sent to the client");
        }
        Err(e) => v.error(&e.message()),
    }
    r.map(|(out, _)| out)
}

async fn tarball(
    worker: &OciWorker,
    img: &StageResult,
    sessions: &[String],
    session: &Session,
    format: TarballFormat,
    names: &[stargaze_fs::remote::Reference],
) -> Result<(HashMap<String, String>, String), Status> {
    let w = worker.worker();
    let scratch = tempfile::Builder::new()
        .prefix("export-")
        .tempdir_in(&w.tmp)
        .map_err(|e| Status::internal(format!("scratch directory: {e}")))?;
    let layout = scratch.path().join("layout");
    let tag = names
        .first()
        .and_then(|n| n.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let rep = export(
        worker.client(),
        &w.content,
        img,
        &Destination::Layout {
            dir: layout.clone(),
            tag,
        },
        // The scratch layout is no step of the client's: its own vertex stays quiet.
        &Progress::new(Box::new(std::io::sink())),
        sessions,
    )
    .await
    .map_err(|e| super::dockerfile::build_status(&e))?;
    let mut out = HashMap::new();
    if let Some(d) = &rep.manifest {
        out.insert("containerimage.digest".to_string(), d.to_string());
    }
    if let Some(cd) = config_digest(&layout) {
        out.insert("containerimage.config.digest".to_string(), cd.to_string());
    }
    super::exporter::insert_image_names(&mut out, names);
    let docker: Option<Vec<_>> = (format == TarballFormat::Docker).then(|| names.to_vec());
    let sent = send_bytes(session.channel(), &out, move |wr| {
        let _keep = scratch;
        write_image_tar(&layout, docker.as_deref(), wr)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(status)?;
    Ok((out, format!("{sent} bytes")))
}

/// The config digest of the layout's first manifest.
fn config_digest(layout: &std::path::Path) -> Option<Digest> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).ok()?).ok()?;
    let m: Digest = index["manifests"][0]["digest"].as_str()?.parse().ok()?;
    let s = m.to_string();
    let (alg, hex) = s.split_once(':')?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs").join(alg).join(hex)).ok()?)
            .ok()?;
    manifest["config"]["digest"].as_str()?.parse().ok()
}

async fn rootfs_tar(
    w: Arc<Worker>,
    img: &StageResult,
    session: &Session,
) -> Result<(HashMap<String, String>, String), Status> {
    let top = img.top.clone();
    let sent = send_bytes(session.channel(), &HashMap::new(), move |wr| {
        let view = RootfsView::open(&w, &top).map_err(|e| e.to_string())?;
        let changes = Changes::Compare {
            new: view.path().to_path_buf(),
            old: None,
        };
        write_tar(&changes, wr)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(status)?;
    Ok((HashMap::new(), format!("{sent} bytes")))
}

async fn local(
    w: Arc<Worker>,
    img: &StageResult,
    session: &Session,
) -> Result<(HashMap<String, String>, String), Status> {
    let top = img.top.clone();
    let view = tokio::task::spawn_blocking(move || RootfsView::open(&w, &top))
        .await
        .map_err(|e| Status::internal(format!("mount task: {e}")))?
        .map_err(|e| super::dockerfile::build_status(&e))?;
    let r = send_dir(session.channel(), view.path().to_path_buf()).await;
    // Unmounting blocks.
    let _ = tokio::task::spawn_blocking(move || drop(view)).await;
    let sent = r.map_err(status)?;
    Ok((
        HashMap::new(),
        format!(
            "{} entries, {} files, {} bytes",
            sent.entries, sent.files, sent.bytes
        ),
    ))
}
