//! `stargaze demo`: the main job on an embedded default, offline. It builds the sample
//! image, converts it to eStargz, verifies every layer, serves it from the built-in registry
//! on an ephemeral loopback port, mounts it lazily (FUSE per layer + overlayfs), reads files
//! and runs busybox from the rootfs, and reports time to first byte and what was fetched.

use crate::progress::{bytes, Progress};
use anyhow::Context;
use clap::Args;
use stargaze_fs::cache::ChunkCache;
use stargaze_fs::fetcher::FetchOptions;
use stargaze_fs::format::verify::verify_layer;
use stargaze_fs::format::{FileBlob, LayerReader, OpenOptions, WriterOptions};
use stargaze_fs::fuse::FsOptions;
use stargaze_fs::image::sample::{build_sample_image, SampleOptions};
use stargaze_fs::image::{annotations_of, convert_image, ImageConvertOptions, OciLayout};
use stargaze_fs::mount::{mount_image, MountOptions};
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_fs::remote::{copy_image, CopyOptions, ImageLocation, Quiet};
use stargaze_fs::remote::{ClientOptions, Platform, Reference, RegistryClient};
use std::path::PathBuf;
use std::sync::Arc;

/// `stargaze demo`
#[derive(Args)]
pub struct DemoArgs {
    /// Keep the work directory (default: a temp dir removed at the end).
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Number of small files in the sample image.
    #[arg(long, default_value_t = 3000)]
    files: usize,
}

/// Runs the demo and prints each step and a summary.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    if !stargaze_fs::sys::is_root() {
        anyhow::bail!("the demo mounts a lazy rootfs and needs root (FUSE with allow_other, overlayfs, chroot); run it with sudo");
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        anyhow::bail!("the demo needs /dev/fuse (load the fuse module, or give the container --device /dev/fuse)");
    }
    let tmp = tempfile::tempdir().context("creating a temp dir")?;
    let work = a.keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let layout_dir = work.join("oci");
    let p = Progress::new("demo");

    println!(
        "[1/5] building the sample image in {}",
        layout_dir.display()
    );
    let opts = SampleOptions {
        small_files: a.files,
        ..Default::default()
    };
    let stats = build_sample_image(&layout_dir, "sample", &opts)?;
    println!(
        "      {} entries, {} of file data{} ({:.2}s)",
        stats.entries,
        bytes(stats.bytes),
        if stats.busybox {
            ", busybox included"
        } else {
            ", busybox not installed on this host"
        },
        p.elapsed()
    );

    println!("[2/5] converting to eStargz (gzip, 4 MiB chunks, all cores)");
    let layout = OciLayout::open(&layout_dir)?;
    let t = std::time::Instant::now();
    let report = convert_image(
        &layout,
        Some("sample"),
        &layout,
        Some("sample-esgz"),
        &ImageConvertOptions {
            writer: WriterOptions::default(),
        },
        &mut |_, _, _| {},
    )?;
    for l in &report.layers {
        println!(
            "      {} → {}: {} → {}, toc {}",
            &l.source.to_string()[..19],
            &l.result.to_string()[..19],
            bytes(l.source_size),
            bytes(l.result_size),
            l.toc_digest
        );
    }
    println!("      converted in {:.2}s", t.elapsed().as_secs_f64());

    println!("[3/5] verifying footer, TOC digest and every chunk of each layer");
    let (_, manifest) = layout.resolve(Some("sample-esgz"))?;
    let mut readers = Vec::new();
    for desc in manifest.layers() {
        let digest = OciLayout::digest_of(desc)?;
        let ann = annotations_of(desc);
        let toc = ann
            .get(stargaze_fs::oci::TOC_DIGEST_ANNOTATION)
            .context("converted layer lacks its toc.digest annotation")?
            .parse()?;
        let r = LayerReader::open(
            FileBlob::open(&layout.blob_path(&digest))?,
            &OpenOptions {
                toc_digest: Some(toc),
                annotations: ann,
                ..Default::default()
            },
        )?;
        let v = verify_layer(&r, |_| {})?;
        println!(
            "      {}: {} entries, {} chunks, {} verified",
            &digest.to_string()[..19],
            v.entries,
            v.chunks,
            bytes(v.bytes)
        );
        readers.push((desc.size(), r));
    }

    drop(readers);

    let registry = BackgroundRegistry::start(
        RegistryOptions::new(work.join("registry")),
        "127.0.0.1:0".parse()?,
    )
    .context("starting the built-in registry")?;
    let image = format!("{}/demo/sample:esgz", registry.addr());
    println!("[4/5] serving it from the built-in registry as {image}");
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let client = Arc::new(RegistryClient::new(ClientOptions::default())?);
    let pushed = rt.block_on(copy_image(
        &client,
        &ImageLocation::Layout(format!("oci:{}:sample-esgz", layout_dir.display()).parse()?),
        &ImageLocation::Registry(Reference::parse(&image)?),
        &CopyOptions::default(),
        &Quiet,
    ))?;
    println!(
        "      pushed {} blobs ({}) and the manifest",
        pushed.blobs_copied,
        bytes(pushed.bytes)
    );

    println!("[5/5] mounting it lazily (FUSE per layer + overlayfs) and using the rootfs");
    let rootfs = work.join("rootfs");
    let cache = Arc::new(ChunkCache::tiered(&work.join("cache"), 1 << 30, 64 << 20)?);
    let mopts = MountOptions {
        platform: Platform::host(),
        writable: false,
        state_dir: work.join("mount-state"),
        cache,
        sessions: Vec::new(),
        fetch: FetchOptions::default(),
        fs: FsOptions::default(),
        prefetch: false,
        background: None,
        profile: None,
    };
    let reference = Reference::parse(&image)?;
    let t = std::time::Instant::now();
    let mounted = rt
        .block_on(mount_image(client.clone(), &reference, &rootfs, &mopts))
        .context("mounting the image")?;
    let first = std::fs::read(rootfs.join("etc/hello.txt")).context("reading through the mount")?;
    let ttfb = t.elapsed();
    println!(
        "      mounted at {} and read the first file ({} B) {:.0} ms after the mount was requested",
        rootfs.display(),
        first.len(),
        ttfb.as_secs_f64() * 1e3
    );
    for path in ["usr/share/doc/pkg-0007/file-3.txt", "usr/lib/libsample0.so"] {
        if let Ok(data) = std::fs::read(rootfs.join(path)) {
            println!("      read {path}: {}", bytes(data.len() as u64));
        }
    }
    if rootfs.join("bin/busybox").exists() {
        let t = std::time::Instant::now();
        let out = std::process::Command::new("chroot")
            .arg(&rootfs)
            .args([
                "/bin/busybox",
                "sh",
                "-c",
                "echo \"busybox says: $(cat /etc/hello.txt)\"",
            ])
            .output()
            .context("running chroot")?;
        anyhow::ensure!(
            out.status.success(),
            "busybox failed in the rootfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("      {}", String::from_utf8_lossy(&out.stdout));
        println!(
            "      (ran /bin/busybox from the lazy rootfs in {:.0} ms)",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let stats = mounted.stats();
    let (fetched, size, verified, requests) = stats.iter().fold((0, 0, 0, 0), |a, l| {
        (
            a.0 + l.counters.bytes_fetched,
            a.1 + l.size,
            a.2 + l.counters.cache_misses,
            a.3 + l.counters.requests,
        )
    });
    println!(
        "      fetched {} of the {} image ({:.1}%) in {requests} Range requests; {verified} chunks verified",
        bytes(fetched),
        bytes(size),
        100.0 * fetched as f64 / size.max(1) as f64
    );
    {
        let _guard = rt.enter();
        mounted.unmount().context("unmounting")?;
    }
    println!("      unmounted");
    drop(registry);
    println!(
        "demo done in {:.2}s: sample image built, {} layers converted to eStargz and verified, served from the built-in registry, mounted lazily and used{}",
        p.elapsed(),
        report.layers.len(),
        match &a.keep {
            Some(d) => format!("; kept in {}", d.display()),
            None => String::new(),
        }
    );
    Ok(())
}
