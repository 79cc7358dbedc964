//! Base images of stages: the manifest and config from the registry (for the requested
//! platform, checked against their digests), and the layer chain as committed snapshots
//! named by chain ID, as containerd names them. With the stargz snapshotter each layer is
//! first offered as a remote snapshot (the labels of containerd's remote-snapshot flow):
//! eStargz layers are then mounted lazily and nothing is pulled; other layers, and every
//! layer with the other snapshotters, are pulled, verified and unpacked into a prepared
//! snapshot and committed.
//!
//! Every registry access asks the build's sessions for credentials: resolving and reading the
//! config, pulls, and the stargz snapshotter's lazy reads, to which the session IDs travel in
//! the labels `containerd.io/snapshot/remote/stargz.session.N.<call>` — on the Prepare of a
//! new lazy layer, and as an Update of a remote snapshot that exists already, so a later build
//! on the same layer adds its session to the layer's list (as BuildKit does).

use super::guards::random_suffix;
use super::image_config::ImageConfig;
use super::BuildError;
use crate::snapshot::stargz::labels::{REMOTE, TARGET, TOC_DIGEST};
use crate::snapshot::{Info, Labels, Mount, SnapshotError, Snapshotter};
use stargaze_fs::format::extract::{ExtractOptions, Whiteouts};
use stargaze_fs::mount::MountError;
use stargaze_fs::remote::auth::SESSION_LABEL;
use stargaze_fs::remote::{Descriptor, Platform, Reference, RegistryClient, RemoteError};
use stargaze_fs::Digest;
use std::path::PathBuf;
use std::sync::Arc;

/// Largest image config read.
const MAX_CONFIG: u64 = 8 << 20;

/// A resolved base image.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// Where it came from.
    pub reference: Reference,
    /// Its manifest digest.
    pub manifest: Digest,
    /// The image config.
    pub config: ImageConfig,
    /// Layer descriptors, bottom first.
    pub layers: Vec<Descriptor>,
    /// The config's diff IDs, one per layer.
    pub diff_ids: Vec<String>,
}

/// The chain IDs of `diff_ids`: the first is its diff ID, each next one
/// `sha256(previous + " " + diff ID)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()).to_string(),
        };
        out.push(next);
    }
    out
}

/// Why a base image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// The registry did not resolve it.
    #[error(transparent)]
    Resolve(RemoteError),
    /// Its manifest names no config.
    #[error("manifest has no config")]
    NoConfig,
    /// Its config is larger than [`MAX_CONFIG`].
    #[error("config is {0} bytes (at most {MAX_CONFIG})")]
    ConfigSize(u64),
    /// The config's descriptor is not valid.
    #[error(transparent)]
    ConfigDescriptor(RemoteError),
    /// The config could not be read.
    #[error("reading the config: {0}")]
    ReadConfig(RemoteError),
    /// The config is not what its digest says.
    #[error("config does not match its digest")]
    ConfigDigest,
    /// The config is not a valid image config.
    #[error("config: {0}")]
    Config(#[from] serde_json::Error),
    /// The config has no `rootfs.diff_ids`.
    #[error("config has no rootfs.diff_ids")]
    NoDiffIds,
    /// A diff ID is not a digest.
    #[error("bad diff ID {0}")]
    DiffId(serde_json::Value),
    /// Layers and diff IDs do not pair up.
    #[error("{layers} layers but {diff_ids} diff IDs")]
    LayerCount {
        /// Layers in the manifest.
        layers: usize,
        /// Diff IDs in the config.
        diff_ids: usize,
    },
    /// A prepared snapshot's mounts are neither an overlay nor a bind mount.
    #[error("cannot unpack into mounts {0:?}")]
    UnpackTarget(Vec<Mount>),
    /// A layer could not be pulled and unpacked.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// Why.
        #[source]
        source: MountError,
    },
}

/// Resolves `reference` for `platform` and reads its config, asking `sessions` for
/// credentials.
pub async fn resolve(
    client: &RegistryClient,
    reference: &Reference,
    platform: &Platform,
    sessions: &[String],
) -> Result<BaseImage, BuildError> {
    resolve_inner(client, reference, platform, sessions)
        .await
        .map_err(|e| BuildError::Base {
            image: reference.to_string(),
            source: Box::new(e),
        })
}

async fn resolve_inner(
    client: &RegistryClient,
    reference: &Reference,
    platform: &Platform,
    sessions: &[String],
) -> Result<BaseImage, BaseError> {
    let (top, child) = client
        .resolve(reference, platform, sessions)
        .await
        .map_err(BaseError::Resolve)?;
    let m = child.unwrap_or(top);
    let cfg_desc = m.config.clone().ok_or(BaseError::NoConfig)?;
    if cfg_desc.size > MAX_CONFIG {
        return Err(BaseError::ConfigSize(cfg_desc.size));
    }
    let cfg_digest = cfg_desc.digest().map_err(BaseError::ConfigDescriptor)?;
    let bytes = client
        .blob_range(reference, &cfg_digest, 0, cfg_desc.size, sessions)
        .await
        .map_err(BaseError::ReadConfig)?
        .data;
    if Digest::of(&bytes) != cfg_digest {
        return Err(BaseError::ConfigDigest);
    }
    let doc: serde_json::Value = serde_json::from_slice(&bytes)?;
    let diff_ids: Vec<String> = doc["rootfs"]["diff_ids"]
        .as_array()
        .ok_or(BaseError::NoDiffIds)?
        .iter()
        .map(|v| {
            v.as_str()
                .filter(|s| s.parse::<Digest>().is_ok())
                .map(str::to_string)
                .ok_or_else(|| BaseError::DiffId(v.clone()))
        })
        .collect::<Result<_, _>>()?;
    if diff_ids.len() != m.layers.len() {
        return Err(BaseError::LayerCount {
            layers: m.layers.len(),
            diff_ids: diff_ids.len(),
        });
    }
    Ok(BaseImage {
        reference: reference.with_digest(m.digest),
        manifest: m.digest,
        config: ImageConfig::from_value(doc)?,
        layers: m.layers.clone(),
        diff_ids,
    })
}

/// How one base layer came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOutcome {
    /// Its snapshot existed.
    Present,
    /// Mounted lazily (remote snapshot).
    Lazy,
    /// Pulled and unpacked.
    Pulled,
}

/// The session labels of one call: `…stargz.session.N.<call>` = the Nth session ID.
fn session_labels(sessions: &[String], call: &str) -> Labels {
    sessions
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("{SESSION_LABEL}.{i}.{call}"), s.clone()))
        .collect()
}

/// Tells the snapshotter that the build's sessions use the existing remote snapshot `info`
/// (its lazy reads may then ask them too). A failure only loses that hint: logged.
fn add_sessions(snap: &dyn Snapshotter, info: Info, sessions: &[String]) {
    if sessions.is_empty() || !info.labels.contains_key(REMOTE) {
        return;
    }
    let labels = session_labels(sessions, &random_suffix());
    let fields: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
    let name = info.name.clone();
    let update = Info { labels, ..info };
    if let Err(e) = snap.update(update, &fields) {
        tracing::warn!(snapshot = %name, error = %e, "could not add the build's sessions to a lazy layer");
    }
}

/// Makes sure every layer of `image` is a committed snapshot; returns the top chain ID
/// (none for an image without layers) and what happened to each layer. `sessions` are asked
/// for credentials by the pulls and, through the labels, by lazy reads. Blocking.
pub fn ensure_snapshots(
    snap: &dyn Snapshotter,
    client: &Arc<RegistryClient>,
    rt: &tokio::runtime::Handle,
    image: &BaseImage,
    sessions: &[String],
    report: &dyn Fn(usize, LayerOutcome),
) -> Result<Option<String>, BuildError> {
    let chain = chain_ids(&image.diff_ids);
    let mut parent = String::new();
    for (i, (desc, id)) in image.layers.iter().zip(&chain).enumerate() {
        if let Ok(info) = snap.stat(id) {
            add_sessions(snap, info, sessions);
            report(i, LayerOutcome::Present);
            parent = id.clone();
            continue;
        }
        let call = random_suffix();
        let key = format!("extract-{call}-{id}");
        let mut labels = session_labels(sessions, &call);
        labels.insert(TARGET.into(), id.clone());
        labels.insert(
            "containerd.io/snapshot/remote/stargz.reference".into(),
            image.reference.to_string(),
        );
        labels.insert(
            "containerd.io/snapshot/remote/stargz.digest".into(),
            desc.digest.clone(),
        );
        if let Some(t) = desc
            .annotations
            .as_ref()
            .and_then(|a| a.get(stargaze_fs::oci::TOC_DIGEST_ANNOTATION))
        {
            labels.insert(TOC_DIGEST.into(), t.clone());
        }
        let mounts = match snap.prepare(&key, &parent, labels) {
            Err(SnapshotError::AlreadyExists(_)) if snap.stat(id).is_ok() => {
                report(i, LayerOutcome::Lazy);
                parent = id.clone();
                continue;
            }
            Err(e) => return Err(BuildError::Snapshot(e)),
            Ok(m) => m,
        };
        let unpacked = unpack(client, rt, image, desc, &mounts, sessions);
        if let Err(e) = unpacked {
            let _ = snap.remove(&key);
            return Err(e);
        }
        match snap.commit(id, &key, Labels::new()) {
            Ok(()) => {}
            // Another build committed the same layer meanwhile.
            Err(SnapshotError::AlreadyExists(_)) => {
                let _ = snap.remove(&key);
            }
            Err(e) => {
                let _ = snap.remove(&key);
                return Err(e.into());
            }
        }
        report(i, LayerOutcome::Pulled);
        parent = id.clone();
    }
    Ok(chain.last().cloned())
}

/// Where to unpack into a prepared snapshot: an overlay upper directory takes the layer
/// in overlay form; a bind-mounted tree (first layer, or a copy of the parent) has the
/// whiteouts applied.
fn unpack_target(mounts: &[Mount]) -> Option<(PathBuf, Whiteouts)> {
    match mounts {
        [m] => {
            if let Some(u) = m.options.iter().find_map(|o| o.strip_prefix("upperdir=")) {
                Some((PathBuf::from(u), Whiteouts::Overlay))
            } else if m.kind == "bind" {
                Some((PathBuf::from(&m.source), Whiteouts::Apply))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn unpack(
    client: &Arc<RegistryClient>,
    rt: &tokio::runtime::Handle,
    image: &BaseImage,
    desc: &Descriptor,
    mounts: &[Mount],
    sessions: &[String],
) -> Result<(), BuildError> {
    let fail = |e| BuildError::Base {
        image: image.reference.to_string(),
        source: Box::new(e),
    };
    let (dir, whiteouts) =
        unpack_target(mounts).ok_or_else(|| fail(BaseError::UnpackTarget(mounts.to_vec())))?;
    let eo = ExtractOptions {
        whiteouts,
        chown: stargaze_fs::sys::is_root(),
        ..ExtractOptions::default()
    };
    rt.block_on(stargaze_fs::mount::pull_and_unpack_with(
        client,
        &image.reference,
        desc,
        &dir,
        sessions,
        eo,
    ))
    .map_err(|source| {
        fail(BaseError::Layer {
            digest: desc.digest.clone(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(c[0], a);
        assert_eq!(c[1], Digest::of(format!("{a} {b}").as_bytes()).to_string());
    }
}
