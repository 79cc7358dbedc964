//! Annotation keys stargaze reads or writes on descriptors and in `index.json`: the eStargz
//! and zstd:chunked keys that make a layer lazily readable, and the OCI tag name. The same
//! TOC-digest key is also the containerd snapshotter label the worker reads.

/// The annotation naming a tag in an image layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Layer annotation carrying the digest of the uncompressed TOC JSON (and the containerd
/// snapshot label of the same name).
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Layer annotation carrying the uncompressed size of the layer tar.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
/// zstd:chunked manifest position annotations (both spellings seen in the wild).
pub const ZSTD_CHUNKED_POSITION_ANNOTATIONS: [&str; 2] = [
    "io.containers.zstd-chunked.manifest-position",
    "io.github.containers.zstd-chunked.manifest-position",
];
/// zstd:chunked manifest checksum annotations (digest of the compressed TOC).
pub const ZSTD_CHUNKED_CHECKSUM_ANNOTATIONS: [&str; 2] = [
    "io.containers.zstd-chunked.manifest-checksum",
    "io.github.containers.zstd-chunked.manifest-checksum",
];
