//! Prometheus metrics of the stargz snapshotter on an optional address (`GET /metrics`, text
//! format): per layer the compressed bytes fetched, requests, bytes served, cache hits and
//! misses, verification failures; range-request latency as a histogram over all layers; and
//! lazy mounts, fallbacks to a normal pull, remounts and mounted layers.

use crate::snapshot::stargz::Stargz;
use stargaze_fs::fetcher::CounterSnapshot;
use stargaze_fs::fetcher::{LatencySnapshot, BUCKETS};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Picks one counter of a layer's snapshot.
type CounterOf = fn(&CounterSnapshot) -> u64;

/// The metrics page.
pub fn render(s: &Stargz) -> String {
    let mut out = String::new();
    let layers = s.layers();
    let per_layer: [(&str, &str, CounterOf); 7] = [
        (
            "stargaze_layer_fetched_bytes_total",
            "Compressed bytes fetched from registries (metadata included).",
            |c| c.bytes_fetched,
        ),
        (
            "stargaze_layer_requests_total",
            "Range requests sent (metadata included).",
            |c| c.requests,
        ),
        (
            "stargaze_layer_served_bytes_total",
            "Bytes handed to readers.",
            |c| c.bytes_served,
        ),
        (
            "stargaze_layer_cache_hits_total",
            "Chunks found in a cache.",
            |c| c.cache_hits,
        ),
        (
            "stargaze_layer_cache_misses_total",
            "Chunks fetched from the registry.",
            |c| c.cache_misses,
        ),
        (
            "stargaze_layer_verify_failures_total",
            "Chunks that failed verification on arrival.",
            |c| c.verify_failures,
        ),
        (
            "stargaze_layer_whole_blob_answers_total",
            "Range requests the registry answered with the whole blob.",
            |c| c.whole_blob_answers,
        ),
    ];
    let counters: Vec<_> = layers.iter().map(|l| (l.digest(), l.counters())).collect();
    for (name, help, get) in per_layer {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (d, c) in &counters {
            let _ = writeln!(out, "{name}{{layer=\"{d}\"}} {}", get(c));
        }
    }
    let mut lat = LatencySnapshot::default();
    for l in &layers {
        lat.add(&l.latency());
    }
    let h = "stargaze_range_request_seconds";
    let _ = writeln!(
        out,
        "# HELP {h} Latency of chunk range requests.\n# TYPE {h} histogram"
    );
    for (i, b) in BUCKETS.iter().enumerate() {
        let _ = writeln!(
            out,
            "{h}_bucket{{le=\"{b}\"}} {}",
            lat.cumulative.get(i).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(out, "{h}_bucket{{le=\"+Inf\"}} {}", lat.count);
    let _ = writeln!(out, "{h}_sum {}\n{h}_count {}", lat.sum_secs, lat.count);
    let c = s.counters();
    for (name, help, v) in [
        (
            "stargaze_lazy_mounts_total",
            "Layers mounted lazily.",
            c.lazy_mounts.load(Ordering::Relaxed),
        ),
        (
            "stargaze_fallbacks_total",
            "Remote prepares that fell back to a normal pull.",
            c.fallbacks.load(Ordering::Relaxed),
        ),
        (
            "stargaze_remounts_total",
            "Remote snapshots mounted again after a restart or a lost mount.",
            c.remounts.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let g = "stargaze_mounted_layers";
    let _ = writeln!(
        out,
        "# HELP {g} Lazy layers mounted now.\n# TYPE {g} gauge\n{g} {}",
        layers.len()
    );
    out
}

/// Serves `GET /metrics` on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: std::net::SocketAddr,
    s: Arc<Stargz>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    tokio::pin!(shutdown);
    loop {
        let (mut conn, _) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            a = listener.accept() => a?,
        };
        let s = s.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            // Headers only; a client that sends nothing is dropped after 5 s.
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while n < buf.len() {
                    let k = conn.read(&mut buf[n..]).await?;
                    if k == 0 {
                        break;
                    }
                    n += k;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                std::io::Result::Ok(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics ") {
                ("200 OK", render(&s))
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}
