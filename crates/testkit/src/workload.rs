//! A produce workload that records a [`History`], and the final read that [`History::check`]
//! needs.
//!
//! [`Workload::start`] runs producers (one request in flight each, every record a fresh unique
//! value, [`record_value`]) and, optionally, one reader per partition, over the broker's gRPC
//! API. Producers follow leadership as it moves: a NOT_LEADER_OR_FOLLOWER answer's
//! `runnel-leader` hint is followed at once; any other failure drops the cached leader, and the
//! next attempt asks *every* broker for Metadata and believes the answer with the highest leader
//! epoch (an isolated or deposed broker keeps naming itself leader; the majority's newer epoch
//! wins). Failed attempts back off, 10 ms doubling to 100 ms (short, so the unavailability a
//! history measures is the cluster's, not the backoff's). Every call has a deadline, every
//! loop stops when [`Workload::stop`] is called, and a producer stops by itself after
//! [`WorkloadOpts::max_records_per_producer`].
//!
//! With [`ProduceMode::Producer`], the producers are loops over the client crate's
//! [`Producer`] instead (one client producer for the whole workload): each loop keeps up to
//! five requests' worth of records outstanding, and the client batches, retries (with the same
//! value: its retries are what is being judged) and, when idempotent, numbers the batches so
//! the leader drops repeats. Each record is one attempt whose outcome is its delivery result.
//!
//! With [`ProduceMode::Kafka`], the producer is a Kafka client in a child process
//! ([`KafkaClient`]: librdkafka through confluent-kafka, `tests/python/kafka_failover.py`),
//! which reports every delivery as a line on stdout; each line becomes an attempt of the same
//! history (see the [`kafka`] module), so the Kafka path is judged by the same checker.
//!
//! [`read_final`] then reads every partition from its log start to its high watermark, from the
//! leader, after waiting (bounded) for the high watermark to reach every acknowledged offset: a
//! new leader may learn the high watermark a moment after it takes over.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use bytes::Bytes;
use runnel_client::error::code;
use runnel_client::producer::{
    Acks, Delivery, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, ProducerStats,
};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::broker_service_client::BrokerServiceClient;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use crate::history::{Attempt, FinalLog, History, Outcome, Read, record_value};

pub mod kafka;

pub use kafka::{KafkaClient, KafkaReport};

/// Kafka's NOT_LEADER_OR_FOLLOWER.
const NOT_LEADER_OR_FOLLOWER: i32 = 6;
/// Kafka's OFFSET_OUT_OF_RANGE.
const OFFSET_OUT_OF_RANGE: i32 = 1;
/// The code recorded for an attempt whose connection could not even be opened (nothing sent).
pub const NOT_CONNECTED: i32 = -1;

/// How long to try opening a connection to a broker.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 pings, so a call on a connection to a stopped or cut-off broker fails within about
/// two seconds instead of hanging until its deadline.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of one Metadata, Fetch or ListOffsets call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a Metadata refresh waits for the other brokers once one has answered (a
/// stopped broker must not hold every refresh for a whole call timeout).
const REFRESH_GRACE: Duration = Duration::from_millis(150);
/// A produce unanswered this long makes the producer ask the other brokers whether
/// leadership moved, and again every [`LEADER_CHECK_INTERVAL`]: a stopped leader (SIGSTOP)
/// still holds its connections open, and would otherwise keep the producer until the
/// request's deadline.
const LEADER_CHECK_AFTER: Duration = Duration::from_millis(300);
/// See [`LEADER_CHECK_AFTER`].
const LEADER_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How long the client waits past the produce's own `timeout_ms` before it gives up.
const PRODUCE_DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// Backoff after a failed attempt: doubling from the minimum to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// How long a reader's Fetch waits for new records.
const READ_WAIT_MS: u32 = 200;
/// Bytes per Fetch.
const FETCH_BYTES: u32 = 1 << 20;
/// Largest gRPC message accepted (a Fetch answers at most 64 MiB).
const MESSAGE_BYTES_MAX: usize = 80 << 20;

/// What a [`Workload`] does.
#[derive(Debug, Clone)]
pub struct WorkloadOpts {
    /// Broker gRPC addresses (`host:port`) to ask for Metadata; more are learned from answers.
    pub bootstrap: Vec<String>,
    /// The topic (it must exist).
    pub topic: String,
    /// The partitions to produce to.
    pub partitions: Vec<u32>,
    /// Producers per partition; producer ids run from 0 over partitions, then producers.
    pub producers_per_partition: u32,
    /// Records per produce request (one batch).
    pub records_per_request: u32,
    /// The produce requests' acks.
    pub acks: pb::Acks,
    /// The produce requests' `timeout_ms` (how long the leader may wait for acks=all). The
    /// client waits [`PRODUCE_DEADLINE_MARGIN`] longer, then records an unknown outcome.
    pub produce_timeout: Duration,
    /// A pause after each acknowledged request (zero: as fast as answers come).
    pub interval: Duration,
    /// Each producer stops after this many records.
    pub max_records_per_producer: u64,
    /// Whether one reader per partition tails it while the producers run, recording what it
    /// reads (so the checker can compare it with the final log).
    pub read_during_run: bool,
    /// Who sends the records.
    pub mode: ProduceMode,
    /// The Kafka client of [`ProduceMode::Kafka`] (required there, ignored otherwise).
    pub kafka: Option<KafkaClient>,
}

/// Who sends a workload's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProduceMode {
    /// The workload's own loop: one Produce request in flight per producer, never retried
    /// with the same value.
    #[default]
    Direct,
    /// The client crate's [`Producer`], which retries with the same records: with
    /// `idempotence` the leader drops repeats, without it a retry can append a record twice.
    Producer {
        /// Whether the client producer is idempotent.
        idempotence: bool,
    },
    /// A Kafka client's idempotent producer (acks=all) in a child process, over the Kafka
    /// wire protocol: [`WorkloadOpts::kafka`] says which. It retries with the same records
    /// and numbers its batches, so duplicates must be 0. One producer per partition
    /// (producer id = partition), the partitions 0..N.
    Kafka,
}

impl WorkloadOpts {
    /// One producer per partition, one record per request, acks=all with a 2 s timeout, no
    /// pause, at most a million records per producer, readers on.
    pub fn new(bootstrap: Vec<String>, topic: impl Into<String>, partitions: Vec<u32>) -> Self {
        WorkloadOpts {
            bootstrap,
            topic: topic.into(),
            partitions,
            producers_per_partition: 1,
            records_per_request: 1,
            acks: pb::Acks::All,
            produce_timeout: Duration::from_secs(2),
            interval: Duration::ZERO,
            max_records_per_producer: 1_000_000,
            read_during_run: true,
            mode: ProduceMode::Direct,
            kafka: None,
        }
    }
}

/// Broker connections and what Metadata said about the topic's leaders.
#[derive(Debug)]
struct Routes {
    topic: String,
    bootstrap: Vec<String>,
    clients: Mutex<HashMap<String, BrokerServiceClient<Channel>>>,
    /// Broker id → address, from every answer.
    brokers: Mutex<BTreeMap<u32, String>>,
    /// Partition → leader address, and the leader epoch it was learned with (a hint's
    /// leader is given the epoch after the last one known).
    leaders: Mutex<HashMap<u32, (String, i32)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a plain map update, so a poisoned lock still holds sound data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Routes {
    fn new(topic: &str, bootstrap: Vec<String>) -> Self {
        Routes {
            topic: topic.to_owned(),
            bootstrap,
            clients: Mutex::new(HashMap::new()),
            brokers: Mutex::new(BTreeMap::new()),
            leaders: Mutex::new(HashMap::new()),
        }
    }

    /// A client for `addr`: one lazily connected channel per address.
    fn client(&self, addr: &str) -> anyhow::Result<BrokerServiceClient<Channel>> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        let client = BrokerServiceClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// The cached leader of `partition`, or a fresh one from Metadata.
    async fn leader(&self, partition: u32) -> Option<String> {
        if let Some((addr, _)) = lock(&self.leaders).get(&partition) {
            return Some(addr.clone());
        }
        self.refresh().await;
        lock(&self.leaders).get(&partition).map(|(addr, _)| addr.clone())
    }

    fn forget(&self, partition: u32) {
        lock(&self.leaders).remove(&partition);
    }

    fn follow(&self, partition: u32, addr: String) {
        let mut leaders = lock(&self.leaders);
        let epoch = leaders.get(&partition).map_or(-1, |(_, e)| e.saturating_add(1));
        leaders.insert(partition, (addr, epoch));
    }

    /// Resolves once the brokers other than `addr` name another leader of `partition` with a
    /// newer epoch than the one `addr` was learned with (checked every
    /// [`LEADER_CHECK_INTERVAL`] after [`LEADER_CHECK_AFTER`]); the new leader is then the
    /// route. Never resolves while `addr` stays the leader.
    async fn moved_from(&self, partition: u32, addr: &str) -> String {
        tokio::time::sleep(LEADER_CHECK_AFTER).await;
        loop {
            let known = lock(&self.leaders).get(&partition).cloned();
            let epoch = match known {
                Some((a, epoch)) if a == addr => epoch,
                // Someone else already moved the route.
                Some((a, _)) => return a,
                None => -1,
            };
            let others: Vec<String> = self.addresses().into_iter().filter(|a| a != addr).collect();
            if let Some((newer, new_epoch)) =
                self.ask(&others).await.remove(&partition).filter(|(a, e)| a != addr && *e > epoch)
            {
                lock(&self.leaders).insert(partition, (newer.clone(), new_epoch));
                return newer;
            }
            tokio::time::sleep(LEADER_CHECK_INTERVAL).await;
        }
    }

    /// The bootstrap addresses and every broker learned since.
    fn addresses(&self) -> Vec<String> {
        let mut addrs = self.bootstrap.clone();
        for a in lock(&self.brokers).values() {
            if !addrs.contains(a) {
                addrs.push(a.clone());
            }
        }
        addrs
    }

    /// Asks every known broker for Metadata at once and keeps, per partition, the leader named
    /// with the highest leader epoch.
    async fn refresh(&self) {
        let best = self.ask(&self.addresses()).await;
        let mut leaders = lock(&self.leaders);
        for (partition, route) in best {
            leaders.insert(partition, route);
        }
    }

    /// Asks `addrs` for Metadata at once: per partition, the leader named with the highest
    /// epoch. Once one broker has answered, the others get [`REFRESH_GRACE`] more.
    async fn ask(&self, addrs: &[String]) -> HashMap<u32, (String, i32)> {
        let mut calls = JoinSet::new();
        for addr in addrs {
            let Ok(mut client) = self.client(addr) else { continue };
            let request = pb::MetadataRequest { topics: vec![self.topic.clone()] };
            calls.spawn(async move { tokio::time::timeout(CALL_TIMEOUT, client.metadata(request)).await });
        }
        let mut best: HashMap<u32, (i32, String)> = HashMap::new();
        let mut grace_ends: Option<tokio::time::Instant> = None;
        loop {
            let joined = match grace_ends {
                None => calls.join_next().await,
                Some(end) => match tokio::time::timeout_at(end, calls.join_next()).await {
                    Ok(joined) => joined,
                    Err(_) => break, // The rest are slow or stopped: go with what answered.
                },
            };
            let Some(joined) = joined else { break };
            let Ok(Ok(Ok(answer))) = joined else { continue };
            grace_ends.get_or_insert_with(|| tokio::time::Instant::now() + REFRESH_GRACE);
            let answer = answer.into_inner();
            let names: HashMap<u32, String> =
                answer.brokers.iter().map(|b| (b.broker_id, b.grpc.clone())).collect();
            lock(&self.brokers).extend(names.clone());
            let Some(topic) = answer.topics.iter().find(|t| t.name == self.topic && t.error.is_none()) else {
                continue;
            };
            for p in &topic.partitions {
                let Some(addr) = u32::try_from(p.leader).ok().and_then(|id| names.get(&id)) else { continue };
                if best.get(&p.partition).is_none_or(|(epoch, _)| p.leader_epoch > *epoch) {
                    best.insert(p.partition, (p.leader_epoch, addr.clone()));
                }
            }
        }
        calls.abort_all();
        best.into_iter().map(|(partition, (epoch, addr))| (partition, (addr, epoch))).collect()
    }
}

/// What the producers and readers share.
#[derive(Debug)]
struct Shared {
    opts: WorkloadOpts,
    routes: Routes,
    started: Instant,
    stopped: AtomicBool,
    /// The workload was dropped without [`Workload::stop`] (a test panicked): a child process
    /// is killed at once rather than flushed.
    abandoned: AtomicBool,
    wake: tokio::sync::Notify,
    attempts: Mutex<Vec<Attempt>>,
    reads: Mutex<Vec<Read>>,
    /// Acknowledged records per partition.
    acked: Mutex<BTreeMap<u32, u64>>,
    /// The client producer of [`ProduceMode::Producer`], once it has its id.
    client: Mutex<Option<Producer>>,
    /// CLOCK_MONOTONIC at `started`, in nanoseconds: a child process's clock readings are
    /// put on the history's clock with it.
    started_mono_ns: i128,
    /// What the Kafka client reported besides deliveries ([`ProduceMode::Kafka`]).
    kafka_report: Mutex<KafkaReport>,
}

impl Shared {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Sleeps for `d`, or less when the workload stops.
    async fn pause(&self, d: Duration) {
        if !self.stopped() {
            let _ = tokio::time::timeout(d, self.wake.notified()).await;
        }
    }
}

/// A running workload. See the module docs.
#[derive(Debug)]
pub struct Workload {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Workload {
    /// Starts the producers (and readers) on the current tokio runtime.
    pub fn start(opts: WorkloadOpts) -> Self {
        assert!(opts.records_per_request >= 1 && opts.producers_per_partition >= 1);
        let shared = Arc::new(Shared {
            routes: Routes::new(&opts.topic, opts.bootstrap.clone()),
            started: Instant::now(),
            started_mono_ns: kafka::monotonic_ns(),
            kafka_report: Mutex::new(KafkaReport::default()),
            stopped: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            attempts: Mutex::new(Vec::new()),
            reads: Mutex::new(Vec::new()),
            acked: Mutex::new(opts.partitions.iter().map(|&p| (p, 0)).collect()),
            client: Mutex::new(None),
            opts,
        });
        let mut tasks = JoinSet::new();
        match shared.opts.mode {
            ProduceMode::Direct => {
                let mut producer = 0;
                for _ in 0..shared.opts.producers_per_partition {
                    for &partition in &shared.opts.partitions {
                        tasks.spawn(produce_loop(shared.clone(), producer, partition));
                        producer += 1;
                    }
                }
            }
            ProduceMode::Producer { idempotence } => {
                tasks.spawn(client_producers(shared.clone(), idempotence));
            }
            ProduceMode::Kafka => {
                let shared = shared.clone();
                tasks.spawn_blocking(move || kafka::run(&shared));
            }
        }
        if shared.opts.read_during_run {
            for &partition in &shared.opts.partitions {
                tasks.spawn(read_loop(shared.clone(), partition));
            }
        }
        Workload { shared, tasks }
    }

    /// When the workload started: time zero of its history.
    pub fn started(&self) -> Instant {
        self.shared.started
    }

    /// Time since the start, on the history's clock.
    pub fn elapsed(&self) -> Duration {
        self.shared.now()
    }

    /// What the client producer did so far ([`ProduceMode::Producer`] only): batches, retries,
    /// and the duplicates the leaders dropped.
    pub fn client_stats(&self) -> Option<ProducerStats> {
        lock(&self.shared.client).as_ref().map(Producer::stats)
    }

    /// Records acknowledged so far, on every partition.
    pub fn acknowledged(&self) -> u64 {
        lock(&self.shared.acked).values().sum()
    }

    /// Records acknowledged so far on `partition`.
    pub fn acknowledged_on(&self, partition: u32) -> u64 {
        lock(&self.shared.acked).get(&partition).copied().unwrap_or_default()
    }

    /// Waits until `partition` has more than `count` acknowledged records; fails after
    /// `timeout`. Answers how long it waited.
    pub async fn wait_for_acks_on(
        &self,
        partition: u32,
        count: u64,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        while self.acknowledged_on(partition) <= count {
            if start.elapsed() >= timeout {
                bail!(
                    "partition {partition}: {} acknowledged records after {timeout:?}, waiting for more than {count}",
                    self.acknowledged_on(partition)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(start.elapsed())
    }

    /// Waits until every partition has more than `count` acknowledged records.
    pub async fn wait_for_acks_everywhere(&self, count: u64, timeout: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        for &p in &self.shared.opts.partitions {
            self.wait_for_acks_on(p, count, timeout.saturating_sub(start.elapsed())).await?;
        }
        Ok(start.elapsed())
    }

    /// What the Kafka client reported so far besides deliveries ([`ProduceMode::Kafka`]).
    pub fn kafka_report(&self) -> KafkaReport {
        lock(&self.shared.kafka_report).clone()
    }

    /// [`Workload::stop`], also answering the Kafka client's report (empty in other modes):
    /// its errors, its closing figures and how it exited.
    pub async fn stop_reporting(self) -> (History, KafkaReport) {
        let shared = self.shared.clone();
        let history = self.stop().await;
        let report = lock(&shared.kafka_report).clone();
        (history, report)
    }

    /// Stops every producer and reader (each finishes the call it has in flight, which its
    /// deadline bounds) and answers the history.
    pub async fn stop(mut self) -> History {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.wake.notify_waiters();
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = joined
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        let ended = self.shared.now();
        History {
            attempts: std::mem::take(&mut *lock(&self.shared.attempts)),
            reads: std::mem::take(&mut *lock(&self.shared.reads)),
            ended,
        }
    }
}

impl Drop for Workload {
    /// Stops what still runs: the async tasks go with the JoinSet, but the Kafka client's
    /// reader is a blocking thread the runtime would wait for on shutdown.
    fn drop(&mut self) {
        if !self.shared.stopped() {
            self.shared.abandoned.store(true, Ordering::Release);
            self.shared.stopped.store(true, Ordering::Release);
            self.shared.wake.notify_waiters();
        }
    }
}

/// The status's Kafka error code and name, when the broker answered with one.
fn kafka_error(status: &tonic::Status) -> Option<(i32, String)> {
    let code = status.metadata().get("runnel-error-code")?.to_str().ok()?.parse().ok()?;
    let name = status.metadata().get("runnel-error-name").and_then(|v| v.to_str().ok()).unwrap_or("UNKNOWN");
    Some((code, name.to_owned()))
}

fn meta_i64(status: &tonic::Status, key: &str) -> Option<i64> {
    status.metadata().get(key)?.to_str().ok()?.parse().ok()
}

/// Whether a status without a Kafka code says the connection could not be opened, so nothing
/// was sent (as opposed to a connection lost under the call, which may have delivered it).
fn not_connected(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    let mut text = status.message().to_owned();
    let mut source = status.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    status.code() == tonic::Code::Unavailable
        && (text.contains("tcp connect error") || text.contains("Connection refused"))
}

async fn produce_loop(shared: Arc<Shared>, producer: u32, partition: u32) {
    let opts = &shared.opts;
    let per_request = u64::from(opts.records_per_request);
    let deadline = opts.produce_timeout + PRODUCE_DEADLINE_MARGIN;
    let timeout_ms = u32::try_from(opts.produce_timeout.as_millis()).unwrap_or(u32::MAX);
    let mut seq = 0u64;
    let mut backoff = BACKOFF_MIN;
    let mut redirected = false;
    while !shared.stopped() && seq < opts.max_records_per_producer {
        let Some(addr) = shared.routes.leader(partition).await else {
            shared.pause(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        };
        let n = per_request.min(opts.max_records_per_producer - seq);
        let values: Vec<String> = (seq..seq + n).map(|s| record_value(producer, s)).collect();
        let records = values
            .iter()
            .map(|v| pb::Record {
                key: None,
                value: Some(Bytes::copy_from_slice(v.as_bytes())),
                headers: Vec::new(),
                timestamp_ms: None,
                offset: 0,
            })
            .collect();
        let request = pb::ProduceRequest {
            topic: opts.topic.clone(),
            partition,
            acks: opts.acks as i32,
            timeout_ms,
            data: Some(pb::produce_request::Data::Records(pb::RecordList { records })),
            producer: None,
        };
        let sent = shared.now();
        let result = match shared.routes.client(&addr) {
            Ok(mut client) => tokio::select! {
                answer = tokio::time::timeout(deadline, client.produce(request)) => answer,
                // Leadership moved while the leader kept this request: its outcome is unknown
                // (a deposed leader acknowledges nothing, but it may have appended it first).
                moved = shared.routes.moved_from(partition, &addr) => {
                    backoff = BACKOFF_MIN;
                    redirected = false;
                    let reason = format!("unanswered, and leadership moved to {moved}");
                    let unknown = vec![Outcome::Unknown { reason }; n as usize];
                    record_attempts(&shared, producer, partition, &addr, sent, values, unknown);
                    seq += n;
                    continue;
                }
            },
            Err(e) => Ok(Err(tonic::Status::invalid_argument(format!("{e:#}")))),
        };
        let mut next_pause = Duration::ZERO;
        let outcomes: Vec<Outcome> = match result {
            Ok(Ok(answer)) => {
                let base = answer.into_inner().base_offset;
                backoff = BACKOFF_MIN;
                redirected = false;
                next_pause = opts.interval;
                (0..n as i64).map(|i| Outcome::Acked { offset: base + i }).collect()
            }
            Ok(Err(status)) => {
                let outcome = match kafka_error(&status) {
                    Some((code, name)) => {
                        let hint = status.metadata().get("runnel-leader").and_then(|v| v.to_str().ok());
                        match hint.filter(|h| code == NOT_LEADER_OR_FOLLOWER && !h.is_empty() && *h != addr) {
                            // Follow a hint at once, but only once in a row.
                            Some(h) if !redirected => {
                                shared.routes.follow(partition, h.to_owned());
                                redirected = true;
                            }
                            _ => {
                                shared.routes.forget(partition);
                                redirected = false;
                                next_pause = backoff;
                            }
                        }
                        Outcome::Failed { code, name }
                    }
                    None if not_connected(&status) => {
                        shared.routes.forget(partition);
                        next_pause = backoff;
                        Outcome::Failed {
                            code: NOT_CONNECTED,
                            name: format!("NOT_CONNECTED: {}", status.message()),
                        }
                    }
                    None => {
                        shared.routes.forget(partition);
                        next_pause = backoff;
                        Outcome::Unknown { reason: format!("{:?}: {}", status.code(), status.message()) }
                    }
                };
                vec![outcome; n as usize]
            }
            Err(_) => {
                shared.routes.forget(partition);
                next_pause = backoff;
                vec![Outcome::Unknown { reason: format!("no answer within {deadline:?}") }; n as usize]
            }
        };
        if next_pause == backoff {
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        record_attempts(&shared, producer, partition, &addr, sent, values, outcomes);
        seq += n;
        if !next_pause.is_zero() {
            shared.pause(next_pause).await;
        }
    }
}

/// Adds one request's records, with their outcomes, to the history.
fn record_attempts(
    shared: &Shared,
    producer: u32,
    partition: u32,
    addr: &str,
    sent: Duration,
    values: Vec<String>,
    outcomes: Vec<Outcome>,
) {
    let done = shared.now();
    let acked = outcomes.iter().filter(|o| o.is_acked()).count() as u64;
    {
        let mut attempts = lock(&shared.attempts);
        for (value, outcome) in values.into_iter().zip(outcomes) {
            let (_, s) = crate::history::parse_value(&value).expect("made by record_value");
            attempts.push(Attempt {
                producer,
                seq: s,
                partition,
                value,
                broker: addr.to_owned(),
                sent,
                done,
                outcome,
            });
        }
    }
    *lock(&shared.acked).entry(partition).or_default() += acked;
}

/// Records each client-producer loop keeps outstanding, per record of a request.
const CLIENT_WINDOW_REQUESTS: u64 = 5;
/// How long the client producer may take to deliver a record, retries included.
const CLIENT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// [`ProduceMode::Producer`]: one client producer, one send loop per workload producer.
async fn client_producers(shared: Arc<Shared>, idempotence: bool) {
    let opts = &shared.opts;
    let mut config = ProducerConfig::new(opts.bootstrap.clone());
    config.client_id = "runnel-testkit".into();
    config.acks = match opts.acks {
        pb::Acks::Leader => Acks::Leader,
        pb::Acks::None => Acks::None,
        pb::Acks::All | pb::Acks::Unspecified => Acks::All,
    };
    config.idempotence = idempotence;
    config.request_timeout = opts.produce_timeout;
    config.delivery_timeout = CLIENT_DELIVERY_TIMEOUT;
    // Getting a producer id needs a broker: retry until one answers or the workload stops.
    let mut backoff = BACKOFF_MIN;
    let producer = loop {
        match Producer::new(config.clone()).await {
            Ok(p) => break p,
            Err(e) if shared.stopped() => {
                eprintln!("workload: no client producer before the workload stopped: {e}");
                return;
            }
            Err(_) => {
                shared.pause(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    *lock(&shared.client) = Some(producer.clone());
    let mut loops = JoinSet::new();
    let mut id = 0;
    for _ in 0..opts.producers_per_partition {
        for &partition in &opts.partitions {
            loops.spawn(client_produce_loop(shared.clone(), producer.clone(), id, partition));
            id += 1;
        }
    }
    while let Some(joined) = loops.join_next().await {
        if let Err(e) = joined
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    producer.close().await;
}

/// Sends producer `producer`'s records to `partition`, a window at a time, and records each
/// delivery as an attempt.
async fn client_produce_loop(shared: Arc<Shared>, client: Producer, producer: u32, partition: u32) {
    let opts = &shared.opts;
    let window = CLIENT_WINDOW_REQUESTS * u64::from(opts.records_per_request);
    let mut outstanding: std::collections::VecDeque<(u64, Duration, DeliveryFuture)> = Default::default();
    let mut seq = 0u64;
    while !shared.stopped() && seq < opts.max_records_per_producer {
        while outstanding.len() as u64 >= window {
            if let Some((s, sent, delivery)) = outstanding.pop_front() {
                note_delivery(&shared, producer, partition, s, sent, delivery.await);
            }
        }
        let record =
            ProducerRecord::new(opts.topic.clone(), record_value(producer, seq)).partition(partition);
        let sent = shared.now();
        outstanding.push_back((seq, sent, client.send(record).await));
        seq += 1;
        if seq.is_multiple_of(u64::from(opts.records_per_request)) && !opts.interval.is_zero() {
            shared.pause(opts.interval).await;
        }
    }
    // Every record's outcome, which the client's delivery timeout bounds.
    while let Some((s, sent, delivery)) = outstanding.pop_front() {
        note_delivery(&shared, producer, partition, s, sent, delivery.await);
    }
}

fn note_delivery(
    shared: &Shared,
    producer: u32,
    partition: u32,
    seq: u64,
    sent: Duration,
    delivery: Delivery,
) {
    let outcome = match delivery {
        Ok(m) => Outcome::Acked { offset: m.offset },
        Err(e) => match e.error.code {
            // No answer, or one that may come after the append.
            code::NETWORK_EXCEPTION | code::REQUEST_TIMED_OUT => {
                Outcome::Unknown { reason: e.error.to_string() }
            }
            code => Outcome::Failed { code, name: e.error.name },
        },
    };
    if outcome.is_acked() {
        *lock(&shared.acked).entry(partition).or_default() += 1;
    }
    lock(&shared.attempts).push(Attempt {
        producer,
        seq,
        partition,
        value: record_value(producer, seq),
        broker: "client producer".into(),
        sent,
        done: shared.now(),
        outcome,
    });
}

/// Value of a fetched record as the history stores it.
fn value_text(record: &pb::Record) -> String {
    match &record.value {
        Some(v) => String::from_utf8_lossy(v).into_owned(),
        None => "<null>".to_owned(),
    }
}

async fn read_loop(shared: Arc<Shared>, partition: u32) {
    let mut next = 0i64;
    let mut backoff = BACKOFF_MIN;
    while !shared.stopped() {
        let Some(addr) = shared.routes.leader(partition).await else {
            shared.pause(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        };
        let Ok(mut client) = shared.routes.client(&addr) else { return };
        let request = pb::FetchRequest {
            topic: shared.opts.topic.clone(),
            partition,
            offset: next,
            max_bytes: FETCH_BYTES,
            max_wait_ms: READ_WAIT_MS,
            min_bytes: 1,
            format: pb::RecordFormat::Records as i32,
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.fetch(request)).await {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                let at = shared.now();
                let mut reads = lock(&shared.reads);
                for r in answer.records.iter().filter(|r| r.offset >= next) {
                    reads.push(Read { partition, offset: r.offset, value: value_text(r), at });
                }
                next = next.max(answer.next_offset);
                backoff = BACKOFF_MIN;
            }
            Ok(Err(status)) if kafka_error(&status).is_some_and(|(c, _)| c == OFFSET_OUT_OF_RANGE) => {
                // Past the high watermark: a new leader that has not learned it yet. Below the
                // log start: nothing to read there any more.
                if let Some(start) = meta_i64(&status, "runnel-log-start-offset").filter(|&s| next < s) {
                    next = start;
                } else {
                    shared.pause(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
            Ok(Err(_)) | Err(_) => {
                shared.routes.forget(partition);
                shared.pause(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// For each partition in `partitions`, the offset after the highest acknowledged one in
/// `history` (what the final high watermark must at least reach), or 0.
pub fn acknowledged_ends(history: &History, partitions: &[u32]) -> BTreeMap<u32, i64> {
    let mut ends: BTreeMap<u32, i64> = partitions.iter().map(|&p| (p, 0)).collect();
    for a in &history.attempts {
        if let Outcome::Acked { offset } = a.outcome {
            let end = ends.entry(a.partition).or_default();
            *end = (*end).max(offset + 1);
        }
    }
    ends
}

/// Reads every record of each partition in `expected_ends` from its leader: first waits, up to
/// `settle`, until the partition's high watermark reaches the given offset (when it does not,
/// what is there is read anyway, and the checker reports what is missing), then fetches from the
/// log start to the high watermark. A read that fails part way starts that partition over.
/// Fails only when a partition cannot be read at all within `settle` plus 30 s.
pub async fn read_final(
    bootstrap: &[String],
    topic: &str,
    expected_ends: &BTreeMap<u32, i64>,
    settle: Duration,
) -> anyhow::Result<BTreeMap<u32, FinalLog>> {
    let routes = Routes::new(topic, bootstrap.to_vec());
    let mut logs = BTreeMap::new();
    let started = Instant::now();
    for (&partition, &expected) in expected_ends {
        let mut last_error = String::from("no attempt");
        let log = loop {
            if started.elapsed() > settle + Duration::from_secs(30) {
                return Err(anyhow!("partition {partition} of {topic} could not be read: {last_error}"));
            }
            match read_partition(&routes, partition, expected, started + settle).await {
                Ok(log) => break log,
                Err(e) => {
                    last_error = format!("{e:#}");
                    routes.forget(partition);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        logs.insert(partition, log);
    }
    Ok(logs)
}

async fn list_offset(
    client: &mut BrokerServiceClient<Channel>,
    topic: &str,
    partition: u32,
    spec: pb::OffsetSpec,
) -> anyhow::Result<i64> {
    let request =
        pb::ListOffsetsRequest { topic: topic.to_owned(), partition, spec: spec as i32, timestamp_ms: 0 };
    let answer = tokio::time::timeout(CALL_TIMEOUT, client.list_offsets(request))
        .await
        .map_err(|_| anyhow!("ListOffsets timed out"))??;
    Ok(answer.into_inner().offset)
}

async fn read_partition(
    routes: &Routes,
    partition: u32,
    expected_end: i64,
    settle_until: Instant,
) -> anyhow::Result<FinalLog> {
    let topic = routes.topic.clone();
    let addr =
        routes.leader(partition).await.ok_or_else(|| anyhow!("partition {partition} has no leader"))?;
    let mut client = routes.client(&addr)?;
    let mut hw = list_offset(&mut client, &topic, partition, pb::OffsetSpec::Latest).await?;
    while hw < expected_end && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        hw = list_offset(&mut client, &topic, partition, pb::OffsetSpec::Latest).await?;
    }
    let log_start = list_offset(&mut client, &topic, partition, pb::OffsetSpec::Earliest).await?;
    let mut records = Vec::new();
    let mut next = log_start;
    while next < hw {
        let request = pb::FetchRequest {
            topic: topic.clone(),
            partition,
            offset: next,
            max_bytes: FETCH_BYTES,
            max_wait_ms: 0,
            min_bytes: 0,
            format: pb::RecordFormat::Records as i32,
        };
        let answer = tokio::time::timeout(CALL_TIMEOUT, client.fetch(request))
            .await
            .map_err(|_| anyhow!("Fetch timed out"))??
            .into_inner();
        for r in answer.records.iter().filter(|r| r.offset >= next && r.offset < hw) {
            records.push((r.offset, value_text(r)));
        }
        if answer.next_offset <= next {
            bail!(
                "partition {partition}: a fetch at offset {next} below the high watermark {hw} returned nothing"
            );
        }
        next = answer.next_offset;
    }
    Ok(FinalLog { log_start, high_watermark: hw, records })
}

/// A partition as the broker with the newest view (the highest leader epoch) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// The leader's broker id, or -1.
    pub leader: i64,
    /// The leader epoch.
    pub leader_epoch: i32,
    /// The in-sync replicas.
    pub isr: Vec<u32>,
    /// The replicas.
    pub replicas: Vec<u32>,
}

/// Every partition of `topic`, from the Metadata of whichever of `brokers` answers, keeping per
/// partition the answer with the highest leader epoch (a broker that just restarted or is cut
/// off reports an older view). Empty when no broker answers.
pub async fn partition_states(brokers: &[String], topic: &str) -> BTreeMap<u32, PartitionState> {
    let routes = Routes::new(topic, brokers.to_vec());
    let mut calls = JoinSet::new();
    for addr in brokers {
        let Ok(mut client) = routes.client(addr) else { continue };
        let request = pb::MetadataRequest { topics: vec![topic.to_owned()] };
        calls.spawn(async move { tokio::time::timeout(CALL_TIMEOUT, client.metadata(request)).await });
    }
    let mut states: BTreeMap<u32, PartitionState> = BTreeMap::new();
    while let Some(joined) = calls.join_next().await {
        let Ok(Ok(Ok(answer))) = joined else { continue };
        let answer = answer.into_inner();
        let Some(t) = answer.topics.iter().find(|t| t.name == topic && t.error.is_none()) else { continue };
        for p in &t.partitions {
            if states.get(&p.partition).is_none_or(|s| p.leader_epoch > s.leader_epoch) {
                let state = PartitionState {
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    isr: p.isr.clone(),
                    replicas: p.replicas.clone(),
                };
                states.insert(p.partition, state);
            }
        }
    }
    states
}
