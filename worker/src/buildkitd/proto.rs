//! The generated code of BuildKit's control API (`proto/buildkit/`, see build.rs), in the
//! module layout of its protobuf packages so the generated cross-package paths resolve:
//! `pb` (LLB: platforms, definitions), `moby::buildkit::v1` (the `Control` service) and
//! `moby::buildkit::v1::types` (worker records), `moby::filesync::v1` and `fsutil::types`
//! (a session's file transfer, `FileSend`, and its `Auth` service; `filesend_packets` is
//! `FileSend` with fsutil's packets), `moby::buildkit::v1::frontend` (the
//! gateway) with `apicaps` and `google::rpc`. Clients (tests, later `stargaze build
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
            /// `moby.buildkit.v1.apicaps`: capability records.
            pub mod apicaps {
                tonic::include_proto!("moby.buildkit.v1.apicaps");
            }
            /// `moby.buildkit.v1.frontend`: the gateway (`LLBBridge`).
            pub mod frontend {
                tonic::include_proto!("moby.buildkit.v1.frontend");
            }
        }
        /// `moby.buildkit.secrets.v1`: the session's secrets.
        pub mod secrets {
            /// `moby.buildkit.secrets.v1` (`Secrets`)
            pub mod v1 {
                tonic::include_proto!("moby.buildkit.secrets.v1");
            }
        }
    }
    /// `moby.sshforward.v1`: the session's SSH agent forwarding.
    pub mod sshforward {
        /// `moby.sshforward.v1` (`SSH`)
        pub mod v1 {
            tonic::include_proto!("moby.sshforward.v1");
        }
    }
    /// `moby.filesync.v1`: the session's file transfer and registry credentials.
    pub mod filesync {
        /// `moby.filesync.v1` (`FileSync`, `Auth`)
        pub mod v1 {
            tonic::include_proto!("moby.filesync.v1");
        }
    }
}

/// `moby.filesync.v1.FileSend` as the `local` exporter speaks it: fsutil's packets on the
/// method BuildKit declares with `BytesMessage` (proto/buildkit/session/filesync/
/// filesend_packets.proto, generated apart).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod filesend_packets {
    pub use super::fsutil;
    /// `moby.*`
    pub mod moby {
        /// `moby.filesync.*`
        pub mod filesync {
            /// `moby.filesync.v1` (`FileSend` over packets)
            pub mod v1 {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/filesend_packets/moby.filesync.v1.rs"
                ));
            }
        }
    }
    pub use moby::filesync::v1::*;
}

/// `google.rpc`: gRPC's error model.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod google {
    /// `google.rpc`
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// `fsutil.*`: fsutil's stats and packets.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod fsutil {
    /// `fsutil.types`
    pub mod types {
        tonic::include_proto!("fsutil.types");
    }
}

pub use moby::buildkit::secrets::v1 as secrets;
pub use moby::buildkit::v1 as control;
pub use moby::buildkit::v1::frontend as gateway;
pub use moby::buildkit::v1::types;
pub use moby::filesync::v1 as filesync;
pub use moby::sshforward::v1 as sshforward;

/// `grpc.health.v1`: the health service a session's client serves (the daemon checks it).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod grpc {
    /// `grpc.health`
    pub mod health {
        /// `grpc.health.v1`
        pub mod v1 {
            tonic::include_proto!("grpc.health.v1");
        }
    }
}
