//! `stargaze registry serve`: run the built-in OCI registry over a directory of OCI layouts
//! until interrupted (SIGINT/SIGTERM), printing where it listens. `stargaze registry gc`
//! (in `registry_gc`) removes the blobs no manifest needs.

use anyhow::Context;
use clap::{Args, Subcommand};
use stargaze_fs::registry::{Registry, RegistryOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `stargaze registry …`
#[derive(Args)]
pub struct RegistryArgs {
    #[command(subcommand)]
    command: RegistryCommand,
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Serve OCI image layouts under ROOT (repository `a/b` is `ROOT/a/b`).
    Serve(ServeArgs),
    /// Remove blobs no manifest references (a dry run unless --delete).
    Gc(super::registry_gc::GcArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Directory of repositories (created if missing).
    #[arg(long)]
    root: PathBuf,
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:5000")]
    addr: SocketAddr,
    /// htpasswd file of bcrypt hashes (`htpasswd -Bbn USER PASS`); enables basic auth.
    #[arg(long)]
    htpasswd: Option<PathBuf>,
    /// Serve DELETE of manifests, tags and blobs (off: they answer 405 UNSUPPORTED).
    #[arg(long)]
    enable_delete: bool,
    /// Seconds a client has to complete a request head once begun (and to begin one on a new connection).
    #[arg(long, value_name = "SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout: u64,
    /// Seconds a connection with no request in progress stays open.
    #[arg(long, value_name = "SECS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout: u64,
    /// Seconds a request or response body may make no progress before its request fails.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
    /// Connections served at once; more wait in the listen queue until one ends.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Blob upload sessions open at once; more get 429 TOOMANYREQUESTS.
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_uploads: u64,
    /// Blob upload sessions open at once from one client address.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    max_uploads_per_client: u64,
    /// Seconds an untouched upload session lives before it and its data are removed.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    upload_expiry: u64,
}

/// Runs the subcommand.
pub fn run(a: RegistryArgs) -> anyhow::Result<()> {
    match a.command {
        RegistryCommand::Serve(s) => serve(s),
        RegistryCommand::Gc(g) => super::registry_gc::run(g),
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let mut opts = RegistryOptions::new(&a.root);
        opts.htpasswd = a.htpasswd.clone();
        opts.enable_delete = a.enable_delete;
        opts.header_timeout = Duration::from_secs(a.header_timeout);
        opts.idle_timeout = Duration::from_secs(a.idle_timeout);
        opts.body_timeout = Duration::from_secs(a.body_timeout);
        opts.max_connections = usize::try_from(a.max_connections).unwrap_or(usize::MAX);
        opts.max_uploads = usize::try_from(a.max_uploads).unwrap_or(usize::MAX);
        opts.max_uploads_per_client =
            usize::try_from(a.max_uploads_per_client).unwrap_or(usize::MAX);
        opts.upload_expiry = Duration::from_secs(a.upload_expiry);
        let reg = Registry::bind(&opts, a.addr)
            .await
            .context("starting the registry")?;
        let addr = reg.local_addr()?;
        println!(
            "stargaze registry: serving {} on http://{addr}{}{}",
            a.root.display(),
            if a.htpasswd.is_some() {
                " (basic auth)"
            } else {
                ""
            },
            if a.enable_delete {
                " (deletes enabled)"
            } else {
                ""
            }
        );
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = tx.send(true);
        });
        reg.serve(rx).await?;
        println!("stargaze registry: stopped");
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
