//! `StatusResponse` increments merged by vertex digest and printed as buildctl's
//! `--progress=plain` prints them: `#N name` when a vertex first appears, its log lines as
//! `#N 0.123 text`, finished tasks (transfers) as `#N transferring context 123 done`, then `#N CACHED`, `#N ERROR: …` or `#N DONE 0.3s`.

use crate::buildkitd::proto::control::{StatusResponse, Vertex};
use std::collections::HashMap;
use std::io::Write;

/// A vertex as the client last saw it, with its output.
#[derive(Debug, Clone, Default)]
pub struct SeenVertex {
    /// The merged vertex.
    pub vertex: Vertex,
    /// Its logs: (stream, bytes), in order.
    pub logs: Vec<(i64, Vec<u8>)>,
}

/// The printer and what it saw.
pub struct Plain {
    out: Box<dyn Write + Send>,
    numbers: HashMap<String, usize>,
    /// Vertices in the order they appeared.
    pub vertices: Vec<SeenVertex>,
}

fn secs(t: &Option<prost_types::Timestamp>) -> Option<f64> {
    t.as_ref()
        .map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

impl Plain {
    /// Prints to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Plain {
            out,
            numbers: HashMap::new(),
            vertices: Vec::new(),
        }
    }

    /// The vertex named `name`, if seen.
    pub fn named(&self, name: &str) -> Option<&SeenVertex> {
        self.vertices.iter().find(|v| v.vertex.name == name)
    }

    fn index(&mut self, digest: &str) -> Option<usize> {
        self.numbers.get(digest).map(|n| n - 1)
    }

    /// Takes one increment.
    pub fn update(&mut self, r: &StatusResponse) {
        for v in &r.vertexes {
            let i = match self.index(&v.digest) {
                Some(i) => i,
                None => {
                    self.vertices.push(SeenVertex {
                        vertex: v.clone(),
                        logs: Vec::new(),
                    });
                    let n = self.vertices.len();
                    self.numbers.insert(v.digest.clone(), n);
                    let _ = writeln!(self.out, "#{n} {}", v.name);
                    n - 1
                }
            };
            let n = i + 1;
            let was_done = self.vertices[i].vertex.completed.is_some();
            self.vertices[i].vertex = v.clone();
            if v.completed.is_some() && !was_done {
                let line = if v.cached {
                    format!("#{n} CACHED")
                } else if !v.error.is_empty() {
                    format!("#{n} ERROR: {}", v.error)
                } else {
                    let took = secs(&v.completed).unwrap_or(0.0) - secs(&v.started).unwrap_or(0.0);
                    format!("#{n} DONE {:.1}s", took.max(0.0))
                };
                let _ = writeln!(self.out, "{line}");
            }
        }
        for st in &r.statuses {
            if let (Some(i), true) = (self.index(&st.vertex), st.completed.is_some()) {
                let _ = writeln!(self.out, "#{} {} {} done", i + 1, st.id, st.current);
            }
        }
        for l in &r.logs {
            let Some(i) = self.index(&l.vertex) else {
                continue;
            };
            let at = secs(&l.timestamp).unwrap_or(0.0)
                - secs(&self.vertices[i].vertex.started).unwrap_or(0.0);
            for line in String::from_utf8_lossy(&l.msg).lines() {
                let _ = writeln!(self.out, "#{} {:.3} {line}", i + 1, at.max(0.0));
            }
            self.vertices[i].logs.push((l.stream, l.msg.clone()));
        }
        let _ = self.out.flush();
    }
}
