//! Build progress, as BuildKit reports it: a build is a set of vertices, each with a stable
//! digest (sha256 of its name, numbered when a name repeats in one build), its name as
//! BuildKit prints it (`[build 2/4] RUN make`, `[internal] load build context`), when it
//! started and completed, whether it came from the cache or failed, and its output as logs
//! on stream 1 (stdout) or 2 (stderr).
//!
//! Two sinks: the plain text of `stargaze build` (every vertex gets a number, `#3 [build
//! 2/4] RUN make`, its lines with the seconds since it started, `#3 DONE 2.1s`, `#3
//! CACHED`, `#3 ERROR …`), and structured [`Event`]s for an [`EventSink`] (the daemon turns
//! them into `StatusResponse` increments).

use crate::executor::{OutputSink, Stream};
use stargaze_fs::Digest;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// A vertex as it stands (sent again whenever it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexState {
    /// Its digest, `sha256:<hex>`.
    pub digest: String,
    /// Its name.
    pub name: String,
    /// When it started.
    pub started: Option<SystemTime>,
    /// When it ended.
    pub completed: Option<SystemTime>,
    /// Answered from the cache.
    pub cached: bool,
    /// Why it failed.
    pub error: Option<String>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A vertex started or changed.
    Vertex(VertexState),
    /// Output of a vertex.
    Log {
        /// The vertex's digest.
        vertex: String,
        /// 1 stdout, 2 stderr.
        stream: i64,
        /// The bytes (a line with its newline).
        data: Vec<u8>,
        /// When.
        at: SystemTime,
    },
    /// A task inside a vertex (a transfer) finished: its name and amount.
    Status {
        /// The vertex's digest.
        vertex: String,
        /// The task's name (`transferring context`).
        id: String,
        /// Its amount (bytes).
        current: i64,
        /// When it started.
        started: SystemTime,
        /// When it ended.
        completed: SystemTime,
    },
}

/// Receives structured progress.
pub trait EventSink: Send + Sync {
    /// One event, in order.
    fn event(&self, e: Event);
}

/// Where progress goes.
pub struct Progress {
    next: AtomicUsize,
    out: Option<Mutex<Box<dyn Write + Send>>>,
    events: Option<Arc<dyn EventSink>>,
    names: Mutex<HashMap<String, usize>>,
}

impl Progress {
    /// Plain progress written to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Arc<Self> {
        Self::with(Some(out), None)
    }

    /// Structured progress to `events` only.
    pub fn events(events: Arc<dyn EventSink>) -> Arc<Self> {
        Self::with(None, Some(events))
    }

    /// Plain text to `out` and events to `events`, either optional.
    pub fn with(
        out: Option<Box<dyn Write + Send>>,
        events: Option<Arc<dyn EventSink>>,
    ) -> Arc<Self> {
        Arc::new(Progress {
            next: AtomicUsize::new(1),
            out: out.map(Mutex::new),
            events,
            names: Mutex::new(HashMap::new()),
        })
    }

    fn write(&self, line: &str) {
        if let Some(Ok(mut o)) = self.out.as_ref().map(|o| o.lock()) {
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    }

    fn emit(&self, e: Event) {
        if let Some(s) = &self.events {
            s.event(e);
        }
    }

    /// The digest of a vertex named `name`: the name's, or for its n-th repetition in this
    /// build the name's with `#n`.
    fn digest(&self, name: &str) -> String {
        let n = match self.names.lock() {
            Ok(mut m) => {
                let c = m.entry(name.to_string()).or_insert(0);
                *c += 1;
                *c
            }
            Err(_) => 1,
        };
        if n == 1 {
            Digest::of(name.as_bytes()).to_string()
        } else {
            Digest::of(format!("{name}#{n}").as_bytes()).to_string()
        }
    }

    /// Starts a vertex named `title`.
    pub fn vertex(self: &Arc<Self>, title: &str) -> Vertex {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.write(&format!("#{n} {title}"));
        let state = VertexState {
            digest: self.digest(title),
            name: title.to_string(),
            started: Some(SystemTime::now()),
            completed: None,
            cached: false,
            error: None,
        };
        self.emit(Event::Vertex(state.clone()));
        Vertex {
            n,
            started: Instant::now(),
            state,
            progress: self.clone(),
        }
    }
}

/// One running vertex; also the sink of its step's output.
pub struct Vertex {
    n: usize,
    started: Instant,
    state: VertexState,
    progress: Arc<Progress>,
}

impl Vertex {
    /// Its digest.
    pub fn digest(&self) -> &str {
        &self.state.digest
    }

    fn output(&self, stream: i64, text: &str) {
        self.progress.write(&format!(
            "#{} {:.3} {text}",
            self.n,
            self.started.elapsed().as_secs_f64()
        ));
        let mut data = text.as_bytes().to_vec();
        data.push(b'\n');
        self.progress.emit(Event::Log {
            vertex: self.state.digest.clone(),
            stream,
            data,
            at: SystemTime::now(),
        });
    }

    /// A line of information (stdout).
    pub fn log(&self, text: &str) {
        self.output(1, text);
    }

    /// A finished task of this vertex named `id` (a transfer of `current` bytes since
    /// `started`): a status for the events, an information line for the plain text.
    pub fn task(&self, id: &str, current: i64, started: SystemTime) {
        self.progress.write(&format!(
            "#{} {:.3} {id}: {current} bytes done",
            self.n,
            self.started.elapsed().as_secs_f64()
        ));
        self.progress.emit(Event::Status {
            vertex: self.state.digest.clone(),
            id: id.to_string(),
            current,
            started,
            completed: SystemTime::now(),
        });
    }

    fn end(&self, cached: bool, error: Option<String>) {
        let mut s = self.state.clone();
        s.completed = Some(SystemTime::now());
        s.cached = cached;
        s.error = error;
        self.progress.emit(Event::Vertex(s));
    }

    /// Finished.
    pub fn done(&self) {
        self.progress.write(&format!(
            "#{} DONE {:.1}s",
            self.n,
            self.started.elapsed().as_secs_f64()
        ));
        self.end(false, None);
    }

    /// Answered from the cache.
    pub fn cached(&self) {
        self.progress.write(&format!("#{} CACHED", self.n));
        self.end(true, None);
    }

    /// Failed.
    pub fn error(&self, e: &dyn std::fmt::Display) {
        self.progress.write(&format!("#{} ERROR: {e}", self.n));
        self.end(false, Some(e.to_string()));
    }
}

impl OutputSink for Vertex {
    fn line(&self, stream: Stream, line: &[u8]) {
        let n = match stream {
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        };
        self.output(n, &String::from_utf8_lossy(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Event>>);
    impl EventSink for Collect {
        fn event(&self, e: Event) {
            self.0.lock().unwrap().push(e);
        }
    }

    #[test]
    fn events_follow_the_vertices_with_stable_digests() {
        let c = Arc::new(Collect::default());
        let p = Progress::events(c.clone());
        let a = p.vertex("[a 1/2] RUN x");
        a.line(Stream::Stderr, b"oops");
        a.error(&"exit 1");
        let b = p.vertex("[a 1/2] RUN x");
        b.cached();
        let ev = c.0.lock().unwrap().clone();
        assert_eq!(ev.len(), 5);
        let Event::Vertex(v0) = &ev[0] else { panic!() };
        assert_eq!(v0.digest, Digest::of(b"[a 1/2] RUN x").to_string());
        assert!(v0.started.is_some() && v0.completed.is_none());
        let Event::Log { stream, data, .. } = &ev[1] else {
            panic!()
        };
        assert_eq!((*stream, data.as_slice()), (2, &b"oops\n"[..]));
        let Event::Vertex(v2) = &ev[2] else { panic!() };
        assert_eq!(v2.error.as_deref(), Some("exit 1"));
        let Event::Vertex(v4) = &ev[4] else { panic!() };
        assert!(v4.cached);
        assert_ne!(v4.digest, v0.digest, "a repeated name gets its own digest");
    }
}
