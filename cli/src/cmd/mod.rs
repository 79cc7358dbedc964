//! One module per subcommand; each owns its clap arguments and its output.

pub mod build;
pub mod build_remote;
pub mod buildkitd;
pub mod convert;
pub mod copy;
pub mod demo;
pub mod extract;
pub mod inspect;
pub mod mount;
pub mod oci_worker;
pub mod profile;
pub mod registry;
pub mod registry_gc;
pub mod remote;
pub mod snapshotter;
pub mod verify;
pub mod worker;

use anyhow::Context;
use stargaze_fs::format::{FileBlob, LayerReader, OpenOptions};
use stargaze_fs::Digest;
use std::path::Path;

/// Opens a local layer blob, checking the TOC digest when given.
pub fn open_blob(path: &Path, toc_digest: Option<&str>) -> anyhow::Result<LayerReader<FileBlob>> {
    let mut opts = OpenOptions::default();
    if let Some(d) = toc_digest {
        opts.toc_digest = Some(
            d.parse::<Digest>()
                .with_context(|| format!("--toc-digest {d:?}"))?,
        );
    }
    let blob = FileBlob::open(path)?;
    LayerReader::open(blob, &opts).with_context(|| format!("opening layer {}", path.display()))
}
