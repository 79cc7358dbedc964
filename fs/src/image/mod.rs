//! OCI images on disk: the image layout (`oci:DIR[:TAG]`) and whole-image conversion to
//! eStargz. Registries speak the same descriptors (`crate::remote` copies images between
//! layouts and registries).

mod build;
mod convert;
mod error;
mod layout;
mod layout_import;
pub mod sample;

pub use build::{hash_file, write_image, ImageConfig, LayerInput};
pub use convert::{
    annotations_of, convert_image, ImageConvertOptions, ImageConvertReport, LayerOutcome,
};
pub use error::ImageError;
pub use layout::{host_arch, ImageRef, OciLayout, MAX_INDEX_JSON};
pub use layout_import::{import_layout_tar, Imported};
