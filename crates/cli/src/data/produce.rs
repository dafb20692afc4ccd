//! `runnel produce`: one record per line of stdin, through the client crate's [`Producer`].
//!
//! A thread reads stdin (lines are bytes, not necessarily UTF-8) into a bounded channel; each
//! line becomes a record sent with the producer, which batches per partition (by bytes and
//! linger), keeps records of a partition in the order they were read, and retries retriable
//! errors. With idempotence (the default under acks=all), a retry never appends a record
//! twice. After the first record that fails for good, no more lines are read: what was
//! already sent is delivered or fails, and the command exits 1 (records still being batched
//! for that partition may land after the failed ones, under the producer's fresh id).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runnel_client::producer::{self, Delivery, Producer, ProducerConfig, ProducerRecord};
use tokio::sync::mpsc;

use super::{code, error};
use crate::client::ClientError;

/// Lines read ahead of the producer.
const LINES_QUEUED_MAX: usize = 4096;

/// Which replicas must have a batch before the leader answers (`--acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Acks {
    /// Every in-sync replica (Kafka's acks=all, also spelled -1).
    #[value(name = "all", alias = "-1")]
    All,
    /// The leader only.
    #[value(name = "1")]
    Leader,
    /// No wait for the append (the leader still answers, after validating).
    #[value(name = "0")]
    None,
}

impl Acks {
    /// The client crate's name for it.
    pub(crate) fn to_client(self) -> producer::Acks {
        match self {
            Acks::All => producer::Acks::All,
            Acks::Leader => producer::Acks::Leader,
            Acks::None => producer::Acks::None,
        }
    }
}

/// Splits a line (without its newline) into key and value at the first `separator`. Without
/// a separator, or when the line does not contain it, the whole line is the value and the
/// key is null.
pub(crate) fn split_line(line: Bytes, separator: Option<&[u8]>) -> (Option<Bytes>, Bytes) {
    let Some(sep) = separator.filter(|s| !s.is_empty()) else { return (None, line) };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (Some(line.slice(..at)), line.slice(at + sep.len()..)),
        None => (None, line),
    }
}

/// Milliseconds since the Unix epoch (CreateTime).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What `runnel produce` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct ProduceOptions {
    pub(crate) topic: String,
    pub(crate) partition: Option<u32>,
    pub(crate) key_separator: Option<String>,
    pub(crate) acks: Acks,
    /// Largest batch, in bytes.
    pub(crate) batch_size: usize,
    /// How long a batch waits for more records.
    pub(crate) linger: Duration,
    /// Idempotent appends (needs acks=all).
    pub(crate) idempotence: bool,
    pub(crate) bootstrap: Vec<String>,
    /// TLS to the brokers, when the cluster serves it.
    pub(crate) tls: Option<tonic::transport::ClientTlsConfig>,
    /// The user's credentials, for a cluster with `--auth`.
    pub(crate) credentials: runnel_proto::security::Credentials,
}

/// What happened to the records of one partition.
#[derive(Debug, Default)]
pub(crate) struct PartitionOutcome {
    pub(crate) failed: u64,
    pub(crate) error: Option<ClientError>,
}

/// What `runnel produce` did.
#[derive(Debug, Default)]
pub(crate) struct ProduceSummary {
    pub(crate) read: u64,
    pub(crate) acknowledged: u64,
    /// Per partition that lost records: how many, and why.
    pub(crate) failures: BTreeMap<u32, PartitionOutcome>,
    /// Records that failed before a partition was chosen for them.
    pub(crate) unplaced: Option<PartitionOutcome>,
    /// Reading stdin failed (what was read before was still sent).
    pub(crate) input_error: Option<ClientError>,
}

/// Reads stdin line by line into `tx` (on a thread: stdin has no async read that can be
/// abandoned cleanly). Ends at EOF, on a read error (sent on) or when the receiver is gone.
fn spawn_stdin_reader(
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    // As Kafka's console producer (BufferedReader.readLine): \n or \r\n end a line.
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(Bytes::from(line))).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    })
}

/// `runnel produce`.
pub(crate) async fn produce(options: ProduceOptions) -> Result<ProduceSummary, ClientError> {
    let mut config = ProducerConfig::new(options.bootstrap.clone());
    config.tls = options.tls.clone();
    config.credentials = options.credentials.clone();
    config.client_id = "runnel-produce".into();
    config.acks = options.acks.to_client();
    config.batch_size = options.batch_size;
    config.linger = options.linger;
    config.idempotence = options.idempotence;
    let producer = Producer::new(config).await?;
    let partitions = producer.partition_count(&options.topic).await?;
    if let Some(p) = options.partition.filter(|&p| p >= partitions) {
        return Err(error(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            "UNKNOWN_TOPIC_OR_PARTITION",
            format!("topic {:?} has {partitions} partitions; there is no partition {p}", options.topic),
        ));
    }
    let separator = options.key_separator.as_deref().map(str::as_bytes);
    let (line_tx, mut lines) = mpsc::channel(LINES_QUEUED_MAX);
    let reader = spawn_stdin_reader(line_tx).map_err(|e| {
        error(code::INVALID_REQUEST, "INVALID_REQUEST", format!("cannot start the stdin reader: {e}"))
    })?;

    let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
    let mut read = 0u64;
    let mut input_error = None;
    while let Some(next) = lines.recv().await {
        let line = match next {
            Ok(line) => line,
            Err(e) => {
                input_error =
                    Some(error(code::INVALID_REQUEST, "INVALID_REQUEST", format!("reading stdin: {e}")));
                break;
            }
        };
        if lock(&outcomes).failed > 0 {
            // A record failed for good: stop rather than write newer records after it.
            break;
        }
        read += 1;
        let (key, value) = split_line(line, separator);
        let record = ProducerRecord {
            topic: options.topic.clone(),
            partition: options.partition,
            key,
            value: Some(value),
            headers: Vec::new(),
            timestamp_ms: Some(now_ms()),
        };
        let outcomes = outcomes.clone();
        producer.send_with_callback(record, move |delivery| lock(&outcomes).note(delivery)).await;
    }
    drop(lines);
    producer.close().await;
    // The reader thread has ended: at EOF, after a read error, or on its next send now that
    // the queue is closed. A thread blocked reading a terminal is left to process exit.
    if reader.is_finished() {
        let _ = reader.join();
    }
    let outcomes = std::mem::take(&mut *lock(&outcomes));
    Ok(ProduceSummary {
        read,
        acknowledged: outcomes.acknowledged,
        failures: outcomes.by_partition,
        unplaced: outcomes.unplaced,
        input_error,
    })
}

/// Delivery results as they come.
#[derive(Debug, Default)]
struct Outcomes {
    acknowledged: u64,
    failed: u64,
    by_partition: BTreeMap<u32, PartitionOutcome>,
    unplaced: Option<PartitionOutcome>,
}

impl Outcomes {
    fn note(&mut self, delivery: Delivery) {
        match delivery {
            Ok(_) => self.acknowledged += 1,
            Err(e) => {
                self.failed += 1;
                let outcome = match e.partition {
                    Some(p) => self.by_partition.entry(p).or_default(),
                    None => self.unplaced.get_or_insert_with(PartitionOutcome::default),
                };
                outcome.failed += 1;
                outcome.error.get_or_insert(e.error);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a counter update: a poisoned lock still holds sound counts.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator() {
        let l = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        assert_eq!(split_line(l("k:v:w"), Some(b":")), (Some(l("k")), l("v:w")));
        assert_eq!(split_line(l("k::v"), Some(b"::")), (Some(l("k")), l("v")));
        assert_eq!(split_line(l(":v"), Some(b":")), (Some(l("")), l("v")));
        assert_eq!(split_line(l("no-sep"), Some(b":")), (None, l("no-sep")));
        assert_eq!(split_line(l("k:v"), None), (None, l("k:v")));
        assert_eq!(split_line(l("k:v"), Some(b"")), (None, l("k:v")));
    }

    #[test]
    fn failures_are_counted_per_partition() {
        let mut o = Outcomes::default();
        let e = |partition| {
            Err(runnel_client::producer::DeliveryError {
                topic: "t".into(),
                partition,
                error: error(10, "MESSAGE_TOO_LARGE", "big"),
            })
        };
        o.note(e(Some(1)));
        o.note(e(Some(1)));
        o.note(e(None));
        assert_eq!((o.failed, o.by_partition[&1].failed), (3, 2));
        assert_eq!(o.unplaced.as_ref().map(|u| u.failed), Some(1));
    }
}
