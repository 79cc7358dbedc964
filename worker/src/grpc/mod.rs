//! containerd's snapshots gRPC API (`containerd.services.snapshots.v1`) over a unix socket:
//! what containerd's `proxy_plugins` entry talks to. The stubs are generated from `proto/`
//! at build time (see build.rs); [`SnapshotService`] maps each call onto a [`Snapshotter`]
//! and its errors onto the gRPC codes containerd turns back into its error kinds.
//!
//! [`Snapshotter`]: crate::snapshot::Snapshotter

mod authority;
mod client;
pub(crate) mod incoming;
pub mod proxy;
mod service;

pub use client::connect;
pub(crate) use client::unix_channel;
pub use service::{serve, SnapshotService};

/// Generated protobuf and gRPC code, in containerd's package layout.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// `containerd.*`
    pub mod containerd {
        /// `containerd.types`
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        /// `containerd.services.*`
        pub mod services {
            /// `containerd.services.snapshots.*`
            pub mod snapshots {
                /// `containerd.services.snapshots.v1`
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
    pub use containerd::services::snapshots::v1::*;
    pub use containerd::types::Mount;
}
