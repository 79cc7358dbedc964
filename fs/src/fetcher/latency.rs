//! A fixed-bucket latency histogram of atomics, for range requests: cheap enough to record
//! on every request, and shaped as Prometheus wants it (cumulative buckets, sum, count).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds, seconds.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Request latencies.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// A copy of a histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySnapshot {
    /// Cumulative count per bucket of [`BUCKETS`].
    pub cumulative: Vec<u64>,
    /// Sum of all observations, seconds.
    pub sum_secs: f64,
    /// Observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one request.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> LatencySnapshot {
        let mut acc = 0;
        let cumulative = self
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Ordering::Relaxed);
                acc
            })
            .collect();
        LatencySnapshot {
            cumulative,
            sum_secs: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

impl LatencySnapshot {
    /// Adds another snapshot (to sum over layers).
    pub fn add(&mut self, o: &LatencySnapshot) {
        if self.cumulative.len() < o.cumulative.len() {
            self.cumulative.resize(o.cumulative.len(), 0);
        }
        for (a, b) in self.cumulative.iter_mut().zip(&o.cumulative) {
            *a += b;
        }
        self.sum_secs += o.sum_secs;
        self.count += o.count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[3], 2);
        assert_eq!(
            *s.cumulative.last().unwrap(),
            2,
            "60 s is past the last bucket"
        );
        assert!((s.sum_secs - 60.043).abs() < 1e-6);
    }
}
