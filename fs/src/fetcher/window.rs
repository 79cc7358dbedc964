//! The window of a streamed region: the bytes frames not yet complete still need, so a
//! region is never held whole in memory.

use bytes::Bytes;

/// The bytes of a streamed region that frames not yet complete still need: from the start
/// of the first pending frame up to the last byte received.
pub(super) struct FrameWindow {
    /// Blob offset of `buf[0]`.
    pub(super) base: u64,
    /// Blob offset of the next byte to arrive.
    pub(super) pos: u64,
    pub(super) buf: Vec<u8>,
}

impl FrameWindow {
    pub(super) fn new(start: u64) -> Self {
        FrameWindow {
            base: start,
            pos: start,
            buf: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        if self.buf.is_empty() {
            self.base = self.pos;
        }
        self.buf.extend_from_slice(bytes);
        self.pos += bytes.len() as u64;
    }

    /// Bytes `from..to` once all of them have arrived.
    pub(super) fn frame(&self, from: u64, to: u64) -> Option<Bytes> {
        if to > self.pos || from < self.base {
            return None;
        }
        let (a, b) = ((from - self.base) as usize, (to - self.base) as usize);
        Some(Bytes::copy_from_slice(&self.buf[a..b]))
    }

    /// Forgets what lies before `offset` (holes between frames, frames handed out).
    pub(super) fn drop_before(&mut self, offset: u64) {
        let n = offset.saturating_sub(self.base).min(self.buf.len() as u64) as usize;
        if n > 0 {
            self.buf.drain(..n);
            self.base += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FrameWindow;

    #[test]
    fn the_window_holds_only_pending_frames() {
        let mut w = FrameWindow::new(100);
        w.push(&[1; 30]);
        assert!(w.frame(100, 140).is_none(), "not all there yet");
        w.push(&[2; 30]);
        assert_eq!(w.frame(110, 140).unwrap().len(), 30);
        // Frames handed out and holes are dropped; what is still needed stays.
        w.drop_before(150);
        assert_eq!(w.buf.len(), 10);
        assert_eq!(&w.frame(150, 160).unwrap()[..], &[2; 10]);
        w.drop_before(500);
        assert!(w.buf.is_empty());
        w.push(&[3; 5]);
        assert_eq!(w.base, 160);
        assert!(
            w.frame(150, 161).is_none(),
            "dropped bytes do not come back"
        );
    }
}
