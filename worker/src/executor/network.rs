//! The network mode as configured (`[worker.oci] networkMode`, `--oci-worker-net`): `auto`,
//! `host` or `cni`, parsed once and shared by the config, the flags and the worker labels.
//! [`NetworkKind::resolve`] says what `auto` means on this host; the executor's
//! [`super::NetworkMode`] is the resolved mode with its CNI config loaded.

use crate::names::{self, Names};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// A configured network mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetworkKind {
    /// `cni` when the CNI config exists, else `host` (always `host` when rootless).
    Auto,
    /// Steps share the host's network.
    Host,
    /// Steps get a network namespace set up by CNI plugins.
    Cni,
}

/// A name that is no [`NetworkKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown network mode {name:?} (choose one of {})",
    NetworkKind::names()
)]
pub struct UnknownNetworkKind {
    /// The name given.
    pub name: String,
}

impl NetworkKind {
    /// Every mode, in the order names are listed.
    pub const ALL: [NetworkKind; 3] = [NetworkKind::Auto, NetworkKind::Host, NetworkKind::Cni];

    /// The name, as configs, flags and labels spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::Auto => "auto",
            NetworkKind::Host => "host",
            NetworkKind::Cni => "cni",
        }
    }

    /// The accepted names, comma-separated.
    pub fn names() -> String {
        names::list::<NetworkKind>()
    }

    /// The mode in force: `host` when `rootless` (steps cannot make network namespaces of
    /// their own there); `auto` is `cni` when `cni_config` is a file, else `host`.
    pub fn resolve(self, rootless: bool, cni_config: &Path) -> NetworkKind {
        match self {
            _ if rootless => NetworkKind::Host,
            NetworkKind::Auto if cni_config.is_file() => NetworkKind::Cni,
            NetworkKind::Auto => NetworkKind::Host,
            m => m,
        }
    }
}

impl fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NetworkKind {
    type Err = UnknownNetworkKind;

    fn from_str(s: &str) -> Result<Self, UnknownNetworkKind> {
        names::lookup(s).ok_or_else(|| UnknownNetworkKind {
            name: s.to_string(),
        })
    }
}

impl<'de> serde::Deserialize<'de> for NetworkKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        names::deserialize(d)
    }
}

impl Names for NetworkKind {
    const ALL: &'static [Self] = &NetworkKind::ALL;

    fn name(self) -> &'static str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_auto_resolves() {
        for m in NetworkKind::ALL {
            assert_eq!(m.to_string().parse::<NetworkKind>(), Ok(m));
        }
        let e = "bridge".parse::<NetworkKind>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown network mode \"bridge\" (choose one of auto, host, cni)"
        );
        let dir = tempfile::tempdir().unwrap();
        let cni = dir.path().join("cni.json");
        assert_eq!(NetworkKind::Auto.resolve(false, &cni), NetworkKind::Host);
        std::fs::write(&cni, "{}").unwrap();
        assert_eq!(NetworkKind::Auto.resolve(false, &cni), NetworkKind::Cni);
        assert_eq!(NetworkKind::Auto.resolve(true, &cni), NetworkKind::Host);
        assert_eq!(NetworkKind::Cni.resolve(true, &cni), NetworkKind::Host);
        assert_eq!(
            NetworkKind::Cni.resolve(false, dir.path()),
            NetworkKind::Cni
        );
    }
}
