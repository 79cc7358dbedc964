//! stargaze-fs: everything between an OCI layer blob and the bytes a process reads.
//!
//! The modules follow the way data flows (docs/ARCHITECTURE.md draws it): [`oci`] is the
//! shared OCI vocabulary (media types, annotations, name rules); [`format`] understands
//! eStargz and zstd:chunked blobs (footer → TOC → index → verified chunks) and writes them;
//! [`remote`] is the registry client; [`fetcher`] turns chunk reads into verified Range
//! requests through [`cache`]; [`layer`] is one lazily read layer, served by [`fuse`] and
//! composed into an image rootfs by [`mount`]; [`image`] reads, writes and converts OCI image
//! layouts; [`registry`] is the built-in registry server.
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
pub mod profile;
pub mod registry;
pub mod remote;
pub mod small_file;
pub mod stream;
pub mod sys;

pub use digest::Digest;
