//! Bounds on everything a blob can make us allocate or decompress. Every size, count and
//! offset read from outside is checked against these before memory is committed.

/// Bounds applied while reading a layer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest compressed TOC accepted, in bytes.
    pub max_toc_compressed: u64,
    /// Largest decompressed TOC JSON accepted, in bytes.
    pub max_toc_json: u64,
    /// Most TOC entries accepted (chunks included).
    pub max_entries: usize,
    /// Largest estimated memory for building the index of one TOC, in bytes. Real layers
    /// of a few hundred thousand entries need a few hundred bytes an entry; this stops a
    /// TOC of millions of tiny entries before it costs gigabytes.
    pub max_index_bytes: u64,
    /// Largest single chunk (decompressed), in bytes.
    pub max_chunk: u64,
    /// Largest `innerOffset` (decompressed bytes skipped inside a frame).
    pub max_inner_offset: u64,
    /// Longest path accepted, in bytes.
    pub max_name: usize,
    /// Most xattrs on one entry and largest total xattr bytes on one entry.
    pub max_xattrs: usize,
    /// Largest total xattr value bytes on one entry.
    pub max_xattr_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_toc_compressed: 256 << 20,
            max_toc_json: 512 << 20,
            max_entries: 4_000_000,
            max_index_bytes: 512 << 20,
            max_chunk: 256 << 20,
            max_inner_offset: 256 << 20,
            max_name: 4096,
            max_xattrs: 1024,
            max_xattr_bytes: 1 << 20,
        }
    }
}
