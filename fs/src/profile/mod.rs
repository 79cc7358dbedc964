//! Learned prefetch profiles: which chunks a workload read on its first cold start, in the
//! order it read them, so the next cold start of the image (here, or on any node that finds
//! the profile beside the image in its registry) fetches them before they are asked for.
//!
//! * `format` — the profile document (JSON, versioned media type), bounded while parsed,
//!   and checked against a layer's index before any entry is used.
//! * `recorder` — the bounded, first-touch record of the chunks on-demand reads touched.
//! * `store` — profiles on this machine, one file per layer (digest + TOC digest).
//! * `plan` — the replay planner: ordered batches, small first, then growing.
//! * `registry` — the profile as an OCI artifact whose `subject` is the image manifest:
//!   pushed as a referrer, found with the referrers API or its fallback tag.
//!
//! A profile only ever says which verified chunks to fetch early: every chunk is still
//! fetched through the fetcher and verified against the TOC, so a wrong profile costs bytes,
//! never correctness. One that does not fit a layer is ignored with a warning.

mod format;
mod plan;
mod recorder;
mod registry;
mod store;

pub use format::{
    Entry, LayerProfile, Profile, MAX_DOC_BYTES, MAX_ENTRIES, MAX_LAYERS, PROFILE_MEDIA_TYPE,
};
pub use plan::{replay_batches, FIRST_BATCH, MAX_BATCH};
pub use recorder::Recorder;
pub use registry::{lookup, push, PROFILE_CREATED};
pub use store::ProfileStore;

use crate::digest::Digest;
use crate::remote::RemoteError;

/// Where `mount` keeps this machine's profiles unless told otherwise: `profiles/` in its
/// default chunk cache dir (`mount` and the snapshotter use `CACHE_DIR/profiles`), so a
/// private or wiped cache dir has private or no profiles too.
pub const DEFAULT_DIR: &str = "/var/lib/stargaze/cache/profiles";

/// Why a profile was refused or could not be read, written or exchanged.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The document is larger than [`MAX_DOC_BYTES`].
    #[error("profile is {0} bytes; at most {MAX_DOC_BYTES} are accepted")]
    TooLarge(u64),
    /// The document is not a profile (JSON syntax, structure, bounds, media type).
    #[error("not a prefetch profile: {0}")]
    Parse(#[source] serde_json::Error),
    /// The document's media type is not the one this version reads.
    #[error("profile media type {0:?} is not {PROFILE_MEDIA_TYPE}")]
    MediaType(String),
    /// Two parts of the document are for the same layer.
    #[error("profile lists layer {0} twice")]
    DuplicateLayer(Digest),
    /// A part is for another layer or another TOC than the one it is applied to.
    #[error("profile part is for layer {layer} (TOC {toc}), not this layer")]
    WrongLayer {
        /// The part's layer digest.
        layer: Digest,
        /// The part's TOC digest.
        toc: Digest,
    },
    /// An entry names no chunk start of the layer's index.
    #[error("entry {offset}+{inner} is not a chunk of the layer")]
    NotAChunk {
        /// Blob offset of the frame.
        offset: u64,
        /// Decompressed offset inside the frame.
        inner: u64,
    },
    /// An entry appears twice in a part.
    #[error("entry {offset}+{inner} is listed twice")]
    DuplicateEntry {
        /// Blob offset of the frame.
        offset: u64,
        /// Decompressed offset inside the frame.
        inner: u64,
    },
    /// The registry artifact is not a profile artifact.
    #[error("registry artifact {digest}: {reason}")]
    Artifact {
        /// The artifact manifest.
        digest: Digest,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No profile to push.
    #[error(
        "no local profile for any layer of the image (start it once from a cold cache, then push)"
    )]
    Empty,
    /// Registry access.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Local file I/O.
    #[error("profile store {path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
