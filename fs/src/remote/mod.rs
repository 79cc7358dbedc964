//! Everything between a registry and bytes in memory: image references, per-host settings,
//! the registry client (manifests, blobs, HEAD, Range GETs, push), authentication (basic,
//! bearer tokens, docker config, sessions). The chunk fetcher built on it is `crate::fetcher`.

pub mod auth;
pub mod client;
pub mod copy;
pub mod error;
pub mod hosts;
pub mod manifest;
pub mod platform;
pub mod range_body;
pub mod reference;
pub mod retry;

pub use client::{ClientOptions, RangeReply, RegistryClient};
pub use error::RemoteError;
pub use hosts::{HostsConfig, MirrorError};
pub use manifest::{Descriptor, Manifest};
pub use platform::{Platform, PlatformError};
pub use range_body::{RangeAnswer, RangeStream};
pub use reference::{Reference, ReferenceError};
pub use retry::RetryPolicy;
