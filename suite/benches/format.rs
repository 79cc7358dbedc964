//! Micro-benchmarks of the format hot paths, each next to its baseline in the same run:
//! - TOC parse + index of a 100k-entry TOC (baseline: serde_json parse alone);
//! - chunk decompress + verify of a 4 MiB chunk (baseline: plain decompression of the same
//!   bytes); the printed ratio is throughput(verify) / throughput(plain), the cost of
//!   verification (goal ≥ 0.9);
//! - memory an index of that TOC holds while mounted (baseline: the TOC JSON it was built
//!   from), counted by this binary's allocator.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use stargaze_fs::format::reader::decode_chunk;
use stargaze_fs::format::toc::{Toc, TocEntry};
use stargaze_fs::format::{Chunk, Compression, Index, Limits};
use stargaze_fs::image::sample::sample_bytes;
use stargaze_fs::Digest;
use stargaze_suite::median;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The system allocator, counting the bytes live on the heap.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn big_toc(n: usize) -> Vec<u8> {
    let d = Digest::of(b"x").to_string();
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        if i % 100 == 0 {
            entries.push(TocEntry {
                name: format!("usr/share/d{}/", i / 100),
                kind: "dir".into(),
                mode: 0o755,
                mod_time: "2026-11-25T01:26:08Z".into(),
                ..Default::default()
            });
        } else {
            entries.push(TocEntry {
                name: format!("usr/share/d{}/file-{i}.txt", i / 100),
                kind: "reg".into(),
                size: 1000,
                mode: 0o644,
                mod_time: "2026-11-25T01:26:08Z".into(),
                offset: 1000 + i as i64 * 600,
                digest: d.clone(),
                chunk_digest: d.clone(),
                ..Default::default()
            });
        }
    }
    Toc {
        version: 1,
        entries,
        tar_split_digest: String::new(),
    }
    .to_json()
}

fn chunk_fixture() -> (Vec<u8>, Chunk) {
    let data = sample_bytes(42, 4 << 20, 30);
    let frame = Compression::Gzip.compress(&data, 9).expect("compressing");
    let chunk = Chunk {
        file_offset: 0,
        size: data.len() as u64,
        blob_offset: 0,
        blob_end: frame.len() as u64,
        inner_offset: 0,
        digest: Some(Digest::of(&data)),
        zeros: false,
    };
    (frame, chunk)
}

fn benches(c: &mut Criterion) {
    let json = big_toc(100_000);
    let mut g = c.benchmark_group("toc_100k");
    g.sample_size(10);
    g.bench_function("serde_json_only (baseline)", |b| {
        b.iter(|| serde_json::from_slice::<Toc>(&json).unwrap())
    });
    g.bench_function("parse_and_index", |b| {
        b.iter(|| {
            Index::from_json(&json, Compression::Gzip, u64::MAX / 2, &Limits::default()).unwrap()
        })
    });
    g.finish();

    let (frame, chunk) = chunk_fixture();
    let mut g = c.benchmark_group("chunk_4MiB");
    g.throughput(Throughput::Bytes(chunk.size));
    g.bench_function(BenchmarkId::new("decompress", "plain (baseline)"), |b| {
        b.iter(|| Compression::Gzip.read_range(&frame, 0, chunk.size).unwrap())
    });
    g.bench_function(BenchmarkId::new("decompress", "verify"), |b| {
        b.iter(|| decode_chunk(Compression::Gzip, "f", &chunk, &frame).unwrap())
    });
    g.finish();
}

/// Interleaved side-by-side timing for the printed ratios.
fn ratios() {
    let (frame, chunk) = chunk_fixture();
    let (mut plain, mut verified) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let t = Instant::now();
        Compression::Gzip.read_range(&frame, 0, chunk.size).unwrap();
        plain.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        decode_chunk(Compression::Gzip, "f", &chunk, &frame).unwrap();
        verified.push(t.elapsed().as_secs_f64());
    }
    let mb = chunk.size as f64 / 1e6;
    let (p, v) = (median(plain), median(verified));
    println!(
        "RATIO chunk decompress+verify vs plain decompress: {:.0} MB/s vs {:.0} MB/s = {:.2} (goal >= 0.9)",
        mb / v,
        mb / p,
        p / v
    );
    let json = big_toc(100_000);
    let (mut s, mut i) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        serde_json::from_slice::<Toc>(&json).unwrap();
        s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        Index::from_json(&json, Compression::Gzip, u64::MAX / 2, &Limits::default()).unwrap();
        i.push(t.elapsed().as_secs_f64());
    }
    println!(
        "RATIO TOC 100k entries: parse+index {:.1} ms vs serde_json alone {:.1} ms = {:.2}x",
        median(i.clone()) * 1e3,
        median(s.clone()) * 1e3,
        median(i) / median(s)
    );
    // What a mounted layer keeps: the index without its TOC-order name list.
    let before = LIVE.load(Ordering::Relaxed);
    let mut index =
        Index::from_json(&json, Compression::Gzip, u64::MAX / 2, &Limits::default()).unwrap();
    index.entries = Vec::new();
    let held = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "RATIO TOC 100k entries: mounted index holds {:.1} MB ({} bytes an entry) vs {:.1} MB of TOC JSON = {:.2}",
        held as f64 / 1e6,
        held / 100_000,
        json.len() as f64 / 1e6,
        held as f64 / json.len() as f64
    );
    drop(index);
}

criterion_group!(format_benches, benches);

fn main() {
    format_benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    ratios();
}
