//! `stargaze build -f Dockerfile CONTEXT [-t DEST] [--push] [--estargz]`: a Dockerfile built
//! on the OCI worker (flags and config as `stargaze worker`), progress per step, export to
//! an OCI layout (`-t oci:DIR:TAG`) or a registry (`-t REF --push`), GC after the build
//! when it is on, and a summary of what ran, what came from the cache and how the base
//! layers arrived (lazily mounted, pulled, present) with the bytes fetched lazily.
//! With `--addr` the same build goes to a daemon instead (`build_remote`).

use super::oci_worker::OciWorkerArgs;
use anyhow::Context;
use clap::Args;
use stargaze_fs::remote::Platform;
use stargaze_worker::frontend::dockerfile::{self, MAX_DOCKERFILE};
use stargaze_worker::frontend::export::{export, parse_destination};
use stargaze_worker::frontend::progress::Progress;
use stargaze_worker::frontend::{build, BuildRequest};
use stargaze_worker::oci_worker::{LockMode, OciWorker};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

const DEFAULT_ROOT: &str = "/var/lib/stargaze";

/// `stargaze build …`
#[derive(Args)]
pub struct BuildArgs {
    /// Build context directory.
    context: PathBuf,
    /// Dockerfile [default: CONTEXT/Dockerfile].
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Where the image goes: oci:DIR[:TAG], or HOST/REPO[:TAG] with --push.
    #[arg(short = 't', long = "tag")]
    tag: Option<String>,
    /// Push the image to the registry named by -t.
    #[arg(long)]
    push: bool,
    /// Write the built layers as eStargz (lazily pullable).
    #[arg(long)]
    estargz: bool,
    /// Build argument KEY=VALUE (or KEY, taken from the environment). Repeatable.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Stage to build [default: the last].
    #[arg(long)]
    target: Option<String>,
    /// Run every step, ignoring the step cache.
    #[arg(long)]
    no_cache: bool,
    /// Platform of the base images and the result, OS/ARCH[/VARIANT] [default: the host's].
    #[arg(long)]
    platform: Option<String>,
    /// State directory.
    #[arg(long, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Config file (buildkitd TOML: `[worker.oci]`, `[registry."host"]`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Build on the buildkitd at this address (unix://PATH) instead of in this process;
    /// the daemon's worker settings apply.
    #[arg(long, conflicts_with_all = ["config"])]
    addr: Option<String>,
    /// With --addr: buildctl's --output (type=image|oci|docker|tar|local,…) instead of -t.
    #[arg(long, requires = "addr", value_name = "type=…")]
    output: Option<String>,
    /// With a tcp:// --addr: the server name to verify (buildctl's --tlsservername).
    #[arg(long, requires = "addr")]
    tlsservername: Option<String>,
    /// With a tcp:// --addr: CA certificate of the daemon.
    #[arg(long, requires = "addr")]
    tlscacert: Option<PathBuf>,
    /// With a tcp:// --addr: client certificate.
    #[arg(long, requires = "addr")]
    tlscert: Option<PathBuf>,
    /// With a tcp:// --addr: client key.
    #[arg(long, requires = "addr")]
    tlskey: Option<PathBuf>,
    #[command(flatten)]
    oci: OciWorkerArgs,
    #[command(flatten)]
    hosts: super::remote::HostFlags,
}

fn build_args(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for i in items {
        let (k, v) = match i.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => match std::env::var(i) {
                Ok(v) => (i.clone(), v),
                Err(_) => continue,
            },
        };
        anyhow::ensure!(
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "--build-arg {i:?}: not KEY=VALUE"
        );
        out.insert(k, v);
    }
    Ok(out)
}

/// The build context (canonical) and the Dockerfile (`-f`, else `CONTEXT/Dockerfile`).
fn context_and_file(a: &BuildArgs) -> anyhow::Result<(PathBuf, PathBuf)> {
    anyhow::ensure!(
        a.context.is_dir(),
        "build context {}: not a directory",
        a.context.display()
    );
    let context = a
        .context
        .canonicalize()
        .with_context(|| format!("build context {}", a.context.display()))?;
    let file = a.file.clone().unwrap_or_else(|| context.join("Dockerfile"));
    Ok((context, file))
}

/// Runs the build.
pub fn run(a: BuildArgs) -> anyhow::Result<()> {
    if let Some(addr) = &a.addr {
        return remote(&a, addr);
    }
    let started = Instant::now();
    let dest = a
        .tag
        .as_deref()
        .map(|t| parse_destination(t, a.push))
        .transpose()?;
    anyhow::ensure!(!a.push || dest.is_some(), "--push needs -t HOST/REPO[:TAG]");
    let (context, file) = context_and_file(&a)?;
    let mut text = String::new();
    std::fs::File::open(&file)
        .with_context(|| format!("opening {}", file.display()))?
        .take(MAX_DOCKERFILE as u64 + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {} (must be UTF-8 text)", file.display()))?;
    let df = dockerfile::parse(&text).with_context(|| file.display().to_string())?;
    let platform = match &a.platform {
        Some(p) => Platform::parse(p).with_context(|| format!("--platform {p}"))?,
        None => Platform::host(),
    };
    let args = build_args(&a.build_args)?;
    let settings = a.oci.settings(a.config.as_deref(), &a.hosts.overrides())?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let opened = OciWorker::open(&a.root, &settings, LockMode::Shared, rt.handle())?;
    let progress = Progress::new(Box::new(std::io::stdout()));
    let req = BuildRequest {
        dockerfile: df,
        context,
        build_args: args,
        target: a.target.clone(),
        platform,
        estargz: a.estargz,
        no_cache: a.no_cache,
        sessions: Vec::new(),
        secrets: None,
        ssh: None,
    };
    let worker = opened.worker().clone();
    // Ctrl-C or SIGTERM: running steps are killed and cleaned up, then the build fails.
    let cancel = opened.canceller();
    rt.spawn(async move {
        super::registry::wait_for_signal().await;
        eprintln!("stargaze build: interrupted; stopping running steps");
        let _ = cancel.send(true);
    });
    let out = rt
        .block_on(build(worker, req, progress.clone()))
        .map_err(anyhow::Error::from);
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            drop(opened);
            return Err(e.context("build failed"));
        }
    };
    if let Some(d) = &dest {
        rt.block_on(export(
            opened.client(),
            &opened.worker().content,
            &out.image,
            d,
            &progress,
            &[],
        ))?;
    }
    if let Some(r) = opened.collect_after_build() {
        if !r.removed.is_empty() || r.blobs > 0 {
            println!(
                "GC: removed {} snapshots, {} layer blobs, freed {:.1} MB",
                r.removed.len(),
                r.blobs,
                r.freed as f64 / 1e6
            );
        }
    }
    let s = out.stats;
    println!(
        "built in {:.2} s with the {} snapshotter: {} steps run, {} cached; base layers: {} mounted lazily, {} pulled, {} present",
        started.elapsed().as_secs_f64(),
        opened.snapshotter(),
        s.executed,
        s.cached,
        s.lazy_layers,
        s.pulled_layers,
        s.present_layers
    );
    if let Some((fetched, size)) = opened.lazy_fetched() {
        println!(
            "lazy base layers: fetched {fetched} of {size} bytes ({:.1}%)",
            if size == 0 {
                0.0
            } else {
                fetched as f64 * 100.0 / size as f64
            }
        );
    }
    if let Some(layer) = out.image.layers.last() {
        tracing::debug!(top = %layer.blob.digest, "top layer");
    }
    Ok(())
}

/// `--addr`: the build through a daemon. Flags that configure the in-process worker are
/// refused rather than ignored.
fn remote(a: &BuildArgs, addr: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.oci.is_default() && a.root == std::path::Path::new(DEFAULT_ROOT),
        "--addr builds on the daemon's worker: --root and the --oci-worker-* flags belong to the daemon"
    );
    anyhow::ensure!(
        a.hosts.insecure.is_empty() && a.hosts.mirrors.is_empty(),
        "--addr: --insecure-registry and --mirror belong to the daemon (its [registry] config)"
    );
    let (context, file) = context_and_file(a)?;
    super::build_remote::run(super::build_remote::RemoteBuild {
        addr,
        context,
        file,
        tag: a.tag.as_deref(),
        push: a.push,
        estargz: a.estargz,
        build_args: build_args(&a.build_args)?,
        target: a.target.as_deref(),
        no_cache: a.no_cache,
        platform: a.platform.as_deref(),
        output: a.output.as_deref(),
        docker_config: a.hosts.docker_config.as_deref(),
        tls: stargaze_worker::buildkitd::client::ClientTls {
            server_name: a.tlsservername.clone(),
            ca: a.tlscacert.clone(),
            cert: a.tlscert.clone(),
            key: a.tlskey.clone(),
        },
    })
}
