//! Which snapshotter backs a worker or the snapshots service. One name set serves the config
//! file (`[worker.oci] snapshotter`), the flags (`--oci-worker-snapshotter`, `snapshotter serve
//! --backend`), the worker's state directory and labels, so a name is parsed once and matched
//! as a variant everywhere after; `auto` becomes a real backend through the probe in
//! `probe.rs`.

use super::probe::{choose, Choice};
use crate::names::{self, Names};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// A snapshotter backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// overlayfs, else fuse-overlayfs, else native, by a probe mount.
    Auto,
    /// Kernel overlayfs.
    Overlayfs,
    /// Full copies (works anywhere).
    Native,
    /// The fuse-overlayfs program.
    FuseOverlayfs,
    /// overlayfs with lazily mounted eStargz layers.
    Stargz,
}

/// A name that is no [`Backend`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown snapshotter name {name:?} (choose one of {})",
    Backend::names()
)]
pub struct UnknownBackend {
    /// The name given.
    pub name: String,
}

impl Backend {
    /// Every backend, in the order names are listed.
    pub const ALL: [Backend; 5] = [
        Backend::Auto,
        Backend::Overlayfs,
        Backend::Native,
        Backend::FuseOverlayfs,
        Backend::Stargz,
    ];

    /// The name, as configs, flags, state directories (`runc-<name>`) and labels spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Overlayfs => "overlayfs",
            Backend::Native => "native",
            Backend::FuseOverlayfs => "fuse-overlayfs",
            Backend::Stargz => "stargz",
        }
    }

    /// The accepted names, comma-separated.
    pub fn names() -> String {
        names::list::<Backend>()
    }

    /// This backend with `auto` resolved by probing `root` (which must exist), and why.
    pub fn resolve(self, root: &Path) -> (Backend, String) {
        match self {
            Backend::Auto => match choose(root) {
                Choice::Overlayfs => (Backend::Overlayfs, "auto: a test overlay mounted".into()),
                Choice::FuseOverlayfs { because } => {
                    (Backend::FuseOverlayfs, format!("auto: {because}"))
                }
                Choice::Native { because } => (Backend::Native, format!("auto: {because}")),
            },
            b => (b, "configured".into()),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a name; the empty name is `auto` (as an empty `snapshotter` key is in buildkitd).
impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        if s.is_empty() {
            return Ok(Backend::Auto);
        }
        names::lookup(s).ok_or_else(|| UnknownBackend {
            name: s.to_string(),
        })
    }
}

impl<'de> serde::Deserialize<'de> for Backend {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        names::deserialize(d)
    }
}

impl Names for Backend {
    const ALL: &'static [Self] = &Backend::ALL;

    fn name(self) -> &'static str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_choices() {
        for b in Backend::ALL {
            assert_eq!(b.to_string().parse::<Backend>(), Ok(b));
        }
        assert_eq!("".parse::<Backend>(), Ok(Backend::Auto));
        let e = "overlay".parse::<Backend>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown snapshotter name \"overlay\" (choose one of auto, overlayfs, native, \
             fuse-overlayfs, stargz)"
        );
        assert_eq!(
            Backend::Stargz.resolve(Path::new("/nonexistent")),
            (Backend::Stargz, "configured".to_string())
        );
    }
}
