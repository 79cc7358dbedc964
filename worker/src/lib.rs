//! stargaze-worker: snapshotters, the containerd snapshots service and the BuildKit-style OCI
//! worker. It builds on `stargaze-fs`; the pieces arrive with their issues (04 and 05).
#![warn(missing_docs)]

pub mod config;
pub mod daemon;
pub mod executor;
pub mod frontend;
pub mod gc;
pub mod grpc;
pub mod identity;
pub mod metrics;
mod names;
pub mod oci_worker;
pub mod peer;
pub mod registry_client;
pub mod snapshot;

/// The crate version, for `stargaze version` and worker labels.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
