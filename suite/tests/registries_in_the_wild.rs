//! Lazy pulls through the registries users have between them and their images: a real
//! distribution pull-through cache (`docker-registry` in proxy mode, which answers a Range
//! request for a blob it has not cached yet with the whole blob), and a server that ignores
//! `Range` altogether. Both `stargaze mount` and the snapshotter (under containerd) must mount
//! lazily and serve the right bytes; bytes are counted at the upstream, behind the cache.

use stargaze_fs::format::{FileBlob, LayerReader, OpenOptions};
use stargaze_fs::image::sample::{build_sample_image, SampleOptions};
use stargaze_fs::image::OciLayout;
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_suite::fault_proxy::{Fault, FaultProxy, Rule};
use stargaze_suite::http::send;
use stargaze_suite::mounts::{fuse_mounts_under, Mounted};
use stargaze_suite::servers::{DockerRegistry, StargazeSnapshotter};
use stargaze_suite::{have, is_root, require, run, stargaze_bin, Containerd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIG: &str = "usr/lib/libsample0.so";

fn ready() -> bool {
    require(is_root(), "root")
        && require(Path::new("/dev/fuse").exists(), "/dev/fuse")
        && require(have("docker-registry"), "docker-registry")
        && require(stargaze_bin().is_file(), "the stargaze binary")
}

/// An eStargz image with busybox in an OCI layout, pushed to a fresh built-in registry as
/// `lab/sample:v1`.
struct Upstream {
    oci: PathBuf,
    registry: BackgroundRegistry,
}

fn upstream(dir: &Path) -> Upstream {
    let oci = dir.join("oci");
    let opts = SampleOptions {
        small_files: 60,
        large_files: vec![3 << 20],
        ..SampleOptions::default()
    };
    build_sample_image(&oci, "sample", &opts).unwrap();
    run(Command::new(stargaze_bin())
        .arg("convert")
        .arg(format!("oci:{}:sample", oci.display()))
        .arg(format!("oci:{}:esgz", oci.display())));
    let registry = BackgroundRegistry::start(
        RegistryOptions::new(dir.join("registry")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    run(Command::new(stargaze_bin())
        .arg("copy")
        .arg(format!("oci:{}:esgz", oci.display()))
        .arg(format!("docker://{}/lab/sample:v1", registry.addr())));
    Upstream { oci, registry }
}

impl Upstream {
    /// The image's layer blobs (digest, size), bottom first.
    fn layers(&self) -> Vec<(String, u64)> {
        let layout = OciLayout::open(&self.oci).unwrap();
        let (_, m) = layout.resolve(Some("esgz")).unwrap();
        m.layers()
            .iter()
            .map(|d| (OciLayout::digest_of(d).unwrap().to_string(), d.size()))
            .collect()
    }

    /// Content of `path` in the layer holding it, read from the local blob.
    fn expected(&self, path: &str) -> Vec<u8> {
        let layout = OciLayout::open(&self.oci).unwrap();
        for (d, _) in self.layers().iter().rev() {
            let blob = FileBlob::open(&layout.blob_path(&d.parse().unwrap())).unwrap();
            let r = LayerReader::open(blob, &OpenOptions::default()).unwrap();
            if let Some(id) = r.index().lookup(path) {
                let n = r.index().node(id);
                return r.read_file(id, 0, n.size).unwrap();
            }
        }
        panic!("{path} is in no layer");
    }
}

/// Waits until the cache answers a Range GET of `blob` with 206: it has stored the blob.
fn wait_cached(cache: &DockerRegistry, blob: &str) {
    let path = format!("/v2/lab/sample/blobs/{blob}");
    for _ in 0..300 {
        if let Ok(r) = send(cache.addr, "GET", &path, &[("Range", "bytes=0-9")], b"") {
            if r.status == 206 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the pull-through cache never stored {blob}");
}

fn lazy_layers(m: &Mounted) -> (usize, u64, String) {
    let stats = m.stats();
    let layers = stats["layers"].as_array().unwrap();
    let lazy = layers.iter().filter(|l| l["mode"] == "lazy").count();
    let whole: u64 = layers
        .iter()
        .map(|l| l["whole_blob_answers"].as_u64().unwrap_or(0))
        .sum();
    (lazy, whole, stats.to_string())
}

#[test]
fn a_lazy_mount_through_a_pull_through_cache() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path());
    // Bytes are counted where they leave the upstream.
    let counter = FaultProxy::start(up.registry.addr());
    let cache = DockerRegistry::start_pull_through(&format!("http://{}", counter.addr()));
    let image = format!("{}/lab/sample:v1", cache.host());
    let m = Mounted::mount(&image, &tmp.path().join("m"), &["--no-background-fetch"]);
    let (lazy, whole, stats) = lazy_layers(&m);
    assert_eq!(lazy, up.layers().len(), "{stats}");
    assert!(
        whole >= 1,
        "the cache answered ranges of blobs it had not cached with whole blobs: {stats}"
    );
    assert!(std::fs::read(m.dir.join(BIG)).unwrap() == up.expected(BIG));
    // Once the cache holds the blobs it serves ranges itself: later reads cost the upstream
    // nothing and are ranges again.
    for (d, _) in up.layers() {
        wait_cached(&cache, &d);
    }
    let before = counter.bytes_sent();
    let upstream_blobs = counter.count("/blobs/");
    assert!(std::fs::read(m.dir.join("etc/hello.txt")).is_ok());
    let small: Vec<PathBuf> = std::fs::read_dir(m.dir.join("usr/share/doc/pkg-0003"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!small.is_empty());
    for p in &small {
        let rel = p
            .strip_prefix(&m.dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(std::fs::read(p).unwrap() == up.expected(&rel), "{rel}");
    }
    assert_eq!(
        counter.bytes_sent(),
        before,
        "reads after the cache stored the blobs reach the upstream"
    );
    assert_eq!(counter.count("/blobs/"), upstream_blobs);
    // Each blob crossed from the upstream a bounded number of times (distribution fetches it
    // once to store and once to answer), never once per chunk.
    let total: u64 = up.layers().iter().map(|(_, s)| s).sum();
    assert!(
        counter.bytes_sent() <= 3 * total + (1 << 20),
        "{} bytes from the upstream for {total} bytes of layers",
        counter.bytes_sent()
    );
    drop(m);
}

#[test]
fn a_lazy_mount_through_a_server_that_ignores_range() {
    if !ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path());
    let cdn = FaultProxy::start(up.registry.addr());
    cdn.add(Rule::new("/blobs/", usize::MAX, Fault::IgnoreRange).ranges());
    let image = format!("{}/lab/sample:v1", cdn.addr());
    let m = Mounted::mount(&image, &tmp.path().join("m"), &["--no-background-fetch"]);
    assert!(std::fs::read(m.dir.join(BIG)).unwrap() == up.expected(BIG));
    let hello = std::fs::read(m.dir.join("etc/hello.txt")).unwrap();
    assert!(hello == up.expected("etc/hello.txt"));
    let (lazy, whole, stats) = lazy_layers(&m);
    assert_eq!(lazy, up.layers().len(), "{stats}");
    assert!(whole >= 2, "{stats}");
    let text = run(m.cmd().arg("stats").arg(&m.dir));
    assert!(text.contains("ranges ignored"), "{text}");
    // Every request cost at most its layer's blob: nothing was read twice per request.
    let layers = stats_layers(&m);
    for l in &layers {
        let (fetched, requests, size) = (
            l["bytes_fetched"].as_u64().unwrap(),
            l["requests"].as_u64().unwrap(),
            l["size"].as_u64().unwrap(),
        );
        assert!(fetched <= requests * size, "{l}");
    }
    drop(m);
}

fn stats_layers(m: &Mounted) -> Vec<serde_json::Value> {
    m.stats()["layers"].as_array().unwrap().clone()
}

#[test]
fn the_snapshotter_pulls_lazily_through_a_pull_through_cache_and_a_range_ignoring_server() {
    if !ready()
        || !require(
            have("containerd") && have("ctr") && have("ctr-remote") && have("runc"),
            "containerd, ctr, ctr-remote, runc",
        )
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up = upstream(tmp.path());
    let counter = FaultProxy::start(up.registry.addr());
    let cache = DockerRegistry::start_pull_through(&format!("http://{}", counter.addr()));
    let cdn = FaultProxy::start(up.registry.addr());
    cdn.add(Rule::new("/blobs/", usize::MAX, Fault::IgnoreRange).ranges());
    let want = stargaze_fs::Digest::of(&up.expected(BIG)).hex();
    for (i, host) in [cache.host(), cdn.addr().to_string()].iter().enumerate() {
        // Fresh state each time: the second pull must not find the first one's snapshots.
        let ctd = Containerd::start();
        let snap = StargazeSnapshotter::start(&ctd, &[]);
        let image = format!("{host}/lab/sample:v1");
        run(ctd
            .cmd("ctr-remote")
            .args(["image", "rpull", "--plain-http", &image]));
        let lazy = fuse_mounts_under(&snap.root);
        assert!(lazy >= 1, "{image}: no lazy layer\n{}", snap.log());
        // containerd did not download the layers.
        let content = run(ctd.cmd("ctr").args(["content", "ls", "-q"]));
        for (d, _) in up.layers() {
            assert!(!content.contains(d.as_str()), "{image}: {d} was downloaded");
        }
        let out = run(ctd.cmd("ctr").args([
            "run",
            "--rm",
            "--snapshotter=stargz",
            &image,
            &format!("wild{i}"),
            "/bin/busybox",
            "sha256sum",
            &format!("/{BIG}"),
        ]));
        assert!(out.starts_with(&want), "{image}: {out}\n{}", snap.log());
        drop(snap);
        drop(ctd);
    }
}
