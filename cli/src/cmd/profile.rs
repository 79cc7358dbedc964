//! `stargaze profile push|pull|show|rm`: the learned prefetch profiles of an image. `push`
//! composes this machine's per-layer profiles of IMAGE's layers into one document and
//! publishes it beside the image as a referrer of its manifest; `pull` fetches the
//! registry's into the local store; `show` summarises one; `rm` forgets the local ones so
//! the next cold start records again.

use super::remote::RegistryFlags;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use stargaze_fs::profile::{self, LayerProfile, Profile, ProfileError, ProfileStore};
use stargaze_fs::remote::{Manifest, Platform, Reference, RegistryClient};
use std::path::PathBuf;

/// `stargaze profile …`
#[derive(Args)]
pub struct ProfileArgs {
    #[command(subcommand)]
    command: ProfileCommand,
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Publish this machine's profile of IMAGE to its registry (a referrer of its manifest).
    Push(ImageArgs),
    /// Fetch the registry's profile of IMAGE into the local store.
    Pull(ImageArgs),
    /// Summarise a profile: IMAGE's local one, the registry's (--remote), or a file.
    Show(ShowArgs),
    /// Forget this machine's profiles of IMAGE's layers (the next cold start records anew).
    Rm(ImageArgs),
}

#[derive(Args)]
struct ImageArgs {
    /// Image reference (`HOST/REPO[:TAG|@DIGEST]`, docker:// prefix optional).
    image: String,
    /// Platform to take from a multi-platform image (default: this machine).
    #[arg(long)]
    platform: Option<Platform>,
    /// Where this machine's profiles are.
    #[arg(long, default_value = profile::DEFAULT_DIR)]
    profile_dir: PathBuf,
    #[command(flatten)]
    registry: RegistryFlags,
}

#[derive(Args)]
struct ShowArgs {
    /// Image reference (or use --file).
    #[arg(required_unless_present = "file")]
    image: Option<String>,
    /// A profile document.
    #[arg(long, conflicts_with = "image")]
    file: Option<PathBuf>,
    /// Show the registry's profile instead of the local one.
    #[arg(long)]
    remote: bool,
    /// Platform to take from a multi-platform image (default: this machine).
    #[arg(long)]
    platform: Option<Platform>,
    /// Where this machine's profiles are.
    #[arg(long, default_value = profile::DEFAULT_DIR)]
    profile_dir: PathBuf,
    #[command(flatten)]
    registry: RegistryFlags,
}

/// Runs `profile`.
pub fn run(a: ProfileArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match a.command {
        ProfileCommand::Push(a) => rt.block_on(push(a)),
        ProfileCommand::Pull(a) => rt.block_on(pull(a)),
        ProfileCommand::Show(a) => rt.block_on(show(a)),
        ProfileCommand::Rm(a) => rt.block_on(rm(a)),
    }
}

async fn resolve(
    image: &str,
    platform: &Option<Platform>,
    flags: &RegistryFlags,
) -> anyhow::Result<(RegistryClient, Reference, Manifest)> {
    let r = Reference::parse(image.trim_start_matches("docker://"))
        .with_context(|| format!("image reference {image:?}"))?;
    let client = flags.client()?;
    let platform = platform.clone().unwrap_or_else(Platform::host);
    let (m, _) = client
        .resolve(&r, &platform, &[])
        .await
        .with_context(|| format!("resolving {r}"))?;
    Ok((client, r, m))
}

/// This machine's profiles of the layers of `m`, bottom layer first.
fn local_profile(store: &ProfileStore, m: &Manifest) -> anyhow::Result<Profile> {
    let mut layers: Vec<LayerProfile> = Vec::new();
    for d in &m.layers {
        let digest = d.digest().context("layer descriptor")?;
        layers.extend(store.for_layer(&digest).into_iter().take(1));
    }
    if layers.is_empty() {
        return Err(ProfileError::Empty.into());
    }
    Ok(Profile::new(layers))
}

async fn push(a: ImageArgs) -> anyhow::Result<()> {
    let (client, r, m) = resolve(&a.image, &a.platform, &a.registry).await?;
    let store = ProfileStore::new(&a.profile_dir);
    let p =
        local_profile(&store, &m).with_context(|| format!("{r} in {}", a.profile_dir.display()))?;
    let d = profile::push(&client, &r, &m, &p)
        .await
        .with_context(|| format!("pushing the profile of {r}"))?;
    println!("pushed the prefetch profile of {r} ({}) as {d}", m.digest);
    summary(&p);
    Ok(())
}

async fn pull(a: ImageArgs) -> anyhow::Result<()> {
    let (client, r, m) = resolve(&a.image, &a.platform, &a.registry).await?;
    let Some(p) = profile::lookup(&client, &r, &m.digest, &[]).await? else {
        bail!("{r} ({}) has no prefetch profile in its registry", m.digest);
    };
    let store = ProfileStore::new(&a.profile_dir);
    let layers: Vec<_> = m.layers.iter().filter_map(|d| d.digest().ok()).collect();
    let mut saved = 0;
    for part in p.layers.iter().filter(|l| layers.contains(&l.layer)) {
        store.save(part)?;
        saved += 1;
    }
    println!(
        "saved {saved} layer profiles of {r} to {}",
        a.profile_dir.display()
    );
    summary(&p);
    Ok(())
}

async fn show(a: ShowArgs) -> anyhow::Result<()> {
    let p = match (&a.file, &a.image) {
        (Some(f), _) => {
            let data = stargaze_fs::small_file::read_small_file(f, profile::MAX_DOC_BYTES as u64)?;
            Profile::parse(&data).with_context(|| format!("{}", f.display()))?
        }
        (None, Some(image)) => {
            let (client, r, m) = resolve(image, &a.platform, &a.registry).await?;
            if a.remote {
                match profile::lookup(&client, &r, &m.digest, &[]).await? {
                    Some(p) => p,
                    None => bail!("{r} ({}) has no prefetch profile in its registry", m.digest),
                }
            } else {
                local_profile(&ProfileStore::new(&a.profile_dir), &m)?
            }
        }
        (None, None) => bail!("give an image or --file"),
    };
    summary(&p);
    Ok(())
}

async fn rm(a: ImageArgs) -> anyhow::Result<()> {
    let (_, r, m) = resolve(&a.image, &a.platform, &a.registry).await?;
    let store = ProfileStore::new(&a.profile_dir);
    let mut n = 0;
    for d in &m.layers {
        let digest = d.digest().context("layer descriptor")?;
        for part in store.for_layer(&digest) {
            n += usize::from(store.remove(&part.layer, &part.toc)?);
        }
    }
    println!("removed {n} layer profiles of {r}");
    Ok(())
}

fn summary(p: &Profile) {
    let entries: usize = p.layers.iter().map(|l| l.chunks.len()).sum();
    let bytes: u64 = p.layers.iter().map(|l| l.bytes).sum();
    println!(
        "{} layers, {entries} chunks, {:.1} MB",
        p.layers.len(),
        bytes as f64 / 1e6
    );
    for l in &p.layers {
        let last = l.chunks.iter().map(|e| e.2).max().unwrap_or(0);
        println!(
            "  {}  {:>6} chunks  {:>8.1} MB  read over {:.1} s",
            l.layer,
            l.chunks.len(),
            l.bytes as f64 / 1e6,
            f64::from(last) / 1e3
        );
    }
}
