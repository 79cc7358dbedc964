//! Learned prefetch profiles end to end (root, real FUSE and overlayfs, `stargaze mount`):
//! a first cold start records the chunks its reads touched, in order; the next cold start
//! (fresh chunk cache, same profile dir) fetches exactly those chunks, recorded order first,
//! before anything reads; `stargaze profile push` publishes the profile beside the image and
//! a cold start on a fresh machine (no local profile) finds it in the registry — through the
//! referrers API (the built-in registry) and through the fallback tag (distribution 2.8).

use stargaze_fs::profile::{Profile, PROFILE_MEDIA_TYPE};
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_fs::remote::{copy_image, CopyOptions, ImageLocation, Quiet};
use stargaze_fs::remote::{ClientOptions, Reference, RegistryClient};
use stargaze_suite::fault_proxy::{FaultProxy, Seen};
use stargaze_suite::mounts::Mounted;
use stargaze_suite::servers::{DockerRegistry, RegistryAuth};
use stargaze_suite::{have, is_root, require, sample_estargz, sample_estargz_with, stargaze_bin};
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn ready() -> bool {
    require(is_root(), "root (FUSE allow_other, overlayfs)")
        && require(Path::new("/dev/fuse").exists(), "/dev/fuse")
        && require(stargaze_bin().is_file(), "the stargaze binary")
}

/// Pushes the sample image's eStargz tag to `registry` as `repo:v1`.
fn push(oci: &Path, registry: SocketAddr, repo: &str) {
    let name = format!("{registry}/{repo}:v1");
    let client = RegistryClient::new(ClientOptions::default()).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(copy_image(
            &client,
            &ImageLocation::Layout(format!("oci:{}:esgz", oci.display()).parse().unwrap()),
            &ImageLocation::Registry(Reference::parse(&name).unwrap()),
            &CopyOptions::default(),
            &Quiet,
        ))
        .unwrap();
}

/// `(start, end)` of each Range GET of blob `blob` (any blob: "") in `log`, in order.
fn blob_ranges(log: &[Seen], blob: &str) -> Vec<(u64, u64)> {
    let want = format!("/blobs/{blob}");
    log.iter()
        .filter(|s| s.method == "GET" && s.target.contains(&want))
        .filter_map(|s| {
            let r = s.range.as_deref()?.strip_prefix("bytes=")?;
            let (a, b) = r.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// Reads `len` bytes at `offset` of `path`.
fn read_at(path: &Path, offset: u64, len: usize) {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).unwrap();
}

/// The one local profile file under `dir`, parsed.
fn local_profile(dir: &Path) -> Profile {
    let files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(
        files.len(),
        1,
        "one layer profile in {}: {files:?}",
        dir.display()
    );
    Profile::parse(&std::fs::read(&files[0]).unwrap()).unwrap()
}

fn sum_of(stats: &serde_json::Value, key: &str) -> u64 {
    stats["layers"]
        .as_array()
        .map_or(0, |l| l.iter().map(|l| l[key].as_u64().unwrap_or(0)).sum())
}

/// Waits until the Range GETs outside `metadata` cover every recorded chunk start, then
/// checks they asked for nothing else and that the first recorded chunk was among the
/// first requests (the replay runs a few batches at once).
fn assert_replayed(proxy: &FaultProxy, metadata: &HashSet<(u64, u64)>, p: &Profile) {
    let entries = &p.layers[0].chunks;
    let layer = p.layers[0].layer.to_string();
    let starts: HashSet<u64> = entries.iter().map(|e| e.0).collect();
    let mut chunk_reqs = Vec::new();
    for _ in 0..200 {
        chunk_reqs = blob_ranges(&proxy.seen(), &layer)
            .into_iter()
            .filter(|r| !metadata.contains(r))
            .collect::<Vec<_>>();
        let covered = |o: u64| chunk_reqs.iter().any(|&(a, b)| a <= o && o <= b);
        if starts.iter().all(|&o| covered(o)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let covered = |o: u64| chunk_reqs.iter().any(|&(a, b)| a <= o && o <= b);
    let missing: Vec<_> = starts.iter().filter(|&&o| !covered(o)).collect();
    assert!(
        missing.is_empty(),
        "recorded chunks not fetched: {missing:?}; requests {chunk_reqs:?}"
    );
    for (a, _) in &chunk_reqs {
        assert!(
            starts.contains(a),
            "a request at {a} that starts at no recorded chunk: {chunk_reqs:?} vs {entries:?}"
        );
    }
    let first = entries[0].0;
    assert!(
        chunk_reqs
            .iter()
            .take(3)
            .any(|&(a, b)| a <= first && first <= b),
        "the first recorded chunk ({first}) was not among the first requests: {chunk_reqs:?}"
    );
}

/// The whole story against the registry at `upstream` (seen through a logging proxy).
fn learn_replay_share(upstream: SocketAddr, work: &Path, oci: &Path, expect_referrers_api: bool) {
    let proxy = FaultProxy::start(upstream);
    let image = format!("{}/learn/sample:v1", proxy.addr());
    push(oci, upstream, "learn/sample");
    let profiles = work.join("profiles");
    let pdir = profiles.to_str().unwrap();
    // Passthrough off: every read of the workload goes through FUSE, where it is recorded.
    let local_only = [
        "--no-prefetch",
        "--no-background-fetch",
        "--no-passthrough",
        "--no-profile-lookup",
        "--profile-dir",
        pdir,
    ];

    // 1. First cold start: metadata only at mount, then reads in an order unlike the blob's.
    let m = Mounted::mount(&image, &work.join("one"), &local_only);
    let metadata: HashSet<(u64, u64)> = blob_ranges(&proxy.seen(), "").into_iter().collect();
    assert!(!metadata.is_empty(), "the mount read footer and TOC");
    read_at(&m.dir.join("usr/lib/libsample0.so"), (2 << 20) + 100, 4096);
    read_at(&m.dir.join("usr/lib/libsample1.so"), 0, 4096);
    read_at(&m.dir.join("usr/share/doc/pkg-0001/file-3.txt"), 0, 100);
    read_at(&m.dir.join("usr/lib/libsample0.so"), 0, 4096);
    let mut stats = m.stats();
    for _ in 0..100 {
        if sum_of(&stats, "chunks_read") >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        stats = m.stats();
    }
    assert!(
        sum_of(&stats, "chunks_read") >= 4,
        "chunks_read counted: {stats}"
    );
    assert!(
        sum_of(&stats, "chunk_bytes_read") > 0,
        "chunk_bytes_read counted: {stats}"
    );
    let out = m.umount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = local_profile(&profiles);
    assert_eq!(recorded.media_type, PROFILE_MEDIA_TYPE);
    let entries = &recorded.layers[0].chunks;
    assert!(
        entries.len() >= 4,
        "the reads' chunks were recorded: {entries:?}"
    );
    assert!(
        entries.windows(2).any(|w| w[0].0 > w[1].0),
        "recorded in read order, not blob order: {entries:?}"
    );

    // 2. Second cold start, fresh chunk cache: the recorded chunks arrive before any read.
    proxy.reset_log();
    let m = Mounted::mount(&image, &work.join("two"), &local_only);
    assert_replayed(&proxy, &metadata, &recorded);
    read_at(&m.dir.join("usr/bin/sample-tool"), 0, 4096);
    let out = m.umount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        local_profile(&profiles),
        recorded,
        "a start that replayed a good profile does not record over it"
    );

    // 3. Published, then found by a fresh machine: no local profile, fresh cache.
    let push = std::process::Command::new(stargaze_bin())
        .args(["profile", "push", &image, "--profile-dir", pdir])
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "profile push: {}",
        String::from_utf8_lossy(&push.stderr)
    );
    let show = std::process::Command::new(stargaze_bin())
        .args(["profile", "show", &image, "--remote"])
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "profile show: {}",
        String::from_utf8_lossy(&show.stderr)
    );
    assert!(
        String::from_utf8_lossy(&show.stdout).contains(&format!("{} chunks", entries.len())),
        "{}",
        String::from_utf8_lossy(&show.stdout)
    );
    proxy.reset_log();
    let fresh = work.join("fresh-profiles");
    let m = Mounted::mount(
        &image,
        &work.join("three"),
        &[
            "--no-prefetch",
            "--no-background-fetch",
            "--no-passthrough",
            "--profile-dir",
            fresh.to_str().unwrap(),
        ],
    );
    let log = proxy.seen();
    let asked_api = log.iter().any(|s| s.target.contains("/referrers/"));
    let asked_tag = log.iter().any(|s| s.target.contains("/manifests/sha256-"));
    assert!(asked_api, "the referrers API was asked: {log:?}");
    assert_eq!(
        asked_tag, !expect_referrers_api,
        "the fallback tag only without the API: {log:?}"
    );
    assert_replayed(&proxy, &metadata, &recorded);
    read_at(&m.dir.join("usr/bin/sample-tool"), 0, 4096);
    let out = m.umount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_dir(&fresh).map_or(true, |d| d.count() == 0),
        "a start that replayed the registry's profile records nothing"
    );
}

#[test]
fn a_recorded_profile_is_replayed_first_and_found_through_the_referrers_api() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 40);
    let registry = BackgroundRegistry::start(
        RegistryOptions::new(tmp.path().join("registry")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    learn_replay_share(registry.addr(), tmp.path(), &oci, true);
}

#[test]
fn a_registry_without_the_referrers_api_shares_profiles_through_the_fallback_tag() {
    if !(ready() && require(have("docker-registry"), "docker-registry (Debian package)")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 40);
    let registry = DockerRegistry::start(RegistryAuth::None);
    learn_replay_share(registry.addr, tmp.path(), &oci, false);
}

/// The sample image with busybox, 1 MiB chunks, pushed to `registry` as `repo:v1`.
fn push_with_busybox(dir: &Path, registry: SocketAddr, repo: &str) {
    let opts = stargaze_fs::image::sample::SampleOptions {
        small_files: 40,
        large_files: vec![3 << 20],
        ..Default::default()
    };
    push(&sample_estargz_with(dir, &opts), registry, repo);
}

/// Waits (up to 10 s) for one layer profile under `dir`.
fn wait_for_profile(dir: &Path) -> Profile {
    for _ in 0..100 {
        if std::fs::read_dir(dir).is_ok_and(|d| d.count() == 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    local_profile(dir)
}

#[test]
fn the_snapshotter_records_a_profile_and_a_fresh_node_replays_it_from_the_registry() {
    use stargaze_suite::servers::StargazeSnapshotter;
    use stargaze_suite::{run, Containerd};
    if !(ready()
        && require(
            have("containerd") && have("ctr") && have("ctr-remote") && have("runc"),
            "containerd, ctr, ctr-remote, runc",
        )
        && require(Path::new("/bin/busybox").is_file(), "busybox-static"))
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let registry = BackgroundRegistry::start(
        RegistryOptions::new(tmp.path().join("registry")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    push_with_busybox(tmp.path(), registry.addr(), "learn/snap");
    let proxy = FaultProxy::start(registry.addr());
    let image = format!("{}/learn/snap:v1", proxy.addr());
    let profiles = tmp.path().join("profiles");
    let pdir = profiles.to_str().unwrap().to_string();
    let quiet = ["--no-prefetch", "--no-background-fetch", "--no-passthrough"];

    // 1. A node without profiles: the container's reads are recorded.
    let ctd = Containerd::start();
    let mut flags = quiet.to_vec();
    flags.extend(["--no-profile-lookup", "--profile-dir", &pdir]);
    let snap = StargazeSnapshotter::start(&ctd, &flags);
    run(ctd
        .cmd("ctr-remote")
        .args(["image", "rpull", "--plain-http", &image]));
    let metadata: HashSet<(u64, u64)> = blob_ranges(&proxy.seen(), "").into_iter().collect();
    assert!(!metadata.is_empty(), "the mount read footer and TOC");
    run(ctd.cmd("ctr").args([
        "run",
        "--rm",
        "--snapshotter=stargz",
        &image,
        "learn1",
        "/bin/busybox",
        "sh",
        "-c",
        "dd if=/usr/lib/libsample0.so bs=4096 skip=600 count=1 of=/dev/null && \
         head -c 100 /usr/share/doc/pkg-0001/file-3.txt >/dev/null",
    ]));
    let recorded = wait_for_profile(&profiles);
    drop(snap);
    drop(ctd);
    assert_eq!(recorded.media_type, PROFILE_MEDIA_TYPE);
    assert!(
        recorded.layers[0].chunks.len() >= 2,
        "busybox and the files' chunks were recorded: {:?}",
        recorded.layers[0].chunks
    );
    let push = std::process::Command::new(stargaze_bin())
        .args(["profile", "push", &image, "--profile-dir", &pdir])
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "profile push: {}",
        String::from_utf8_lossy(&push.stderr)
    );

    // 2. Another node, nothing learned locally: the pull finds the profile in the registry
    //    and fetches the recorded chunks before the container starts.
    proxy.reset_log();
    let ctd = Containerd::start();
    let fresh = tmp.path().join("fresh-profiles");
    let mut flags = quiet.to_vec();
    flags.extend(["--profile-dir", fresh.to_str().unwrap()]);
    let snap = StargazeSnapshotter::start(&ctd, &flags);
    run(ctd
        .cmd("ctr-remote")
        .args(["image", "rpull", "--plain-http", &image]));
    let log = proxy.seen();
    assert!(
        log.iter().any(|s| s.target.contains("/referrers/")),
        "the referrers API was asked: {log:?}\n{}",
        snap.log()
    );
    assert_replayed(&proxy, &metadata, &recorded);
    let out = run(ctd.cmd("ctr").args([
        "run",
        "--rm",
        "--snapshotter=stargz",
        &image,
        "learn2",
        "/bin/busybox",
        "head",
        "-c",
        "5",
        "/usr/share/doc/pkg-0001/file-3.txt",
    ]));
    assert!(!out.is_empty(), "the container read the file");
}
