//! Idempotent-producer state of one partition: Kafka's producer state, reduced to what
//! deduplication needs.
//!
//! A producer gets an id and epoch from `InitProducerId` and numbers the records it sends
//! to each partition from 0. Per producer id, [`ProducerStates`] remembers the latest epoch
//! and the sequence and offset ranges of the last [`PRODUCER_BATCHES_KEPT`] batches in the
//! log. The leader asks [`ProducerStates::check`] before an append: a retry of a remembered
//! batch is answered with its original offsets, a gap or an older epoch is refused. After the
//! append, and on followers for every replicated batch, [`ProducerStates::record`] updates
//! the state, so it is a pure function of the log: [`ProducerStates::rebuild`] from the batch
//! headers gives the same state as recording batch by batch. That is why a follower that
//! becomes leader deduplicates retries of batches its predecessor appended.
//!
//! This module is pure: no I/O, no clock, no locks. The partition holds its lock across the
//! check, the append and the record.

use std::collections::{HashMap, VecDeque};

use runnel_storage::BatchHeader;

/// Batches remembered per producer (Kafka's 5: a producer may have up to 5 requests in flight
/// per partition, and any of them may be retried).
pub const PRODUCER_BATCHES_KEPT: usize = 5;

/// Producers remembered per partition. A new one past it evicts the one whose last batch is
/// oldest (by timestamp, then offset), so a flood of producer ids costs each partition at
/// most this many entries (about 200 bytes each). Kafka has no such cap, only expiry.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 2_000;

/// Default of `--producer-id-expiration-ms` (Kafka's `producer.id.expiration.ms`, one day):
/// a producer whose last batch here is older than this is forgotten.
pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: u64 = 86_400_000;

/// The idempotence fields of one batch, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    /// The producer id (>= 0).
    pub producer_id: i64,
    /// The producer epoch (>= 0).
    pub epoch: i16,
    /// The sequence number of the first record (>= 0).
    pub first_seq: i32,
    /// The sequence number of the last record (wrapped past `i32::MAX` to 0).
    pub last_seq: i32,
}

/// A batch header whose idempotence fields are not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    /// The batch names a producer id but a negative epoch or sequence.
    #[error("producer {producer_id}: epoch {epoch} and base sequence {base_sequence} must not be negative")]
    Invalid {
        /// The producer id.
        producer_id: i64,
        /// The epoch in the header.
        epoch: i16,
        /// The base sequence in the header.
        base_sequence: i32,
    },
    /// The batch's epoch is older than the producer's latest one here (a zombie producer).
    #[error(
        "producer {producer_id}: epoch {epoch} is older than its current epoch {current} in this partition"
    )]
    FencedEpoch {
        /// The producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The latest epoch seen.
        current: i16,
    },
    /// The batch's first sequence does not follow the producer's last batch here.
    #[error(
        "producer {producer_id} epoch {epoch}: sequence {first_seq} where {expected} was expected \
         (the sequence numbers of the producer's batches to a partition must be consecutive)"
    )]
    OutOfOrder {
        /// The producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The batch's first sequence.
        first_seq: i32,
        /// The sequence that would have been accepted.
        expected: i32,
    },
}

/// Adds `delta` to `seq`, wrapping from `i32::MAX` to 0 as Kafka producers do.
pub fn add_sequence(seq: i32, delta: i32) -> i32 {
    debug_assert!(seq >= 0 && delta >= 0);
    if seq > i32::MAX - delta { delta - (i32::MAX - seq) - 1 } else { seq + delta }
}

impl ProducerBatch {
    /// The idempotence fields of `header`: `None` for a non-idempotent batch (producer id
    /// -1, or any negative id), an error when an idempotent one carries a negative epoch or
    /// sequence.
    pub fn of(header: &BatchHeader) -> Result<Option<ProducerBatch>, ProducerError> {
        if header.producer_id < 0 {
            return Ok(None);
        }
        if header.producer_epoch < 0 || header.base_sequence < 0 || header.last_offset_delta < 0 {
            return Err(ProducerError::Invalid {
                producer_id: header.producer_id,
                epoch: header.producer_epoch,
                base_sequence: header.base_sequence,
            });
        }
        Ok(Some(ProducerBatch {
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            first_seq: header.base_sequence,
            last_seq: add_sequence(header.base_sequence, header.last_offset_delta),
        }))
    }
}

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntry {
    /// Sequence of its first record.
    pub first_seq: i32,
    /// Sequence of its last record.
    pub last_seq: i32,
    /// Offset of its first record.
    pub first_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
}

/// What one producer id has in this partition.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: i16,
    /// Oldest first, at most [`PRODUCER_BATCHES_KEPT`].
    batches: VecDeque<BatchEntry>,
    /// The max timestamp of its last batch (Kafka's `lastTimestamp`), for expiry and eviction.
    last_timestamp: i64,
}

impl ProducerEntry {
    /// Eviction order: the oldest last batch first, by timestamp, then offset.
    fn age(&self) -> (i64, u64) {
        (self.last_timestamp, self.batches.back().map_or(0, |b| b.last_offset))
    }
}

/// What the leader does with an idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it (then [`ProducerStates::record`] it).
    Append,
    /// A retry of a batch in the log: append nothing, answer these offsets.
    Duplicate {
        /// The original's first offset.
        first_offset: u64,
        /// The original's last offset.
        last_offset: u64,
    },
}

/// The idempotent producers of one partition. See the module documentation.
///
/// At most [`PRODUCERS_PER_PARTITION_MAX`] producers are kept, and [`ProducerStates::expire`]
/// forgets those silent for the expiration time; the state is rebuilt from the log (only
/// producers with a batch still in the log) at every open. A producer that is not known
/// (never seen, expired, evicted, or its batches deleted by retention) may start at any
/// sequence, as in Kafka since KIP-360: its state may have been lost, not its sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    /// No producers.
    pub fn new() -> Self {
        ProducerStates::default()
    }

    /// The state of a log whose batch headers, oldest first, are `headers`.
    pub fn rebuild(headers: impl IntoIterator<Item = BatchHeader>) -> Self {
        let mut states = ProducerStates::new();
        for header in headers {
            states.record_header(&header);
        }
        states
    }

    /// How many producers are known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The latest epoch and the remembered batches (oldest first) of `producer_id`.
    pub fn producer(&self, producer_id: i64) -> Option<(i16, Vec<BatchEntry>)> {
        self.producers.get(&producer_id).map(|e| (e.epoch, e.batches.iter().copied().collect()))
    }

    /// Decides what the leader does with `batch`, without changing anything.
    pub fn check(&self, batch: &ProducerBatch) -> Result<Verdict, ProducerError> {
        let out_of_order = |expected| ProducerError::OutOfOrder {
            producer_id: batch.producer_id,
            epoch: batch.epoch,
            first_seq: batch.first_seq,
            expected,
        };
        let Some(entry) = self.producers.get(&batch.producer_id) else {
            return Ok(Verdict::Append);
        };
        if batch.epoch < entry.epoch {
            return Err(ProducerError::FencedEpoch {
                producer_id: batch.producer_id,
                epoch: batch.epoch,
                current: entry.epoch,
            });
        }
        if batch.epoch > entry.epoch {
            // A new epoch starts its sequences over.
            return if batch.first_seq == 0 { Ok(Verdict::Append) } else { Err(out_of_order(0)) };
        }
        if let Some(original) =
            entry.batches.iter().find(|b| b.first_seq == batch.first_seq && b.last_seq == batch.last_seq)
        {
            return Ok(Verdict::Duplicate {
                first_offset: original.first_offset,
                last_offset: original.last_offset,
            });
        }
        let expected = entry.batches.back().map_or(0, |last| add_sequence(last.last_seq, 1));
        if batch.first_seq == expected { Ok(Verdict::Append) } else { Err(out_of_order(expected)) }
    }

    /// Records `batch`, now in the log at `[first_offset, last_offset]` with `max_timestamp`.
    /// A newer epoch replaces what was known of the producer; a batch of an older epoch
    /// (which a leader never appends) is ignored, so replaying any log gives the leader's
    /// state. A new producer past [`PRODUCERS_PER_PARTITION_MAX`] evicts the oldest.
    pub fn record(&mut self, batch: &ProducerBatch, first_offset: u64, last_offset: u64, max_timestamp: i64) {
        if !self.producers.contains_key(&batch.producer_id)
            && self.producers.len() >= PRODUCERS_PER_PARTITION_MAX
        {
            let oldest = self.producers.iter().min_by_key(|(id, e)| (e.age(), **id)).map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.producers.remove(&oldest);
            }
        }
        let entry = self.producers.entry(batch.producer_id).or_insert_with(|| ProducerEntry {
            epoch: batch.epoch,
            batches: VecDeque::new(),
            last_timestamp: max_timestamp,
        });
        if batch.epoch < entry.epoch {
            return;
        }
        entry.last_timestamp = entry.last_timestamp.max(max_timestamp);
        if batch.epoch > entry.epoch {
            entry.epoch = batch.epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(BatchEntry {
            first_seq: batch.first_seq,
            last_seq: batch.last_seq,
            first_offset,
            last_offset,
        });
        while entry.batches.len() > PRODUCER_BATCHES_KEPT {
            entry.batches.pop_front();
        }
    }

    /// Records a batch from its header (a replicated batch, or one met in a rebuild).
    /// Non-idempotent batches and unusable headers change nothing.
    pub fn record_header(&mut self, header: &BatchHeader) {
        if let (Ok(Some(batch)), Ok(first)) = (ProducerBatch::of(header), u64::try_from(header.base_offset)) {
            let last = u64::try_from(header.last_offset()).unwrap_or(first);
            self.record(&batch, first, last, header.max_timestamp);
        }
    }

    /// Forgets every producer whose last batch's timestamp is `expiration_ms` or more before
    /// `now_ms` (Kafka's `producer.id.expiration.ms`); how many were forgotten.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: u64) -> usize {
        let before = self.producers.len();
        let expiration = i64::try_from(expiration_ms).unwrap_or(i64::MAX);
        self.producers.retain(|_, e| now_ms.saturating_sub(e.last_timestamp) < expiration);
        before - self.producers.len()
    }
}

#[cfg(test)]
mod tests {
    use runnel_storage::batch::{BatchHeader, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE};

    use super::*;

    fn batch(producer_id: i64, epoch: i16, first_seq: i32, records: i32) -> ProducerBatch {
        ProducerBatch { producer_id, epoch, first_seq, last_seq: add_sequence(first_seq, records - 1) }
    }

    /// Checks `b` as a leader would and, if it is to be appended, records it at `*next`.
    fn produce(s: &mut ProducerStates, b: ProducerBatch, next: &mut u64) -> Result<Verdict, ProducerError> {
        let verdict = s.check(&b)?;
        if verdict == Verdict::Append {
            let span = (i64::from(b.last_seq) - i64::from(b.first_seq)).rem_euclid(i64::from(i32::MAX) + 1);
            let records = span as u64 + 1;
            s.record(&b, *next, *next + records - 1, 0);
            *next += records;
        }
        Ok(verdict)
    }

    fn header(
        base_offset: i64,
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        records: i32,
    ) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence,
            records_count: records,
        }
    }

    #[test]
    fn sequences_wrap_from_max_to_zero() {
        assert_eq!(add_sequence(0, 4), 4);
        assert_eq!(add_sequence(i32::MAX, 1), 0);
        assert_eq!(add_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(add_sequence(i32::MAX - 2, 2), i32::MAX);
    }

    #[test]
    fn each_of_the_last_five_batches_is_answered_as_a_duplicate_with_its_offsets() {
        let mut s = ProducerStates::new();
        let mut next = 0;
        let mut sent = Vec::new();
        for i in 0..7 {
            let b = batch(1, 0, i * 3, 3);
            assert_eq!(produce(&mut s, b, &mut next), Ok(Verdict::Append));
            sent.push((b, next - 3, next - 1));
        }
        for (b, first, last) in &sent[2..] {
            assert_eq!(
                s.check(b),
                Ok(Verdict::Duplicate { first_offset: *first, last_offset: *last }),
                "a retry of {b:?}"
            );
        }
        let (epoch, kept) = s.producer(1).unwrap();
        assert_eq!((epoch, kept.len()), (0, PRODUCER_BATCHES_KEPT));
    }

    #[test]
    fn the_sixth_batch_back_is_forgotten_and_its_retry_is_out_of_order() {
        let mut s = ProducerStates::new();
        let mut next = 0;
        for i in 0..6 {
            produce(&mut s, batch(1, 0, i, 1), &mut next).unwrap();
        }
        assert_eq!(
            s.check(&batch(1, 0, 0, 1)),
            Err(ProducerError::OutOfOrder { producer_id: 1, epoch: 0, first_seq: 0, expected: 6 })
        );
        assert!(matches!(s.check(&batch(1, 0, 1, 1)), Ok(Verdict::Duplicate { first_offset: 1, .. })));
    }

    #[test]
    fn a_gap_or_an_overlap_is_out_of_order_and_changes_nothing() {
        let mut s = ProducerStates::new();
        let mut next = 0;
        produce(&mut s, batch(1, 0, 0, 2), &mut next).unwrap();
        let before = s.clone();
        let gap = s.check(&batch(1, 0, 3, 1));
        assert_eq!(
            gap,
            Err(ProducerError::OutOfOrder { producer_id: 1, epoch: 0, first_seq: 3, expected: 2 })
        );
        // Same first sequence, different length: not a retry of the same batch.
        assert!(matches!(s.check(&batch(1, 0, 0, 3)), Err(ProducerError::OutOfOrder { expected: 2, .. })));
        assert_eq!(s, before);
        assert_eq!(produce(&mut s, batch(1, 0, 2, 1), &mut next), Ok(Verdict::Append));
    }

    #[test]
    fn a_new_epoch_must_start_at_sequence_zero_and_an_unknown_producer_anywhere() {
        let mut s = ProducerStates::new();
        let mut next = 0;
        // Its state may have been lost (expired, evicted, deleted with old segments), not its
        // sequence: Kafka accepts it since KIP-360.
        assert_eq!(s.check(&batch(9, 0, 5, 1)), Ok(Verdict::Append));
        produce(&mut s, batch(9, 0, 0, 5), &mut next).unwrap();
        assert!(matches!(s.check(&batch(9, 1, 5, 1)), Err(ProducerError::OutOfOrder { expected: 0, .. })));
        assert_eq!(produce(&mut s, batch(9, 1, 0, 1), &mut next), Ok(Verdict::Append));
        assert_eq!(s.producer(9).unwrap().0, 1);
        assert_eq!(s.producer(9).unwrap().1.len(), 1, "the old epoch's batches are forgotten");
        // Another producer id is independent.
        assert_eq!(produce(&mut s, batch(10, 0, 0, 1), &mut next), Ok(Verdict::Append));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn producers_silent_for_the_expiration_time_are_forgotten() {
        let mut s = ProducerStates::new();
        s.record(&batch(1, 0, 0, 1), 0, 0, 1_000);
        s.record(&batch(2, 0, 0, 1), 1, 1, 5_000);
        // A later batch of producer 1 with an older timestamp does not make it look older.
        s.record(&batch(1, 0, 1, 1), 2, 2, 900);
        assert_eq!(s.expire(10_999, 10_000), 0, "producer 1 is 9,999 ms old");
        assert_eq!(s.expire(11_000, 10_000), 1, "producer 1 is 10,000 ms old");
        assert!(s.producer(1).is_none() && s.producer(2).is_some());
        // Forgotten, it may go on at its next sequence, and is known again.
        assert_eq!(s.check(&batch(1, 0, 2, 1)), Ok(Verdict::Append));
        assert_eq!(s.expire(i64::MIN, u64::MAX), 0, "no overflow at the extremes");
        assert_eq!(s.expire(i64::MAX, 0), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn a_flood_of_producer_ids_keeps_the_newest_up_to_the_cap() {
        let mut s = ProducerStates::new();
        let flood = PRODUCERS_PER_PARTITION_MAX as i64 + 500;
        for id in 0..flood {
            // Timestamps out of order: ids 0, 2, 4, ... are the oldest half.
            let ts = if id % 2 == 0 { id } else { 1_000_000 + id };
            s.record(&batch(id, 0, 0, 1), id as u64, id as u64, ts);
            assert!(s.len() <= PRODUCERS_PER_PARTITION_MAX);
        }
        assert_eq!(s.len(), PRODUCERS_PER_PARTITION_MAX);
        // The 500 evicted are the oldest by timestamp: even ids 0..998.
        for id in (0..1_000).step_by(2) {
            assert!(s.producer(id).is_none(), "producer {id} was kept");
        }
        assert!(s.producer(1_000).is_some() && s.producer(1).is_some() && s.producer(flood - 1).is_some());
        // A known producer's next batch evicts no one.
        s.record(&batch(1, 0, 1, 1), flood as u64, flood as u64, 2_000_000);
        assert_eq!(s.len(), PRODUCERS_PER_PARTITION_MAX);
        assert!(s.producer(1_000).is_some());
    }

    #[test]
    fn an_older_epoch_is_fenced_even_for_a_retry() {
        let mut s = ProducerStates::new();
        let mut next = 0;
        produce(&mut s, batch(4, 0, 0, 1), &mut next).unwrap();
        produce(&mut s, batch(4, 2, 0, 1), &mut next).unwrap();
        for stale in [batch(4, 0, 0, 1), batch(4, 1, 0, 1), batch(4, 1, 7, 1)] {
            assert_eq!(
                s.check(&stale),
                Err(ProducerError::FencedEpoch { producer_id: 4, epoch: stale.epoch, current: 2 })
            );
        }
    }

    #[test]
    fn sequences_continue_across_the_wrap() {
        let mut s = ProducerStates::new();
        let mut next = 0;
        // A producer already at the end of the sequence space (the state learned it from the log).
        s.record(&batch(3, 0, i32::MAX - 2, 2), 0, 1, 0);
        next += 2;
        assert!(
            matches!(s.check(&batch(3, 0, 0, 1)), Err(ProducerError::OutOfOrder { expected, .. }) if expected == i32::MAX)
        );
        let across = batch(3, 0, i32::MAX, 3);
        assert_eq!(across.last_seq, 1);
        assert_eq!(produce(&mut s, across, &mut next), Ok(Verdict::Append));
        assert_eq!(s.check(&across), Ok(Verdict::Duplicate { first_offset: 2, last_offset: 4 }));
        assert_eq!(produce(&mut s, batch(3, 0, 2, 1), &mut next), Ok(Verdict::Append));
    }

    #[test]
    fn rebuilding_from_headers_equals_recording_as_the_leader_did() {
        let mut leader = ProducerStates::new();
        let mut next = 0u64;
        let mut log = Vec::new();
        let plain = |log: &mut Vec<BatchHeader>, next: &mut u64| {
            log.push(header(*next as i64, NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE, 2));
            *next += 2;
        };
        let mut seqs: HashMap<(i64, i16), i32> = HashMap::new();
        for step in 0..60u32 {
            let pid = i64::from(step % 4);
            let epoch = if step > 40 && pid == 1 { 1 } else { 0 };
            let records = (step % 3 + 1) as i32;
            let seq = *seqs.entry((pid, epoch)).or_insert(0);
            let b = batch(pid, epoch, seq, records);
            let base = next;
            if produce(&mut leader, b, &mut next) == Ok(Verdict::Append) {
                log.push(header(base as i64, pid, epoch, seq, records));
                seqs.insert((pid, epoch), add_sequence(b.last_seq, 1));
            }
            if step % 7 == 0 {
                plain(&mut log, &mut next);
            }
        }
        let rebuilt = ProducerStates::rebuild(log.iter().copied());
        assert_eq!(rebuilt, leader);
        assert_eq!(rebuilt.producer(1).unwrap().0, 1);

        // A prefix (a truncated log) rebuilds to the state the leader had at that point.
        let mut replay = ProducerStates::new();
        for h in &log[..log.len() / 2] {
            replay.record_header(h);
        }
        assert_eq!(ProducerStates::rebuild(log[..log.len() / 2].iter().copied()), replay);
    }

    #[test]
    fn unusable_headers_are_refused_or_ignored_never_a_panic() {
        assert_eq!(
            ProducerBatch::of(&header(0, NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE, 1)),
            Ok(None)
        );
        assert_eq!(ProducerBatch::of(&header(0, -7, 3, 3, 1)), Ok(None));
        assert!(ProducerBatch::of(&header(0, 1, -1, 0, 1)).is_err());
        assert!(ProducerBatch::of(&header(0, 1, 0, -5, 1)).is_err());
        let mut s = ProducerStates::new();
        s.record_header(&header(0, 1, -1, 0, 1));
        s.record_header(&header(-3, 1, 0, 0, 1));
        assert!(s.is_empty());
        let huge = ProducerBatch::of(&header(0, i64::MAX, i16::MAX, i32::MAX, i32::MAX)).unwrap().unwrap();
        assert_eq!(huge.last_seq, i32::MAX - 2, "MAX wraps to 0 after one step");
        s.record(&huge, 0, u64::MAX, 0);
        assert_eq!(s.check(&huge), Ok(Verdict::Duplicate { first_offset: 0, last_offset: u64::MAX }));
    }
}
