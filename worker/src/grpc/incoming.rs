//! The connections a unix-socket gRPC server of ours serves: accepted from its listener,
//! checked against the socket's [`PeerPolicy`] (a refused peer is closed unanswered), and
//! wrapped so clients that send the socket path as `:authority` are served
//! ([`AuthorityFix`]). Shared by the snapshots service and `stargaze buildkitd`.

use super::authority::AuthorityFix;
use crate::peer::PeerPolicy;
use std::path::PathBuf;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::Stream;

/// A connection as the server sees it.
pub(crate) type Conn = AuthorityFix<UnixStream>;

/// The admitted connections of `listener`, bound at `socket`.
pub(crate) fn admitted(
    listener: UnixListener,
    socket: PathBuf,
    peers: PeerPolicy,
) -> impl Stream<Item = std::io::Result<Conn>> + Send + 'static {
    let incoming = tokio_stream::StreamExt::filter(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        move |c| match c {
            Ok(stream) => peers.admits(stream, &socket),
            Err(_) => true,
        },
    );
    tokio_stream::StreamExt::map(incoming, |c| c.map(AuthorityFix::new))
}
