//! One open batch per partition, cut when full (bytes or records) or when it has lingered
//! long enough. Pure: the caller passes the time, so tests need no clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runnel_storage::record::MAX_VARLONG_LEN;
use runnel_storage::{BatchBuilder, Compression, NewRecord};
use tokio::time::Instant;

use crate::partitioner::{Sticky, partition_for_key};

/// Upper bound of what a record adds to a batch beyond its key, value and headers' bytes:
/// the length, attributes, timestamp and offset deltas, and the key, value and header count
/// lengths, as varints.
const RECORD_OVERHEAD_MAX: usize = 1 + 6 * MAX_VARLONG_LEN;

/// At most the bytes `record` adds to an uncompressed batch.
pub(crate) fn record_size_max(record: &NewRecord) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len) + 2 * MAX_VARLONG_LEN)
        .sum();
    RECORD_OVERHEAD_MAX
        + record.key.as_ref().map_or(0, Bytes::len)
        + record.value.as_ref().map_or(0, Bytes::len)
        + headers
}

/// How many records with `key_len`-byte keys (`None`: no key) and `value_len`-byte values,
/// no headers, one batch of at most `bytes_max` bytes and `records_max` records holds
/// under [`Accumulator::push`]'s rule (the record that would not fit starts the next batch).
pub(crate) fn records_per_batch(
    bytes_max: usize,
    records_max: usize,
    key_len: Option<usize>,
    value_len: usize,
) -> usize {
    let record = || NewRecord {
        key: key_len.map(|n| Bytes::from(vec![b'k'; n])),
        value: Some(Bytes::from(vec![b'v'; value_len])),
        headers: Vec::new(),
        timestamp_ms: 0,
    };
    let size = record_size_max(&record());
    let mut builder = BatchBuilder::new(Compression::None);
    loop {
        builder.push(record());
        if is_full(&builder, size, bytes_max, records_max) {
            return builder.len();
        }
    }
}

/// Whether a batch is full: it holds `records_max` records, or another record of `next_size`
/// bytes (at most) would take it past `bytes_max`.
fn is_full(builder: &BatchBuilder, next_size: usize, bytes_max: usize, records_max: usize) -> bool {
    builder.len() >= records_max || builder.estimated_size().saturating_add(next_size) > bytes_max
}

/// Where a batch is cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    /// Largest batch, in bytes (one bigger record still makes a batch of its own).
    pub(crate) bytes_max: usize,
    /// Most records per batch.
    pub(crate) records_max: usize,
    /// How long a batch may wait for more records once it has its first.
    pub(crate) linger: Duration,
    /// The batches' compression.
    pub(crate) compression: Compression,
}

/// A partition of a topic.
pub(crate) type Tp = (Arc<str>, u32);

/// A cut batch: its records (the bytes are built when it is first sent, once its sequence is
/// known) and what each record's sender waits on.
#[derive(Debug)]
pub(crate) struct Cut<T> {
    pub(crate) tp: Tp,
    pub(crate) builder: BatchBuilder,
    /// One per record, in record order.
    pub(crate) waiters: Vec<T>,
    /// Buffer bytes the batch holds (given back when it completes).
    pub(crate) bytes: usize,
    /// When its first record was added.
    pub(crate) opened: Instant,
}

#[derive(Debug)]
struct Open<T> {
    builder: BatchBuilder,
    waiters: Vec<T>,
    bytes: usize,
    opened: Instant,
}

/// Groups records into one open batch per partition. `T` is what a record's sender waits on.
#[derive(Debug)]
pub(crate) struct Accumulator<T> {
    limits: BatchLimits,
    /// Per topic: where its keyless records go now.
    sticky: HashMap<Arc<str>, Sticky>,
    open: BTreeMap<Tp, Open<T>>,
}

impl<T> Accumulator<T> {
    pub(crate) fn new(limits: BatchLimits) -> Self {
        assert!(limits.bytes_max > 0 && limits.records_max > 0);
        Accumulator { limits, sticky: HashMap::new(), open: BTreeMap::new() }
    }

    /// The partition a record goes to: `fixed` if given, else by key (murmur2), else sticky.
    /// `sticky_start` seeds a topic's sticky partitioner the first time it is seen.
    pub(crate) fn partition_of(
        &mut self,
        topic: &Arc<str>,
        partitions: u32,
        fixed: Option<u32>,
        key: Option<&[u8]>,
        sticky_start: u32,
    ) -> u32 {
        assert!(partitions > 0);
        match (fixed, key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => {
                let sticky =
                    self.sticky.entry(topic.clone()).or_insert_with(|| Sticky::new(partitions, sticky_start));
                if sticky.partitions() != partitions {
                    // The topic grew: start over on its new shape.
                    *sticky = Sticky::new(partitions, sticky_start);
                }
                sticky.partition()
            }
        }
    }

    /// Adds a record to `tp`'s open batch; answers the batches this cut (none, or one or two:
    /// the partition's batch cut because the record did not fit, and its new batch if the
    /// record filled it).
    pub(crate) fn push(
        &mut self,
        tp: Tp,
        record: NewRecord,
        waiter: T,
        bytes: usize,
        now: Instant,
    ) -> Vec<Cut<T>> {
        let mut ready = Vec::new();
        let size = record_size_max(&record);
        if let Some(open) = self.open.get(&tp)
            && !open.builder.is_empty()
            && open.builder.estimated_size().saturating_add(size) > self.limits.bytes_max
        {
            ready.extend(self.cut(&tp));
        }
        let compression = self.limits.compression;
        let open = self.open.entry(tp.clone()).or_insert_with(|| Open {
            builder: BatchBuilder::new(compression),
            waiters: Vec::new(),
            bytes: 0,
            opened: now,
        });
        open.builder.push(record);
        open.waiters.push(waiter);
        open.bytes += bytes;
        // Full when another record of this one's size would not fit: sent now rather than
        // when the next record arrives or the linger runs out.
        if is_full(&open.builder, size, self.limits.bytes_max, self.limits.records_max) {
            ready.extend(self.cut(&tp));
        }
        ready
    }

    /// When the oldest open batch has lingered enough.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.open.values().map(|o| o.opened + self.limits.linger).min()
    }

    /// Cuts every batch that has lingered enough at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Cut<T>> {
        let linger = self.limits.linger;
        let due: Vec<Tp> =
            self.open.iter().filter(|(_, o)| o.opened + linger <= now).map(|(tp, _)| tp.clone()).collect();
        due.iter().filter_map(|tp| self.cut(tp)).collect()
    }

    /// Cuts every open batch.
    pub(crate) fn flush(&mut self) -> Vec<Cut<T>> {
        let open: Vec<Tp> = self.open.keys().cloned().collect();
        open.iter().filter_map(|tp| self.cut(tp)).collect()
    }

    fn cut(&mut self, tp: &Tp) -> Option<Cut<T>> {
        let open = self.open.remove(tp)?;
        if let Some(sticky) = self.sticky.get_mut(&tp.0) {
            sticky.batch_cut(tp.1);
        }
        Some(Cut {
            tp: tp.clone(),
            builder: open.builder,
            waiters: open.waiters,
            bytes: open.bytes,
            opened: open.opened,
        })
    }
}

#[cfg(test)]
mod tests {
    use runnel_storage::decode_batch;

    use super::*;

    fn limits(bytes_max: usize, records_max: usize) -> BatchLimits {
        BatchLimits {
            bytes_max,
            records_max,
            linger: Duration::from_millis(5),
            compression: Compression::None,
        }
    }

    fn rec(key: Option<&str>, value: &str) -> NewRecord {
        NewRecord {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000,
        }
    }

    fn tp(p: u32) -> Tp {
        (Arc::from("t"), p)
    }

    fn values(cut: Cut<u32>) -> Vec<String> {
        let bytes = cut.builder.build().unwrap();
        let (_, records) = decode_batch(&bytes, &Default::default()).unwrap();
        records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect()
    }

    #[test]
    fn a_batch_that_cannot_take_another_record_like_its_last_is_cut_at_once() {
        let t = Instant::now();
        for (bytes_max, key, value) in
            [(65_536, None, 1024), (16_384, Some(7), 100), (1100, None, 1024), (50, None, 100)]
        {
            let n = records_per_batch(bytes_max, 100_000, key, value);
            assert!(n >= 1);
            let mut acc = Accumulator::new(limits(bytes_max, 100_000));
            let record = || NewRecord {
                key: key.map(|k| Bytes::from(vec![b'k'; k])),
                value: Some(Bytes::from(vec![b'v'; value])),
                headers: Vec::new(),
                timestamp_ms: 1_700_000_000_000,
            };
            for i in 0..n - 1 {
                assert!(acc.push(tp(0), record(), i, 1, t).is_empty(), "cut early at record {i} of {n}");
            }
            let cut = acc.push(tp(0), record(), n - 1, 1, t);
            assert_eq!(cut.len(), 1, "the {n}th record fills the batch ({bytes_max} bytes)");
            assert_eq!(cut[0].waiters.len(), n);
            let size = cut[0].builder.estimated_size();
            let built = cut.into_iter().next().unwrap().builder.build().unwrap();
            assert!(
                built.len() <= bytes_max || n == 1,
                "{} bytes in a batch of at most {bytes_max}",
                built.len()
            );
            assert_eq!(built.len(), size);
            assert!(acc.flush().is_empty());
        }
    }

    #[test]
    fn batches_are_cut_by_count_and_keep_order() {
        let t = Instant::now();
        let mut acc = Accumulator::new(limits(1 << 20, 3));
        let mut ready = Vec::new();
        for i in 0..7 {
            ready.extend(acc.push(tp(0), rec(None, &i.to_string()), i, 1, t));
        }
        ready.extend(acc.flush());
        let waiters: Vec<Vec<u32>> = ready.iter().map(|c| c.waiters.clone()).collect();
        assert_eq!(waiters, [vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        let got: Vec<Vec<String>> = ready.into_iter().map(values).collect();
        assert_eq!(got, [vec!["0", "1", "2"], vec!["3", "4", "5"], vec!["6"]]);
        assert!(acc.flush().is_empty());
    }

    #[test]
    fn batches_are_cut_by_bytes_and_never_exceed_the_limit() {
        let t = Instant::now();
        let bytes_max = 300;
        let mut acc = Accumulator::new(limits(bytes_max, 1000));
        let mut ready = Vec::new();
        for i in 0..50 {
            ready.extend(acc.push(tp(0), rec(None, &format!("value-{i:04}")), i, 1, t));
        }
        ready.extend(acc.flush());
        assert!(ready.len() > 2);
        let built: Vec<Vec<u8>> = ready.into_iter().map(|c| c.builder.build().unwrap()).collect();
        assert!(
            built.iter().all(|b| b.len() <= bytes_max),
            "{:?}",
            built.iter().map(Vec::len).collect::<Vec<_>>()
        );
        // A record bigger than the limit is a batch of its own.
        let big = "x".repeat(bytes_max * 2);
        let mut acc = Accumulator::new(limits(bytes_max, 1000));
        assert!(acc.push(tp(0), rec(None, "small"), 0, 1, t).is_empty());
        let cut = acc.push(tp(0), rec(None, &big), 1, 1, t);
        assert_eq!(cut.iter().map(|c| c.waiters.len()).collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn batches_linger_then_are_due() {
        let t = Instant::now();
        let mut acc = Accumulator::new(limits(1 << 20, 1000));
        assert_eq!(acc.next_due(), None);
        assert!(acc.push(tp(1), rec(Some("k"), "a"), 0, 1, t).is_empty());
        assert_eq!(acc.next_due(), Some(t + Duration::from_millis(5)));
        assert!(acc.due(t + Duration::from_millis(4)).is_empty());
        let due = acc.due(t + Duration::from_millis(5));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].bytes, 1);
        assert_eq!(acc.next_due(), None);
    }

    #[test]
    fn keyed_records_follow_murmur2_and_keyless_ones_stick_per_batch() {
        let t = Instant::now();
        let topic: Arc<str> = Arc::from("t");
        let mut acc = Accumulator::new(limits(1 << 20, 2));
        for key in ["a", "b", "user-7", ""] {
            // Stable: the same key always lands in the same partition.
            for _ in 0..3 {
                assert_eq!(
                    acc.partition_of(&topic, 3, None, Some(key.as_bytes()), 0),
                    partition_for_key(key.as_bytes(), 3)
                );
            }
        }
        // Keyless: partition 1 until its batch (2 records) is cut, then 2, then 0.
        let mut order = Vec::new();
        for i in 0..6 {
            let p = acc.partition_of(&topic, 3, None, None, 1);
            for c in acc.push((topic.clone(), p), rec(None, &i.to_string()), i, 1, t) {
                order.push((c.tp.1, c.waiters));
            }
        }
        assert_eq!(order, [(1, vec![0, 1]), (2, vec![2, 3]), (0, vec![4, 5])]);
        // An explicit partition wins over keys.
        assert_eq!(acc.partition_of(&topic, 3, Some(2), Some(b"a"), 0), 2);
    }
}
