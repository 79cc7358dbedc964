//! On-demand reads of every lazy layer in this process, for background fetch to yield to.
//!
//! One layer's quiet is not the link's: in a multi-layer image the base layer is often idle
//! while the upper ones are read, and a background fetch started on the quiet layer takes
//! the link from the reads that a starting program waits on (measured on a three-layer image:
//! twice the bytes before the first output, a second slower). So a background fetch waits
//! until no layer of the process has an on-demand read in flight, nor had one for its idle
//! time. The layers of a process share one link, whichever images they belong to.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Milliseconds after [`epoch`] when the last on-demand read ended.
static LAST_END_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// An on-demand read in progress; its end is recorded when dropped.
#[must_use = "the read counts as in progress only while the guard lives"]
pub struct OnDemand(());

impl Drop for OnDemand {
    fn drop(&mut self) {
        LAST_END_MS.fetch_max(now_ms(), Ordering::SeqCst);
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks an on-demand read as started.
pub fn on_demand() -> OnDemand {
    // The epoch is fixed before the first read ends, so "quiet" is never measured from a
    // later origin than a recorded end.
    let _ = epoch();
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    OnDemand(())
}

/// How long no on-demand read has been in flight in this process (`None`: one is now).
/// Before any read, the time since the first call here.
pub fn quiet_for() -> Option<Duration> {
    if IN_FLIGHT.load(Ordering::SeqCst) > 0 {
        return None;
    }
    let last = LAST_END_MS.load(Ordering::SeqCst);
    Some(Duration::from_millis(now_ms().saturating_sub(last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_in_flight_anywhere_is_not_quiet_and_its_end_restarts_the_clock() {
        let read = on_demand();
        assert_eq!(quiet_for(), None);
        std::thread::sleep(Duration::from_millis(30));
        drop(read);
        let q = quiet_for().expect("nothing in flight");
        assert!(q < Duration::from_millis(30), "{q:?}");
        std::thread::sleep(Duration::from_millis(20));
        assert!(quiet_for().expect("quiet") >= Duration::from_millis(20));
    }
}
