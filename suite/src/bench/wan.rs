//! The emulated WAN the cold-start, snapshotter, build and HelloBench benches share: OCI
//! layouts in the built-in registry, reached through a delaying proxy inside a private network
//! namespace whose loopback is shaped (see `netem.rs`), and the link and command figures they
//! print.

use super::debian_image;
use crate::netem::{DelayProxy, Netns};
use crate::{have, is_root};
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The link rate, Mbit/s.
pub const RATE_MBIT: f64 = 100.0;
/// The one-way delay.
pub const DELAY: Duration = Duration::from_millis(20);
/// The command every bench runs in the image; it prints `12345`.
pub const CMD: [&str; 3] = ["python3", "-c", "print(12345)"];
/// Runs per way; the benches print medians.
pub const RUNS: usize = 3;

/// The emulated WAN: images in the built-in registry, reached through a delaying proxy inside
/// a network namespace with a shaped loopback.
pub struct Wan {
    _work: tempfile::TempDir,
    _reg: BackgroundRegistry,
    /// The namespace the clients run in.
    pub ns: Netns,
    proxy: DelayProxy,
    /// The registry's `host:port` as seen from inside the namespace.
    pub host: String,
    /// The link rate, Mbit/s.
    pub rate_mbit: f64,
    /// The first repository's gzip image (`HOST/REPO:plain`).
    pub plain: String,
    /// The first repository's eStargz image (`HOST/REPO:esgz`).
    pub esgz: String,
}

impl Wan {
    /// Bytes the registry has sent through the proxy so far (every client, every mode).
    pub fn bytes_down(&self) -> u64 {
        self.proxy.bytes_down.load(Ordering::Relaxed)
    }

    /// The round-trip time.
    pub fn rtt(&self) -> f64 {
        2.0 * DELAY.as_secs_f64()
    }
}

/// Whether the WAN can be built here; prints `WHAT: SKIPPED: …` when not.
pub fn wan_prerequisites(what: &str) -> bool {
    if !(is_root() && have("debootstrap") && have("ip") && have("tc") && have("nsenter")) {
        println!("{what}: SKIPPED: needs root, debootstrap, iproute2 (ip, tc) and nsenter");
        return false;
    }
    true
}

/// The WAN with the debian+python3 image served as `bench/debian`, or `None` (after printing
/// `WHAT: SKIPPED: …`) without root, debootstrap, iproute2 or nsenter.
pub fn wan(what: &str) -> Option<Wan> {
    if !wan_prerequisites(what) {
        return None;
    }
    Some(serve(&[("bench/debian", debian_image())], RATE_MBIT))
}

/// Serves each `(repository, OCI layout)` through a fresh proxy and namespace at `rate_mbit`.
pub fn serve(repos: &[(&str, PathBuf)], rate_mbit: f64) -> Wan {
    let work = tempfile::tempdir().expect("temp");
    let root = work.path().join("registry");
    for (repo, layout) in repos {
        let at = root.join(repo);
        std::fs::create_dir_all(at.parent().unwrap_or(Path::new("/"))).expect("root");
        std::os::unix::fs::symlink(layout, &at).expect("symlink");
    }
    let reg = BackgroundRegistry::start(
        RegistryOptions::new(&root),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("registry");
    let ns = Netns::create(Some(&format!("{rate_mbit}mbit")));
    let proxy = DelayProxy::start(&ns, reg.addr(), DELAY);
    let host = proxy.addr.to_string();
    let first = repos.first().map_or("", |r| r.0);
    Wan {
        plain: format!("{host}/{first}:plain"),
        esgz: format!("{host}/{first}:esgz"),
        host,
        rate_mbit,
        _work: work,
        _reg: reg,
        ns,
        proxy,
    }
}
