//! The eStargz family of lazily readable layer formats.
//!
//! A layer blob is a valid `tar.gz` (or `tar.zst`) whose compression frames start at file
//! boundaries, plus a table of contents (TOC) and a footer that points at it. Reading goes
//! footer → TOC → [`Index`] → verified chunk; writing goes tar → frames + TOC + footer.
//! `footer` and `toc` hold the byte-level layout (footer forms, TOC JSON, chunk and
//! whiteout entries) with the facts they implement in their docs.

mod compression;
mod error;
pub mod extract;
pub mod footer;
pub mod index;
mod limits;
pub mod names;
pub mod reader;
pub mod tar;
pub mod time;
pub mod toc;
mod toc_stream;
pub mod verify;
pub mod verify_stream;
pub mod writer;

pub use compression::{Compression, UnknownCompression};
pub use error::FormatError;
pub use index::{Chunk, Index, Node, NodeId, NodeKind};
pub use limits::Limits;
pub use reader::{
    decode_chunk, metadata_start, BlobSource, FileBlob, LayerReader, OpenOptions, WindowBlob,
};
pub use writer::{convert_layer, ConvertReport, WriterOptions};

/// Name of the TOC tar entry in gzip eStargz.
pub const TOC_NAME: &str = "stargz.index.json";
/// Landmark written after the prioritized files.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Landmark written first when there is nothing to prefetch.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// The one payload byte of a landmark file.
pub const LANDMARK_CONTENT: u8 = 0xf;
