//! The emulated WAN the cold-start, snapshotter and build benches share: the bench image in
//! the built-in registry, reached through a delaying proxy inside a private network namespace
//! whose loopback is shaped (see `netem.rs`), and the link and command figures they print.

use super::debian_image;
use crate::netem::{DelayProxy, Netns};
use crate::{have, is_root};
use stargaze_fs::registry::{BackgroundRegistry, RegistryOptions};
use std::time::Duration;

/// The link rate, Mbit/s.
pub const RATE_MBIT: f64 = 100.0;
/// The one-way delay.
pub const DELAY: Duration = Duration::from_millis(20);
/// The command every bench runs in the image; it prints `12345`.
pub const CMD: [&str; 3] = ["python3", "-c", "print(12345)"];
/// Runs per way; the benches print medians.
pub const RUNS: usize = 3;

/// The emulated WAN: the bench image in the built-in registry, reached through a delaying
/// proxy inside a network namespace with a shaped loopback.
pub struct Wan {
    _work: tempfile::TempDir,
    _reg: BackgroundRegistry,
    /// The namespace the clients run in.
    pub ns: Netns,
    _proxy: DelayProxy,
    /// The registry's `host:port` as seen from inside the namespace.
    pub host: String,
    /// The gzip image's reference.
    pub plain: String,
    /// The eStargz image's reference.
    pub esgz: String,
}

/// The WAN with the image served, or `None` (after printing `WHAT: SKIPPED: …`) without root,
/// debootstrap, iproute2 or nsenter.
pub fn wan(what: &str) -> Option<Wan> {
    if !(is_root() && have("debootstrap") && have("ip") && have("tc") && have("nsenter")) {
        println!("{what}: SKIPPED: needs root, debootstrap, iproute2 (ip, tc) and nsenter");
        return None;
    }
    let layout = debian_image();
    let work = tempfile::tempdir().expect("temp");
    let root = work.path().join("registry");
    std::fs::create_dir_all(root.join("bench")).expect("root");
    std::os::unix::fs::symlink(&layout, root.join("bench/debian")).expect("symlink");
    let reg = BackgroundRegistry::start(
        RegistryOptions::new(&root),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("registry");
    let ns = Netns::create(Some(&format!("{RATE_MBIT}mbit")));
    let proxy = DelayProxy::start(&ns, reg.addr(), DELAY);
    let host = proxy.addr.to_string();
    Some(Wan {
        plain: format!("{host}/bench/debian:plain"),
        esgz: format!("{host}/bench/debian:esgz"),
        host,
        _work: work,
        _reg: reg,
        ns,
        _proxy: proxy,
    })
}
