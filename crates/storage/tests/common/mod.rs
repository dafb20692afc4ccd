//! Helpers shared by the storage integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use runnel_storage::record::{BatchBuilder, DecodeLimits, NewRecord, decode_batch};
use runnel_storage::{BatchHeader, Clock, Compression, FsyncPolicy, LogConfig, batch::BatchIter};

/// A clock the test moves by hand.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> Arc<Self> {
        Arc::new(ManualClock(AtomicI64::new(start_ms)))
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A batch of records with the given values, all stamped `timestamp_ms`.
pub fn batch_of(values: &[&str], timestamp_ms: i64) -> Vec<u8> {
    batch_with(values.iter().map(|v| (v.to_string(), timestamp_ms)).collect(), Compression::None)
}

/// A batch of `(value, timestamp)` records.
pub fn batch_with(records: Vec<(String, i64)>, compression: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression);
    for (v, ts) in records {
        b.push(NewRecord::with_value(Bytes::from(v), ts));
    }
    b.build().expect("valid batch")
}

/// Decodes every record of a buffer of batches into `(offset, value)`.
pub fn values(buf: &[u8]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for item in BatchIter::new(buf, 1 << 30) {
        let (_, bytes) = item.expect("valid batch");
        let (_, records) = decode_batch(bytes, &DecodeLimits::default()).expect("records decode");
        for r in records {
            let v = r.value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
            out.push((r.offset as u64, v));
        }
    }
    out
}

/// Headers of every batch in a buffer.
pub fn headers(buf: &[u8]) -> Vec<BatchHeader> {
    BatchIter::new(buf, 1 << 30).map(|r| r.expect("valid batch").0).collect()
}

/// A config with small segments and a dense index so tests exercise rolls and index lookups.
pub fn small_config(policy: FsyncPolicy) -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        segment_ms: None,
        retention_ms: None,
        retention_bytes: None,
        index_interval_bytes: 256,
        max_batch_bytes: 64 * 1024,
        fsync: policy,
        preallocate_bytes: 1024,
    }
}

/// Reads the whole log from its start, segment by segment.
pub fn read_all(log: &runnel_storage::Log) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut offset = log.log_start();
    loop {
        let (buf, info) = log.read(offset, 1 << 20).expect("read");
        if info.first_offset.is_none() {
            break;
        }
        out.extend(values(&buf).into_iter().filter(|(o, _)| *o >= offset));
        offset = info.next_offset;
    }
    out
}
