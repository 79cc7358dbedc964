//! Client sessions of `stargaze buildkitd`: a client attaches its session with
//! `Control.Session`, whose stream of `BytesMessage` carries a second HTTP/2 connection on
//! which the client is the gRPC server and the daemon the client (docs/BUILDKIT_PROTOCOL.md
//! §4). `headers` reads and bounds the session's metadata, `bridge` turns the message
//! stream into a byte stream and a tonic channel over it, `registry` keeps the live sessions
//! by ID, `filesync` receives a directory from a session's `FileSync.DiffCopy` into a
//! target directory, `filesend` sends an export (a tarball, or a directory with fsutil's
//! packets) to the session's `FileSend`, `auth` asks a session's `Auth` service for
//! registry credentials, `secrets` asks its `Secrets` for a build's secrets, `ssh` forwards
//! a build's SSH agent connections to its `SSH`, and `health` checks that the client still
//! answers, closing its session when it does not.

pub mod auth;
mod bridge;
pub mod filesend;
#[cfg(test)]
mod filesend_tests;
pub mod filesync;
mod headers;
pub mod health;
#[cfg(test)]
mod health_tests;
mod registry;
pub mod secrets;
pub mod ssh;
#[cfg(test)]
mod tests;

pub use auth::{AuthLimits, SessionAuthError, SessionCredentials};
pub use bridge::{bridge, channel_over, Bridged, Closer};
pub use headers::{
    HeaderError, SessionHeaders, SessionLimits, GRPC_METHOD, NAME, SHARED_KEY, UUID,
};
pub use registry::{Session, Sessions};
