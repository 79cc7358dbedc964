//! Everything between a registry and bytes in memory: image references, the registry client
//! (manifests, blobs, HEAD, Range GETs), authentication, and the chunk fetcher.

pub mod reference;

pub use reference::{Reference, ReferenceError};
