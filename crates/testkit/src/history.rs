//! A history of produce attempts and reads, and the checker that judges it against a final
//! read of the log.
//!
//! Every record a workload produces has a value nobody else uses, `producer-<P>-seq-<N>`
//! ([`record_value`]), and a failed attempt is never retried with the same value: the next
//! attempt takes the next sequence number. So each value in the log names exactly one attempt,
//! and the history can say what became of each:
//!
//! - an **acknowledged** record must be in the log exactly once, at the offset it was
//!   acknowledged with ([`Violation::Lost`], [`Violation::Duplicated`],
//!   [`Violation::WrongOffset`], [`Violation::Misplaced`]);
//! - two acknowledgements never name the same offset ([`Violation::ConflictingAcks`]), and a
//!   record read while the workload ran is still at its offset at the end
//!   ([`Violation::DivergentRead`]): no offset holds two different records at different times;
//! - offsets run without a gap from the log start to the high watermark ([`Violation::Gap`]);
//! - each producer's acknowledged records keep its order within a partition
//!   ([`Violation::OutOfOrder`]);
//! - an unacknowledged record (refused, or no answer) is absent or present once
//!   ([`Violation::Duplicated`] with `acked: false`);
//! - nothing is in the log that nobody produced ([`Violation::Phantom`]).
//!
//! The [`Verdict`] also measures availability: the longest window in which no produce was
//! acknowledged, per partition and on all partitions at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

/// How many violations a [`Verdict`] lists (all are counted).
pub const VIOLATIONS_LISTED_MAX: usize = 50;

/// The value of producer `producer`'s record number `seq`.
pub fn record_value(producer: u32, seq: u64) -> String {
    format!("producer-{producer}-seq-{seq}")
}

/// The producer and sequence number of a value made by [`record_value`].
pub fn parse_value(value: &str) -> Option<(u32, u64)> {
    let rest = value.strip_prefix("producer-")?;
    let (producer, seq) = rest.split_once("-seq-")?;
    Some((producer.parse().ok()?, seq.parse().ok()?))
}

/// What became of one produced record, as the producer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The broker acknowledged it at this offset.
    Acked { offset: i64 },
    /// The broker answered with an error (Kafka's code and name). Some errors come after the
    /// append (REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND, NOT_LEADER_OR_FOLLOWER while
    /// acks=all waited), so the record may still be in the log.
    Failed { code: i32, name: String },
    /// No answer (deadline passed, connection lost): it may or may not have been written.
    Unknown { reason: String },
}

impl Outcome {
    /// Whether the record was acknowledged.
    pub fn is_acked(&self) -> bool {
        matches!(self, Outcome::Acked { .. })
    }
}

/// One record a producer tried to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The producer (one request in flight per producer).
    pub producer: u32,
    /// The producer's sequence number: each attempt takes the next one.
    pub seq: u64,
    /// The partition it was sent to.
    pub partition: u32,
    /// Its value ([`record_value`] of producer and seq).
    pub value: String,
    /// The broker it was sent to.
    pub broker: String,
    /// When the request was sent, from the start of the history.
    pub sent: Duration,
    /// When the answer came (or the producer gave up waiting), from the start of the history.
    pub done: Duration,
    /// What the answer said.
    pub outcome: Outcome,
}

/// A record seen by a reader while the workload ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The partition.
    pub partition: u32,
    /// The offset it was read at.
    pub offset: i64,
    /// Its value (lossy UTF-8; `<null>` for a null value).
    pub value: String,
    /// When it was read, from the start of the history.
    pub at: Duration,
}

/// Everything a workload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// Every produced record, in no particular order.
    pub attempts: Vec<Attempt>,
    /// Every record read while the workload ran.
    pub reads: Vec<Read>,
    /// When the workload stopped, from the start of the history.
    pub ended: Duration,
}

/// Everything one partition holds at the end: every record from the log start to the high
/// watermark, read from its leader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalLog {
    /// The log start offset.
    pub log_start: i64,
    /// The high watermark.
    pub high_watermark: i64,
    /// `(offset, value)` in the order read.
    pub records: Vec<(i64, String)>,
}

/// A stretch of time in which no produce was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// When it began (the last acknowledgement before it, or the start), from the start of the
    /// history.
    pub from: Duration,
    /// When it ended (the next acknowledgement, or the end of the workload).
    pub to: Duration,
}

impl Window {
    /// Its length.
    pub fn length(&self) -> Duration {
        self.to.saturating_sub(self.from)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.3} s (from {:.3} s to {:.3} s)",
            self.length().as_secs_f64(),
            self.from.as_secs_f64(),
            self.to.as_secs_f64()
        )
    }
}

/// Something the history shows went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged record is not in its partition's log (`found` is what its offset holds).
    Lost { partition: u32, offset: i64, value: String, found: Option<String> },
    /// A record is in the log more than once.
    Duplicated { partition: u32, value: String, offsets: Vec<i64>, acked: bool },
    /// An acknowledged record is in the log once, but not at the offset it was acknowledged with.
    WrongOffset { partition: u32, value: String, acked: i64, found: i64 },
    /// A record is in another partition than the one it was sent to.
    Misplaced { value: String, sent_to: u32, found_in: u32, offset: i64 },
    /// Two records were acknowledged at the same offset.
    ConflictingAcks { partition: u32, offset: i64, values: [String; 2] },
    /// The log skips offsets, or does not cover the log start to the high watermark.
    Gap { partition: u32, expected: i64, found: Option<i64> },
    /// A producer's acknowledged records are in another order in the log than it sent them:
    /// `(seq, offset)` of the one sent first, and of one sent after it but at a lower offset.
    OutOfOrder { partition: u32, producer: u32, first: (u64, i64), then: (u64, i64) },
    /// A record read during the run is not at its offset at the end (or another read of the
    /// same offset saw something else).
    DivergentRead { partition: u32, offset: i64, read: String, at: Duration, now: Option<String> },
    /// A record in the log that no attempt produced.
    Phantom { partition: u32, offset: i64, value: String },
}

impl Violation {
    /// A short name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Violation::Lost { .. } => "lost",
            Violation::Duplicated { acked: true, .. } => "duplicated",
            Violation::Duplicated { acked: false, .. } => "duplicated (unacknowledged)",
            Violation::WrongOffset { .. } => "wrong offset",
            Violation::Misplaced { .. } => "misplaced",
            Violation::ConflictingAcks { .. } => "conflicting acks",
            Violation::Gap { .. } => "gap",
            Violation::OutOfOrder { .. } => "out of order",
            Violation::DivergentRead { .. } => "divergent read",
            Violation::Phantom { .. } => "phantom",
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Lost { partition, offset, value, found } => write!(
                f,
                "lost: {value} acknowledged at partition {partition} offset {offset}, which now holds {}",
                found.as_deref().unwrap_or("nothing")
            ),
            Violation::Duplicated { partition, value, offsets, acked } => write!(
                f,
                "duplicated: {value} ({}) is in partition {partition} {} times, at offsets {offsets:?}",
                if *acked { "acknowledged" } else { "not acknowledged" },
                offsets.len()
            ),
            Violation::WrongOffset { partition, value, acked, found } => write!(
                f,
                "wrong offset: {value} acknowledged at partition {partition} offset {acked} is at offset {found}"
            ),
            Violation::Misplaced { value, sent_to, found_in, offset } => write!(
                f,
                "misplaced: {value} sent to partition {sent_to} is in partition {found_in} at offset {offset}"
            ),
            Violation::ConflictingAcks { partition, offset, values } => write!(
                f,
                "conflicting acks: {} and {} were both acknowledged at partition {partition} offset {offset}",
                values[0], values[1]
            ),
            Violation::Gap { partition, expected, found } => match found {
                Some(found) => {
                    write!(f, "gap: partition {partition} has offset {found} where {expected} was next")
                }
                None => {
                    write!(f, "gap: partition {partition} ends before offset {expected} (its high watermark)")
                }
            },
            Violation::OutOfOrder { partition, producer, first, then } => write!(
                f,
                "out of order: producer {producer}'s seq {} is at partition {partition} offset {}, before \
                 its seq {} (offset {}), which it sent first",
                then.0, then.1, first.0, first.1
            ),
            Violation::DivergentRead { partition, offset, read, at, now } => write!(
                f,
                "divergent read: partition {partition} offset {offset} read as {read} at {:.3} s, now {}",
                at.as_secs_f64(),
                now.as_deref().unwrap_or("absent")
            ),
            Violation::Phantom { partition, offset, value } => {
                write!(
                    f,
                    "phantom: partition {partition} offset {offset} holds {value:?}, which nobody produced"
                )
            }
        }
    }
}

/// The checker's answer: counts, the violations, and availability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Records attempted.
    pub attempted: usize,
    /// Records acknowledged.
    pub acknowledged: usize,
    /// Records refused with an error.
    pub failed: usize,
    /// Refused records by error name.
    pub refusals: BTreeMap<String, usize>,
    /// Records with no answer.
    pub unknown: usize,
    /// Unacknowledged records that are in the log (allowed, once).
    pub unacknowledged_present: usize,
    /// Records in the final logs.
    pub final_records: usize,
    /// Records read while the workload ran.
    pub reads: usize,
    /// Acknowledged records missing from their partition.
    pub lost: usize,
    /// Records in the log more than once (acknowledged or not).
    pub duplicated: usize,
    /// Acknowledged records out of their producer's order.
    pub out_of_order: usize,
    /// Every violation counted, by kind.
    pub counts: BTreeMap<&'static str, usize>,
    /// The first [`VIOLATIONS_LISTED_MAX`] violations.
    pub violations: Vec<Violation>,
    /// The longest window without an acknowledged produce on one partition, and the partition.
    pub longest_unavailable: Option<(u32, Window)>,
    /// The longest window without an acknowledged produce on any partition.
    pub longest_unavailable_all: Window,
}

impl Verdict {
    /// Whether the history shows no violation at all.
    pub fn ok(&self) -> bool {
        self.counts.is_empty()
    }

    /// How many violations there were.
    pub fn violation_count(&self) -> usize {
        self.counts.values().sum()
    }

    fn add(&mut self, v: Violation) {
        *self.counts.entry(v.kind()).or_default() += 1;
        match &v {
            Violation::Lost { .. } => self.lost += 1,
            Violation::Duplicated { .. } => self.duplicated += 1,
            Violation::OutOfOrder { .. } => self.out_of_order += 1,
            _ => {}
        }
        if self.violations.len() < VIOLATIONS_LISTED_MAX {
            self.violations.push(v);
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "records attempted:      {}", self.attempted)?;
        writeln!(f, "  acknowledged:         {}", self.acknowledged)?;
        let refusals: Vec<String> = self.refusals.iter().map(|(name, n)| format!("{name} {n}")).collect();
        if refusals.is_empty() {
            writeln!(f, "  refused (error):      {}", self.failed)?;
        } else {
            writeln!(f, "  refused (error):      {} ({})", self.failed, refusals.join(", "))?;
        }
        writeln!(f, "  unknown outcome:      {}", self.unknown)?;
        writeln!(f, "  unacknowledged but written: {}", self.unacknowledged_present)?;
        writeln!(
            f,
            "records in the final read: {} (read during the run: {})",
            self.final_records, self.reads
        )?;
        writeln!(f, "lost:                   {}", self.lost)?;
        writeln!(f, "duplicated:             {}", self.duplicated)?;
        writeln!(f, "out of order:           {}", self.out_of_order)?;
        let other: Vec<String> = self
            .counts
            .iter()
            .filter(|(k, _)| {
                !["lost", "duplicated", "duplicated (unacknowledged)", "out of order"].contains(k)
            })
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        writeln!(
            f,
            "other violations:       {}",
            if other.is_empty() { "none".into() } else { other.join(", ") }
        )?;
        match &self.longest_unavailable {
            Some((p, w)) => writeln!(f, "longest window with no acknowledged produce: {w} on partition {p}")?,
            None => {
                writeln!(f, "longest window with no acknowledged produce: (no partition was produced to)")?
            }
        }
        writeln!(f, "  on every partition at once: {}", self.longest_unavailable_all)?;
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        if self.violations.len() < self.violation_count() {
            writeln!(f, "  ... and {} more", self.violation_count() - self.violations.len())?;
        }
        write!(f, "verdict: {}", if self.ok() { "OK" } else { "VIOLATIONS FOUND" })
    }
}

impl History {
    /// The longest window without an acknowledged record, over the partitions in `only` (all
    /// partitions that were produced to, when `None`): from the start (time zero) or an
    /// acknowledgement to the next acknowledgement or the end.
    pub fn longest_unavailable(&self, only: Option<u32>) -> Window {
        let mut acks: Vec<Duration> = self
            .attempts
            .iter()
            .filter(|a| a.outcome.is_acked() && only.is_none_or(|p| a.partition == p))
            .map(|a| a.done)
            .collect();
        acks.sort();
        let mut points = Vec::with_capacity(acks.len() + 2);
        points.push(Duration::ZERO);
        points.extend(acks);
        points.push(self.ended.max(*points.last().expect("not empty")));
        // The longest; the earliest of equals.
        points
            .windows(2)
            .map(|w| Window { from: w[0], to: w[1] })
            .min_by_key(|w| (std::cmp::Reverse(w.length()), w.from))
            .unwrap_or_default()
    }

    /// The failover after a fault injected at `at` on `partition`: from the last
    /// acknowledgement before the partition took writes again to the first acknowledgement of a
    /// request *sent* after `at` (or the end). Requests already in flight at `at` can still be
    /// acknowledged a moment later (their answers were on the way), so they end no window.
    pub fn failover_after(&self, partition: u32, at: Duration) -> Window {
        let acks = self.attempts.iter().filter(|a| a.outcome.is_acked() && a.partition == partition);
        let to = acks.clone().filter(|a| a.sent >= at).map(|a| a.done).min().unwrap_or(self.ended.max(at));
        let from = acks.map(|a| a.done).filter(|&d| d < to).max().unwrap_or_default();
        Window { from, to }
    }

    /// The longest stretch without an acknowledgement on `partition` that overlaps `from..to`:
    /// between consecutive acknowledgements, counting the last one before `from` and the first
    /// one after `to` (or the start and the end). Use it when the fault's exact moment is not
    /// known, only a span that contains it and its recovery.
    pub fn longest_gap_within(&self, partition: u32, from: Duration, to: Duration) -> Window {
        let mut acks: Vec<Duration> = self
            .attempts
            .iter()
            .filter(|a| a.outcome.is_acked() && a.partition == partition)
            .map(|a| a.done)
            .collect();
        acks.sort();
        let first = acks.iter().rev().find(|&&d| d < from).copied().unwrap_or_default();
        let last = acks.iter().find(|&&d| d > to).copied().unwrap_or(self.ended.max(to));
        let mut points = vec![first];
        points.extend(acks.iter().filter(|&&d| d >= from && d <= to));
        points.push(last);
        points
            .windows(2)
            .map(|w| Window { from: w[0], to: w[1] })
            .min_by_key(|w| (std::cmp::Reverse(w.length()), w.from))
            .unwrap_or_default()
    }

    /// How many records were acknowledged.
    pub fn acknowledged(&self) -> usize {
        self.attempts.iter().filter(|a| a.outcome.is_acked()).count()
    }

    /// Judges the history against the final read of every partition. Every partition the
    /// history touched must be in `logs`: a missing one is read as empty.
    pub fn check(&self, logs: &BTreeMap<u32, FinalLog>) -> Verdict {
        let mut v = Verdict {
            attempted: self.attempts.len(),
            acknowledged: self.acknowledged(),
            failed: self.attempts.iter().filter(|a| matches!(a.outcome, Outcome::Failed { .. })).count(),
            unknown: self.attempts.iter().filter(|a| matches!(a.outcome, Outcome::Unknown { .. })).count(),
            refusals: self.attempts.iter().fold(BTreeMap::new(), |mut m, a| {
                if let Outcome::Failed { name, .. } = &a.outcome {
                    // The first word: NOT_CONNECTED carries the transport's message after it.
                    let name = name.split(':').next().unwrap_or(name).to_owned();
                    *m.entry(name).or_default() += 1;
                }
                m
            }),
            reads: self.reads.len(),
            final_records: logs.values().map(|l| l.records.len()).sum(),
            ..Verdict::default()
        };
        let empty = FinalLog::default();
        let log = |p: u32| logs.get(&p).unwrap_or(&empty);

        // Offsets: contiguous from the log start to the high watermark.
        for (&p, l) in logs {
            let mut expected = l.log_start;
            for &(offset, _) in &l.records {
                if offset != expected {
                    v.add(Violation::Gap { partition: p, expected, found: Some(offset) });
                }
                expected = offset + 1;
            }
            if expected < l.high_watermark {
                v.add(Violation::Gap { partition: p, expected, found: None });
            }
        }

        // Where each value is, and what each offset holds.
        let mut places: HashMap<&str, Vec<(u32, i64)>> = HashMap::new();
        let mut at: HashMap<(u32, i64), &str> = HashMap::new();
        for (&p, l) in logs {
            for (offset, value) in &l.records {
                places.entry(value.as_str()).or_default().push((p, *offset));
                at.entry((p, *offset)).or_insert(value.as_str());
            }
        }

        let mut attempted: HashSet<&str> = HashSet::with_capacity(self.attempts.len());
        let mut acked_at: HashMap<(u32, i64), &str> = HashMap::new();
        for a in &self.attempts {
            assert!(attempted.insert(a.value.as_str()), "the workload used value {} twice", a.value);
            let found = places.get(a.value.as_str()).map(Vec::as_slice).unwrap_or_default();
            let here: Vec<i64> = found.iter().filter(|(p, _)| *p == a.partition).map(|&(_, o)| o).collect();
            for &(p, offset) in found.iter().filter(|(p, _)| *p != a.partition) {
                v.add(Violation::Misplaced {
                    value: a.value.clone(),
                    sent_to: a.partition,
                    found_in: p,
                    offset,
                });
            }
            let acked = a.outcome.is_acked();
            if here.len() > 1 {
                v.add(Violation::Duplicated {
                    partition: a.partition,
                    value: a.value.clone(),
                    offsets: here.clone(),
                    acked,
                });
            }
            match a.outcome {
                Outcome::Acked { offset } => {
                    if let Some(other) = acked_at.insert((a.partition, offset), a.value.as_str()) {
                        v.add(Violation::ConflictingAcks {
                            partition: a.partition,
                            offset,
                            values: [other.to_owned(), a.value.clone()],
                        });
                    }
                    match here.as_slice() {
                        [] => v.add(Violation::Lost {
                            partition: a.partition,
                            offset,
                            value: a.value.clone(),
                            found: at.get(&(a.partition, offset)).map(|s| (*s).to_owned()),
                        }),
                        [found] if *found != offset => v.add(Violation::WrongOffset {
                            partition: a.partition,
                            value: a.value.clone(),
                            acked: offset,
                            found: *found,
                        }),
                        _ => {}
                    }
                }
                Outcome::Failed { .. } | Outcome::Unknown { .. } => {
                    if !here.is_empty() {
                        v.unacknowledged_present += 1;
                    }
                }
            }
        }

        // Nothing nobody produced.
        for (&p, l) in logs {
            for (offset, value) in &l.records {
                if !attempted.contains(value.as_str()) {
                    v.add(Violation::Phantom { partition: p, offset: *offset, value: value.clone() });
                }
            }
        }

        // Each producer's order, among its acknowledged records found once in their partition.
        let mut by_producer: BTreeMap<(u32, u32), Vec<(u64, i64)>> = BTreeMap::new();
        for a in self.attempts.iter().filter(|a| a.outcome.is_acked()) {
            if let Some([(p, offset)]) = places.get(a.value.as_str()).map(Vec::as_slice)
                && *p == a.partition
            {
                by_producer.entry((a.partition, a.producer)).or_default().push((a.seq, *offset));
            }
        }
        for ((partition, producer), mut records) in by_producer {
            records.sort();
            let mut highest: Option<(u64, i64)> = None;
            for &(seq, offset) in &records {
                match highest {
                    Some(first) if offset < first.1 => {
                        v.add(Violation::OutOfOrder { partition, producer, first, then: (seq, offset) });
                    }
                    _ => highest = Some((seq, offset)),
                }
            }
        }

        // Reads: what an offset held during the run, it holds at the end.
        let mut first_read: HashMap<(u32, i64), &Read> = HashMap::new();
        for r in &self.reads {
            let now = at.get(&(r.partition, r.offset)).copied();
            let earlier = *first_read.entry((r.partition, r.offset)).or_insert(r);
            let mismatch = now != Some(r.value.as_str()) || earlier.value != r.value;
            if mismatch {
                let inside = log(r.partition).records.iter().any(|(o, _)| *o == r.offset);
                v.add(Violation::DivergentRead {
                    partition: r.partition,
                    offset: r.offset,
                    read: r.value.clone(),
                    at: r.at,
                    now: if earlier.value != r.value && inside {
                        Some(format!("{} (read earlier as {})", now.unwrap_or("absent"), earlier.value))
                    } else {
                        now.map(str::to_owned)
                    },
                });
            }
        }

        let partitions: std::collections::BTreeSet<u32> = self.attempts.iter().map(|a| a.partition).collect();
        v.longest_unavailable = partitions
            .iter()
            .map(|&p| (p, self.longest_unavailable(Some(p))))
            .max_by_key(|(p, w)| (w.length(), std::cmp::Reverse(*p)));
        v.longest_unavailable_all = self.longest_unavailable(None);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Builds histories and logs by hand: `acked(p, producer, seq, offset)` and friends.
    #[derive(Default)]
    struct Case {
        history: History,
        logs: BTreeMap<u32, FinalLog>,
        clock: u64,
    }

    impl Case {
        fn attempt(&mut self, partition: u32, producer: u32, seq: u64, outcome: Outcome) -> &mut Self {
            self.clock += 10;
            self.history.attempts.push(Attempt {
                producer,
                seq,
                partition,
                value: record_value(producer, seq),
                broker: "127.0.0.1:1".into(),
                sent: ms(self.clock - 5),
                done: ms(self.clock),
                outcome,
            });
            self.history.ended = ms(self.clock + 10);
            self
        }
        fn acked(&mut self, partition: u32, producer: u32, seq: u64, offset: i64) -> &mut Self {
            self.attempt(partition, producer, seq, Outcome::Acked { offset })
        }
        fn unknown(&mut self, partition: u32, producer: u32, seq: u64) -> &mut Self {
            self.attempt(partition, producer, seq, Outcome::Unknown { reason: "timed out".into() })
        }
        /// The final log of `partition`: values by producer and seq, at offsets from 0.
        fn log(&mut self, partition: u32, values: &[(u32, u64)]) -> &mut Self {
            let records: Vec<(i64, String)> =
                values.iter().enumerate().map(|(i, &(p, s))| (i as i64, record_value(p, s))).collect();
            let hw = records.len() as i64;
            self.logs.insert(partition, FinalLog { log_start: 0, high_watermark: hw, records });
            self
        }
        fn check(&self) -> Verdict {
            self.history.check(&self.logs)
        }
    }

    /// Asserts the verdict holds exactly one violation, of `kind`, and returns it.
    fn only(verdict: &Verdict, kind: &str) -> Violation {
        assert_eq!(verdict.counts, BTreeMap::from([(kind_static(kind), 1)]), "{verdict}");
        assert!(!verdict.ok());
        verdict.violations[0].clone()
    }

    fn kind_static(kind: &str) -> &'static str {
        [
            "lost",
            "duplicated",
            "duplicated (unacknowledged)",
            "wrong offset",
            "misplaced",
            "conflicting acks",
            "gap",
            "out of order",
            "divergent read",
            "phantom",
        ]
        .into_iter()
        .find(|k| *k == kind)
        .expect("a known kind")
    }

    #[test]
    fn values_name_their_producer_and_sequence() {
        assert_eq!(record_value(3, 17), "producer-3-seq-17");
        assert_eq!(parse_value("producer-3-seq-17"), Some((3, 17)));
        assert_eq!(parse_value("producer-3-17"), None);
        assert_eq!(parse_value("x"), None);
    }

    #[test]
    fn a_clean_history_passes_with_its_counts() {
        let mut c = Case::default();
        c.acked(0, 1, 0, 0).unknown(0, 1, 1).acked(0, 1, 2, 2);
        c.attempt(0, 1, 3, Outcome::Failed { code: 6, name: "NOT_LEADER_OR_FOLLOWER".into() });
        c.acked(1, 2, 0, 0).acked(0, 1, 4, 3);
        // The unknown attempt was written, the refused one was not.
        c.log(0, &[(1, 0), (1, 1), (1, 2), (1, 4)]).log(1, &[(2, 0)]);
        c.history.reads.push(Read { partition: 0, offset: 1, value: record_value(1, 1), at: ms(35) });
        let v = c.check();
        assert!(v.ok(), "{v}");
        assert_eq!((v.attempted, v.acknowledged, v.failed, v.unknown), (6, 4, 1, 1));
        assert_eq!(v.refusals, BTreeMap::from([("NOT_LEADER_OR_FOLLOWER".to_owned(), 1)]));
        assert_eq!((v.unacknowledged_present, v.final_records, v.reads), (1, 5, 1));
        assert_eq!((v.lost, v.duplicated, v.out_of_order), (0, 0, 0));
        assert!(v.to_string().ends_with("verdict: OK"), "{v}");
    }

    #[test]
    fn a_lost_acknowledged_record_is_found() {
        let mut c = Case::default();
        c.acked(0, 1, 0, 0).acked(0, 1, 1, 1).acked(0, 1, 2, 2);
        // Offset 1 was truncated and rewritten by a later (unacknowledged) record.
        c.unknown(0, 1, 3);
        c.log(0, &[(1, 0), (1, 3), (1, 2)]);
        let v = c.check();
        // The unacknowledged record sits where the lost one was acknowledged.
        assert_eq!(
            only(&v, "lost"),
            Violation::Lost {
                partition: 0,
                offset: 1,
                value: record_value(1, 1),
                found: Some(record_value(1, 3))
            }
        );
        assert_eq!(v.lost, 1);
        assert!(v.to_string().contains("VIOLATIONS FOUND"), "{v}");
    }

    #[test]
    fn a_duplicated_acknowledged_record_is_found() {
        let mut c = Case::default();
        c.acked(0, 1, 0, 0).acked(0, 1, 1, 1);
        c.log(0, &[(1, 0), (1, 1), (1, 1)]);
        let v = c.check();
        assert_eq!(
            only(&v, "duplicated"),
            Violation::Duplicated {
                partition: 0,
                value: record_value(1, 1),
                offsets: vec![1, 2],
                acked: true
            }
        );
        assert_eq!(v.duplicated, 1);
    }

    #[test]
    fn an_unacknowledged_record_written_twice_is_found() {
        let mut c = Case::default();
        c.acked(0, 1, 0, 0).unknown(0, 1, 1);
        c.log(0, &[(1, 0), (1, 1), (1, 1)]);
        let v = c.check();
        assert_eq!(
            only(&v, "duplicated (unacknowledged)"),
            Violation::Duplicated {
                partition: 0,
                value: record_value(1, 1),
                offsets: vec![1, 2],
                acked: false
            }
        );
        assert_eq!(v.duplicated, 1);
    }

    #[test]
    fn a_record_at_another_offset_than_acknowledged_is_found() {
        let mut c = Case::default();
        c.unknown(0, 1, 0).acked(0, 1, 1, 0);
        // The unknown attempt landed first, so the acknowledged one moved to offset 1.
        c.log(0, &[(1, 0), (1, 1)]);
        let v = c.check();
        assert_eq!(
            only(&v, "wrong offset"),
            Violation::WrongOffset { partition: 0, value: record_value(1, 1), acked: 0, found: 1 }
        );
    }

    #[test]
    fn two_acks_for_one_offset_are_found() {
        let mut c = Case::default();
        // Both acknowledged at offset 0: one of them is at least misplaced, here also lost.
        c.acked(0, 1, 0, 0).acked(0, 2, 0, 0);
        c.log(0, &[(2, 0)]);
        let v = c.check();
        assert_eq!(v.counts.get("conflicting acks"), Some(&1), "{v}");
        assert_eq!(v.counts.get("lost"), Some(&1), "{v}");
        assert!(v.violations.contains(&Violation::ConflictingAcks {
            partition: 0,
            offset: 0,
            values: [record_value(1, 0), record_value(2, 0)],
        }));
    }

    #[test]
    fn a_record_in_another_partition_is_found() {
        let mut c = Case::default();
        c.acked(0, 1, 0, 0).unknown(0, 1, 1);
        c.log(0, &[(1, 0)]).log(1, &[(1, 1)]);
        let v = c.check();
        assert_eq!(
            only(&v, "misplaced"),
            Violation::Misplaced { value: record_value(1, 1), sent_to: 0, found_in: 1, offset: 0 }
        );
    }

    #[test]
    fn a_gap_in_offsets_is_found() {
        let mut c = Case::default();
        c.acked(0, 1, 0, 0).acked(0, 1, 1, 2);
        c.logs.insert(
            0,
            FinalLog {
                log_start: 0,
                high_watermark: 3,
                records: vec![(0, record_value(1, 0)), (2, record_value(1, 1))],
            },
        );
        let v = c.check();
        assert_eq!(only(&v, "gap"), Violation::Gap { partition: 0, expected: 1, found: Some(2) });

        // A log that stops short of its high watermark, or starts past its log start.
        let mut c = Case::default();
        c.acked(0, 1, 0, 5);
        c.logs
            .insert(0, FinalLog { log_start: 4, high_watermark: 7, records: vec![(5, record_value(1, 0))] });
        let v = c.check();
        assert_eq!(v.counts.get("gap"), Some(&2), "{v}");
        assert!(v.violations.contains(&Violation::Gap { partition: 0, expected: 4, found: Some(5) }));
        assert!(v.violations.contains(&Violation::Gap { partition: 0, expected: 6, found: None }));
    }

    #[test]
    fn a_producer_reordered_within_a_partition_is_found() {
        let mut c = Case::default();
        // Acknowledged at offsets 0, 2, 1: seq 2 came before seq 1 in the log, and each is
        // where its ack said, so only the order is wrong.
        c.acked(0, 1, 0, 0).acked(0, 1, 1, 2).acked(0, 1, 2, 1);
        c.log(0, &[(1, 0), (1, 2), (1, 1)]);
        let v = c.check();
        assert_eq!(
            only(&v, "out of order"),
            Violation::OutOfOrder { partition: 0, producer: 1, first: (1, 2), then: (2, 1) }
        );
        assert_eq!(v.out_of_order, 1);

        // Different producers interleave freely.
        let mut c = Case::default();
        c.acked(0, 1, 0, 1).acked(0, 2, 0, 0);
        c.log(0, &[(2, 0), (1, 0)]);
        assert!(c.check().ok());
    }

    #[test]
    fn a_read_contradicted_by_the_final_log_is_found() {
        let mut c = Case::default();
        c.acked(0, 1, 0, 0).unknown(0, 1, 1).unknown(0, 2, 0);
        // During the run offset 1 held producer 1's seq 1; at the end it holds producer 2's.
        c.history.reads.push(Read { partition: 0, offset: 1, value: record_value(1, 1), at: ms(25) });
        c.log(0, &[(1, 0), (2, 0)]);
        let v = c.check();
        assert_eq!(
            only(&v, "divergent read"),
            Violation::DivergentRead {
                partition: 0,
                offset: 1,
                read: record_value(1, 1),
                at: ms(25),
                now: Some(record_value(2, 0)),
            }
        );
        // A read past the end of the final log.
        c.history.reads[0] = Read { partition: 0, offset: 2, value: record_value(1, 1), at: ms(25) };
        assert!(matches!(only(&c.check(), "divergent read"), Violation::DivergentRead { now: None, .. }));
    }

    #[test]
    fn a_record_nobody_produced_is_found() {
        let mut c = Case::default();
        c.acked(0, 1, 0, 0);
        c.logs.insert(
            0,
            FinalLog {
                log_start: 0,
                high_watermark: 2,
                records: vec![(0, record_value(1, 0)), (1, "garbage".into())],
            },
        );
        assert_eq!(
            only(&c.check(), "phantom"),
            Violation::Phantom { partition: 0, offset: 1, value: "garbage".into() }
        );
    }

    #[test]
    fn unavailability_is_the_longest_stretch_without_an_ack() {
        let at = |p: u32, seq: u64, done: u64, acked: bool| Attempt {
            producer: p,
            seq,
            partition: p,
            value: record_value(p, seq),
            broker: String::new(),
            sent: ms(done.saturating_sub(1)),
            done: ms(done),
            outcome: if acked {
                Outcome::Acked { offset: seq as i64 }
            } else {
                Outcome::Unknown { reason: String::new() }
            },
        };
        let history = History {
            // Partition 0 acks at 10, 20, 900 (a failover from 20 to 900); partition 1 acks
            // every 100 ms up to 1000, so all partitions at once never wait long.
            attempts: [at(0, 0, 10, true), at(0, 1, 20, true), at(0, 2, 500, false), at(0, 3, 900, true)]
                .into_iter()
                .chain((0..10).map(|i| at(1, i, 100 * (i + 1), true)))
                .collect(),
            reads: Vec::new(),
            ended: ms(1000),
        };
        assert_eq!(history.longest_unavailable(Some(0)), Window { from: ms(20), to: ms(900) });
        assert_eq!(history.longest_unavailable(Some(1)), Window { from: ms(0), to: ms(100) });
        assert_eq!(history.longest_unavailable(None).length(), ms(100));
        assert_eq!(history.failover_after(0, ms(300)), Window { from: ms(20), to: ms(900) });
        assert_eq!(history.failover_after(0, ms(950)), Window { from: ms(900), to: ms(1000) });
        assert_eq!(history.longest_gap_within(0, ms(100), ms(200)), Window { from: ms(20), to: ms(900) });
        assert_eq!(history.longest_gap_within(1, ms(150), ms(450)).length(), ms(100));
        assert_eq!(history.longest_gap_within(0, ms(950), ms(990)), Window { from: ms(900), to: ms(1000) });
        // A request in flight at the fault (sent at 19 ms, acknowledged at 20 ms) ends no window.
        assert_eq!(
            history.failover_after(0, Duration::from_micros(19_500)),
            Window { from: ms(20), to: ms(900) }
        );
        let mut logs = BTreeMap::new();
        logs.insert(0, FinalLog { log_start: 0, high_watermark: 0, records: vec![] });
        let v = history.check(&logs);
        assert_eq!(v.longest_unavailable, Some((0, Window { from: ms(20), to: ms(900) })));
        assert!(v.to_string().contains("0.880 s (from 0.020 s to 0.900 s) on partition 0"), "{v}");
    }
}
