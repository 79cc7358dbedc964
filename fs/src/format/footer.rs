//! Footers: the fixed-size tails that say where the TOC is.
//!
//! * eStargz gzip: a 51-byte empty gzip member whose RFC 1952 extra field (`SG`, 22 bytes) holds
//!   `%016x` of the TOC offset followed by `STARGZ`;
//! * legacy stargz: the same in 47 bytes, without the `SG` subfield wrapper;
//! * eStargz zstd: a zstd skippable frame holding 40 bytes (TOC offset, compressed and
//!   uncompressed TOC length, manifest type, magic);
//! * containers/storage zstd:chunked: a skippable frame holding 64 bytes (the same plus the
//!   tar-split position), magic `GnUlInUx` or `GNUlInUx`.

use super::FormatError;

/// Size of the eStargz gzip footer.
pub const GZIP_FOOTER_SIZE: usize = 51;
/// Size of the legacy stargz footer.
pub const LEGACY_FOOTER_SIZE: usize = 47;
/// Size of the eStargz zstd footer payload (without its 8-byte skippable header).
pub const ZSTD_FOOTER_SIZE: usize = 40;
/// Size of the zstd:chunked footer payload (without its 8-byte skippable header).
pub const ZSTD_CHUNKED_FOOTER_SIZE: usize = 64;
/// How many tail bytes to read to find any footer.
pub const MAX_FOOTER_READ: usize = ZSTD_CHUNKED_FOOTER_SIZE + 8;

/// Magic of a zstd skippable frame (little endian 0x184D2A50).
pub const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const ZSTD_MAGICS: [&[u8; 8]; 2] = [b"GnUlInUx", b"GNUlInUx"];
const MANIFEST_TYPE_CRFS: u64 = 1;

/// Where the TOC of a blob lives, as its footer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Footer {
    /// eStargz gzip: the TOC gzip member spans `[toc_offset, blob_size - 51)`.
    Gzip {
        /// Blob offset of the TOC's gzip member.
        toc_offset: u64,
    },
    /// Legacy stargz: the TOC gzip member spans `[toc_offset, blob_size - 47)`.
    LegacyGzip {
        /// Blob offset of the TOC's gzip member.
        toc_offset: u64,
    },
    /// zstd (eStargz 40-byte or zstd:chunked 64-byte): a compressed TOC at a known range.
    Zstd {
        /// Blob offset of the zstd-compressed TOC bytes.
        toc_offset: u64,
        /// Compressed TOC length.
        toc_compressed: u64,
        /// Uncompressed TOC length.
        toc_uncompressed: u64,
        /// Size of the footer including its skippable header (48 or 72).
        footer_size: u64,
    },
}

impl Footer {
    /// Where the payload (the compressed tar entries) ends: everything after is TOC + footer.
    pub fn payload_end(&self) -> u64 {
        match *self {
            Footer::Gzip { toc_offset } | Footer::LegacyGzip { toc_offset } => toc_offset,
            Footer::Zstd { toc_offset, .. } => toc_offset.saturating_sub(8),
        }
    }

    /// Parses the footer from the blob's tail (`tail` = last bytes of a `blob_size` blob).
    pub fn parse(tail: &[u8], blob_size: u64) -> Result<Footer, FormatError> {
        let mut tried = Vec::new();
        if tail.len() >= GZIP_FOOTER_SIZE {
            match parse_gzip(&tail[tail.len() - GZIP_FOOTER_SIZE..]) {
                Ok(off) => return Footer::Gzip { toc_offset: off }.checked(blob_size),
                Err(e) => tried.push(format!("eStargz: {e}")),
            }
        }
        if tail.len() >= LEGACY_FOOTER_SIZE {
            match parse_legacy(&tail[tail.len() - LEGACY_FOOTER_SIZE..]) {
                Ok(off) => return Footer::LegacyGzip { toc_offset: off }.checked(blob_size),
                Err(e) => tried.push(format!("stargz: {e}")),
            }
        }
        for size in [ZSTD_CHUNKED_FOOTER_SIZE, ZSTD_FOOTER_SIZE] {
            if tail.len() >= size + 8 {
                match parse_zstd(&tail[tail.len() - size - 8..]) {
                    Ok(f) => return f.checked(blob_size),
                    Err(e) => tried.push(format!("zstd {size}-byte: {e}")),
                }
            }
        }
        if tried.is_empty() {
            tried.push(format!("blob is only {} bytes", tail.len()));
        }
        Err(FormatError::Footer(tried.join("; ")))
    }

    fn checked(self, blob_size: u64) -> Result<Footer, FormatError> {
        let (start, end) = match self {
            Footer::Gzip { toc_offset } => (
                toc_offset,
                blob_size.saturating_sub(GZIP_FOOTER_SIZE as u64),
            ),
            Footer::LegacyGzip { toc_offset } => (
                toc_offset,
                blob_size.saturating_sub(LEGACY_FOOTER_SIZE as u64),
            ),
            Footer::Zstd {
                toc_offset,
                toc_compressed,
                footer_size,
                ..
            } => {
                if toc_offset < 8 {
                    return Err(FormatError::Footer(format!(
                        "zstd TOC offset {toc_offset} leaves no room for its frame header"
                    )));
                }
                let end = toc_offset.checked_add(toc_compressed).ok_or_else(|| {
                    FormatError::Footer("zstd TOC offset + length overflows".into())
                })?;
                if end > blob_size.saturating_sub(footer_size) {
                    return Err(FormatError::Footer(format!(
                        "zstd TOC [{toc_offset}, {end}) runs past the footer at {}",
                        blob_size.saturating_sub(footer_size)
                    )));
                }
                return Ok(self);
            }
        };
        if start >= end {
            return Err(FormatError::Footer(format!(
                "TOC offset {start} is not before the footer at {end}"
            )));
        }
        Ok(self)
    }
}

fn parse_hex_offset(b: &[u8]) -> Result<u64, String> {
    if b.len() != 22 || &b[16..] != b"STARGZ" {
        return Err("no STARGZ marker".into());
    }
    let hexs = std::str::from_utf8(&b[..16]).map_err(|_| "offset is not ASCII".to_string())?;
    u64::from_str_radix(hexs, 16).map_err(|_| format!("offset {hexs:?} is not hex"))
}

fn check_gzip_shell(f: &[u8], xlen: usize) -> Result<(), String> {
    if f[0] != 0x1f || f[1] != 0x8b || f[2] != 8 || f[3] & 0x04 == 0 {
        return Err("not a gzip header with an extra field".into());
    }
    if usize::from(u16::from_le_bytes([f[10], f[11]])) != xlen {
        return Err(format!("extra field length is not {xlen}"));
    }
    let tail = &f[12 + xlen..];
    if tail != [1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0] {
        return Err("footer member is not empty".into());
    }
    Ok(())
}

fn parse_gzip(f: &[u8]) -> Result<u64, String> {
    check_gzip_shell(f, 26)?;
    if f[12] != b'S' || f[13] != b'G' || u16::from_le_bytes([f[14], f[15]]) != 22 {
        return Err("no SG subfield of length 22".into());
    }
    parse_hex_offset(&f[16..38])
}

fn parse_legacy(f: &[u8]) -> Result<u64, String> {
    check_gzip_shell(f, 22)?;
    parse_hex_offset(&f[12..34])
}

fn parse_zstd(f: &[u8]) -> Result<Footer, String> {
    let size = f.len() - 8;
    if f[..4] != SKIPPABLE_MAGIC {
        return Err("no skippable frame".into());
    }
    if u32::from_le_bytes([f[4], f[5], f[6], f[7]]) as usize != size {
        return Err(format!("skippable frame is not {size} bytes"));
    }
    let p = &f[8..];
    if !ZSTD_MAGICS.iter().any(|m| &p[size - 8..] == *m) {
        return Err("no GnUlInUx magic".into());
    }
    let u = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&p[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    if u(3) != MANIFEST_TYPE_CRFS {
        return Err(format!("manifest type {} is not 1 (CRFS)", u(3)));
    }
    Ok(Footer::Zstd {
        toc_offset: u(0),
        toc_compressed: u(1),
        toc_uncompressed: u(2),
        footer_size: (size + 8) as u64,
    })
}

/// The 51-byte eStargz gzip footer for a TOC at `toc_offset`.
pub fn gzip_footer(toc_offset: u64) -> [u8; GZIP_FOOTER_SIZE] {
    let mut f = [0u8; GZIP_FOOTER_SIZE];
    f[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff]);
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12..14].copy_from_slice(b"SG");
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f[38..43].copy_from_slice(&[1, 0, 0, 0xff, 0xff]);
    f
}

/// The eStargz zstd footer (skippable frame + 40 bytes), as stargz-snapshotter writes it.
pub fn zstd_footer(toc_offset: u64, compressed: u64, uncompressed: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(ZSTD_FOOTER_SIZE + 8);
    f.extend_from_slice(&SKIPPABLE_MAGIC);
    f.extend_from_slice(&(ZSTD_FOOTER_SIZE as u32).to_le_bytes());
    for v in [toc_offset, compressed, uncompressed, MANIFEST_TYPE_CRFS] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(ZSTD_MAGICS[0]);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_footer_round_trips() {
        let f = gzip_footer(1_143_104);
        assert_eq!(
            hex::encode(f),
            "1f8b08040000000000ff1a00534716003030303030303030303031313731343053544152475a010000ffff0000000000000000"
        );
        assert_eq!(
            Footer::parse(&f, 2_000_000).unwrap(),
            Footer::Gzip {
                toc_offset: 1_143_104
            }
        );
    }

    #[test]
    fn legacy_footer_parses() {
        let mut f = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0];
        f.extend_from_slice(b"0000000000000010STARGZ");
        f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f.len(), LEGACY_FOOTER_SIZE);
        assert_eq!(
            Footer::parse(&f, 100).unwrap(),
            Footer::LegacyGzip { toc_offset: 16 }
        );
    }

    #[test]
    fn zstd_footer_round_trips() {
        let f = zstd_footer(1000, 30, 90);
        let got = Footer::parse(&f, 1078).unwrap();
        assert_eq!(got.payload_end(), 992);
        assert!(Footer::parse(&f, 1077).is_err(), "TOC overlapping footer");
    }

    #[test]
    fn refuses_offsets_past_the_end() {
        let f = gzip_footer(5000);
        assert!(Footer::parse(&f, 100).is_err());
        assert!(Footer::parse(&[0u8; 10], 10).is_err());
        assert!(Footer::parse(&[0u8; 80], 80).is_err());
    }
}
