//! `[registry."host"]`: buildkitd's per-registry settings. `mirrors` are `host[:port]` names
//! tried in order before the registry for pulls; `http = true` means plain HTTP for that host.
//! `insecure` (TLS without verification), `ca` and `keypair` are refused until TLS options
//! land, rather than silently ignored.

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
    pub(crate) fn from_value(host: &str, v: &toml::Value) -> Result<Self, String> {
        let e: RegistryEntry = v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| format!("registry {host:?}: {}", e.message()))?;
        if e.insecure == Some(true) || e.ca.is_some() || e.keypair.is_some() {
            return Err(format!(
                "registry {host:?}: insecure/ca/keypair (TLS settings) are not supported yet; use http = true for plain HTTP"
            ));
        }
        for m in &e.mirrors {
            let ok = !m.is_empty()
                && !m.contains("://")
                && !m.contains('@')
                && m.trim_end_matches('/').split('/').count() == 1;
            if !ok {
                return Err(format!(
                    "registry {host:?}: mirror {m:?} must be host[:port] (no scheme or path)"
                ));
            }
        }
        Ok(e)
    }
}
