//! Per-registry host settings, as containerd's `hosts.toml` gives them: plain HTTP only for
//! hosts configured insecure (localhost and 127.0.0.0/8 by default), mirrors tried in order
//! before the origin for pulls, and a cap on concurrent requests per host.

use serde::Deserialize;
use std::collections::HashMap;

/// Settings for one registry host.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Use plain HTTP (and accept it in redirects and token realms) for this host.
    #[serde(default)]
    pub insecure: bool,
    /// Mirrors tried in order before the origin for pulls, as `http(s)://host[:port]`.
    #[serde(default)]
    pub mirrors: Vec<String>,
}

/// Settings for all hosts.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostsConfig {
    /// Per-host settings by `host[:port]`.
    #[serde(default)]
    pub hosts: HashMap<String, HostConfig>,
    /// Concurrent requests per host.
    #[serde(default = "default_per_host")]
    pub max_per_host: usize,
}

fn default_per_host() -> usize {
    8
}

impl Default for HostsConfig {
    fn default() -> Self {
        HostsConfig {
            hosts: HashMap::new(),
            max_per_host: default_per_host(),
        }
    }
}

/// One place a request may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http(s)://host[:port]`.
    pub base: String,
    /// `host[:port]`, the key for auth and concurrency.
    pub host: String,
    /// True for a mirror (pulls only; the origin namespace is passed as `?ns=`).
    pub mirror: bool,
}

impl HostsConfig {
    /// Whether plain HTTP is allowed to `host` (`host[:port]`).
    pub fn is_insecure(&self, host: &str) -> bool {
        if self.hosts.get(host).is_some_and(|h| h.insecure) {
            return true;
        }
        let name = strip_port(host);
        if self.hosts.get(name).is_some_and(|h| h.insecure) {
            return true;
        }
        is_loopback(name)
    }

    /// Marks a host insecure (the `--insecure-registry` flag).
    pub fn set_insecure(&mut self, host: &str) {
        self.hosts.entry(host.to_string()).or_default().insecure = true;
    }

    /// Adds a mirror for a registry (the `--mirror REGISTRY=URL` flag).
    pub fn add_mirror(&mut self, registry: &str, url: &str) -> Result<(), MirrorError> {
        parse_base(url)?;
        self.hosts
            .entry(registry.to_string())
            .or_default()
            .mirrors
            .push(url.trim_end_matches('/').to_string());
        Ok(())
    }

    /// Where to send a request for `registry` (`api_host` is its API host, which differs for
    /// docker.io): mirrors first for pulls, then the origin.
    pub fn endpoints(&self, registry: &str, api_host: &str, pull: bool) -> Vec<Endpoint> {
        let mut out = Vec::new();
        if pull {
            if let Some(h) = self.hosts.get(registry) {
                for m in &h.mirrors {
                    if let Ok((_, host)) = parse_base(m) {
                        out.push(Endpoint {
                            base: m.clone(),
                            host,
                            mirror: true,
                        });
                    }
                }
            }
        }
        let scheme = if self.is_insecure(api_host) || self.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        out.push(Endpoint {
            base: format!("{scheme}://{api_host}"),
            host: api_host.to_string(),
            mirror: false,
        });
        out
    }
}

/// Why a mirror URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// Not `http://` or `https://`.
    #[error("mirror {0:?} must start with http:// or https://")]
    Scheme(String),
    /// A path, user info or no host after the scheme.
    #[error("mirror {0:?} must be scheme://host[:port]")]
    Host(String),
}

/// Splits `http(s)://host[:port]` into scheme and host.
fn parse_base(url: &str) -> Result<(String, String), MirrorError> {
    let scheme_err = || MirrorError::Scheme(url.to_string());
    let (scheme, rest) = url.split_once("://").ok_or_else(scheme_err)?;
    if scheme != "http" && scheme != "https" {
        return Err(scheme_err());
    }
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') || host.contains('@') {
        return Err(MirrorError::Host(url.to_string()));
    }
    Ok((scheme.to_string(), host.to_string()))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// localhost, 127.0.0.0/8 and ::1.
pub fn is_loopback(name: &str) -> bool {
    if name == "localhost" {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_defaults_and_endpoints() {
        let mut c = HostsConfig::default();
        assert!(c.is_insecure("127.0.0.1:5000"));
        assert!(c.is_insecure("127.1.2.3"));
        assert!(c.is_insecure("localhost:80"));
        assert!(c.is_insecure("[::1]:5000"));
        assert!(!c.is_insecure("registry.example:5000"));
        let e = c.endpoints("docker.io", "registry-1.docker.io", true);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].base, "https://registry-1.docker.io");
        c.add_mirror("docker.io", "http://127.0.0.1:5001/").unwrap();
        c.set_insecure("reg.lan:5000");
        let e = c.endpoints("docker.io", "registry-1.docker.io", true);
        assert_eq!(e[0].base, "http://127.0.0.1:5001");
        assert!(e[0].mirror);
        assert_eq!(
            c.endpoints("docker.io", "registry-1.docker.io", false)
                .len(),
            1
        );
        assert_eq!(
            c.endpoints("reg.lan:5000", "reg.lan:5000", true)[0].base,
            "http://reg.lan:5000"
        );
        assert!(c.add_mirror("x", "ftp://a").is_err());
        assert!(c.add_mirror("x", "http://u:p@a").is_err());
    }
}
