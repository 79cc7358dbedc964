//! The built-in registry under misuse, over loopback: half-sent requests, idle and stalled
//! connections, the connection cap, wrong-password floods under basic auth, and floods of
//! upload sessions. Every wait is bounded by a limit a server without the protection would
//! exceed (it would hang or answer far later); short timeouts are set with the flags.

use base64::Engine as _;
use stargaze_suite::http::{read_response, send, Response};
use stargaze_suite::servers::StargazeRegistry;
use stargaze_suite::{require, stargaze_bin};
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REPO: &str = "lab/misuse";

fn have_bin() -> bool {
    require(stargaze_bin().is_file(), "the stargaze binary")
}

/// A registry on a fresh root with `extra` flags; the temp dir lives as long as the server.
fn start(extra: &[&str]) -> (StargazeRegistry, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("stargaze-misuse-")
        .tempdir()
        .unwrap();
    let reg = StargazeRegistry::start_at_with(&dir.path().join("root"), None, dir.path(), extra);
    // wait_http's probes close their connections; give their slots a moment to free.
    std::thread::sleep(Duration::from_millis(200));
    (reg, dir)
}

/// A connection that sent the start of a request head and stops there.
fn half_sent(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    s
}

/// Reads until the server closes; true when it did within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A GET /v2/ on a new connection; the response and how long it took.
fn timed_base(addr: SocketAddr, headers: &[(&str, &str)]) -> (Response, Duration) {
    let t = Instant::now();
    let r = send(addr, "GET", "/v2/", headers, b"").unwrap();
    (r, t.elapsed())
}

fn upload_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("_uploads")).unwrap().count()
}

fn post_upload(addr: SocketAddr) -> Response {
    send(
        addr,
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/"),
        &[],
        b"",
    )
    .unwrap()
}

fn error_code(r: &Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["errors"][0]["code"].as_str().unwrap_or("").to_string()
}

#[test]
fn half_sent_requests_neither_starve_others_nor_stay() {
    if !have_bin() {
        return;
    }
    let (reg, _dir) = start(&["--header-timeout", "2"]);
    let mut slow: Vec<TcpStream> = (0..160).map(|_| half_sent(reg.addr)).collect();
    let (r, took) = timed_base(reg.addr, &[]);
    assert_eq!(r.status, 200);
    assert!(
        took < Duration::from_secs(5),
        "GET /v2/ took {took:?} beside 160 half-sent requests"
    );
    // All of them are closed once the header timeout has passed.
    let t = Instant::now();
    for (i, s) in slow.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(20).saturating_sub(t.elapsed())),
            "half-sent request {i} still open after {:?}",
            t.elapsed()
        );
    }
    // And the server still serves.
    assert_eq!(timed_base(reg.addr, &[]).0.status, 200);
}

#[test]
fn a_silent_new_connection_is_closed_after_the_header_timeout() {
    if !have_bin() {
        return;
    }
    let (reg, _dir) = start(&["--header-timeout", "1", "--idle-timeout", "600"]);
    let mut s = TcpStream::connect(reg.addr).unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(15)));
}

#[test]
fn kept_alive_connections_serve_then_close_when_idle() {
    if !have_bin() {
        return;
    }
    let (reg, _dir) = start(&["--idle-timeout", "3", "--header-timeout", "600"]);
    let mut s = TcpStream::connect(reg.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..2 {
        s.write_all(req).unwrap();
        assert_eq!(read_response(&mut r, false).unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(300));
    }
    // The header timeout is 10 minutes: only the idle timeout can close it this soon.
    assert!(closed_within(&mut s, Duration::from_secs(20)));
}

#[test]
fn a_stalled_upload_body_loses_its_upload_and_connection() {
    if !have_bin() {
        return;
    }
    let (reg, _dir) = start(&["--body-timeout", "2"]);
    let r = post_upload(reg.addr);
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_string();
    let mut s = TcpStream::connect(reg.addr).unwrap();
    write!(
        s,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n0123456789"
    )
    .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(20)));
    let st = send(reg.addr, "GET", &loc, &[], b"").unwrap();
    assert_eq!(st.status, 404, "the stalled upload is gone");
    assert_eq!(upload_files(&reg.root), 0);
}

#[test]
fn the_connection_cap_holds_and_frees() {
    if !have_bin() {
        return;
    }
    let (reg, _dir) = start(&["--max-connections", "20", "--header-timeout", "600"]);
    let mut slow: Vec<TcpStream> = (0..20).map(|_| half_sent(reg.addr)).collect();
    std::thread::sleep(Duration::from_millis(300));
    // A 21st connection is not served while the 20 hold their slots…
    let mut s = TcpStream::connect(reg.addr).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = s.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "served beyond the cap: {early:?}"
    );
    // …and is served as soon as one of them goes.
    drop(slow.pop());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    drop(slow);
}

#[test]
fn a_client_that_stops_reading_frees_its_slot() {
    if !have_bin() {
        return;
    }
    let (reg, _dir) = start(&["--max-connections", "1", "--body-timeout", "2"]);
    let blob: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&blob))
    );
    let r = send(
        reg.addr,
        "POST",
        &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        &blob,
    )
    .unwrap();
    assert_eq!(r.status, 201);
    std::thread::sleep(Duration::from_millis(200));
    // Ask for the blob and never read it: the socket buffers fill and the server's writes stall.
    let mut hog = TcpStream::connect(reg.addr).unwrap();
    write!(
        hog,
        "GET /v2/{REPO}/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (r, took) = timed_base(reg.addr, &[]);
    assert_eq!(r.status, 200);
    assert!(
        took < Duration::from_secs(20),
        "the only slot was held by a client that does not read for {took:?}"
    );
    // The server dropped it: reading now gets what the socket buffers held, then the end,
    // well short of the blob.
    let t = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    hog.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let closed = loop {
        if t.elapsed() > Duration::from_secs(20) {
            break false;
        }
        match hog.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "the stalled download is still open after {got} bytes"
    );
    assert!(got < blob.len(), "the whole blob was sent ({got} bytes)");
}

#[test]
fn wrong_passwords_do_not_slow_a_verified_client() {
    if !have_bin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A realistic bcrypt cost: each wrong password costs the server real CPU time.
    let hash = bcrypt::hash("s3cret", 12).unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("alice:{hash}\n")).unwrap();
    let reg = StargazeRegistry::start_at_with(
        &dir.path().join("root"),
        None,
        dir.path(),
        &["--htpasswd", htpasswd.to_str().unwrap()],
    );
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let good = format!("Basic {}", b64("alice:s3cret"));
    assert_eq!(
        timed_base(reg.addr, &[("Authorization", &good)]).0.status,
        200
    );

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let addr = reg.addr;
    let attackers: Vec<_> = (0..4)
        .map(|i| {
            let (stop, refused) = (stop.clone(), refused.clone());
            let bad = format!("Basic {}", b64(&format!("alice:wrong{i}")));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = send(addr, "GET", "/v2/", &[("Authorization", &bad)], b"").unwrap();
                    assert_eq!(r.status, 401, "a wrong password was let in");
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let (r, took) = timed_base(reg.addr, &[("Authorization", &good)]);
        assert_eq!(r.status, 200);
        slowest = slowest.max(took);
    }
    let total = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    assert!(
        refused.load(Ordering::Relaxed) >= 4,
        "the attackers did not get going"
    );
    assert!(
        total < Duration::from_secs(10),
        "100 verified requests took {total:?} (slowest {slowest:?}) beside 4 wrong-password loops"
    );
}

/// POST to start an upload from a chosen loopback source address.
fn post_upload_from(addr: SocketAddr, source: &str) -> Response {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let std_stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
        sock.connect(addr).await.unwrap().into_std().unwrap()
    });
    std_stream.set_nonblocking(false).unwrap();
    let mut s = std_stream;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v2/{REPO}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    read_response(&mut BufReader::new(s), false).unwrap()
}

#[test]
fn upload_sessions_are_bounded_per_client_and_in_all() {
    if !have_bin() {
        return;
    }
    let (reg, _dir) = start(&["--max-uploads", "80", "--max-uploads-per-client", "50"]);
    let mut started = 0;
    for _ in 0..2000 {
        let r = post_upload(reg.addr);
        match r.status {
            202 => started += 1,
            429 => {
                assert_eq!(error_code(&r), "TOOMANYREQUESTS");
                assert!(r.header("retry-after").is_some());
            }
            s => panic!("POST answered {s}"),
        }
    }
    assert_eq!(started, 50, "one client's sessions");
    assert_eq!(upload_files(&reg.root), 50);
    // Another client address gets the rest of the total.
    let codes: Vec<u16> = (0..40)
        .map(|_| post_upload_from(reg.addr, "127.0.0.2").status)
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 202).count(), 30);
    assert_eq!(codes.iter().filter(|&&c| c == 429).count(), 10);
    assert_eq!(upload_files(&reg.root), 80);
    // The total bound holds for a third address too, until a session is cancelled.
    assert_eq!(post_upload_from(reg.addr, "127.0.0.3").status, 429);
    let any = std::fs::read_dir(reg.root.join("_uploads"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let loc = format!(
        "/v2/{REPO}/blobs/uploads/{}",
        any.file_name().to_string_lossy()
    );
    assert_eq!(
        send(reg.addr, "DELETE", &loc, &[], b"").unwrap().status,
        204
    );
    assert_eq!(upload_files(&reg.root), 79);
    assert_eq!(post_upload_from(reg.addr, "127.0.0.3").status, 202);
}

#[test]
fn untouched_upload_sessions_expire_touched_ones_stay() {
    if !have_bin() {
        return;
    }
    let (reg, _dir) = start(&["--upload-expiry", "2"]);
    let idle = post_upload(reg.addr)
        .header("location")
        .unwrap()
        .to_string();
    let busy = post_upload(reg.addr)
        .header("location")
        .unwrap()
        .to_string();
    assert_eq!(upload_files(&reg.root), 2);
    let t = Instant::now();
    let mut size = 0u64;
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "an untouched session outlived its expiry of 2 s by far"
        );
        let r = send(
            reg.addr,
            "PATCH",
            &busy,
            &[("Content-Range", &format!("{size}-{size}"))],
            b"x",
        )
        .unwrap();
        assert_eq!(r.status, 202, "a session touched every 0.3 s expired");
        size += 1;
        if send(reg.addr, "GET", &idle, &[], b"").unwrap().status == 404 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // The sweep removes the file too (it may run just after the lookup refused the session).
    let t = Instant::now();
    while upload_files(&reg.root) != 1 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "expired upload file stays"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(send(reg.addr, "GET", &busy, &[], b"").unwrap().status, 204);
}

#[test]
fn leftover_uploads_are_removed_at_restart() {
    if !have_bin() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let reg = StargazeRegistry::start_at(&root, None, dir.path());
    let locs: Vec<String> = (0..5)
        .map(|_| {
            post_upload(reg.addr)
                .header("location")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(upload_files(&root), 5);
    drop(reg);
    std::fs::write(root.join("_uploads").join("stray"), b"left by something").unwrap();
    let reg = StargazeRegistry::start_at(&root, None, dir.path());
    assert_eq!(upload_files(&root), 0);
    for loc in &locs {
        assert_eq!(send(reg.addr, "GET", loc, &[], b"").unwrap().status, 404);
    }
}
