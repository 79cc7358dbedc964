//! Registry flags shared by the subcommands that talk to registries; the client they describe
//! is assembled by `stargaze_worker::registry_client` (docker config credentials as the
//! fallback, insecure hosts and mirrors from the flags over the config file's).

use clap::Args;
use stargaze_fs::remote::RegistryClient;
use stargaze_worker::registry_client::{registry_client, RegistryOverrides};
use std::path::PathBuf;

/// `--config`, `--insecure-registry`, `--mirror`, `--docker-config`.
#[derive(Args, Clone, Default)]
pub struct RegistryFlags {
    /// Config file (buildkitd TOML; `[registry."host"]` mirrors and http are used). Default:
    /// $STARGAZE_CONFIG, else /etc/stargaze/config.toml when it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub hosts: HostFlags,
}

/// `--insecure-registry`, `--mirror`, `--docker-config`.
#[derive(Args, Clone, Default)]
pub struct HostFlags {
    /// Allow plain HTTP to HOST[:PORT] (localhost and 127.0.0.0/8 always are). Repeatable.
    #[arg(
        long = "insecure-registry",
        visible_alias = "insecure",
        value_name = "HOST"
    )]
    pub insecure: Vec<String>,
    /// Try MIRROR (http(s)://host[:port]) before REGISTRY for pulls: REGISTRY=MIRROR. Repeatable.
    #[arg(long = "mirror", value_name = "REGISTRY=MIRROR")]
    pub mirrors: Vec<String>,
    /// Docker config file with credentials (default: $DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json).
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
}

impl HostFlags {
    /// The flags as the library's registry overrides.
    pub fn overrides(&self) -> RegistryOverrides {
        RegistryOverrides {
            insecure: self.insecure.clone(),
            mirrors: self.mirrors.clone(),
            docker_config: self.docker_config.clone(),
        }
    }
}

impl RegistryFlags {
    /// Builds a client from the config file and the flags.
    pub fn client(&self) -> anyhow::Result<RegistryClient> {
        Ok(registry_client(
            self.config.as_deref(),
            &self.hosts.overrides(),
        )?)
    }
}
