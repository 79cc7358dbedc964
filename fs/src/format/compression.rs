//! The two frame codecs of eStargz: independent gzip members or independent zstd frames.
//! Decompression here is always bounded by the number of bytes the caller wants, so a
//! compression bomb costs at most that much memory.

use super::FormatError;
use std::io::{Read, Write};

/// How a layer's frames are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip members (eStargz, legacy stargz).
    Gzip,
    /// zstd frames (eStargz zstd, zstd:chunked).
    Zstd,
}

/// A name that is not a [`Compression`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compression {0:?} is not gzip or zstd")]
pub struct UnknownCompression(pub String);

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// Parses `gzip` or `zstd` (the names [`Display`](std::fmt::Display) writes).
///
/// ```
/// use stargaze_fs::format::Compression;
/// let z: Compression = "zstd".parse()?;
/// assert_eq!(z, Compression::Zstd);
/// assert_eq!(z.to_string(), "zstd");
/// assert_eq!(z.media_type(), "application/vnd.oci.image.layer.v1.tar+zstd");
/// assert!("brotli".parse::<Compression>().is_err());
/// # Ok::<(), stargaze_fs::format::UnknownCompression>(())
/// ```
impl std::str::FromStr for Compression {
    type Err = UnknownCompression;
    fn from_str(s: &str) -> Result<Self, UnknownCompression> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(UnknownCompression(s.to_string())),
        }
    }
}

impl Compression {
    /// The OCI media type of a layer in this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => crate::oci::OCI_LAYER_GZIP,
            Compression::Zstd => crate::oci::OCI_LAYER_ZSTD,
        }
    }

    /// The default level: gzip 9 like the reference converter, zstd 3.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Gzip => 9,
            Compression::Zstd => 3,
        }
    }

    /// The most decompressed bytes one compressed byte can stand for: deflate's limit is
    /// 1032:1; a zstd RLE block holds 128 KiB in 4 bytes. Used to bound what a payload of a
    /// given compressed size can describe.
    pub fn max_ratio(self) -> u64 {
        match self {
            Compression::Gzip => 1032,
            Compression::Zstd => 32 << 10,
        }
    }

    /// Compresses `data` into one independent frame. Levels are clamped to the codec's range.
    pub fn compress(self, data: &[u8], level: i32) -> Result<Vec<u8>, FormatError> {
        let failed = |e: std::io::Error| FormatError::io("compressing a frame", e);
        match self {
            Compression::Gzip => {
                let lvl = flate2::Compression::new(level.clamp(0, 9) as u32);
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2 + 64), lvl);
                enc.write_all(data).map_err(failed)?;
                enc.finish().map_err(failed)
            }
            Compression::Zstd => {
                let range = zstd::compression_level_range();
                let lvl = level.clamp(*range.start(), *range.end());
                zstd::bulk::compress(data, lvl).map_err(failed)
            }
        }
    }

    /// The most compressed bytes a frame can need before it has produced `uncompressed`
    /// bytes, for any encoder that is not wasting space on purpose: an eighth more than the
    /// data (deflate's fixed Huffman codes spend 9 bits on a literal byte, the worst an
    /// encoder that never falls back to stored blocks does — our own gzip writer at level 1
    /// adds 5.5% to incompressible data; stored deflate blocks add 5 bytes per 64 KiB, raw
    /// zstd blocks 3 per 128 KiB), plus room for the frame header (gzip's optional name,
    /// comment and extra fields included). A chunk's frame is read no further than this, so
    /// a TOC that puts junk between a one-byte chunk and the next frame cannot make a reader
    /// fetch or inflate it.
    pub fn max_frame_prefix(self, uncompressed: u64) -> u64 {
        const HEADER_ROOM: u64 = 64 << 10;
        uncompressed
            .saturating_add(uncompressed / 8)
            .saturating_add(HEADER_ROOM)
    }

    /// Decompresses the frame at the start of `frame`, skips `skip` bytes and returns the next
    /// `want` bytes. Fails if the frame holds fewer; never inflates more than `skip + want`.
    pub fn read_range(self, frame: &[u8], skip: u64, want: u64) -> Result<Vec<u8>, FormatError> {
        self.read_range_hashed(frame, skip, want, None)
    }

    /// Like [`Self::read_range`], feeding each decompressed piece to `hasher` while it is
    /// still in cache or, for large chunks, on a second thread (verification then costs little
    /// beyond decompression). `hasher` must be fresh: it ends up holding the digest of exactly
    /// the returned bytes.
    pub fn read_range_hashed<R: std::io::BufRead>(
        self,
        frame: R,
        skip: u64,
        want: u64,
        hasher: Option<&mut crate::digest::Hasher>,
    ) -> Result<Vec<u8>, FormatError> {
        match self {
            Compression::Gzip => {
                take_range(flate2::read::GzDecoder::new(frame), skip, want, hasher)
            }
            Compression::Zstd => {
                let dec = zstd::stream::read::Decoder::with_buffer(frame)
                    .map_err(|e| FormatError::Decompress(format!("zstd: {e}")))?
                    .single_frame();
                take_range(dec, skip, want, hasher)
            }
        }
    }

    /// Decompresses a whole frame sequence, refusing more than `max` bytes of output.
    pub fn read_all_bounded(self, data: &[u8], max: u64) -> Result<Vec<u8>, FormatError> {
        let mut out = Vec::new();
        let r: Box<dyn Read> = match self {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(data)
                    .map_err(|e| FormatError::Decompress(format!("zstd: {e}")))?,
            ),
        };
        r.take(max + 1)
            .read_to_end(&mut out)
            .map_err(|e| FormatError::Decompress(e.to_string()))?;
        if out.len() as u64 > max {
            return Err(FormatError::Limit(format!(
                "decompresses to more than {max} bytes"
            )));
        }
        Ok(out)
    }
}

fn take_range(
    mut r: impl Read,
    skip: u64,
    want: u64,
    hasher: Option<&mut crate::digest::Hasher>,
) -> Result<Vec<u8>, FormatError> {
    let skipped = std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink())
        .map_err(|e| FormatError::Decompress(e.to_string()))?;
    if skipped != skip {
        return Err(FormatError::Decompress(format!(
            "frame ends after {skipped} bytes, before inner offset {skip}"
        )));
    }
    let cap = usize::try_from(want).map_err(|_| FormatError::Limit("chunk too large".into()))?;
    let mut out = vec![0u8; cap];
    let filled = match hasher {
        Some(h) if cap >= PARALLEL_HASH_MIN => fill_hashing_in_parallel(&mut r, &mut out, h)?,
        Some(h) => {
            let n = fill(&mut r, &mut out)?;
            h.update(&out[..n]);
            n
        }
        None => fill(&mut r, &mut out)?,
    };
    out.truncate(filled);
    if out.len() as u64 != want {
        return Err(FormatError::Decompress(format!(
            "frame holds {} bytes where {want} were expected",
            out.len()
        )));
    }
    Ok(out)
}

/// Chunks at least this large are hashed on a second thread while they decompress.
const PARALLEL_HASH_MIN: usize = 1 << 20;
const PIECE: usize = 256 << 10;

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, FormatError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FormatError::Decompress(e.to_string())),
        }
    }
    Ok(n)
}

/// Decompresses into `out` piece by piece while a scoped thread hashes the finished pieces,
/// so verification overlaps decompression instead of following it.
fn fill_hashing_in_parallel(
    r: &mut impl Read,
    out: &mut [u8],
    hasher: &mut crate::digest::Hasher,
) -> Result<usize, FormatError> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<&[u8]>();
        let worker = s.spawn(move || {
            let mut h = crate::digest::Hasher::new();
            for piece in rx {
                h.update(piece);
            }
            h
        });
        let mut total = 0;
        let mut result = Ok(());
        for piece in out.chunks_mut(PIECE) {
            let len = piece.len();
            match fill(r, piece) {
                Ok(n) => {
                    total += n;
                    let done: &[u8] = piece;
                    let _ = tx.send(&done[..n]);
                    if n < len {
                        break;
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        drop(tx);
        match worker.join() {
            Ok(h) => *hasher = h,
            Err(_) => return Err(FormatError::Decompress("hash thread panicked".into())),
        }
        result.map(|()| total)
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn frames_of_incompressible_data_fit_the_prefix_bound() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let data: Vec<u8> = (0..(4 << 20) / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        for comp in [Compression::Gzip, Compression::Zstd] {
            for level in [1, 9] {
                let frame = comp.compress(&data, level).unwrap();
                assert!(
                    frame.len() as u64 <= comp.max_frame_prefix(data.len() as u64),
                    "{comp:?} level {level}: {} bytes for {}",
                    frame.len(),
                    data.len()
                );
            }
        }
    }

    use super::*;

    #[test]
    fn frames_round_trip_and_bound() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let data = vec![7u8; 100_000];
            let f = c.compress(&data, c.default_level()).unwrap();
            assert_eq!(c.read_range(&f, 10, 20).unwrap(), vec![7u8; 20]);
            assert!(c.read_range(&f, 99_990, 20).is_err());
            assert!(c.read_all_bounded(&f, 1000).is_err(), "bomb bound");
            assert_eq!(c.read_all_bounded(&f, 100_000).unwrap().len(), 100_000);
        }
    }
}
