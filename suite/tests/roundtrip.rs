//! tar → eStargz → read/extract equals the tar, for every entry type and the chunk-boundary
//! sizes, in gzip and zstd, with and without a prioritized file list.

use stargaze_fs::format::extract::{extract_layer, ExtractOptions};
use stargaze_fs::format::tar::{HeaderSpec, TarBuilder, TarKind, TarReader};
use stargaze_fs::format::verify::verify_layer;
use stargaze_fs::format::{convert_layer, Compression, LayerReader, OpenOptions, WriterOptions};
use stargaze_fs::image::sample::sample_bytes;
use stargaze_fs::Digest;
use stargaze_suite::{assert_same_tree, have, is_root, require, run, tree};
use std::io::Read;

const CHUNK: usize = 4096;

struct Item {
    spec: HeaderSpec,
    data: Vec<u8>,
}

fn item(path: &str, kind: TarKind, data: Vec<u8>) -> Item {
    let mut spec = HeaderSpec::new(path, kind);
    spec.mtime = 1_700_000_123;
    Item { spec, data }
}

/// Every entry type and the interesting sizes around the chunk size.
fn every_kind() -> Vec<Item> {
    let mut v = vec![
        item("./", TarKind::Dir, vec![]),
        item("d/", TarKind::Dir, vec![]),
    ];
    for (i, size) in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17]
        .into_iter()
        .enumerate()
    {
        let mut it = item(
            &format!("d/size-{size}"),
            TarKind::Reg,
            sample_bytes(i as u64, size, 50),
        );
        it.spec.mode = 0o640;
        it.spec.uid = 1000 + i as u64;
        it.spec.gid = 2000;
        v.push(it);
    }
    let mut x = item("d/xattrs", TarKind::Reg, b"x".to_vec());
    x.spec.xattrs.insert("user.one".into(), b"1".to_vec());
    x.spec.xattrs.insert("user.bin".into(), vec![0, 255, 7]);
    v.push(x);
    let mut s = item("d/link", TarKind::Symlink, vec![]);
    s.spec.link_name = "size-1".into();
    v.push(s);
    let mut s = item("d/abs-link", TarKind::Symlink, vec![]);
    s.spec.link_name = "/etc/passwd".into();
    v.push(s);
    let mut h = item("d/hard", TarKind::Hardlink, vec![]);
    h.spec.link_name = format!("d/size-{}", 5 * CHUNK + 17);
    v.push(h);
    let mut c = item("d/char", TarKind::Char, vec![]);
    c.spec.dev = (1, 3);
    v.push(c);
    let mut b = item("d/block", TarKind::Block, vec![]);
    b.spec.dev = (7, 0);
    v.push(b);
    v.push(item("d/fifo", TarKind::Fifo, vec![]));
    let long = format!("d/{}/{}", "l".repeat(120), "deep-file-name-".repeat(8));
    v.push(item(&long, TarKind::Reg, b"long name".to_vec()));
    v.push(item("d/ünïcødé-文件", TarKind::Reg, b"unicode".to_vec()));
    let mut su = item("d/setuid", TarKind::Reg, b"#!".to_vec());
    su.spec.mode = 0o4755;
    v.push(su);
    v.push(item("w/", TarKind::Dir, vec![]));
    v.push(item("w/.wh.gone", TarKind::Reg, vec![]));
    v.push(item("o/", TarKind::Dir, vec![]));
    v.push(item("o/.wh..wh..opq", TarKind::Reg, vec![]));
    v.push(item("o/kept", TarKind::Reg, b"kept".to_vec()));
    v
}

fn tar_of(items: &[Item]) -> Vec<u8> {
    let mut t = TarBuilder::new(Vec::new());
    for it in items {
        t.append(&it.spec, &it.data).unwrap();
    }
    t.finish().unwrap()
}

fn convert(
    tar: &[u8],
    compression: Compression,
    prioritized: Vec<String>,
) -> (Vec<u8>, stargaze_fs::format::ConvertReport) {
    let opts = WriterOptions {
        compression,
        level: compression.default_level(),
        chunk_size: CHUNK as u64,
        prioritized,
        threads: 2,
    };
    let mut out = Vec::new();
    let rep = convert_layer(tar, &mut out, &opts, &mut |_| {}).unwrap();
    (out, rep)
}

fn decompress_all(blob: &[u8], c: Compression) -> Vec<u8> {
    let mut out = Vec::new();
    match c {
        Compression::Gzip => {
            flate2::read::MultiGzDecoder::new(blob)
                .read_to_end(&mut out)
                .unwrap();
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(blob)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
        }
    }
    out
}

/// (raw header bytes, payload) of each entry of a tar stream.
fn entries(tar: &[u8]) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let mut r = TarReader::new(tar);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        let mut data = vec![0u8; e.size as usize];
        r.read_data_exact(&mut data).unwrap();
        out.push((e.path.clone(), e.raw_header.clone(), data));
    }
    out
}

#[test]
fn decompressed_stream_holds_exactly_the_input_entries() {
    let items = every_kind();
    let tar = tar_of(&items);
    for c in [Compression::Gzip, Compression::Zstd] {
        let (blob, rep) = convert(&tar, c, vec![]);
        assert_eq!(rep.blob_digest, Digest::of(&blob));
        assert_eq!(rep.blob_size, blob.len() as u64);
        let plain = decompress_all(&blob, c);
        assert_eq!(rep.diff_id, Digest::of(&plain), "{c:?} diff_id");
        assert_eq!(rep.uncompressed_size, plain.len() as u64);
        let got = entries(&plain);
        let want = entries(&tar);
        let got_user: Vec<_> = got
            .iter()
            .filter(|(p, _, _)| p != ".no.prefetch.landmark" && p != "stargz.index.json")
            .cloned()
            .collect();
        assert_eq!(got_user, want, "{c:?}: entries differ");
        assert_eq!(got[0].0, ".no.prefetch.landmark");
        if c == Compression::Gzip {
            assert_eq!(got.last().unwrap().0, "stargz.index.json");
        }
    }
}

#[test]
fn reader_serves_every_entry_as_written() {
    let items = every_kind();
    let tar = tar_of(&items);
    for c in [Compression::Gzip, Compression::Zstd] {
        let (blob, rep) = convert(&tar, c, vec![]);
        let r = LayerReader::open(
            blob,
            &OpenOptions {
                toc_digest: Some(rep.toc_digest),
                ..Default::default()
            },
        )
        .unwrap();
        let v = verify_layer(&r, |_| {}).unwrap();
        assert_eq!(v.chunks, rep.chunks);
        let idx = r.index();
        for it in &items {
            let id = idx
                .lookup(&it.spec.path)
                .unwrap_or_else(|| panic!("{} missing", it.spec.path));
            let n = idx.node(id);
            match it.spec.kind {
                TarKind::Reg => {
                    assert_eq!(n.size, it.data.len() as u64, "{}", it.spec.path);
                    assert_eq!(
                        r.read_file(id, 0, n.size).unwrap(),
                        it.data,
                        "{}",
                        it.spec.path
                    );
                    assert_eq!(n.mode, it.spec.mode);
                    assert_eq!((n.uid, n.gid), (it.spec.uid as u32, it.spec.gid as u32));
                    assert_eq!(n.mtime, it.spec.mtime);
                    let expect_chunks = it.data.len().div_ceil(CHUNK);
                    assert_eq!(n.chunks.len(), expect_chunks, "{}", it.spec.path);
                    for (k, v) in &it.spec.xattrs {
                        assert_eq!(n.xattrs().get(k), Some(v));
                    }
                }
                TarKind::Symlink => assert_eq!(n.link_target(), it.spec.link_name),
                TarKind::Char | TarKind::Block => {
                    assert_eq!(n.dev(), it.spec.dev)
                }
                TarKind::Hardlink => {
                    assert_eq!(Some(id), idx.lookup(&it.spec.link_name));
                    assert_eq!(n.nlink, 2);
                }
                _ => {}
            }
        }
        // Random-access reads across chunk boundaries.
        let big = idx.lookup(&format!("d/size-{}", 5 * CHUNK + 17)).unwrap();
        let all = r.read_file(big, 0, u64::MAX).unwrap();
        for (off, len) in [
            (0u64, 1u64),
            (CHUNK as u64 - 1, 2),
            (3 * CHUNK as u64 - 5, CHUNK as u64 + 10),
            (5 * CHUNK as u64 + 16, 100),
        ] {
            let got = r.read_file(big, off, len).unwrap();
            let end = ((off + len) as usize).min(all.len());
            assert_eq!(got, &all[off as usize..end]);
        }
    }
}

#[test]
fn prioritized_files_come_first_then_the_landmark() {
    let items = every_kind();
    let tar = tar_of(&items);
    let (blob, rep) = convert(
        &tar,
        Compression::Gzip,
        vec!["/d/hard".into(), "o/kept".into(), "not/there".into()],
    );
    assert_eq!(rep.prioritized, 2);
    let r = LayerReader::open(blob, &OpenOptions::default()).unwrap();
    let idx = r.index();
    let order: Vec<&str> = idx.entries.iter().map(|e| e.path.as_str()).collect();
    let lm = order
        .iter()
        .position(|p| *p == ".prefetch.landmark")
        .unwrap();
    let before = &order[..lm];
    // Parents first, the hardlink's target before the hardlink.
    assert_eq!(before[0], "d");
    let target = format!("d/size-{}", 5 * CHUNK + 17);
    let t = before.iter().position(|p| *p == target).unwrap();
    let h = before.iter().position(|p| *p == "d/hard").unwrap();
    assert!(t < h);
    assert!(before.contains(&"o/kept"));
    let pre: Vec<String> = idx.prefetch.iter().map(|&n| idx.path(n)).collect();
    assert!(
        pre.contains(&target) && pre.iter().any(|p| p == "o/kept"),
        "{pre:?}"
    );
    verify_layer(&r, |_| {}).unwrap();
    // Every entry is still there exactly once.
    assert_eq!(order.len(), items.len() + 1);
}

#[test]
fn extraction_equals_gnu_tar() {
    if !require(is_root(), "root (devices, ownership)") || !require(have("tar"), "GNU tar") {
        return;
    }
    let items = every_kind();
    let tar = tar_of(&items);
    let tmp = tempfile::tempdir().unwrap();
    let tar_path = tmp.path().join("in.tar");
    std::fs::write(&tar_path, &tar).unwrap();
    let want_dir = tmp.path().join("gnu");
    std::fs::create_dir(&want_dir).unwrap();
    run(std::process::Command::new("tar")
        .args(["--same-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(&want_dir));
    let want = tree(&want_dir, &[]);
    for c in [Compression::Gzip, Compression::Zstd] {
        let (blob, _) = convert(&tar, c, vec![]);
        let r = LayerReader::open(blob, &OpenOptions::default()).unwrap();
        let dir = tmp.path().join(format!("{c:?}"));
        let opts = ExtractOptions {
            whiteouts: stargaze_fs::format::extract::Whiteouts::Keep,
            ..Default::default()
        };
        extract_layer(&r, &dir, &opts).unwrap();
        assert_same_tree(&want, &tree(&dir, &[]));
        // Overlay form: whiteout as 0/0 char device, opaque dir xattr.
        let odir = tmp.path().join(format!("{c:?}-overlay"));
        extract_layer(&r, &odir, &ExtractOptions::default()).unwrap();
        let t = tree(&odir, &[]);
        assert_eq!(t["w/gone"].kind, 'c');
        assert_eq!(t["w/gone"].rdev, 0);
        assert!(!t.contains_key("w/.wh.gone"));
        assert_eq!(
            t["o"]
                .xattrs
                .get("trusted.overlay.opaque")
                .map(Vec::as_slice),
            Some(&b"y"[..])
        );
    }
}

#[test]
fn converts_compressed_and_estargz_inputs() {
    let items = every_kind();
    let tar = tar_of(&items);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::bulk::compress(&tar, 3).unwrap();
    let (_, base) = convert(&tar, Compression::Gzip, vec![]);
    for input in [gz, zst] {
        let (_, rep) = convert(&input, Compression::Gzip, vec![]);
        assert_eq!(rep.diff_id, base.diff_id);
        assert_eq!(rep.toc_digest, base.toc_digest);
    }
    // Re-converting an eStargz drops its old TOC and landmark: same result again.
    let (esgz, _) = convert(&tar, Compression::Gzip, vec![]);
    let (_, again) = convert(&esgz, Compression::Gzip, vec![]);
    assert_eq!(again.diff_id, base.diff_id);
}

#[test]
fn large_layer_streams_through_many_chunks() {
    // 40 MiB in 1 MiB chunks on two threads; every chunk verifies.
    let mut t = TarBuilder::new(Vec::new());
    for i in 0..4 {
        let mut s = HeaderSpec::new(&format!("big{i}"), TarKind::Reg);
        s.mode = 0o644;
        t.append(&s, &sample_bytes(i, 10 << 20, 30)).unwrap();
    }
    let tar = t.finish().unwrap();
    let opts = WriterOptions {
        chunk_size: 1 << 20,
        level: 1,
        threads: 2,
        ..Default::default()
    };
    let mut out = Vec::new();
    let rep = convert_layer(&tar[..], &mut out, &opts, &mut |_| {}).unwrap();
    assert_eq!(rep.chunks, 40 + 1);
    let r = LayerReader::open(out, &OpenOptions::default()).unwrap();
    assert_eq!(verify_layer(&r, |_| {}).unwrap().bytes, (40 << 20) + 1);
}

#[test]
fn legacy_stargz_and_zstd_chunked_footers_read_the_same_layer() {
    let tar = tar_of(&every_kind());
    // Legacy stargz: the same blob with the 47-byte crfs footer instead of the 51-byte one.
    let (blob, rep) = convert(&tar, Compression::Gzip, vec![]);
    let r = LayerReader::open(blob.clone(), &OpenOptions::default()).unwrap();
    let toc_off = r.index().payload_end;
    let mut legacy = blob[..blob.len() - 51].to_vec();
    legacy.extend_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0]);
    legacy.extend_from_slice(format!("{toc_off:016x}STARGZ").as_bytes());
    legacy.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    let l = LayerReader::open(
        legacy,
        &OpenOptions {
            toc_digest: Some(rep.toc_digest),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        l.footer(),
        stargaze_fs::format::footer::Footer::LegacyGzip { .. }
    ));
    assert_eq!(verify_layer(&l, |_| {}).unwrap().chunks, rep.chunks);

    // containers/storage zstd:chunked: 64-byte footer with the capital-N magic.
    let (zblob, zrep) = convert(&tar, Compression::Zstd, vec![]);
    let pos: Vec<u64> = zrep
        .zstd_manifest_position
        .as_ref()
        .unwrap()
        .split(':')
        .map(|p| p.parse().unwrap())
        .collect();
    let mut z = zblob[..zblob.len() - 48].to_vec();
    z.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
    z.extend_from_slice(&64u32.to_le_bytes());
    for v in [pos[0], pos[1], pos[2], 1, 0, 0, 0] {
        z.extend_from_slice(&v.to_le_bytes());
    }
    z.extend_from_slice(b"GNUlInUx");
    let zr = LayerReader::open(
        z.clone(),
        &OpenOptions {
            toc_digest: Some(zrep.toc_digest),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(verify_layer(&zr, |_| {}).unwrap().chunks, zrep.chunks);
    // Located by the annotations alone when the footer is unreadable.
    let n = z.len();
    z[n - 8..].copy_from_slice(b"XXXXXXXX");
    assert!(LayerReader::open(z.clone(), &OpenOptions::default()).is_err());
    let mut ann = std::collections::BTreeMap::new();
    ann.insert(
        "io.github.containers.zstd-chunked.manifest-position".to_string(),
        zrep.zstd_manifest_position.clone().unwrap(),
    );
    ann.insert(
        "io.github.containers.zstd-chunked.manifest-checksum".to_string(),
        zrep.zstd_manifest_checksum.unwrap().to_string(),
    );
    let by_ann = LayerReader::open(
        z,
        &OpenOptions {
            annotations: ann,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(by_ann.toc_digest(), zrep.toc_digest);
    assert_eq!(verify_layer(&by_ann, |_| {}).unwrap().chunks, zrep.chunks);
}
