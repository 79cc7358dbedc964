//! Shared support for the integration tests and benchmarks: where the reference fixtures are,
//! the one prerequisite check (`require`), the stargaze binary, and tree snapshots for
//! comparing extracted or unpacked root filesystems; `bench` holds what the WAN benches share.

pub mod bench;
pub mod blobs;
pub mod buildkit_client;
pub mod busybox;
pub mod fault_proxy;
pub mod http;
pub mod mounts;
pub mod netem;
pub mod servers;
pub mod worker_sandbox;

use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The workspace root (the checkout), whose `target/` holds the builds, the reference daemon
/// and the bench inputs; the suite is its member `suite/`.
pub fn workspace_dir() -> PathBuf {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR"));
    suite.parent().unwrap_or(suite).to_path_buf()
}

/// `../shared/fixtures` beside the checkout.
pub fn fixtures_dir() -> PathBuf {
    workspace_dir().join("../shared/fixtures")
}

/// True under CI, where a missing prerequisite is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks a prerequisite. Under CI a missing one panics; elsewhere the test prints why it is
/// skipped and the caller returns early.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("prerequisite missing under CI: {what}");
    }
    eprintln!("SKIPPED: prerequisite missing: {what}");
    false
}

/// Whether a program is on PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
}

pub use stargaze_fs::sys::is_root;

/// The `stargaze` binary next to the test executable (built by `cargo build -p stargaze`).
pub fn stargaze_bin() -> PathBuf {
    // STARGAZE_BIN picks another build (the benches compare the `dist` profile's too).
    if let Some(p) = std::env::var_os("STARGAZE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("stargaze")
}

/// Runs a command, panicking with its output when it fails; returns stdout.
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a tree snapshot records of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// Type letter: d, f, l, c, b, p, s.
    pub kind: char,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file.
    pub size: u64,
    /// Symlink target.
    pub link: String,
    /// Device number for devices.
    pub rdev: u64,
    /// sha256 of a regular file's content.
    pub content: String,
    /// Extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Modification time of non-directories (dirs' times change as children are created).
    pub mtime: i64,
}

/// Snapshots a directory tree: every path under `root` (relative), never following symlinks.
/// `ignore` lists top-level names to leave out.
pub fn tree(root: &Path, ignore: &[&str]) -> BTreeMap<String, PathInfo> {
    let mut out = BTreeMap::new();
    walk(root, root, ignore, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, ignore: &[&str], out: &mut BTreeMap<String, PathInfo>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let rel = p
            .strip_prefix(root)
            .expect("under root")
            .to_string_lossy()
            .into_owned();
        if ignore.contains(&rel.as_str()) {
            continue;
        }
        let m = std::fs::symlink_metadata(&p).expect("lstat");
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_file() {
            'f'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else if ft.is_fifo() {
            'p'
        } else {
            's'
        };
        let content = if kind == 'f' {
            hex::encode(Sha256::digest(std::fs::read(&p).expect("read file")))
        } else {
            String::new()
        };
        let link = if kind == 'l' {
            std::fs::read_link(&p)
                .expect("readlink")
                .to_string_lossy()
                .into_owned()
        } else {
            String::new()
        };
        let xattrs = stargaze_fs::sys::lgetxattrs(&p)
            .unwrap_or_default()
            .into_iter()
            .collect();
        out.insert(
            rel.clone(),
            PathInfo {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == 'f' { m.size() } else { 0 },
                link,
                rdev: if matches!(kind, 'c' | 'b') {
                    m.rdev()
                } else {
                    0
                },
                content,
                xattrs,
                mtime: if kind == 'd' { 0 } else { m.mtime() },
            },
        );
        if kind == 'd' {
            walk(root, &p, ignore, out);
        }
    }
}

/// Asserts two tree snapshots are equal, listing the first differences.
pub fn assert_same_tree(a: &BTreeMap<String, PathInfo>, b: &BTreeMap<String, PathInfo>) {
    let mut diffs = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => diffs.push(format!("only in first: {k}")),
            Some(w) if w != v => diffs.push(format!("differs: {k}\n  {v:?}\n  {w:?}")),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            diffs.push(format!("only in second: {k}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A private containerd (own root, state and sockets under a temp dir), stopped by PID on drop.
pub struct Containerd {
    child: std::process::Child,
    /// The gRPC socket.
    pub socket: PathBuf,
    /// Holds root, state and the log.
    pub dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd and waits until `ctr version` answers.
    pub fn start() -> Containerd {
        Self::start_in(None)
    }

    /// Starts containerd inside a network namespace (`/run/netns/NAME`) when given.
    pub fn start_in(netns: Option<&Path>) -> Containerd {
        let dir = tempfile::Builder::new()
            .prefix("stargaze-ctd-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let cfg = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n[grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n[debug]\n  address = \"{dbg}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[proxy_plugins]\n  [proxy_plugins.stargz]\n    type = \"snapshot\"\n    address = \"{stargz}\"\n",
            stargz = d.join("stargz.sock").display(),
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            dbg = d.join("debug.sock").display(),
        );
        std::fs::write(d.join("config.toml"), cfg).expect("write config");
        let log = std::fs::File::create(d.join("log")).expect("log file");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = std::process::Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("containerd");
                c
            }
            None => std::process::Command::new("containerd"),
        };
        let child = cmd
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning containerd");
        let c = Containerd { child, socket, dir };
        for _ in 0..200 {
            let ok = std::process::Command::new("ctr")
                .arg("--address")
                .arg(&c.socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(c.dir.path().join("log")).unwrap_or_default();
        panic!("containerd did not start:\n{log}");
    }

    /// Imports an OCI layout directory; its tags become images named `base_name:TAG`.
    pub fn import_layout(&self, layout: &Path, base_name: &str) {
        let archive = self.dir.path().join("import.tar");
        run(std::process::Command::new("tar")
            .arg("-C")
            .arg(layout)
            .arg("-cf")
            .arg(&archive)
            .arg("."));
        run(self
            .cmd("ctr")
            .args(["image", "import", "--base-name", base_name])
            .arg(&archive));
        let _ = std::fs::remove_file(&archive);
    }

    /// The socket where containerd expects the proxy snapshotter named `stargz`.
    pub fn stargz_socket(&self) -> PathBuf {
        self.dir.path().join("stargz.sock")
    }

    /// Whether containerd reaches its `stargz` proxy snapshotter now: a probe snapshot is
    /// prepared and removed through it. (`ctr snapshots ls` is not enough: with no snapshots
    /// containerd answers from its own database without calling the plugin, and its gRPC
    /// client backs off for a while after a failed dial.)
    pub fn reaches_stargz(&self) -> bool {
        let probe = "stargaze-readiness-probe";
        let prepared = self
            .cmd("ctr")
            .args(["snapshots", "--snapshotter", "stargz", "prepare", probe])
            .output()
            .is_ok_and(|o| o.status.success());
        let _ = self
            .cmd("ctr")
            .args(["snapshots", "--snapshotter", "stargz", "rm", probe])
            .output();
        prepared
    }

    /// A command for `prog` (ctr or ctr-remote) aimed at this containerd.
    pub fn cmd(&self, prog: &str) -> std::process::Command {
        let mut c = std::process::Command::new(prog);
        c.arg("--address").arg(&self.socket);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds a small sample image in `dir` (tag `sample`) and its eStargz conversion (tag
/// `esgz`, 1 MiB chunks so large files have several); returns the layout directory.
pub fn sample_estargz(dir: &Path, small_files: usize) -> PathBuf {
    sample_estargz_with(
        dir,
        &stargaze_fs::image::sample::SampleOptions {
            small_files,
            large_files: vec![3 << 20, 600_000],
            busybox: None,
        },
    )
}

/// Like [`sample_estargz`], with the sample's contents as `opts` says.
pub fn sample_estargz_with(
    dir: &Path,
    opts: &stargaze_fs::image::sample::SampleOptions,
) -> PathBuf {
    use stargaze_fs::format::WriterOptions;
    use stargaze_fs::image::sample::build_sample_image;
    use stargaze_fs::image::{convert_image, ImageConvertOptions, OciLayout};
    let oci = dir.join("oci");
    build_sample_image(&oci, "sample", opts).expect("sample image");
    let layout = OciLayout::open(&oci).expect("layout");
    let writer = WriterOptions {
        chunk_size: 1 << 20,
        ..WriterOptions::default()
    };
    convert_image(
        &layout,
        Some("sample"),
        &layout,
        Some("esgz"),
        &ImageConvertOptions { writer },
        &mut |_, _, _| {},
    )
    .expect("convert");
    oci
}

/// The reference snapshotter daemon built by `scripts/build-reference.sh`, if present.
pub fn reference_stargz_grpc() -> Option<PathBuf> {
    let p = workspace_dir().join("target/reference/containerd-stargz-grpc");
    p.is_file().then_some(p)
}

/// The reference `containerd-stargz-grpc`, serving containerd's `stargz` proxy snapshotter
/// with a private root; stopped by PID (it unmounts its layers), leftovers detached.
pub struct ReferenceStargz {
    child: std::process::Child,
    /// Root and log.
    pub dir: tempfile::TempDir,
}

impl ReferenceStargz {
    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `bin` for `ctd`, treating `registry` (host:port) as plain HTTP.
    pub fn start(bin: &Path, ctd: &Containerd, registry: &str) -> ReferenceStargz {
        Self::start_in(bin, ctd, registry, None)
    }

    /// As [`Self::start`], inside a network namespace when given.
    pub fn start_in(
        bin: &Path,
        ctd: &Containerd,
        registry: &str,
        netns: Option<&Path>,
    ) -> ReferenceStargz {
        let dir = tempfile::Builder::new()
            .prefix("stargaze-ref-")
            .tempdir()
            .expect("temp dir");
        let cfg = dir.path().join("config.toml");
        std::fs::write(
            &cfg,
            format!("[[resolver.host.\"{registry}\".mirrors]]\nhost = \"{registry}\"\ninsecure = true\n"),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let sock = ctd.stargz_socket();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = std::process::Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(bin);
                c
            }
            None => std::process::Command::new(bin),
        };
        let child = cmd
            .arg("-address")
            .arg(&sock)
            .arg("-root")
            .arg(dir.path().join("root"))
            .arg("-config")
            .arg(&cfg)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning containerd-stargz-grpc");
        let r = ReferenceStargz { child, dir };
        // containerd may have dialled the socket before it existed; its gRPC client then
        // backs off and keeps answering "connection refused" for a while. Ready means
        // containerd itself reaches the snapshotter.
        for _ in 0..300 {
            let ok = sock.exists() && ctd.reaches_stargz();
            if ok {
                return r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "containerd-stargz-grpc did not start:\n{}",
            std::fs::read_to_string(r.dir.path().join("log")).unwrap_or_default()
        );
    }
}

impl Drop for ReferenceStargz {
    fn drop(&mut self) {
        servers::stop_child(&mut self.child);
        // Anything it left mounted under its root is detached.
        mounts::detach_under(self.dir.path());
    }
}

/// Converts the layout's `sample` tag with the reference converter (`ctr-remote image convert
/// --estargz --oci` in a private containerd) and exports the result as an OCI layout in
/// `work/ref`; returns that directory.
pub fn reference_convert(layout: &Path, work: &Path) -> PathBuf {
    reference_convert_tag(layout, "sample", work)
}

/// As [`reference_convert`], for the layout's tag `tag`; the result is tagged `esgz`.
pub fn reference_convert_tag(layout: &Path, tag: &str, work: &Path) -> PathBuf {
    let ctd = Containerd::start();
    ctd.import_layout(layout, "stargaze.test/sample");
    run(ctd.cmd("ctr-remote").args([
        "image",
        "convert",
        "--estargz",
        "--oci",
        &format!("stargaze.test/sample:{tag}"),
        "stargaze.test/sample:esgz",
    ]));
    let exported = work.join("ref.tar");
    run(ctd
        .cmd("ctr")
        .args(["image", "export"])
        .arg(&exported)
        .arg("stargaze.test/sample:esgz"));
    drop(ctd);
    let refdir = work.join("ref");
    std::fs::create_dir_all(&refdir).expect("ref dir");
    run(std::process::Command::new("tar")
        .arg("-C")
        .arg(&refdir)
        .arg("-xf")
        .arg(&exported));
    let _ = std::fs::remove_file(&exported);
    refdir
}

/// Median of timings (benches).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `target/bench-cache`: inputs benches build once and keep (never committed).
pub fn bench_cache_dir() -> PathBuf {
    workspace_dir().join("target/bench-cache")
}

/// Which named parts of a whole-workflow bench to run: the names given after `--`, or all.
pub fn bench_selection() -> impl Fn(&str) -> bool {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    move |name| args.is_empty() || args.iter().any(|a| a == name)
}
