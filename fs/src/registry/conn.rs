//! One client connection of the built-in registry, with the time limits that keep a
//! misbehaving client from holding it: a request head must arrive within the header
//! timeout once it has begun (and a fresh connection must begin one within it), a
//! connection with no request in progress is closed after the idle timeout, and a response
//! the client stops reading is dropped after the body timeout. hyper's own
//! `header_read_timeout` is not used: it runs from the moment hyper waits for the next
//! request, so it would cut idle keep-alive connections at the header timeout.
//!
//! A watchdog task samples an [`Activity`] clock that the socket wrapper and the request
//! service keep; the decision itself is the pure [`verdict`].

use super::http::{self, State};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

/// Time limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// A begun request head (or a fresh connection's first one) must be complete by then.
    pub header: Duration,
    /// A connection with no request in progress is closed after this long.
    pub idle: Duration,
    /// A response the client makes no room for in this long ends the connection.
    pub body: Duration,
}

/// The client address of a request, put in its extensions for per-client bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub IpAddr);

/// What the watchdog does with a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it.
    Keep,
    /// No request in progress for the idle time: finish politely.
    Idle,
    /// A request head took longer than the header timeout: drop.
    HeaderTimeout,
    /// The client has not taken response bytes for the body timeout: drop.
    WriteStall,
}

/// A moment of a connection's clock, in milliseconds since it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests being served (head read, response not yet fully handed over).
    pub in_flight: usize,
    /// No request served yet.
    pub fresh: bool,
    /// When the last request finished (or the connection was accepted).
    pub idle_since: u64,
    /// When bytes of a next request head first arrived, if they have.
    pub head_since: Option<u64>,
    /// Since when writes have been refused by the socket, if they are.
    pub write_blocked_since: Option<u64>,
}

/// The decision for `s` at `now` (milliseconds on the same clock).
pub fn verdict(s: &Snapshot, now: u64, l: &ConnLimits) -> Verdict {
    let past = |since: u64, d: Duration| now.saturating_sub(since) >= millis(d);
    if let Some(w) = s.write_blocked_since {
        if past(w, l.body) {
            return Verdict::WriteStall;
        }
    }
    if s.in_flight > 0 {
        return Verdict::Keep;
    }
    match s.head_since {
        Some(h) if past(h, l.header) => Verdict::HeaderTimeout,
        Some(_) => Verdict::Keep,
        None if s.fresh && past(s.idle_since, l.header) => Verdict::HeaderTimeout,
        None if past(s.idle_since, l.idle) => Verdict::Idle,
        None => Verdict::Keep,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The clock the socket and the service keep; `0` in an optional field means "none",
/// other values are milliseconds + 1.
pub struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    served: AtomicUsize,
    idle_since: AtomicU64,
    head_since: AtomicU64,
    write_blocked: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        millis(self.born.elapsed())
    }

    fn snapshot(&self) -> Snapshot {
        let opt = |v: u64| v.checked_sub(1);
        Snapshot {
            in_flight: self.in_flight.load(Ordering::Acquire),
            fresh: self.served.load(Ordering::Acquire) == 0,
            idle_since: self.idle_since.load(Ordering::Acquire),
            head_since: opt(self.head_since.load(Ordering::Acquire)),
            write_blocked_since: opt(self.write_blocked.load(Ordering::Acquire)),
        }
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_since.compare_exchange(
                0,
                self.now() + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    fn write_polled(&self, blocked: bool) {
        if blocked {
            let _ = self.write_blocked.compare_exchange(
                0,
                self.now() + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        } else {
            self.write_blocked.store(0, Ordering::Release);
        }
    }

    /// A request head was read: the request is in progress until the guard drops.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
        InFlight(self.clone())
    }
}

/// Marks a request in progress; dropped when its response body is handed over or dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The TCP stream, reporting reads and refused writes to the [`Activity`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        this.activity.write_polled(r.is_pending());
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.activity.write_polled(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.activity.write_polled(r.is_pending());
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// How often the watchdog looks: a quarter of the shortest limit, within 50 ms..1 s.
fn tick(l: &ConnLimits) -> Duration {
    (l.header.min(l.idle).min(l.body) / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Serves one accepted connection until it ends or a limit closes it; `permit` is its slot
/// under the connection cap, released when this returns.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    limits: ConnLimits,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |mut req| {
        let state = state.clone();
        req.extensions_mut().insert(Peer(peer.ip()));
        let guard = act.begin();
        async move {
            let resp = match http::handle(state, req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(move |b| {
                b.map_frame(move |f| {
                    let _held = &guard;
                    f
                })
                .boxed()
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let every = tick(&limits);
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "registry connection ended");
                }
                return;
            }
            _ = tokio::time::sleep(every) => {}
        }
        if let Some(since) = closing {
            if since.elapsed() >= limits.body {
                tracing::debug!(%peer, "registry connection did not finish closing; dropped");
                return;
            }
            continue;
        }
        match verdict(&activity.snapshot(), activity.now(), &limits) {
            Verdict::Keep => {}
            Verdict::Idle => {
                tracing::debug!(%peer, idle_s = limits.idle.as_secs(), "closing idle registry connection");
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            Verdict::HeaderTimeout => {
                tracing::info!(%peer, header_s = limits.header.as_secs_f64(), "request head not complete in time; connection dropped");
                return;
            }
            Verdict::WriteStall => {
                tracing::info!(%peer, body_s = limits.body.as_secs_f64(), "client stopped reading the response; connection dropped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: ConnLimits = ConnLimits {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        body: Duration::from_secs(30),
    };

    fn snap() -> Snapshot {
        Snapshot {
            in_flight: 0,
            fresh: false,
            idle_since: 0,
            head_since: None,
            write_blocked_since: None,
        }
    }

    #[test]
    fn a_begun_head_has_the_header_time() {
        let s = Snapshot {
            head_since: Some(5_000),
            ..snap()
        };
        assert_eq!(verdict(&s, 14_999, &L), Verdict::Keep);
        assert_eq!(verdict(&s, 15_000, &L), Verdict::HeaderTimeout);
    }

    #[test]
    fn a_fresh_silent_connection_has_the_header_time() {
        let s = Snapshot {
            fresh: true,
            ..snap()
        };
        assert_eq!(verdict(&s, 9_999, &L), Verdict::Keep);
        assert_eq!(verdict(&s, 10_000, &L), Verdict::HeaderTimeout);
    }

    #[test]
    fn a_kept_alive_connection_has_the_idle_time() {
        let s = Snapshot {
            idle_since: 1_000,
            ..snap()
        };
        assert_eq!(verdict(&s, 60_999, &L), Verdict::Keep);
        assert_eq!(verdict(&s, 61_000, &L), Verdict::Idle);
    }

    #[test]
    fn a_request_in_progress_is_not_idle_and_its_head_is_done() {
        let s = Snapshot {
            in_flight: 1,
            fresh: true,
            head_since: Some(0),
            ..snap()
        };
        assert_eq!(verdict(&s, 1_000_000, &L), Verdict::Keep);
    }

    #[test]
    fn refused_writes_end_the_connection_after_the_body_time() {
        let s = Snapshot {
            in_flight: 1,
            write_blocked_since: Some(2_000),
            ..snap()
        };
        assert_eq!(verdict(&s, 31_999, &L), Verdict::Keep);
        assert_eq!(verdict(&s, 32_000, &L), Verdict::WriteStall);
    }

    #[test]
    fn the_clock_marks_heads_only_between_requests() {
        let a = Arc::new(Activity::new());
        a.bytes_read();
        assert!(a.snapshot().head_since.is_some());
        let g = a.begin();
        assert_eq!(a.snapshot().head_since, None);
        a.bytes_read();
        assert_eq!(a.snapshot().head_since, None);
        assert_eq!(a.snapshot().in_flight, 1);
        drop(g);
        let s = a.snapshot();
        assert_eq!((s.in_flight, s.fresh), (0, false));
        a.write_polled(true);
        assert!(a.snapshot().write_blocked_since.is_some());
        a.write_polled(false);
        assert_eq!(a.snapshot().write_blocked_since, None);
    }
}
