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
use stargaze_suite::blobs::{blob_with_toc, gz, open, open_err};
use std::path::Path;

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
            let e = open_err(blob_with_toc(&[], &toc).0);
            assert!(e.contains("whiteout target"), "{name}: {e}");
            assert!(e.contains(&format!("{name:?}")), "{name}: {e}");
        }
    }
    // Hardlinks may neither be nor point at such a name.
    let toc = r#"{"version":1,"entries":[{"name":"f","type":"fifo"},{"name":"a/.wh...","type":"hardlink","linkName":"f"}]}"#;
    assert!(open_err(blob_with_toc(&[], toc).0).contains("whiteout target"));
    let toc = r#"{"version":1,"entries":[{"name":"h","type":"hardlink","linkName":".wh.."}]}"#;
    assert!(open_err(blob_with_toc(&[], toc).0).contains("whiteout target"));
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

// ---- Class 2: opening a TOC costs bounded memory ------------------------------------------

/// Peak resident memory of this process so far, in KiB.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A TOC of `n` fifos (about 35 JSON bytes each) over a payload of `payload_mib` gzip
/// members of 1 MiB of zeros (about 1 KiB each).
fn tiny_entries_blob(n: usize, payload_mib: usize) -> Vec<u8> {
    let mut toc = String::with_capacity(n * 40 + 64);
    toc.push_str(r#"{"version":1,"entries":["#);
    for i in 0..n {
        if i > 0 {
            toc.push(',');
        }
        toc.push_str(&format!(
            r#"{{"name":"d{}/f{}","type":"fifo"}}"#,
            i / 1000,
            i % 1000
        ));
    }
    toc.push_str("]}");
    let member = gz(&vec![0u8; 1 << 20], 9);
    let payload = vec![member; payload_mib];
    let mut t = ustar_file_header("stargz.index.json", toc.len() as u64, 0o444).to_vec();
    t.extend_from_slice(toc.as_bytes());
    t.resize(t.len().div_ceil(512) * 512 + 1024, 0);
    let mut blob: Vec<u8> = payload.concat();
    let toc_off = blob.len() as u64;
    blob.extend_from_slice(&gz(&t, 1));
    blob.extend_from_slice(&gzip_footer(toc_off));
    blob
}

/// Run by [`many_tiny_entries_cost_bounded_memory`] in a child process: opens the blob named
/// by `STARGAZE_MEMORY_PROBE` and prints the outcome and the peak memory it added.
#[test]
fn memory_probe_child() {
    let Some(path) = std::env::var_os("STARGAZE_MEMORY_PROBE") else {
        return;
    };
    let blob = stargaze_fs::format::FileBlob::open(Path::new(&path)).unwrap();
    let before = vm_hwm_kib();
    let outcome = match LayerReader::open(blob, &OpenOptions::default()) {
        Ok(r) => format!("ok {}", r.index().entries.len()),
        Err(e) => format!("err {e}"),
    };
    println!("probe-outcome: {outcome}");
    println!(
        "probe-hwm-delta-kib: {}",
        vm_hwm_kib().saturating_sub(before)
    );
}

/// Opens `blob` in a child process; returns its outcome line and added peak memory in MiB.
fn probe(blob: &[u8]) -> (String, u64) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("blob");
    std::fs::write(&path, blob).unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "memory_probe_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STARGAZE_MEMORY_PROBE", &path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "probe failed: {text}");
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.split_once(k).map(|(_, v)| v))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .trim()
            .to_string()
    };
    let kib: u64 = field("probe-hwm-delta-kib:").parse().unwrap();
    (field("probe-outcome:"), kib >> 10)
}

/// Peak memory opening a hostile TOC may add, in MiB: the JSON (70 MB here), the index-build
/// bound of `Limits::max_index_bytes` and some slack. Before the bound, the 2M-entry TOC
/// below took about 1.7 GB.
const OPEN_PEAK_MIB: u64 = 700;

#[test]
fn many_tiny_entries_cost_bounded_memory() {
    // 2M entries, no payload to hold their tar headers: refused early, cheaply.
    let (outcome, mib) = probe(&tiny_entries_blob(2_000_000, 0));
    eprintln!("2M entries, empty payload: {outcome:.120} — peak +{mib} MiB");
    assert!(outcome.starts_with("err limit exceeded"), "{outcome}");
    assert!(outcome.contains("payload can hold"), "{outcome}");
    assert!(mib < 200, "{mib} MiB");
    // 2M entries over a payload that could hold 2M tar headers (1.1 GiB of zeros in ~1.2 MB):
    // refused by the index memory bound, or indexed within it.
    let (outcome, mib) = probe(&tiny_entries_blob(2_000_000, 1100));
    eprintln!("2M entries, 1.1 GiB payload: {outcome:.120} — peak +{mib} MiB");
    assert!(
        outcome.starts_with("ok") || outcome.starts_with("err limit exceeded"),
        "{outcome}"
    );
    assert!(mib < OPEN_PEAK_MIB, "opening took {mib} MiB");
}

// ---- Class 3: the tar stream and the TOC tell the same story ------------------------------

use stargaze_fs::format::toc::Toc;
use stargaze_fs::format::verify::verify_layer;

/// A converted layer with a dir, two files of equal content (in different frames), a
/// symlink, a fifo and a hardlink.
fn story_layer() -> Vec<u8> {
    let mut t = TarBuilder::new(Vec::new());
    let mut dir = HeaderSpec::new("a/", TarKind::Dir);
    dir.uid = 7;
    t.append(&dir, b"").unwrap();
    t.append(&HeaderSpec::new("a/one", TarKind::Reg), &[1u8; 3000])
        .unwrap();
    t.append(&HeaderSpec::new("a/two", TarKind::Reg), &[1u8; 3000])
        .unwrap();
    let mut l = HeaderSpec::new("a/link", TarKind::Symlink);
    l.link_name = "one".into();
    t.append(&l, b"").unwrap();
    t.append(&HeaderSpec::new("a/pipe", TarKind::Fifo), b"")
        .unwrap();
    let mut h = HeaderSpec::new("a/hard", TarKind::Hardlink);
    h.link_name = "a/one".into();
    t.append(&h, b"").unwrap();
    convert(&t.finish().unwrap()).unwrap()
}

/// `blob`'s payload with its TOC replaced by `edit(toc)`; `extra` is appended to the TOC
/// member's tar after the TOC entry.
fn retoc(blob: &[u8], edit: impl FnOnce(&mut Toc), extra: &[u8]) -> Vec<u8> {
    let r = open(blob.to_vec()).unwrap();
    let mut toc: Toc = serde_json::from_slice(r.toc_json()).unwrap();
    edit(&mut toc);
    let json = toc.to_json();
    let end = r.index().payload_end as usize;
    let mut out = blob[..end].to_vec();
    let mut t = ustar_file_header("stargz.index.json", json.len() as u64, 0o444).to_vec();
    t.extend_from_slice(&json);
    t.resize(t.len().div_ceil(512) * 512, 0);
    t.extend_from_slice(extra);
    t.resize(t.len() + 1024, 0);
    out.extend_from_slice(&gz(&t, 6));
    out.extend_from_slice(&gzip_footer(end as u64));
    out
}

fn entry<'t>(toc: &'t mut Toc, name: &str) -> &'t mut stargaze_fs::format::toc::TocEntry {
    toc.entries
        .iter_mut()
        .find(|e| e.name == name && e.kind != "chunk")
        .unwrap_or_else(|| panic!("no {name}"))
}

/// Verifies `blob`: the lazy view must open (the TOC is self-consistent), verification fails.
fn verify_err(blob: Vec<u8>) -> String {
    let r = open(blob).expect("the doctored TOC is self-consistent and opens");
    match verify_layer(&r, |_| {}) {
        Ok(rep) => panic!("verified: {rep:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn verify_passes_an_honest_layer_and_reads_its_tar_stream() {
    let blob = story_layer();
    let rep = verify_layer(&open(blob.clone()).unwrap(), |_| {}).unwrap();
    // landmark, a/, one, two, link, pipe, hard
    assert_eq!(rep.tar_entries, 7, "{rep:?}");
    assert_eq!(
        verify_layer(&open(retoc(&blob, |_| {}, b"")).unwrap(), |_| {}).unwrap(),
        rep
    );
}

#[test]
fn verify_names_the_entry_and_field_the_toc_lies_about() {
    let blob = story_layer();
    type Edit = Box<dyn FnOnce(&mut Toc)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "a/one",
            Box::new(|t| entry(t, "a/one").mode = 0o4755),
            "mode differs",
        ),
        ("a/", Box::new(|t| entry(t, "a/").uid = 0), "uid differs"),
        (
            "a/pipe",
            Box::new(|t| entry(t, "a/pipe").gid = 5),
            "gid differs",
        ),
        (
            "a/link",
            Box::new(|t| entry(t, "a/link").link_name = "/etc/shadow".into()),
            "link target differs",
        ),
        (
            "a/pipe",
            Box::new(|t| {
                let e = entry(t, "a/pipe");
                e.name = "a/other".into();
            }),
            "name differs",
        ),
        (
            "a/pipe",
            Box::new(|t| {
                let e = entry(t, "a/pipe");
                e.kind = "char".into();
                e.dev_major = 1;
                e.dev_minor = 1;
            }),
            "type differs",
        ),
        (
            "a/hard",
            Box::new(|t| entry(t, "a/hard").link_name = "a/two".into()),
            "hardlink target differs",
        ),
        (
            "a/pipe",
            Box::new(|t| t.entries.retain(|e| e.name != "a/pipe")),
            "tar header says \"a/pipe\"",
        ),
    ];
    for (name, edit, want) in cases {
        let e = verify_err(retoc(&blob, edit, b""));
        assert!(e.contains(want), "{name}: {e}");
        let shown = if want == "name differs" {
            "a/pipe"
        } else {
            name.trim_end_matches('/')
        };
        assert!(e.contains(&format!("{shown:?}")), "{name}: {e}");
    }
}

#[test]
fn verify_checks_each_chunk_lies_where_the_toc_puts_it() {
    // a/one and a/two hold the same bytes, so swapping their frames keeps every chunk
    // digest right: only the tar stream shows that the lazy view is not the tar's.
    let blob = story_layer();
    let swapped = retoc(
        &blob,
        |t| {
            let one = entry(t, "a/one").offset;
            let two = entry(t, "a/two").offset;
            entry(t, "a/one").offset = two;
            entry(t, "a/two").offset = one;
        },
        b"",
    );
    let e = verify_err(swapped);
    assert!(e.contains("a/one") && e.contains("the TOC puts it"), "{e}");
}

#[test]
fn verify_refuses_files_hidden_from_the_toc() {
    // After the TOC entry in its own member: a scanner extracting the blob gets this file,
    // the lazy view never shows it.
    let blob = story_layer();
    let mut hidden = TarBuilder::new(Vec::new());
    hidden
        .append(
            &HeaderSpec::new("etc/cron.d/evil", TarKind::Reg),
            b"* * * * * root sh",
        )
        .unwrap();
    let mut extra = hidden.finish().unwrap();
    extra.truncate(extra.len() - 1024);
    let e = verify_err(retoc(&blob, |_| {}, &extra));
    assert!(
        e.contains("etc/cron.d/evil") && e.contains("after the TOC"),
        "{e}"
    );
}
