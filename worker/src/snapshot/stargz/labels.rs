//! The labels of containerd's remote-snapshot protocol that say which layer a Prepare is
//! for: the target (`containerd.io/snapshot.ref`), the image reference and layer digest in
//! either the stargz form (`containerd.io/snapshot/remote/stargz.reference|digest`), the CRI
//! form (`containerd.io/snapshot/cri.image-ref|layer-digest`) or BuildKit's per-call form
//! (`…stargz.reference.<ID>`), the TOC digest annotation, and session IDs. Everything is
//! parsed and checked here: a reference that does not parse (path tricks included) or a
//! malformed digest is an invalid argument, not a mount attempt.

use crate::snapshot::{Labels, SnapshotError};
use stargaze_fs::remote::Reference;
use stargaze_fs::Digest;

/// Names the target a remote Prepare would create.
pub const TARGET: &str = "containerd.io/snapshot.ref";
/// Marks committed snapshots mounted lazily (containerd's value: `remote snapshot`).
pub const REMOTE: &str = "containerd.io/snapshot/remote";
const STARGZ_REF: &str = "containerd.io/snapshot/remote/stargz.reference";
const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
const CRI_REF: &str = "containerd.io/snapshot/cri.image-ref";
const CRI_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The TOC digest, copied from the layer descriptor's annotation of the same name.
pub const TOC_DIGEST: &str = stargaze_fs::oci::TOC_DIGEST_ANNOTATION;
const SESSION_PART: &str = ".session.";

/// Whether `key` is a per-call session label (`…stargz.session.N[.call]`).
pub fn is_session_label(key: &str) -> bool {
    key.starts_with(stargaze_fs::remote::auth::SESSION_LABEL) && key.contains(SESSION_PART)
}

/// A layer a Prepare (or a stored remote snapshot) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLayerRef {
    /// Image reference (repository to read the blob from).
    pub reference: Reference,
    /// Layer digest.
    pub digest: Digest,
    /// TOC digest annotation, when given.
    pub toc_digest: Option<String>,
    /// Session IDs whose credentials may be used, in order.
    pub sessions: Vec<String>,
}

fn invalid(key: &str, why: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::InvalidArgument(format!("label {key}: {why}"))
}

/// The `(reference key, digest key)` pair present in `labels`: stargz's, CRI's, or
/// BuildKit's suffixed form (the first ID in key order).
fn keys(labels: &Labels) -> Option<(String, String)> {
    for (r, d) in [(STARGZ_REF, STARGZ_DIGEST), (CRI_REF, CRI_DIGEST)] {
        if labels.contains_key(r) && labels.contains_key(d) {
            return Some((r.to_string(), d.to_string()));
        }
    }
    labels.keys().find_map(|k| {
        let id = k.strip_prefix(STARGZ_REF)?.strip_prefix('.')?;
        let d = format!("{STARGZ_DIGEST}.{id}");
        labels.contains_key(&d).then(|| (k.clone(), d))
    })
}

/// The layer `labels` name, if they name one; errors for labels that are present but bad.
pub fn layer(labels: &Labels) -> Result<Option<RemoteLayerRef>, SnapshotError> {
    let Some((rk, dk)) = keys(labels) else {
        return Ok(None);
    };
    let reference = Reference::parse(&labels[&rk]).map_err(|e| invalid(&rk, e))?;
    let digest: Digest = labels[&dk].parse().map_err(|e| invalid(&dk, e))?;
    let toc_digest = match labels.get(TOC_DIGEST) {
        Some(t) => {
            t.parse::<Digest>().map_err(|e| invalid(TOC_DIGEST, e))?;
            Some(t.clone())
        }
        None => None,
    };
    let as_map: std::collections::HashMap<String, String> =
        labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Ok(Some(RemoteLayerRef {
        reference,
        digest,
        toc_digest,
        sessions: stargaze_fs::remote::auth::session_ids_from_labels(&as_map),
    }))
}

/// What a remote snapshot stores: the labels it came with (the target label included:
/// containerd finds the snapshot by it), minus the per-call ones (session IDs die with their
/// client), plus the remote marker.
pub fn stored(labels: &Labels) -> Labels {
    let mut out: Labels = labels
        .iter()
        .filter(|(k, _)| !is_session_label(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.insert(REMOTE.into(), "remote snapshot".into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn forms() {
        assert_eq!(layer(&l(&[(TARGET, "x")])).unwrap(), None);
        let s = layer(&l(&[
            (STARGZ_REF, "localhost:5000/a/b:v1"),
            (STARGZ_DIGEST, D),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.digest.to_string(), D);
        let c = layer(&l(&[
            (CRI_REF, "docker.io/library/busybox:1"),
            (CRI_DIGEST, D),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(c.reference.repository, "library/busybox");
        let b = layer(&l(&[
            (&format!("{STARGZ_REF}.abc"), "h:1/r:t"),
            (&format!("{STARGZ_DIGEST}.abc"), D),
            ("containerd.io/snapshot/remote/stargz.session.1.abc", "s1"),
            ("containerd.io/snapshot/remote/stargz.session.0.abc", "s0"),
            (TOC_DIGEST, D),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(b.sessions, ["s0", "s1"]);
        assert_eq!(b.toc_digest.as_deref(), Some(D));
        let kept = stored(&l(&[
            (TARGET, "t"),
            ("containerd.io/snapshot/remote/stargz.session.0.abc", "s0"),
            (STARGZ_DIGEST, D),
        ]));
        assert_eq!(
            kept,
            l(&[
                (TARGET, "t"),
                (STARGZ_DIGEST, D),
                (REMOTE, "remote snapshot")
            ])
        );
    }

    #[test]
    fn hostile_values_are_invalid_arguments() {
        for (r, d) in [
            ("localhost:5000/../../etc:v1", D),
            ("", D),
            ("UPPER/case", D),
            ("localhost:5000/a:v1", "sha256:zz"),
            ("localhost:5000/a:v1", "md5:00"),
            ("localhost:5000/a:v1", "../../etc/passwd"),
        ] {
            let got = layer(&l(&[(STARGZ_REF, r), (STARGZ_DIGEST, d)]));
            assert!(
                matches!(got, Err(SnapshotError::InvalidArgument(_))),
                "{r} {d}: {got:?}"
            );
        }
        let bad_toc = layer(&l(&[
            (STARGZ_REF, "localhost:5000/a:v1"),
            (STARGZ_DIGEST, D),
            (TOC_DIGEST, "nope"),
        ]));
        assert!(matches!(bad_toc, Err(SnapshotError::InvalidArgument(_))));
    }
}
