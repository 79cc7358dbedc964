//! Build progress in BuildKit's plain form: every vertex gets a number, its title when it
//! starts (`#3 [build 2/4] RUN make`), its output lines with the seconds since it started
//! (`#3 1.204 compiling…`), and how it ended (`#3 DONE 2.1s`, `#3 CACHED`, `#3 ERROR …`).

use crate::executor::{OutputSink, Stream};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Where progress lines go.
pub struct Progress {
    next: AtomicUsize,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Progress {
    /// Progress written to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(Progress {
            next: AtomicUsize::new(1),
            out: Mutex::new(out),
        })
    }

    fn write(&self, line: &str) {
        if let Ok(mut o) = self.out.lock() {
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    }

    /// Starts a vertex titled `title`.
    pub fn vertex(self: &Arc<Self>, title: &str) -> Vertex {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.write(&format!("#{n} {title}"));
        Vertex {
            n,
            started: Instant::now(),
            progress: self.clone(),
        }
    }
}

/// One running vertex; also the sink of its step's output.
pub struct Vertex {
    n: usize,
    started: Instant,
    progress: Arc<Progress>,
}

impl Vertex {
    /// A line of information.
    pub fn log(&self, text: &str) {
        self.progress.write(&format!(
            "#{} {:.3} {text}",
            self.n,
            self.started.elapsed().as_secs_f64()
        ));
    }

    /// Finished.
    pub fn done(&self) {
        self.progress.write(&format!(
            "#{} DONE {:.1}s",
            self.n,
            self.started.elapsed().as_secs_f64()
        ));
    }

    /// Answered from the cache.
    pub fn cached(&self) {
        self.progress.write(&format!("#{} CACHED", self.n));
    }

    /// Failed.
    pub fn error(&self, e: &dyn std::fmt::Display) {
        self.progress.write(&format!("#{} ERROR: {e}", self.n));
    }
}

impl OutputSink for Vertex {
    fn line(&self, _stream: Stream, line: &[u8]) {
        self.log(&String::from_utf8_lossy(line));
    }
}
