//! `runnel bench produce|consume`: throughput and latency, in the manner of Kafka's
//! `kafka-producer-perf-test` and `kafka-consumer-perf-test`.
//!
//! Produce: `--concurrency` workers, each with a [`Producer`] of its own (so its own produce
//! streams, one per partition) and at most `--max-in-flight` batches outstanding per
//! partition. A worker writes to its share of the partitions, one batch's worth of records
//! (as many as the producer fits in `--batch-size` bytes) to one partition, then to the next.
//! Latency is measured per batch: from handing the last record of each run to the producer
//! (which fills the batch, so the producer sends it at once) to that
//! record's acknowledgement, i.e. what the batch's request waits. Retriable errors are retried
//! by the producer; the benchmark runs it without idempotence (its window may exceed the five
//! batches idempotence allows), so under leader changes a record may be written twice.
//!
//! Consume: one `FetchStream` reader per partition from the log start, decoding every batch
//! into records, until `--num-records` or, without it, the high watermark each partition had
//! at the start.
//!
//! Megabytes are 10^6 bytes. Payload bytes are the records' keys and values (as Kafka's tools
//! count), not the batch framing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use rand::distributions::Alphanumeric;
use runnel_client::producer::{Producer, ProducerConfig, ProducerRecord, ProducerStats, records_per_batch};
use runnel_proto::pb::runnel::v1 as pb;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::consume::{PartitionReader, list_offset};
use super::partitioner::partition_for_key;
use super::produce::{Acks, now_ms};
use super::router::Router;
use super::{code, error, payload_len};
use crate::client::ClientError;

/// How long a record may take to be acknowledged, retries included (it bounds the wait for
/// the last answers too).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
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
    /// The producers' linger.
    pub(crate) linger: Duration,
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

/// What the workers measured, updated by the producers' callbacks.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: u64,
    failed: u64,
    latencies: Latencies,
    errors: Vec<String>,
    errors_total: u64,
}

impl Tally {
    fn fail(&mut self, records: u64, error: &ClientError) {
        self.failed += records;
        self.errors_total += 1;
        if self.errors.len() < ERRORS_KEPT_MAX {
            self.errors.push(error.to_string());
        }
    }
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // Counter updates only: a poisoned lock still holds sound counts.
    tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One worker: a producer and its share of the partitions.
#[derive(Debug)]
struct Worker {
    producer: Producer,
    bench: Arc<ProduceBench>,
    partitions: Vec<u32>,
    /// Per partition of this worker: the keys that hash to it (empty without --keys).
    keys: HashMap<u32, Vec<Bytes>>,
    payload: Bytes,
    tally: Arc<Mutex<Tally>>,
}

impl Worker {
    /// Hands one record to the producer; `timed`: measure its latency, and answer a receiver
    /// that resolves once the record is answered.
    async fn send(&self, partition: u32, timed: bool) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let key = self.keys.get(&partition).filter(|k| !k.is_empty()).map(|k| {
            let i = rand::thread_rng().gen_range(0..k.len());
            k[i].clone()
        });
        let record = ProducerRecord {
            topic: self.bench.topic.clone(),
            partition: Some(partition),
            key,
            value: Some(self.payload.clone()),
            headers: Vec::new(),
            timestamp_ms: Some(now_ms()),
        };
        let tally = self.tally.clone();
        let sent = Instant::now();
        let (answered, receiver) = if timed {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.producer
            .send_with_callback(record, move |delivery| {
                let mut t = lock(&tally);
                match delivery {
                    Ok(_) => {
                        t.acknowledged += 1;
                        if timed {
                            t.latencies.record(sent.elapsed());
                        }
                    }
                    Err(e) => t.fail(1, &e.error),
                }
                drop(t);
                if let Some(tx) = answered {
                    let _ = tx.send(());
                }
            })
            .await;
        receiver
    }

    /// Sends until the budget or the duration runs out, then waits (bounded) for the answers.
    /// Answers how many records it handed to the producer, and the producer's counters.
    async fn run(
        self,
        budget: Arc<AtomicU64>,
        start: Instant,
        sent_total: Arc<AtomicU64>,
    ) -> (u64, ProducerStats) {
        let bench = self.bench.clone();
        // One run is one batch: the last record of a run fills it, so the record timed is
        // sent at once and its latency is its batch's (not a linger's).
        let key_len = self.keys.values().flatten().map(Bytes::len).max();
        let per_batch = records_per_batch(bench.batch_size, key_len, bench.record_size) as u64;
        let stop_at = bench.duration.map(|d| start + d);
        let mut turn = 0usize;
        let mut sent = 0u64;
        // A closed loop: at most --max-in-flight runs (batches) outstanding per partition, as
        // the bench's window. Without it, records would queue in the producer's buffer and
        // the latency measured would be that queue's.
        let window = bench.max_in_flight.max(1) * self.partitions.len();
        let mut outstanding: std::collections::VecDeque<tokio::sync::oneshot::Receiver<()>> =
            std::collections::VecDeque::new();
        'sending: loop {
            if stop_at.is_some_and(|t| Instant::now() >= t) {
                break;
            }
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
                    break 'sending;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            while outstanding.len() >= window {
                if let Some(oldest) = outstanding.pop_front() {
                    // An error also ends the wait: the callback ran either way.
                    let _ = oldest.await;
                }
            }
            let partition = self.partitions[turn % self.partitions.len()];
            turn = turn.wrapping_add(1);
            for i in 0..want {
                if let Some(answered) = self.send(partition, i + 1 == want).await {
                    outstanding.push_back(answered);
                }
            }
            sent += want;
        }
        // Drain: every answer; the producer's delivery timeout bounds the wait.
        self.producer.close().await;
        (sent, self.producer.stats())
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

/// What all workers did.
#[derive(Debug)]
struct Total {
    stats: ProducerStats,
    tally: Tally,
}

/// `runnel bench produce`: the report as JSON (see the README).
pub(crate) async fn produce(
    router: Arc<Router>,
    bootstrap: &crate::client::Target,
    bench: ProduceBench,
) -> Result<Value, ClientError> {
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
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let mut producers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut config = ProducerConfig::new(bootstrap.to_vec());
        config.tls = bootstrap.tls();
        config.credentials = bootstrap.credentials();
        config.client_id = "runnel-bench".into();
        config.acks = bench.acks.to_client();
        config.batch_size = bench.batch_size;
        config.linger = bench.linger;
        config.max_in_flight = bench.max_in_flight;
        config.idempotence = false;
        config.delivery_timeout = DELIVERY_TIMEOUT;
        // Room for every partition's window of full batches and one filling, no more: a
        // bigger buffer would only queue records in the client, and the latency measured
        // would be that queue's rather than the requests'. (A record's bytes in the buffer
        // are an upper bound of its size in the batch, hence the factor 2.)
        config.buffer_memory = (bench.batch_size.saturating_mul(2 * (bench.max_in_flight + 1)))
            .saturating_mul(partitions.len())
            .clamp(1 << 20, 1 << 30);
        producers.push(Producer::new(config).await?);
    }
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (w, producer) in producers.into_iter().enumerate() {
        let mine = worker_partitions(&partitions, w, concurrency);
        let keys = mine.iter().filter_map(|p| keys_by_partition.get(p).map(|k| (*p, k.clone()))).collect();
        let worker = Worker {
            producer,
            bench: bench.clone(),
            partitions: mine,
            keys,
            payload: payload.clone(),
            tally: tally.clone(),
        };
        tasks.spawn(worker.run(budget.clone(), start, sent_total.clone()));
    }
    let mut sent = 0u64;
    let mut stats = ProducerStats::default();
    while let Some(joined) = tasks.join_next().await {
        let (n, s) = joined.map_err(|e| error(-1, "UNKNOWN_SERVER_ERROR", format!("bench worker: {e}")))?;
        sent += n;
        stats.batches += s.batches;
        stats.retries += s.retries;
    }
    let mut total = std::mem::take(&mut *lock(&tally));
    let unanswered = sent.saturating_sub(total.acknowledged + total.failed);
    if unanswered > 0 {
        let e = error(
            code::REQUEST_TIMED_OUT,
            "REQUEST_TIMED_OUT",
            format!("no answer within {DELIVERY_TIMEOUT:?}"),
        );
        total.fail(unanswered, &e);
    }
    let total = Total { stats, tally: total };
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let bytes = total.tally.acknowledged * bench.record_size as u64;
    Ok(json!({
        "test": "produce",
        "topic": bench.topic,
        "partitions": partitions,
        "concurrency": concurrency,
        "acks": match bench.acks { Acks::All => "all", Acks::Leader => "1", Acks::None => "0" },
        "record_size": bench.record_size,
        "batch_size": bench.batch_size,
        "records": total.tally.acknowledged,
        "failed_records": total.tally.failed,
        "batches": total.stats.batches,
        "retried_batches": total.stats.retries,
        "bytes": bytes,
        "elapsed_s": round3(elapsed),
        "records_per_s": round3(total.tally.acknowledged as f64 / elapsed),
        "mb_per_s": round3(bytes as f64 / 1e6 / elapsed),
        "latency_ms": total.tally.latencies.summary(),
        "errors": total.tally.errors,
        "errors_total": total.tally.errors_total,
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
