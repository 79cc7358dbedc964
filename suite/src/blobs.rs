//! Hand-made layer blobs for the hostile-input tests: gzip members laid out as a test wants,
//! then a TOC member holding whatever TOC text the test writes, then the eStargz footer, so
//! each case shows exactly what it breaks.

use stargaze_fs::format::footer::gzip_footer;
use stargaze_fs::format::tar::ustar_file_header;
use std::io::Write;

/// `data` as one gzip member at `level`.
pub fn gz(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

/// Appends to `blob` (whose payload ends here) a TOC member holding `toc`, then the footer.
pub fn append_toc(mut blob: Vec<u8>, toc: &str) -> Vec<u8> {
    let toc_off = blob.len() as u64;
    let mut t = ustar_file_header("stargz.index.json", toc.len() as u64, 0o444).to_vec();
    t.extend_from_slice(toc.as_bytes());
    t.resize(t.len().div_ceil(512) * 512 + 1024, 0);
    blob.extend_from_slice(&gz(&t, 6));
    blob.extend_from_slice(&gzip_footer(toc_off));
    blob
}

/// A blob: one gzip member per payload, then the TOC member and footer. Returns the blob
/// and the blob offset of each payload member.
pub fn blob_with_toc(payloads: &[Vec<u8>], toc: &str) -> (Vec<u8>, Vec<u64>) {
    let mut blob = Vec::new();
    let mut offsets = Vec::new();
    for p in payloads {
        offsets.push(blob.len() as u64);
        blob.extend_from_slice(&gz(p, 6));
    }
    (append_toc(blob, toc), offsets)
}

/// Opens `blob` as a layer with default options (no trusted TOC digest).
pub fn open(
    blob: Vec<u8>,
) -> Result<stargaze_fs::format::LayerReader<Vec<u8>>, stargaze_fs::format::FormatError> {
    stargaze_fs::format::LayerReader::open(blob, &stargaze_fs::format::OpenOptions::default())
}

/// The error opening a hostile `blob` gives; panics if it was accepted.
pub fn open_err(blob: Vec<u8>) -> String {
    match open(blob) {
        Ok(_) => panic!("hostile blob was accepted"),
        Err(e) => e.to_string(),
    }
}
