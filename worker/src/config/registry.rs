//! `[registry."host"]`: buildkitd's per-registry settings. `mirrors` are `host[:port]` names
//! tried in order before the registry for pulls; `http = true` means plain HTTP for that host.
//! `insecure` (TLS without verification), `ca` and `keypair` are refused until TLS options
//! land, rather than silently ignored.

use super::error::{KeyError, ParseError};
use super::keypath::KeyPath;
use serde::Deserialize;

/// One `[registry."host"]` table.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// Mirror hosts, tried in order.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Plain HTTP to this host.
    #[serde(default)]
    pub http: bool,
    #[serde(default)]
    insecure: Option<bool>,
    #[serde(default)]
    ca: Option<Vec<String>>,
    #[serde(default)]
    keypair: Option<Vec<toml::Value>>,
}

impl RegistryEntry {
    /// Refuses TLS settings (not supported yet) and mirrors that are not `host[:port]`; `at`
    /// is the entry's key path.
    pub(crate) fn check(&self, at: &KeyPath) -> Result<(), ParseError> {
        if self.insecure == Some(true) || self.ca.is_some() || self.keypair.is_some() {
            let key = match (self.insecure, &self.ca) {
                (Some(true), _) => "insecure",
                (_, Some(_)) => "ca",
                _ => "keypair",
            };
            return Err(ParseError::at(
                at.clone().key(key),
                KeyError::TlsNotSupported,
            ));
        }
        for (i, m) in self.mirrors.iter().enumerate() {
            let ok = !m.is_empty()
                && !m.contains("://")
                && !m.contains('@')
                && m.trim_end_matches('/').split('/').count() == 1;
            if !ok {
                return Err(ParseError::at(
                    at.clone().key("mirrors").index(i),
                    KeyError::MirrorForm(m.clone()),
                ));
            }
        }
        Ok(())
    }
}
