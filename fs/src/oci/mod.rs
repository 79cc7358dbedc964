//! The OCI vocabulary every part of the crate speaks: media types, the manifest size limit,
//! the annotations stargaze reads and writes, repository and tag name rules, the referrers
//! descriptor a manifest with a `subject` contributes, and the percent-encoding of
//! distribution API query values. The registry client (`remote`), the built-in registry
//! (`registry`), the image layout (`image`) and the worker crate all take these from here,
//! so the client and the server never need to import each other to agree on a fact.

mod annotation;
mod media_type;
mod name;
mod percent;
mod referrer;

pub use annotation::{
    REF_NAME, TOC_DIGEST_ANNOTATION, UNCOMPRESSED_SIZE_ANNOTATION,
    ZSTD_CHUNKED_CHECKSUM_ANNOTATIONS, ZSTD_CHUNKED_POSITION_ANNOTATIONS,
};
pub use media_type::{
    manifest_type, ManifestTypeError, DOCKER_LAYER_GZIP, DOCKER_LIST, DOCKER_MANIFEST,
    MANIFEST_ACCEPT, MANIFEST_TYPES, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
pub use name::{validate_repository, validate_tag, NameError, MAX_NAME_LEN};
pub use percent::{percent_decode, percent_encode};
pub use referrer::{artifact_type, referrer_of, ReferrerEntry};
#[cfg(test)]
pub(crate) use referrer::{test_artifact, TEST_SUBJECT};

/// Largest manifest or image index accepted, served, fetched or read from a layout, and
/// largest image config read into memory: 4 MiB. The distribution spec asks registries to
/// accept manifests of at least 4 MiB and the reference registry refuses larger ones, so a
/// bigger manifest could not travel between registries anyway; one limit for the server,
/// the client and the layout means whatever one part accepts, the others can serve and push.
pub const MAX_MANIFEST: usize = 4 << 20;
