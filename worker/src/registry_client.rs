//! The registry client every command and the worker use, assembled in one place: hosts from
//! the config file's `[registry."host"]` (mirrors, plain HTTP), then the caller's overrides
//! (plain-HTTP hosts, mirrors, another docker config), with the docker config's credentials as
//! the fallback after sessions. A `[registry]` section that does not resolve is an error, never
//! silently replaced by defaults.

use crate::config::{Config, ConfigError, ParseError};
use stargaze_fs::remote::auth::{CredentialError, CredentialProvider, DockerConfig};
use stargaze_fs::remote::{ClientOptions, HostsConfig, MirrorError, RegistryClient, RemoteError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why the registry client could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum RegistrySetupError {
    /// The config file could not be read or parsed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config file's `[registry]` section does not resolve to host settings.
    #[error("config: {0}")]
    Hosts(#[source] ParseError),
    /// A mirror override is not of the form `REGISTRY=MIRROR`.
    #[error("mirror {0:?}: expected REGISTRY=MIRROR")]
    MirrorSyntax(String),
    /// A mirror override's URL is not a mirror URL.
    #[error("mirror {value:?}")]
    Mirror {
        /// The override as given.
        value: String,
        /// What is wrong with its URL.
        #[source]
        source: MirrorError,
    },
    /// The docker config with the credentials could not be read.
    #[error("docker config")]
    DockerConfig(#[source] CredentialError),
    /// The client itself could not be built.
    #[error("registry client: {0}")]
    Client(#[from] RemoteError),
}

/// What a caller adds on top of the config file's `[registry]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryOverrides {
    /// Hosts (`host[:port]`) spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// Mirrors as `REGISTRY=MIRROR` (MIRROR an `http(s)://host[:port]` URL), tried in order
    /// before REGISTRY for pulls.
    pub mirrors: Vec<String>,
    /// Docker config file with credentials; `None`: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`, when it exists.
    pub docker_config: Option<PathBuf>,
}

impl RegistryOverrides {
    /// Builds a client from `opts` (hosts from a config file already in) plus the overrides
    /// and the docker config's credentials.
    pub fn client(&self, mut opts: ClientOptions) -> Result<RegistryClient, RegistrySetupError> {
        self.apply_hosts(&mut opts.hosts)?;
        let docker = match &self.docker_config {
            Some(p) => DockerConfig::load(p),
            None => DockerConfig::load_default(),
        }
        .map_err(RegistrySetupError::DockerConfig)?;
        opts.fallback = vec![Arc::new(docker) as Arc<dyn CredentialProvider>];
        Ok(RegistryClient::new(opts)?)
    }

    /// Adds the plain-HTTP hosts and mirrors to `hosts`.
    pub fn apply_hosts(&self, hosts: &mut HostsConfig) -> Result<(), RegistrySetupError> {
        for h in &self.insecure {
            hosts.set_insecure(h);
        }
        for m in &self.mirrors {
            let (registry, url) = m
                .split_once('=')
                .ok_or_else(|| RegistrySetupError::MirrorSyntax(m.clone()))?;
            hosts
                .add_mirror(registry, url)
                .map_err(|source| RegistrySetupError::Mirror {
                    value: m.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// The host settings of a config's `[registry]` section.
pub fn config_hosts(config: &Config) -> Result<HostsConfig, RegistrySetupError> {
    config.hosts().map_err(RegistrySetupError::Hosts)
}

/// The config file at `path`, else the default one when it exists (see
/// [`Config::load_default`]).
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::load_default(),
    }
}

/// A client from the config file at `config` (else the default one) and `overrides`.
pub fn registry_client(
    config: Option<&Path>,
    overrides: &RegistryOverrides,
) -> Result<RegistryClient, RegistrySetupError> {
    let cfg = load_config(config)?;
    if !cfg.not_yet_used.is_empty() {
        tracing::info!(sections = ?cfg.not_yet_used, "config sections not used by this command");
    }
    let opts = ClientOptions {
        hosts: config_hosts(&cfg)?,
        ..ClientOptions::default()
    };
    overrides.client(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_registry_section_is_an_error_not_a_default() {
        let cfg = Config::parse("[registry.\"docker.io\"]\nmirrors = [\"mirror.lan\"]").unwrap();
        assert!(config_hosts(&cfg).is_ok());
        let mut hosts = HostsConfig::default();
        let bad = RegistryOverrides {
            mirrors: vec!["docker.io".into()],
            ..RegistryOverrides::default()
        };
        let e = bad.apply_hosts(&mut hosts).unwrap_err();
        assert!(e.to_string().contains("REGISTRY=MIRROR"), "{e}");
        let bad_url = RegistryOverrides {
            mirrors: vec!["docker.io=ftp://x".into()],
            ..RegistryOverrides::default()
        };
        assert!(bad_url.apply_hosts(&mut hosts).is_err());
    }
}
