//! The TOC JSON (`stargz.index.json`) exactly as it travels: field names, omit-when-zero rules
//! and key order follow the reference writer so our TOCs read like theirs. Nothing here is
//! trusted; [`super::Index::build`] validates it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The top-level TOC object.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Toc {
    /// Must be 1.
    pub version: i64,
    /// Every tar entry and chunk, in blob order.
    #[serde(default)]
    pub entries: Vec<TocEntry>,
    /// zstd:chunked: digest of the tar-split data.
    #[serde(
        rename = "tarSplitDigest",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub tar_split_digest: String,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// One TOC entry (a tar entry or a further chunk of a regular file).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TocEntry {
    /// Path as stored in the tar.
    #[serde(default)]
    pub name: String,
    /// dir, reg, symlink, hardlink, char, block, fifo or chunk.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Logical size of a regular file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: i64,
    /// RFC 3339 modification time.
    #[serde(rename = "modtime", default, skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    /// Target of a symlink or hardlink.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// Mode bits as in the tar header.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: i64,
    /// Owner uid.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: i64,
    /// Owner gid.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: i64,
    /// Owner user name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    /// Owner group name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_name: String,
    /// Blob offset of the compression frame holding this payload.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: i64,
    /// zstd:chunked: blob offset where this payload's frames end.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub end_offset: i64,
    /// Device major number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    /// Device minor number.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// Extended attributes, values base64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// Digest of the whole file payload.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Offset of this chunk within the file.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    /// Decompressed size of this chunk; 0 means "to the end of the file".
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    /// Digest of this chunk's decompressed bytes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_digest: String,
    /// Decompressed offset of the payload inside the frame at `offset`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
    /// zstd:chunked: `zeros` for a chunk of zero bytes with no frame.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chunk_type: String,
}

impl Toc {
    /// Serialises like the reference writer: tab-indented JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 * self.entries.len() + 64);
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        // Serialising plain strings and integers into a Vec cannot fail.
        if self.serialize(&mut ser).is_err() {
            out.clear();
        }
        out
    }
}
