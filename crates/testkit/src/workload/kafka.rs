//! [`ProduceMode::Kafka`](super::ProduceMode::Kafka): a Kafka client's producer in a child
//! process, its delivery reports read from its stdout into the workload's history.
//!
//! The child is `tests/python/kafka_failover.py produce` run by the pinned venv's Python
//! (confluent-kafka, so librdkafka 2.x): an idempotent producer at acks=all with the client's
//! defaults otherwise, one producer per partition whose records are numbered 0, 1, 2, ... with
//! the testkit's [`record_value`] as their value, so each delivery names one attempt. It
//! prints `ack <partition> <seq> <offset> <sent_ns> <done_ns>` or `err <partition> <seq>
//! <code> <name> <sent_ns> <done_ns>` per delivery report, times on CLOCK_MONOTONIC, which
//! [`monotonic_ns`] reads here too: the history's clock is the workload's start on the same
//! clock. Closing its stdin stops it; it then flushes (bounded by
//! [`KafkaClient::flush_timeout`]), reports what is left, and exits.
//!
//! Why a child process and not a Kafka client in Rust: the point is to judge what a real Kafka
//! client (librdkafka's retries, idempotence and leader handling) gets from Runnel's Kafka
//! listener, under the same fault schedule and the same checker as the gRPC workloads. Lines
//! on a pipe keep the two sides independent: the script knows nothing of the history, the
//! history nothing of librdkafka.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Shared, lock};
use crate::history::{Attempt, Outcome, record_value};
use crate::process::LineChild;

/// How long the child has to exit after its flush timeout.
const EXIT_GRACE: Duration = Duration::from_secs(15);
/// How often the reader looks at the stop flag while no line comes.
const LINE_WAIT: Duration = Duration::from_millis(100);

/// The Kafka client of a [`ProduceMode::Kafka`](super::ProduceMode::Kafka) workload.
#[derive(Debug, Clone)]
pub struct KafkaClient {
    /// The Python that has confluent-kafka (the venv of `tests/python/requirements.txt`).
    pub python: PathBuf,
    /// `tests/python/kafka_failover.py`.
    pub script: PathBuf,
    /// Kafka listener addresses, `host:port,...`.
    pub bootstrap: String,
    /// Records a second at most, over all partitions.
    pub rate: u32,
    /// Records outstanding (sent, not yet reported) at most.
    pub window: u32,
    /// How long the client may flush after it is told to stop; what is left is purged and
    /// reported as not delivered.
    pub flush_timeout: Duration,
}

impl KafkaClient {
    /// 3,000 records a second, 3,000 outstanding, a 30 s flush.
    pub fn new(python: impl Into<PathBuf>, script: impl Into<PathBuf>, bootstrap: impl Into<String>) -> Self {
        KafkaClient {
            python: python.into(),
            script: script.into(),
            bootstrap: bootstrap.into(),
            rate: 3000,
            window: 3000,
            flush_timeout: Duration::from_secs(30),
        }
    }
}

/// What the Kafka client said besides its delivery reports.
#[derive(Debug, Clone, Default)]
pub struct KafkaReport {
    /// Its producer existed this long after the workload started (its `start` line).
    pub started_after: Option<Duration>,
    /// Acknowledgements it counted (its `progress` lines), the last one.
    pub progress: u64,
    /// Its error callback's non-fatal errors, by name, with a count.
    pub errors: Vec<(String, usize)>,
    /// Fatal producer errors (the producer is unusable after one).
    pub fatal: Vec<String>,
    /// Its closing figures (`stats` line).
    pub stats: Option<String>,
    /// Whether it printed `done` (a clean end).
    pub done: bool,
    /// Lines it printed that are none of the above.
    pub unparsed: Vec<String>,
    /// How it exited (`None` while it runs).
    pub exit: Option<String>,
    /// Its stderr.
    pub stderr: String,
}

impl KafkaReport {
    /// Whether the client ended cleanly: `done`, exit 0, no fatal error, every line understood.
    pub fn clean(&self) -> bool {
        self.done
            && self.fatal.is_empty()
            && self.unparsed.is_empty()
            && self.exit.as_deref() == Some("exit status: 0")
    }

    fn note_error(&mut self, name: &str) {
        match self.errors.iter_mut().find(|(n, _)| n == name) {
            Some((_, count)) => *count += 1,
            None => self.errors.push((name.to_owned(), 1)),
        }
    }
}

impl std::fmt::Display for KafkaReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let errors: Vec<String> = self.errors.iter().map(|(n, c)| format!("{n} x{c}")).collect();
        write!(
            f,
            "kafka client: {}; errors reported: {}; fatal: {}; exit: {}",
            self.stats.as_deref().unwrap_or("no closing figures"),
            if errors.is_empty() { "none".to_owned() } else { errors.join(", ") },
            if self.fatal.is_empty() { "none".to_owned() } else { self.fatal.join("; ") },
            self.exit.as_deref().unwrap_or("still running")
        )?;
        if !self.unparsed.is_empty() {
            write!(f, "\n  unexpected lines: {:?}", &self.unparsed[..self.unparsed.len().min(10)])?;
        }
        if !self.clean() && !self.stderr.trim().is_empty() {
            write!(f, "\n  stderr:\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock Python's `time.CLOCK_MONOTONIC` reads.
pub fn monotonic_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

/// Errors after which the record may or may not be in the log: no answer, or one lost.
/// (librdkafka's `_PURGE_QUEUE` is a record never sent: refused.)
fn outcome_unknown(name: &str) -> bool {
    matches!(
        name,
        "_MSG_TIMED_OUT"
            | "_TIMED_OUT"
            | "_PURGE_INFLIGHT"
            | "_TRANSPORT"
            | "REQUEST_TIMED_OUT"
            | "NETWORK_EXCEPTION"
    )
}

/// Runs the client until the workload stops, recording every delivery report as an attempt.
/// Blocking: the workload runs it on a blocking thread.
pub(super) fn run(shared: &Arc<Shared>) {
    let opts = &shared.opts;
    let client = opts.kafka.clone().expect("ProduceMode::Kafka needs WorkloadOpts::kafka");
    let n = opts.partitions.len() as u32;
    assert!(
        opts.partitions.iter().copied().eq(0..n),
        "the Kafka workload produces to partitions 0..N, not {:?}",
        opts.partitions
    );
    let mut command = Command::new(&client.python);
    command
        .arg(&client.script)
        .arg("produce")
        .args(["--bootstrap", &client.bootstrap, "--topic", &opts.topic])
        .args(["--partitions", &n.to_string(), "--rate", &client.rate.to_string()])
        .args(["--window", &client.window.to_string()])
        .args(["--flush-timeout", &format!("{:.3}", client.flush_timeout.as_secs_f64())])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let mut child = match LineChild::spawn(&mut command) {
        Ok(child) => child,
        Err(e) => {
            let mut report = lock(&shared.kafka_report);
            report.fatal.push(format!("could not start the Kafka client: {e:#}"));
            report.exit = Some("not started".into());
            return;
        }
    };
    let mut closing: Option<Instant> = None;
    loop {
        if shared.abandoned.load(std::sync::atomic::Ordering::Acquire) {
            // Dropping the child kills its process group.
            return;
        }
        if closing.is_none() && shared.stopped() {
            child.close_stdin();
            closing = Some(Instant::now());
        }
        if closing.is_some_and(|c| c.elapsed() > client.flush_timeout + EXIT_GRACE) {
            break;
        }
        match child.next_line(LINE_WAIT) {
            Ok(Some(line)) => take_line(shared, &line),
            Ok(None) => {}
            Err(()) => break,
        }
    }
    let exit = match child.wait(EXIT_GRACE) {
        Ok((status, false)) => status.to_string(),
        Ok((status, true)) => format!("killed at its deadline ({status})"),
        Err(e) => format!("unknown: {e:#}"),
    };
    let stderr = child.stderr();
    let mut report = lock(&shared.kafka_report);
    report.exit = Some(exit);
    report.stderr = stderr;
}

/// A monotonic reading of the child's, on the history's clock.
fn at(shared: &Shared, ns: &str) -> Option<Duration> {
    let ns: i128 = ns.parse().ok()?;
    let since = (ns - shared.started_mono_ns).max(0);
    Some(Duration::from_nanos(u64::try_from(since).ok()?))
}

fn take_line(shared: &Shared, line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let parsed = match words.as_slice() {
        ["ack", p, seq, offset, sent, done] => (|| {
            let (p, seq, offset): (u32, u64, i64) =
                (p.parse().ok()?, seq.parse().ok()?, offset.parse().ok()?);
            record(shared, p, seq, at(shared, sent)?, at(shared, done)?, Outcome::Acked { offset });
            Some(())
        })(),
        ["err", p, seq, code, name, sent, done] => (|| {
            let (p, seq, code): (u32, u64, i32) = (p.parse().ok()?, seq.parse().ok()?, code.parse().ok()?);
            let outcome = if outcome_unknown(name) {
                Outcome::Unknown { reason: format!("librdkafka {name}") }
            } else {
                Outcome::Failed { code, name: (*name).to_owned() }
            };
            record(shared, p, seq, at(shared, sent)?, at(shared, done)?, outcome);
            Some(())
        })(),
        ["start", ns] => at(shared, ns).map(|t| lock(&shared.kafka_report).started_after = Some(t)),
        ["progress", n] => n.parse().ok().map(|n| lock(&shared.kafka_report).progress = n),
        ["error", name, ..] => {
            lock(&shared.kafka_report).note_error(name);
            Some(())
        }
        ["fatal", rest @ ..] => {
            lock(&shared.kafka_report).fatal.push(rest.join(" "));
            Some(())
        }
        ["stats", rest @ ..] => {
            lock(&shared.kafka_report).stats = Some(rest.join(" "));
            Some(())
        }
        ["done"] => {
            lock(&shared.kafka_report).done = true;
            Some(())
        }
        _ => None,
    };
    if parsed.is_none() {
        let mut report = lock(&shared.kafka_report);
        if report.unparsed.len() < 100 {
            report.unparsed.push(line.to_owned());
        }
    }
}

fn record(shared: &Shared, partition: u32, seq: u64, sent: Duration, done: Duration, outcome: Outcome) {
    if outcome.is_acked() {
        *lock(&shared.acked).entry(partition).or_default() += 1;
    }
    lock(&shared.attempts).push(Attempt {
        producer: partition,
        seq,
        partition,
        value: record_value(partition, seq),
        broker: "kafka client".into(),
        sent,
        done,
        outcome,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }

    #[test]
    fn unknown_outcomes_are_the_ones_that_may_have_been_written() {
        assert!(outcome_unknown("_MSG_TIMED_OUT") && outcome_unknown("_PURGE_INFLIGHT"));
        assert!(!outcome_unknown("_PURGE_QUEUE") && !outcome_unknown("NOT_ENOUGH_REPLICAS"));
    }
}
