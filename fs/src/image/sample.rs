//! A realistic sample image made offline: a few thousand small files in a doc-tree, large
//! files spanning several chunks, symlinks, hardlinks, xattrs, and a second layer with a
//! whiteout and an opaque directory; busybox from the host when it is installed. The demo,
//! the tests and the benchmarks all start from it.

use super::build::{write_image, ImageConfig, LayerInput};
use super::layout::OciLayout;
use super::ImageError;
use crate::format::tar::{HeaderSpec, TarBuilder, TarKind};
use crate::Digest;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Shape of the sample image.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// Number of small files in the doc tree.
    pub small_files: usize,
    /// Sizes of the large files, in bytes.
    pub large_files: Vec<usize>,
    /// Include `/bin/busybox` from the host (with applet symlinks) when present.
    pub busybox: Option<PathBuf>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            small_files: 3000,
            large_files: vec![9 << 20, 5 << 20 | 12_345],
            busybox: Some(PathBuf::from("/bin/busybox")).filter(|p| p.is_file()),
        }
    }
}

/// What the sample holds.
#[derive(Debug, Clone, Default)]
pub struct SampleStats {
    /// Entries written over all layers.
    pub entries: usize,
    /// File bytes written over all layers.
    pub bytes: u64,
    /// Whether busybox is inside.
    pub busybox: bool,
    /// Manifest digest.
    pub manifest: Option<Digest>,
}

/// Deterministic text-like bytes: compressible like real files, different per seed.
pub fn sample_bytes(seed: u64, len: usize, entropy: u8) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "layer ",
        "chunk ",
        "lazy ",
        "pull ",
        "image ",
        "stargz ",
        "fuse ",
        "verify ",
        "registry ",
        "range ",
        "toc ",
        "digest ",
        "overlay ",
        "runc ",
        "snapshot ",
        "\n",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (x >> 56) as u8 % 100 < entropy {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(WORDS[(x & 15) as usize].as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn io(e: std::io::Error) -> ImageError {
    ImageError::io("writing sample layer", e)
}

/// Writes the two sample layer tars into `dir` and returns their paths.
pub fn write_sample_layers(
    dir: &Path,
    opts: &SampleOptions,
    stats: &mut SampleStats,
) -> Result<Vec<PathBuf>, ImageError> {
    let base = dir.join("base.tar");
    let f = std::fs::File::create(&base).map_err(io)?;
    let mut t = TarBuilder::new(BufWriter::new(f));
    let mut add = |t: &mut TarBuilder<_>, spec: HeaderSpec, data: &[u8]| {
        stats.entries += 1;
        stats.bytes += data.len() as u64;
        t.append(&spec, data).map_err(io)
    };
    let dir_spec = |p: &str| {
        let mut s = HeaderSpec::new(p, TarKind::Dir);
        s.mtime = 1_700_000_000;
        s
    };
    for d in [
        "bin/",
        "etc/",
        "usr/",
        "usr/bin/",
        "usr/lib/",
        "usr/share/",
        "usr/share/doc/",
        "var/",
        "var/log/",
        "tmp/",
    ] {
        let mut s = dir_spec(d);
        if d == "tmp/" {
            s.mode = 0o1777;
        }
        add(&mut t, s, b"")?;
    }
    let mut hello = HeaderSpec::new("etc/hello.txt", TarKind::Reg);
    hello.mtime = 1_700_000_000;
    add(&mut t, hello, b"hello from a lazily pulled layer\n")?;
    let mut os = HeaderSpec::new("etc/os-release", TarKind::Reg);
    os.xattrs
        .insert("user.stargaze.origin".into(), b"sample".to_vec());
    add(&mut t, os, b"NAME=stargaze-sample\nID=sample\n")?;
    let mut passwd = HeaderSpec::new("etc/passwd", TarKind::Reg);
    passwd.mode = 0o644;
    add(
        &mut t,
        passwd,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
    )?;
    let mut link = HeaderSpec::new("lib", TarKind::Symlink);
    link.link_name = "usr/lib".into();
    add(&mut t, link, b"")?;

    if let Some(bb) = opts.busybox.as_ref().filter(|p| p.is_file()) {
        let data = std::fs::read(bb).map_err(|e| ImageError::io("reading busybox", e))?;
        let mut s = HeaderSpec::new("bin/busybox", TarKind::Reg);
        s.mode = 0o755;
        add(&mut t, s, &data)?;
        for applet in ["sh", "cat", "ls", "echo", "sha256sum", "wc", "head"] {
            let mut s = HeaderSpec::new(&format!("bin/{applet}"), TarKind::Symlink);
            s.link_name = "busybox".into();
            add(&mut t, s, b"")?;
        }
        stats.busybox = true;
    }
    for (i, &size) in opts.large_files.iter().enumerate() {
        let mut s = HeaderSpec::new(&format!("usr/lib/libsample{i}.so"), TarKind::Reg);
        s.mode = 0o755;
        add(&mut t, s, &sample_bytes(1000 + i as u64, size, 40))?;
    }
    let mut tool = HeaderSpec::new("usr/bin/sample-tool", TarKind::Reg);
    tool.mode = 0o4755;
    add(&mut t, tool, &sample_bytes(7, 70_000, 60))?;
    let mut hl = HeaderSpec::new("usr/bin/sample-tool-link", TarKind::Hardlink);
    hl.link_name = "usr/bin/sample-tool".into();
    add(&mut t, hl, b"")?;
    if !opts.large_files.is_empty() {
        // A hardlink to a file of several chunks.
        let mut hl = HeaderSpec::new("usr/lib/libsample0-again.so", TarKind::Hardlink);
        hl.link_name = "usr/lib/libsample0.so".into();
        add(&mut t, hl, b"")?;
    }
    add(&mut t, dir_spec("dev/"), b"")?;
    let mut null = HeaderSpec::new("dev/null", TarKind::Char);
    null.mode = 0o666;
    null.dev = (1, 3);
    add(&mut t, null, b"")?;
    let mut loop0 = HeaderSpec::new("dev/loop0", TarKind::Block);
    loop0.mode = 0o660;
    loop0.gid = 6;
    loop0.dev = (7, 0);
    add(&mut t, loop0, b"")?;
    let mut fifo = HeaderSpec::new("var/log/pipe", TarKind::Fifo);
    fifo.mode = 0o600;
    add(&mut t, fifo, b"")?;
    add(
        &mut t,
        HeaderSpec::new("var/log/empty.log", TarKind::Reg),
        b"",
    )?;

    let per_dir = 10usize;
    for i in 0..opts.small_files {
        if i % per_dir == 0 {
            add(
                &mut t,
                dir_spec(&format!("usr/share/doc/pkg-{:04}/", i / per_dir)),
                b"",
            )?;
        }
        let mut s = HeaderSpec::new(
            &format!(
                "usr/share/doc/pkg-{:04}/file-{}.txt",
                i / per_dir,
                i % per_dir
            ),
            TarKind::Reg,
        );
        s.uid = (i % 3) as u64 * 1000;
        s.gid = s.uid;
        s.mtime = 1_700_000_000 + i as i64;
        let len = 200 + (i * 7919) % 6000;
        add(&mut t, s, &sample_bytes(i as u64, len, 5))?;
    }
    t.finish().map_err(io)?;

    // Second layer: changes a file, deletes one, makes a directory opaque, adds an app.
    let top = dir.join("app.tar");
    let f = std::fs::File::create(&top).map_err(io)?;
    let mut t = TarBuilder::new(BufWriter::new(f));
    add(&mut t, dir_spec("etc/"), b"")?;
    add(
        &mut t,
        HeaderSpec::new("etc/hello.txt", TarKind::Reg),
        b"hello from the top layer\n",
    )?;
    add(
        &mut t,
        HeaderSpec::new("etc/.wh.os-release", TarKind::Reg),
        b"",
    )?;
    add(&mut t, dir_spec("var/log/"), b"")?;
    add(
        &mut t,
        HeaderSpec::new("var/log/.wh..wh..opq", TarKind::Reg),
        b"",
    )?;
    add(&mut t, dir_spec("app/"), b"")?;
    let mut app = HeaderSpec::new("app/run.sh", TarKind::Reg);
    app.mode = 0o755;
    add(&mut t, app, b"#!/bin/sh\necho app-ok\n")?;
    add(
        &mut t,
        HeaderSpec::new("app/data.bin", TarKind::Reg),
        &sample_bytes(99, 3 << 20, 90),
    )?;
    t.finish().map_err(io)?;
    Ok(vec![base, top])
}

/// Builds the sample image into `layout_dir` under `tag` (plain gzip layers).
pub fn build_sample_image(
    layout_dir: &Path,
    tag: &str,
    opts: &SampleOptions,
) -> Result<SampleStats, ImageError> {
    let layout = OciLayout::open_or_create(layout_dir)?;
    let work = tempfile::tempdir().map_err(|e| ImageError::io("temp dir", e))?;
    let mut stats = SampleStats::default();
    let tars = write_sample_layers(work.path(), opts, &mut stats)?;
    let layers: Vec<LayerInput> = tars.into_iter().map(|tar| LayerInput { tar }).collect();
    let cfg = ImageConfig {
        cmd: vec!["/bin/sh".into()],
        env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
    };
    stats.manifest = Some(write_image(&layout, tag, &layers, &cfg)?);
    Ok(stats)
}
