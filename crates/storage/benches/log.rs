//! Storage benchmarks: append (1 KiB records, batches of 100) under each fsync policy, with
//! one and several concurrent writers, and sequential reads from the page cache.
//!
//! `cargo bench -p runnel-storage --bench log` (or `scripts/bench-storage.sh`, which also
//! measures the disk with fio in the same run). Data goes to `RUNNEL_BENCH_DIR` (default: a
//! temp dir under `target/`, on the same disk as the build).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use runnel_storage::record::{BatchBuilder, NewRecord};
use runnel_storage::{Compression, FsyncPolicy, Log, LogConfig};

const RECORD_BYTES: usize = 1024;
const RECORDS_PER_BATCH: usize = 100;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("RUNNEL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data"));
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

/// One batch of `records` incompressible-ish 1 KiB records.
fn sample_batch(records: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..records {
        let value: Vec<u8> = (0..RECORD_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        b.push(NewRecord::with_value(Bytes::from(value), 1_700_000_000_000 + i as i64));
    }
    b.build().expect("batch")
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig { segment_bytes: 256 << 20, max_batch_bytes: 2 << 20, fsync, ..LogConfig::default() }
}

/// Bytes each append sample writes: the same burst fio writes (`scripts/bench-storage.sh`),
/// small enough to stay under the kernel's dirty-page thresholds on this machine, so both
/// measure the write path rather than writeback throttling.
const BURST_BYTES: u64 = 1 << 30;

/// Appends a `BURST_BYTES` burst into a fresh log with `writers` threads; returns the time
/// from the first append until the last is done (durable, under a durable policy). With a
/// durable policy each writer waits for its batch before sending the next (one request in
/// flight per writer, as an acks=all producer), so concurrency is what group commit batches.
/// The log is deleted afterwards, untimed; deleting drops its dirty pages unwritten.
fn append_burst(policy: FsyncPolicy, writers: usize, template: &[u8]) -> (Duration, u64) {
    let dir = bench_dir();
    let log = Log::open(dir.path(), config(policy)).expect("open");
    let per_writer = BURST_BYTES / template.len() as u64 / writers as u64;
    let wait = policy == FsyncPolicy::Always;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..writers {
            let log = &log;
            s.spawn(move || {
                let mut buf = template.to_vec();
                for _ in 0..per_writer {
                    let info = log.append(&mut buf, 0).expect("append");
                    if wait {
                        log.wait_durable(info.log_end, Duration::from_secs(60)).expect("durable");
                    }
                }
            });
        }
    });
    if policy != FsyncPolicy::Never {
        let end = log.log_end();
        log.wait_durable(end, Duration::from_secs(60)).expect("durable");
    }
    let elapsed = start.elapsed();
    let fsyncs = log.fsync_count();
    log.delete().expect("delete");
    (elapsed, fsyncs)
}

fn append(c: &mut Criterion) {
    let template = sample_batch(RECORDS_PER_BATCH);
    let mut group = c.benchmark_group("append_1KiB_x100");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let cases: &[(&str, FsyncPolicy, usize)] = &[
        ("never", FsyncPolicy::Never, 1),
        ("interval_100ms", FsyncPolicy::Interval(Duration::from_millis(100)), 1),
        ("always", FsyncPolicy::Always, 1),
        ("always", FsyncPolicy::Always, 4),
        ("always", FsyncPolicy::Always, 8),
        ("always", FsyncPolicy::Always, 16),
    ];
    for &(name, policy, writers) in cases {
        let batches = BURST_BYTES / template.len() as u64 / writers as u64 * writers as u64;
        group.throughput(Throughput::Bytes(batches * template.len() as u64));
        let mut fsyncs = (0, 0);
        group.bench_function(BenchmarkId::new(name, format!("{writers}_writers")), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (t, n) = append_burst(policy, writers, &template);
                    total += t;
                    fsyncs = (fsyncs.0 + n, fsyncs.1 + batches);
                }
                total
            })
        });
        if fsyncs.0 > 0 {
            eprintln!(
                "append {name} {writers} writers: {:.1} batches per fsync",
                fsyncs.1 as f64 / fsyncs.0 as f64
            );
        }
    }
    group.finish();

    // The same records in 1 MiB batches: one write per MiB, as fio's blocks, to separate
    // the engine's own cost from the kernel's per-write cost.
    let big = sample_batch(1000);
    let mut group = c.benchmark_group("append_1KiB_x1000");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let batches = BURST_BYTES / big.len() as u64;
    group.throughput(Throughput::Bytes(batches * big.len() as u64));
    group.bench_function(BenchmarkId::new("never", "1_writers"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| append_burst(FsyncPolicy::Never, 1, &big).0).sum())
    });
    group.finish();
}

fn sequential_read(c: &mut Criterion) {
    let template = sample_batch(RECORDS_PER_BATCH);
    let dir = bench_dir();
    let log = Log::open(dir.path(), config(FsyncPolicy::Never)).expect("open");
    let total: u64 = 1 << 30;
    let mut buf = template.clone();
    while log.size_bytes() < total {
        log.append(&mut buf, 0).expect("append");
    }
    let end = log.log_end();
    let mut group = c.benchmark_group("sequential_read");
    group.sample_size(20).warm_up_time(Duration::from_secs(3)).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Bytes(log.size_bytes()));
    group.bench_function("1GiB_1MiB_reads", |b| {
        let mut out = Vec::with_capacity(2 << 20);
        b.iter(|| {
            let mut offset = 0;
            let mut bytes = 0usize;
            while offset < end {
                let info = log.read_into(offset, 1 << 20, None, &mut out).expect("read");
                bytes += out.len();
                offset = info.next_offset;
            }
            assert!(bytes as u64 >= total);
            bytes
        })
    });
    group.finish();
}

/// The header walk the broker runs to rebuild its idempotent-producer state (at every log
/// open and after a follower truncates): 200,000 one-record batches from the page cache.
fn batch_headers(c: &mut Criterion) {
    let dir = bench_dir();
    let log = Log::open(dir.path(), config(FsyncPolicy::Never)).expect("open");
    let batches = 200_000u64;
    let template = sample_batch(1);
    for _ in 0..batches {
        log.append(&mut template.clone(), 0).expect("append");
    }
    let mut group = c.benchmark_group("batch_headers");
    group.sample_size(10).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(batches));
    group.bench_function("200k_batches", |b| {
        b.iter(|| {
            let n = log.batch_headers(0).expect("walk").filter(|h| h.is_ok()).count();
            assert_eq!(n as u64, batches);
            n
        })
    });
    group.finish();
}

criterion_group!(benches, append, sequential_read, batch_headers);
criterion_main!(benches);
