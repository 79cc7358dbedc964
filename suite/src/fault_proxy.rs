//! A fault-injecting HTTP proxy for tests: forwards each request to an upstream server and,
//! for requests matching a rule, breaks the answer the way real networks and registries do —
//! resets mid-body, stalls, 5xx, truncated bodies, flipped bits, extra bytes, a wrong
//! Content-Range, redirects, whole blobs for ranges, multipart answers. Every request is logged (method, path, Range, whether it
//! carried Authorization) so tests can count and inspect what the client sent.

use crate::http::{read_response, Reply, Request, Response, TestServer};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A way to break a response.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Send the head and half the body, then reset the connection.
    ResetMidBody,
    /// Send the head and half the body, then go silent for this long.
    Stall(Duration),
    /// Answer with this status instead of forwarding.
    Status(u16),
    /// Send the head (full Content-Length) and half the body, then close.
    Truncate,
    /// Flip one bit in the middle of the body.
    FlipBit,
    /// Append bytes beyond what was asked (and claim them in Content-Length).
    ExtraBytes,
    /// Shift the Content-Range by one byte.
    WrongContentRange,
    /// Answer 307 to this base URL plus the same path.
    RedirectTo(String),
    /// Wait this long before forwarding (a slow link, not a fault).
    Delay(Duration),
    /// Forward without the Range header: the whole blob comes back with 200, as from a
    /// pull-through cache that has not cached the blob yet or a CDN that ignores ranges.
    IgnoreRange,
    /// Answer a 206 as `multipart/byteranges` with one part.
    Multipart,
}

/// When a fault applies.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Request path must contain this.
    pub path_contains: String,
    /// Only requests with a Range header.
    pub ranges_only: bool,
    /// Only Range requests starting at this byte.
    pub range_start: Option<u64>,
    /// How many more matching requests get the fault.
    pub times: usize,
    /// The fault.
    pub fault: Fault,
}

impl Rule {
    /// A rule for the next `times` requests whose path contains `path`.
    pub fn new(path: &str, times: usize, fault: Fault) -> Self {
        Rule {
            path_contains: path.to_string(),
            ranges_only: false,
            range_start: None,
            times,
            fault,
        }
    }
    /// Only for Range requests.
    pub fn ranges(mut self) -> Self {
        self.ranges_only = true;
        self
    }
    /// Only for Range requests that start at byte `start` (one file's frames, not a
    /// neighbour's fetched on a guess).
    pub fn range_from(mut self, start: u64) -> Self {
        self.ranges_only = true;
        self.range_start = Some(start);
        self
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Range header.
    pub range: Option<String>,
    /// Whether Authorization was present.
    pub authorization: bool,
}

/// The proxy.
pub struct FaultProxy {
    server: TestServer,
    rules: Arc<Mutex<Vec<Rule>>>,
    log: Arc<Mutex<Vec<Seen>>>,
    sent: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Proxies to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::new(Mutex::new(Vec::new()));
        let log: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let (r2, l2, s2) = (rules.clone(), log.clone(), sent.clone());
        let server = TestServer::start(move |req| {
            let reply = handle(upstream, &r2, &l2, req);
            s2.fetch_add(reply_body_len(&reply), Ordering::Relaxed);
            reply
        });
        FaultProxy {
            server,
            rules,
            log,
            sent,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Adds a rule.
    pub fn add(&self, rule: Rule) {
        self.rules.lock().expect("rules").push(rule);
    }

    /// Removes all rules.
    pub fn clear(&self) {
        self.rules.lock().expect("rules").clear();
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().expect("log").clone()
    }

    /// Requests seen whose path contains `s`.
    pub fn count(&self, s: &str) -> usize {
        self.seen().iter().filter(|r| r.target.contains(s)).count()
    }

    /// Body bytes of the answers the upstream gave through the proxy (as sent on).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Forgets the log.
    pub fn reset_log(&self) {
        self.log.lock().expect("log").clear();
    }
}

fn take_fault(rules: &Mutex<Vec<Rule>>, req: &Request) -> Option<Fault> {
    let mut rules = rules.lock().ok()?;
    let rule = rules.iter_mut().find(|r| {
        r.times > 0
            && req.target.contains(&r.path_contains)
            && (!r.ranges_only || req.header("range").is_some())
            && r.range_start.is_none_or(|start| {
                req.header("range")
                    .is_some_and(|h| h.trim().starts_with(&format!("bytes={start}-")))
            })
    })?;
    rule.times -= 1;
    Some(rule.fault.clone())
}

fn reply_body_len(r: &Reply) -> u64 {
    match r {
        Reply::Send(resp) => resp.body.len() as u64,
        _ => 0,
    }
}

fn forward(upstream: SocketAddr, req: &Request, drop_range: bool) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(upstream)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        if k == "connection"
            || k == "content-length"
            || k == "transfer-encoding"
            || (drop_range && k == "range")
        {
            continue;
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        req.body.len()
    ));
    s.write_all(head.as_bytes())?;
    s.write_all(&req.body)?;
    let mut r = BufReader::new(s);
    read_response(&mut r, req.method == "HEAD")
}

fn handle(
    upstream: SocketAddr,
    rules: &Mutex<Vec<Rule>>,
    log: &Mutex<Vec<Seen>>,
    req: &Request,
) -> Reply {
    if let Ok(mut l) = log.lock() {
        l.push(Seen {
            method: req.method.clone(),
            target: req.target.clone(),
            range: req.header("range").map(str::to_string),
            authorization: req.header("authorization").is_some(),
        });
    }
    let fault = take_fault(rules, req);
    match &fault {
        Some(Fault::Status(code)) => {
            return Reply::Send(Response::new(*code, format!("injected {code}")))
        }
        Some(Fault::RedirectTo(base)) => {
            return Reply::Send(
                Response::new(307, "").with("Location", format!("{base}{}", req.target)),
            )
        }
        Some(Fault::Delay(d)) => std::thread::sleep(*d),
        _ => {}
    }
    let drop_range = matches!(fault, Some(Fault::IgnoreRange));
    let mut resp = match forward(upstream, req, drop_range) {
        Ok(r) => r,
        Err(e) => return Reply::Send(Response::new(502, format!("proxy: {e}"))),
    };
    let half = resp.body.len() / 2;
    match fault {
        Some(Fault::ResetMidBody) => {
            let mut out = resp.head_bytes();
            out.extend_from_slice(&resp.body[..half]);
            Reply::Reset(out)
        }
        Some(Fault::Stall(d)) => {
            let mut out = resp.head_bytes();
            out.extend_from_slice(&resp.body[..half]);
            Reply::Stall(out, d)
        }
        Some(Fault::Truncate) => {
            let mut out = resp.head_bytes();
            out.extend_from_slice(&resp.body[..half]);
            Reply::Raw(out)
        }
        Some(Fault::FlipBit) => {
            if !resp.body.is_empty() {
                resp.body[half] ^= 0x10;
            }
            Reply::Send(resp)
        }
        Some(Fault::ExtraBytes) => {
            resp.body.extend_from_slice(&[0xAB; 100]);
            let n = resp.body.len();
            resp.set("Content-Length", n.to_string());
            Reply::Send(resp)
        }
        Some(Fault::WrongContentRange) => {
            if let Some(cr) = resp.header("content-range").map(str::to_string) {
                let shifted = shift_range(&cr);
                resp.set("Content-Range", shifted);
            }
            Reply::Send(resp)
        }
        Some(Fault::Multipart) if resp.status == 206 => {
            let cr = resp.header("content-range").unwrap_or("").to_string();
            let boundary = "stargaze-test-boundary";
            let mut body = format!(
                "\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: {cr}\r\n\r\n"
            )
            .into_bytes();
            body.extend_from_slice(&resp.body);
            body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let mut out = Response::new(206, body);
            out.set(
                "Content-Type",
                format!("multipart/byteranges; boundary={boundary}"),
            );
            Reply::Send(out)
        }
        _ => Reply::Send(resp),
    }
}

fn shift_range(cr: &str) -> String {
    let parse = || -> Option<String> {
        let rest = cr.strip_prefix("bytes ")?;
        let (range, total) = rest.split_once('/')?;
        let (a, b) = range.split_once('-')?;
        let a: u64 = a.parse().ok()?;
        let b: u64 = b.parse().ok()?;
        Some(format!("bytes {}-{}/{total}", a + 1, b + 1))
    };
    parse().unwrap_or_else(|| cr.to_string())
}
