//! `stargaze mount`, `umount` and `stats`: an image from a registry as a lazily fetched rootfs.
//!
//! `mount` resolves the image and mounts it (FUSE per layer + overlayfs) from a serving
//! process: with `--foreground` that is this process; otherwise this process starts itself
//! again detached (its own session, output to the mount's log), waits until the rootfs is
//! ready or the server failed, and returns. Each mount keeps a private state directory under
//! `$STARGAZE_RUN_DIR` (default `/run/stargaze`) named by the target path: the serving PID,
//! layer mount points, the log and `stats.json` (rewritten every second). `umount` asks the
//! server to stop (SIGTERM), and if it is gone or hangs, detaches whatever is left itself.

use super::remote::RegistryFlags;
use crate::progress::bytes;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use stargaze_fs::cache::ChunkCache;
use stargaze_fs::fetcher::FetchOptions;
use stargaze_fs::fuse::{AccessRecorder, FsOptions, OpaqueXattr};
use stargaze_fs::layer::BackgroundOptions;
use stargaze_fs::mount::{
    mount_image, pid_alive, stop_server, LayerMode, LayerStats, MountOptions, MountRecord,
    MountState, ProfileOptions, StatsFile,
};
use stargaze_fs::profile::ProfileStore;
use stargaze_fs::remote::{Platform, Reference};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opaque-directory xattr flavour.
#[derive(Clone, Copy, ValueEnum)]
pub enum OpaqueFlag {
    /// trusted.overlay.opaque
    Trusted,
    /// user.overlay.opaque (overlay mounted with userxattr)
    User,
    /// both
    Both,
}

/// `stargaze mount REF DIR`
#[derive(Args, Clone)]
pub struct MountArgs {
    /// Image reference (`HOST/REPO[:TAG|@DIGEST]`, docker:// prefix optional).
    reference: String,
    /// Where the rootfs appears (created if missing).
    dir: PathBuf,
    /// Add an upper dir so the rootfs is writable.
    #[arg(long)]
    writable: bool,
    /// Platform to take from a multi-platform image (default: this machine).
    #[arg(long)]
    platform: Option<Platform>,
    /// Serve from this process until interrupted instead of a background process.
    #[arg(long)]
    foreground: bool,
    /// Append each file the workload opens to FILE, in first-open order (for `convert --prioritize`).
    #[arg(long, value_name = "FILE")]
    record_access: Option<PathBuf>,
    /// Disk chunk cache directory.
    #[arg(long, default_value = "/var/lib/stargaze/cache")]
    cache_dir: PathBuf,
    /// Disk chunk cache size cap, in MiB.
    #[arg(long, default_value_t = 10240)]
    cache_mib: u64,
    /// Memory chunk cache size, in MiB (only for chunks the disk cache could not take).
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Do not prefetch the files before the prefetch landmark.
    #[arg(long)]
    no_prefetch: bool,
    /// Do not fetch the rest of the layers in the background.
    #[arg(long)]
    no_background_fetch: bool,
    /// Background fetch rate limit, MiB/s.
    #[arg(long, default_value_t = 64)]
    background_mib_per_sec: u64,
    /// KiB of following chunks fetched along with each on-demand miss (0 = off).
    #[arg(long, default_value_t = 0)]
    readahead_kib: u64,
    /// Read fully fetched files through FUSE even where the kernel has passthrough.
    #[arg(long)]
    no_passthrough: bool,
    /// Which xattr marks opaque directories.
    #[arg(long, value_enum, default_value = "trusted")]
    opaque_xattr: OpaqueFlag,
    /// Learned prefetch profiles: where this machine records them and looks first
    /// (default: CACHE_DIR/profiles).
    #[arg(long)]
    profile_dir: Option<PathBuf>,
    /// Neither record nor replay prefetch profiles.
    #[arg(long)]
    no_profile: bool,
    /// Do not look for a prefetch profile in the registry (local profiles still apply).
    #[arg(long)]
    no_profile_lookup: bool,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// `stargaze umount DIR`
#[derive(Args)]
pub struct UmountArgs {
    /// A rootfs mounted by `stargaze mount`.
    dir: PathBuf,
}

/// `stargaze stats DIR`
#[derive(Args)]
pub struct StatsArgs {
    /// A rootfs mounted by `stargaze mount`.
    dir: PathBuf,
    /// Print the JSON as stored (each layer's misses and requests under `timeline`); with
    /// `--timeline`, the bucketed view as JSON.
    #[arg(long)]
    json: bool,
    /// Show misses, requests, bytes in flight and link idle time per time bucket.
    #[arg(long)]
    timeline: bool,
    /// Bucket width for `--timeline`, milliseconds (default: the run cut into 40).
    #[arg(long, value_name = "MS")]
    bucket_ms: Option<f64>,
}

fn canonical_target(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

/// Runs `mount`.
pub fn mount(a: MountArgs) -> anyhow::Result<()> {
    preflight()?;
    let target = canonical_target(&a.dir)?;
    let state = MountState::for_target(&target);
    if let Ok(s) = state.record() {
        if pid_alive(s.pid) {
            bail!(
                "{} is already mounted by stargaze (pid {})",
                target.display(),
                s.pid
            );
        }
        state.clean_up(Some(&s), &target);
    }
    if a.foreground {
        return serve(a, &target, &state);
    }
    spawn_server(&a, &target, &state)
}

fn preflight() -> anyhow::Result<()> {
    if !stargaze_fs::sys::is_root() {
        bail!("mounting needs root (FUSE with allow_other and overlayfs)");
    }
    if std::fs::metadata("/dev/fuse").is_err() {
        bail!("/dev/fuse is missing: load the fuse module or run with --device /dev/fuse");
    }
    Ok(())
}

fn spawn_server(a: &MountArgs, target: &Path, state: &MountState) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    state.create_private()?;
    let log_path = state.log_path();
    let log = std::fs::File::create(&log_path).context("creating the mount log")?;
    let exe = std::env::current_exe().context("locating the stargaze binary")?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid in the child before exec only detaches it from our session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting the mount server")?;
    loop {
        if state.is_ready() {
            println!(
                "mounted {} at {} in {:.2}s (server pid {}; log {})",
                a.reference,
                target.display(),
                start.elapsed().as_secs_f64(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let _ = std::fs::remove_dir_all(state.dir());
            bail!("the mount server exited ({status}):\n{}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn serve(a: MountArgs, target: &Path, state: &MountState) -> anyhow::Result<()> {
    let start = Instant::now();
    state.create_private()?;
    let reference = Reference::parse(a.reference.trim_start_matches("docker://"))
        .with_context(|| format!("image reference {:?}", a.reference))?;
    let client = Arc::new(a.registry.client()?);
    let cache = Arc::new(
        ChunkCache::tiered(
            &a.cache_dir,
            a.cache_mib.saturating_mul(1 << 20),
            a.memory_mib.saturating_mul(1 << 20),
        )
        .with_context(|| format!("chunk cache {}", a.cache_dir.display()))?,
    );
    let recorder = match &a.record_access {
        Some(p) => {
            Some(Arc::new(AccessRecorder::open(p).with_context(|| {
                format!("--record-access {}", p.display())
            })?))
        }
        None => None,
    };
    let opts = MountOptions {
        platform: a.platform.clone().unwrap_or_else(Platform::host),
        writable: a.writable,
        state_dir: state.dir().to_path_buf(),
        cache,
        sessions: Vec::new(),
        fetch: FetchOptions {
            readahead: a.readahead_kib << 10,
            ..FetchOptions::default()
        },
        fs: FsOptions {
            opaque: match a.opaque_xattr {
                OpaqueFlag::Trusted => OpaqueXattr::Trusted,
                OpaqueFlag::User => OpaqueXattr::User,
                OpaqueFlag::Both => OpaqueXattr::Both,
            },
            recorder,
            passthrough: !a.no_passthrough,
        },
        prefetch: !a.no_prefetch,
        background: (!a.no_background_fetch).then_some(BackgroundOptions {
            rate: a.background_mib_per_sec.max(1) << 20,
            ..BackgroundOptions::default()
        }),
        profile: (!a.no_profile).then(|| ProfileOptions {
            store: ProfileStore::new(
                a.profile_dir
                    .clone()
                    .unwrap_or_else(|| a.cache_dir.join("profiles")),
            ),
            lookup: !a.no_profile_lookup,
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let image = tokio::select! {
            r = mount_image(client, &reference, target, &opts) => r.with_context(|| format!("mounting {reference}"))?,
            _ = term.recv() => bail!("interrupted while mounting"),
            _ = int.recv() => bail!("interrupted while mounting"),
        };
        let st = MountRecord {
            target: target.to_path_buf(),
            reference: reference.to_string(),
            manifest: image.manifest.clone(),
            pid: std::process::id() as i32,
            layers: image
                .layers()
                .iter()
                .map(|l| match l {
                    stargaze_fs::mount::MountedLayer::Lazy { dir, .. }
                    | stargaze_fs::mount::MountedLayer::Unpacked { dir, .. } => dir.clone(),
                })
                .collect(),
        };
        state.write_record(&st)?;
        state.write_stats(&StatsFile::of(&st.reference, start, &image.stats()))?;
        state.mark_ready()?;
        let lazy = image.stats().iter().filter(|l| l.mode == LayerMode::Lazy).count();
        println!(
            "mounted {reference} ({}) at {}: {} layers ({lazy} lazy) in {:.2}s",
            image.manifest,
            target.display(),
            st.layers.len(),
            start.elapsed().as_secs_f64()
        );
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = state.write_stats(&StatsFile::of(&st.reference, start, &image.stats()));
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        let stats = image.stats();
        let _ = state.write_stats(&StatsFile::of(&st.reference, start, &stats));
        image.unmount()?;
        print_stats(&stats);
        println!("unmounted {}", target.display());
        Ok::<(), anyhow::Error>(())
    })?;
    // Keep stats.json for a last `umount` report; the rest of the state goes.
    state.remove_served_parts();
    Ok(())
}

fn print_stats(stats: &[LayerStats]) {
    println!("{STATS_HEADER}");
    for l in stats {
        println!(
            "{}",
            stats_line(&serde_json::to_value(l).unwrap_or_default())
        );
    }
}

/// Column titles of [`stats_line`].
const STATS_HEADER: &str =
    "layer                 mode      fetched / size            requests  hits/misses  opens pt/fuse  prefetch";

fn stats_line(v: &serde_json::Value) -> String {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let digest = v["digest"].as_str().unwrap_or("");
    let size = n("size").max(1);
    let prefetch = match v["prefetch"]["state"].as_str().unwrap_or("") {
        "background" => format!(
            "background {:.0}%",
            100.0 * n_of(&v["prefetch"], "done") as f64
                / n_of(&v["prefetch"], "total").max(1) as f64
        ),
        other => other.to_string(),
    };
    let opens = if v["passthrough"].as_bool().unwrap_or(false) {
        format!("{}/{}", n("passthrough_opens"), n("fuse_opens"))
    } else {
        format!("off/{}", n("fuse_opens"))
    };
    let prefetch = match n("whole_blob_answers") {
        0 => prefetch,
        w => format!("{prefetch}  (ranges ignored: {w} whole-blob answers)"),
    };
    format!(
        "{:<21} {:<9} {:>10} / {:<10} {:>5.1}% {:>8}  {:>5}/{:<5}  {:<13}  {}",
        &digest[..digest.len().min(19)],
        v["mode"].as_str().unwrap_or(""),
        bytes(n("bytes_fetched")),
        bytes(n("size")),
        100.0 * n("bytes_fetched") as f64 / size as f64,
        n("requests"),
        n("cache_hits"),
        n("cache_misses"),
        opens,
        prefetch
    )
}

fn n_of(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

/// `stats --timeline`: every layer's events in one view, a line per bucket, then where the
/// time misses waited went.
fn print_timeline(s: &StatsFile, width_ms: f64, json: bool) -> anyhow::Result<()> {
    use stargaze_fs::fetcher::{view, TimelineSnapshot};
    let mut events = Vec::new();
    let mut dropped = 0;
    for l in &s.layers {
        let t: TimelineSnapshot = serde_json::from_value(l["timeline"].clone()).unwrap_or_default();
        dropped += t.dropped;
        events.extend(t.events);
    }
    let v = view(&events, width_ms);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:>9} {:>7} {:>6} {:>6} {:>9} {:>8} {:>9}",
        "t (ms)", "misses", "reqs", "guess", "MB/s", "wait ms", "idle ms"
    );
    for b in &v.buckets {
        println!(
            "{:>9.0} {:>7.2} {:>6.2} {:>6.2} {:>9.2} {:>8.1} {:>9.1}",
            b.start_ms,
            b.misses,
            b.requests,
            b.speculative,
            b.bytes / 1e6 / (v.width_ms / 1e3),
            b.wait_ms,
            b.idle_wait_ms
        );
    }
    println!(
        "reads waited {:.0} ms in all: {:.0} ms with the link idle (latency-bound), {:.0} ms \
         with bytes arriving; the link carried bytes for {:.0} ms; {} events{}",
        v.wait_ms,
        v.idle_wait_ms,
        v.wait_ms - v.idle_wait_ms,
        v.busy_ms,
        events.len(),
        if dropped > 0 {
            format!(" ({dropped} more not kept)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Runs `umount`.
pub fn umount(a: UmountArgs) -> anyhow::Result<()> {
    let target = a
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", a.dir.display()))?;
    let state = MountState::for_target(&target);
    let st = state.record().ok();
    let Some(st) = st else {
        if state.exists() || stargaze_fs::sys::is_mount_point(&target) {
            state.clean_up(None, &target);
            println!("cleaned up a stale mount at {}", target.display());
            return Ok(());
        }
        bail!("{} is not mounted by stargaze", target.display());
    };
    if stop_server(st.pid, Duration::from_secs(20)) {
        eprintln!(
            "stargaze: the mount server (pid {}) did not stop; killed it",
            st.pid
        );
    }
    if let Ok(s) = state.stats() {
        println!("{STATS_HEADER}");
        for l in &s.layers {
            println!("{}", stats_line(l));
        }
    }
    state.clean_up(Some(&st), &target);
    println!("unmounted {}", target.display());
    Ok(())
}

/// Runs `stats`.
pub fn stats(a: StatsArgs) -> anyhow::Result<()> {
    let target = a
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", a.dir.display()))?;
    let state = MountState::for_target(&target);
    let data = state
        .stats_raw()
        .with_context(|| format!("{} is not mounted by stargaze", target.display()))?;
    if a.json && !a.timeline {
        println!("{}", String::from_utf8_lossy(&data));
        return Ok(());
    }
    let s: StatsFile = serde_json::from_slice(&data).context("reading stats.json")?;
    if a.timeline {
        return print_timeline(&s, a.bucket_ms.unwrap_or(0.0), a.json);
    }
    println!(
        "{} at {} ({:.0}s mounted)",
        s.reference,
        target.display(),
        s.elapsed_secs
    );
    println!("{STATS_HEADER}");
    let (mut fetched, mut size) = (0u64, 0u64);
    for l in &s.layers {
        println!("{}", stats_line(l));
        fetched += l["bytes_fetched"].as_u64().unwrap_or(0);
        size += l["size"].as_u64().unwrap_or(0);
    }
    println!(
        "total: {} fetched of {} ({:.1}%)",
        bytes(fetched),
        bytes(size),
        100.0 * fetched as f64 / size.max(1) as f64
    );
    Ok(())
}
