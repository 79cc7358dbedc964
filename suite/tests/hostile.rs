//! The hostile-blob corpus: each malformed or malicious layer gets a clear error naming what is
//! wrong — no panic, no hang, no write outside the root, no byte of a chunk that failed
//! verification. Blobs are built here from a valid layer plus a hand-made TOC, so each case
//! shows exactly what it breaks.

use stargaze_fs::format::extract::{extract_layer, ExtractOptions};
use stargaze_fs::format::footer::gzip_footer;
use stargaze_fs::format::tar::{ustar_file_header, HeaderSpec, TarBuilder, TarKind};
use stargaze_fs::format::verify::verify_layer;
use stargaze_fs::format::{
    convert_layer, FormatError, LayerReader, Limits, OpenOptions, WriterOptions,
};
use stargaze_fs::Digest;
use stargaze_suite::blobs::{blob_with_toc, gz, open, open_err};

fn valid_layer() -> Vec<u8> {
    let mut t = TarBuilder::new(Vec::new());
    t.append(&HeaderSpec::new("a/", TarKind::Dir), b"").unwrap();
    t.append(&HeaderSpec::new("a/file", TarKind::Reg), &[42u8; 10_000])
        .unwrap();
    let tar = t.finish().unwrap();
    let mut out = Vec::new();
    let opts = WriterOptions {
        chunk_size: 4096,
        ..Default::default()
    };
    convert_layer(&tar[..], &mut out, &opts, &mut |_| {}).unwrap();
    out
}

fn d(data: &[u8]) -> String {
    Digest::of(data).to_string()
}

#[test]
fn truncated_blobs_fail_cleanly() {
    let blob = valid_layer();
    for cut in [
        0,
        1,
        10,
        50,
        51,
        52,
        blob.len() / 2,
        blob.len() - 52,
        blob.len() - 1,
    ] {
        let e = open_err(blob[..cut].to_vec());
        assert!(!e.is_empty());
    }
    // Truncated in the payload but with the tail intact: the TOC opens, the chunk read fails.
    let mut b = blob.clone();
    let r = open(b.clone()).unwrap();
    let id = r.index().lookup("a/file").unwrap();
    let c = &r.index().node(id).chunks[1];
    for byte in &mut b[c.blob_offset as usize + 5..c.blob_end as usize] {
        *byte = 0;
    }
    let r = open(b).unwrap();
    assert!(r.read_chunk(id, 1).is_err());
}

#[test]
fn garbage_and_wrong_footers() {
    assert!(open_err(vec![0u8; 200]).contains("no eStargz"));
    assert!(
        open_err(b"just some bytes that are long enough to hold a footer, but no".to_vec())
            .contains("footer")
    );
    let mut blob = valid_layer();
    let n = blob.len();
    blob[n - 20] = b'Z'; // inside the hex offset
    assert!(!open_err(blob).is_empty());
    // TOC offset past the end.
    let mut b = vec![0u8; 100];
    b.extend_from_slice(&gzip_footer(1 << 40));
    assert!(open_err(b).contains("TOC offset"));
}

#[test]
fn toc_garbage_nesting_and_size() {
    let (b, _) = blob_with_toc(&[], "this is not json");
    assert!(open_err(b).contains("invalid TOC"));
    let deep = format!(
        "{{\"version\":1,\"entries\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (b, _) = blob_with_toc(&[], &deep);
    assert!(open_err(b).contains("invalid TOC"));
    // Oversized TOC and too many entries against tight limits.
    let many: Vec<String> = (0..2000)
        .map(|i| format!("{{\"name\":\"f{i}\",\"type\":\"fifo\"}}"))
        .collect();
    let toc = format!("{{\"version\":1,\"entries\":[{}]}}", many.join(","));
    let (b, _) = blob_with_toc(&[], &toc);
    let tight = OpenOptions {
        limits: Limits {
            max_entries: 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    let e = LayerReader::open(b.clone(), &tight)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("entries"), "{e}");
    let tiny = OpenOptions {
        limits: Limits {
            max_toc_json: 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    let e = LayerReader::open(b, &tiny).err().unwrap().to_string();
    assert!(e.contains("limit"), "{e}");
}

#[test]
fn toc_bomb_is_bounded() {
    // A TOC member that inflates to 64 MiB of zeros after a valid header claiming 64 MiB.
    let mut t = ustar_file_header("stargz.index.json", 64 << 20, 0o444).to_vec();
    t.resize(t.len() + (64 << 20), b' ');
    let member = gz(&t, 9);
    assert!(member.len() < 1 << 20);
    let mut blob = member.clone();
    blob.extend_from_slice(&gzip_footer(0));
    let opts = OpenOptions {
        limits: Limits {
            max_toc_json: 1 << 20,
            ..Default::default()
        },
        ..Default::default()
    };
    let e = LayerReader::open(blob, &opts).err().unwrap().to_string();
    assert!(e.contains("more than") || e.contains("limit"), "{e}");
}

#[test]
fn hostile_names_are_refused() {
    for (name, want) in [
        ("../escape", ".."),
        ("a/../../escape", ".."),
        ("a\u{0}b", "NUL"),
    ] {
        let toc = format!(
            "{{\"version\":1,\"entries\":[{{\"name\":{},\"type\":\"fifo\"}}]}}",
            serde_json::to_string(name).unwrap()
        );
        let (b, _) = blob_with_toc(&[], &toc);
        let e = open_err(b);
        assert!(e.contains(want), "{name:?}: {e}");
    }
    let toc =
        r#"{"version":1,"entries":[{"name":"x","type":"fifo"},{"name":"./x","type":"fifo"}]}"#;
    assert!(open_err(blob_with_toc(&[], toc).0).contains("duplicate"));
    let toc =
        r#"{"version":1,"entries":[{"name":"h","type":"hardlink","linkName":"../../etc/shadow"}]}"#;
    assert!(open_err(blob_with_toc(&[], toc).0).contains(".."));
    let toc = format!(
        r#"{{"version":1,"entries":[{{"name":"{}","type":"fifo"}}]}}"#,
        "n".repeat(5000)
    );
    assert!(open_err(blob_with_toc(&[], &toc).0).contains("too long"));
}

#[test]
fn absolute_names_and_symlink_escapes_stay_inside_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let payload = b"pwned".to_vec();
    let toc = format!(
        r#"{{"version":1,"entries":[
            {{"name":"/abs","type":"reg","size":5,"offset":OFF,"chunkDigest":"{}"}},
            {{"name":"esc","type":"symlink","linkName":"{}"}},
            {{"name":"esc/file","type":"fifo"}}
        ]}}"#,
        d(&payload),
        outside.display()
    );
    // First pass to learn the payload offset (always 0 for the first member).
    let toc = toc.replace("OFF", "0").replace("\"offset\":0,", "");
    let (b, _) = blob_with_toc(std::slice::from_ref(&payload), &toc);
    // The symlink is a leaf in the TOC, so "esc/file" under it is refused at index time.
    let e = open_err(b);
    assert!(e.contains("not one") || e.contains("directory"), "{e}");

    // A layer whose symlink is fine, extracted into a directory that already holds a symlink
    // pointing outside: extraction must not write through it.
    let toc = format!(
        r#"{{"version":1,"entries":[{{"name":"/abs","type":"reg","size":5,"chunkDigest":"{}"}},{{"name":"pre/inner","type":"fifo"}}]}}"#,
        d(&payload)
    );
    let (b, _) = blob_with_toc(&[payload], &toc);
    let r = open(b).unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("pre")).unwrap();
    let e = extract_layer(&r, &root, &ExtractOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("never followed"), "{e}");
    assert_eq!(std::fs::read(root.join("abs")).unwrap(), b"pwned");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "wrote outside the root"
    );
}

#[test]
fn chunk_offsets_out_of_range_or_overlapping() {
    let data = vec![1u8; 100];
    let dg = d(&data);
    for (toc, want) in [
        (
            format!(
                r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":100,"offset":999999,"chunkDigest":"{dg}"}}]}}"#
            ),
            "past the payload",
        ),
        (
            format!(
                r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":100,"chunkSize":60,"chunkDigest":"{dg}"}},{{"name":"f","type":"chunk","chunkOffset":50,"chunkDigest":"{dg}"}}]}}"#
            ),
            "gap or overlap",
        ),
        (
            format!(
                r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":100,"chunkDigest":"{dg}"}},{{"name":"g","type":"reg","size":100,"chunkDigest":"{dg}"}}]}}"#
            ),
            "used twice",
        ),
        (
            format!(
                r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":100,"chunkSize":40,"chunkDigest":"{dg}"}}]}}"#
            ),
            "cover",
        ),
        (
            format!(
                r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":100,"innerOffset":-4,"chunkDigest":"{dg}"}}]}}"#
            ),
            "negative",
        ),
    ] {
        let (b, _) = blob_with_toc(std::slice::from_ref(&data), &toc);
        let e = open_err(b);
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn chunk_digest_mismatch_never_returns_bytes() {
    let good = vec![7u8; 1000];
    let toc = format!(
        r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":1000,"chunkDigest":"{}"}}]}}"#,
        d(b"something else")
    );
    let (b, _) = blob_with_toc(&[good], &toc);
    let r = open(b).unwrap();
    let id = r.index().lookup("f").unwrap();
    let e = r.read_file(id, 0, 1000).unwrap_err();
    assert!(matches!(e, FormatError::ChunkDigest { .. }), "{e}");
    assert!(verify_layer(&r, |_| {}).is_err());
    let mut sink = Vec::new();
    assert!(r.copy_file(id, &mut sink).is_err());
    assert!(
        sink.is_empty(),
        "bytes of an unverified chunk reached the writer"
    );
}

#[test]
fn chunk_bomb_inflates_only_what_the_toc_claims() {
    // The member inflates to 256 MiB; the TOC claims 1 KiB with the digest of 1 KiB of zeros:
    // exactly 1 KiB is inflated and it verifies; a claim past the member end fails.
    let bomb = vec![0u8; 256 << 20];
    let member_src = bomb;
    let toc = format!(
        r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":1024,"chunkDigest":"{}"}}]}}"#,
        d(&[0u8; 1024])
    );
    let (b, _) = blob_with_toc(&[member_src], &toc);
    let r = open(b).unwrap();
    let id = r.index().lookup("f").unwrap();
    assert_eq!(r.read_file(id, 0, 1024).unwrap(), vec![0u8; 1024]);
    let big = Limits::default().max_chunk + 1;
    let toc = format!(
        r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":{big},"chunkDigest":"{}"}}]}}"#,
        d(b"")
    );
    let (b, _) = blob_with_toc(&[vec![0u8; 10]], &toc);
    assert!(open_err(b).contains("out of range"));
}

#[test]
fn hostile_tar_inputs_to_the_converter() {
    let mut out = Vec::new();
    for bad in [
        vec![0xffu8; 1024],
        {
            let mut t = ustar_file_header("f", 5000, 0o644).to_vec();
            t.extend_from_slice(b"short");
            t
        },
        {
            // A PAX header whose record length lies.
            let mut t = TarBuilder::new(Vec::new());
            let mut s = HeaderSpec::new("x", TarKind::Reg);
            s.xattrs.insert("user.a".into(), b"b".to_vec());
            t.append(&s, b"").unwrap();
            let mut v = t.finish().unwrap();
            v[512] = b'9';
            v[513] = b'9';
            v
        },
    ] {
        let e = convert_layer(&bad[..], &mut out, &WriterOptions::default(), &mut |_| {});
        assert!(e.is_err());
    }
    let ok = TarBuilder::new(Vec::new()).finish().unwrap();
    let zero = WriterOptions {
        chunk_size: 0,
        ..Default::default()
    };
    assert!(convert_layer(&ok[..], &mut out, &zero, &mut |_| {}).is_err());
}

#[test]
fn converter_refuses_names_readers_would_refuse() {
    for names in [vec!["a", "./a"], vec!["../up"]] {
        let mut t = TarBuilder::new(Vec::new());
        for n in &names {
            t.append(&HeaderSpec::new(n, TarKind::Fifo), b"").unwrap();
        }
        let tar = t.finish().unwrap();
        let mut out = Vec::new();
        let e = convert_layer(&tar[..], &mut out, &WriterOptions::default(), &mut |_| {})
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("twice") || e.contains(".."), "{names:?}: {e}");
    }
}
