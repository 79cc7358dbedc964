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

impl Compression {
    /// The OCI media type of a layer in this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The default level: gzip 9 like the reference converter, zstd 3.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Gzip => 9,
            Compression::Zstd => 3,
        }
    }

    /// Compresses `data` into one independent frame.
    pub fn compress(self, data: &[u8], level: i32) -> Vec<u8> {
        match self {
            Compression::Gzip => {
                let lvl = flate2::Compression::new(level.clamp(0, 9) as u32);
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2 + 64), lvl);
                // Writing into a Vec cannot fail.
                let _ = enc.write_all(data);
                enc.finish().unwrap_or_default()
            }
            Compression::Zstd => zstd::bulk::compress(data, level).unwrap_or_default(),
        }
    }

    /// Decompresses the frame at the start of `frame`, skips `skip` bytes and returns the next
    /// `want` bytes. Fails if the frame holds fewer; never inflates more than `skip + want`.
    pub fn read_range(self, frame: &[u8], skip: u64, want: u64) -> Result<Vec<u8>, FormatError> {
        match self {
            Compression::Gzip => take_range(flate2::read::GzDecoder::new(frame), skip, want),
            Compression::Zstd => {
                let dec = zstd::stream::read::Decoder::with_buffer(frame)
                    .map_err(|e| FormatError::Decompress(format!("zstd: {e}")))?
                    .single_frame();
                take_range(dec, skip, want)
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

fn take_range(mut r: impl Read, skip: u64, want: u64) -> Result<Vec<u8>, FormatError> {
    let skipped = std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink())
        .map_err(|e| FormatError::Decompress(e.to_string()))?;
    if skipped != skip {
        return Err(FormatError::Decompress(format!(
            "frame ends after {skipped} bytes, before inner offset {skip}"
        )));
    }
    let cap = usize::try_from(want).map_err(|_| FormatError::Limit("chunk too large".into()))?;
    let mut out = Vec::with_capacity(cap);
    r.take(want)
        .read_to_end(&mut out)
        .map_err(|e| FormatError::Decompress(e.to_string()))?;
    if out.len() as u64 != want {
        return Err(FormatError::Decompress(format!(
            "frame holds {} bytes where {want} were expected",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bound() {
        for c in [Compression::Gzip, Compression::Zstd] {
            let data = vec![7u8; 100_000];
            let f = c.compress(&data, c.default_level());
            assert_eq!(c.read_range(&f, 10, 20).unwrap(), vec![7u8; 20]);
            assert!(c.read_range(&f, 99_990, 20).is_err());
            assert!(c.read_all_bounded(&f, 1000).is_err(), "bomb bound");
            assert_eq!(c.read_all_bounded(&f, 100_000).unwrap().len(), 100_000);
        }
    }
}
