//! `toc`, `ls` and `cat`: read-only views of one layer blob, for people and scripts.

use super::open_blob;
use anyhow::Context;
use clap::Args;
use stargaze_fs::format::NodeKind;
use std::io::Write;
use std::path::PathBuf;

/// `stargaze toc BLOB`
#[derive(Args)]
pub struct TocArgs {
    /// Layer blob (eStargz gzip/zstd, legacy stargz, zstd:chunked).
    blob: PathBuf,
    /// Refuse the blob unless its TOC has this digest.
    #[arg(long)]
    toc_digest: Option<String>,
}

/// `stargaze ls BLOB`
#[derive(Args)]
pub struct LsArgs {
    /// Layer blob.
    blob: PathBuf,
    /// Refuse the blob unless its TOC has this digest.
    #[arg(long)]
    toc_digest: Option<String>,
}

/// `stargaze cat BLOB PATH`
#[derive(Args)]
pub struct CatArgs {
    /// Layer blob.
    blob: PathBuf,
    /// Path of a regular file inside the layer.
    path: String,
    /// Refuse the blob unless its TOC has this digest.
    #[arg(long)]
    toc_digest: Option<String>,
}

/// Prints the TOC JSON exactly as stored.
pub fn toc(a: TocArgs) -> anyhow::Result<()> {
    let r = open_blob(&a.blob, a.toc_digest.as_deref())?;
    let mut out = std::io::stdout().lock();
    out.write_all(r.toc_json())?;
    out.flush()?;
    Ok(())
}

/// Lists entries in TOC order.
pub fn ls(a: LsArgs) -> anyhow::Result<()> {
    let r = open_blob(&a.blob, a.toc_digest.as_deref())?;
    let idx = r.index();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for e in &idx.entries {
        let n = idx.node(e.node);
        let kind = if e.hardlink {
            "hardlink"
        } else {
            n.kind.as_str()
        };
        let name = if e.path.is_empty() { "." } else { &e.path };
        let extra = match n.kind {
            NodeKind::Symlink => format!(" -> {}", n.link_target()),
            _ if e.hardlink => format!(" link to {}", idx.path(e.node)),
            NodeKind::Char | NodeKind::Block => format!(" [{},{}]", n.dev().0, n.dev().1),
            _ => String::new(),
        };
        writeln!(
            out,
            "{kind:<8} {:04o} {}:{} {:>10} {name}{extra}",
            n.mode, n.uid, n.gid, n.size
        )?;
    }
    out.flush()?;
    Ok(())
}

/// Writes one file's verified content to stdout.
pub fn cat(a: CatArgs) -> anyhow::Result<()> {
    let r = open_blob(&a.blob, a.toc_digest.as_deref())?;
    let id = r
        .index()
        .lookup(&a.path)
        .with_context(|| format!("{:?} is not in the layer", a.path))?;
    let mut out = std::io::stdout().lock();
    r.copy_file(id, &mut out)
        .with_context(|| format!("reading {:?}", a.path))?;
    out.flush()?;
    Ok(())
}
