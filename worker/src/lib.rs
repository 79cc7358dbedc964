//! stargaze-worker: snapshotters, the containerd snapshots service and the BuildKit-style OCI
//! worker, built on `stargaze-fs`. [`snapshot`] holds the snapshotters and their contract;
//! [`grpc`] serves them to containerd, assembled with its FUSE holder by [`daemon`];
//! [`oci_worker`] opens the worker (config, snapshotter choice, runtime, lock, GC) that
//! [`frontend`] runs Dockerfile builds on, each step through [`executor`]; [`config`] reads
//! the config files, [`registry_client`] builds the registry client from them.
//! docs/ARCHITECTURE.md draws the flows.
#![warn(missing_docs)]

pub mod buildkitd;
pub mod config;
pub mod daemon;
pub mod executor;
pub mod filters;
pub mod frontend;
pub mod gc;
pub mod grpc;
pub mod identity;
pub mod metrics;
mod names;
pub mod oci_worker;
pub mod peer;
pub mod records;
pub mod registry_client;
pub mod snapshot;

/// The crate version, for `stargaze version` and worker labels.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
