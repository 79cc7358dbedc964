//! Whole files in the chunk store, keyed by what verified them.
//!
//! A file's TOC `digest` is a claim of the layer that carries it: two layers can claim the
//! same file digest for different bytes, and a store keyed by that claim would hand one
//! layer's file to the other. So a whole-file copy is keyed by the file's layout in the
//! layer that asks for it — the length and chunk digest of every piece, which that layer
//! verified chunk by chunk — and checked against that layout piece by piece when it is
//! written and when a process first hands it out. A file of one chunk is that chunk: its
//! key is the chunk digest, so the chunk entry itself serves as the whole file.

use crate::digest::{Digest, Hasher};
use std::io::Write;

/// One piece of a file as a layer's TOC lays it out: `len` bytes hashing to `digest`, or
/// `len` zero bytes (`digest` `None`, a zstd:chunked hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Bytes in the piece.
    pub len: u64,
    /// SHA-256 of the bytes; `None` for zeros.
    pub digest: Option<Digest>,
}

/// The store key of a whole file made of `pieces`: the digest of a one-piece file, else the
/// SHA-256 of the layout (a domain tag, then each piece's length and digest or a zeros mark).
pub fn whole_file_key(pieces: &[Piece]) -> Digest {
    if let [Piece {
        digest: Some(d), ..
    }] = pieces
    {
        return *d;
    }
    let mut h = Hasher::new();
    h.update(b"stargaze whole-file layout v1\0");
    for p in pieces {
        h.update(&p.len.to_le_bytes());
        match &p.digest {
            Some(d) => {
                h.update(&[1]);
                h.update(d.as_bytes());
            }
            None => h.update(&[0]),
        }
    }
    h.finish()
}

/// Passes bytes on to `inner` while checking them against a layout: each piece must hash to
/// its digest (or be zeros), and no byte may follow the last piece.
pub(super) struct PieceChecker<'a, W: Write> {
    inner: W,
    pieces: &'a [Piece],
    /// The piece being filled, and bytes of it seen so far.
    at: usize,
    filled: u64,
    hasher: Hasher,
    ok: bool,
    written: u64,
}

impl<'a, W: Write> PieceChecker<'a, W> {
    pub(super) fn new(inner: W, pieces: &'a [Piece]) -> Self {
        PieceChecker {
            inner,
            pieces,
            at: 0,
            filled: 0,
            hasher: Hasher::new(),
            ok: true,
            written: 0,
        }
    }

    /// Bytes written so far.
    pub(super) fn written(&self) -> u64 {
        self.written
    }

    /// Whether every piece arrived whole and matched, with nothing after the last.
    pub(super) fn matched(&self) -> bool {
        self.ok && self.at == self.pieces.len()
    }

    /// The inner writer.
    pub(super) fn inner_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    fn check(&mut self, mut buf: &[u8]) {
        // Empty pieces complete at once.
        self.close_full_pieces();
        while !buf.is_empty() && self.ok {
            let Some(p) = self.pieces.get(self.at) else {
                self.ok = false; // bytes past the layout
                return;
            };
            let take =
                usize::try_from(p.len - self.filled).map_or(buf.len(), |left| left.min(buf.len()));
            let (now, rest) = buf.split_at(take);
            match p.digest {
                Some(_) => self.hasher.update(now),
                None => self.ok &= now.iter().all(|&b| b == 0),
            }
            self.filled += take as u64;
            buf = rest;
            self.close_full_pieces();
        }
    }

    fn close_full_pieces(&mut self) {
        while let Some(p) = self.pieces.get(self.at) {
            if self.filled < p.len {
                return;
            }
            let h = std::mem::take(&mut self.hasher);
            if let Some(d) = p.digest {
                self.ok &= h.finish() == d;
            }
            self.at += 1;
            self.filled = 0;
        }
    }
}

impl<W: Write> Write for PieceChecker<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.check(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(parts: &[&[u8]]) -> Vec<Piece> {
        parts
            .iter()
            .map(|p| Piece {
                len: p.len() as u64,
                digest: (!p.iter().all(|&b| b == 0)).then(|| Digest::of(p)),
            })
            .collect()
    }

    fn check(pieces: &[Piece], writes: &[&[u8]]) -> bool {
        let mut c = PieceChecker::new(std::io::sink(), pieces);
        for w in writes {
            c.write_all(w).unwrap();
        }
        c.matched()
    }

    #[test]
    fn pieces_are_checked_across_write_boundaries() {
        let (a, z, b) = (vec![1u8; 300], vec![0u8; 100], vec![2u8; 50]);
        let p = layout(&[&a, &z, &b]);
        let all = [a.clone(), z.clone(), b.clone()].concat();
        assert!(check(&p, &[&all]));
        assert!(check(&p, &[&all[..7], &all[7..301], &all[301..]]));
        // Short, long, a bad byte in a hashed piece, a non-zero byte in the zeros.
        assert!(!check(&p, &[&all[..449]]));
        assert!(!check(&p, &[&all, b"x"]));
        let mut bad = all.clone();
        bad[10] = 9;
        assert!(!check(&p, &[&bad]));
        let mut bad = all.clone();
        bad[320] = 1;
        assert!(!check(&p, &[&bad]));
    }

    #[test]
    fn keys_follow_the_verified_layout_not_a_claim() {
        let (a, b) = (vec![1u8; 10], vec![2u8; 10]);
        // One piece: the chunk's own digest (the chunk entry is the file).
        assert_eq!(whole_file_key(&layout(&[&a])), Digest::of(&a));
        // Same bytes cut differently, or different bytes: different keys; never the digest
        // of the whole content, which a TOC could claim for anything.
        let ab = [a.clone(), b.clone()].concat();
        let two = whole_file_key(&layout(&[&a, &b]));
        assert_ne!(two, Digest::of(&ab));
        assert_ne!(two, whole_file_key(&layout(&[&ab[..5], &ab[5..]])));
        assert_ne!(two, whole_file_key(&layout(&[&b, &a])));
        assert_eq!(two, whole_file_key(&layout(&[&a, &b])));
    }
}
