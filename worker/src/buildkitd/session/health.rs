//! Session health, checked as buildkitd checks it: every `interval` (5 s) the daemon calls
//! the client's `grpc.health.v1.Health/Check` over the session's connection, with a timeout
//! of `min_timeout` (30 s) or 1.5 × the last check's duration, whichever is longer; a second
//! failure without five successes in between closes the session. A client that stops
//! answering — hung, or gone without ending its stream — so gives its session up (and the
//! slot it takes of the daemon's `max_sessions`) instead of holding it forever; its builds
//! then lose the session's services (file-sync, credentials, exports) as with buildkitd.

use super::super::proto::grpc::health::v1::health_client::HealthClient;
use super::super::proto::grpc::health::v1::HealthCheckRequest;
use super::bridge::Closer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The method a session's client serves for the checks.
pub const CHECK: &str = "/grpc.health.v1.Health/Check";

/// Successes after a failure that forget it.
const RESET_AFTER: u32 = 5;

/// How often and how patiently sessions are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Between checks.
    pub interval: Duration,
    /// The shortest timeout of one check.
    pub min_timeout: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            interval: Duration::from_secs(5),
            min_timeout: Duration::from_secs(30),
        }
    }
}

/// What the checks have seen so far (the rule apart from the clock and the calls).
#[derive(Debug, Default)]
struct Record {
    failed_before: bool,
    successes: u32,
}

impl Record {
    /// Takes one check's outcome; true when the session must be closed.
    fn take(&mut self, ok: bool) -> bool {
        if ok {
            self.successes += 1;
            if self.successes >= RESET_AFTER {
                self.failed_before = false;
            }
            return false;
        }
        if self.failed_before {
            return true;
        }
        self.failed_before = true;
        self.successes = 0;
        false
    }
}

/// Checks session `id` over `channel` until `ended` is notified (the session's stream is
/// gone) or the checks fail as above, then asks `closer` to close it.
pub async fn monitor(
    id: String,
    channel: Channel,
    policy: HealthPolicy,
    closer: Closer,
    ended: Arc<tokio::sync::Notify>,
) {
    let mut client = HealthClient::new(channel);
    let mut record = Record::default();
    let mut last = Duration::ZERO;
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + policy.interval,
        policy.interval,
    );
    loop {
        tokio::select! {
            () = ended.notified() => return,
            _ = ticks.tick() => {}
        }
        let timeout = policy.min_timeout.max(last.mul_f64(1.5));
        let started = Instant::now();
        let outcome = tokio::select! {
            () = ended.notified() => return,
            r = tokio::time::timeout(timeout, client.check(HealthCheckRequest::default())) => r,
        };
        last = started.elapsed();
        let ok = matches!(outcome, Ok(Ok(_)));
        if !ok {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer in {timeout:?}"),
            };
            tracing::warn!(session = %id, error = %why, "session health check failed");
        }
        if record.take(ok) {
            tracing::warn!(session = %id, "session health check failed twice; closing the session");
            closer.close();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Record;

    #[test]
    fn two_failures_close_unless_five_successes_come_between() {
        let mut r = Record::default();
        assert!(!r.take(false));
        assert!(r.take(false));
        let mut r = Record::default();
        assert!(!r.take(false));
        for _ in 0..4 {
            assert!(!r.take(true));
        }
        assert!(r.take(false), "four successes do not forget a failure");
        let mut r = Record::default();
        assert!(!r.take(false));
        for _ in 0..5 {
            assert!(!r.take(true));
        }
        assert!(!r.take(false), "five do");
        assert!(r.take(false));
    }
}
