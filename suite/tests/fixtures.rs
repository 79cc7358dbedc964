//! The reference converter's fixtures (../shared/fixtures) read, list, extract and verify
//! byte for byte with the digests their README gives.

use stargaze_fs::format::extract::{extract_layer, ExtractOptions};
use stargaze_fs::format::footer::Footer;
use stargaze_fs::format::verify::verify_layer;
use stargaze_fs::format::{Compression, FileBlob, LayerReader, NodeKind, OpenOptions};
use stargaze_fs::Digest;
use stargaze_suite::{assert_same_tree, fixtures_dir, have, is_root, require, run, tree};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

fn layer_annotations(manifest: &str) -> BTreeMap<String, String> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(manifest)).expect("manifest")).expect("json");
    m["layers"][0]["annotations"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn open(blob: &str, manifest: &str) -> LayerReader<FileBlob> {
    let ann = layer_annotations(manifest);
    let toc: Digest = ann["containerd.io/snapshot/stargz/toc.digest"]
        .parse()
        .unwrap();
    LayerReader::open(
        FileBlob::open(&fixture(blob)).unwrap(),
        &OpenOptions {
            toc_digest: Some(toc),
            annotations: ann,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{blob}: {e}"))
}

#[test]
fn fixture_files_have_the_documented_digests() {
    let readme = std::fs::read_to_string(fixture("README.md")).expect("fixtures README");
    let mut checked = 0;
    for line in readme.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() == 2 && parts[0].len() == 64 && parts[1].contains("fixture") {
            let data = std::fs::read(fixture(parts[1])).expect("fixture file");
            assert_eq!(Digest::of(&data).hex(), parts[0], "{}", parts[1]);
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
}

#[test]
fn estargz_fixture_reads_byte_for_byte() {
    let r = open(
        "estargz-fixture-layer.tar.gz",
        "estargz-fixture-manifest.json",
    );
    assert_eq!(
        r.footer(),
        Footer::Gzip {
            toc_offset: 1_143_104
        }
    );
    assert_eq!(
        r.toc_json(),
        std::fs::read(fixture("estargz-fixture-toc.json")).unwrap()
    );
    assert_eq!(r.index().compression, Compression::Gzip);
    assert!(r.index().no_prefetch_landmark);
    let v = verify_layer(&r, |_| {}).unwrap();
    assert!(v.chunks >= 3 && v.files >= 4, "{v:?}");
    // Layer digest is the manifest's.
    let blob = std::fs::read(fixture("estargz-fixture-layer.tar.gz")).unwrap();
    assert_eq!(
        Digest::of(&blob).to_string(),
        "sha256:a0c1c8dd872dd3f3d556612e43ee731086198aad065ba35db717c01a755291fa"
    );
    // The chunked busybox reassembles to its whole-file digest.
    let idx = r.index();
    let bb = idx.lookup("bin/busybox").unwrap();
    let node = idx.node(bb);
    assert_eq!(node.chunks.len(), 2);
    let data = r.read_file(bb, 0, node.size).unwrap();
    assert_eq!(Some(Digest::of(&data)), node.digest);
    // A read across the chunk boundary.
    let mid = r.read_file(bb, 1_048_570, 12).unwrap();
    assert_eq!(&mid[..], &data[1_048_570..1_048_582]);
    // Hardlink shares the inode; fifo, setuid and empty file come through.
    let h = idx.lookup("etc/hello.txt").unwrap();
    assert_eq!(idx.lookup("etc/hello-hardlink.txt"), Some(h));
    assert_eq!(idx.node(h).nlink, 2);
    assert_eq!(
        idx.node(idx.lookup("data/fifo").unwrap()).kind,
        NodeKind::Fifo
    );
    assert_eq!(idx.node(idx.lookup("data/empty").unwrap()).size, 0);
}

#[test]
fn wrong_toc_digest_is_refused() {
    let err = LayerReader::open(
        FileBlob::open(&fixture("estargz-fixture-layer.tar.gz")).unwrap(),
        &OpenOptions {
            toc_digest: Some(Digest::of(b"other")),
            ..Default::default()
        },
    )
    .err()
    .expect("must fail");
    assert!(err.to_string().contains("TOC digest mismatch"), "{err}");
}

#[test]
fn optimized_fixture_has_prefetch_files() {
    let r = open(
        "estargz-optimized-fixture-layer.tar.gz",
        "estargz-optimized-fixture-manifest.json",
    );
    let idx = r.index();
    let names: Vec<String> = idx.prefetch.iter().map(|&n| idx.path(n)).collect();
    assert!(names.iter().any(|n| n == "bin/busybox"), "{names:?}");
    assert!(names
        .iter()
        .any(|n| n == "etc/hello.txt" || n == "etc/hello-hardlink.txt"));
    assert!(!idx.no_prefetch_landmark);
    verify_layer(&r, |_| {}).unwrap();
}

#[test]
fn zstdchunked_fixture_reads_with_and_without_annotations() {
    let r = open(
        "zstdchunked-fixture-layer.tar.zst",
        "zstdchunked-fixture-manifest.json",
    );
    assert_eq!(r.index().compression, Compression::Zstd);
    verify_layer(&r, |_| {}).unwrap();
    // Footer alone (no annotations) finds the same TOC.
    let r2 = LayerReader::open(
        FileBlob::open(&fixture("zstdchunked-fixture-layer.tar.zst")).unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(r.toc_digest(), r2.toc_digest());
    assert_eq!(
        r.toc_digest().to_string(),
        "sha256:39bfbdfb8544a47b790e1020d5689aad7e0f858f53e87f4b3a7818fdae3f49d7"
    );
}

#[test]
fn all_formats_extract_to_the_plain_layer_tree() {
    if !require(have("tar"), "GNU tar") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let mut tar = std::process::Command::new("tar");
    tar.arg("-xzf")
        .arg(fixture("plain-fixture-layer.tar.gz"))
        .arg("-C")
        .arg(&plain);
    if is_root() {
        tar.arg("--same-owner")
            .arg("--xattrs")
            .arg("--xattrs-include=*");
    }
    run(&mut tar);
    let want = tree(&plain, &[]);
    for (blob, manifest) in [
        (
            "estargz-fixture-layer.tar.gz",
            "estargz-fixture-manifest.json",
        ),
        (
            "estargz-optimized-fixture-layer.tar.gz",
            "estargz-optimized-fixture-manifest.json",
        ),
        (
            "zstdchunked-fixture-layer.tar.zst",
            "zstdchunked-fixture-manifest.json",
        ),
    ] {
        let r = open(blob, manifest);
        let dir = tmp.path().join(blob);
        extract_layer(&r, &dir, &ExtractOptions::default()).unwrap();
        let got = tree(&dir, &[]);
        assert_same_tree(&want, &got);
    }
}

#[test]
fn cli_inspects_the_fixture() {
    let bin = stargaze_suite::stargaze_bin();
    if !require(
        bin.is_file(),
        "the stargaze binary (cargo build -p stargaze)",
    ) {
        return;
    }
    let blob = fixture("estargz-fixture-layer.tar.gz");
    let toc = run(std::process::Command::new(&bin).arg("toc").arg(&blob));
    assert_eq!(
        toc.as_bytes(),
        &std::fs::read(fixture("estargz-fixture-toc.json")).unwrap()[..]
    );
    let ls = run(std::process::Command::new(&bin).arg("ls").arg(&blob));
    assert!(
        ls.lines()
            .any(|l| l.starts_with("symlink") && l.contains("bin/cat -> busybox")),
        "{ls}"
    );
    assert!(ls.lines().any(|l| l.starts_with("fifo")), "{ls}");
    let hello = std::process::Command::new(&bin)
        .args(["cat"])
        .arg(&blob)
        .arg("etc/hello.txt")
        .output()
        .unwrap();
    assert!(hello.status.success());
    assert!(!hello.stdout.is_empty());
    let v = run(std::process::Command::new(&bin).args([
        "verify",
        blob.to_str().unwrap(),
        "--toc-digest",
        "sha256:9e55e35a7133d4d4285b7459127e8d8a779df95e4be2cc1e00cbd2ebdd9a9868",
    ]));
    assert!(v.starts_with("ok:"), "{v}");
    let bad = std::process::Command::new(&bin)
        .args([
            "verify",
            blob.to_str().unwrap(),
            "--toc-digest",
            "sha256:00",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("stargaze: error"));
}
