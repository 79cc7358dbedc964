//! Retry policy: exponential backoff with jitter for connection errors, 429 and 5xx, so a
//! flapping registry is retried briefly and a dead one fails in bounded time.
//!
//! One [`RetryBudget`] covers one operation (a manifest GET, a range read, a blob download,
//! a streamed region with its resumptions): the client's request loop and the loops that
//! retry a body which broke off draw on the same budget, so an endpoint gets at most
//! `attempts` requests per operation however its failures mix.

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

/// The requests one operation may still send, per endpoint (a mirror that fails hands over
/// to the next endpoint, which has its own tries).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    policy: RetryPolicy,
    /// Requests sent per endpoint (`http(s)://host[:port]`), in the order first tried.
    sent: Vec<(String, u32)>,
    /// The endpoint of the last request, which answered or failed last.
    last: Option<usize>,
}

impl RetryBudget {
    /// A fresh budget of `policy.attempts` requests per endpoint (at least one).
    pub fn new(policy: RetryPolicy) -> Self {
        RetryBudget {
            policy,
            sent: Vec::new(),
            last: None,
        }
    }

    fn sent_to(&self, endpoint: &str) -> u32 {
        self.sent
            .iter()
            .find(|(e, _)| e == endpoint)
            .map_or(0, |(_, n)| *n)
    }

    fn limit(&self) -> u32 {
        self.policy.attempts.max(1)
    }

    /// Whether `endpoint` may get another request.
    pub fn has_left(&self, endpoint: &str) -> bool {
        self.sent_to(endpoint) < self.limit()
    }

    /// Records a request to `endpoint`.
    pub fn spend(&mut self, endpoint: &str) {
        let i = match self.sent.iter().position(|(e, _)| e == endpoint) {
            Some(i) => i,
            None => {
                self.sent.push((endpoint.to_string(), 0));
                self.sent.len() - 1
            }
        };
        self.sent[i].1 = self.sent[i].1.saturating_add(1);
        self.last = Some(i);
    }

    /// After a request to `endpoint` failed (transport error, 429, 5xx): how long to wait
    /// before the next one (the server's `Retry-After` when it sent one), or `None` when
    /// the endpoint has used its tries.
    pub fn retry_request(&self, endpoint: &str, retry_after: Option<&str>) -> Option<Duration> {
        let sent = self.sent_to(endpoint);
        if sent >= self.limit() {
            return None;
        }
        Some(
            self.policy
                .retry_after(retry_after)
                .unwrap_or_else(|| self.policy.backoff(sent.saturating_sub(1))),
        )
    }

    /// After a body broke off or came short (the request itself succeeded): how long to
    /// wait before asking again, or `None` when the endpoint that sent it has used its tries
    /// (or nothing was sent under this budget).
    pub fn retry_body(&self) -> Option<Duration> {
        let (endpoint, _) = &self.sent[self.last?];
        self.retry_request(endpoint, None)
    }

    /// Requests sent under this budget, to all endpoints.
    pub fn requests(&self) -> u32 {
        self.sent.iter().map(|(_, n)| *n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            base: Duration::from_millis(10),
            max: Duration::from_millis(40),
        }
    }

    /// Sends like a request loop that always fails: how many requests went out.
    fn failing_requests(b: &mut RetryBudget, endpoint: &str) -> u32 {
        let mut n = 0;
        loop {
            b.spend(endpoint);
            n += 1;
            if b.retry_request(endpoint, None).is_none() {
                return n;
            }
        }
    }

    #[test]
    fn a_dead_endpoint_gets_exactly_the_attempts() {
        for attempts in [1, 2, 5] {
            let mut b = RetryBudget::new(policy(attempts));
            assert_eq!(failing_requests(&mut b, "http://a"), attempts);
            // An outer loop asking to retry a body gets nothing more.
            assert_eq!(b.retry_body(), None);
            assert!(!b.has_left("http://a"));
        }
        // Zero attempts still sends one request.
        let mut b = RetryBudget::new(policy(0));
        assert_eq!(failing_requests(&mut b, "http://a"), 1);
    }

    #[test]
    fn body_retries_and_request_retries_share_one_budget() {
        let mut b = RetryBudget::new(policy(4));
        assert_eq!(b.retry_body(), None, "nothing sent yet");
        // A good status whose body broke: one request spent, a body retry allowed.
        b.spend("http://a");
        assert!(b.retry_body().is_some());
        // The next request fails twice at the request level, then succeeds with a body that
        // breaks again: that was the fourth request, so no more body retries.
        b.spend("http://a");
        assert!(b.retry_request("http://a", None).is_some());
        b.spend("http://a");
        assert!(b.retry_request("http://a", None).is_some());
        b.spend("http://a");
        assert_eq!(b.retry_body(), None);
        assert_eq!(b.requests(), 4);
    }

    #[test]
    fn each_endpoint_has_its_own_tries() {
        let mut b = RetryBudget::new(policy(2));
        assert_eq!(failing_requests(&mut b, "http://mirror"), 2);
        assert!(b.has_left("http://origin"));
        b.spend("http://origin");
        // The body retry is judged by the endpoint that sent the body.
        assert!(b.retry_body().is_some());
        b.spend("http://origin");
        assert_eq!(b.retry_body(), None);
        assert_eq!(b.requests(), 4);
    }

    #[test]
    fn waits_follow_the_policy_and_retry_after() {
        let p = policy(5);
        let mut b = RetryBudget::new(p);
        b.spend("http://a");
        let w = b.retry_request("http://a", None).unwrap();
        assert!(w >= p.base / 2 && w <= p.base, "{w:?}");
        // Retry-After is honoured but bounded by the policy's longest wait.
        assert_eq!(b.retry_request("http://a", Some("0")), Some(Duration::ZERO));
        assert_eq!(b.retry_request("http://a", Some("3600")), Some(p.max));
        for _ in 0..3 {
            b.spend("http://a");
        }
        assert!(b.retry_request("http://a", None).unwrap() <= p.max);
    }

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
