//! A minimal blocking HTTP/1.1 toolkit for tests: read a request or response, write one, and
//! a canned-response server. Enough to build fault-injecting proxies and hostile registries
//! without depending on the code under test.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A request as received.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path with query.
    pub target: String,
    /// Headers, names lowercased.
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: Vec<u8>,
}

impl Request {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    /// The path without query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// A response to send or as received.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order (names as given).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body and Content-Length.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    /// Adds a header.
    pub fn with(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    /// A header value (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Replaces (or adds) a header.
    pub fn set(&mut self, k: &str, v: impl Into<String>) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        self.headers.push((k.to_string(), v.into()));
    }
    /// The status line and headers, with `Content-Length` of the body unless one is set.
    pub fn head_bytes(&self) -> Vec<u8> {
        let mut s = format!("HTTP/1.1 {} X\r\n", self.status);
        let mut has_len = false;
        for (k, v) in &self.headers {
            if k.eq_ignore_ascii_case("content-length") {
                has_len = true;
            }
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has_len {
            s.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// Status or request line, headers by lowercase name, headers in order.
type Head = (String, BTreeMap<String, String>, Vec<(String, String)>);

fn read_head<R: BufRead>(r: &mut R) -> std::io::Result<Option<Head>> {
    let mut first = String::new();
    if r.read_line(&mut first)? == 0 {
        return Ok(None);
    }
    let mut map = BTreeMap::new();
    let mut ordered = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "eof in head",
            ));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            map.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            ordered.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some((first.trim_end().to_string(), map, ordered)))
}

/// Reads one request (body by Content-Length; chunked request bodies are de-chunked).
pub fn read_request<R: BufRead>(r: &mut R) -> std::io::Result<Option<Request>> {
    let Some((first, headers, _)) = read_head(r)? else {
        return Ok(None);
    };
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let body = read_body(r, &headers, false)?;
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
    }))
}

fn read_body<R: BufRead>(
    r: &mut R,
    headers: &BTreeMap<String, String>,
    to_eof: bool,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                break;
            }
            let mut buf = vec![0u8; n];
            r.read_exact(&mut buf)?;
            body.extend_from_slice(&buf);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(n) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if to_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// Reads one response (HEAD responses have no body).
pub fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> std::io::Result<Response> {
    let (first, map, ordered) = read_head(r)?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no response"))?;
    let status = first
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head_request || status == 204 || status == 304 {
        Vec::new()
    } else {
        read_body(r, &map, true)?
    };
    let headers = ordered
        .into_iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("transfer-encoding"))
        .collect();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Sends a request on a fresh connection and reads the response.
pub fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut r = BufReader::new(s);
    read_response(&mut r, method == "HEAD")
}

/// A server answering each request with a handler, one thread per connection, keep-alive.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

/// What a handler does with a connection after answering.
pub enum Reply {
    /// Send this response and keep the connection.
    Send(Response),
    /// Write these raw bytes and close the connection.
    Raw(Vec<u8>),
    /// Write the head, then stream `body` forever (a hostile endless body).
    Endless(Vec<u8>),
    /// Write these bytes, then reset the connection (RST, not FIN).
    Reset(Vec<u8>),
    /// Write these bytes, then go silent for the duration and close.
    Stall(Vec<u8>, Duration),
}

impl TestServer {
    /// Starts serving `handler` on a free loopback port.
    pub fn start<F>(handler: F) -> TestServer
    where
        F: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handler = Arc::new(handler);
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let h = handler.clone();
                        let stop3 = stop2.clone();
                        std::thread::spawn(move || serve_conn(s, &*h, &stop3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TestServer { addr, stop }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve_conn(s: TcpStream, h: &(dyn Fn(&Request) -> Reply + Send + Sync), stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    while let Ok(Some(req)) = read_request(&mut r) {
        match h(&req) {
            Reply::Send(resp) => {
                let mut out = resp.head_bytes();
                if req.method != "HEAD" {
                    out.extend_from_slice(&resp.body);
                }
                if w.write_all(&out).is_err() {
                    return;
                }
            }
            Reply::Raw(bytes) => {
                let _ = w.write_all(&bytes);
                return;
            }
            Reply::Reset(bytes) => {
                let _ = w.write_all(&bytes);
                let _ = w.flush();
                let l = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: setsockopt on a socket we own, with a correctly sized linger struct.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&w),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        &l as *const libc::linger as *const libc::c_void,
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
                return;
            }
            Reply::Stall(bytes, d) => {
                let _ = w.write_all(&bytes);
                let _ = w.flush();
                std::thread::sleep(d);
                return;
            }
            Reply::Endless(head) => {
                let _ = w.write_all(&head);
                let junk = vec![b'x'; 64 << 10];
                while !stop.load(Ordering::Relaxed) && w.write_all(&junk).is_ok() {}
                return;
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
