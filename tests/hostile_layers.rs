//! Hostile layers against the trust boundaries: names that would reach outside the
//! extraction root, TOCs that would cost gigabytes to open, and TOCs that disagree with the
//! tar stream they describe. Each case asserts the safe outcome — a clear error naming the
//! entry, nothing touched outside the root, bounded memory — not merely "an error".

use stargaze_fs::format::extract::{extract_layer, unpack_tar, ExtractOptions, Whiteouts};
use stargaze_fs::format::footer::gzip_footer;
use stargaze_fs::format::tar::{ustar_file_header, HeaderSpec, TarBuilder, TarKind};
use stargaze_fs::format::{convert_layer, FormatError, LayerReader, OpenOptions, WriterOptions};
use stargaze_fs::fuse::view::View;
use stargaze_fs::fuse::OpaqueXattr;
use std::io::Write;
use std::path::Path;

fn gz(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A blob: one gzip member per payload, then a TOC member holding `toc`, then the footer.
fn blob_with_toc(payloads: &[Vec<u8>], toc: &str) -> Vec<u8> {
    let mut blob = Vec::new();
    for p in payloads {
        blob.extend_from_slice(&gz(p, 6));
    }
    let toc_off = blob.len() as u64;
    let mut t = ustar_file_header("stargz.index.json", toc.len() as u64, 0o444).to_vec();
    t.extend_from_slice(toc.as_bytes());
    t.resize(t.len().div_ceil(512) * 512 + 1024, 0);
    blob.extend_from_slice(&gz(&t, 6));
    blob.extend_from_slice(&gzip_footer(toc_off));
    blob
}

fn open(blob: Vec<u8>) -> Result<LayerReader<Vec<u8>>, FormatError> {
    LayerReader::open(blob, &OpenOptions::default())
}

fn open_err(blob: Vec<u8>) -> String {
    match open(blob) {
        Ok(_) => panic!("hostile blob was accepted"),
        Err(e) => e.to_string(),
    }
}

fn tar_of(entries: &[(&str, TarKind)]) -> Vec<u8> {
    let mut t = TarBuilder::new(Vec::new());
    for (name, kind) in entries {
        let data: &[u8] = if *kind == TarKind::Reg { b"data" } else { b"" };
        t.append(&HeaderSpec::new(name, *kind), data).unwrap();
    }
    t.finish().unwrap()
}

fn convert(tar: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::new();
    convert_layer(tar, &mut out, &WriterOptions::default(), &mut |_| {})?;
    Ok(out)
}

/// Names whose whiteout target (or some component) is not a normal name.
const ESCAPING_NAMES: [&str; 6] = [
    ".wh...",
    "a/.wh...",
    "a/.wh..",
    "a/.wh.",
    "a/.wh../b",
    "./a/b/.wh...",
];

/// `tmp/root/{target/, sentinel}` with a file already in the target; returns `tmp/root`.
fn extraction_site(tmp: &Path) -> std::path::PathBuf {
    let root = tmp.join("root");
    std::fs::create_dir_all(root.join("target/a/b")).unwrap();
    std::fs::write(root.join("sentinel"), b"keep").unwrap();
    std::fs::write(root.join("target/a/b/old"), b"old").unwrap();
    root
}

fn assert_site_intact(root: &Path, what: &str) {
    assert_eq!(
        std::fs::read(root.join("sentinel")).ok().as_deref(),
        Some(&b"keep"[..]),
        "{what}: the target's sibling was touched"
    );
    assert!(root.join("target").is_dir(), "{what}: the target is gone");
    assert!(root.join("target/a/b").is_dir(), "{what}: a/b is gone");
}

#[test]
fn toc_whiteouts_of_dot_names_are_refused_naming_the_entry() {
    for name in ESCAPING_NAMES {
        for kind in ["reg", "fifo", "char"] {
            let toc = format!(
                r#"{{"version":1,"entries":[{{"name":"a/","type":"dir"}},{{"name":{},"type":"{kind}"}}]}}"#,
                serde_json::to_string(name).unwrap()
            );
            let e = open_err(blob_with_toc(&[], &toc));
            assert!(e.contains("whiteout target"), "{name}: {e}");
            assert!(e.contains(&format!("{name:?}")), "{name}: {e}");
        }
    }
    // Hardlinks may neither be nor point at such a name.
    let toc = r#"{"version":1,"entries":[{"name":"f","type":"fifo"},{"name":"a/.wh...","type":"hardlink","linkName":"f"}]}"#;
    assert!(open_err(blob_with_toc(&[], toc)).contains("whiteout target"));
    let toc = r#"{"version":1,"entries":[{"name":"h","type":"hardlink","linkName":".wh.."}]}"#;
    assert!(open_err(blob_with_toc(&[], toc)).contains("whiteout target"));
}

#[test]
fn converter_refuses_tar_members_with_escaping_whiteouts() {
    for name in ESCAPING_NAMES {
        let tar = tar_of(&[("a/", TarKind::Dir), (name, TarKind::Reg)]);
        let e = convert(&tar).expect_err(name).to_string();
        assert!(e.contains("whiteout target"), "{name}: {e}");
        assert!(e.contains(&format!("{name:?}")), "{name}: {e}");
    }
    let mut t = TarBuilder::new(Vec::new());
    t.append(&HeaderSpec::new("f", TarKind::Reg), b"x").unwrap();
    let mut h = HeaderSpec::new("g", TarKind::Hardlink);
    h.link_name = ".wh...".into();
    t.append(&h, b"").unwrap();
    let e = convert(&t.finish().unwrap()).unwrap_err().to_string();
    assert!(e.contains("hardlink target"), "{e}");
}

#[test]
fn unpacking_escaping_whiteouts_touches_nothing_outside_the_root() {
    for name in ESCAPING_NAMES {
        for mode in [Whiteouts::Apply, Whiteouts::Overlay, Whiteouts::Keep] {
            let tmp = tempfile::tempdir().unwrap();
            let root = extraction_site(tmp.path());
            let tar = tar_of(&[
                ("a/", TarKind::Dir),
                ("a/b/", TarKind::Dir),
                (name, TarKind::Reg),
            ]);
            let opts = ExtractOptions {
                whiteouts: mode,
                ..Default::default()
            };
            let e = unpack_tar(&tar[..], &root.join("target"), tmp.path(), &opts)
                .expect_err(name)
                .to_string();
            assert!(e.contains("whiteout target"), "{name} {mode:?}: {e}");
            assert_site_intact(&root, &format!("{name} {mode:?}"));
            assert_eq!(
                std::fs::read(root.join("target/a/b/old")).unwrap(),
                b"old",
                "{name} {mode:?}"
            );
        }
    }
}

#[test]
fn aufs_metadata_is_skipped_not_applied() {
    let tar = tar_of(&[
        ("a/", TarKind::Dir),
        ("a/keep", TarKind::Reg),
        ("a/.wh..wh.aufs", TarKind::Reg),
        ("a/.wh..wh.plnk/", TarKind::Dir),
        ("a/.wh..wh.plnk/x", TarKind::Reg),
        ("a/.wh.gone", TarKind::Reg),
    ]);
    let blob = convert(&tar).unwrap();
    let r = open(blob).unwrap();
    for mode in [Whiteouts::Apply, Whiteouts::Overlay] {
        let tmp = tempfile::tempdir().unwrap();
        let root = extraction_site(tmp.path());
        std::fs::write(root.join("target/a/.wh.aufs"), b"lower").unwrap();
        let opts = ExtractOptions {
            whiteouts: mode,
            ..Default::default()
        };
        extract_layer(&r, &root.join("target"), &opts).unwrap();
        assert_site_intact(&root, &format!("{mode:?}"));
        let a = root.join("target/a");
        // aufs meta never becomes a whiteout of ".wh.aufs" / ".wh.plnk", nor is it created.
        assert_eq!(std::fs::read(a.join(".wh.aufs")).unwrap(), b"lower");
        assert!(!a.join(".wh.plnk").exists(), "{mode:?}");
        assert!(!a.join(".wh..wh.aufs").exists(), "{mode:?}");
        assert!(!a.join(".wh..wh.plnk").exists(), "{mode:?}");
        assert!(a.join("keep").is_file());
    }
    // The FUSE view hides aufs metadata and shows the one real whiteout.
    let idx = r.index();
    let view = View::new(idx, OpaqueXattr::Trusted);
    let a = idx.lookup("a").unwrap();
    let names: Vec<String> = view.children(a).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["gone", "keep"]);
    assert!(!view.is_opaque(a));
}
