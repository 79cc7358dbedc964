//! Everything between a registry and bytes in memory: image references, per-host settings,
//! the registry client (manifests, blobs, HEAD, Range GETs, push), authentication (basic,
//! bearer tokens, docker config, sessions), and the chunk fetcher.

pub mod auth;
pub mod client;
pub mod copy;
pub mod error;
pub mod fetcher;
pub mod hosts;
pub mod latency;
pub mod manifest;
pub mod platform;
pub mod range_body;
pub mod reference;
pub mod retry;

pub use client::{ClientOptions, RangeReply, RegistryClient};
pub use error::RemoteError;
pub use hosts::HostsConfig;
pub use manifest::{Descriptor, Manifest};
pub use platform::Platform;
pub use range_body::{RangeAnswer, RangeStream};
pub use reference::{Reference, ReferenceError};
pub use retry::{RetryBudget, RetryPolicy};
