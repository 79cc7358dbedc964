//! The record of what on-demand reads touched: each chunk once, at its first read, in that
//! order, at most [`MAX_ENTRIES`] of them. It also counts the distinct chunks read and their
//! compressed bytes (the layer's `chunks_read` and `chunk_bytes_read`), which it keeps doing
//! after the record is closed. On the read path it costs one short lock and a hash lookup
//! per chunk; the set of chunks seen is bounded by the layer's index.

use super::format::{Entry, MAX_ENTRIES};
use crate::format::Chunk;
use std::collections::HashSet;
use std::sync::Mutex;

/// A bounded, ordered, first-touch record of chunks read.
#[derive(Debug)]
pub struct Recorder {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    seen: HashSet<(u64, u64)>,
    order: Vec<Entry>,
    /// Compressed bytes of the chunks in `order`.
    order_bytes: u64,
    /// Whether new chunks still join `order`.
    open: bool,
    /// Milliseconds (after open) of the first and the last chunk that joined `order`.
    first_ms: u64,
    last_ms: u64,
}

/// What one [`Recorder::touch`] added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Touched {
    /// Chunks read for the first time.
    pub chunks: u64,
    /// Their compressed bytes.
    pub bytes: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            state: Mutex::new(State {
                seen: HashSet::new(),
                order: Vec::new(),
                order_bytes: 0,
                open: true,
                first_ms: 0,
                last_ms: 0,
            }),
        }
    }
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that `chunks` were read `ms` after the layer was opened.
    pub fn touch(&self, chunks: &[Chunk], ms: u64) -> Touched {
        let mut t = Touched::default();
        let mut s = self.lock();
        for c in chunks.iter().filter(|c| !c.zeros && c.size > 0) {
            if !s.seen.insert((c.blob_offset, c.inner_offset)) {
                continue;
            }
            let bytes = c.blob_end.saturating_sub(c.blob_offset);
            t.chunks += 1;
            t.bytes += bytes;
            if s.open && s.order.len() < MAX_ENTRIES {
                if s.order.is_empty() {
                    s.first_ms = ms;
                }
                s.order.push(Entry::of(c, ms));
                s.order_bytes += bytes;
                s.last_ms = ms;
            }
        }
        t
    }

    /// Whether the record still takes new chunks.
    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    /// Chunks recorded so far, and the times of the first and the last (ms after open).
    pub fn progress(&self) -> (usize, u64, u64) {
        let s = self.lock();
        (s.order.len(), s.first_ms, s.last_ms)
    }

    /// Closes the record (nothing joins it any more) and returns it with its chunks'
    /// compressed bytes, if it was open.
    pub fn close(&self) -> Option<(Vec<Entry>, u64)> {
        let mut s = self.lock();
        if !s.open {
            return None;
        }
        s.open = false;
        Some((std::mem::take(&mut s.order), s.order_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(off: u64, inner: u64) -> Chunk {
        Chunk {
            file_offset: 0,
            size: 4,
            blob_offset: off,
            blob_end: off + 3,
            inner_offset: inner,
            digest: None,
            zeros: false,
        }
    }

    #[test]
    fn first_touch_order_and_counts() {
        let r = Recorder::default();
        assert_eq!(
            r.touch(&[c(10, 0), c(0, 0)], 5),
            Touched {
                chunks: 2,
                bytes: 6
            }
        );
        assert_eq!(
            r.touch(&[c(0, 0), c(0, 2)], 9),
            Touched {
                chunks: 1,
                bytes: 3
            }
        );
        let zero = Chunk {
            zeros: true,
            ..c(50, 0)
        };
        assert_eq!(r.touch(&[zero], 10), Touched::default());
        assert_eq!(r.progress(), (3, 5, 9));
        assert_eq!(
            r.close().unwrap(),
            (vec![Entry(10, 0, 5), Entry(0, 0, 5), Entry(0, 2, 9)], 9)
        );
        assert!(r.close().is_none());
        // Closed: still counted, no longer recorded.
        assert_eq!(r.touch(&[c(20, 0)], 11).chunks, 1);
        assert_eq!(r.progress().0, 0);
    }

    #[test]
    fn the_record_is_capped() {
        let r = Recorder::default();
        let many: Vec<Chunk> = (0..MAX_ENTRIES as u64 + 10).map(|i| c(i * 8, 0)).collect();
        assert_eq!(r.touch(&many, 1).chunks, many.len() as u64);
        assert_eq!(r.close().unwrap().0.len(), MAX_ENTRIES);
    }
}
