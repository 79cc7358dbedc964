//! Whole-layer verification: every chunk of every file is read and hashed against its
//! `chunkDigest`, files that carry a whole-file `digest` are checked against it too, and the
//! decompressed payload is read as a tar stream that must agree with the TOC entry by entry
//! (see [`super::verify_stream`]), so a scanner and a lazy reader see the same image.

use super::reader::{BlobSource, LayerReader};
use super::{FormatError, NodeKind};
use crate::digest::Hasher;

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Names in the TOC (files, dirs, links, …).
    pub entries: usize,
    /// Regular files checked.
    pub files: usize,
    /// Chunks checked.
    pub chunks: usize,
    /// Decompressed bytes checked.
    pub bytes: u64,
    /// Tar entries of the decompressed stream matched with their TOC entries.
    pub tar_entries: usize,
}

/// Verifies every chunk (and whole-file digest) of an opened layer. Stops at the first failure,
/// which names the file and offset.
pub fn verify_layer<S: BlobSource>(
    reader: &LayerReader<S>,
    mut progress: impl FnMut(&VerifyReport),
) -> Result<VerifyReport, FormatError> {
    let index = reader.index();
    let mut report = VerifyReport {
        entries: index.entries.len(),
        ..Default::default()
    };
    for (id, node) in index.nodes.iter().enumerate() {
        if node.kind != NodeKind::Reg {
            continue;
        }
        let mut whole = Hasher::new();
        for i in 0..node.chunks.len() {
            let data = reader.read_chunk(id as u32, i)?;
            whole.update(&data);
            report.chunks += 1;
            report.bytes += data.len() as u64;
        }
        if let Some(want) = node.digest {
            if !node.chunks.is_empty() || node.size == 0 {
                let got = whole.finish();
                if got != want {
                    return Err(FormatError::entry(
                        &index.path(id as u32),
                        format!("file digest mismatch: expected {want}, got {got}"),
                    ));
                }
            }
        }
        report.files += 1;
        if report.files.is_multiple_of(256) {
            progress(&report);
        }
    }
    report.tar_entries = super::verify_stream::verify_stream(reader)?.tar_entries;
    Ok(report)
}
