//! Fetches made on a guess, against the built-in registry: once the first chunk of a
//! dynamic binary has been read, its loader, ld.so.cache, libraries and glibc's data files
//! arrive without being read — also when the binary's dynamic section lies past its first
//! chunk (bash here, with 1 MiB chunks); a miss in a small directory brings that directory's
//! other files and nothing beyond it.

use stargaze_fs::cache::{ChunkCache, MemoryCache};
use stargaze_fs::fetcher::FetchOptions;
use stargaze_fs::format::WriterOptions;
use stargaze_fs::image::{convert_image, ImageConvertOptions, OciLayout};
use stargaze_fs::layer::RemoteLayer;
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use stargaze_fs::remote::{copy_image, CopyOptions, ImageLocation, Quiet};
use stargaze_fs::remote::{ClientOptions, Platform, Reference, RegistryClient};
use stargaze_suite::{have, require, run};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const LIBDIR: &str = "usr/lib/x86_64-linux-gnu";

/// Copies host file `from` to `root/to` (following symlinks: the content).
fn put(root: &Path, from: &str, to: &str) {
    let dest = root.join(to);
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("copying {from}: {e}"));
}

fn link(root: &Path, target: &str, at: &str) {
    let at = root.join(at);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, at).unwrap();
}

/// A rootfs with the host's bash and what its start needs, plus two small doc dirs, as an
/// eStargz image with 1 MiB chunks.
fn bash_image(dir: &Path) -> std::path::PathBuf {
    let oci = dir.join("oci");
    let layout = format!("{}", oci.display());
    run(Command::new("umoci").args(["init", "--layout", &layout]));
    run(Command::new("umoci").args(["new", "--image", &format!("{layout}:plain")]));
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{layout}:plain")])
        .arg(&bundle));
    let root = bundle.join("rootfs");
    link(&root, "usr/lib", "lib");
    put(&root, "/usr/bin/bash", "usr/bin/bash");
    for lib in ["libtinfo.so.6", "libc.so.6", "ld-linux-x86-64.so.2"] {
        put(
            &root,
            &format!("/lib/x86_64-linux-gnu/{lib}"),
            &format!("{LIBDIR}/{lib}"),
        );
    }
    link(
        &root,
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "lib64/ld-linux-x86-64.so.2",
    );
    put(&root, "/etc/ld.so.cache", "etc/ld.so.cache");
    put(
        &root,
        "/usr/share/zoneinfo/Etc/UTC",
        "usr/share/zoneinfo/Etc/UTC",
    );
    link(&root, "/usr/share/zoneinfo/Etc/UTC", "etc/localtime");
    put(
        &root,
        "/usr/lib/locale/C.utf8/LC_CTYPE",
        "usr/lib/locale/C.utf8/LC_CTYPE",
    );
    for d in 0..2 {
        for f in 0..10 {
            let p = root.join(format!("usr/share/doc/d{d}/f{f}.txt"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, format!("doc {d}/{f}\n").repeat(50 + f)).unwrap();
        }
    }
    run(Command::new("umoci")
        .args(["repack", "--image", &format!("{layout}:plain")])
        .arg(&bundle));
    let l = OciLayout::open(&oci).unwrap();
    let writer = WriterOptions {
        chunk_size: 1 << 20,
        ..WriterOptions::default()
    };
    convert_image(
        &l,
        Some("plain"),
        &l,
        Some("esgz"),
        &ImageConvertOptions { writer },
        &mut |_, _, _| {},
    )
    .unwrap();
    oci
}

/// Polls until every path is cached in `layer`, or panics naming those that are not.
async fn wait_cached(layer: &RemoteLayer, paths: &[&str]) {
    let ids: Vec<_> = paths
        .iter()
        .map(|p| {
            layer
                .resolve(p)
                .unwrap_or_else(|| panic!("{p} not in layer"))
        })
        .collect();
    for _ in 0..200 {
        if ids.iter().all(|&i| layer.is_cached(i)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missing: Vec<_> = paths
        .iter()
        .zip(&ids)
        .filter(|(_, &i)| !layer.is_cached(i))
        .map(|(p, _)| *p)
        .collect();
    panic!("not fetched on a guess: {missing:?}");
}

#[test]
fn loader_dependencies_glibc_files_and_small_directories_arrive_unasked() {
    if !(require(have("umoci"), "umoci")
        && require(Path::new("/usr/bin/bash").is_file(), "/usr/bin/bash")
        && require(
            Path::new("/usr/lib/locale/C.utf8/LC_CTYPE").is_file(),
            "glibc's C.utf8 locale",
        ))
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = bash_image(tmp.path());
    let registry = BackgroundRegistry::start(
        RegistryOptions::new(tmp.path().join("reg")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = Arc::new(RegistryClient::new(ClientOptions::default()).unwrap());
    let reference = Reference::parse(&format!("{}/spec/bash:v1", registry.addr())).unwrap();
    rt.block_on(async {
        copy_image(
            &client,
            &ImageLocation::Layout(format!("oci:{}:esgz", oci.display()).parse().unwrap()),
            &ImageLocation::Registry(reference.clone()),
            &CopyOptions::default(),
            &Quiet,
        )
        .await
        .unwrap();
        let (m, _) = client
            .resolve(&reference, &Platform::host(), &[])
            .await
            .unwrap();
        let layer = RemoteLayer::open(
            client.clone(),
            &reference,
            &m.layers[0],
            Arc::new(ChunkCache::new(Some(MemoryCache::new(64 << 20)), None)),
            Vec::new(),
            FetchOptions::default(),
        )
        .await
        .unwrap();
        let bash = layer.resolve("usr/bin/bash").unwrap();
        let n = layer.index().node(bash);
        assert!(n.chunks.len() >= 2, "bash spans more than one chunk");
        let libc = layer.resolve(&format!("{LIBDIR}/libc.so.6")).unwrap();
        assert!(!layer.is_cached(libc));
        // The exec reads the first page only.
        let head = layer.read(bash, 0, 4096).await.unwrap();
        assert_eq!(&head[..4], b"\x7fELF");
        wait_cached(
            &layer,
            &[
                "usr/bin/bash",
                "lib64/ld-linux-x86-64.so.2",
                "etc/ld.so.cache",
                &format!("{LIBDIR}/libtinfo.so.6"),
                &format!("{LIBDIR}/libc.so.6"),
                "etc/localtime",
                "usr/lib/locale/C.utf8/LC_CTYPE",
            ],
        )
        .await;
        for d in 0..2 {
            for f in 0..10 {
                let id = layer
                    .resolve(&format!("usr/share/doc/d{d}/f{f}.txt"))
                    .unwrap();
                assert!(!layer.is_cached(id), "d{d}/f{f} fetched without cause");
            }
        }
        // One small file of d0 is read: the rest of d0 follows, d1 does not.
        layer.read_path("usr/share/doc/d0/f3.txt").await.unwrap();
        let d0: Vec<String> = (0..10)
            .map(|f| format!("usr/share/doc/d0/f{f}.txt"))
            .collect();
        let d0: Vec<&str> = d0.iter().map(String::as_str).collect();
        wait_cached(&layer, &d0).await;
        for f in 0..10 {
            let id = layer
                .resolve(&format!("usr/share/doc/d1/f{f}.txt"))
                .unwrap();
            assert!(!layer.is_cached(id), "d1/f{f} fetched without cause");
        }
    });
}
