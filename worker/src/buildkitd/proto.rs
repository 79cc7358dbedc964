//! The generated code of BuildKit's control API (`proto/buildkit/`, see build.rs), in the
//! module layout of its protobuf packages so the generated cross-package paths resolve:
//! `pb` (LLB: platforms, definitions), `moby::buildkit::v1` (the `Control` service) and
//! `moby::buildkit::v1::types` (worker records). Clients (tests, later `stargaze build
//! --addr`) use the same code.

/// `pb`: BuildKit's LLB messages.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("pb");
}

/// `moby.*`
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod moby {
    /// `moby.buildkit.*`
    pub mod buildkit {
        /// `moby.buildkit.v1`: the control API.
        pub mod v1 {
            tonic::include_proto!("moby.buildkit.v1");
            /// `moby.buildkit.v1.types`: worker records.
            pub mod types {
                tonic::include_proto!("moby.buildkit.v1.types");
            }
        }
    }
}

pub use moby::buildkit::v1 as control;
pub use moby::buildkit::v1::types;
