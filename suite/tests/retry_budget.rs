//! The client's retry budget, counted on the wire: a loopback server that answers 503, drops
//! connections or cuts bodies short counts the requests it gets. With a policy of N attempts
//! a manifest GET, a blob range read and a blob download each send exactly N requests to a
//! dead host (not N² as when the request loop and the body loop each had a budget), a cut
//! body followed by a good one is read right from two requests, and a mirror's tries do not
//! eat the origin's. No root, no network.

use stargaze_fs::remote::{ClientOptions, Reference, RegistryClient, RemoteError, RetryPolicy};
use stargaze_fs::Digest;
use stargaze_suite::http::{Reply, Request, Response, TestServer};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ATTEMPTS: u32 = 3;
const BLOB_LEN: usize = 10_000;

/// What the server does with one request.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// Answer this status with an empty body.
    Status(u16),
    /// Read the request and close the connection without a byte.
    Drop,
    /// Answer the blob (or its range) with the full length announced, send half, close.
    Cut,
    /// Answer the blob (or its range) properly.
    Good,
}

fn blob() -> Vec<u8> {
    (0..BLOB_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

/// `bytes=A-B` → (A, B).
fn range_of(req: &Request) -> Option<(usize, usize)> {
    let (a, b) = req
        .header("range")?
        .strip_prefix("bytes=")?
        .split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The blob, or the part of it the request's Range asks for, as a response.
fn blob_answer(req: &Request) -> Response {
    let data = blob();
    match range_of(req) {
        Some((a, b)) => Response::new(206, data[a..=b].to_vec())
            .with("Content-Range", format!("bytes {a}-{b}/{}", data.len())),
        None => Response::new(200, data),
    }
}

/// A registry that plays `script` in order (then `then` for ever) and counts requests.
struct Scripted {
    server: TestServer,
    requests: Arc<AtomicUsize>,
}

impl Scripted {
    fn start(script: &[Act], then: Act) -> Scripted {
        let queue = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let server = TestServer::start(move |req| {
            counted.fetch_add(1, Ordering::SeqCst);
            let act = queue.lock().unwrap().pop_front().unwrap_or(then);
            match act {
                Act::Status(code) => Reply::Send(Response::new(code, "")),
                Act::Drop => Reply::Raw(Vec::new()),
                Act::Cut => {
                    let resp = blob_answer(req);
                    let mut out = resp.head_bytes();
                    out.extend_from_slice(&resp.body[..resp.body.len() / 2]);
                    Reply::Raw(out)
                }
                Act::Good => Reply::Send(blob_answer(req)),
            }
        });
        Scripted { server, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn reference(&self) -> Reference {
        Reference::parse(&format!("{}/r/img:v1", self.server.addr)).unwrap()
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts: ATTEMPTS,
        base: Duration::from_millis(1),
        max: Duration::from_millis(5),
    }
}

fn client_with(opts: impl FnOnce(&mut ClientOptions)) -> RegistryClient {
    let mut o = ClientOptions {
        retry: policy(),
        read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    };
    opts(&mut o);
    RegistryClient::new(o).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn digest() -> Digest {
    Digest::of(&blob())
}

/// The three operations, each against a fresh scripted server; returns their results and
/// the requests each sent.
fn manifest_get(script: &[Act], then: Act) -> (Result<(), RemoteError>, usize) {
    let s = Scripted::start(script, then);
    let r = rt().block_on(client_with(|_| {}).manifest(&s.reference(), &[]));
    (r.map(|_| ()), s.requests())
}

fn range_read(script: &[Act], then: Act) -> (Result<Vec<u8>, RemoteError>, usize) {
    let s = Scripted::start(script, then);
    let r =
        rt().block_on(client_with(|_| {}).blob_range(&s.reference(), &digest(), 1000, 4000, &[]));
    (r.map(|r| r.data.to_vec()), s.requests())
}

fn download(script: &[Act], then: Act) -> (Result<Vec<u8>, RemoteError>, usize) {
    let s = Scripted::start(script, then);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("blob");
    let r = rt().block_on(async {
        let mut f = tokio::fs::File::create(&path).await.unwrap();
        client_with(|_| {})
            .blob_to_file(
                &s.reference(),
                &digest(),
                BLOB_LEN as u64,
                &mut f,
                &[],
                &|_| {},
            )
            .await
    });
    (r.map(|()| std::fs::read(&path).unwrap()), s.requests())
}

#[test]
fn a_host_answering_503_gets_exactly_the_attempts() {
    let n = ATTEMPTS as usize;
    let (r, sent) = manifest_get(&[], Act::Status(503));
    assert!(
        matches!(r, Err(RemoteError::Status { status: 503, .. })),
        "{r:?}"
    );
    assert_eq!(sent, n, "manifest GET");
    let (r, sent) = range_read(&[], Act::Status(503));
    assert!(
        matches!(r, Err(RemoteError::Status { status: 503, .. })),
        "{r:?}"
    );
    assert_eq!(sent, n, "range read");
    let (r, sent) = download(&[], Act::Status(503));
    assert!(
        matches!(r, Err(RemoteError::Status { status: 503, .. })),
        "{r:?}"
    );
    assert_eq!(sent, n, "download");
    // 429 is retried the same way; 404 not at all.
    assert_eq!(range_read(&[], Act::Status(429)).1, n);
    let (r, sent) = range_read(&[], Act::Status(404));
    assert!(matches!(r, Err(RemoteError::NotFound(_))), "{r:?}");
    assert_eq!(sent, 1);
}

#[test]
fn a_host_dropping_connections_gets_exactly_the_attempts() {
    let n = ATTEMPTS as usize;
    let (r, sent) = manifest_get(&[], Act::Drop);
    assert!(matches!(r, Err(RemoteError::Transport { .. })), "{r:?}");
    assert_eq!(sent, n, "manifest GET");
    let (r, sent) = range_read(&[], Act::Drop);
    assert!(matches!(r, Err(RemoteError::Transport { .. })), "{r:?}");
    assert_eq!(sent, n, "range read");
    let (r, sent) = download(&[], Act::Drop);
    assert!(matches!(r, Err(RemoteError::Transport { .. })), "{r:?}");
    assert_eq!(sent, n, "download");
}

#[test]
fn a_cut_body_then_a_good_one_reads_right_from_two_requests() {
    let want = blob();
    let (r, sent) = range_read(&[Act::Cut], Act::Good);
    assert_eq!(r.unwrap(), want[1000..5000]);
    assert_eq!(sent, 2, "range read");
    let (r, sent) = download(&[Act::Cut], Act::Good);
    assert_eq!(r.unwrap(), want);
    assert_eq!(sent, 2, "download");
}

#[test]
fn bodies_and_requests_that_fail_share_one_budget() {
    let n = ATTEMPTS as usize;
    // Every body cut short: the body loop stops at the same count as the request loop would.
    let (r, sent) = range_read(&[], Act::Cut);
    assert!(matches!(r, Err(RemoteError::Transport { .. })), "{r:?}");
    assert_eq!(sent, n, "range read, all cut");
    let (r, sent) = download(&[], Act::Cut);
    assert!(matches!(r, Err(RemoteError::Transport { .. })), "{r:?}");
    assert_eq!(sent, n, "download, all cut");
    // A cut body, then 503s: the request loop goes on with what the body left, not anew.
    let (r, sent) = range_read(&[Act::Cut], Act::Status(503));
    assert!(
        matches!(r, Err(RemoteError::Status { status: 503, .. })),
        "{r:?}"
    );
    assert_eq!(sent, n, "range read, cut then 503");
    let (r, sent) = download(&[Act::Cut], Act::Status(503));
    assert!(
        matches!(r, Err(RemoteError::Status { status: 503, .. })),
        "{r:?}"
    );
    assert_eq!(sent, n, "download, cut then 503");
    // A 503 and a dropped connection, then a good answer: three requests, right bytes.
    let (r, sent) = range_read(&[Act::Status(503), Act::Drop], Act::Good);
    assert_eq!(r.unwrap(), blob()[1000..5000]);
    assert_eq!(sent, 3);
}

#[test]
fn a_dead_mirror_has_its_own_tries_and_the_origin_its_own() {
    let mirror = Scripted::start(&[], Act::Status(503));
    let origin = Scripted::start(&[Act::Cut], Act::Good);
    let reference = origin.reference();
    let c = client_with(|o| {
        o.hosts
            .add_mirror(&reference.registry, &mirror.server.url())
            .unwrap()
    });
    let got = rt()
        .block_on(c.blob_range(&reference, &digest(), 0, 100, &[]))
        .unwrap();
    assert_eq!(got.data[..], blob()[..100]);
    // The mirror failed ATTEMPTS times and is not asked again when the origin's body breaks;
    // the origin sent a cut body, then the good one.
    assert_eq!(mirror.requests(), ATTEMPTS as usize);
    assert_eq!(origin.requests(), 2);
}
