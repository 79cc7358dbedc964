//! The `Range` request header as a blob server reads it: one `bytes=` range (`a-b`, `a-`,
//! `-n`). Several ranges or a malformed header are ignored, as RFC 9110 allows, and the whole
//! blob is served; a well-formed range past the end is "unsatisfiable" (416).

/// What to do with a request's `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// Serve the whole blob (no header, or one we ignore).
    Full,
    /// Serve `[start, end]` inclusive.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// The range lies outside the blob: answer 416.
    Unsatisfiable,
}

/// Interprets `header` for a blob of `size` bytes.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        // "-n": the last n bytes.
        (true, false) => match num(b) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            None => RangeRequest::Full,
        },
        // "a-": from a to the end.
        (false, true) => match num(a) {
            Some(s) if s < size => RangeRequest::Partial {
                start: s,
                end: size - 1,
            },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Full,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s > e => RangeRequest::Full,
            (Some(s), Some(_)) if s >= size => RangeRequest::Unsatisfiable,
            (Some(s), Some(e)) => RangeRequest::Partial {
                start: s,
                end: e.min(size - 1),
            },
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;
    use super::*;

    #[test]
    fn forms() {
        let p = |s, e| Partial { start: s, end: e };
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-3"), 10), p(0, 3));
        assert_eq!(parse_range(Some("bytes=5-"), 10), p(5, 9));
        assert_eq!(parse_range(Some("bytes=-4"), 10), p(6, 9));
        assert_eq!(parse_range(Some("bytes=-40"), 10), p(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), p(8, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=10-12"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=3-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Full);
        assert_eq!(parse_range(Some("bytes=+1-2"), 10), Full);
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999999-"), 10),
            Full
        );
    }
}
