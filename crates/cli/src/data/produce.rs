//! `runnel produce`: one record per line of stdin, batched per partition.
//!
//! A thread reads stdin (lines are bytes, not necessarily UTF-8) into a bounded channel. The
//! [`Accumulator`] groups records into one open batch per partition and cuts it when it is
//! full (by bytes or records) or has lingered long enough. Each partition has one sender task
//! that sends its batches one at a time, in order, to the partition's leader (the
//! [`Router`] follows leadership changes). So records of one partition are appended in the
//! order they were read. A batch is retried as long as its errors are retriable (up to the
//! router's deadline); a retried batch may be appended twice if an earlier attempt's answer
//! was lost (at-least-once: there is no idempotent producer yet). Once a batch of a partition
//! fails for good, the partition's later batches are not sent, so a partition never has a
//! gap followed by newer records.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::record::MAX_VARLONG_LEN;
use runnel_storage::{BatchBuilder, Compression, NewRecord};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::partitioner::{Sticky, partition_for_key};
use super::router::Router;
use super::{code, error};
use crate::client::ClientError;

/// Lines read ahead of the batcher.
const LINES_QUEUED_MAX: usize = 4096;
/// Cut batches waiting for their partition's sender (each at most `batch_bytes_max`).
const BATCHES_QUEUED_PER_PARTITION_MAX: usize = 4;
/// How long the leader may wait for acks=all (the request's `timeout_ms`).
const ACKS_TIMEOUT_MS: u32 = 30_000;
/// Deadline of one Produce attempt: the acks wait plus slack for the network.
const PRODUCE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(35);
/// Upper bound of what a record adds to a batch beyond its key, value and headers' bytes:
/// the length, attributes, timestamp and offset deltas, and the key, value and header
/// count lengths, as varints.
const RECORD_OVERHEAD_MAX: usize = 1 + 6 * MAX_VARLONG_LEN;

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
    pub(crate) fn to_pb(self) -> pb::Acks {
        match self {
            Acks::All => pb::Acks::All,
            Acks::Leader => pb::Acks::Leader,
            Acks::None => pb::Acks::None,
        }
    }
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
}

/// A batch ready to send.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) partition: u32,
    pub(crate) records: usize,
    /// RecordBatch v2 bytes.
    pub(crate) batch: Vec<u8>,
}

#[derive(Debug)]
struct Open {
    builder: BatchBuilder,
    opened: Instant,
}

/// Groups records into one open batch per partition; pure (the caller passes the time).
#[derive(Debug)]
pub(crate) struct Accumulator {
    limits: BatchLimits,
    partitions: u32,
    /// `--partition`: every record goes there.
    fixed: Option<u32>,
    sticky: Sticky,
    open: BTreeMap<u32, Open>,
}

impl Accumulator {
    pub(crate) fn new(limits: BatchLimits, partitions: u32, fixed: Option<u32>, sticky_start: u32) -> Self {
        assert!(partitions > 0 && fixed.is_none_or(|p| p < partitions));
        assert!(limits.bytes_max > 0 && limits.records_max > 0);
        Accumulator {
            limits,
            partitions,
            fixed,
            sticky: Sticky::new(partitions, sticky_start),
            open: BTreeMap::new(),
        }
    }

    /// The partition a record goes to.
    pub(crate) fn partition_of(&mut self, key: Option<&[u8]>) -> u32 {
        match (self.fixed, key) {
            (Some(p), _) => p,
            (None, Some(key)) => partition_for_key(key, self.partitions),
            (None, None) => self.sticky.partition(),
        }
    }

    /// Adds a record; answers the batches this cut (none, or one or two: the partition's
    /// batch cut because the record did not fit, and its new batch if the record filled it).
    pub(crate) fn push(&mut self, record: NewRecord, now: Instant) -> Result<Vec<Ready>, ClientError> {
        let partition = self.partition_of(record.key.as_deref());
        let mut ready = Vec::new();
        let size = record_size_max(&record);
        if let Some(open) = self.open.get(&partition)
            && !open.builder.is_empty()
            && open.builder.estimated_size().saturating_add(size) > self.limits.bytes_max
        {
            ready.extend(self.cut(partition)?);
        }
        let open = self
            .open
            .entry(partition)
            .or_insert_with(|| Open { builder: BatchBuilder::new(Compression::None), opened: now });
        open.builder.push(record);
        if open.builder.len() >= self.limits.records_max
            || open.builder.estimated_size() >= self.limits.bytes_max
        {
            ready.extend(self.cut(partition)?);
        }
        Ok(ready)
    }

    /// When the oldest open batch has lingered enough.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.open.values().map(|o| o.opened + self.limits.linger).min()
    }

    /// Cuts every batch that has lingered enough at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> Result<Vec<Ready>, ClientError> {
        let due: Vec<u32> =
            self.open.iter().filter(|(_, o)| o.opened + self.limits.linger <= now).map(|(&p, _)| p).collect();
        let mut ready = Vec::with_capacity(due.len());
        for p in due {
            ready.extend(self.cut(p)?);
        }
        Ok(ready)
    }

    /// Cuts every open batch.
    pub(crate) fn flush(&mut self) -> Result<Vec<Ready>, ClientError> {
        let open: Vec<u32> = self.open.keys().copied().collect();
        let mut ready = Vec::with_capacity(open.len());
        for p in open {
            ready.extend(self.cut(p)?);
        }
        Ok(ready)
    }

    fn cut(&mut self, partition: u32) -> Result<Option<Ready>, ClientError> {
        let Some(open) = self.open.remove(&partition) else { return Ok(None) };
        self.sticky.batch_cut(partition);
        let records = open.builder.len();
        let batch = open.builder.build().map_err(|e| {
            error(code::INVALID_REQUEST, "INVALID_RECORD", format!("cannot build a batch: {e}"))
        })?;
        Ok(Some(Ready { partition, records, batch }))
    }
}

/// At most the bytes `record` adds to an uncompressed batch.
fn record_size_max(record: &NewRecord) -> usize {
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
    pub(crate) limits: BatchLimits,
}

/// What happened to the records of one partition.
#[derive(Debug, Default)]
pub(crate) struct PartitionOutcome {
    pub(crate) acknowledged: u64,
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

/// Sends one partition's batches in order; after a batch fails for good the rest are
/// counted as failed without being sent.
async fn send_partition(
    router: Arc<Router>,
    topic: String,
    partition: u32,
    acks: Acks,
    mut batches: mpsc::Receiver<Ready>,
) -> (u32, PartitionOutcome) {
    let mut outcome = PartitionOutcome::default();
    while let Some(ready) = batches.recv().await {
        let records = ready.records as u64;
        if outcome.error.is_some() {
            outcome.failed += records;
            continue;
        }
        let request = pb::ProduceRequest {
            topic: topic.clone(),
            partition,
            acks: acks.to_pb() as i32,
            timeout_ms: ACKS_TIMEOUT_MS,
            data: Some(pb::produce_request::Data::Batch(Bytes::from(ready.batch))),
            producer: None,
        };
        let answer = router
            .call(&topic, partition, PRODUCE_ATTEMPT_TIMEOUT, |mut client| {
                let request = request.clone();
                async move { client.produce(request).await.map(tonic::Response::into_inner) }
            })
            .await;
        match answer {
            Ok(response) => {
                let answered =
                    response.last_offset.checked_sub(response.base_offset).and_then(|d| d.checked_add(1));
                if acks != Acks::None && answered != i64::try_from(records).ok() {
                    tracing::warn!(
                        partition,
                        records,
                        base_offset = response.base_offset,
                        last_offset = response.last_offset,
                        "the broker's offsets do not match the batch's record count"
                    );
                }
                outcome.acknowledged += records;
            }
            Err(e) => {
                outcome.failed += records;
                outcome.error = Some(e);
            }
        }
    }
    (partition, outcome)
}

/// `runnel produce`.
pub(crate) async fn produce(
    router: Arc<Router>,
    options: ProduceOptions,
) -> Result<ProduceSummary, ClientError> {
    let partitions = router.partition_count(&options.topic).await?;
    if let Some(p) = options.partition.filter(|&p| p >= partitions) {
        return Err(error(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            "UNKNOWN_TOPIC_OR_PARTITION",
            format!("topic {:?} has {partitions} partitions; there is no partition {p}", options.topic),
        ));
    }
    let sticky_start = rand::random::<u32>();
    let mut acc = Accumulator::new(options.limits, partitions, options.partition, sticky_start);
    let separator = options.key_separator.as_deref().map(str::as_bytes);

    let (line_tx, mut lines) = mpsc::channel(LINES_QUEUED_MAX);
    let reader = spawn_stdin_reader(line_tx).map_err(|e| {
        error(code::INVALID_REQUEST, "INVALID_REQUEST", format!("cannot start the stdin reader: {e}"))
    })?;

    let mut senders: BTreeMap<u32, mpsc::Sender<Ready>> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    let mut summary = ProduceSummary::default();

    loop {
        let next = match acc.next_due() {
            Some(due) => match tokio::time::timeout_at(due.into(), lines.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    let ready = acc.due(Instant::now());
                    dispatch(ready, &mut senders, &mut tasks, &router, &options).await?;
                    continue;
                }
            },
            None => lines.recv().await,
        };
        match next {
            Some(Ok(line)) => {
                summary.read += 1;
                let (key, value) = split_line(line, separator);
                let record =
                    NewRecord { key, value: Some(value), headers: Vec::new(), timestamp_ms: now_ms() };
                let ready = acc.push(record, Instant::now());
                dispatch(ready, &mut senders, &mut tasks, &router, &options).await?;
            }
            Some(Err(e)) => {
                summary.input_error =
                    Some(error(code::INVALID_REQUEST, "INVALID_REQUEST", format!("reading stdin: {e}")));
                break;
            }
            None => break,
        }
    }
    dispatch(acc.flush(), &mut senders, &mut tasks, &router, &options).await?;
    // Closing the queues lets each sender finish what it has and return.
    drop(senders);
    drop(lines);
    while let Some(joined) = tasks.join_next().await {
        let (partition, outcome) =
            joined.map_err(|e| error(-1, "UNKNOWN_SERVER_ERROR", format!("sender task: {e}")))?;
        summary.acknowledged += outcome.acknowledged;
        if outcome.failed > 0 {
            summary.failures.insert(partition, outcome);
        }
    }
    // The reader thread has ended: at EOF, after a read error, or on its next send now that
    // the queue is closed. A thread blocked reading a terminal is left to process exit.
    if reader.is_finished() {
        let _ = reader.join();
    }
    Ok(summary)
}

/// Queues cut batches for their partitions' senders, starting a sender on first use.
async fn dispatch(
    ready: Result<Vec<Ready>, ClientError>,
    senders: &mut BTreeMap<u32, mpsc::Sender<Ready>>,
    tasks: &mut JoinSet<(u32, PartitionOutcome)>,
    router: &Arc<Router>,
    options: &ProduceOptions,
) -> Result<(), ClientError> {
    for batch in ready? {
        let partition = batch.partition;
        let sender = senders.entry(partition).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(BATCHES_QUEUED_PER_PARTITION_MAX);
            tasks.spawn(send_partition(router.clone(), options.topic.clone(), partition, options.acks, rx));
            tx
        });
        // A sender only stops when its queue closes, so this cannot fail while we hold it.
        if sender.send(batch).await.is_err() {
            return Err(error(
                -1,
                "UNKNOWN_SERVER_ERROR",
                format!("the sender of partition {partition} stopped"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use runnel_storage::decode_batch;

    use super::*;

    fn limits(bytes_max: usize, records_max: usize) -> BatchLimits {
        BatchLimits { bytes_max, records_max, linger: Duration::from_millis(5) }
    }

    fn rec(key: Option<&str>, value: &str) -> NewRecord {
        NewRecord {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000,
        }
    }

    fn values(ready: &Ready) -> Vec<String> {
        let (_, records) = decode_batch(&ready.batch, &Default::default()).unwrap();
        records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect()
    }

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
    fn batches_are_cut_by_count_and_keep_order() {
        let t = Instant::now();
        let mut acc = Accumulator::new(limits(1 << 20, 3), 1, None, 0);
        let mut ready = Vec::new();
        for i in 0..7 {
            ready.extend(acc.push(rec(None, &i.to_string()), t).unwrap());
        }
        ready.extend(acc.flush().unwrap());
        let got: Vec<Vec<String>> = ready.iter().map(values).collect();
        assert_eq!(got, [vec!["0", "1", "2"], vec!["3", "4", "5"], vec!["6"]]);
        assert!(ready.iter().all(|r| r.partition == 0 && r.records == values(r).len()));
        assert!(acc.flush().unwrap().is_empty());
    }

    #[test]
    fn batches_are_cut_by_bytes_and_never_exceed_the_limit() {
        let t = Instant::now();
        let bytes_max = 300;
        let mut acc = Accumulator::new(limits(bytes_max, 1000), 1, None, 0);
        let mut ready = Vec::new();
        for i in 0..50 {
            ready.extend(acc.push(rec(None, &format!("value-{i:04}")), t).unwrap());
        }
        ready.extend(acc.flush().unwrap());
        assert!(ready.len() > 2);
        assert!(
            ready.iter().all(|r| r.batch.len() <= bytes_max),
            "{:?}",
            ready.iter().map(|r| r.batch.len()).collect::<Vec<_>>()
        );
        let all: Vec<String> = ready.iter().flat_map(values).collect();
        let expected: Vec<String> = (0..50).map(|i| format!("value-{i:04}")).collect();
        assert_eq!(all, expected);
        // A record bigger than the limit is a batch of its own.
        let big = "x".repeat(bytes_max * 2);
        let mut acc = Accumulator::new(limits(bytes_max, 1000), 1, None, 0);
        assert!(acc.push(rec(None, "small"), t).unwrap().is_empty());
        let cut = acc.push(rec(None, &big), t).unwrap();
        assert_eq!(cut.iter().map(|r| r.records).collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn batches_linger_then_are_due() {
        let t = Instant::now();
        let mut acc = Accumulator::new(limits(1 << 20, 1000), 2, None, 0);
        assert_eq!(acc.next_due(), None);
        assert!(acc.push(rec(Some("k"), "a"), t).unwrap().is_empty());
        assert_eq!(acc.next_due(), Some(t + Duration::from_millis(5)));
        assert!(acc.due(t + Duration::from_millis(4)).unwrap().is_empty());
        let due = acc.due(t + Duration::from_millis(5)).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(acc.next_due(), None);
    }

    #[test]
    fn keyed_records_follow_murmur2_and_keyless_ones_stick_per_batch() {
        let t = Instant::now();
        let mut acc = Accumulator::new(limits(1 << 20, 2), 3, None, 1);
        for key in ["a", "b", "user-7", ""] {
            assert_eq!(acc.partition_of(Some(key.as_bytes())), partition_for_key(key.as_bytes(), 3));
        }
        // Keyless: partition 1 until its batch (2 records) is cut, then 2, then 0.
        let mut order = Vec::new();
        for i in 0..6 {
            for r in acc.push(rec(None, &i.to_string()), t).unwrap() {
                order.push((r.partition, values(&r)));
            }
        }
        assert_eq!(
            order,
            [
                (1, vec!["0".to_owned(), "1".into()]),
                (2, vec!["2".into(), "3".into()]),
                (0, vec!["4".into(), "5".into()])
            ]
        );
        // --partition wins over keys.
        let mut fixed = Accumulator::new(limits(1 << 20, 2), 3, Some(2), 0);
        assert_eq!(fixed.partition_of(Some(b"a")), 2);
        assert_eq!(fixed.partition_of(None), 2);
    }
}
