//! `stargaze build --addr ADDR …`: the same build sent to a running `stargaze buildkitd`
//! (or any buildkitd) the way buildctl sends it — a session serving the context, the
//! Dockerfile's directory and the user's registry credentials, `dockerfile.v0` with the
//! build's attributes, plain progress — so one engine runs both ways. `-t oci:DIR[:TAG]`
//! comes back over the session as the `oci` exporter's tarball and is imported into the
//! layout, `-t REF --push` is the `image` exporter pushing, `-t REF` names the image in the
//! daemon's store; `--output` takes buildctl's syntax instead.

use anyhow::Context;
use stargaze_fs::image::{import_layout_tar, OciLayout};
use stargaze_fs::remote::auth::DockerConfig;
use stargaze_worker::buildkitd::client::build::{build, BuildOptions};
use stargaze_worker::buildkitd::client::output::Output;
use stargaze_worker::buildkitd::client::{channel_with, ClientTls};
use stargaze_worker::frontend::export::{parse_destination, Destination};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the remote build is asked for (from `stargaze build`'s flags).
pub struct RemoteBuild<'a> {
    /// The daemon's address.
    pub addr: &'a str,
    /// Context directory (canonical).
    pub context: PathBuf,
    /// The Dockerfile.
    pub file: PathBuf,
    /// `-t`.
    pub tag: Option<&'a str>,
    /// `--push`.
    pub push: bool,
    /// `--estargz`.
    pub estargz: bool,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<&'a str>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--platform`.
    pub platform: Option<&'a str>,
    /// `--output` (buildctl's syntax).
    pub output: Option<&'a str>,
    /// `--docker-config`.
    pub docker_config: Option<&'a Path>,
    /// `--tlsservername`, `--tlscacert`, `--tlscert`, `--tlskey` for a `tcp://` daemon.
    pub tls: ClientTls,
}

fn options(r: &RemoteBuild, oci_tar: Option<&Path>) -> anyhow::Result<BuildOptions> {
    let mut o = BuildOptions::dockerfile(&r.context);
    let file = r
        .file
        .canonicalize()
        .with_context(|| format!("Dockerfile {}", r.file.display()))?;
    let (dir, name) = match (file.parent(), file.file_name()) {
        (Some(d), Some(n)) => (d.to_path_buf(), n.to_string_lossy().into_owned()),
        _ => anyhow::bail!("Dockerfile {}: not a file", file.display()),
    };
    o.locals.insert("dockerfile".into(), dir);
    o.attrs.insert("filename".into(), name);
    for (k, v) in &r.build_args {
        o.attrs.insert(format!("build-arg:{k}"), v.clone());
    }
    if let Some(t) = r.target {
        o.attrs.insert("target".into(), t.into());
    }
    if let Some(p) = r.platform {
        o.attrs.insert("platform".into(), p.into());
    }
    if r.no_cache {
        o.attrs.insert("no-cache".into(), String::new());
    }
    let dest = r.tag.map(|t| parse_destination(t, r.push)).transpose()?;
    anyhow::ensure!(!r.push || dest.is_some(), "--push needs -t HOST/REPO[:TAG]");
    match (r.output, dest) {
        (Some(_), Some(_)) => anyhow::bail!("give either -t or --output, not both"),
        (Some(spec), None) => o.set_output(spec)?,
        (None, Some(Destination::Layout { tag, .. })) => {
            o.exporter = "oci".into();
            o.exporter_attrs.insert("name".into(), tag);
            o.output = oci_tar.map(|p| Output::File(p.to_path_buf()));
        }
        (None, Some(Destination::Registry(reference))) => {
            o.exporter = "image".into();
            o.exporter_attrs
                .insert("name".into(), reference.to_string());
            if r.push {
                o.exporter_attrs.insert("push".into(), "true".into());
            }
        }
        (None, None) => {}
    }
    if r.estargz && !o.exporter.is_empty() {
        o.exporter_attrs
            .insert("compression".into(), "estargz".into());
        o.exporter_attrs
            .insert("force-compression".into(), "true".into());
    }
    let config = match r.docker_config {
        Some(p) => {
            DockerConfig::load(p).with_context(|| format!("docker config {}", p.display()))?
        }
        None => DockerConfig::load_default().context("docker config")?,
    };
    o.docker_config = Some(config);
    Ok(o)
}

/// Runs the build on the daemon at `r.addr`, printing its progress and a summary.
pub fn run(r: RemoteBuild) -> anyhow::Result<()> {
    let started = Instant::now();
    let layout_dest = match r.tag.map(|t| parse_destination(t, r.push)).transpose()? {
        Some(Destination::Layout { dir, tag }) => Some((dir, tag)),
        _ => None,
    };
    let scratch = tempfile::tempdir().context("a scratch directory for the export")?;
    let oci_tar = scratch.path().join("image.tar");
    let opts = options(&r, layout_dest.as_ref().map(|_| oci_tar.as_path()))?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let outcome = rt.block_on(async {
        let ch = channel_with(r.addr, &r.tls)
            .await
            .with_context(|| format!("connecting to the daemon at {}", r.addr))?;
        build(ch, &opts, Box::new(std::io::stdout()))
            .await
            .with_context(|| format!("build through {}", r.addr))
    })?;
    let response = match outcome.result {
        Ok(resp) => resp,
        Err(e) => anyhow::bail!("build failed: {}", e.message()),
    };
    if let Some(Err(e)) = &outcome.exported {
        anyhow::bail!("receiving the export: {e}");
    }
    if let Some((dir, tag)) = &layout_dest {
        let layout = OciLayout::open_or_create(dir)
            .with_context(|| format!("image layout {}", dir.display()))?;
        let f = std::fs::File::open(&oci_tar).context("the daemon sent no image")?;
        let got = import_layout_tar(&layout, std::io::BufReader::new(f), Some(tag))
            .with_context(|| format!("importing the image into {}", dir.display()))?;
        println!(
            "image oci:{}:{tag}: manifest {} ({} new blobs, {:.1} MB)",
            dir.display(),
            got.manifest.digest(),
            got.blobs_written,
            got.bytes_written as f64 / 1e6
        );
    }
    if let Some(d) = response.exporter_response.get("containerimage.digest") {
        let name = response
            .exporter_response
            .get("image.name")
            .map_or(String::new(), |n| format!("{n} "));
        println!("image {name}{d}");
    }
    let v = &outcome.progress.vertices;
    let cached = v.iter().filter(|s| s.vertex.cached).count();
    println!(
        "built in {:.2} s through the daemon at {}: {} vertices, {} cached",
        started.elapsed().as_secs_f64(),
        r.addr,
        v.len(),
        cached
    );
    Ok(())
}
