//! Whole-workflow benchmarks, each printed next to its named baseline in one run.
//!
//! `convert`: `stargaze convert` vs the reference `ctr-remote image convert --estargz --oci`
//! (Debian's stargz-snapshotter, against a private containerd) on the same image: the
//! sample image scaled up (20k small files, 80 MiB of large files), built once and cached in
//! `target/bench-cache/`. Prints the median of 3 runs each and the ratio (goal ≥ 1.5).
//!
//! `fetch`: one 256 MiB eStargz layer (a single file of incompressible data, gzip, 4 MiB
//! chunks) served by the built-in registry on loopback. Two ratios, each beside its baseline:
//! * transport: the blob read into memory with the fetcher's Range requests (16 MiB merged
//!   regions, the client's 8 per host in flight) vs one plain GET of the same blob into
//!   memory (goal >= 0.8);
//! * verified: the whole file read through the fetcher (Range GETs + inflate + SHA-256 of
//!   every chunk, no cache) vs the same verified read from the blob on local disk — what the
//!   network path costs on top of the CPU work both must do.
//!
//! Run: `cargo build --release -p stargaze && cargo bench --bench workflows [-- convert|fetch]`
//! (root is needed for containerd).

use stargaze_fs::image::sample::{build_sample_image, SampleOptions};
use stargaze_suite::{bench_cache_dir, have, is_root, median, run, stargaze_bin, Containerd};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn bench_image() -> PathBuf {
    let dir = bench_cache_dir().join("convert-src");
    if !dir.join("index.json").is_file() {
        eprintln!("building the bench image in {} (once)", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        let opts = SampleOptions {
            small_files: 20_000,
            large_files: vec![48 << 20, 24 << 20, 8 << 20],
            ..Default::default()
        };
        build_sample_image(&dir, "sample", &opts).expect("building bench image");
    }
    dir
}

fn convert_bench() {
    let src = bench_image();
    let bin = stargaze_bin();
    if !bin.is_file() {
        println!("convert: SKIPPED: build the binary first (cargo build --release -p stargaze)");
        return;
    }
    let runs = 3;
    let mut ours = Vec::new();
    for i in 0..runs {
        let out = tempfile::tempdir().expect("temp");
        let t = Instant::now();
        run(Command::new(&bin).args([
            "convert",
            &format!("oci:{}:sample", src.display()),
            &format!("oci:{}:esgz{i}", out.path().display()),
        ]));
        ours.push(t.elapsed().as_secs_f64());
    }
    let ours = median(ours);
    println!(
        "convert: stargaze convert (gzip 9, 4 MiB chunks, 2 cores): {ours:.2} s (median of {runs})"
    );

    if !(is_root() && have("containerd") && have("ctr") && have("ctr-remote")) {
        println!("convert: reference SKIPPED: needs root, containerd, ctr and ctr-remote");
        return;
    }
    let ctd = Containerd::start();
    ctd.import_layout(&src, "bench.local/img");
    let mut theirs = Vec::new();
    for i in 0..runs {
        let t = Instant::now();
        run(ctd.cmd("ctr-remote").args([
            "image",
            "convert",
            "--estargz",
            "--oci",
            "bench.local/img:sample",
            &format!("bench.local/img:esgz{i}"),
        ]));
        theirs.push(t.elapsed().as_secs_f64());
    }
    drop(ctd);
    let theirs = median(theirs);
    println!("convert: ctr-remote image convert --estargz --oci (baseline): {theirs:.2} s (median of {runs})");
    println!(
        "RATIO convert: stargaze is {:.2}x faster than ctr-remote (goal >= 1.5)",
        theirs / ours
    );
}

/// A layout holding one image whose only layer is a 256 MiB eStargz blob; built once.
fn fetch_fixture() -> (PathBuf, u64) {
    use stargaze_fs::format::tar::{padding, ustar_file_header};
    use stargaze_fs::format::{convert_layer, WriterOptions};
    use stargaze_fs::image::OciLayout;
    let root = bench_cache_dir().join("fetch-registry");
    let repo = root.join("bench/fetch");
    let marker = root.join("blob-size");
    if let Ok(s) = std::fs::read_to_string(&marker) {
        if let Ok(n) = s.trim().parse() {
            return (root, n);
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    eprintln!(
        "building the 256 MiB fetch fixture in {} (once)",
        root.display()
    );
    let size: u64 = 256 << 20;
    let mut tar = Vec::with_capacity(size as usize + 4096);
    tar.extend_from_slice(&ustar_file_header("data/blob.bin", size, 0o644));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..size / 8 {
        // xorshift: incompressible, reproducible.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tar.extend_from_slice(&x.to_le_bytes());
    }
    tar.extend(std::iter::repeat_n(0u8, padding(size) + 1024));
    let layout = OciLayout::open_or_create(&repo).expect("layout");
    let mut tmp = layout.temp_blob().expect("temp blob");
    let opts = WriterOptions {
        level: 1,
        ..WriterOptions::default()
    };
    let rep = convert_layer(&tar[..], tmp.as_file_mut(), &opts, &mut |_| {}).expect("convert");
    layout.commit_blob(tmp, &rep.blob_digest).expect("commit");
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        stargaze_fs::image::host_arch(),
        rep.diff_id
    );
    let cd = layout.put_blob(config.as_bytes()).expect("config");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{},"annotations":{{"containerd.io/snapshot/stargz/toc.digest":"{}"}}}}]}}"#,
        config.len(),
        rep.blob_digest,
        rep.blob_size,
        rep.toc_digest
    );
    layout
        .put_manifest_bytes(
            manifest.as_bytes(),
            oci_spec::image::MediaType::ImageManifest,
            Some("v1"),
        )
        .expect("manifest");
    std::fs::write(&marker, rep.blob_size.to_string()).expect("marker");
    (root, rep.blob_size)
}

fn fetch_bench() {
    use stargaze_fs::cache::ChunkCache;
    use stargaze_fs::fetcher::FetchOptions;
    use stargaze_fs::layer::RemoteLayer;
    use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
    use stargaze_fs::remote::{ClientOptions, Platform, Reference, RegistryClient};
    use std::sync::Arc;
    let (root, blob_size) = fetch_fixture();
    let reg = BackgroundRegistry::start(
        RegistryOptions::new(&root),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("registry");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut copts = ClientOptions::default();
    if let Some(n) = std::env::var("FETCH_PER_HOST")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        copts.hosts.max_per_host = n;
    }
    let client = Arc::new(RegistryClient::new(copts).expect("client"));
    let reference = Reference::parse(&format!("{}/bench/fetch:v1", reg.addr())).expect("ref");
    let (m, _) = rt
        .block_on(client.resolve(&reference, &Platform::host(), &[]))
        .expect("manifest");
    let desc = m.layers[0].clone();
    let url = format!("http://{}/v2/bench/fetch/blobs/{}", reg.addr(), desc.digest);
    let plain = reqwest::Client::new();
    let blob = stargaze_fs::fetcher::RemoteBlob {
        client: client.clone(),
        reference: reference.clone(),
        digest: desc.digest().expect("digest"),
        size: blob_size,
        sessions: Default::default(),
    };
    let local_path = root
        .join("bench/fetch/blobs/sha256")
        .join(&desc.digest[7..]);
    let (mut ours, mut base, mut ranges, mut local) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut discard = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        rt.block_on(async {
            let mut resp = plain.get(&url).send().await.expect("GET");
            while resp.chunk().await.expect("body").is_some() {}
        });
        discard.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let n = rt.block_on(async {
            let region = FetchOptions::default().max_request;
            let starts: Vec<u64> = (0..blob_size).step_by(region as usize).collect();
            let reads = starts
                .iter()
                .map(|&s| blob.range(s, region.min(blob_size - s)));
            let parts = futures_util::future::join_all(reads).await;
            parts
                .into_iter()
                .map(|p| p.expect("range").data.len() as u64)
                .sum::<u64>()
        });
        assert_eq!(n, blob_size);
        ranges.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let r = stargaze_fs::format::LayerReader::open(
            stargaze_fs::format::FileBlob::open(&local_path).expect("blob"),
            &Default::default(),
        )
        .expect("open");
        let id = r.index().lookup("data/blob.bin").expect("file");
        let data = r.read_file(id, 0, 256 << 20).expect("local read");
        assert_eq!(data.len(), 256 << 20);
        local.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let n = rt.block_on(async {
            // Like the Range reads, the bytes end up in memory.
            let mut resp = plain.get(&url).send().await.expect("GET");
            let mut body = Vec::with_capacity(blob_size as usize);
            while let Some(c) = resp.chunk().await.expect("body") {
                body.extend_from_slice(&c);
            }
            body.len() as u64
        });
        assert_eq!(n, blob_size);
        base.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        let read = rt.block_on(async {
            let layer = RemoteLayer::open(
                client.clone(),
                &reference,
                &desc,
                Arc::new(ChunkCache::new(None, None)),
                vec![],
                FetchOptions::default(),
            )
            .await
            .expect("open");
            let id = layer.index().lookup("data/blob.bin").expect("file");
            let size = layer.index().node(id).size;
            let data = layer.read(id, 0, size).await.expect("read");
            (data.len() as u64, layer.counters())
        });
        ours.push(t.elapsed().as_secs_f64());
        assert_eq!(read.0, 256 << 20);
        if ours.len() == 1 {
            println!(
                "fetch: fetcher used {} requests, {} bytes fetched, {} verified chunks",
                read.1.requests, read.1.bytes_fetched, read.1.cache_misses
            );
        }
    }
    let (o, b, r, l) = (median(ours), median(base), median(ranges), median(local));
    let mb = blob_size as f64 / 1e6;
    println!(
        "fetch: one plain GET of the {mb:.0} MB blob (baseline): {b:.3} s = {:.0} MB/s",
        mb / b
    );
    println!(
        "fetch: (for reference) one plain GET, bytes discarded: {:.0} MB/s",
        mb / median(discard)
    );
    println!(
        "fetch: the blob via the fetcher's Range requests: {r:.3} s = {:.0} MB/s",
        mb / r
    );
    println!(
        "RATIO fetch transport: Range reads reach {:.2} of a plain GET (goal >= 0.8)",
        b / r
    );
    println!(
        "fetch: verified read of the file from the local blob (baseline): {l:.3} s = {:.0} MB/s",
        mb / l
    );
    println!("fetch: verified read through the fetcher (Range + inflate + SHA-256): {o:.3} s = {:.0} MB/s", mb / o);
    println!(
        "RATIO fetch verified: the fetcher reaches {:.2} of the local verified read",
        l / o
    );
}

fn main() {
    let want = stargaze_suite::bench_selection();
    if want("convert") {
        convert_bench();
    }
    if want("fetch") {
        fetch_bench();
    }
}
