//! FUSE: each lazily read layer is a read-only filesystem ([`LayerFs`]) showing the layer with
//! overlayfs' whiteout conventions ([`view`]), so kernel overlayfs can stack layers into an
//! image rootfs exactly as the unpacked image would look.

mod filesystem;
mod passthrough;
pub mod resume;
pub mod view;

pub use filesystem::{mount_layer, AccessRecorder, FsOptions, LayerFs};
pub use passthrough::{OpenCounters, OpenSnapshot};
pub use view::OpaqueXattr;
