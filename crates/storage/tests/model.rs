//! Property test of the partition log against an in-memory model.
//!
//! Random sequences of appends (as leader and as follower), reads, truncations, rolls,
//! retention passes, clock moves, timestamp lookups, flushes and close/reopen cycles run
//! against a real [`Log`] in a temp directory and against [`Model`], which simulates the
//! segments exactly (their boundaries follow from `segment.bytes`, `segment.ms` and the batch
//! sizes), so offsets, segment counts, sizes, retention outcomes, read results and the
//! leader-epoch cache can all be compared after every step.
//!
//! The run is deterministic: the seed is fixed unless `RUNNEL_MODEL_SEED` is set, and the
//! number of cases can be changed with `RUNNEL_MODEL_CASES`. A failure prints the seed and
//! the shrunk case (config and operations).
//!
//! Below the property test are focused tests for problems it (or a look at the code it
//! exercises) turned up: the interval sync thread's clock arithmetic, and the effect of
//! lowering `index.interval.bytes` or `max.message.bytes` between runs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{ManualClock, batch_with, headers, read_all, values};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use runnel_storage::batch::{set_base_offset, set_partition_leader_epoch};
use runnel_storage::{Compression, EpochEntry, FsyncPolicy, Log, LogConfig, LogError};

const DEFAULT_SEED: u64 = 0x5eed_f10c;
const DEFAULT_CASES: u32 = 128;
const MAX_OPS: usize = 60;
const START_MS: i64 = 1_000_000_000;

type TestResult<T = ()> = Result<T, TestCaseError>;

// ---------------------------------------------------------------------------------------
// Coverage: counts of interesting events over the whole run, so the test fails loudly if
// the generators stop reaching them.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Event {
    RollBySize,
    RollByTime,
    ForcedRoll,
    RetentionRoll,
    DeletedByTime,
    DeletedBySize,
    TruncateFully,
    TruncateInside,
    TruncateToSegmentBase,
    ReopenMultiSegment,
    ReadMultiBatch,
    ReadSealedSegment,
    ReadOutOfRange,
    ReadBoundedEmpty,
    TimeLookupHit,
    TimeLookupMiss,
    Misaligned,
}

const EVENT_LIST: [Event; 17] = [
    Event::RollBySize,
    Event::RollByTime,
    Event::ForcedRoll,
    Event::RetentionRoll,
    Event::DeletedByTime,
    Event::DeletedBySize,
    Event::TruncateFully,
    Event::TruncateInside,
    Event::TruncateToSegmentBase,
    Event::ReopenMultiSegment,
    Event::ReadMultiBatch,
    Event::ReadSealedSegment,
    Event::ReadOutOfRange,
    Event::ReadBoundedEmpty,
    Event::TimeLookupHit,
    Event::TimeLookupMiss,
    Event::Misaligned,
];
const EVENTS: usize = EVENT_LIST.len();
static COVERAGE: [AtomicU64; EVENTS] = [const { AtomicU64::new(0) }; EVENTS];

fn note(e: Event) {
    COVERAGE[e as usize].fetch_add(1, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Rec {
    value: String,
    /// The record's timestamp is the clock minus this, so timestamps are not monotonic.
    jitter: u8,
}

#[derive(Debug, Clone)]
enum Op {
    /// Appends one batch as leader, after moving the clock by `tick` ms.
    Append {
        recs: Vec<Rec>,
        codec: u8,
        bump_epoch: bool,
        tick: u16,
    },
    /// Appends batches as follower (`append_replicated`); `misaligned` ones start one past the
    /// log end and must be refused without changing anything.
    Replicate {
        batches: Vec<Vec<Rec>>,
        misaligned: bool,
        bump_epoch: bool,
        tick: u16,
    },
    /// Reads at an offset picked around `[log_start, log_end]`, optionally bounded.
    Read {
        at: u16,
        size: ReadSize,
        upper: Option<u16>,
    },
    /// `truncate_to` an offset picked around `[log_start, log_end]`.
    Truncate {
        at: u16,
    },
    ForceRoll,
    /// Moves the clock, then enforces retention.
    Retention {
        advance: Advance,
    },
    Advance(Advance),
    /// `offset_for_timestamp` near the timestamp of a record picked by `pick`.
    TimeLookup {
        pick: u16,
    },
    /// `flush` (or `wait_durable` for the log end) and check the durable offset caught up.
    Durable {
        flush: bool,
    },
    /// Closes the log and opens it again on the same directory with the same clock, with
    /// `index.interval.bytes` changed when `reindex` is set (sealed segments keep the indexes
    /// they were built with).
    Reopen {
        reindex: Option<u16>,
    },
}

/// A read's `max_bytes`.
#[derive(Debug, Clone)]
enum ReadSize {
    Raw(u16),
    /// Exactly the bytes of the first `batches` batches from the one read (at least one),
    /// plus `delta`: probes the boundary of what fits.
    Fit {
        batches: u8,
        delta: i8,
    },
}

/// How far the clock moves before a retention pass.
#[derive(Debug, Clone)]
enum Advance {
    Ms(u32),
    /// To where the newest record of a segment picked by `seg` is exactly `retention.ms` old,
    /// plus `delta` (the clock never moves back).
    ToExpiry {
        seg: u8,
        delta: i8,
    },
    /// To where the active segment is exactly `segment.ms` old, plus `delta`.
    ToRollTime {
        delta: i8,
    },
}

fn rec() -> impl Strategy<Value = Rec> {
    ("[a-z0-9]{0,120}", 0u8..100).prop_map(|(value, jitter)| Rec { value, jitter })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (prop::collection::vec(rec(), 1..=8), 0u8..5, prop::bool::weighted(0.1), tick())
            .prop_map(|(recs, codec, bump_epoch, tick)| Op::Append { recs, codec, bump_epoch, tick }),
        5 => (
            prop::collection::vec(prop::collection::vec(rec(), 1..=4), 1..=3),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.1),
            tick(),
        )
            .prop_map(|(batches, misaligned, bump_epoch, tick)| Op::Replicate {
                batches,
                misaligned,
                bump_epoch,
                tick
            }),
        20 => (any::<u16>(), read_size(), prop::option::weighted(0.3, any::<u16>()))
            .prop_map(|(at, size, upper)| Op::Read { at, size, upper }),
        3 => any::<u16>().prop_map(|at| Op::Truncate { at }),
        4 => Just(Op::ForceRoll),
        6 => advance(12_000).prop_map(|advance| Op::Retention { advance }),
        3 => advance(5_000).prop_map(Op::Advance),
        5 => any::<u16>().prop_map(|pick| Op::TimeLookup { pick }),
        2 => any::<bool>().prop_map(|flush| Op::Durable { flush }),
        4 => prop::option::weighted(0.3, any::<u16>()).prop_map(|reindex| Op::Reopen { reindex }),
    ]
}

fn advance(max_ms: u32) -> impl Strategy<Value = Advance> {
    prop_oneof![
        4 => (0..max_ms).prop_map(Advance::Ms),
        1 => (any::<u8>(), -1i8..=1).prop_map(|(seg, delta)| Advance::ToExpiry { seg, delta }),
        1 => (-1i8..=1).prop_map(|delta| Advance::ToRollTime { delta }),
    ]
}

/// Clock movement before an append: often none, so boundaries set up before are hit exactly.
fn tick() -> impl Strategy<Value = u16> {
    prop_oneof![1 => Just(0u16), 2 => 0u16..300]
}

fn read_size() -> impl Strategy<Value = ReadSize> {
    prop_oneof![
        2 => (0u16..3000).prop_map(ReadSize::Raw),
        1 => (1u8..5, -1i8..=1).prop_map(|(batches, delta)| ReadSize::Fit { batches, delta }),
    ]
}

fn config() -> impl Strategy<Value = LogConfig> {
    (
        1024u64..=4096,
        prop_oneof![4 => 64u64..=256, 1 => 257u64..=4096],
        prop::option::weighted(0.25, 500u64..5_000),
        prop::option::weighted(0.5, 2_000u64..20_000),
        prop::option::weighted(0.4, 1_000u64..6_000),
        // The largest generated batch is about 1.2 KB.
        prop_oneof![Just(64 * 1024), Just(2048)],
        prop_oneof![
            7 => Just(FsyncPolicy::Never),
            2 => Just(FsyncPolicy::Always),
            1 => (1u64..5).prop_map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms))),
        ],
    )
        .prop_map(
            |(
                segment_bytes,
                index_interval,
                segment_ms,
                retention_ms,
                retention_bytes,
                max_batch_bytes,
                fsync,
            )| {
                LogConfig {
                    segment_bytes,
                    segment_ms,
                    retention_ms,
                    retention_bytes,
                    index_interval_bytes: index_interval.min(segment_bytes),
                    max_batch_bytes,
                    fsync,
                    // Off, or in chunks smaller or larger than a segment, by case.
                    preallocate_bytes: (segment_bytes % 3) * 1500,
                }
            },
        )
}

fn codec(n: u8) -> Compression {
    Compression::ALL[usize::from(n) % Compression::ALL.len()]
}

/// An offset in `[lo - margin, hi + margin]` chosen by `seed`.
fn pick(seed: u16, lo: u64, hi: u64, margin: u64) -> u64 {
    let lo = lo.saturating_sub(margin);
    let hi = hi + margin;
    lo + u64::from(seed) % (hi - lo + 1)
}

// ---------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct MBatch {
    base: u64,
    /// `(value, timestamp)` of each record.
    recs: Vec<(String, i64)>,
    /// Bytes the batch occupies on disk.
    len: u64,
    epoch: i32,
}

impl MBatch {
    fn next(&self) -> u64 {
        self.base + self.recs.len() as u64
    }
    fn max_ts(&self) -> i64 {
        self.recs.iter().map(|r| r.1).max().expect("batches are not empty")
    }
}

#[derive(Debug, Clone)]
struct MSeg {
    base: u64,
    batches: Vec<MBatch>,
    /// When the segment's age for `segment.ms` starts.
    rolling_base: Option<i64>,
}

impl MSeg {
    fn empty(base: u64) -> Self {
        MSeg { base, batches: Vec::new(), rolling_base: None }
    }
    fn size(&self) -> u64 {
        self.batches.iter().map(|b| b.len).sum()
    }
    fn max_ts(&self) -> Option<i64> {
        self.batches.iter().map(MBatch::max_ts).max()
    }
    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// What a read is expected to return.
#[derive(Debug)]
struct ExpectedRead {
    first_offset: Option<u64>,
    next_offset: u64,
    batches: Vec<MBatch>,
}

#[derive(Debug)]
struct Model {
    cfg: LogConfig,
    /// Never empty; the last one is the active segment.
    segs: Vec<MSeg>,
    log_end: u64,
    epochs: Vec<EpochEntry>,
}

impl Model {
    fn new(cfg: LogConfig) -> Self {
        Model { cfg, segs: vec![MSeg::empty(0)], log_end: 0, epochs: Vec::new() }
    }

    fn log_start(&self) -> u64 {
        self.segs[0].base
    }

    fn active(&self) -> &MSeg {
        self.segs.last().expect("a log always has an active segment")
    }

    fn size(&self) -> u64 {
        self.segs.iter().map(MSeg::size).sum()
    }

    fn batches(&self) -> impl Iterator<Item = &MBatch> {
        self.segs.iter().flat_map(|s| s.batches.iter())
    }

    /// Every retained `(offset, value, timestamp)`, in offset order.
    fn records(&self) -> Vec<(u64, String, i64)> {
        self.batches()
            .flat_map(|b| {
                b.recs.iter().enumerate().map(move |(i, (v, ts))| (b.base + i as u64, v.clone(), *ts))
            })
            .collect()
    }

    fn roll(&mut self) {
        self.segs.push(MSeg::empty(self.log_end));
    }

    /// Why the active segment must roll before a batch of `incoming` bytes, if it must.
    fn should_roll(&self, incoming: u64, now: i64) -> Option<Event> {
        let a = self.active();
        if a.is_empty() {
            return None;
        }
        if a.size() + incoming > self.cfg.segment_bytes {
            return Some(Event::RollBySize);
        }
        match (self.cfg.segment_ms, a.rolling_base) {
            (Some(ms), Some(base)) if now.saturating_sub(base) >= ms as i64 => Some(Event::RollByTime),
            _ => None,
        }
    }

    fn write_batch(&mut self, batch: MBatch, now: i64) {
        assert_eq!(batch.base, self.log_end, "model: batch must start at the log end");
        if let Some(why) = self.should_roll(batch.len, now) {
            note(why);
            self.roll();
        }
        self.epoch_assign(batch.epoch, self.log_end);
        self.log_end = batch.next();
        let a = self.segs.last_mut().expect("active");
        if a.is_empty() {
            a.rolling_base = Some(now);
        }
        a.batches.push(batch);
    }

    fn truncate_to(&mut self, offset: u64) -> u64 {
        if offset >= self.log_end {
            return self.log_end;
        }
        if offset <= self.log_start() {
            note(Event::TruncateFully);
            self.segs = vec![MSeg::empty(offset)];
            self.log_end = offset;
            self.epochs.clear();
            return offset;
        }
        let si = self.segs.iter().rposition(|s| s.base <= offset).expect("offset >= log_start");
        self.segs.truncate(si + 1);
        let seg = &mut self.segs[si];
        let bi = seg.batches.iter().position(|b| b.next() > offset).expect("offset < log_end");
        let new_end = seg.batches[bi].base;
        note(if bi == 0 { Event::TruncateToSegmentBase } else { Event::TruncateInside });
        seg.batches.truncate(bi);
        // The segment's state is rebuilt from what remains.
        if let Some(first) = seg.batches.first() {
            seg.rolling_base = Some(first.max_ts());
        }
        self.log_end = new_end;
        self.epoch_truncate_from_end(new_end);
        new_end
    }

    /// Returns `(deleted_segments, deleted_bytes, log_start)`.
    fn enforce_retention(&mut self, now: i64) -> (usize, u64, u64) {
        let retention_ms = self.cfg.retention_ms;
        let expired = |s: &MSeg| match (retention_ms, s.max_ts()) {
            (Some(ms), Some(ts)) => ts < now.saturating_sub(ms as i64),
            _ => false,
        };
        if !self.active().is_empty()
            && expired(self.active())
            && self.segs.iter().all(|s| s.is_empty() || expired(s))
        {
            note(Event::RetentionRoll);
            self.roll();
        }
        let mut total = self.size();
        let (mut n, mut bytes) = (0, 0);
        for seg in &self.segs[..self.segs.len() - 1] {
            let by_time = expired(seg);
            let by_size =
                self.cfg.retention_bytes.is_some_and(|limit| total.saturating_sub(seg.size()) >= limit);
            if !(by_time || by_size) {
                break;
            }
            note(if by_time { Event::DeletedByTime } else { Event::DeletedBySize });
            total -= seg.size();
            bytes += seg.size();
            n += 1;
        }
        if n > 0 {
            self.segs.drain(..n);
            self.epoch_truncate_from_start(self.log_start());
        }
        (n, bytes, self.log_start())
    }

    fn reopen(&mut self) {
        if self.segs.len() > 1 {
            note(Event::ReopenMultiSegment);
        }
        for seg in &mut self.segs {
            seg.rolling_base = seg.batches.first().map(MBatch::max_ts);
        }
        self.epoch_truncate_from_end(self.log_end);
        self.epoch_truncate_from_start(self.log_start());
    }

    /// `None` when the offset is out of range.
    fn read(&self, offset: u64, max_bytes: usize, upper: Option<u64>) -> Option<ExpectedRead> {
        if offset < self.log_start() || offset > self.log_end {
            note(Event::ReadOutOfRange);
            return None;
        }
        let nothing = Some(ExpectedRead { first_offset: None, next_offset: offset, batches: Vec::new() });
        let end = upper.map_or(self.log_end, |u| u.min(self.log_end));
        if offset >= end {
            return nothing;
        }
        let seg = self.segs.iter().rev().find(|s| s.base <= offset).expect("offset >= log_start");
        let i = seg.batches.iter().position(|b| b.next() > offset).expect("offset < log_end");
        let rest = &seg.batches[i..];
        let first = &rest[0];
        if first.next() > end {
            note(Event::ReadBoundedEmpty);
            return nothing;
        }
        let remaining: u64 = rest.iter().map(|b| b.len).sum();
        let want = (max_bytes as u64).max(first.len).min(remaining);
        let mut used = 0;
        let mut batches = Vec::new();
        for b in rest {
            if used + b.len > want || b.next() > end {
                break;
            }
            used += b.len;
            batches.push(b.clone());
        }
        let next_offset = batches.last().expect("at least the first batch").next();
        if batches.len() > 1 {
            note(Event::ReadMultiBatch);
        }
        if seg.base != self.active().base {
            note(Event::ReadSealedSegment);
        }
        Some(ExpectedRead { first_offset: Some(first.base), next_offset, batches })
    }

    /// Bytes of the `n` batches starting with the one holding `offset`, within its segment
    /// (0 if there is none).
    fn bytes_of_batches_from(&self, offset: u64, n: usize) -> u64 {
        let Some(seg) = self.segs.iter().rev().find(|s| s.base <= offset) else { return 0 };
        let Some(i) = seg.batches.iter().position(|b| b.next() > offset) else { return 0 };
        seg.batches[i..].iter().take(n).map(|b| b.len).sum()
    }

    /// The first record, in offset order, stamped at or after `timestamp`.
    fn offset_for_timestamp(&self, timestamp: i64) -> Option<(u64, i64)> {
        let found = self.records().into_iter().find(|r| r.2 >= timestamp).map(|r| (r.0, r.2));
        note(if found.is_some() { Event::TimeLookupHit } else { Event::TimeLookupMiss });
        found
    }

    fn epoch_assign(&mut self, epoch: i32, start_offset: u64) {
        if epoch < 0 {
            return;
        }
        if let Some(last) = self.epochs.last()
            && !(epoch > last.epoch && start_offset >= last.start_offset)
        {
            return;
        }
        self.epochs.push(EpochEntry { epoch, start_offset });
    }

    fn epoch_truncate_from_end(&mut self, end: u64) {
        self.epochs.retain(|e| e.start_offset < end);
    }

    fn epoch_truncate_from_start(&mut self, start: u64) {
        let after = self.epochs.partition_point(|e| e.start_offset <= start);
        if after == 0 {
            return;
        }
        self.epochs.drain(..after - 1);
        self.epochs[0].start_offset = start;
    }
}

// ---------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------

fn ok<T>(what: &str, r: Result<T, LogError>) -> TestResult<T> {
    r.map_err(|e| TestCaseError::fail(format!("{what} failed: {e}")))
}

struct Harness {
    dir: tempfile::TempDir,
    cfg: LogConfig,
    clock: Arc<ManualClock>,
    log: Option<Log>,
    model: Model,
    /// Makes every value unique, so a record served at the wrong offset is noticed.
    counter: u64,
    epoch: i32,
}

impl Harness {
    fn new(cfg: LogConfig) -> TestResult<Self> {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let clock = ManualClock::new(START_MS);
        let log = ok("open", Log::open_with_clock(dir.path(), cfg.clone(), clock.clone()))?;
        Ok(Harness { dir, model: Model::new(cfg.clone()), cfg, clock, log: Some(log), counter: 0, epoch: 0 })
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("open")
    }

    fn now(&self) -> i64 {
        use runnel_storage::Clock;
        self.clock.now_ms()
    }

    fn stamp(&mut self, recs: &[Rec]) -> Vec<(String, i64)> {
        let now = self.now();
        recs.iter()
            .map(|r| {
                self.counter += 1;
                (format!("{}:{}", self.counter, r.value), now - i64::from(r.jitter))
            })
            .collect()
    }

    fn advance(&self, advance: &Advance) {
        let target = match *advance {
            Advance::Ms(ms) => Some(self.now() + i64::from(ms)),
            Advance::ToExpiry { seg, delta } => {
                let segs = &self.model.segs;
                let max_ts = segs[usize::from(seg) % segs.len()].max_ts();
                self.cfg.retention_ms.zip(max_ts).map(|(ms, ts)| ts + ms as i64 + i64::from(delta))
            }
            Advance::ToRollTime { delta } => {
                let base = self.model.active().rolling_base;
                self.cfg.segment_ms.zip(base).map(|(ms, base)| base + ms as i64 + i64::from(delta))
            }
        };
        if let Some(t) = target {
            self.clock.set(t.max(self.now()));
        }
    }

    fn run(&mut self, op: &Op) -> TestResult {
        match op {
            Op::Append { recs, codec: c, bump_epoch, tick } => {
                self.clock.advance(i64::from(*tick));
                if *bump_epoch {
                    self.epoch += 1;
                }
                let recs = self.stamp(recs);
                let mut bytes = batch_with(recs.clone(), codec(*c));
                let base = self.model.log_end;
                let batch = MBatch { base, recs, len: bytes.len() as u64, epoch: self.epoch };
                let info = ok("append", self.log().append(&mut bytes, self.epoch))?;
                prop_assert_eq!(info.base_offset, base);
                prop_assert_eq!(info.last_offset, batch.next() - 1);
                prop_assert_eq!(info.log_end, batch.next());
                prop_assert_eq!(info.max_timestamp, batch.max_ts());
                let now = self.now();
                self.model.write_batch(batch, now);
            }
            Op::Replicate { batches, misaligned, bump_epoch, tick } => {
                self.clock.advance(i64::from(*tick));
                if *bump_epoch {
                    self.epoch += 1;
                }
                let first = self.model.log_end + u64::from(*misaligned);
                let mut next = first;
                let mut wire = Vec::new();
                let mut expected = Vec::new();
                for recs in batches {
                    let recs = self.stamp(recs);
                    let mut bytes = batch_with(recs.clone(), Compression::None);
                    set_base_offset(&mut bytes, next as i64);
                    set_partition_leader_epoch(&mut bytes, self.epoch);
                    let b = MBatch { base: next, recs, len: bytes.len() as u64, epoch: self.epoch };
                    next = b.next();
                    wire.extend_from_slice(&bytes);
                    expected.push(b);
                }
                let res = self.log().append_replicated(&wire);
                if *misaligned {
                    note(Event::Misaligned);
                    prop_assert!(
                        matches!(res, Err(LogError::InvalidBatch(_))),
                        "misaligned replicated batches were not refused: {:?}",
                        res
                    );
                    return Ok(());
                }
                let info = ok("append_replicated", res)?;
                let info = info.ok_or_else(|| TestCaseError::fail("append_replicated returned None"))?;
                prop_assert_eq!(info.base_offset, first);
                prop_assert_eq!(info.last_offset, next - 1);
                prop_assert_eq!(info.log_end, next);
                prop_assert_eq!(info.max_timestamp, expected.iter().map(MBatch::max_ts).max().unwrap_or(-1));
                let now = self.now();
                for b in expected {
                    self.model.write_batch(b, now);
                }
            }
            Op::Read { at, size, upper } => {
                let (lo, hi) = (self.model.log_start(), self.model.log_end);
                let offset = pick(*at, lo, hi, 3);
                let upper = upper.map(|u| pick(u, lo, hi, 2));
                let max_bytes = match *size {
                    ReadSize::Raw(n) => usize::from(n),
                    ReadSize::Fit { batches, delta } => {
                        let fit = self.model.bytes_of_batches_from(offset, usize::from(batches));
                        (fit as i64 + i64::from(delta)).max(0) as usize
                    }
                };
                self.check_read(offset, max_bytes, upper)?;
            }
            Op::Truncate { at } => {
                let offset = pick(*at, self.model.log_start(), self.model.log_end, 8);
                let got = ok("truncate_to", self.log().truncate_to(offset))?;
                let want = self.model.truncate_to(offset);
                prop_assert_eq!(got, want, "truncate_to({}) returned the wrong log end", offset);
            }
            Op::ForceRoll => {
                ok("force_roll", self.log().force_roll())?;
                if !self.model.active().is_empty() {
                    note(Event::ForcedRoll);
                    self.model.roll();
                }
            }
            Op::Retention { advance } => {
                self.advance(advance);
                let before = self.model.log_start();
                let out = ok("enforce_retention", self.log().enforce_retention())?;
                // Whatever the policy, the log start reported is the log's start, and it only
                // moves forward to a batch boundary.
                prop_assert!(out.log_start >= before);
                prop_assert_eq!(out.log_start, self.log().log_start());
                let now = self.now();
                let (n, bytes, start) = self.model.enforce_retention(now);
                prop_assert_eq!(
                    (out.deleted_segments, out.deleted_bytes, out.log_start),
                    (n, bytes, start),
                    "retention outcome (deleted segments, deleted bytes, log start) differs from the model"
                );
            }
            Op::Advance(advance) => self.advance(advance),
            Op::TimeLookup { pick: seed } => {
                let recs = self.model.records();
                let t = if recs.is_empty() {
                    self.now()
                } else {
                    let n = recs.len();
                    let seed = usize::from(*seed);
                    recs[seed % n].2 + (seed / n % 7) as i64 - 3
                };
                let got = ok("offset_for_timestamp", self.log().offset_for_timestamp(t))?;
                prop_assert_eq!(got, self.model.offset_for_timestamp(t), "offset_for_timestamp({})", t);
            }
            Op::Durable { flush } => {
                let end = self.model.log_end;
                if *flush {
                    ok("flush", self.log().flush())?;
                } else {
                    ok("wait_durable", self.log().wait_durable(end, Duration::from_secs(30)))?;
                }
                prop_assert!(self.log().durable_end() >= end, "durable end below {} after flush/wait", end);
            }
            Op::Reopen { reindex } => {
                let log = self.log.take().expect("open");
                ok("close", log.close())?;
                if let Some(seed) = reindex {
                    self.cfg.index_interval_bytes = 1 + u64::from(*seed) % self.cfg.segment_bytes;
                }
                let log = ok(
                    "reopen",
                    Log::open_with_clock(self.dir.path(), self.cfg.clone(), self.clock.clone()),
                )?;
                let r = log.recovery_report();
                prop_assert!(r.truncations.is_empty(), "clean reopen truncated: {:?}", r.truncations);
                prop_assert!(r.corruptions.is_empty(), "clean reopen found corruption: {:?}", r.corruptions);
                prop_assert!(!r.epoch_cache_rebuilt, "clean reopen rebuilt the epoch cache");
                prop_assert_eq!(log.durable_end(), log.log_end(), "a reopened log is durable to its end");
                self.log = Some(log);
                self.model.reopen();
            }
        }
        Ok(())
    }

    fn check_read(&self, offset: u64, max_bytes: usize, upper: Option<u64>) -> TestResult {
        let mut buf = Vec::new();
        let res = match upper {
            None => self.log().read(offset, max_bytes).map(|(b, info)| {
                buf = b;
                info
            }),
            Some(_) => self.log().read_into(offset, max_bytes, upper, &mut buf),
        };
        let (start, end) = (self.model.log_start(), self.model.log_end);
        let Some(want) = self.model.read(offset, max_bytes, upper) else {
            match res {
                Err(LogError::OffsetOutOfRange { requested, log_start, log_end }) => {
                    prop_assert_eq!((requested, log_start, log_end), (offset, start, end));
                    return Ok(());
                }
                other => {
                    return Err(TestCaseError::fail(format!(
                        "read at {offset} outside [{start}, {end}] should be out of range, got {other:?}"
                    )));
                }
            }
        };
        let info = ok(&format!("read at {offset} (max {max_bytes}, upper {upper:?})"), res)?;
        let ctx = format!("read at {offset} (max {max_bytes}, upper {upper:?}) in [{start}, {end})");
        prop_assert_eq!((info.offsets.log_start, info.offsets.log_end), (start, end), "{}", ctx);
        prop_assert_eq!(info.first_offset, want.first_offset, "first offset, {}", ctx);
        prop_assert_eq!(info.next_offset, want.next_offset, "next offset, {}", ctx);
        let got_batches: Vec<(i64, i32)> =
            headers(&buf).iter().map(|h| (h.base_offset, h.partition_leader_epoch)).collect();
        let want_batches: Vec<(i64, i32)> = want.batches.iter().map(|b| (b.base as i64, b.epoch)).collect();
        prop_assert_eq!(got_batches, want_batches, "batches (base offset, leader epoch), {}", ctx);
        let want_values: Vec<(u64, String)> = want
            .batches
            .iter()
            .flat_map(|b| b.recs.iter().enumerate().map(|(i, (v, _))| (b.base + i as u64, v.clone())))
            .collect();
        prop_assert_eq!(values(&buf), want_values, "record values, {}", ctx);
        Ok(())
    }

    /// Invariants checked after every operation.
    fn check(&self) -> TestResult {
        let log = self.log();
        let o = log.offsets();
        let (start, end) = (self.model.log_start(), self.model.log_end);
        prop_assert_eq!((o.log_start, o.log_end), (start, end), "offsets (log start, log end)");
        prop_assert!(
            o.log_start <= o.durable_end && o.durable_end <= o.log_end,
            "durable end out of [log start, log end]: {:?}",
            o
        );
        if self.cfg.fsync == FsyncPolicy::Never {
            prop_assert_eq!(o.durable_end, o.log_end, "policy never: durable end follows the log end");
        }
        prop_assert_eq!(log.segment_count(), self.model.segs.len(), "segment count");
        prop_assert_eq!(log.size_bytes(), self.model.size(), "log size in bytes");
        let want: Vec<(u64, String)> = self.model.records().into_iter().map(|(o, v, _)| (o, v)).collect();
        prop_assert_eq!(read_all(log), want, "whole log content");
        prop_assert_eq!(log.epochs(), self.model.epochs.clone(), "leader-epoch cache");
        prop_assert_eq!(log.latest_epoch(), self.model.epochs.last().map(|e| e.epoch), "latest epoch");
        // Reading just below the start and just past the end is always out of range.
        if start > 0 {
            let r = log.read(start - 1, 1024);
            prop_assert!(matches!(r, Err(LogError::OffsetOutOfRange { .. })), "read below start: {:?}", r);
        }
        let r = log.read(end + 1, 1024);
        prop_assert!(matches!(r, Err(LogError::OffsetOutOfRange { .. })), "read past end: {:?}", r);
        Ok(())
    }
}

fn run_case(cfg: &LogConfig, ops: &[Op]) -> TestResult {
    let mut h = Harness::new(cfg.clone())?;
    for (i, op) in ops.iter().enumerate() {
        h.run(op).map_err(|e| TestCaseError::fail(format!("op #{i} {op:?}: {e}")))?;
        h.check().map_err(|e| TestCaseError::fail(format!("after op #{i} {op:?}: {e}")))?;
    }
    // Whatever the policy, everything appended becomes durable (this also notices a sync
    // thread that has died).
    let end = h.model.log_end;
    let res = h.log().wait_durable(end, Duration::from_secs(10));
    prop_assert!(res.is_ok(), "offset {} never became durable: {:?}", end, res);
    // Finally, a clean reopen must give back exactly the same log.
    h.run(&Op::Reopen { reindex: None }).map_err(|e| TestCaseError::fail(format!("final reopen: {e}")))?;
    h.check().map_err(|e| TestCaseError::fail(format!("after the final reopen: {e}")))?;
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[test]
fn log_matches_model() {
    let seed = env_u64("RUNNEL_MODEL_SEED").unwrap_or(DEFAULT_SEED);
    let cases = env_u64("RUNNEL_MODEL_CASES").map_or(DEFAULT_CASES, |c| c as u32);
    println!("model test: seed {seed} (RUNNEL_MODEL_SEED), {cases} cases (RUNNEL_MODEL_CASES)");
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: 2_000,
        ..Config::default()
    });
    let strategy = (config(), prop::collection::vec(op(), 10..=MAX_OPS));
    let result = runner.run(&strategy, |(cfg, ops)| run_case(&cfg, &ops));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, (cfg, ops))) => {
            panic!("seed {seed}: {reason}\nminimal failing case:\nconfig: {cfg:?}\nops: {ops:#?}")
        }
        Err(e) => panic!("seed {seed}: {e}"),
    }
    let coverage: Vec<(Event, u64)> =
        (0..EVENTS).map(|i| (EVENT_LIST[i], COVERAGE[i].load(Ordering::Relaxed))).collect();
    println!("coverage: {coverage:?}");
    if cases >= DEFAULT_CASES {
        let missing: Vec<Event> = coverage.iter().filter(|(_, n)| *n == 0).map(|(e, _)| *e).collect();
        assert!(missing.is_empty(), "seed {seed}: the generated cases never reached {missing:?}");
    }
}

/// With `fsync = interval:<ms>`, the sync thread must survive being woken (by appends) at
/// any moment relative to its interval. It computes the remaining wait as
/// `d - last_sync.elapsed()` after checking `last_sync.elapsed() < d` with a second clock
/// read, so a wake-up right at the end of the interval panics the thread with "overflow when
/// subtracting durations"; from then on nothing advances the durable offset except explicit
/// `flush` calls, and `wait_durable` times out. Appends wake the thread thousands of times
/// per interval boundary here, so the race is hit within a few seconds.
#[test]
fn interval_fsync_sync_thread_survives_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig {
        segment_bytes: 256 << 20,
        fsync: FsyncPolicy::Interval(Duration::from_millis(1)),
        ..common::small_config(FsyncPolicy::Never)
    };
    let log = Log::open(dir.path(), cfg).expect("open");
    let started = std::time::Instant::now();
    let mut appends = 0u64;
    while started.elapsed() < Duration::from_secs(4) {
        let mut batch = common::batch_of(&["x"], 0);
        let info = log.append(&mut batch, 0).expect("append");
        appends += 1;
        if appends.is_multiple_of(2000) {
            let res = log.wait_durable(info.log_end, Duration::from_secs(2));
            assert!(
                res.is_ok(),
                "after {appends} appends in {:?}, offset {} never became durable: {res:?} \
                 (the sync thread has died; see its panic above)",
                started.elapsed(),
                info.log_end
            );
        }
    }
    println!("{appends} appends in {:?}", started.elapsed());
}

/// `offset_for_timestamp` scans at most `2 * index.interval.bytes + max.message.bytes` past
/// the time index entry below the target. That bound holds for indexes built with the current
/// interval, but a sealed segment keeps the time index it was built with, and
/// `index.interval.bytes` may be lowered between runs (it is a topic config): then the scan
/// stops short and the lookup falls back to the next time index entry, returning a later
/// offset than the first record at or after the timestamp.
#[test]
fn offset_for_timestamp_after_index_interval_lowered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig {
        segment_bytes: 8192,
        segment_ms: None,
        retention_ms: None,
        retention_bytes: None,
        index_interval_bytes: 8192,
        max_batch_bytes: 1024,
        fsync: FsyncPolicy::Never,
        preallocate_bytes: 0,
    };
    let value = "x".repeat(80);
    {
        let log = Log::open(dir.path(), cfg.clone()).expect("open");
        for i in 0..40 {
            let mut batch = common::batch_of(&[value.as_str()], 1_000 + i);
            log.append(&mut batch, 0).expect("append");
        }
        log.force_roll().expect("roll");
        assert_eq!(log.offset_for_timestamp(1_030).expect("lookup"), Some((30, 1_030)));
        log.close().expect("close");
    }
    let cfg = LogConfig { index_interval_bytes: 64, ..cfg };
    let log = Log::open(dir.path(), cfg).expect("reopen");
    assert_eq!(
        log.offset_for_timestamp(1_030).expect("lookup"),
        Some((30, 1_030)),
        "the first record stamped at or after 1030 is at offset 30"
    );
}

/// `max.message.bytes` bounds what an append accepts (a topic config that can be lowered at
/// any time), but the log also uses it as the validity bound when it scans stored batches.
/// Lowering it below the size of a batch already in the log and reopening makes recovery
/// treat that acknowledged, intact batch as a torn tail and cut it (and everything after it)
/// off the tail segment.
#[test]
fn lowering_max_batch_bytes_keeps_stored_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = LogConfig { max_batch_bytes: 64 * 1024, ..common::small_config(FsyncPolicy::Never) };
    let big = "b".repeat(1_500);
    {
        let log = Log::open(dir.path(), cfg.clone()).expect("open");
        for v in ["a", big.as_str(), "c"] {
            let mut batch = common::batch_of(&[v], 0);
            log.append(&mut batch, 0).expect("append");
        }
        log.close().expect("close");
    }
    let cfg = LogConfig { max_batch_bytes: 1_024, ..cfg };
    let log = Log::open(dir.path(), cfg).expect("reopen");
    assert!(
        log.recovery_report().truncations.is_empty(),
        "recovery cut stored batches: {:?}",
        log.recovery_report().truncations
    );
    assert_eq!(log.log_end(), 3);
    let values: Vec<String> = read_all(&log).into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, vec!["a".to_string(), big, "c".to_string()]);
}
