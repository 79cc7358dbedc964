//! Criterion micro-benchmarks of chunk-cache hits, each beside its baseline:
//! memory hit (LRU lookup + Arc clone) vs a plain `HashMap` lookup + Arc clone; disk hit of an
//! entry this process has not vouched for (read + re-verify SHA-256; the file is touched
//! before each read so its stamp changes) vs a plain `std::fs::read` of the same file; and a
//! reader's 128 KiB range from a vouched entry (stamp checks + pread) vs a plain open + pread.
//! Prints the ratios.
//!
//! Run: `cargo bench --bench cache`

use bytes::Bytes;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use stargaze_fs::cache::{DiskCache, MemoryCache, VerifiedChunk};
use stargaze_fs::Digest;
use stargaze_suite::median;
use std::collections::HashMap;
use std::time::Instant;

const SIZES: [usize; 2] = [64 << 10, 4 << 20];
/// A FUSE read.
const RANGE: usize = 128 << 10;

/// Changes the file's ctime, so the cache no longer vouches for it and hashes it again.
fn touch(path: &std::path::Path) {
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.set_modified(std::time::SystemTime::now()).expect("touch");
}

/// What a reader's range costs without the cache: open + pread.
fn pread(path: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, offset))
        .expect("pread");
    buf
}

fn chunk(n: usize, seed: u8) -> VerifiedChunk {
    let data: Bytes = (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect::<Vec<_>>()
        .into();
    VerifiedChunk::verify(Digest::of(&data), data).expect("verified")
}

struct Fixture {
    memory: MemoryCache,
    map: HashMap<Digest, Bytes>,
    disk: DiskCache,
    _dir: tempfile::TempDir,
    chunks: Vec<VerifiedChunk>,
}

fn fixture(n: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("temp");
    let disk = DiskCache::open(dir.path(), 1 << 30).expect("disk cache");
    let memory = MemoryCache::new(1 << 30);
    let mut map = HashMap::new();
    let chunks: Vec<VerifiedChunk> = (0..16).map(|s| chunk(n, s)).collect();
    for c in &chunks {
        memory.put(c);
        disk.put(c).expect("put");
        map.insert(*c.digest(), c.data().clone());
    }
    Fixture {
        memory,
        map,
        disk,
        _dir: dir,
        chunks,
    }
}

fn benches(c: &mut Criterion) {
    for n in SIZES {
        let f = fixture(n);
        let d = *f.chunks[3].digest();
        let path = f.disk.path_of(&d);
        let mut g = c.benchmark_group(format!("cache_hit_{}KiB", n >> 10));
        g.throughput(Throughput::Bytes(n as u64));
        g.bench_function(BenchmarkId::new("memory", "hashmap (baseline)"), |b| {
            b.iter(|| f.map.get(&d).cloned().expect("hit"))
        });
        g.bench_function(BenchmarkId::new("memory", "lru"), |b| {
            b.iter(|| f.memory.get(&d).expect("hit"))
        });
        g.bench_function(BenchmarkId::new("disk", "fs::read (baseline)"), |b| {
            b.iter(|| std::fs::read(&path).expect("read"))
        });
        g.bench_function(BenchmarkId::new("disk", "touch+read+verify"), |b| {
            b.iter(|| {
                touch(&path);
                f.disk.get(&d, n as u64).expect("hit")
            })
        });
        g.finish();
        let len = RANGE.min(n / 2);
        let mut g = c.benchmark_group(format!("range_{}KiB_of_{}KiB", len >> 10, n >> 10));
        g.throughput(Throughput::Bytes(len as u64));
        f.disk.get(&d, n as u64).expect("vouched");
        g.bench_function(BenchmarkId::new("disk", "open+pread (baseline)"), |b| {
            b.iter(|| pread(&path, (n - len) as u64, len))
        });
        g.bench_function(BenchmarkId::new("disk", "vouched range"), |b| {
            b.iter(|| f.disk.read_range(&d, (n - len) as u64, len).expect("hit"))
        });
        g.finish();
    }
}

fn ratios() {
    for n in SIZES {
        let f = fixture(n);
        let d = *f.chunks[5].digest();
        let path = f.disk.path_of(&d);
        let reps = if n > 1 << 20 { 50 } else { 2000 };
        let time = |f: &dyn Fn()| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        };
        let len = RANGE.min(n / 2);
        let (mut mb, mut ml, mut db, mut dv) = (vec![], vec![], vec![], vec![]);
        let (mut rb, mut rv) = (vec![], vec![]);
        for _ in 0..7 {
            mb.push(time(&|| drop(f.map.get(&d).cloned())));
            ml.push(time(&|| drop(f.memory.get(&d))));
            db.push(time(&|| drop(std::fs::read(&path))));
            dv.push(time(&|| {
                touch(&path);
                drop(f.disk.get(&d, n as u64))
            }));
            f.disk.get(&d, n as u64).expect("vouched");
            rb.push(time(&|| drop(pread(&path, (n - len) as u64, len))));
            rv.push(time(&|| {
                drop(f.disk.read_range(&d, (n - len) as u64, len).expect("hit"))
            }));
        }
        let (mb, ml, db, dv) = (median(mb), median(ml), median(db), median(dv));
        let (rb, rv) = (median(rb), median(rv));
        println!(
            "RATIO cache hit {} KiB: memory LRU {:.0} ns vs HashMap {:.0} ns = {:.2}x; disk touch+read+verify {:.1} us vs fs::read {:.1} us = {:.2}x; vouched {} KiB range {:.1} us vs open+pread {:.1} us = {:.2}x",
            n >> 10,
            ml * 1e9,
            mb * 1e9,
            ml / mb,
            dv * 1e6,
            db * 1e6,
            dv / db,
            len >> 10,
            rv * 1e6,
            rb * 1e6,
            rv / rb
        );
    }
}

criterion_group!(cache_benches, benches);

fn main() {
    cache_benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    ratios();
}
