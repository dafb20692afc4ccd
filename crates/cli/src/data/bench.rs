//! `runnel bench produce|consume`: throughput and latency, in the manner of Kafka's
//! `kafka-producer-perf-test` and `kafka-consumer-perf-test`.
//!
//! Produce: `--concurrency` workers each send batches over `ProduceStream`s (one per leader
//! they write to) with at most `--max-in-flight` requests outstanding per stream. A worker
//! writes to its share of the partitions, one batch per partition in turn. Latency is measured
//! per batch, from sending the request to its answer: what each record of the batch waits.
//! A batch whose answer is a retriable error (leadership moved) is sent again, to the new
//! leader, until the router's deadline; so under leader changes a record may be written twice
//! and partitions are not kept in order (a benchmark needs neither).
//!
//! Consume: one `FetchStream` reader per partition from the log start, decoding every batch
//! into records, until `--num-records` or, without it, the high watermark each partition had
//! at the start.
//!
//! Megabytes are 10^6 bytes. Payload bytes are the records' keys and values (as Kafka's tools
//! count), not the batch framing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use rand::distributions::Alphanumeric;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::{BatchBuilder, Compression, NewRecord};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use super::consume::{PartitionReader, list_offset};
use super::partitioner::partition_for_key;
use super::produce::{Acks, now_ms};
use super::router::{Backoff, Failure, LEADER_RETRY_DEADLINE, Next, Router};
use super::{code, error, payload_len};
use crate::client::ClientError;

/// How long the leader may wait for acks=all.
const ACKS_TIMEOUT_MS: u32 = 30_000;
/// Deadline of opening a stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the last answers are waited for once every batch is sent: the acks wait plus
/// the leader-retry deadline.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(65);
/// Longest a benchmark may be asked to run.
pub(crate) const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Errors kept for the report (the rest are counted).
const ERRORS_KEPT_MAX: usize = 10;

/// What `runnel bench produce` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct ProduceBench {
    pub(crate) topic: String,
    pub(crate) record_size: usize,
    /// Stop after this many records (when `duration` is `None`).
    pub(crate) num_records: u64,
    /// Or stop sending after this long.
    pub(crate) duration: Option<Duration>,
    /// Records per second over all workers; `None`: as fast as possible.
    pub(crate) throughput: Option<f64>,
    pub(crate) concurrency: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) acks: Acks,
    /// The partitions to write; empty: all.
    pub(crate) partitions: Vec<u32>,
    /// Draw keys from a keyspace of this many (`key-0` ... `key-{n-1}`); `None`: no keys.
    pub(crate) keys: Option<u32>,
    /// Payload bytes per batch (at least one record per batch).
    pub(crate) batch_size: usize,
}

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub(crate) struct Latencies(Vec<u32>);

impl Latencies {
    fn record(&mut self, d: Duration) {
        self.0.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
    }

    /// Milliseconds at percentile `p` (0..=100) by nearest rank; the samples must be sorted.
    fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        // The epsilon keeps float error (0.999 * 1000 = 999.0000000000001) from adding a rank.
        let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
        f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
    }

    /// `{"avg", "p50", "p99", "p999", "max"}` in milliseconds.
    pub(crate) fn summary(mut self) -> Value {
        self.0.sort_unstable();
        let s = &self.0;
        let avg = if s.is_empty() {
            0.0
        } else {
            s.iter().map(|&u| f64::from(u)).sum::<f64>() / s.len() as f64 / 1000.0
        };
        json!({
            "avg": round3(avg),
            "p50": round3(Self::percentile_ms(s, 50.0)),
            "p99": round3(Self::percentile_ms(s, 99.0)),
            "p999": round3(Self::percentile_ms(s, 99.9)),
            "max": round3(s.last().map_or(0.0, |&u| f64::from(u) / 1000.0)),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Which partitions worker `w` of `workers` writes: every `workers`-th one when there are at
/// least as many partitions as workers, else one partition shared with other workers.
pub(crate) fn worker_partitions(partitions: &[u32], w: usize, workers: usize) -> Vec<u32> {
    assert!(!partitions.is_empty() && workers > 0 && w < workers);
    if workers <= partitions.len() {
        partitions.iter().enumerate().filter(|(i, _)| i % workers == w).map(|(_, &p)| p).collect()
    } else {
        vec![partitions[w % partitions.len()]]
    }
}

/// Takes up to `want` records from the shared budget; answers how many were granted.
fn claim(budget: &AtomicU64, want: u64) -> u64 {
    let mut granted = 0;
    let _ = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
        granted = left.min(want);
        Some(left - granted)
    });
    granted
}

/// A batch sent (or to send again).
#[derive(Debug)]
struct Pending {
    partition: u32,
    records: u64,
    batch: Bytes,
    /// When the batch was first sent: its retry deadline runs from here.
    first_sent: Instant,
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    sent: Instant,
    pending: Pending,
}

/// One answer of a ProduceStream, stamped when it arrived.
type Answer = (Instant, Result<Option<pb::ProduceStreamResponse>, tonic::Status>);

/// One ProduceStream to one broker. A task reads its answers as they arrive, so latencies
/// do not include the time the worker spends pacing or building batches.
#[derive(Debug)]
struct Conn {
    addr: String,
    tx: mpsc::Sender<pb::ProduceStreamRequest>,
    answers: mpsc::Receiver<Answer>,
    reader: tokio::task::JoinHandle<()>,
    in_flight: VecDeque<InFlight>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// What one worker measured.
#[derive(Debug, Default)]
struct WorkerReport {
    acknowledged: u64,
    failed: u64,
    batches: u64,
    retried: u64,
    latencies: Latencies,
    errors: Vec<String>,
    errors_total: u64,
}

impl WorkerReport {
    fn fail(&mut self, records: u64, error: &ClientError) {
        self.failed += records;
        self.errors_total += 1;
        if self.errors.len() < ERRORS_KEPT_MAX {
            self.errors.push(error.to_string());
        }
    }
}

#[derive(Debug)]
struct Worker {
    router: Arc<Router>,
    bench: Arc<ProduceBench>,
    partitions: Vec<u32>,
    /// Per partition of this worker: the keys that hash to it (empty without --keys).
    keys: HashMap<u32, Vec<Bytes>>,
    payload: Bytes,
    conns: HashMap<String, Conn>,
    retries: VecDeque<Pending>,
    next_id: u64,
    report: WorkerReport,
}

impl Worker {
    /// Builds a batch of `records` records for `partition`.
    fn build(&self, partition: u32, records: u64) -> Result<Bytes, ClientError> {
        let mut builder = BatchBuilder::new(Compression::None);
        let ts = now_ms();
        let keys = self.keys.get(&partition).filter(|k| !k.is_empty());
        let mut rng = rand::thread_rng();
        for _ in 0..records {
            let key = keys.map(|k| k[rng.gen_range(0..k.len())].clone());
            builder.push(NewRecord {
                key,
                value: Some(self.payload.clone()),
                headers: Vec::new(),
                timestamp_ms: ts,
            });
        }
        builder
            .build()
            .map(Bytes::from)
            .map_err(|e| error(code::INVALID_REQUEST, "INVALID_RECORD", format!("cannot build a batch: {e}")))
    }

    /// Sends `pending` to its partition's leader, waiting for room in that stream's window.
    async fn send(&mut self, pending: Pending) {
        let addr = match self.router.leader(&self.bench.topic, pending.partition).await {
            Ok(addr) => addr,
            Err(failure) => return self.retry_later(pending, &failure),
        };
        if !self.conns.contains_key(&addr) {
            match self.open(&addr).await {
                Ok(conn) => {
                    self.conns.insert(addr.clone(), conn);
                }
                Err(failure) => return self.retry_later(pending, &failure),
            }
        }
        while self.conns.get(&addr).is_some_and(|c| c.in_flight.len() >= self.bench.max_in_flight) {
            self.receive(&addr).await;
        }
        let Some(conn) = self.conns.get_mut(&addr) else {
            // The stream failed while we waited for room; its batches are queued for retry.
            return self.retries.push_back(pending);
        };
        let id = self.next_id;
        self.next_id += 1;
        let request = pb::ProduceStreamRequest {
            id,
            request: Some(pb::ProduceRequest {
                topic: self.bench.topic.clone(),
                partition: pending.partition,
                acks: self.bench.acks.to_pb() as i32,
                timeout_ms: ACKS_TIMEOUT_MS,
                data: Some(pb::produce_request::Data::Batch(pending.batch.clone())),
                producer: None,
            }),
        };
        // The channel holds a whole window, so this waits only if the stream stalls.
        if conn.tx.send(request).await.is_err() {
            self.broken(&addr, "the produce stream closed");
            return self.retries.push_back(pending);
        }
        conn.in_flight.push_back(InFlight { id, sent: Instant::now(), pending });
    }

    async fn open(&self, addr: &str) -> Result<Conn, Failure> {
        let mut client = self.router.client(addr).map_err(|error| Failure { error, next: Next::Fail })?;
        // Room for a whole window: sends never wait on the stream while it is healthy.
        let (tx, rx) = mpsc::channel(self.bench.max_in_flight + 1);
        match tokio::time::timeout(OPEN_TIMEOUT, client.produce_stream(ReceiverStream::new(rx))).await {
            Ok(Ok(response)) => {
                let mut responses = response.into_inner();
                let (answer_tx, answers) = mpsc::channel(self.bench.max_in_flight + 1);
                let reader = tokio::spawn(async move {
                    loop {
                        let answer = responses.message().await;
                        let last = !matches!(answer, Ok(Some(_)));
                        if answer_tx.send((Instant::now(), answer)).await.is_err() || last {
                            return;
                        }
                    }
                });
                Ok(Conn { addr: addr.to_owned(), tx, answers, reader, in_flight: VecDeque::new() })
            }
            Ok(Err(status)) => Err(Failure::from_status(status, addr)),
            Err(_) => Err(Failure {
                error: error(
                    code::REQUEST_TIMED_OUT,
                    "REQUEST_TIMED_OUT",
                    format!("broker {addr} did not open a produce stream"),
                ),
                next: Next::Refresh,
            }),
        }
    }

    /// Waits for the next answer on the stream to `addr` and accounts for it.
    async fn receive(&mut self, addr: &str) {
        let Some(conn) = self.conns.get_mut(addr) else { return };
        let (arrived, response) = match conn.answers.recv().await {
            Some((at, Ok(Some(response)))) => (at, response),
            None | Some((_, Ok(None))) => return self.broken(addr, "the produce stream ended"),
            Some((_, Err(status))) => {
                let failure = Failure::from_status(status, addr);
                return self.broken(addr, &failure.error.to_string());
            }
        };
        let Some(front) = conn.in_flight.pop_front() else {
            return self.broken(addr, &format!("an answer (id {}) to no request", response.id));
        };
        if front.id != response.id {
            // Answers come in request order; anything else breaks the protocol.
            let msg = format!("answer id {} where {} was expected", response.id, front.id);
            conn.in_flight.push_front(front);
            return self.broken(addr, &msg);
        }
        match response.result {
            Some(pb::produce_stream_response::Result::Response(_)) => {
                self.report.latencies.record(arrived.saturating_duration_since(front.sent));
                self.report.acknowledged += front.pending.records;
                self.report.batches += 1;
            }
            Some(pb::produce_stream_response::Result::Error(e)) => {
                let failure = Failure::from_pb(&e, addr);
                self.retry_later(front.pending, &failure);
            }
            None => {
                let e = error(
                    -1,
                    "UNKNOWN_SERVER_ERROR",
                    format!("answer {} carries neither a response nor an error", response.id),
                );
                self.report.fail(front.pending.records, &e);
            }
        }
    }

    /// The stream to `addr` failed: its unanswered batches go back to the retry queue.
    fn broken(&mut self, addr: &str, why: &str) {
        let Some(mut conn) = self.conns.remove(addr) else { return };
        tracing::debug!(addr = conn.addr, why, in_flight = conn.in_flight.len(), "produce stream broken");
        self.router.invalidate(&self.bench.topic);
        let failure = Failure {
            error: error(code::NETWORK_EXCEPTION, "NETWORK_EXCEPTION", format!("broker {addr}: {why}")),
            next: Next::Refresh,
        };
        for f in std::mem::take(&mut conn.in_flight) {
            self.retry_later(f.pending, &failure);
        }
    }

    /// Queues a failed batch to be sent again, or counts it as failed when its error is
    /// final or its deadline passed.
    fn retry_later(&mut self, pending: Pending, failure: &Failure) {
        self.router.note_failure(&self.bench.topic, pending.partition, failure);
        let expired = pending.first_sent.elapsed() >= LEADER_RETRY_DEADLINE;
        if failure.retriable() && !expired {
            self.report.retried += 1;
            self.retries.push_back(pending);
        } else {
            let mut e = failure.error.clone();
            if expired {
                e.message = format!(
                    "{} (partition {}, gave up after {:?})",
                    e.message, pending.partition, LEADER_RETRY_DEADLINE
                );
            }
            self.report.fail(pending.records, &e);
        }
    }

    /// Sends every queued retry once, after a backoff pause.
    async fn resend(&mut self, backoff: &mut Backoff) {
        if self.retries.is_empty() {
            backoff.reset();
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
        let queued: Vec<Pending> = self.retries.drain(..).collect();
        for p in queued {
            self.send(p).await;
        }
    }

    fn in_flight(&self) -> usize {
        self.conns.values().map(|c| c.in_flight.len()).sum()
    }

    async fn run(
        mut self,
        budget: Arc<AtomicU64>,
        start: Instant,
        sent_total: Arc<AtomicU64>,
    ) -> WorkerReport {
        let bench = self.bench.clone();
        let per_batch = (bench.batch_size / bench.record_size.max(1)).max(1) as u64;
        let stop_at = bench.duration.map(|d| start + d);
        let mut backoff = Backoff::new();
        let mut turn = 0usize;
        loop {
            if stop_at.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            self.resend(&mut backoff).await;
            let want = if stop_at.is_some() { per_batch } else { claim(&budget, per_batch) };
            if want == 0 {
                break;
            }
            if let Some(rate) = bench.throughput {
                // Pace on the records sent by every worker: record n is due at start + n/rate.
                let n = sent_total.fetch_add(want, Ordering::Relaxed) + want;
                // A due time past what Duration holds is never reached: stop sending.
                let Ok(offset) = Duration::try_from_secs_f64(n as f64 / rate) else { break };
                let Some(due) = start.checked_add(offset) else { break };
                if stop_at.is_some_and(|t| due > t) {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            let partition = self.partitions[turn % self.partitions.len()];
            turn = turn.wrapping_add(1);
            match self.build(partition, want) {
                Ok(batch) => {
                    self.send(Pending { partition, records: want, batch, first_sent: Instant::now() }).await
                }
                Err(e) => {
                    self.report.fail(want, &e);
                    break;
                }
            }
        }
        // Drain: every answer, and every retry, within a bound.
        let drain_until = Instant::now() + DRAIN_TIMEOUT;
        while (self.in_flight() > 0 || !self.retries.is_empty()) && Instant::now() < drain_until {
            self.resend(&mut backoff).await;
            let Some(addr) = self.conns.iter().find(|(_, c)| !c.in_flight.is_empty()).map(|(a, _)| a.clone())
            else {
                continue;
            };
            let left = drain_until.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, self.receive(&addr)).await.is_err() {
                break;
            }
        }
        let lost: u64 =
            self.conns.values().flat_map(|c| &c.in_flight).map(|f| f.pending.records).sum::<u64>()
                + self.retries.iter().map(|p| p.records).sum::<u64>();
        if lost > 0 {
            let e = error(
                code::REQUEST_TIMED_OUT,
                "REQUEST_TIMED_OUT",
                format!("no answer within {DRAIN_TIMEOUT:?} of the end"),
            );
            self.report.fail(lost, &e);
        }
        self.report
    }
}

/// The partitions a benchmark uses: `--partitions`, checked, or every one.
async fn bench_partitions(router: &Router, topic: &str, asked: &[u32]) -> Result<Vec<u32>, ClientError> {
    let count = router.partition_count(topic).await?;
    if asked.is_empty() {
        return Ok((0..count).collect());
    }
    if let Some(p) = asked.iter().find(|&&p| p >= count) {
        return Err(error(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            "UNKNOWN_TOPIC_OR_PARTITION",
            format!("topic {topic:?} has {count} partitions; there is no partition {p}"),
        ));
    }
    let mut ps = asked.to_vec();
    ps.sort_unstable();
    ps.dedup();
    Ok(ps)
}

/// `runnel bench produce`: the report as JSON (see the README).
pub(crate) async fn produce(router: Arc<Router>, bench: ProduceBench) -> Result<Value, ClientError> {
    let count = router.partition_count(&bench.topic).await?;
    let mut partitions = bench_partitions(&router, &bench.topic, &bench.partitions).await?;
    let mut keys_by_partition: HashMap<u32, Vec<Bytes>> = HashMap::new();
    if let Some(n) = bench.keys {
        for i in 0..n {
            let key = Bytes::from(format!("key-{i}"));
            keys_by_partition.entry(partition_for_key(&key, count)).or_default().push(key);
        }
        // A partition no key of the keyspace hashes to gets no keyed record.
        partitions.retain(|p| keys_by_partition.contains_key(p));
        if partitions.is_empty() {
            return Err(error(
                code::INVALID_REQUEST,
                "INVALID_REQUEST",
                "no key of the keyspace hashes to the partitions chosen",
            ));
        }
    }
    let concurrency = bench.concurrency.max(1);
    let mut rng = rand::thread_rng();
    let payload: Bytes =
        (&mut rng).sample_iter(Alphanumeric).take(bench.record_size).collect::<Vec<u8>>().into();
    let bench = Arc::new(bench);
    let budget = Arc::new(AtomicU64::new(bench.num_records));
    let sent_total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for w in 0..concurrency {
        let mine = worker_partitions(&partitions, w, concurrency);
        let keys = mine.iter().filter_map(|p| keys_by_partition.get(p).map(|k| (*p, k.clone()))).collect();
        let worker = Worker {
            router: router.clone(),
            bench: bench.clone(),
            partitions: mine,
            keys,
            payload: payload.clone(),
            conns: HashMap::new(),
            retries: VecDeque::new(),
            next_id: 0,
            report: WorkerReport::default(),
        };
        tasks.spawn(worker.run(budget.clone(), start, sent_total.clone()));
    }
    let mut total = WorkerReport::default();
    while let Some(joined) = tasks.join_next().await {
        let r = joined.map_err(|e| error(-1, "UNKNOWN_SERVER_ERROR", format!("bench worker: {e}")))?;
        total.acknowledged += r.acknowledged;
        total.failed += r.failed;
        total.batches += r.batches;
        total.retried += r.retried;
        total.latencies.0.extend(r.latencies.0);
        total.errors_total += r.errors_total;
        total.errors.extend(r.errors.into_iter().take(ERRORS_KEPT_MAX.saturating_sub(total.errors.len())));
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let bytes = total.acknowledged * bench.record_size as u64;
    Ok(json!({
        "test": "produce",
        "topic": bench.topic,
        "partitions": partitions,
        "concurrency": concurrency,
        "acks": match bench.acks { Acks::All => "all", Acks::Leader => "1", Acks::None => "0" },
        "record_size": bench.record_size,
        "batch_size": bench.batch_size,
        "records": total.acknowledged,
        "failed_records": total.failed,
        "batches": total.batches,
        "retried_batches": total.retried,
        "bytes": bytes,
        "elapsed_s": round3(elapsed),
        "records_per_s": round3(total.acknowledged as f64 / elapsed),
        "mb_per_s": round3(bytes as f64 / 1e6 / elapsed),
        "latency_ms": total.latencies.summary(),
        "errors": total.errors,
        "errors_total": total.errors_total,
    }))
}

/// What `runnel bench consume` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct ConsumeBench {
    pub(crate) topic: String,
    /// Stop after this many records; `None`: at the high watermark each partition had at the
    /// start.
    pub(crate) num_records: Option<u64>,
    /// The partitions to read; empty: all.
    pub(crate) partitions: Vec<u32>,
    /// Give up after this long.
    pub(crate) timeout: Duration,
}

/// What one reader counted.
#[derive(Debug, Default)]
struct ReadCount {
    records: u64,
    bytes: u64,
    chunks: u64,
}

/// `runnel bench consume`: the report as JSON (see the README).
pub(crate) async fn consume(router: Arc<Router>, bench: ConsumeBench) -> Result<Value, ClientError> {
    let partitions = bench_partitions(&router, &bench.topic, &bench.partitions).await?;
    let mut ranges = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let from = list_offset(&router, &bench.topic, p, pb::OffsetSpec::Earliest).await?;
        let end = match bench.num_records {
            Some(_) => None,
            None => Some(list_offset(&router, &bench.topic, p, pb::OffsetSpec::Latest).await?),
        };
        ranges.push((p, from, end));
    }
    let budget = Arc::new(AtomicU64::new(bench.num_records.unwrap_or(u64::MAX)));
    let start = Instant::now();
    let deadline = start + bench.timeout;
    let mut tasks = JoinSet::new();
    for (p, from, end) in ranges {
        let mut reader = PartitionReader::new(router.clone(), bench.topic.clone(), p, from, end);
        let budget = budget.clone();
        tasks.spawn(async move {
            let mut count = ReadCount::default();
            loop {
                if budget.load(Ordering::Relaxed) == 0 {
                    return Ok(count);
                }
                let chunk = match tokio::time::timeout_at(deadline.into(), reader.next_chunk()).await {
                    Err(_) => return Ok(count),
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(None)) => return Ok(count),
                    Ok(Ok(Some(chunk))) => chunk,
                };
                let granted = claim(&budget, chunk.records.len() as u64);
                count.chunks += 1;
                count.records += granted;
                count.bytes +=
                    chunk.records.iter().take(granted as usize).map(|r| payload_len(r) as u64).sum::<u64>();
                if granted < chunk.records.len() as u64 {
                    return Ok(count);
                }
            }
        });
    }
    let mut total = ReadCount::default();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(c)) => {
                total.records += c.records;
                total.bytes += c.bytes;
                total.chunks += c.chunks;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(error(-1, "UNKNOWN_SERVER_ERROR", format!("bench reader: {e}")));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    if let Some(n) = bench.num_records.filter(|&n| total.records < n) {
        return Err(error(
            code::REQUEST_TIMED_OUT,
            "REQUEST_TIMED_OUT",
            format!("read {} of {n} records within {:?}", total.records, bench.timeout),
        ));
    }
    Ok(json!({
        "test": "consume",
        "topic": bench.topic,
        "partitions": partitions,
        "records": total.records,
        "bytes": total.bytes,
        "fetch_responses": total.chunks,
        "elapsed_s": round3(elapsed),
        "records_per_s": round3(total.records as f64 / elapsed),
        "mb_per_s": round3(total.bytes as f64 / 1e6 / elapsed),
    }))
}

/// The text form of a report.
pub(crate) fn text(report: &Value) -> String {
    let f = |k: &str| report[k].as_f64().unwrap_or(0.0);
    let u = |k: &str| report[k].as_u64().unwrap_or(0);
    if report["test"] == "produce" {
        let l = &report["latency_ms"];
        let ms = |k: &str| l[k].as_f64().unwrap_or(0.0);
        let mut out = format!(
            "{} records sent in {:.2} s: {:.1} records/s, {:.2} MB/s (MB = 10^6 bytes); {} batches, \
             latency per batch: avg {:.2} ms, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms\n",
            u("records"),
            f("elapsed_s"),
            f("records_per_s"),
            f("mb_per_s"),
            u("batches"),
            ms("avg"),
            ms("p50"),
            ms("p99"),
            ms("p999"),
            ms("max"),
        );
        if u("failed_records") > 0 {
            out += &format!("{} records failed ({} errors)\n", u("failed_records"), u("errors_total"));
            for e in report["errors"].as_array().into_iter().flatten() {
                out += &format!("  {}\n", e.as_str().unwrap_or_default());
            }
        }
        out
    } else {
        format!(
            "{} records read in {:.2} s: {:.1} records/s, {:.2} MB/s (MB = 10^6 bytes), {} fetch responses\n",
            u("records"),
            f("elapsed_s"),
            f("records_per_s"),
            f("mb_per_s"),
            u("fetch_responses"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_shared_out_among_workers() {
        let ps = [0, 1, 2, 3, 4];
        assert_eq!(worker_partitions(&ps, 0, 2), [0, 2, 4]);
        assert_eq!(worker_partitions(&ps, 1, 2), [1, 3]);
        assert_eq!(worker_partitions(&ps, 0, 1), ps);
        assert_eq!(worker_partitions(&[7, 9], 2, 4), [7]);
        assert_eq!(worker_partitions(&[7, 9], 3, 4), [9]);
    }

    #[test]
    fn the_record_budget_is_never_overdrawn() {
        let budget = AtomicU64::new(10);
        assert_eq!(claim(&budget, 4), 4);
        assert_eq!(claim(&budget, 4), 4);
        assert_eq!(claim(&budget, 4), 2);
        assert_eq!(claim(&budget, 4), 0);
    }

    #[test]
    fn latency_percentiles_use_nearest_rank() {
        let mut l = Latencies::default();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        let s = l.summary();
        assert_eq!(s["p50"], 500.0);
        assert_eq!(s["p99"], 990.0);
        assert_eq!(s["p999"], 999.0);
        assert_eq!(s["max"], 1000.0);
        assert_eq!(s["avg"], 500.5);
        assert_eq!(Latencies::default().summary()["max"], 0.0);
    }
}
