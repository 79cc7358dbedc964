//! Sessions on the real daemon: `stargaze buildkitd` started as BuildKit's sandbox starts
//! buildkitd, a client attaching its session with the `X-Docker-Expose-Session-*` headers
//! over `Control.Session`. The daemon registers it (a second session with the same ID is
//! refused while the first is attached) and forgets it when its stream ends (the ID can be
//! attached again), and keeps serving. Needs root and runc.

use stargaze_suite::buildkit_client::{connect, control, Buildkitd};
use stargaze_suite::{have, is_root, require};
use std::time::Duration;

fn prerequisites() -> bool {
    require(is_root(), "root (the worker's snapshotter and sockets)")
        && require(
            have("runc") || have("buildkit-runc"),
            "runc (the OCI worker's runtime)",
        )
}

/// A session request for `id` whose message stream stays open until the sender returned
/// is used or dropped (then the stream ends, as a client's does when its session closes).
fn session_request(
    id: &str,
) -> (
    tonic::Request<impl futures_util::Stream<Item = control::BytesMessage> + Send + 'static>,
    tokio::sync::oneshot::Sender<()>,
) {
    use futures_util::StreamExt;
    let (close, closed) = tokio::sync::oneshot::channel::<()>();
    let messages = futures_util::stream::once(closed)
        .filter_map(|_| std::future::ready(None::<control::BytesMessage>));
    let mut req = tonic::Request::new(messages);
    let md = req.metadata_mut();
    md.insert("x-docker-expose-session-uuid", id.parse().unwrap());
    md.insert("x-docker-expose-session-name", "ctx".parse().unwrap());
    md.insert("x-docker-expose-session-sharedkey", "k".parse().unwrap());
    md.append(
        "x-docker-expose-session-grpc-method",
        "/moby.filesync.v1.FileSync/DiffCopy".parse().unwrap(),
    );
    (req, close)
}

#[test]
fn sessions_are_registered_by_id_until_their_stream_ends() {
    if !prerequisites() {
        return;
    }
    let mut d = Buildkitd::start(&["--oci-worker-snapshotter=native"]);
    let addr = d.addr();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut c = connect(&addr).await.unwrap();
            let (req, close_first) = session_request("sess-1");
            let _first = c.session(req).await.unwrap();
            // Attached: the same ID is refused, another is not.
            let e = c.session(session_request("sess-1").0).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
            let (req, _close_other) = session_request("sess-2");
            let _other = c.session(req).await.unwrap();
            // A bad method header is refused.
            let (mut bad, _close_bad) = session_request("sess-3");
            bad.metadata_mut().append(
                "x-docker-expose-session-grpc-method",
                "nope".parse().unwrap(),
            );
            let e = c.session(bad).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            // The first stream ends: its ID is free again.
            close_first.send(()).unwrap();
            let mut again = None;
            for _ in 0..500 {
                let (req, close) = session_request("sess-1");
                match c.session(req).await {
                    Ok(s) => {
                        again = Some((s, close));
                        break;
                    }
                    Err(e) => assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}"),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                again.is_some(),
                "sess-1 still attached after its stream ended"
            );
            // Still serving.
            c.info(control::InfoRequest {}).await.unwrap();
        });
    assert!(d.alive(), "daemon died: {}", d.log());
    let status = d.terminate();
    assert!(status.success(), "{status:?}: {}", d.log());
}
