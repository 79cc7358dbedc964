//! Everything between a registry and bytes in memory: image references, per-host settings,
//! the registry client (manifests, blobs, HEAD, Range GETs, push), authentication (basic,
//! bearer tokens, docker config, sessions). The chunk fetcher built on it is `crate::fetcher`.

pub mod auth;
mod client;
mod copy;
mod error;
mod hosts;
mod manifest;
mod platform;
mod range_body;
mod reference;
mod retry;

pub use client::{
    flatten_error, read_limited, ClientOptions, RangeReply, Referrer, RegistryClient, Reply,
};
pub use copy::{copy_image, CopyOptions, CopyProgress, CopyReport, ImageLocation, Quiet};
pub use error::RemoteError;
pub use hosts::{is_loopback, Endpoint, HostConfig, HostsConfig, MirrorError};
pub use manifest::{DescPlatform, Descriptor, Manifest};
pub use platform::{Platform, PlatformError};
pub use range_body::{RangeAnswer, RangeStream, MAX_PART_HEAD};
pub use reference::{Reference, ReferenceError, DEFAULT_REGISTRY, DOCKER_HUB_API_HOST};
pub use retry::{RetryBudget, RetryPolicy};
