//! stargaze-fs: everything between an OCI layer blob and the bytes a process reads.
//!
//! The crate is layered the way data flows (see DESIGN.md): [`format`] understands eStargz and
//! zstd:chunked blobs (footer → TOC → index → verified chunks) and writes them; [`image`] reads,
//! writes and converts OCI image layouts. Later layers (remote, cache, fuse) build on these.
#![warn(missing_docs)]

pub mod cache;
pub mod digest;
pub mod fetcher;
pub mod format;
pub mod fuse;
pub mod image;
pub mod layer;
pub mod mount;
pub mod oci;
pub mod registry;
pub mod remote;
pub mod small_file;
pub mod stream;
pub mod sys;

pub use digest::Digest;
