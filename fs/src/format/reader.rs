//! Random access to a layer blob: footer → TOC (digest-checked) → [`Index`] → verified chunks.
//!
//! The blob comes through [`BlobSource`], one primitive (`read_at`) so that a local file, a
//! byte buffer and (later) a registry Range fetcher all serve the same reader. No byte of a
//! chunk is returned before it hashed to its `chunkDigest`.

use super::footer::{Footer, MAX_FOOTER_READ};
use super::tar::TarReader;
use super::{Compression, FormatError, Index, Limits, NodeId, NodeKind, TOC_NAME};
use crate::oci::{
    UNCOMPRESSED_SIZE_ANNOTATION, ZSTD_CHUNKED_CHECKSUM_ANNOTATIONS,
    ZSTD_CHUNKED_POSITION_ANNOTATIONS,
};
use crate::Digest;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Where blob bytes come from.
pub trait BlobSource: Send + Sync {
    /// Total blob size.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`; fails if they are not all there.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;

    /// Reads `len` bytes at `offset` into a new buffer, checking the range first.
    fn read_range(&self, offset: u64, len: u64) -> Result<Vec<u8>, FormatError> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.size())
            .ok_or_else(|| {
                FormatError::Truncated(format!(
                    "range [{offset}, +{len}) is past the blob end {}",
                    self.size()
                ))
            })?;
        let mut buf = vec![0u8; (end - offset) as usize];
        self.read_at(offset, &mut buf)
            .map_err(|e| FormatError::io(format!("reading blob at {offset}"), e))?;
        Ok(buf)
    }
}

/// A blob in a local file.
#[derive(Debug)]
pub struct FileBlob {
    file: std::fs::File,
    size: u64,
}

impl FileBlob {
    /// Opens a local blob file.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let file = std::fs::File::open(path)
            .map_err(|e| FormatError::io(format!("opening {}", path.display()), e))?;
        let size = file
            .metadata()
            .map_err(|e| FormatError::io(format!("stat {}", path.display()), e))?
            .len();
        Ok(FileBlob { file, size })
    }
}

impl BlobSource for FileBlob {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

impl BlobSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        let src = self.get(start..end).ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fn eof() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past end of blob")
}

/// A window of a blob held in memory (`[start, size)`), e.g. the metadata a remote reader
/// fetched with one Range request; reads outside it fail.
#[derive(Debug, Clone)]
pub struct WindowBlob {
    size: u64,
    start: u64,
    data: Vec<u8>,
}

impl WindowBlob {
    /// `data` holds the blob's bytes from `start` to its end, `size`.
    pub fn new(size: u64, start: u64, data: Vec<u8>) -> Result<Self, FormatError> {
        if start.checked_add(data.len() as u64) != Some(size) {
            return Err(FormatError::Truncated(format!(
                "window of {} bytes at {start} does not end at the blob size {size}",
                data.len()
            )));
        }
        Ok(WindowBlob { size, start, data })
    }
}

impl BlobSource for WindowBlob {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if offset < self.start || end.is_none_or(|e| e > self.size) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "read at {offset} is outside the fetched window from {}",
                    self.start
                ),
            ));
        }
        let from = (offset - self.start) as usize;
        buf.copy_from_slice(&self.data[from..from + buf.len()]);
        Ok(())
    }
}

/// Where a layer's metadata (TOC through footer) starts, from the last bytes of the blob
/// (`tail`, at least the footer) and the descriptor annotations, so a remote reader can
/// fetch all of it with one more Range request. Refuses metadata larger than the limits.
pub fn metadata_start(tail: &[u8], size: u64, opts: &OpenOptions) -> Result<u64, FormatError> {
    let start = match zstd_position(&opts.annotations, size) {
        Some((off, _, _)) => off,
        None => {
            let n = tail.len().min(MAX_FOOTER_READ);
            match Footer::parse(&tail[tail.len() - n..], size)? {
                Footer::Gzip { toc_offset } | Footer::LegacyGzip { toc_offset } => toc_offset,
                Footer::Zstd { toc_offset, .. } => toc_offset,
            }
        }
    };
    if start > size {
        return Err(FormatError::Truncated(format!(
            "TOC offset {start} is past the blob end {size}"
        )));
    }
    let len = size - start;
    if len
        > opts
            .limits
            .max_toc_compressed
            .saturating_add(MAX_FOOTER_READ as u64)
    {
        return Err(FormatError::Limit(format!(
            "layer metadata is {len} bytes (max {})",
            opts.limits.max_toc_compressed
        )));
    }
    Ok(start)
}

/// What the caller trusts about the blob, typically from the manifest.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Expected digest of the uncompressed TOC JSON (`containerd.io/snapshot/stargz/toc.digest`).
    pub toc_digest: Option<Digest>,
    /// The layer descriptor's annotations (zstd:chunked position and checksum are used).
    pub annotations: BTreeMap<String, String>,
    /// Bounds.
    pub limits: Limits,
}

/// An opened layer: its index and a way to read verified chunks.
pub struct LayerReader<S> {
    source: S,
    index: Index,
    footer: Footer,
    toc_json: Vec<u8>,
    toc_digest: Digest,
}

impl<S: BlobSource> LayerReader<S> {
    /// Reads footer and TOC, checks the TOC digest when one is given, and builds the index.
    pub fn open(source: S, opts: &OpenOptions) -> Result<Self, FormatError> {
        let size = source.size();
        let tail_len = size.min(MAX_FOOTER_READ as u64);
        let tail = source.read_range(size - tail_len, tail_len)?;
        // zstd:chunked layers are located by their annotations when present (containers/storage
        // never reads the footer); otherwise by the footer.
        let footer = match zstd_position(&opts.annotations, size) {
            Some((toc_offset, toc_compressed, toc_uncompressed)) => Footer::Zstd {
                toc_offset,
                toc_compressed,
                toc_uncompressed,
                footer_size: 0,
            },
            None => Footer::parse(&tail, size)?,
        };
        let (toc_json, compression, payload_end) = match footer {
            Footer::Gzip { toc_offset } | Footer::LegacyGzip { toc_offset } => {
                let footer_len = match footer {
                    Footer::Gzip { .. } => super::footer::GZIP_FOOTER_SIZE,
                    _ => super::footer::LEGACY_FOOTER_SIZE,
                } as u64;
                let toc_len = size - footer_len - toc_offset;
                if toc_len > opts.limits.max_toc_compressed {
                    return Err(FormatError::Limit(format!(
                        "compressed TOC is {toc_len} bytes (max {})",
                        opts.limits.max_toc_compressed
                    )));
                }
                let member = source.read_range(toc_offset, toc_len)?;
                let json = toc_from_gzip_member(&member, &opts.limits)?;
                (json, Compression::Gzip, toc_offset)
            }
            Footer::Zstd {
                toc_offset,
                toc_compressed,
                toc_uncompressed,
                ..
            } => {
                let (off, clen, ulen) = zstd_position(&opts.annotations, size).unwrap_or((
                    toc_offset,
                    toc_compressed,
                    toc_uncompressed,
                ));
                let json = read_zstd_toc(&source, off, clen, ulen, opts)?;
                (json, Compression::Zstd, off.saturating_sub(8))
            }
        };
        let toc_digest = Digest::of(&toc_json);
        if let Some(expected) = opts.toc_digest {
            if expected != toc_digest {
                return Err(FormatError::TocDigest {
                    expected,
                    actual: toc_digest,
                });
            }
        }
        let uncompressed = opts
            .annotations
            .get(UNCOMPRESSED_SIZE_ANNOTATION)
            .and_then(|v| v.parse().ok());
        let index = Index::from_json_sized(
            &toc_json,
            compression,
            payload_end,
            uncompressed,
            &opts.limits,
        )?;
        Ok(LayerReader {
            source,
            index,
            footer,
            toc_json,
            toc_digest,
        })
    }

    /// The validated index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The footer that was found.
    pub fn footer(&self) -> Footer {
        self.footer
    }

    /// The TOC JSON bytes exactly as stored.
    pub fn toc_json(&self) -> &[u8] {
        &self.toc_json
    }

    /// Keeps only the index and the TOC digest (a lazily read layer needs nothing else; the
    /// blob window and the TOC's JSON are megabytes).
    pub fn into_index(self) -> (Index, Digest) {
        (self.index, self.toc_digest)
    }

    /// Digest of the TOC JSON.
    pub fn toc_digest(&self) -> Digest {
        self.toc_digest
    }

    /// The blob source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Reads, decompresses and verifies chunk `chunk` of regular file `node`.
    pub fn read_chunk(&self, node: NodeId, chunk: usize) -> Result<Vec<u8>, FormatError> {
        let n = self.index.node(node);
        let c = n.chunks.get(chunk).ok_or_else(|| {
            FormatError::NotFound(format!("{}#chunk{chunk}", self.index.path(node)))
        })?;
        let path = self.index.path(node);
        if c.zeros {
            let data = vec![0u8; c.size as usize];
            return verify_chunk(&path, c, data);
        }
        // Stream the frame from the source so only what decompression needs is read and held,
        // however long a (hostile) TOC claims the frame is.
        let frame = std::io::BufReader::with_capacity(
            256 << 10,
            SourceReader {
                source: &self.source,
                pos: c.blob_offset,
                end: c.blob_end.min(self.source.size()),
            },
        );
        decode_chunk_from(self.index.compression, &path, c, frame)
    }

    /// Reads `len` bytes of a regular file at `offset` (short at end of file), verified.
    pub fn read_file(&self, node: NodeId, offset: u64, len: u64) -> Result<Vec<u8>, FormatError> {
        let n = self.index.node(node);
        let end = offset.saturating_add(len).min(n.size);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let i = n.chunk_at(pos).ok_or_else(|| {
                FormatError::entry(&self.index.path(node), format!("no chunk at {pos}"))
            })?;
            let c = &n.chunks[i];
            let data = self.read_chunk(node, i)?;
            let from = (pos - c.file_offset) as usize;
            let to = ((end - c.file_offset) as usize).min(data.len());
            out.extend_from_slice(&data[from..to]);
            pos = c.file_offset + to as u64;
        }
        Ok(out)
    }

    /// Streams a whole regular file, chunk by chunk, each verified before it is written.
    pub fn copy_file(&self, node: NodeId, w: &mut dyn Write) -> Result<u64, FormatError> {
        let n = self.index.node(node);
        if n.kind != NodeKind::Reg {
            return Err(FormatError::entry(
                &self.index.path(node),
                "not a regular file",
            ));
        }
        for i in 0..n.chunks.len() {
            let data = self.read_chunk(node, i)?;
            w.write_all(&data)
                .map_err(|e| FormatError::io("writing file content", e))?;
        }
        Ok(n.size)
    }
}

/// Reads a blob range sequentially through [`BlobSource::read_at`].
pub(crate) struct SourceReader<'a, S> {
    pub(crate) source: &'a S,
    pub(crate) pos: u64,
    pub(crate) end: u64,
}

impl<S: BlobSource> std::io::Read for SourceReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.end.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.source.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Decompresses one chunk from its frame bytes and verifies it.
pub fn decode_chunk(
    compression: Compression,
    file: &str,
    c: &super::Chunk,
    frame: &[u8],
) -> Result<Vec<u8>, FormatError> {
    decode_chunk_from(compression, file, c, frame)
}

/// [`decode_chunk`] over any buffered reader positioned at the frame start.
pub fn decode_chunk_from<R: std::io::BufRead>(
    compression: Compression,
    file: &str,
    c: &super::Chunk,
    frame: R,
) -> Result<Vec<u8>, FormatError> {
    let mut hasher = crate::digest::Hasher::new();
    let data = compression
        .read_range_hashed(frame, c.inner_offset, c.size, Some(&mut hasher))
        .map_err(|e| FormatError::entry(file, format!("chunk at {}: {e}", c.file_offset)))?;
    check_digest(file, c, hasher.finish())?;
    Ok(data)
}

fn check_digest(file: &str, c: &super::Chunk, actual: Digest) -> Result<(), FormatError> {
    match c.digest {
        Some(expected) if expected != actual => Err(FormatError::ChunkDigest {
            file: file.to_string(),
            file_offset: c.file_offset,
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

fn verify_chunk(file: &str, c: &super::Chunk, data: Vec<u8>) -> Result<Vec<u8>, FormatError> {
    check_digest(file, c, Digest::of(&data))?;
    Ok(data)
}

/// Extracts `stargz.index.json` from the TOC gzip member.
fn toc_from_gzip_member(member: &[u8], limits: &Limits) -> Result<Vec<u8>, FormatError> {
    let tar = Compression::Gzip
        .read_all_bounded(member, limits.max_toc_json + 4096)
        .map_err(|e| FormatError::Toc(format!("TOC member: {e}")))?;
    let mut r = TarReader::new(&tar[..]);
    let e = r
        .next_entry()
        .map_err(|e| FormatError::Toc(format!("TOC tar: {e}")))?
        .ok_or_else(|| FormatError::Toc("TOC member holds no tar entry".into()))?;
    if e.path.trim_start_matches("./") != TOC_NAME {
        return Err(FormatError::Toc(format!(
            "TOC member holds {:?}, not {TOC_NAME}",
            e.path
        )));
    }
    if e.size > limits.max_toc_json {
        return Err(FormatError::Limit(format!("TOC of {} bytes", e.size)));
    }
    let mut json = vec![0u8; e.size as usize];
    r.read_data_exact(&mut json)
        .map_err(|e| FormatError::Toc(format!("TOC tar: {e}")))?;
    Ok(json)
}

/// The zstd:chunked manifest position from annotations, when present and in range.
fn zstd_position(ann: &BTreeMap<String, String>, size: u64) -> Option<(u64, u64, u64)> {
    let v = ZSTD_CHUNKED_POSITION_ANNOTATIONS
        .iter()
        .find_map(|k| ann.get(*k))?;
    let parts: Vec<u64> = v
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if parts.len() != 4 || parts[3] != 1 {
        return None;
    }
    let end = parts[0].checked_add(parts[1])?;
    (end <= size && parts[0] >= 8).then_some((parts[0], parts[1], parts[2]))
}

fn read_zstd_toc<S: BlobSource>(
    source: &S,
    off: u64,
    clen: u64,
    ulen: u64,
    opts: &OpenOptions,
) -> Result<Vec<u8>, FormatError> {
    if clen > opts.limits.max_toc_compressed || ulen > opts.limits.max_toc_json {
        return Err(FormatError::Limit(format!(
            "zstd TOC of {clen} compressed / {ulen} uncompressed bytes"
        )));
    }
    let compressed = source.read_range(off, clen)?;
    if let Some(want) = ZSTD_CHUNKED_CHECKSUM_ANNOTATIONS
        .iter()
        .find_map(|k| opts.annotations.get(*k))
    {
        let want: Digest = want.parse()?;
        let got = Digest::of(&compressed);
        if got != want {
            return Err(FormatError::TocDigest {
                expected: want,
                actual: got,
            });
        }
    }
    let json = Compression::Zstd
        .read_all_bounded(&compressed, ulen)
        .map_err(|e| FormatError::Toc(format!("zstd TOC: {e}")))?;
    if json.len() as u64 != ulen {
        return Err(FormatError::Toc(format!(
            "zstd TOC is {} bytes, footer says {ulen}",
            json.len()
        )));
    }
    Ok(json)
}
