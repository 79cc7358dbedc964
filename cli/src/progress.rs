//! Progress lines on stderr for long work: at most one line every half second, so a script
//! reading stdout is never disturbed and a person sees that work goes on.

use std::time::{Duration, Instant};

/// Rate-limited progress printer.
pub struct Progress {
    label: String,
    last: Instant,
    start: Instant,
}

impl Progress {
    /// A printer whose lines start with `label`.
    pub fn new(label: &str) -> Self {
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            last: now,
            start: now,
        }
    }

    /// Prints `msg` if half a second passed since the last line.
    pub fn tick(&mut self, msg: impl FnOnce() -> String) {
        if self.last.elapsed() >= Duration::from_millis(500) {
            self.last = Instant::now();
            eprintln!(
                "{}: {} ({:.1}s)",
                self.label,
                msg(),
                self.start.elapsed().as_secs_f64()
            );
        }
    }

    /// Seconds since the printer was made.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
