//! A per-layer record of a run's read path in time: on-demand misses (a read waiting for
//! the network) and Range requests (sent, first byte, done; on demand or on a guess), so a
//! view can show, per time bucket, how many misses wait, how many requests and bytes are in
//! flight, and whether a waiting miss has the link idle (latency-bound: a round trip, not
//! bandwidth, is what it waits for) or bytes flowing. Bounded: the first [`MAX_EVENTS`] events
//! are kept (a cold start is what it is for), later ones only counted; labels are cut to
//! [`MAX_LABEL`] bytes. Recording is one short mutex push per miss or request, nothing per
//! byte. Times are milliseconds since a process-wide epoch, so layers line up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Events kept per layer.
pub const MAX_EVENTS: usize = 4096;
/// Bytes of a file label kept.
pub const MAX_LABEL: usize = 96;
/// Buckets a view is cut into at most (however small a width is asked for).
pub const MAX_BUCKETS: usize = 10_000;

/// The process-wide time origin of every timeline.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> f64 {
    epoch().elapsed().as_secs_f64() * 1e3
}

/// What an event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A read that had to wait for the network (from asking to having its chunks).
    Miss,
    /// A Range request made for a read.
    Request,
    /// A Range request made on a guess (speculation, prefetch, background fetch).
    Speculative,
}

/// One miss or request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// What it was.
    pub kind: EventKind,
    /// Milliseconds since the epoch when it began.
    pub start_ms: f64,
    /// When its first body byte arrived (requests; equal to `end_ms` when none did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<f64>,
    /// When it ended.
    pub end_ms: f64,
    /// Compressed bytes: asked for (misses: of the chunks read), or fetched (requests).
    pub bytes: u64,
    /// The file, cut to [`MAX_LABEL`] bytes.
    pub file: String,
}

/// The events of one layer.
#[derive(Debug, Default)]
pub struct Timeline {
    events: Mutex<Vec<Event>>,
    dropped: AtomicU64,
}

/// A copy of a timeline, as `stats` carries it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelineSnapshot {
    /// Events, in the order they ended.
    pub events: Vec<Event>,
    /// Events not kept (past [`MAX_EVENTS`]).
    pub dropped: u64,
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl Timeline {
    /// Records an event that ran from `start_ms` to now.
    pub fn record(
        &self,
        kind: EventKind,
        file: &str,
        start_ms: f64,
        first_byte_ms: Option<f64>,
        bytes: u64,
    ) {
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if ev.len() >= MAX_EVENTS {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        ev.push(Event {
            kind,
            start_ms,
            first_byte_ms,
            end_ms: now_ms(),
            bytes,
            file: cut(file, MAX_LABEL),
        });
    }

    /// The events so far.
    pub fn snapshot(&self) -> TimelineSnapshot {
        TimelineSnapshot {
            events: self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// One time bucket of a view.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Bucket {
    /// Start, milliseconds from the view's origin.
    pub start_ms: f64,
    /// Misses waiting, on average over the bucket.
    pub misses: f64,
    /// Requests in flight (sent, not done), on average; of them on a guess.
    pub requests: f64,
    /// Of `requests`, those made on a guess, on average.
    pub speculative: f64,
    /// Compressed bytes that arrived in the bucket (a request's bytes spread evenly from
    /// its first byte to its end).
    pub bytes: f64,
    /// Milliseconds in which at least one miss waited.
    pub wait_ms: f64,
    /// Of `wait_ms`, those in which no request was receiving bytes (the link idle while a
    /// read waits: latency-bound).
    pub idle_wait_ms: f64,
}

/// A bucketed view of events, with totals.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct View {
    /// Epoch milliseconds that bucket 0 starts at (the first event's start).
    pub origin_ms: f64,
    /// Bucket width, milliseconds.
    pub width_ms: f64,
    /// The buckets.
    pub buckets: Vec<Bucket>,
    /// Milliseconds in which a miss waited.
    pub wait_ms: f64,
    /// Of them, with the link idle.
    pub idle_wait_ms: f64,
    /// Milliseconds in which some request was receiving bytes.
    pub busy_ms: f64,
}

/// Cuts the events (of any layers) into buckets of `width_ms` from the first event's start.
/// Events with times that are not finite or end before they start are ignored; at most
/// [`MAX_BUCKETS`] buckets (the width grows to fit).
pub fn view(events: &[Event], width_ms: f64) -> View {
    let valid = |e: &&Event| {
        e.start_ms.is_finite()
            && e.end_ms.is_finite()
            && e.end_ms >= e.start_ms
            && e.first_byte_ms.is_none_or(|f| f.is_finite())
    };
    let events: Vec<&Event> = events.iter().filter(valid).collect();
    let (Some(origin), Some(last)) = (
        events.iter().map(|e| e.start_ms).reduce(f64::min),
        events.iter().map(|e| e.end_ms).reduce(f64::max),
    ) else {
        return View::default();
    };
    let span = (last - origin).max(f64::MIN_POSITIVE);
    let width = if width_ms.is_finite() && width_ms > 0.0 {
        width_ms.max(span / MAX_BUCKETS as f64)
    } else {
        span / 40.0
    }
    .max(1e-3);
    let n = ((span / width).ceil() as usize).clamp(1, MAX_BUCKETS);
    let mut out = View {
        origin_ms: origin,
        width_ms: width,
        buckets: (0..n)
            .map(|i| Bucket {
                start_ms: i as f64 * width,
                ..Bucket::default()
            })
            .collect(),
        ..View::default()
    };
    // Sweep: +1/-1 at every boundary of a miss, a request, and a request's data phase.
    // (time, which counter, delta); counters: 0 misses, 1 requests, 2 speculative, 3 receiving.
    let mut edges: Vec<(f64, usize, i32)> = Vec::with_capacity(events.len() * 4);
    for e in &events {
        let (s, t) = (e.start_ms - origin, e.end_ms - origin);
        match e.kind {
            EventKind::Miss => edges.extend([(s, 0, 1), (t, 0, -1)]),
            EventKind::Request | EventKind::Speculative => {
                edges.extend([(s, 1, 1), (t, 1, -1)]);
                if e.kind == EventKind::Speculative {
                    edges.extend([(s, 2, 1), (t, 2, -1)]);
                }
                let f = e.first_byte_ms.map_or(t, |f| (f - origin).clamp(s, t));
                edges.extend([(f, 3, 1), (t, 3, -1)]);
                // Bytes spread evenly over the data phase (all at its end if it has none).
                spread(&mut out.buckets, width, f, t, e.bytes as f64);
            }
        }
    }
    edges.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut open = [0i64; 4];
    let mut at = 0.0;
    for (t, which, d) in edges {
        if t > at {
            add_segment(&mut out, width, at, t, open);
            at = t;
        }
        open[which] += i64::from(d);
    }
    out
}

/// Adds `bytes` spread evenly over `from..to` to the buckets.
fn spread(buckets: &mut [Bucket], width: f64, from: f64, to: f64, bytes: f64) {
    let last = buckets.len().saturating_sub(1);
    if to <= from {
        let i = ((to / width) as usize).min(last);
        if let Some(b) = buckets.get_mut(i) {
            b.bytes += bytes;
        }
        return;
    }
    let rate = bytes / (to - from);
    let mut i = ((from / width) as usize).min(last);
    while i <= last {
        let (bs, be) = (i as f64 * width, (i + 1) as f64 * width);
        let overlap = to.min(be) - from.max(bs);
        if overlap > 0.0 {
            buckets[i].bytes += overlap * rate;
        }
        if be >= to {
            break;
        }
        i += 1;
    }
}

/// Adds the segment `from..to`, during which `open` counters held, to the buckets it
/// covers and to the totals.
fn add_segment(v: &mut View, width: f64, from: f64, to: f64, open: [i64; 4]) {
    let waiting = open[0] > 0;
    let receiving = open[3] > 0;
    let len = to - from;
    if waiting {
        v.wait_ms += len;
        if !receiving {
            v.idle_wait_ms += len;
        }
    }
    if receiving {
        v.busy_ms += len;
    }
    let last = v.buckets.len().saturating_sub(1);
    let mut i = ((from / width) as usize).min(last);
    while i <= last {
        let (bs, be) = (i as f64 * width, (i + 1) as f64 * width);
        // The last bucket takes whatever rounding left past its end.
        let be = if i == last { be.max(to) } else { be };
        let overlap = to.min(be) - from.max(bs);
        if overlap > 0.0 {
            let b = &mut v.buckets[i];
            let share = overlap / width;
            b.misses += open[0] as f64 * share;
            b.requests += open[1] as f64 * share;
            b.speculative += open[2] as f64 * share;
            if waiting {
                b.wait_ms += overlap;
                if !receiving {
                    b.idle_wait_ms += overlap;
                }
            }
        }
        if be >= to {
            break;
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, s: f64, f: Option<f64>, e: f64, bytes: u64) -> Event {
        Event {
            kind,
            start_ms: s,
            first_byte_ms: f,
            end_ms: e,
            bytes,
            file: "f".into(),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_miss_waiting_for_a_round_trip_then_bytes() {
        // Origin 1000: a miss from 0 to 100 ms; its request is sent at 0, first byte at 40,
        // done at 100, 6000 bytes. Buckets of 50 ms.
        let v = view(
            &[
                ev(EventKind::Miss, 1000.0, None, 1100.0, 6000),
                ev(EventKind::Request, 1000.0, Some(1040.0), 1100.0, 6000),
            ],
            50.0,
        );
        assert!(close(v.origin_ms, 1000.0));
        assert_eq!(v.buckets.len(), 2);
        let (a, b) = (&v.buckets[0], &v.buckets[1]);
        assert!(close(a.misses, 1.0) && close(b.misses, 1.0));
        assert!(close(a.requests, 1.0) && close(a.speculative, 0.0));
        // 40 ms idle while waiting in the first bucket, none in the second.
        assert!(
            close(a.wait_ms, 50.0) && close(a.idle_wait_ms, 40.0),
            "{a:?}"
        );
        assert!(close(b.idle_wait_ms, 0.0));
        // 6000 bytes over 60 ms: 1000 in the first bucket (40..50), 5000 in the second.
        assert!(close(a.bytes, 1000.0) && close(b.bytes, 5000.0), "{v:?}");
        assert!(close(v.wait_ms, 100.0) && close(v.idle_wait_ms, 40.0));
        assert!(close(v.busy_ms, 60.0));
    }

    #[test]
    fn overlapping_misses_count_once_in_the_totals() {
        // Two misses 0..100 and 50..150, a speculative request receiving over 100..150.
        let v = view(
            &[
                ev(EventKind::Miss, 0.0, None, 100.0, 1),
                ev(EventKind::Miss, 50.0, None, 150.0, 1),
                ev(EventKind::Speculative, 0.0, Some(100.0), 150.0, 500),
            ],
            100.0,
        );
        assert_eq!(v.buckets.len(), 2);
        assert!(close(v.buckets[0].misses, 1.5), "{v:?}");
        assert!(close(v.buckets[1].misses, 0.5));
        assert!(close(v.buckets[0].speculative, 1.0));
        assert!(close(v.buckets[1].requests, 0.5));
        assert!(close(v.wait_ms, 150.0), "the union, not the sum");
        assert!(close(v.idle_wait_ms, 100.0));
        assert!(close(v.buckets[1].bytes, 500.0));
    }

    #[test]
    fn no_events_and_bad_events_give_an_empty_view() {
        assert_eq!(view(&[], 10.0), View::default());
        let bad = [
            ev(EventKind::Miss, f64::NAN, None, 1.0, 0),
            ev(EventKind::Miss, 5.0, None, 1.0, 0),
        ];
        assert_eq!(view(&bad, 10.0), View::default());
    }

    #[test]
    fn the_bucket_count_is_bounded() {
        let v = view(&[ev(EventKind::Miss, 0.0, None, 1e9, 0)], 1e-6);
        assert!(v.buckets.len() <= MAX_BUCKETS);
        assert!(close(v.wait_ms, 1e9));
        // Zero or negative widths pick one.
        let v = view(&[ev(EventKind::Miss, 0.0, None, 400.0, 0)], 0.0);
        assert_eq!(v.buckets.len(), 40);
        // A request with a first byte outside its span is clamped into it.
        let v = view(&[ev(EventKind::Request, 0.0, Some(-50.0), 10.0, 10)], 5.0);
        assert!(close(v.busy_ms, 10.0));
        assert!(close(v.buckets.iter().map(|b| b.bytes).sum::<f64>(), 10.0));
    }

    #[test]
    fn recording_keeps_the_first_events_and_counts_the_rest() {
        let t = Timeline::default();
        let long = "é".repeat(200);
        for _ in 0..MAX_EVENTS + 3 {
            t.record(EventKind::Miss, &long, now_ms(), None, 1);
        }
        let s = t.snapshot();
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(s.dropped, 3);
        assert!(s.events[0].file.len() <= MAX_LABEL);
        assert!(s.events[0].end_ms >= s.events[0].start_ms);
    }
}
