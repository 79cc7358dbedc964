//! OCI images on disk: the image layout (`oci:DIR[:TAG]`) and whole-image conversion to
//! eStargz. Registries come later through the same descriptors.

mod build;
mod convert;
pub mod sample;
mod error;
mod layout;

pub use convert::{annotations_of, convert_image, ImageConvertOptions, ImageConvertReport, LayerOutcome};
pub use build::{write_image, ImageConfig, LayerInput};
pub use error::ImageError;
pub use layout::{ImageRef, OciLayout, MAX_MANIFEST_SIZE};
