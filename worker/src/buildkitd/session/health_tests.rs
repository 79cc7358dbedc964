//! Session health checks end to end over a real socket, with a fast policy: a client that
//! attaches its session but never answers on it loses the session after two failed checks;
//! the project's client, which serves the health service, keeps its session.

use super::headers::SessionLimits;
use super::health::HealthPolicy;
use super::tests::{daemon_with, session};
use super::Sessions;
use crate::buildkitd::client::local::LocalDirs;
use crate::buildkitd::proto::control::BytesMessage;
use crate::buildkitd::session::{NAME, SHARED_KEY, UUID};
use std::time::Duration;

fn fast() -> Sessions {
    Sessions::new(SessionLimits {
        health: HealthPolicy {
            interval: Duration::from_millis(100),
            min_timeout: Duration::from_millis(200),
        },
        ..SessionLimits::default()
    })
}

#[tokio::test]
async fn a_client_that_never_answers_loses_its_session() {
    let tmp = tempfile::tempdir().unwrap();
    let (sessions, addr) = daemon_with(tmp.path(), fast()).await;
    let mut c = crate::buildkitd::client::connect(&addr).await.unwrap();
    // The stream stays open but the client never speaks HTTP/2 on it.
    let (_tx, rx) = tokio::sync::mpsc::channel::<BytesMessage>(1);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(UUID, "mute".parse().unwrap());
    req.metadata_mut().insert(NAME, "mute".parse().unwrap());
    req.metadata_mut()
        .insert(SHARED_KEY, "mute".parse().unwrap());
    let mut answer = c.session(req).await.unwrap().into_inner();
    drop(session(&sessions, "mute").await);
    // Two checks time out (about 0.1 + 0.2 + 0.1 + 0.2 s): the daemon ends the session,
    // its answer stream ends and the ID is free again.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = tokio_stream::StreamExt::next(&mut answer).await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the daemon kept a session whose client never answered"
    );
    for _ in 0..100 {
        if sessions.get("mute").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session still registered after its health checks failed");
}

#[tokio::test]
async fn a_client_serving_health_keeps_its_session() {
    let tmp = tempfile::tempdir().unwrap();
    let (sessions, addr) = daemon_with(tmp.path(), fast()).await;
    let c = crate::buildkitd::client::connect(&addr).await.unwrap();
    let held = crate::buildkitd::client::session::attach(&c, "healthy", LocalDirs::default())
        .await
        .unwrap();
    drop(session(&sessions, "healthy").await);
    // Well past two intervals and timeouts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        sessions.get("healthy").is_some(),
        "a healthy session was closed"
    );
    drop(held);
}
