//! Fetches made on a guess, against the built-in registry: once the first chunk of a
//! dynamic binary has been read, its loader, ld.so.cache and libraries arrive without being
//! read — also when the binary's dynamic section lies past its first chunk (bash here, with
//! 1 MiB chunks) — and the data files of its C library do not (no rule by file name); a miss in a small directory brings that
//! directory's other files and nothing beyond it; a large ELF file brings the ranges its
//! program headers say the loader touches and a window past each miss that grows while the
//! misses follow it, not the whole file.

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

/// Little-endian bytes of a 64-bit ELF header and program headers: `loads` are
/// (flags, offset, size) of PT_LOAD segments (vaddr = offset).
fn elf_headers(loads: &[(u32, u64, u64)]) -> Vec<u8> {
    let mut h = vec![0u8; 64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // 64-bit
    h[5] = 1; // little-endian
    h[6] = 1;
    h[0x10..0x12].copy_from_slice(&3u16.to_le_bytes()); // ET_DYN
    h[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    h[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    h[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
    h[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    h[0x38..0x3a].copy_from_slice(&(loads.len() as u16).to_le_bytes());
    for &(flags, off, size) in loads {
        let mut p = vec![0u8; 56];
        p[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        p[4..8].copy_from_slice(&flags.to_le_bytes());
        for at in [8, 16, 24] {
            p[at..at + 8].copy_from_slice(&off.to_le_bytes());
        }
        p[32..40].copy_from_slice(&size.to_le_bytes());
        p[40..48].copy_from_slice(&size.to_le_bytes());
        h.extend_from_slice(&p);
    }
    h
}

/// An OCI layout with one layer: umoci's empty image, `fill` writing its root file system,
/// converted to eStargz (tag `esgz`) with `chunk_size` chunks.
fn umoci_image(dir: &Path, chunk_size: u64, fill: impl FnOnce(&Path)) -> std::path::PathBuf {
    let oci = dir.join("oci");
    let layout = format!("{}", oci.display());
    run(Command::new("umoci").args(["init", "--layout", &layout]));
    run(Command::new("umoci").args(["new", "--image", &format!("{layout}:plain")]));
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &format!("{layout}:plain")])
        .arg(&bundle));
    fill(&bundle.join("rootfs"));
    run(Command::new("umoci")
        .args(["repack", "--image", &format!("{layout}:plain")])
        .arg(&bundle));
    let l = OciLayout::open(&oci).unwrap();
    let writer = WriterOptions {
        chunk_size,
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

/// Incompressible bytes (xorshift), `len` of them, continuing from `state`.
fn noise(state: &mut u64, len: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data
}

/// A rootfs holding one large executable ELF file, `usr/lib/big.so` (12 MiB of
/// incompressible bytes: 1 MiB of headers and tables, 8 MiB of code, 1 MiB of writable data,
/// 2 MiB after it), as an eStargz image with 1 MiB chunks.
fn big_elf_image(dir: &Path) -> std::path::PathBuf {
    const M: u64 = 1 << 20;
    umoci_image(dir, 1 << 20, |root| {
        let mut data = elf_headers(&[(4, 0, M), (5, M, 8 * M), (6, 10 * M, M)]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let rest = (12 * M) as usize - data.len();
        data.extend(noise(&mut x, rest));
        let p = root.join("usr/lib/big.so");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &data).unwrap();
    })
}

/// Pushes the `esgz` tag of `oci` to `registry` and opens its layer over `cache`.
async fn open_pushed(
    registry: &BackgroundRegistry,
    oci: &Path,
    cache: Arc<ChunkCache>,
) -> Arc<RemoteLayer> {
    let client = Arc::new(RegistryClient::new(ClientOptions::default()).unwrap());
    let reference = Reference::parse(&format!("{}/spec/img:v1", registry.addr())).unwrap();
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
    RemoteLayer::open(
        client.clone(),
        &reference,
        &m.layers[0],
        cache,
        Vec::new(),
        FetchOptions::default(),
    )
    .await
    .unwrap()
}

#[test]
fn a_large_elf_file_brings_its_loader_ranges_and_a_growing_window_not_all_of_it() {
    if !require(have("umoci"), "umoci") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = big_elf_image(tmp.path());
    let registry = BackgroundRegistry::start(
        RegistryOptions::new(tmp.path().join("reg")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = Arc::new(ChunkCache::new(Some(MemoryCache::new(256 << 20)), None));
    rt.block_on(async {
        let layer = open_pushed(&registry, &oci, cache.clone()).await;
        let big = layer.resolve("usr/lib/big.so").unwrap();
        let chunks = layer.index().node(big).chunks.to_vec();
        assert_eq!(chunks.len(), 12);
        let cached = |i: usize| cache.contains(chunks[i].digest.as_ref().unwrap());
        let wait = |want: Vec<usize>| async move {
            for _ in 0..200 {
                if want.iter().all(|&i| cached(i)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("chunks {want:?} not all fetched on a guess");
        };
        // The loader reads the head: the writable segment (chunk 10) follows from the
        // program headers; the code does not.
        let head = layer.read(big, 0, 4096).await.unwrap();
        assert_eq!(&head[..4], b"\x7fELF");
        wait(vec![0, 10]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in (1..10).chain([11]) {
            assert!(
                !cached(i),
                "chunk {i} (code or past the segments) fetched with the head"
            );
        }
        // A miss in the code (chunk 2): a first window past it (one chunk here).
        layer.read(big, 2 << 20, 4096).await.unwrap();
        wait(vec![2, 3]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 4..10 {
            assert!(!cached(i), "chunk {i} fetched beyond the first window");
        }
        // The next miss follows the window: the window grows, but not to the whole file.
        layer.read(big, 4 << 20, 4096).await.unwrap();
        wait(vec![4, 5]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 7..10 {
            assert!(!cached(i), "chunk {i} fetched beyond the grown window");
        }
    });
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
fn loader_dependencies_and_small_directories_arrive_unasked_and_nothing_by_name() {
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
            ],
        )
        .await;
        // glibc's data files come with no guess: none follows from the data.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for p in ["usr/lib/locale/C.utf8/LC_CTYPE", "etc/localtime"] {
            assert!(
                !layer.is_cached(layer.resolve(p).unwrap()),
                "{p} fetched by its name"
            );
        }
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

/// An image whose `usr/share/big/` holds 64 files of incompressible bytes, `f00` 2 KiB up to
/// `f63` 65 KiB (1 KiB more each): 2.1 MiB in all, over the small-directory budget.
fn big_dir_image(dir: &Path) -> std::path::PathBuf {
    umoci_image(dir, WriterOptions::default().chunk_size, |root| {
        let big = root.join("usr/share/big");
        std::fs::create_dir_all(&big).unwrap();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        // Written largest first, so blob order is not size order.
        for i in (0..64usize).rev() {
            std::fs::write(big.join(format!("f{i:02}")), noise(&mut x, (2 + i) << 10)).unwrap();
        }
    })
}

#[test]
fn a_large_directory_is_fetched_only_as_misses_repeat_there_smallest_files_first() {
    if !require(have("umoci"), "umoci") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let oci = big_dir_image(tmp.path());
    let registry = BackgroundRegistry::start(
        RegistryOptions::new(tmp.path().join("reg")),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cache = Arc::new(ChunkCache::new(Some(MemoryCache::new(64 << 20)), None));
        let layer = open_pushed(&registry, &oci, cache).await;
        let id = |i: u32| layer.resolve(&format!("usr/share/big/f{i:02}")).unwrap();
        let cached = |layer: &RemoteLayer| -> Vec<u32> {
            (0..64).filter(|&i| layer.is_cached(id(i))).collect()
        };
        // A first miss there: that file only.
        layer.read_path("usr/share/big/f40").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            cached(&layer),
            vec![40],
            "one miss in a large directory guesses nothing"
        );
        // A second miss: the smallest files follow, up to about 1 MiB, not the directory.
        layer.read_path("usr/share/big/f50").await.unwrap();
        let small: Vec<&str> = [
            "usr/share/big/f00",
            "usr/share/big/f01",
            "usr/share/big/f10",
        ]
        .into_iter()
        .collect();
        wait_cached(&layer, &small).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after_two = cached(&layer);
        assert!(
            !after_two.contains(&63) && after_two.len() < 55,
            "a bounded step, smallest first: {after_two:?}"
        );
        // More misses there: the steps grow until the directory is in.
        for f in [60, 61, 62, 63, 59] {
            layer
                .read_path(&format!("usr/share/big/f{f:02}"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let later = cached(&layer);
        assert!(
            later.len() > after_two.len() + 10,
            "{after_two:?} then {later:?}"
        );
    });
}
