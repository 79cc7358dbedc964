//! Retry policy: exponential backoff with jitter for connection errors, 429 and 5xx, so a
//! flapping registry is retried briefly and a dead one fails in bounded time.

use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in total (1 = no retry).
    pub attempts: u32,
    /// First backoff.
    pub base: Duration,
    /// Longest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(3),
        }
    }
}

impl RetryPolicy {
    /// Backoff before try `attempt + 1` (attempt counts from 0): base·2^attempt capped at
    /// `max`, scaled by a random factor in [0.5, 1.0) so clients do not retry in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16));
        let capped = exp.min(self.max);
        capped.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }

    /// A server's `Retry-After` seconds, bounded by `max`.
    pub fn retry_after(&self, header: Option<&str>) -> Option<Duration> {
        let secs: u64 = header?.trim().parse().ok()?;
        Some(Duration::from_secs(secs).min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let p = RetryPolicy::default();
        for a in 0..40 {
            let b = p.backoff(a);
            assert!(b <= p.max, "{b:?}");
        }
        assert!(p.backoff(0) >= p.base / 2);
        assert_eq!(p.retry_after(Some("1")), Some(Duration::from_secs(1)));
        assert_eq!(p.retry_after(Some("100000")), Some(p.max));
        assert_eq!(p.retry_after(Some("soon")), None);
    }
}
