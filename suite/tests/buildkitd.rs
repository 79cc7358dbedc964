//! `stargaze buildkitd` as BuildKit's integration sandbox runs buildkitd (a `buildkitd`
//! symlink on PATH, the sandbox's flags), driven through the control API with the client
//! generated from the same protocol definitions: ListWorkers (labels, platforms, GC
//! policy), Info, DiskUsage and Prune over records laid out in the worker's snapshotter,
//! filters, bad requests answered InvalidArgument while the daemon keeps serving, a Solve
//! without a ref and the Status of an unknown build refused, a session without its headers refused, the socket's mode and group, refused flags, and a
//! SIGTERM that leaves no socket, lock or mount behind. Needs root and runc.

use stargaze_suite::buildkit_client::{
    connect, control, run_buildkitd, sandbox_args, Buildkitd, SANDBOX_LABEL,
};
use stargaze_suite::{have, is_root, require};
use stargaze_worker::snapshot::open::open_local;
use stargaze_worker::snapshot::{Backend, Labels};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

const LABEL: &str = "org.mobyproject.buildkit.worker.";

fn prerequisites() -> bool {
    require(is_root(), "root (the worker's snapshotter and sockets)")
        && require(
            have("runc") || have("buildkit-runc"),
            "runc (the OCI worker's runtime)",
        )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Two records in the native snapshotter's state, as steps leave them: `base` (a 64 KiB
/// file) and `child` on it.
fn lay_out_records(root: &Path) {
    let snaps = root.join("runc-native/snapshots");
    let s = open_local(Backend::Native, &snaps).unwrap();
    let m = s.prepare("base-active", "", Labels::new()).unwrap();
    std::fs::write(Path::new(&m[0].source).join("data"), vec![7u8; 65536]).unwrap();
    s.commit("base", "base-active", Labels::new()).unwrap();
    let m = s.prepare("child-active", "base", Labels::new()).unwrap();
    std::fs::write(Path::new(&m[0].source).join("more"), b"x").unwrap();
    s.commit("child", "child-active", Labels::new()).unwrap();
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&d))
        .map(String::from)
        .collect()
}

fn ids(records: &[control::UsageRecord]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    v.sort();
    v
}

#[test]
fn sandbox_daemon_serves_the_control_api_and_stops_cleanly() {
    if !prerequisites() {
        return;
    }
    let mut d = Buildkitd::start_with(&["--oci-worker-snapshotter=native"], lay_out_records);
    let addr = d.addr();
    rt().block_on(async {
        let mut c = connect(&addr).await.unwrap();
        let shared = c.clone();

        // ListWorkers: the worker with buildkitd's labels, the sandbox's, platforms, no GC.
        let w = c
            .list_workers(control::ListWorkersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .record;
        assert_eq!(w.len(), 1);
        let w = &w[0];
        let id = std::fs::read_to_string(d.root.join("runc-native/workerid")).unwrap();
        assert_eq!(w.id, id.trim());
        let l = |k: &str| w.labels.get(&format!("{LABEL}{k}")).cloned();
        assert_eq!(l("executor").as_deref(), Some("oci"));
        assert_eq!(l("snapshotter").as_deref(), Some("native"));
        assert_eq!(l("sandbox").as_deref(), Some("true"));
        assert_eq!(l("oci.process-mode").as_deref(), Some("sandbox"));
        assert_eq!(l("selinux.enabled").as_deref(), Some("false"));
        assert!(
            matches!(l("network").as_deref(), Some("host" | "cni")),
            "{w:?}"
        );
        assert!(!l("hostname").unwrap_or_default().is_empty());
        assert!(SANDBOX_LABEL.starts_with(LABEL));
        assert!(!w.platforms.is_empty());
        assert!(w
            .platforms
            .iter()
            .all(|p| p.os == "linux" && !p.architecture.is_empty()));
        assert!(w.gc_policy.is_empty(), "GC is off: {:?}", w.gc_policy);
        assert_eq!(
            w.buildkit_version.as_ref().map(|v| v.package.as_str()),
            Some("stargaze")
        );

        // Worker filters.
        let count = |f: &str| {
            let mut c = shared.clone();
            let f = f.to_string();
            async move {
                c.list_workers(control::ListWorkersRequest { filter: vec![f] })
                    .await
                    .map(|r| r.into_inner().record.len())
            }
        };
        assert_eq!(
            count(&format!("labels.\"{LABEL}sandbox\"==true"))
                .await
                .unwrap(),
            1
        );
        assert_eq!(count("labels.team==nobody").await.unwrap(), 0);
        assert_eq!(count(&format!("id=={}", id.trim())).await.unwrap(), 1);

        // Info.
        let v = c
            .info(control::InfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .buildkit_version
            .unwrap();
        assert_eq!(v.package, "stargaze");
        assert!(v.version.starts_with('v'), "{v:?}");

        // DiskUsage: both records, the child standing on the base.
        let du = |filter: Vec<String>| {
            let mut c = shared.clone();
            async move {
                c.disk_usage(control::DiskUsageRequest { filter })
                    .await
                    .map(|r| r.into_inner().record)
            }
        };
        let all = du(vec![]).await.unwrap();
        assert_eq!(ids(&all), vec!["base", "child"]);
        let base = all.iter().find(|r| r.id == "base").unwrap();
        let child = all.iter().find(|r| r.id == "child").unwrap();
        assert!(base.size >= 65536, "{base:?}");
        assert_eq!(child.parents, vec!["base".to_string()]);
        assert!(!base.mutable && !base.in_use && base.record_type == "regular");
        assert!(base.created_at.is_some() && base.last_used_at.is_some());
        assert_eq!(
            ids(&du(vec!["id==child".into()]).await.unwrap()),
            vec!["child"]
        );
        assert_eq!(
            ids(&du(vec!["parents==base".into()]).await.unwrap()),
            vec!["child"]
        );
        assert!(du(vec!["type==exec.cachemount".into()])
            .await
            .unwrap()
            .is_empty());

        // Bad requests: InvalidArgument, and the daemon keeps serving.
        for bad in ["id~=(", "==x", "id>3"] {
            let e = du(vec![bad.into()]).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}: {e:?}");
        }
        let e = count("labels.\"open").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = c
            .prune(control::PruneRequest {
                keep_bytes: -1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = c
            .prune(control::PruneRequest {
                filter: vec!["id~=[".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        // A Solve without a ref, and the status of a build that never starts.
        let e = c.solve(control::SolveRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = c
            .status(control::StatusRequest { r#ref: "x".into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        // A session without its ID header is refused.
        let e = c
            .session(tokio_stream_once(control::BytesMessage { data: vec![] }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);

        // Prune: a record others stand on stays; a leaf goes; then everything.
        let prune = |filter: Vec<String>| {
            let mut c = shared.clone();
            async move {
                let mut s = c
                    .prune(control::PruneRequest {
                        filter,
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                let mut out = Vec::new();
                while let Some(r) = s.message().await.unwrap() {
                    out.push(r);
                }
                out
            }
        };
        assert!(prune(vec!["id==base".into()]).await.is_empty());
        let gone = prune(vec!["id==child".into()]).await;
        assert_eq!(ids(&gone), vec!["child"]);
        assert_eq!(ids(&du(vec![]).await.unwrap()), vec!["base"]);
        let gone = prune(vec![]).await;
        assert_eq!(ids(&gone), vec!["base"]);
        assert!(du(vec![]).await.unwrap().is_empty());
    });

    // The socket as buildkitd makes it: 0660, the daemon's group.
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // SAFETY: getgid has no preconditions.
    assert_eq!(meta.gid(), unsafe { libc::getgid() });
    assert_eq!(
        std::fs::metadata(&d.root).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // SIGTERM: exit 0, socket gone, the worker's lock free, nothing mounted.
    assert!(d.alive());
    let st = d.terminate();
    assert!(st.success(), "{st}:\n{}", d.log());
    assert!(!d.socket.exists());
    let lock = std::fs::File::open(d.root.join("runc-native/worker.lock")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(r, 0, "the worker lock is still held");
    assert!(mounts_under(d.dir.path()).is_empty());
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::IntoStreamingRequest<Message = T> {
    futures_util::stream::iter(vec![item])
}

#[test]
fn gc_policy_and_group_socket() {
    if !prerequisites() {
        return;
    }
    // A group ID that need not exist: the socket and its new directory are owned by it.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/buildkit/buildkitd.sock");
    let d = Buildkitd::start(&[
        "--oci-worker-snapshotter=native",
        "--oci-worker-gc=true",
        "--oci-worker-gc-keepstorage=1000",
        "--group=54321",
        "--addr",
        &format!("unix://{}", sock.display()),
    ]);
    for _ in 0..600 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 54321);
    let parent = std::fs::metadata(sock.parent().unwrap()).unwrap();
    assert_eq!(parent.permissions().mode() & 0o777, 0o770);
    assert_eq!(parent.gid(), 54321);
    // Both addresses are served.
    let addr = format!("unix://{}", sock.display());
    let other = d.addr();
    rt().block_on(async {
        for a in [&addr, &other] {
            let mut c = connect(a).await.unwrap();
            let w = c
                .list_workers(control::ListWorkersRequest::default())
                .await
                .unwrap()
                .into_inner()
                .record;
            let gc = &w[0].gc_policy;
            assert_eq!(gc.len(), 4, "{gc:?}");
            assert_eq!(gc[0].keep_duration, 48 * 3600 * 1_000_000_000);
            assert_eq!(gc[0].keep_bytes, 512_000_000);
            assert!(gc[0].filters.iter().any(|f| f.contains("source.local")));
            assert_eq!(gc[1].keep_duration, 60 * 24 * 3600 * 1_000_000_000);
            assert!(gc[1..].iter().all(|r| r.keep_bytes == 1_000_000_000));
            assert!(gc[3].all && !gc[2].all);
        }
    });
    drop(d);
    assert!(!sock.exists());
}

#[test]
fn the_config_file_gives_root_addresses_and_group() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("from-config");
    let socket = dir.path().join("cfg.sock");
    let cfg = dir.path().join("buildkitd.toml");
    std::fs::write(
        &cfg,
        format!(
            "root = \"{}\"\ninsecure-entitlements = [\"network.host\"]\n[grpc]\naddress = [\"unix://{}\"]\ngid = 54322\n[worker.oci]\nsnapshotter = \"native\"\n",
            root.display(),
            socket.display()
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "--oci-worker=true",
        "--containerd-worker=false",
        "--oci-worker-gc=false",
        "--config",
        cfg.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut d = Buildkitd::spawn(dir, root.clone(), socket.clone(), &args);
    assert_eq!(std::fs::metadata(&socket).unwrap().gid(), 54322);
    assert!(root.join("runc-native/workerid").exists(), "{}", d.log());
    let addr = d.addr();
    rt().block_on(async {
        let mut c = connect(&addr).await.unwrap();
        let w = c
            .list_workers(control::ListWorkersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .record;
        assert_eq!(
            w[0].labels
                .get(&format!("{LABEL}snapshotter"))
                .map(String::as_str),
            Some("native")
        );
        // An entitlement the file does not grant is refused before any build, worded as
        // BuildKit words it; the daemon keeps serving.
        let e = c
            .solve(control::SolveRequest {
                r#ref: "ent-1".into(),
                entitlements: vec!["security.insecure".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(
            e.message()
                .contains("entitlement security.insecure is not allowed"),
            "{e}"
        );
        assert!(c
            .list_workers(control::ListWorkersRequest::default())
            .await
            .is_ok());
    });
    assert!(d.terminate().success());
    assert!(!socket.exists());
}

#[test]
fn refused_flags_say_why() {
    if !prerequisites() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sock = dir.path().join("buildkitd.sock");
    let refused = |extra: &[&str], expect: &str| {
        let out = run_buildkitd(dir.path(), &sandbox_args(&root, &sock, extra));
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(err.contains(expect), "{extra:?}: {err}");
        assert!(!sock.exists());
    };
    // The sandbox's --containerd-worker=false comes first; a later one is a second value.
    let out = run_buildkitd(
        dir.path(),
        &[
            "--containerd-worker=true".into(),
            "--root".into(),
            root.display().to_string(),
            "--addr".into(),
            format!("unix://{}", sock.display()),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--containerd-worker=true"), "{err}");
    refused(&["--addr", "tcp://127.0.0.1:1234"], "--tlscert");
    refused(&["--addr", "/run/x.sock"], "you meant unix:///run/x.sock");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[worker.oci]\nsnapshoter = \"native\"\n").unwrap();
    refused(&["--config", bad.to_str().unwrap()], "bad.toml");
    refused(
        &["--config", "/nonexistent/buildkitd.toml"],
        "/nonexistent/buildkitd.toml",
    );
    refused(&["--group", "no-such-group-here"], "no such group");
    refused(
        &["--allow-insecure-entitlement", "root.all"],
        "--allow-insecure-entitlement=root.all",
    );
    let bad_ent = dir.path().join("ent.toml");
    std::fs::write(&bad_ent, "insecure-entitlements = [\"everything\"]\n").unwrap();
    refused(
        &["--config", bad_ent.to_str().unwrap()],
        "insecure-entitlements",
    );
}
