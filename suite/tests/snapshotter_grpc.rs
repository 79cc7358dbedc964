//! Bad input over the snapshots gRPC API, against a running `stargaze snapshotter serve`
//! (stargz backend): hostile labels (huge, too many, references with path tricks, malformed
//! digests, unknown sessions pointing at an unreachable registry), keys with `..` and `/`,
//! missing parents, bad filters and field paths, and sixteen concurrent prepares of one key.
//! Each gets a clear gRPC error (or, for an unreachable registry, the normal fallback), nothing
//! appears outside the root, and the daemon keeps serving.

use stargaze_suite::servers::StargazeSnapshotter;
use stargaze_suite::{is_root, require, stargaze_bin};
use stargaze_worker::grpc::connect;
use stargaze_worker::grpc::pb;
use std::path::Path;
use tonic::Code;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn prepare(key: &str, parent: &str, labels: &[(&str, &str)]) -> pb::PrepareSnapshotRequest {
    pb::PrepareSnapshotRequest {
        snapshotter: "stargz".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn remote(target: &str, reference: &str, digest: &str) -> Vec<(String, String)> {
    vec![
        ("containerd.io/snapshot.ref".into(), target.into()),
        (
            "containerd.io/snapshot/remote/stargz.reference".into(),
            reference.into(),
        ),
        (
            "containerd.io/snapshot/remote/stargz.digest".into(),
            digest.into(),
        ),
        (
            "containerd.io/snapshot/remote/stargz.session.0.x".into(),
            "no-such-session".into(),
        ),
    ]
}

#[test]
fn hostile_requests_get_clear_errors_and_the_daemon_keeps_serving() {
    if !(require(is_root(), "root") && require(stargaze_bin().is_file(), "the stargaze binary")) {
        return;
    }
    let mut snap = StargazeSnapshotter::start_alone(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let outside_before: Vec<_> = std::fs::read_dir(snap.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    rt.block_on(async {
        let mut c = connect(&snap.socket).await.unwrap();
        let code = |r: Result<tonic::Response<pb::PrepareSnapshotResponse>, tonic::Status>| {
            r.err().map(|s| s.code())
        };
        // Remote labels that do not parse: invalid argument, no mount attempt.
        for (reference, digest) in [
            ("127.0.0.1:1/../../etc:v1", D),
            ("127.0.0.1:1/UPPER:v1", D),
            ("127.0.0.1:1/ok:v1", "sha256:../../etc/passwd"),
            ("127.0.0.1:1/ok:v1", "md5:00"),
        ] {
            let labels = remote("t1", reference, digest);
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(
                code(c.prepare(prepare("k1", "", &l)).await),
                Some(Code::InvalidArgument),
                "{reference} {digest}"
            );
        }
        // Huge and too many labels.
        let big = "v".repeat(5000);
        assert_eq!(
            code(c.prepare(prepare("k2", "", &[("k", &big)])).await),
            Some(Code::InvalidArgument)
        );
        let many: Vec<(String, String)> = (0..300).map(|i| (format!("l{i}"), "v".into())).collect();
        let l: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            code(c.prepare(prepare("k3", "", &l)).await),
            Some(Code::InvalidArgument)
        );
        // Well-formed labels for a registry that is not there, with a session nobody knows:
        // the lazy mount fails, loudly, and the prepare falls back to a normal one.
        let labels = remote("t2", "127.0.0.1:1/nothing/here:v1", D);
        let l: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = c.prepare(prepare("k4", "", &l)).await.unwrap().into_inner();
        assert!(!r.mounts.is_empty());
        // Keys are names, never paths.
        for key in [
            "../../../../tmp/stargaze-escape",
            "a/b/c",
            "default/1/extract-9 sha256:x",
        ] {
            c.prepare(prepare(key, "", &[])).await.unwrap();
        }
        assert!(!Path::new("/tmp/stargaze-escape").exists());
        assert_eq!(
            code(c.prepare(prepare("", "", &[])).await),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            code(c.prepare(prepare("bad\u{0}key", "", &[])).await),
            Some(Code::InvalidArgument)
        );
        // Parents that do not exist, or are not committed.
        assert_eq!(
            code(c.prepare(prepare("k5", "nope", &[])).await),
            Some(Code::NotFound)
        );
        assert_eq!(
            code(c.prepare(prepare("k6", "a/b/c", &[])).await),
            Some(Code::InvalidArgument)
        );
        // Bad filters and field paths.
        let list = c
            .list(pb::ListSnapshotsRequest {
                snapshotter: "stargz".into(),
                filters: vec!["size>3".into()],
            })
            .await;
        assert_eq!(list.err().map(|s| s.code()), Some(Code::InvalidArgument));
        let upd = c
            .update(pb::UpdateSnapshotRequest {
                snapshotter: "stargz".into(),
                info: Some(pb::Info {
                    name: "a/b/c".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["kind".into()],
                }),
            })
            .await;
        assert_eq!(upd.err().map(|s| s.code()), Some(Code::InvalidArgument));
        let upd = c
            .update(pb::UpdateSnapshotRequest {
                snapshotter: "stargz".into(),
                info: None,
                update_mask: None,
            })
            .await;
        assert_eq!(upd.err().map(|s| s.code()), Some(Code::InvalidArgument));
        // Sixteen prepares of one key at once: one wins, the rest already exist.
        let calls = (0..16).map(|_| {
            let mut c = c.clone();
            async move {
                c.prepare(prepare("same", "", &[]))
                    .await
                    .err()
                    .map(|s| s.code())
            }
        });
        let results = futures_util::future::join_all(calls).await;
        assert_eq!(
            results.iter().filter(|r| r.is_none()).count(),
            1,
            "{results:?}"
        );
        assert!(
            results.iter().flatten().all(|c| *c == Code::AlreadyExists),
            "{results:?}"
        );
        // Still serving.
        let st = c
            .stat(pb::StatSnapshotRequest {
                snapshotter: "stargz".into(),
                key: "same".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.info.unwrap().kind, pb::Kind::Active as i32);
    });
    assert!(snap.alive(), "{}", snap.log());
    let log = snap.log();
    assert!(
        log.contains("layer not mounted lazily"),
        "the failed lazy mount is logged:\n{log}"
    );
    let outside_after: Vec<_> = std::fs::read_dir(snap.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        outside_before.len(),
        outside_after.len(),
        "{outside_after:?}"
    );
}
