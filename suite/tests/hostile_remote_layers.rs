//! Hostile layers read lazily from a registry: a blob whose TOC nothing the caller trusts
//! vouches for, a frame that claims to run far past the chunk it holds, and a layer that
//! claims another layer's file digest to reach that file's bytes through the shared cache.
//! Each case checks the safe outcome and fails without the mechanism that ensures it.

use stargaze_fs::cache::{ChunkCache, DiskCache, MemoryCache};
use stargaze_fs::fetcher::FetchOptions;
use stargaze_fs::format::tar::{HeaderSpec, TarBuilder, TarKind};
use stargaze_fs::format::{convert_layer, WriterOptions};
use stargaze_fs::image::OciLayout;
use stargaze_fs::layer::{LayerError, RemoteLayer};
use stargaze_fs::oci::TOC_DIGEST_ANNOTATION;
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_fs::remote::{ClientOptions, Descriptor, Reference, RegistryClient};
use stargaze_fs::Digest;
use stargaze_suite::blobs::{append_toc, gz};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A TOC's JSON, with the digest a manifest would carry for it.
fn toc_of(entries: &[String]) -> (String, Digest) {
    let toc = format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(","));
    let d = Digest::of(toc.as_bytes());
    (toc, d)
}

/// A blob in repository `h/img` of a built-in registry, and its descriptor.
struct Served {
    _registry: BackgroundRegistry,
    reference: Reference,
    layout: OciLayout,
    rt: tokio::runtime::Runtime,
    client: Arc<RegistryClient>,
}

fn serve(root: &Path) -> Served {
    let layout = OciLayout::open_or_create(&root.join("reg/h/img")).unwrap();
    let registry = BackgroundRegistry::start(
        RegistryOptions::new(root.join("reg")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let reference = Reference::parse(&format!("{}/h/img:v1", registry.addr())).unwrap();
    Served {
        _registry: registry,
        reference,
        layout,
        rt: tokio::runtime::Runtime::new().unwrap(),
        client: Arc::new(RegistryClient::new(ClientOptions::default()).unwrap()),
    }
}

fn descriptor(blob: &[u8], toc: Option<Digest>) -> Descriptor {
    Descriptor {
        media_type: GZIP_LAYER.into(),
        digest: Digest::of(blob).to_string(),
        size: blob.len() as u64,
        annotations: toc.map(|t| [(TOC_DIGEST_ANNOTATION.to_string(), t.to_string())].into()),
        platform: None,
        urls: None,
    }
}

impl Served {
    fn put(&self, blob: &[u8]) {
        self.layout.put_blob(blob).unwrap();
    }

    #[allow(clippy::result_large_err)] // the library's own error, as callers get it
    fn open(
        &self,
        desc: &Descriptor,
        cache: Arc<ChunkCache>,
    ) -> Result<Arc<RemoteLayer>, LayerError> {
        self.rt.block_on(RemoteLayer::open(
            self.client.clone(),
            &self.reference,
            desc,
            cache,
            vec![],
            FetchOptions::default(),
        ))
    }
}

fn memory_cache() -> Arc<ChunkCache> {
    Arc::new(ChunkCache::new(Some(MemoryCache::new(64 << 20)), None))
}

/// A valid eStargz layer holding `files` (name, content), chunked at `chunk`.
fn estargz(files: &[(&str, Vec<u8>)], chunk: u64) -> (Vec<u8>, Digest) {
    let mut t = TarBuilder::new(Vec::new());
    for (name, data) in files {
        t.append(&HeaderSpec::new(name, TarKind::Reg), data)
            .unwrap();
    }
    let tar = t.finish().unwrap();
    let mut out = Vec::new();
    let opts = WriterOptions {
        chunk_size: chunk,
        ..Default::default()
    };
    let report = convert_layer(&tar[..], &mut out, &opts, &mut |_| {}).unwrap();
    (out, report.toc_digest)
}

#[test]
fn a_toc_nothing_trusted_vouches_for_is_never_mounted_lazily() {
    let tmp = tempfile::tempdir().unwrap();
    let s = serve(tmp.path());
    // A self-consistent eStargz blob, as a registry could swap in for a plain layer.
    let (blob, toc) = estargz(&[("etc/motd", b"served by a stranger\n".to_vec())], 4096);
    s.put(&blob);

    let e = s
        .open(&descriptor(&blob, None), memory_cache())
        .err()
        .expect("opened lazily");
    assert!(matches!(e, LayerError::UntrustedToc { .. }), "{e}");
    assert!(e.wants_whole_pull(), "{e}");
    assert!(e.to_string().contains(TOC_DIGEST_ANNOTATION), "{e}");

    // A digest that is not the TOC's: refused, and not silently pulled either.
    let wrong = Digest::of(b"some other TOC");
    let e = s
        .open(&descriptor(&blob, Some(wrong)), memory_cache())
        .err()
        .expect("opened");
    assert!(!e.wants_whole_pull(), "{e}");
    assert!(e.to_string().contains("TOC digest"), "{e}");

    // The manifest's own digest: mounted lazily, content verified.
    let layer = s
        .open(&descriptor(&blob, Some(toc)), memory_cache())
        .unwrap();
    let got = s.rt.block_on(layer.read_path("etc/motd")).unwrap();
    assert_eq!(got, b"served by a stranger\n");
}

#[test]
fn a_swapped_blob_pulled_whole_fails_its_layer_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let s = serve(tmp.path());
    // The manifest names a plain layer; the registry answers with another, self-consistent
    // eStargz blob of the same size under that digest.
    let (evil, _) = estargz(&[("bin/sh", b"#!/evil\n".to_vec())], 4096);
    let mut plain = gz(b"not the layer it claims to be", 6);
    plain.resize(evil.len(), 0);
    let desc = descriptor(&plain, None);
    let path = s.layout.blob_path(&Digest::of(&plain));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &evil).unwrap();

    let e = s.open(&desc, memory_cache()).err().expect("opened lazily");
    assert!(e.wants_whole_pull(), "{e}");
    let dir = tmp.path().join("unpacked/l0");
    std::fs::create_dir_all(&dir).unwrap();
    let pulled = s.rt.block_on(stargaze_fs::mount::pull_and_unpack(
        &s.client,
        &s.reference,
        &desc,
        &dir,
        &[],
    ));
    let e = pulled.expect_err("a blob that is not its digest was unpacked");
    assert!(e.to_string().contains("hashes to"), "{e}");
    assert!(!dir.join("bin/sh").exists());
}

#[test]
fn a_chunk_frame_is_read_no_further_than_the_chunk_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let s = serve(tmp.path());
    // A one-byte file whose frame the TOC lets run over 64 MiB of junk up to the TOC.
    let mut blob = gz(b"x", 6);
    let junk: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    blob.extend_from_slice(&junk);
    let (toc, toc_digest) = toc_of(&[format!(
        r#"{{"name":"f","type":"reg","size":1,"offset":0,"chunkDigest":"{}"}}"#,
        Digest::of(b"x")
    )]);
    let blob = append_toc(blob, &toc);
    s.put(&blob);

    let layer = s
        .open(&descriptor(&blob, Some(toc_digest)), memory_cache())
        .unwrap();
    let before = layer.counters().bytes_fetched;
    assert_eq!(s.rt.block_on(layer.read_path("f")).unwrap(), b"x");
    let fetched = layer.counters().bytes_fetched - before;
    assert!(
        fetched < 1 << 20,
        "reading one byte fetched {fetched} bytes of a frame the TOC stretched over 64 MiB"
    );
}

#[test]
fn a_claimed_file_digest_does_not_reach_another_layers_file() {
    let tmp = tempfile::tempdir().unwrap();
    let s = serve(tmp.path());
    let cache = Arc::new(ChunkCache::new(
        None,
        Some(DiskCache::open(&tmp.path().join("cache"), 1 << 30).unwrap()),
    ));
    // The victim: a private file, read and kept whole in the shared cache.
    let secret: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (victim, victim_toc) = estargz(&[("secret", secret.clone())], 64 << 10);
    s.put(&victim);
    let v = s
        .open(&descriptor(&victim, Some(victim_toc)), cache.clone())
        .unwrap();
    assert_eq!(s.rt.block_on(v.read_path("secret")).unwrap(), secret);
    let id = v.resolve("secret").unwrap();
    let mut copy = Vec::new();
    s.rt.block_on(v.local_file(id))
        .expect("a whole-file copy of the victim's file")
        .read_to_end(&mut copy)
        .unwrap();
    assert_eq!(copy, secret);

    // The attacker: its own chunks (verified, harmless bytes) under the victim's file digest.
    let own = vec![b'A'; secret.len()];
    let mut blob = Vec::new();
    let mut entries = Vec::new();
    for (i, piece) in own.chunks(64 << 10).enumerate() {
        let off = blob.len();
        blob.extend_from_slice(&gz(piece, 6));
        let cd = Digest::of(piece);
        entries.push(if i == 0 {
            format!(
                r#"{{"name":"claims","type":"reg","size":{},"offset":{off},"chunkSize":{},"chunkDigest":"{cd}","digest":"{}"}}"#,
                own.len(),
                piece.len(),
                Digest::of(&secret)
            )
        } else {
            format!(
                r#"{{"name":"claims","type":"chunk","offset":{off},"chunkOffset":{},"chunkSize":{},"chunkDigest":"{cd}"}}"#,
                i * (64 << 10),
                piece.len()
            )
        });
    }
    let (toc, toc_digest) = toc_of(&entries);
    let blob = append_toc(blob, &toc);
    s.put(&blob);
    let a = s
        .open(&descriptor(&blob, Some(toc_digest)), cache.clone())
        .unwrap();
    assert_eq!(s.rt.block_on(a.read_path("claims")).unwrap(), own);
    let id = a.resolve("claims").unwrap();
    let mut got = Vec::new();
    if let Some(mut f) = s.rt.block_on(a.local_file(id)) {
        f.read_to_end(&mut got).unwrap();
        assert!(
            got != secret,
            "the claimed file digest handed out another layer's file"
        );
        assert_eq!(got, own);
    }
}
