//! One view of a layer: the decompressed payload, read as the tar stream a scanner or a
//! plain `tar -x` sees, must say what the TOC a lazy reader trusts says. Entry by entry, in
//! order: name, type, mode, owner, size, link target and device numbers agree; each file's
//! payload is exactly its chunks, in order, each lying in the frame the TOC names at the
//! offset it names and hashing to its digest; nothing follows the last entry but zeros; and
//! (gzip) the TOC member holds the TOC and nothing else.
//!
//! Only `stargaze verify` pays for this full read. The lazy mount keeps trusting the TOC
//! (once verified), and extraction writes the TOC's view, the same as the mount shows.

use super::index::{normalize_path, Entry};
use super::reader::{BlobSource, LayerReader, SourceReader};
use super::tar::{TarEntry, TarKind, TarReader};
use super::{Compression, FormatError, Index, NodeId, NodeKind, TOC_NAME};
use crate::digest::Hasher;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::rc::Rc;

/// Where the decompressed stream is, shared between the frame chain and the checker.
#[derive(Default)]
struct Position {
    /// Decompressed bytes produced so far.
    pos: u64,
    /// Decompressed offset at which each opened frame started.
    frame_start: Vec<u64>,
    /// The frame that produced the last byte read.
    last_frame: usize,
}

/// The payload `[0, end)` decompressed frame after frame, each frame on its own, so the
/// decompressed offset of every frame the TOC names is known.
struct Frames<'a, S> {
    source: &'a S,
    compression: Compression,
    starts: Vec<u64>,
    end: u64,
    next: usize,
    cur: Option<Box<dyn Read + 'a>>,
    at: Rc<RefCell<Position>>,
}

impl<'a, S: BlobSource> Frames<'a, S> {
    fn open(&mut self) -> std::io::Result<bool> {
        let Some(&start) = self.starts.get(self.next) else {
            return Ok(false);
        };
        let end = self.starts.get(self.next + 1).copied().unwrap_or(self.end);
        let raw = std::io::BufReader::new(SourceReader {
            source: self.source,
            pos: start,
            end,
        });
        self.cur = Some(match self.compression {
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        });
        let mut at = self.at.borrow_mut();
        let pos = at.pos;
        at.frame_start.push(pos);
        self.next += 1;
        Ok(true)
    }
}

impl<S: BlobSource> Read for Frames<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.cur.is_none() && !self.open()? {
                return Ok(0);
            }
            let n = match self.cur.as_mut() {
                Some(r) => r.read(buf).map_err(|e| {
                    std::io::Error::other(format!(
                        "frame at blob offset {}: {e}",
                        self.starts[self.next - 1]
                    ))
                })?,
                None => 0,
            };
            if n == 0 && !buf.is_empty() {
                self.cur = None;
                continue;
            }
            let mut at = self.at.borrow_mut();
            at.pos += n as u64;
            at.last_frame = self.next - 1;
            return Ok(n);
        }
    }
}

/// What the stream check covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Tar entries read and matched with the TOC.
    pub tar_entries: usize,
    /// Decompressed payload bytes read.
    pub bytes: u64,
}

fn mismatch(
    entry: &str,
    field: &str,
    toc: impl std::fmt::Debug,
    tar: impl std::fmt::Debug,
) -> FormatError {
    FormatError::entry(
        entry,
        format!("{field} differs: TOC says {toc:?}, tar header says {tar:?}"),
    )
}

/// Checks the decompressed payload of `reader`'s blob against its TOC (see the module docs).
pub fn verify_stream<S: BlobSource>(reader: &LayerReader<S>) -> Result<StreamReport, FormatError> {
    let index = reader.index();
    let mut starts: Vec<u64> = index
        .nodes
        .iter()
        .flat_map(|n| n.chunks.iter())
        .filter(|c| !c.zeros)
        .map(|c| c.blob_offset)
        .collect();
    starts.push(0);
    starts.sort_unstable();
    starts.dedup();
    let at = Rc::new(RefCell::new(Position::default()));
    let frames = Frames {
        source: reader.source(),
        compression: index.compression,
        starts,
        end: index.payload_end,
        next: 0,
        cur: None,
        at: at.clone(),
    };
    let starts_of = frames.starts.clone();
    let mut tar = TarReader::new(frames);
    // A directory named twice takes its metadata from the last entry naming it.
    let mut last_naming: HashMap<NodeId, usize> = HashMap::new();
    for (i, e) in index.entries.iter().enumerate() {
        if index.node(e.node).kind == NodeKind::Dir {
            last_naming.insert(e.node, i);
        }
    }
    let mut report = StreamReport::default();
    let limits = super::Limits::default();
    while let Some(t) = tar.next_entry()? {
        let Some(e) = index.entries.get(report.tar_entries) else {
            return Err(FormatError::entry(
                &t.path,
                "tar entry is not in the TOC (the TOC ends before the tar stream)",
            ));
        };
        let last = last_naming
            .get(&e.node)
            .is_none_or(|&j| j == report.tar_entries);
        check_entry(index, e, &t, last, &limits)?;
        if t.kind == TarKind::Reg && !e.hardlink {
            check_payload(index, e.node, &mut tar, &at, &starts_of)?;
        }
        report.tar_entries += 1;
    }
    if let Some(e) = index.entries.get(report.tar_entries) {
        return Err(FormatError::entry(
            &e.path,
            "TOC entry is not in the tar stream (the tar stream ends before the TOC)",
        ));
    }
    let mut rest = tar_rest(tar)?;
    if rest.iter().any(|&b| b != 0) {
        return Err(FormatError::Tar(
            "non-zero bytes after the end of the tar stream's last entry".into(),
        ));
    }
    rest.clear();
    report.bytes = at.borrow().pos;
    if index.compression == Compression::Gzip {
        check_toc_member(reader)?;
    }
    Ok(report)
}

/// What follows the end-of-archive marker in the payload (bounded: a few blocks are normal).
fn tar_rest<R: Read>(tar: TarReader<R>) -> Result<Vec<u8>, FormatError> {
    let mut inner = tar.into_inner();
    let mut rest = Vec::new();
    (&mut inner)
        .take(1 << 20)
        .read_to_end(&mut rest)
        .map_err(|e| FormatError::io("reading the payload", e))?;
    let mut probe = [0u8; 1];
    if inner
        .read(&mut probe)
        .map_err(|e| FormatError::io("reading the payload", e))?
        > 0
    {
        return Err(FormatError::Tar(
            "more than 1 MiB after the end of the tar stream".into(),
        ));
    }
    Ok(rest)
}

fn check_entry(
    index: &Index,
    e: &Entry,
    t: &TarEntry,
    meta: bool,
    limits: &super::Limits,
) -> Result<(), FormatError> {
    let name = e.path.as_str();
    let tar_path = normalize_path(&t.path, limits)?;
    if tar_path != e.path {
        return Err(mismatch(name, "name", name, &t.path));
    }
    let node = index.node(e.node);
    let toc_kind = if e.hardlink {
        "hardlink"
    } else {
        node.kind.as_str()
    };
    if toc_kind != t.kind.toc_kind() {
        return Err(mismatch(name, "type", toc_kind, t.kind.toc_kind()));
    }
    if e.hardlink {
        let target = normalize_path(&t.link_name, limits)?;
        if index.lookup(&target) != Some(e.node) {
            return Err(mismatch(
                name,
                "hardlink target",
                index.path(e.node),
                &t.link_name,
            ));
        }
        return Ok(());
    }
    if meta {
        if node.mode != t.mode & 0o7777 {
            return Err(mismatch(
                name,
                "mode",
                format!("{:o}", node.mode),
                format!("{:o}", t.mode),
            ));
        }
        if u64::from(node.uid) != t.uid {
            return Err(mismatch(name, "uid", node.uid, t.uid));
        }
        if u64::from(node.gid) != t.gid {
            return Err(mismatch(name, "gid", node.gid, t.gid));
        }
    }
    match node.kind {
        NodeKind::Reg if node.size != t.size => Err(mismatch(name, "size", node.size, t.size)),
        NodeKind::Symlink if node.link_target() != t.link_name => Err(mismatch(
            name,
            "link target",
            node.link_target(),
            &t.link_name,
        )),
        NodeKind::Char | NodeKind::Block if node.dev() != (t.dev_major, t.dev_minor) => Err(
            mismatch(name, "device", node.dev(), (t.dev_major, t.dev_minor)),
        ),
        _ => Ok(()),
    }
}

/// Reads a file's payload chunk by chunk: each chunk's bytes must be where the TOC puts them
/// (its frame's decompressed start plus `innerOffset`, within that frame) and hash right.
fn check_payload<R: Read>(
    index: &Index,
    id: NodeId,
    tar: &mut TarReader<R>,
    at: &Rc<RefCell<Position>>,
    starts: &[u64],
) -> Result<(), FormatError> {
    let node = index.node(id);
    let name = || index.path(id);
    let mut buf = Vec::new();
    for c in node.chunks.iter() {
        let here = at.borrow().pos;
        buf.resize(c.size as usize, 0);
        tar.read_data_exact(&mut buf)?;
        let mut h = Hasher::new();
        h.update(&buf);
        let got = h.finish();
        if c.zeros {
            if buf.iter().any(|&b| b != 0) {
                return Err(FormatError::entry(
                    &name(),
                    format!(
                        "zeros chunk at file offset {} holds non-zero bytes",
                        c.file_offset
                    ),
                ));
            }
            continue;
        }
        if let Some(want) = c.digest {
            if want != got {
                return Err(FormatError::ChunkDigest {
                    file: name(),
                    file_offset: c.file_offset,
                    expected: want,
                    actual: got,
                });
            }
        }
        let pos = at.borrow();
        let frame = starts.binary_search(&c.blob_offset).ok();
        let start = frame.and_then(|f| pos.frame_start.get(f).copied());
        if start.map(|s| s + c.inner_offset) != Some(here) {
            return Err(FormatError::entry(
                &name(),
                format!(
                    "chunk at file offset {}: the TOC puts it {} bytes into the frame at blob \
                     offset {}, the tar stream has it at decompressed offset {here}{}",
                    c.file_offset,
                    c.inner_offset,
                    c.blob_offset,
                    start.map_or(String::new(), |s| format!(" (that frame starts at {s})"))
                ),
            ));
        }
        if frame != Some(pos.last_frame) {
            return Err(FormatError::entry(
                &name(),
                format!(
                    "chunk at file offset {} runs past the end of its frame at blob offset {}",
                    c.file_offset, c.blob_offset
                ),
            ));
        }
    }
    let mut extra = [0u8; 1];
    if tar.read_data(&mut extra)? > 0 {
        return Err(FormatError::entry(
            &name(),
            "tar payload is longer than its chunks",
        ));
    }
    Ok(())
}

/// gzip: the TOC member (from the payload end to the footer) decompresses to the TOC entry
/// and the end-of-archive marker, nothing a scanner would see as another file.
fn check_toc_member<S: BlobSource>(reader: &LayerReader<S>) -> Result<(), FormatError> {
    let index = reader.index();
    let src = reader.source();
    let raw = std::io::BufReader::new(SourceReader {
        source: src,
        pos: index.payload_end,
        end: src.size(),
    });
    let max = reader.toc_json().len() as u64 + (64 << 10);
    let dec = flate2::bufread::MultiGzDecoder::new(raw).take(max + 1);
    let mut tar = TarReader::new(dec);
    let first = tar
        .next_entry()?
        .ok_or_else(|| FormatError::Toc("TOC member holds no tar entry".into()))?;
    if first.path.trim_start_matches("./") != TOC_NAME {
        return Err(FormatError::Toc(format!(
            "TOC member holds {:?}, not {TOC_NAME}",
            first.path
        )));
    }
    if let Some(more) = tar.next_entry()? {
        return Err(FormatError::entry(
            &more.path,
            "tar entry after the TOC in the TOC member (not in the TOC)",
        ));
    }
    let rest = tar_rest(tar)?;
    if rest.iter().any(|&b| b != 0) {
        return Err(FormatError::Toc(
            "non-zero bytes after the TOC entry".into(),
        ));
    }
    Ok(())
}
