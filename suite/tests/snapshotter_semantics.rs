//! containerd's snapshotter expectations, checked against each local backend (native,
//! overlayfs, fuse-overlayfs, and the stargz backend's overlay driver) with real mounts: chains of prepare/commit, views, whiteouts
//! through overlays, the error kinds (already exists, not found, failed precondition, invalid
//! argument), walk filters, usage, label updates, cleanup of orphans and concurrent prepares.

use stargaze_suite::{have, is_root, require};
use stargaze_worker::snapshot::mounts::{mount_all, unmount};
use stargaze_worker::snapshot::native::Native;
use stargaze_worker::snapshot::overlay::Overlay;
use stargaze_worker::snapshot::{
    Driver, Kind, Labels, LocalSnapshotter, Mount, SnapshotError, Snapshotter,
};
use std::path::Path;
use std::sync::Arc;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Mounts `mounts` at a fresh directory under `tmp`, runs `f` on it, unmounts (also on panic).
fn with_mounted<T>(tmp: &Path, mounts: &[Mount], f: impl FnOnce(&Path) -> T) -> T {
    struct Guard(std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = unmount(&self.0);
        }
    }
    let target = tempfile::tempdir_in(tmp).unwrap().keep();
    mount_all(mounts, &target).unwrap_or_else(|e| panic!("mounting {mounts:?}: {e}"));
    let _g = Guard(target.clone());
    f(&target)
}

fn names(s: &dyn Snapshotter, filters: &[&str]) -> Vec<String> {
    let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
    let mut out = Vec::new();
    s.walk(&filters, &mut |i| {
        out.push(i.name.clone());
        Ok(())
    })
    .unwrap();
    out.sort();
    out
}

/// The error of a call that must fail.
fn e<T: std::fmt::Debug>(r: Result<T, SnapshotError>) -> SnapshotError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

fn exercise<D: Driver + 'static>(driver: D) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let s = Arc::new(LocalSnapshotter::open(&root, driver).unwrap());
    let name = s.name().to_string();

    // Base layer.
    let m = s.prepare("a", "", labels(&[("stage", "base")])).unwrap();
    with_mounted(tmp.path(), &m, |t| {
        std::fs::write(t.join("one"), b"1").unwrap();
        std::fs::write(t.join("gone"), b"x").unwrap();
        std::fs::create_dir(t.join("d")).unwrap();
        std::fs::write(t.join("d/big"), vec![7u8; 1 << 20]).unwrap();
    });
    let active_usage = s.usage("a").unwrap();
    assert!(active_usage.size >= 1 << 20, "{name}: {active_usage:?}");
    assert!(active_usage.inodes >= 4, "{name}: {active_usage:?}");
    s.commit("A", "a", labels(&[("layer", "A")])).unwrap();
    assert!(matches!(s.stat("a"), Err(SnapshotError::NotFound(_))));
    let a = s.stat("A").unwrap();
    assert_eq!((a.kind, a.parent.as_str()), (Kind::Committed, ""));
    assert_eq!(a.labels, labels(&[("layer", "A")]), "{name}: commit labels");
    assert_eq!(
        s.usage("A").unwrap(),
        active_usage,
        "{name}: usage kept at commit"
    );

    // Second layer over it: sees A, changes and deletes.
    let m = s.prepare("b", "A", Labels::new()).unwrap();
    with_mounted(tmp.path(), &m, |t| {
        assert_eq!(std::fs::read(t.join("one")).unwrap(), b"1", "{name}");
        std::fs::write(t.join("two"), b"2").unwrap();
        std::fs::remove_file(t.join("gone")).unwrap();
    });
    s.commit("B", "b", Labels::new()).unwrap();
    assert_eq!(s.stat("B").unwrap().parent, "A");

    // A view of B: both layers, the deletion, read-only.
    let m = s.view("v", "B", Labels::new()).unwrap();
    with_mounted(tmp.path(), &m, |t| {
        assert_eq!(std::fs::read(t.join("one")).unwrap(), b"1", "{name}");
        assert_eq!(std::fs::read(t.join("two")).unwrap(), b"2", "{name}");
        assert!(
            !t.join("gone").exists(),
            "{name}: deletion shows in the view"
        );
        assert_eq!(std::fs::metadata(t.join("d/big")).unwrap().len(), 1 << 20);
        assert!(
            std::fs::write(t.join("three"), b"3").is_err(),
            "{name}: view is read-only"
        );
    });
    assert_eq!(s.mounts("v").unwrap(), m, "{name}: mounts repeat");

    // Error kinds.
    assert!(matches!(
        e(s.prepare("v", "", Labels::new())),
        SnapshotError::AlreadyExists(_)
    ));
    assert!(matches!(
        e(s.prepare("c", "nope", Labels::new())),
        SnapshotError::NotFound(_)
    ));
    s.prepare("c", "B", Labels::new()).unwrap();
    assert!(matches!(
        e(s.prepare("d", "c", Labels::new())),
        SnapshotError::InvalidArgument(_)
    ));
    assert!(matches!(
        e(s.commit("V", "v", Labels::new())),
        SnapshotError::FailedPrecondition(_)
    ));
    assert!(matches!(
        e(s.commit("A", "c", Labels::new())),
        SnapshotError::AlreadyExists(_)
    ));
    assert!(matches!(
        e(s.remove("A")),
        SnapshotError::FailedPrecondition(_)
    ));
    assert!(matches!(
        e(s.mounts("A")),
        SnapshotError::FailedPrecondition(_)
    ));
    assert!(matches!(e(s.stat("zzz")), SnapshotError::NotFound(_)));
    assert!(matches!(
        e(s.prepare("", "", Labels::new())),
        SnapshotError::InvalidArgument(_)
    ));
    assert!(matches!(
        e(s.prepare("nul\0key", "", Labels::new())),
        SnapshotError::InvalidArgument(_)
    ));
    let huge = labels(&[("k", &"v".repeat(5000))]);
    assert!(matches!(
        e(s.prepare("h", "", huge)),
        SnapshotError::InvalidArgument(_)
    ));
    assert!(matches!(
        e(s.walk(&["size==1".into()], &mut |_| Ok(()))),
        SnapshotError::InvalidArgument(_)
    ));

    // Keys never become paths: containerd's namespaced keys and hostile ones alike.
    for key in ["default/7/extract-1 sha256:abc", "../../../etc/x", "/abs"] {
        s.prepare(key, "", Labels::new()).unwrap();
        s.remove(key).unwrap();
    }
    assert!(!tmp.path().join("etc").exists() && !Path::new("/abs").exists());

    // Walk filters.
    assert_eq!(names(&*s, &[]), ["A", "B", "c", "v"]);
    assert_eq!(names(&*s, &["kind==committed"]), ["A", "B"]);
    assert_eq!(names(&*s, &["parent==B"]), ["c", "v"]);
    assert_eq!(names(&*s, &["parent==B,kind==view"]), ["v"]);
    assert_eq!(names(&*s, &["labels.layer==A", "kind==active"]), ["A", "c"]);
    assert_eq!(names(&*s, &["labels.\"layer\""]), ["A"]);

    // Label updates: one key, all keys; other fields refused.
    let mut info = s.stat("B").unwrap();
    info.labels = labels(&[("x", "1"), ("y", "2")]);
    assert_eq!(s.update(info.clone(), &[]).unwrap().labels, info.labels);
    info.labels = labels(&[("y", "3")]);
    let got = s
        .update(info.clone(), &["labels.x".into(), "labels.y".into()])
        .unwrap();
    assert_eq!(got.labels, labels(&[("y", "3")]));
    assert!(got.updated >= got.created);
    assert!(matches!(
        e(s.update(info.clone(), &["parent".into()])),
        SnapshotError::InvalidArgument(_)
    ));

    // Removal bottom-up, then cleanup of a directory nobody owns.
    for k in ["v", "c", "B", "A"] {
        s.remove(k)
            .unwrap_or_else(|e| panic!("{name}: remove {k}: {e}"));
    }
    assert!(names(&*s, &[]).is_empty());
    std::fs::create_dir_all(root.join("snapshots/999/fs")).unwrap();
    s.cleanup().unwrap();
    assert_eq!(
        std::fs::read_dir(root.join("snapshots")).unwrap().count(),
        0
    );

    // Concurrent prepares of one key: exactly one wins.
    let results: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || s.prepare("same", "", Labels::new()).is_ok())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|ok| **ok).count(), 1, "{name}");

    // The store survives a reopen.
    drop(s);
    let s = LocalSnapshotter::open(&root, Native).unwrap();
    assert_eq!(s.stat("same").unwrap().kind, Kind::Active);
}

fn ready() -> bool {
    require(is_root(), "root (mounts)")
}

#[test]
fn native_backend() {
    if ready() {
        exercise(Native);
    }
}

#[test]
fn overlayfs_backend() {
    if ready() {
        exercise(Overlay::kernel());
    }
}

#[test]
fn stargz_backend_local_snapshots() {
    // The stargz backend's driver: overlay snapshots whose committed layers may be lazy.
    if ready() {
        exercise(stargaze_worker::snapshot::stargz::lazy::LazyOverlay::new());
    }
}

#[test]
fn fuse_overlayfs_backend() {
    if ready() && require(have("fuse-overlayfs"), "fuse-overlayfs") {
        exercise(Overlay::fuse());
    }
}

#[test]
fn auto_picks_overlayfs_here() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let choice = stargaze_worker::snapshot::probe::choose(tmp.path());
    assert_eq!(choice, stargaze_worker::snapshot::probe::Choice::Overlayfs);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "probe cleans up"
    );
}
