//! Registry flags shared by the subcommands that talk to registries, and the client they
//! build: docker config credentials as the fallback, insecure hosts and mirrors from flags.

use anyhow::Context;
use clap::Args;
use stargaze_fs::remote::auth::{CredentialProvider, DockerConfig};
use stargaze_fs::remote::{ClientOptions, RegistryClient};
use stargaze_worker::config::Config;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Builds a client from `opts` (hosts from a config file already in) plus the flags.
    pub fn client(&self, mut opts: ClientOptions) -> anyhow::Result<RegistryClient> {
        for h in &self.insecure {
            opts.hosts.set_insecure(h);
        }
        for m in &self.mirrors {
            let (reg, url) = m
                .split_once('=')
                .with_context(|| format!("--mirror {m:?}: expected REGISTRY=MIRROR"))?;
            opts.hosts
                .add_mirror(reg, url)
                .with_context(|| format!("--mirror {m:?}"))?;
        }
        let cfg = match &self.docker_config {
            Some(p) => DockerConfig::load(p)?,
            None => DockerConfig::load_default()?,
        };
        opts.fallback = vec![Arc::new(cfg) as Arc<dyn CredentialProvider>];
        Ok(RegistryClient::new(opts)?)
    }
}

impl RegistryFlags {
    /// Builds a client from the config file and the flags.
    pub fn client(&self) -> anyhow::Result<RegistryClient> {
        let mut opts = ClientOptions::default();
        let cfg = match &self.config {
            Some(p) => Config::load(p)?,
            None => Config::load_default()?,
        };
        if !cfg.not_yet_used.is_empty() {
            tracing::info!(sections = ?cfg.not_yet_used, "config sections not used by this command");
        }
        opts.hosts = cfg.hosts().context("config")?;
        self.hosts.client(opts)
    }
}
