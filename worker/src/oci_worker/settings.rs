//! The worker's settings in their order of precedence: the config file's `[worker.oci]`
//! (buildkitd's names), then each flag given; and the registry hosts from the same file's
//! `[registry]` section, then the caller's overrides. Resolved once, before anything is opened,
//! so a bad file or flag stops a command before it mounts or forks anything.

use super::OpenError;
use crate::config::{Config, OciWorkerConfig, OciWorkerFlags};
use crate::registry_client::{config_hosts, load_config, RegistryOverrides, RegistrySetupError};
use stargaze_fs::remote::{ClientOptions, HostsConfig, RegistryClient};
use std::path::Path;

/// Everything [`super::OciWorker::open`] needs to know.
#[derive(Debug, Clone, Default)]
pub struct WorkerSettings {
    /// `[worker.oci]` with the flags applied.
    pub oci: OciWorkerConfig,
    /// Registry hosts: `[registry]` with the overrides' plain-HTTP hosts and mirrors.
    pub hosts: HostsConfig,
    /// Registry overrides (for the docker config with the credentials).
    pub registry: RegistryOverrides,
}

impl WorkerSettings {
    /// Reads the config file at `config` (else the default one, when it exists) and applies
    /// `flags` over its `[worker.oci]` and `registry` over its `[registry]`.
    pub fn load(
        config: Option<&Path>,
        flags: &OciWorkerFlags,
        registry: &RegistryOverrides,
    ) -> Result<WorkerSettings, OpenError> {
        Self::from_config(&load_config(config)?, flags, registry)
    }

    /// Applies `flags` and `registry` over an already read config file.
    pub fn from_config(
        file: &Config,
        flags: &OciWorkerFlags,
        registry: &RegistryOverrides,
    ) -> Result<WorkerSettings, OpenError> {
        let mut oci = file.oci_worker.clone();
        oci.apply(flags)?;
        if let Some(p) = &oci.proxy_snapshotter_path {
            if !p.exists() {
                return Err(OpenError::NoProxySocket(p.clone()));
            }
        }
        let mut hosts = config_hosts(file)?;
        registry.apply_hosts(&mut hosts)?;
        Ok(WorkerSettings {
            oci,
            hosts,
            registry: registry.clone(),
        })
    }

    /// The registry client these settings describe (credentials from the docker config).
    pub fn registry_client(&self) -> Result<RegistryClient, RegistrySetupError> {
        // The hosts already carry the overrides; only the credentials are left to add.
        let creds_only = RegistryOverrides {
            docker_config: self.registry.docker_config.clone(),
            ..RegistryOverrides::default()
        };
        creds_only.client(ClientOptions {
            hosts: self.hosts.clone(),
            ..ClientOptions::default()
        })
    }
}
