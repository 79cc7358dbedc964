//! A `Control.Session` stream of `BytesMessage` as a byte stream: what arrives is written
//! into one end of an in-memory duplex pipe, what is written at that end goes out as
//! messages. The other end carries HTTP/2; [`channel_over`] makes the daemon's tonic
//! channel on it (the daemon is the gRPC client of the session), and the tests serve the
//! client's side on it. Memory is bounded by the pipe's buffer and a short queue of
//! outgoing messages.

use super::super::proto::control::BytesMessage;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Bytes buffered in the pipe in each direction, and the most read into one message (the
/// chunk size BuildKit's client reads with).
const CHUNK: usize = 32 * 1024;
/// Outgoing messages queued before the pipe is no longer read.
const QUEUE: usize = 8;

/// One end of a bridged session stream.
pub struct Bridged {
    /// The byte stream (HTTP/2 runs over it).
    pub io: DuplexStream,
    /// The messages to send back on the gRPC stream.
    pub outbound: ReceiverStream<Result<BytesMessage, Status>>,
    /// Ends the bridge from this side (both directions end, `on_close` runs).
    pub closer: Closer,
}

/// Ends a bridge when asked (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Closer(Arc<tokio::sync::Notify>);

impl Closer {
    /// Ends the bridge (now, or as soon as it runs).
    pub fn close(&self) {
        self.0.notify_one();
    }
}

/// Bridges `inbound` (the messages received) to a byte stream. The copying runs until
/// either side ends (the peer closes its stream, or the byte stream's user drops it); then
/// `on_close` runs once and both directions end; [`Closer::close`] ends it the same way.
pub fn bridge<S>(inbound: S, on_close: impl FnOnce() + Send + 'static) -> Bridged
where
    S: Stream<Item = Result<BytesMessage, Status>> + Send + Unpin + 'static,
{
    let (ours, theirs) = tokio::io::duplex(CHUNK);
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let closer = Closer::default();
    let asked = closer.0.clone();
    tokio::spawn(async move {
        let (mut rd, mut wr) = tokio::io::split(ours);
        let mut inbound = inbound;
        let incoming = async {
            while let Some(m) = inbound.next().await {
                match m {
                    Ok(m) => {
                        if wr.write_all(&m.data).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "session stream failed");
                        break;
                    }
                }
            }
            let _ = wr.shutdown().await;
        };
        let outgoing = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let m = BytesMessage {
                            data: buf[..n].to_vec(),
                        };
                        if tx.send(Ok(m)).await.is_err() {
                            break;
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = incoming => {}
            () = outgoing => {}
            () = asked.notified() => {}
        }
        on_close();
    });
    Bridged {
        io: theirs,
        outbound: ReceiverStream::new(rx),
        closer,
    }
}

/// A tonic channel over `io`, that one connection only (a reconnect fails). Lazy: nothing
/// is sent until the first call, so the channel can be made before the stream's answer is.
pub fn channel_over(io: DuplexStream) -> Channel {
    let slot = Arc::new(Mutex::new(Some(io)));
    // The URI is required by the API; the connection is the session's (authority localhost).
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(
        move |_: tonic::transport::Uri| {
            let io = slot.lock().ok().and_then(|mut s| s.take());
            async move {
                io.map(hyper_util::rt::TokioIo::new).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "the session's connection is closed",
                    )
                })
            }
        },
    ))
}
