//! The fetcher through a fault-injecting proxy in front of the built-in registry: temporary
//! faults (resets, stalls, 5xx, truncation, one flipped bit) end in retries and the right
//! bytes; lasting ones in a clear error and never wrong bytes. Also single flight, request
//! merging, cancellation and the disk cache's recovery from corrupt files.

use stargaze_fs::cache::{ChunkCache, DiskCache, MemoryCache};
use stargaze_fs::fetcher::{FetchError, FetchOptions};
use stargaze_fs::format::{FileBlob, LayerReader, OpenOptions};
use stargaze_fs::image::OciLayout;
use stargaze_fs::layer::{LayerError, RemoteLayer};
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_fs::remote::{copy_image, CopyOptions, ImageLocation, Quiet};
use stargaze_fs::remote::{
    ClientOptions, Descriptor, Platform, Reference, RegistryClient, RetryPolicy,
};
use stargaze_suite::fault_proxy::{Fault, FaultProxy, Rule};
use stargaze_suite::sample_estargz;
use std::sync::Arc;
use std::time::Duration;

const BIG: &str = "usr/lib/libsample0.so"; // 3 MiB in 1 MiB chunks

struct Setup {
    _tmp: tempfile::TempDir,
    _registry: BackgroundRegistry,
    proxy: FaultProxy,
    reference: Reference,
    desc: Descriptor,
    local: LayerReader<FileBlob>,
    rt: tokio::runtime::Runtime,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let oci = sample_estargz(tmp.path(), 30);
    let registry = BackgroundRegistry::start(
        RegistryOptions::new(tmp.path().join("reg")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let direct = RegistryClient::new(ClientOptions::default()).unwrap();
    rt.block_on(copy_image(
        &direct,
        &ImageLocation::Layout(format!("oci:{}:esgz", oci.display()).parse().unwrap()),
        &ImageLocation::Registry(
            Reference::parse(&format!("{}/f/img:v1", registry.addr())).unwrap(),
        ),
        &CopyOptions::default(),
        &Quiet,
    ))
    .unwrap();
    let proxy = FaultProxy::start(registry.addr());
    let reference = Reference::parse(&format!("{}/f/img:v1", proxy.addr())).unwrap();
    let (m, _) = rt
        .block_on(direct.resolve(&reference, &Platform::host(), &[]))
        .unwrap();
    let desc = m.layers[0].clone();
    let layout = OciLayout::open(&oci).unwrap();
    let local = LayerReader::open(
        FileBlob::open(&layout.blob_path(&desc.digest().unwrap())).unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    Setup {
        _tmp: tmp,
        _registry: registry,
        proxy,
        reference,
        desc,
        local,
        rt,
    }
}

fn client(read_timeout: Duration) -> Arc<RegistryClient> {
    let o = ClientOptions {
        retry: RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
        read_timeout,
        ..ClientOptions::default()
    };
    Arc::new(RegistryClient::new(o).unwrap())
}

impl Setup {
    fn layer(&self, client: Arc<RegistryClient>, cache: Arc<ChunkCache>) -> Arc<RemoteLayer> {
        self.rt
            .block_on(RemoteLayer::open(
                client,
                &self.reference,
                &self.desc,
                cache,
                vec![],
                FetchOptions::default(),
            ))
            .unwrap()
    }
    fn fresh_layer(&self) -> Arc<RemoteLayer> {
        self.layer(
            client(Duration::from_secs(1)),
            Arc::new(ChunkCache::new(Some(MemoryCache::new(64 << 20)), None)),
        )
    }
    fn expected(&self, path: &str) -> Vec<u8> {
        let id = self.local.index().lookup(path).unwrap();
        let n = self.local.index().node(id);
        self.local.read_file(id, 0, n.size).unwrap()
    }
}

#[test]
fn temporary_faults_are_retried_to_the_right_bytes() {
    let s = setup();
    let want = s.expected(BIG);
    for fault in [
        Fault::ResetMidBody,
        Fault::Stall(Duration::from_secs(5)),
        Fault::Status(500),
        Fault::Status(503),
        Fault::Status(429),
        Fault::Truncate,
    ] {
        let layer = s.fresh_layer();
        s.proxy.clear();
        s.proxy.reset_log();
        s.proxy.add(Rule::new("/blobs/", 2, fault.clone()).ranges());
        let got =
            s.rt.block_on(layer.read_path(BIG))
                .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert!(got == want, "{fault:?}: wrong bytes");
        let ranges = s.proxy.seen().iter().filter(|r| r.range.is_some()).count();
        assert!(
            ranges >= 3,
            "{fault:?}: two faulted attempts then success, saw {ranges}"
        );
    }
}

#[test]
fn flipped_bits_are_refetched_or_reported_never_served() {
    let s = setup();
    let want = s.expected(BIG);
    // Once: detected, refetched, right bytes.
    let layer = s.fresh_layer();
    s.proxy
        .add(Rule::new("/blobs/", 1, Fault::FlipBit).ranges());
    let got = s.rt.block_on(layer.read_path(BIG)).unwrap();
    assert!(got == want);
    assert_eq!(layer.counters().verify_failures, 1);
    // Always: an error naming the file, nothing served, nothing cached.
    let cache = Arc::new(ChunkCache::new(Some(MemoryCache::new(64 << 20)), None));
    let layer = s.layer(client(Duration::from_secs(1)), cache.clone());
    s.proxy.clear();
    s.proxy
        .add(Rule::new("/blobs/", usize::MAX, Fault::FlipBit).ranges());
    let err = s.rt.block_on(layer.read_path(BIG)).unwrap_err();
    match &err {
        LayerError::Fetch {
            file,
            source: FetchError::Verify(_),
            ..
        } => assert_eq!(file, BIG),
        other => panic!("expected a verification error, got {other}"),
    }
    // Chunks of the merged response that verified may be cached; the flipped one is not.
    let node = s.local.index().node(s.local.index().lookup(BIG).unwrap());
    let cached = node
        .chunks
        .iter()
        .filter(|c| {
            cache
                .memory()
                .unwrap()
                .get(c.digest.as_ref().unwrap())
                .is_some()
        })
        .count();
    assert!(
        cached < node.chunks.len(),
        "the chunk that never verified is not cached"
    );
}

#[test]
fn lying_registries_get_clear_errors() {
    let s = setup();
    for fault in [Fault::ExtraBytes, Fault::WrongContentRange] {
        s.proxy.clear();
        let layer = s.fresh_layer();
        s.proxy
            .add(Rule::new("/blobs/", usize::MAX, fault.clone()).ranges());
        let err = s.rt.block_on(layer.read_path(BIG)).unwrap_err().to_string();
        assert!(
            err.contains("Content-Length") || err.contains("Content-Range"),
            "{fault:?}: {err}"
        );
    }
    s.proxy.clear();
    // A 404 on the blob is not retried and says so.
    let layer = s.fresh_layer();
    s.proxy
        .add(Rule::new("/blobs/", usize::MAX, Fault::Status(404)).ranges());
    let err = s.rt.block_on(layer.read_path(BIG)).unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn single_flight_and_merging() {
    let s = setup();
    let want = s.expected(BIG);
    let layer = s.fresh_layer();
    s.proxy.reset_log();
    s.proxy.add(
        Rule::new(
            "/blobs/",
            usize::MAX,
            Fault::Delay(Duration::from_millis(300)),
        )
        .ranges(),
    );
    let got: Vec<Vec<u8>> = s.rt.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let l = layer.clone();
                tokio::spawn(async move { l.read_path(BIG).await.unwrap() })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert!(got.iter().all(|g| *g == want));
    // Requests for the file's frames (a miss also fetches small siblings on a guess).
    assert_eq!(
        requests_for(&s, BIG),
        1,
        "eight readers of a 3-chunk file: one merged request in flight"
    );
    assert!(layer.counters().shared_waits >= 1);
}

#[test]
fn a_cancelled_reader_does_not_block_the_next() {
    let s = setup();
    let want = s.expected(BIG);
    let layer = s.layer(
        client(Duration::from_secs(600)),
        Arc::new(ChunkCache::new(Some(MemoryCache::new(64 << 20)), None)),
    );
    // The file's own request stalls (a guess fetching its neighbours must not take the fault).
    let id = s.local.index().lookup(BIG).unwrap();
    let first = s.local.index().node(id).chunks[0].blob_offset;
    s.proxy
        .add(Rule::new("/blobs/", 1, Fault::Stall(Duration::from_secs(120))).range_from(first));
    s.rt.block_on(async {
        let l = layer.clone();
        let stuck = tokio::spawn(async move { l.read_path(BIG).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        stuck.abort();
        assert!(
            stuck.await.is_err_and(|e| e.is_cancelled()),
            "the stalled reader finished"
        );
        // A hang here would mean the cancelled fetch still owned the chunks.
        let next = tokio::time::timeout(Duration::from_secs(60), layer.read_path(BIG))
            .await
            .expect("the next reader was blocked by a cancelled one")
            .unwrap();
        assert!(next == want);
    });
}

#[test]
fn disk_cache_survives_restart_and_recovers_from_corruption() {
    let s = setup();
    let want = s.expected(BIG);
    let dir = tempfile::tempdir().unwrap();
    let disk_cache = || {
        Arc::new(ChunkCache::new(
            None,
            Some(DiskCache::open(dir.path(), 1 << 30).unwrap()),
        ))
    };
    let first = s.layer(client(Duration::from_secs(5)), disk_cache());
    assert!(s.rt.block_on(first.read_path(BIG)).unwrap() == want);
    assert!(first.counters().cache_misses >= 3);
    drop(first);
    // A restart: everything comes from disk.
    let second = s.layer(client(Duration::from_secs(5)), disk_cache());
    let before = second.counters();
    assert!(s.rt.block_on(second.read_path(BIG)).unwrap() == want);
    let after = second.counters();
    assert_eq!(
        after.requests, before.requests,
        "no chunk request after a restart"
    );
    assert_eq!(after.cache_hits, 3);
    drop(second);
    // Corrupt one cached chunk and truncate another: both are refetched, bytes stay right.
    let node = s.local.index().node(s.local.index().lookup(BIG).unwrap());
    let cache = DiskCache::open(dir.path(), 1 << 30).unwrap();
    let p0 = cache.path_of(node.chunks[0].digest.as_ref().unwrap());
    let p1 = cache.path_of(node.chunks[1].digest.as_ref().unwrap());
    let mut b = std::fs::read(&p0).unwrap();
    b[1234] ^= 0xff;
    std::fs::write(&p0, b).unwrap();
    std::fs::write(&p1, b"short").unwrap();
    drop(cache);
    let third = s.layer(client(Duration::from_secs(5)), disk_cache());
    let before = third.counters();
    assert!(s.rt.block_on(third.read_path(BIG)).unwrap() == want);
    let after = third.counters();
    assert_eq!(
        after.cache_misses - before.cache_misses,
        2,
        "the two bad entries missed"
    );
    assert!(after.requests > before.requests);
}

#[test]
fn paths_resolve_through_symlinks_inside_the_layer() {
    let s = setup();
    let layer = s.fresh_layer();
    let want = layer.index().lookup("usr/lib/libsample0.so").unwrap();
    // `lib` is a symlink to `usr/lib` in the sample.
    assert_eq!(layer.resolve("lib/libsample0.so"), Some(want));
    assert_eq!(layer.resolve("/lib/../lib/./libsample0.so"), Some(want));
    assert_eq!(layer.resolve("usr/lib/libsample0.so"), Some(want));
    assert_eq!(layer.resolve("lib/missing.so"), None);
    assert_eq!(layer.resolve("etc/hello.txt/x"), None);
    // `..` never climbs above the root.
    assert_eq!(layer.resolve("../../usr/lib/libsample0.so"), Some(want));
}

#[test]
fn whole_blob_and_multipart_answers_give_the_right_bytes() {
    let s = setup();
    let want = s.expected(BIG);
    let size = s.desc.size;
    // multipart/byteranges: the part's bytes, nothing else.
    s.proxy
        .add(Rule::new("/blobs/", usize::MAX, Fault::Multipart).ranges());
    let layer = s.fresh_layer();
    assert!(s.rt.block_on(layer.read_path(BIG)).unwrap() == want);
    assert_eq!(layer.counters().whole_blob_answers, 0);
    // A server that ignores Range (200, the whole blob), from the layer's open on.
    s.proxy.clear();
    s.proxy
        .add(Rule::new("/blobs/", usize::MAX, Fault::IgnoreRange).ranges());
    let c = client(Duration::from_secs(5));
    let layer = s.layer(
        c.clone(),
        Arc::new(ChunkCache::new(Some(MemoryCache::new(64 << 20)), None)),
    );
    assert!(!c.honours_ranges(&s.reference.registry));
    let before = layer.counters();
    s.proxy.reset_log();
    assert!(s.rt.block_on(layer.read_path(BIG)).unwrap() == want);
    let after = layer.counters();
    assert!(after.whole_blob_answers > before.whole_blob_answers);
    // The read stops where the file's frames end: the rest of the blob is not read.
    let id = s.local.index().lookup(BIG).unwrap();
    let chunks = &s.local.index().node(id).chunks;
    let hi = chunks[chunks.len() - 1].blob_end;
    let read = after.bytes_fetched - before.bytes_fetched;
    assert!(
        read >= hi,
        "the bytes before the file come too: {read} < {hi}"
    );
    assert!(
        read <= hi + (1 << 20),
        "read {read} bytes of a {size}-byte blob for frames ending at {hi}"
    );
    // Planned for such a server: the file's chunks in one request.
    let ranged = s.proxy.seen().iter().filter(|r| r.range.is_some()).count();
    assert_eq!(ranged, 1, "one whole-blob request for all missing chunks");
    // Once the server honours ranges again, the client notices.
    s.proxy.clear();
    let other = s
        .local
        .index()
        .lookup("usr/lib/libsample1.so")
        .map(|_| "usr/lib/libsample1.so")
        .unwrap_or("etc/hostname");
    s.rt.block_on(layer.read_path(other)).unwrap();
    assert!(c.honours_ranges(&s.reference.registry));
}

/// Range requests that overlap the frames of `path` (requests for neighbours fetched on a
/// guess do not count).
fn requests_for(s: &Setup, path: &str) -> usize {
    let id = s.local.index().lookup(path).unwrap();
    let chunks = &s.local.index().node(id).chunks;
    let (lo, hi) = (chunks[0].blob_offset, chunks[chunks.len() - 1].blob_end);
    s.proxy
        .seen()
        .iter()
        .filter_map(|r| r.range.as_deref()?.strip_prefix("bytes=")?.split_once('-'))
        .filter_map(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .filter(|&(a, b)| a < hi && b >= lo)
        .count()
}

#[test]
fn a_region_and_its_resumptions_share_one_retry_budget() {
    let s = setup();
    let want = s.expected(BIG);
    // The client's policy allows 4 attempts.
    for fault in [Fault::Status(503), Fault::Truncate, Fault::ResetMidBody] {
        s.proxy.clear();
        let layer = s.fresh_layer();
        s.proxy.reset_log();
        s.proxy
            .add(Rule::new("/blobs/", usize::MAX, fault.clone()).ranges());
        assert!(
            s.rt.block_on(layer.read_path(BIG)).is_err(),
            "{fault:?}: a lasting fault is an error"
        );
        assert_eq!(
            requests_for(&s, BIG),
            4,
            "{fault:?}: the region's requests and resumptions together get the 4 attempts"
        );
    }
    // The first request's body is cut, the resumption is good: two requests, right bytes.
    s.proxy.clear();
    let layer = s.fresh_layer();
    s.proxy.reset_log();
    let first = s
        .local
        .index()
        .node(s.local.index().lookup(BIG).unwrap())
        .chunks[0]
        .blob_offset;
    s.proxy
        .add(Rule::new("/blobs/", 1, Fault::Truncate).range_from(first));
    assert!(s.rt.block_on(layer.read_path(BIG)).unwrap() == want);
    assert_eq!(requests_for(&s, BIG), 2);
}
