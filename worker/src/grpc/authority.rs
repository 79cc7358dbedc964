//! Lets gRPC clients that send a unix socket's path as `:authority` be served. gRPC C-core
//! (Python `grpcio` and others) may send the path percent-encoded (`%2Frun%2F…sock`) or as
//! `unix:/path`; the HTTP/2 server under tonic (`h2`) parses `:authority` as a URI authority,
//! and resets such a stream with PROTOCOL_ERROR ("malformed authority") before any service
//! sees it, with no option to relax that. The name is meaningless on a unix socket, so the
//! bytes a client sends are rewritten on their way in: a literal `:authority` value (static
//! table name or the name spelled out, as C-core does; not Huffman-coded) that is not a
//! valid authority becomes as many `x`s. The
//! value keeps its length, so header frames keep their layout and both HPACK tables their
//! sizes; a later indexed reference to the entry reads the rewritten value. Anything else —
//! other headers, other frames, a connection that does not start with the HTTP/2 preface —
//! passes unchanged. (A Huffman-coded bad authority still gets the reset; C-core sends
//! plain strings.)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Most bytes of one unfinished header block held back to be looked at (tonic's server
/// accepts header lists of 16 KiB by default).
const MAX_HELD_BLOCK: usize = 256 << 10;

enum State {
    Preface,
    Frames,
    Passthrough,
}

/// A header block split over a HEADERS frame and its CONTINUATIONs, kept as sent.
struct Block {
    stream: u32,
    /// Whole frames, and where each one's fragment lies in it.
    frames: Vec<(Vec<u8>, std::ops::Range<usize>)>,
}

/// A server-side connection whose incoming `:authority` values are made acceptable.
pub struct AuthorityFix<S> {
    inner: S,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    pending: Option<Block>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            state: State::Preface,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            pending: None,
            eof: false,
        }
    }

    /// Moves what can be judged from `input` to `output`.
    fn process(&mut self) {
        loop {
            match self.state {
                State::Passthrough => {
                    self.output.append(&mut self.input);
                    return;
                }
                State::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.state = State::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    self.output.extend(self.input.drain(..n));
                    self.state = State::Frames;
                }
                State::Frames => {
                    if self.input.len() < 9 {
                        return;
                    }
                    let len = usize::from(self.input[0]) << 16
                        | usize::from(self.input[1]) << 8
                        | usize::from(self.input[2]);
                    if self.input.len() < 9 + len {
                        return;
                    }
                    let frame: Vec<u8> = self.input.drain(..9 + len).collect();
                    self.frame(frame);
                }
            }
        }
    }

    fn frame(&mut self, frame: Vec<u8>) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut block = match (self.pending.take(), kind) {
            (None, HEADERS) => match fragment(&frame, flags) {
                Some(r) => Block {
                    stream,
                    frames: vec![(frame, r)],
                },
                None => return self.output.extend(frame),
            },
            (Some(mut b), CONTINUATION) if b.stream == stream => {
                let r = 9..frame.len();
                b.frames.push((frame, r));
                b
            }
            (Some(b), _) => {
                // Not what HTTP/2 allows: hand everything on and let the server say so.
                for (f, _) in b.frames {
                    self.output.extend(f);
                }
                self.output.extend(frame);
                self.state = State::Passthrough;
                return;
            }
            (None, _) => return self.output.extend(frame),
        };
        if flags & END_HEADERS == 0 {
            let held: usize = block.frames.iter().map(|(f, _)| f.len()).sum();
            if held > MAX_HELD_BLOCK {
                // Larger than any header list the server accepts: no rewrite, no more holding
                // (a client could otherwise send CONTINUATIONs without end); the server judges.
                for (f, _) in block.frames {
                    self.output.extend(f);
                }
                self.state = State::Passthrough;
                return;
            }
            self.pending = Some(block);
            return;
        }
        let mut bytes: Vec<u8> = block
            .frames
            .iter()
            .flat_map(|(f, r)| f[r.clone()].iter().copied())
            .collect();
        if fix_block(&mut bytes) {
            let mut at = 0;
            for (f, r) in &mut block.frames {
                let n = r.len();
                f[r.clone()].copy_from_slice(&bytes[at..at + n]);
                at += n;
            }
        }
        for (f, _) in block.frames {
            self.output.extend(f);
        }
    }
}

/// Where a HEADERS frame's header block fragment lies (after pad length and priority,
/// before padding).
fn fragment(frame: &[u8], flags: u8) -> Option<std::ops::Range<usize>> {
    let mut start = 9;
    let mut end = frame.len();
    if flags & PADDED != 0 {
        let pad = usize::from(*frame.get(start)?);
        start += 1;
        end = end.checked_sub(pad)?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    (start <= end).then_some(start..end)
}

/// An HPACK integer with an `n`-bit prefix at `at`: its value and the index after it.
fn integer(b: &[u8], at: usize, n: u32) -> Option<(usize, usize)> {
    let max = (1usize << n) - 1;
    let mut v = usize::from(*b.get(at)?) & max;
    let mut i = at + 1;
    if v < max {
        return Some((v, i));
    }
    let mut shift = 0;
    loop {
        let c = *b.get(i)?;
        i += 1;
        v = v.checked_add(usize::from(c & 0x7f).checked_shl(shift)?)?;
        if c & 0x80 == 0 {
            return Some((v, i));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// An HPACK string at `at`: whether it is Huffman-coded, its bytes' range.
fn string(b: &[u8], at: usize) -> Option<(bool, std::ops::Range<usize>)> {
    let huffman = *b.get(at)? & 0x80 != 0;
    let (len, start) = integer(b, at, 7)?;
    let end = start.checked_add(len)?;
    (end <= b.len()).then_some((huffman, start..end))
}

/// Rewrites, in place, each literal `:authority` value that is not a valid authority;
/// true if one was. A block that does not parse is left alone.
fn fix_block(b: &mut [u8]) -> bool {
    let mut fixes = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let first = b[i];
        let step = if first & 0x80 != 0 {
            integer(b, i, 7).map(|(_, j)| j)
        } else if first & 0xe0 == 0x20 {
            integer(b, i, 5).map(|(_, j)| j)
        } else {
            let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
            literal(b, i, prefix, &mut fixes)
        };
        match step {
            Some(j) => i = j,
            None => return false,
        }
    }
    for r in &fixes {
        b[r.clone()].fill(b'x');
    }
    !fixes.is_empty()
}

/// A literal field at `at`: the index after it; a bad plain `:authority` value's range is
/// added to `fixes`.
fn literal(
    b: &[u8],
    at: usize,
    prefix: u32,
    fixes: &mut Vec<std::ops::Range<usize>>,
) -> Option<usize> {
    let (name, mut i) = integer(b, at, prefix)?;
    // Static table entry 1 is `:authority`; C-core spells the name out instead.
    let mut authority = name == 1;
    if name == 0 {
        let (huffman, n) = string(b, i)?;
        authority = !huffman && &b[n.clone()] == b":authority";
        i = n.end;
    }
    let (huffman, value) = string(b, i)?;
    if authority && !huffman && !value.is_empty() {
        let v = &b[value.clone()];
        if tonic::codegen::http::uri::Authority::try_from(v).is_err() {
            tracing::debug!(authority = %String::from_utf8_lossy(v), "a client's :authority is not a URI authority; served as if it were a name");
            fixes.push(value.clone());
        }
    }
    Some(value.end)
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.sent < me.output.len() {
                let n = buf.remaining().min(me.output.len() - me.sent);
                buf.put_slice(&me.output[me.sent..me.sent + n]);
                me.sent += n;
                return Poll::Ready(Ok(()));
            }
            me.output.clear();
            me.sent = 0;
            if me.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 << 10];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut me.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if rb.filled().is_empty() {
                // The end: whatever is left goes on as it came.
                me.eof = true;
                if let Some(b) = me.pending.take() {
                    for (f, _) in b.frames {
                        me.output.extend(f);
                    }
                }
                me.output.append(&mut me.input);
                continue;
            }
            me.input.extend_from_slice(rb.filled());
            me.process();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A HEADERS frame on stream 1 holding `block`, with `flags`.
    fn headers(block: &[u8], flags: u8) -> Vec<u8> {
        let mut f = vec![0, 0, block.len() as u8, HEADERS, flags, 0, 0, 0, 1];
        f.extend_from_slice(block);
        f
    }

    #[test]
    fn bad_literal_authorities_become_names_and_the_rest_is_untouched() {
        // :method POST (indexed 3), :authority "%2Fs.sock" (literal, incremental indexing,
        // static name 1), then "unix:/s" without indexing, then a Huffman-coded value.
        let mut block = vec![0x83, 0x41, 9];
        block.extend_from_slice(b"%2Fs.sock");
        block.extend_from_slice(&[0x01, 7]);
        block.extend_from_slice(b"unix:/s");
        block.extend_from_slice(&[0x41, 0x80 | 2, 0xaa, 0xbb]);
        block.extend_from_slice(&[0x41, 9]);
        block.extend_from_slice(b"localhost");
        // As grpcio sends it: literal name.
        block.extend_from_slice(&[0x40, 10]);
        block.extend_from_slice(b":authority");
        block.extend_from_slice(&[4]);
        block.extend_from_slice(b"%2Fs");
        let mut expected = vec![0x83, 0x41, 9];
        expected.extend_from_slice(b"xxxxxxxxx");
        expected.extend_from_slice(&[0x01, 7]);
        expected.extend_from_slice(b"xxxxxxx");
        expected.extend_from_slice(&[0x41, 0x80 | 2, 0xaa, 0xbb]);
        expected.extend_from_slice(&[0x41, 9]);
        expected.extend_from_slice(b"localhost");
        expected.extend_from_slice(&[0x40, 10]);
        expected.extend_from_slice(b":authority");
        expected.extend_from_slice(&[4]);
        expected.extend_from_slice(b"xxxx");
        let mut fixed = block.clone();
        assert!(fix_block(&mut fixed));
        assert_eq!(fixed, expected);
        // Split over HEADERS + CONTINUATION, behind the preface and a SETTINGS frame.
        let wire = |block: &[u8]| {
            let (a, b) = block.split_at(5);
            let mut w = PREFACE.to_vec();
            w.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
            w.extend(headers(a, 0));
            w.extend_from_slice(&[0, 0, b.len() as u8, CONTINUATION, END_HEADERS, 0, 0, 0, 1]);
            w.extend_from_slice(b);
            w
        };
        let mut c = AuthorityFix::new(tokio::io::empty());
        c.input = wire(&block);
        c.process();
        assert_eq!(c.output, wire(&expected));
        // Not HTTP/2: passed as it came.
        let mut c = AuthorityFix::new(tokio::io::empty());
        c.input = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        c.process();
        assert_eq!(c.output, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_header_block_without_end_is_not_held_without_bound() {
        let mut c = AuthorityFix::new(tokio::io::empty());
        c.input = PREFACE.to_vec();
        c.input.extend(headers(&[0x83], 0));
        c.process();
        let cont = |n: usize| {
            let mut f = vec![0, (n >> 8) as u8, n as u8, CONTINUATION, 0, 0, 0, 0, 1];
            f.resize(9 + n, 0x83);
            f
        };
        let mut sent = 0;
        while sent <= 2 * MAX_HELD_BLOCK {
            c.input.extend(cont(16_000));
            c.process();
            sent += 16_009;
        }
        // Everything was handed on once the block outgrew the bound; nothing stays held.
        assert!(c.pending.is_none());
        assert!(c.input.is_empty());
        assert!(matches!(c.state, State::Passthrough));
        assert_eq!(c.output.len(), PREFACE.len() + 10 + sent);
    }
}
