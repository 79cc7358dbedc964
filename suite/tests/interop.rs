//! Interop with the real tools: `stargaze convert` output passes `skopeo inspect` and unpacks
//! with `umoci` to the source's rootfs; the reference converter (`ctr-remote image convert
//! --estargz` against a private containerd) and stargaze make the same tree from the same tar.

use stargaze_fs::format::extract::{extract_layer, ExtractOptions};
use stargaze_fs::format::{FileBlob, LayerReader, OpenOptions};
use stargaze_fs::image::sample::{build_sample_image, SampleOptions};
use stargaze_fs::image::{annotations_of, OciLayout};
use stargaze_suite::{assert_same_tree, have, is_root, require, run, stargaze_bin, tree};
use std::path::Path;
use std::process::Command;

/// Names eStargz adds at the layer root; the reference's layers carry them too.
const FORMAT_FILES: [&str; 3] = [
    ".no.prefetch.landmark",
    ".prefetch.landmark",
    "stargz.index.json",
];

fn small_sample(dir: &Path) {
    let opts = SampleOptions {
        small_files: 300,
        large_files: vec![5 << 20],
        ..Default::default()
    };
    build_sample_image(dir, "sample", &opts).unwrap();
}

#[test]
fn converted_image_passes_skopeo_and_umoci() {
    if !require(have("skopeo"), "skopeo")
        || !require(have("umoci"), "umoci")
        || !require(is_root(), "root (umoci unpack keeps owners)")
        || !require(stargaze_bin().is_file(), "the stargaze binary")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = tmp.path().join("oci");
    small_sample(&oci);
    let out = run(Command::new(stargaze_bin()).args([
        "convert",
        &format!("oci:{}:sample", oci.display()),
        &format!("oci:{}:esgz", oci.display()),
    ]));
    assert!(out.contains("converted 2 layers"), "{out}");
    run(Command::new(stargaze_bin()).args([
        "convert",
        "--zstd",
        &format!("oci:{}:sample", oci.display()),
        &format!("oci:{}:zstd", oci.display()),
    ]));
    for tag in ["sample", "esgz", "zstd"] {
        let j =
            run(Command::new("skopeo").args(["inspect", &format!("oci:{}:{tag}", oci.display())]));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["Layers"].as_array().map(Vec::len), Some(2), "{tag}: {j}");
    }
    let layout = OciLayout::open(&oci).unwrap();
    let (_, m) = layout.resolve(Some("esgz")).unwrap();
    for l in m.layers() {
        let ann = annotations_of(l);
        assert!(ann.contains_key("containerd.io/snapshot/stargz/toc.digest"));
        assert!(ann.contains_key("io.containers.estargz.uncompressed-size"));
    }
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:sample", oci.display())])
        .arg(&a));
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:esgz", oci.display())])
        .arg(&b));
    assert_same_tree(
        &tree(&a.join("rootfs"), &FORMAT_FILES),
        &tree(&b.join("rootfs"), &FORMAT_FILES),
    );
    // Converting again keeps the eStargz layers as they are.
    let again = run(Command::new(stargaze_bin()).args([
        "convert",
        &format!("oci:{}:esgz", oci.display()),
        &format!("oci:{}:esgz2", oci.display()),
    ]));
    assert_eq!(again.matches("already eStargz: kept").count(), 2, "{again}");
}

#[test]
fn reference_converter_and_stargaze_make_the_same_tree() {
    if !require(have("containerd") && have("ctr"), "containerd and ctr")
        || !require(have("ctr-remote"), "ctr-remote (Debian stargz-snapshotter)")
        || !require(is_root(), "root (containerd)")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = tmp.path().join("oci");
    small_sample(&oci);
    let refdir = stargaze_suite::reference_convert(&oci, tmp.path());
    let ref_layout = OciLayout::open(&refdir).unwrap();
    let (_, ref_manifest) = ref_layout.resolve(None).unwrap();

    // Ours, from the same source image.
    let layout = OciLayout::open(&oci).unwrap();
    stargaze_fs::image::convert_image(
        &layout,
        Some("sample"),
        &layout,
        Some("esgz"),
        &Default::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let (_, our_manifest) = layout.resolve(Some("esgz")).unwrap();
    assert_eq!(ref_manifest.layers().len(), our_manifest.layers().len());

    for (i, (rl, ol)) in ref_manifest
        .layers()
        .iter()
        .zip(our_manifest.layers())
        .enumerate()
    {
        let open = |layout: &OciLayout, desc| {
            let ann = annotations_of(desc);
            let toc = ann
                .get("containerd.io/snapshot/stargz/toc.digest")
                .expect("toc.digest")
                .parse()
                .unwrap();
            let d = OciLayout::digest_of(desc).unwrap();
            LayerReader::open(
                FileBlob::open(&layout.blob_path(&d)).unwrap(),
                &OpenOptions {
                    toc_digest: Some(toc),
                    annotations: ann,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let r = open(&ref_layout, rl);
        let o = open(&layout, ol);
        let rd = tmp.path().join(format!("ref-{i}"));
        let od = tmp.path().join(format!("our-{i}"));
        extract_layer(&r, &rd, &ExtractOptions::default()).unwrap();
        extract_layer(&o, &od, &ExtractOptions::default()).unwrap();
        assert_same_tree(&tree(&rd, &FORMAT_FILES), &tree(&od, &FORMAT_FILES));
        // Same files in the same TOC order (landmark aside).
        let names = |r: &LayerReader<FileBlob>| -> Vec<String> {
            r.index()
                .entries
                .iter()
                .map(|e| e.path.clone())
                .filter(|p| !FORMAT_FILES.contains(&p.as_str()))
                .collect()
        };
        assert_eq!(names(&r), names(&o), "layer {i}: TOC order");
    }
}
