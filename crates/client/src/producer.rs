//! The producer: batches records per partition, sends them to the partitions' leaders, retries
//! what can be retried, and tells each record's sender where it landed.
//!
//! # How a record travels
//!
//! [`Producer::send`] picks the record's partition (the one given, else Kafka's murmur2 of the
//! key, else the sticky partition of the topic, see [`crate::partitioner`]) and takes room for
//! it in the buffer ([`ProducerConfig::buffer_memory`]); when the buffer is full, `send` waits:
//! that is the backpressure. A driver task keeps one open batch per partition and cuts it when
//! it reaches [`ProducerConfig::batch_size`] (or could not take another record the size of its
//! last) or has waited [`ProducerConfig::linger`]. Each
//! partition then has a sender task of its own with one `ProduceStream` to the partition's
//! leader; the broker appends a stream's requests in the order they arrive and answers in that
//! order, so up to [`ProducerConfig::max_in_flight`] batches are in flight per partition
//! without reordering.
//!
//! # Retries
//!
//! A retriable answer (leadership moved, the ISR is short, a timeout, a broken connection:
//! the router's classification, [`crate::router::Failure`]) drops the stream, marks the
//! metadata stale, waits (a first redirect at once, otherwise a jittered backoff from 25 ms
//! doubling to 1 s) and then sends the failed batch *and every later batch of the partition
//! that was in flight*, in their order, to the leader of the moment. A batch fails for good on
//! a non-retriable answer or when it is older than [`ProducerConfig::delivery_timeout`].
//!
//! # Idempotence (on by default)
//!
//! The producer asks a broker for a producer id and epoch (`InitProducerId`). Each partition
//! numbers its batches: a batch's base sequence is the previous batch's plus its record count,
//! wrapping from `i32::MAX` to 0, assigned when the batch is first sent and kept across its
//! retries (the bytes are built once). The leader appends a sequence once: a retry of a batch
//! it already has is answered `duplicate` with the original offsets, and counts as success. So
//! retries never duplicate records, and records of one partition are acknowledged in the order
//! they were sent.
//!
//! When a batch that was given a sequence fails for good (a non-retriable error, among them
//! OUT_OF_ORDER_SEQUENCE_NUMBER for the oldest unacknowledged batch, or its delivery timeout),
//! the producer cannot know whether the broker holds it, and the batches after it in the
//! partition could only be appended behind a gap. **Every batch of that partition that was
//! already cut then fails with it** (with the same error); the partition starts over at
//! sequence 0 under a fresh producer id for records sent afterwards, so no later retry can
//! collide with the old numbering. Batches of other partitions are not affected. Without
//! idempotence, only the failed batch fails and retries may append a batch twice.

mod accumulator;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::{BatchBuilder, NewRecord};
pub use runnel_storage::{Compression, Header};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use self::accumulator::{Accumulator, BatchLimits, Cut, Tp, record_size_max};
use crate::error::{ClientError, code};
use crate::router::{Backoff, Failure, Next, Retry, Router, UNKNOWN_TOPIC_DEADLINE};

/// Most records in one batch (its byte size usually cuts it first).
const BATCH_RECORDS_MAX: usize = 100_000;
/// How long a client waits past a produce's own `timeout_ms` before it counts the attempt as
/// unanswered.
const ATTEMPT_MARGIN: Duration = Duration::from_millis(500);
/// Deadline of opening a produce stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the oldest batch in flight may wait for its answer before the sender asks the
/// other brokers whether leadership moved ([`Router::moved_from`]); then again every
/// [`LEADER_CHECK_INTERVAL`]. A stopped leader (SIGSTOP) or one cut off from its cluster
/// keeps the connection open, so without asking, the batches would wait for the request
/// timeout.
const LEADER_CHECK_AFTER: Duration = Duration::from_millis(300);
/// See [`LEADER_CHECK_AFTER`].
const LEADER_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Deadline of one InitProducerId call.
const INIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest idempotent in-flight window: brokers remember the last five batches of each
/// producer and partition, as Kafka's do.
pub const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;
/// How long a topic's partition count is trusted before `send` asks the metadata again (a
/// topic that grew gets records in its new partitions after at most this long).
const METADATA_MAX_AGE: Duration = Duration::from_secs(300);
/// The gRPC metadata key that carries [`ProducerConfig::client_id`].
pub const CLIENT_ID_KEY: &str = "runnel-client-id";

/// Which replicas must have a batch before the leader acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Every in-sync replica (Kafka's acks=all, -1). Needed by idempotence.
    #[default]
    All,
    /// The leader only (acks=1).
    Leader,
    /// No wait for the append (acks=0): the leader answers after validating, with no offsets
    /// (a record's offset is then -1).
    None,
}

impl Acks {
    fn to_pb(self) -> pb::Acks {
        match self {
            Acks::All => pb::Acks::All,
            Acks::Leader => pb::Acks::Leader,
            Acks::None => pb::Acks::None,
        }
    }
}

/// How a [`Producer`] batches, sends and retries.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Broker gRPC addresses (`host:port`) to ask for metadata first; others are learned.
    pub bootstrap: Vec<String>,
    /// TLS to the brokers (their CA), when the cluster serves it.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// A user's credentials, for a cluster with `--auth` (none by default).
    pub credentials: runnel_proto::security::Credentials,
    /// Names this producer to the brokers (sent as [`CLIENT_ID_KEY`] metadata).
    pub client_id: String,
    /// Default [`Acks::All`].
    pub acks: Acks,
    /// How long a batch waits for more records once it has its first. Default 5 ms.
    pub linger: Duration,
    /// Largest batch, in bytes (a bigger record is a batch of its own). Default 16 KiB.
    pub batch_size: usize,
    /// Batches in flight per partition. Default 5; at most [`IDEMPOTENT_IN_FLIGHT_MAX`] with
    /// idempotence.
    pub max_in_flight: usize,
    /// How long a record may take, from `send` to its answer, retries included. Default 120 s.
    pub delivery_timeout: Duration,
    /// How long the leader may wait for acks=all on one attempt (the request's `timeout_ms`);
    /// the producer waits a little longer for the answer. Default 30 s.
    pub request_timeout: Duration,
    /// Exactly-once appends per partition across retries. Default true; needs [`Acks::All`].
    pub idempotence: bool,
    /// The batches' compression. Default none.
    pub compression: Compression,
    /// Bytes of records the producer holds (batching, in flight, retrying) before `send`
    /// waits for room. Default 32 MiB.
    pub buffer_memory: usize,
}

impl ProducerConfig {
    /// Kafka's defaults, for the brokers at `bootstrap`.
    pub fn new(bootstrap: Vec<String>) -> Self {
        ProducerConfig {
            bootstrap,
            tls: None,
            credentials: runnel_proto::security::Credentials::none(),
            client_id: "runnel-producer".into(),
            acks: Acks::All,
            linger: Duration::from_millis(5),
            batch_size: 16 * 1024,
            max_in_flight: 5,
            delivery_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            idempotence: true,
            compression: Compression::None,
            buffer_memory: 32 * 1024 * 1024,
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        let invalid = |m: String| Err(ClientError::new(code::INVALID_REQUEST, "INVALID_CONFIG", m));
        if self.bootstrap.is_empty() {
            return invalid("no bootstrap address".into());
        }
        if self.batch_size == 0 || self.max_in_flight == 0 || self.buffer_memory == 0 {
            return invalid("batch_size, max_in_flight and buffer_memory must be positive".into());
        }
        if u32::try_from(self.buffer_memory).is_err() {
            return invalid(format!("buffer_memory {} is more than 4 GiB", self.buffer_memory));
        }
        if self.idempotence && self.acks != Acks::All {
            let acks = if self.acks == Acks::Leader { "1" } else { "0" };
            return invalid(format!("idempotence needs acks=all, not acks={acks}"));
        }
        if self.idempotence && self.max_in_flight > IDEMPOTENT_IN_FLIGHT_MAX {
            return invalid(format!(
                "idempotence allows at most {IDEMPOTENT_IN_FLIGHT_MAX} batches in flight per partition, not {}",
                self.max_in_flight
            ));
        }
        if u32::try_from(self.request_timeout.as_millis()).is_err() {
            return invalid(format!("request_timeout {:?} is too long", self.request_timeout));
        }
        Ok(())
    }
}

/// A record to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The topic.
    pub topic: String,
    /// The partition; `None`: by key, or sticky without a key.
    pub partition: Option<u32>,
    /// The key (also what the partitioner hashes).
    pub key: Option<Bytes>,
    /// The value.
    pub value: Option<Bytes>,
    /// Headers.
    pub headers: Vec<Header>,
    /// Create time in milliseconds since the Unix epoch; `None`: when `send` is called.
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: Some(value.into()),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sends to this partition whatever the key.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push(Header::new(key, value));
        self
    }

    /// Sets the create time.
    pub fn timestamp_ms(mut self, ms: i64) -> Self {
        self.timestamp_ms = Some(ms);
        self
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Its offset; -1 with [`Acks::None`].
    pub offset: i64,
    /// Its create time, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// A record that was not delivered, and where it was going (as Kafka's callbacks get the
/// partition of a failed record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    /// The topic.
    pub topic: String,
    /// The partition, when one was chosen before the failure.
    pub partition: Option<u32>,
    /// Why.
    pub error: ClientError,
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for DeliveryError {}

impl From<DeliveryError> for ClientError {
    fn from(e: DeliveryError) -> Self {
        e.error
    }
}

/// The result of sending one record.
pub type Delivery = Result<RecordMetadata, DeliveryError>;

/// Resolves when the record is acknowledged or has failed for good.
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Delivery>,
    topic: String,
}

impl Future for DeliveryFuture {
    type Output = Delivery;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Delivery> {
        let topic = &self.topic;
        let topic = topic.clone();
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(DeliveryError { topic, partition: None, error: stopped() })))
    }
}

/// What a record's sender waits on.
enum Waiter {
    Future(oneshot::Sender<Delivery>),
    Callback(Box<dyn FnOnce(Delivery) + Send>),
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Waiter::Future(_) => "Waiter::Future",
            Waiter::Callback(_) => "Waiter::Callback",
        })
    }
}

impl Waiter {
    fn complete(self, delivery: Delivery) {
        match self {
            // The sender may have dropped its future: nobody to tell.
            Waiter::Future(tx) => {
                let _ = tx.send(delivery);
            }
            Waiter::Callback(f) => f(delivery),
        }
    }
}

/// A record in a batch: who waits for it and its timestamp.
#[derive(Debug)]
struct Pending {
    waiter: Waiter,
    timestamp_ms: i64,
}

fn stopped() -> ClientError {
    ClientError::new(-1, "UNKNOWN_SERVER_ERROR", "the producer stopped before the record was delivered")
}

fn closed() -> ClientError {
    ClientError::new(code::INVALID_REQUEST, "PRODUCER_CLOSED", "the producer is closed")
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How many records with a `key_len`-byte key (`None`: no key), a `value_len`-byte value and
/// no headers the producer puts in one batch of at most `batch_size` bytes: the batch is cut
/// as soon as another such record would not fit. A benchmark that hands the producer runs
/// of this many records gets one full batch per run.
pub fn records_per_batch(batch_size: usize, key_len: Option<usize>, value_len: usize) -> usize {
    accumulator::records_per_batch(batch_size.max(1), BATCH_RECORDS_MAX, key_len, value_len)
}

/// The sequence after a batch of `records` records starting at `base`: Kafka's numbering wraps
/// from `i32::MAX` to 0.
pub fn next_sequence(base: i32, records: usize) -> i32 {
    let modulus = i64::from(i32::MAX) + 1;
    let records = i64::try_from(records).unwrap_or(i64::MAX) % modulus;
    ((i64::from(base) + records) % modulus) as i32
}

/// A producer id and epoch from `InitProducerId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIds {
    /// The producer id, at least 0.
    pub id: i64,
    /// The epoch, 0 to 32767.
    pub epoch: i16,
}

/// Asks the brokers at `addrs`, in turn, for a producer id; answers the first valid answer or
/// the last failure, classified for a retry.
async fn init_producer_id_once(router: &Router, addrs: &[String]) -> Result<ProducerIds, Failure> {
    let mut last = network("-", "no broker address");
    for addr in addrs {
        let mut client = match router.client(addr) {
            Ok(c) => c,
            Err(error) => {
                last = Failure { error, next: Next::Fail };
                continue;
            }
        };
        let call = client.init_producer_id(pb::InitProducerIdRequest {});
        last = match tokio::time::timeout(INIT_TIMEOUT, call).await {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                match i16::try_from(answer.producer_epoch) {
                    Ok(epoch) if answer.producer_id >= 0 && epoch >= 0 => {
                        return Ok(ProducerIds { id: answer.producer_id, epoch });
                    }
                    _ => Failure {
                        error: ClientError::new(
                            -1,
                            "UNKNOWN_SERVER_ERROR",
                            format!(
                                "broker {addr} handed out producer id {} epoch {}",
                                answer.producer_id, answer.producer_epoch
                            ),
                        ),
                        next: Next::Refresh,
                    },
                }
            }
            Ok(Err(status)) => Failure::from_status(status, addr),
            Err(_) => Failure {
                error: ClientError::new(
                    code::REQUEST_TIMED_OUT,
                    "REQUEST_TIMED_OUT",
                    format!("broker {addr}: InitProducerId timed out after {INIT_TIMEOUT:?}"),
                ),
                next: Next::Refresh,
            },
        };
    }
    Err(last)
}

/// [`init_producer_id_once`], retried while the failure is retriable (a broker without its
/// block of ids yet answers LEADER_NOT_AVAILABLE), within the router's deadlines.
async fn init_producer_id(router: &Router, addrs: &[String]) -> Result<ProducerIds, ClientError> {
    let mut retry = Retry::new();
    loop {
        match init_producer_id_once(router, addrs).await {
            Ok(ids) => return Ok(ids),
            Err(failure) => tokio::time::sleep(retry.after(&failure)?).await,
        }
    }
}

/// Counters of what a producer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStats {
    /// Batches acknowledged.
    pub batches: u64,
    /// Batch attempts that failed and were sent again.
    pub retries: u64,
    /// Acknowledgements that were answered `duplicate` (a retry of a batch the leader had).
    pub duplicates: u64,
    /// Batches that failed for good.
    pub failed_batches: u64,
    /// Producer ids taken after the first (a partition started over after a failure).
    pub id_resets: u64,
    /// Times batches waiting on a silent leader were sent to the new leader the other
    /// brokers named ([`Router::moved_from`]).
    pub leader_moves: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    retries: AtomicU64,
    duplicates: AtomicU64,
    failed_batches: AtomicU64,
    id_resets: AtomicU64,
    leader_moves: AtomicU64,
}

/// What every task of a producer shares.
#[derive(Debug)]
struct Shared {
    config: ProducerConfig,
    router: Arc<Router>,
    /// The producer id every partition starts with (`None` without idempotence).
    ids: Option<ProducerIds>,
    /// Room for records, in bytes: taken by `send`, given back when a batch completes.
    memory: Arc<Semaphore>,
    counters: Counters,
    /// Partition counts by topic, with when they were learned: `send` looks here first, so
    /// a record costs no metadata lookup (Kafka's `metadata.max.age.ms` bounds their age).
    partition_counts: std::sync::Mutex<HashMap<String, (u32, Instant)>>,
}

/// What the driver task is asked to do.
#[derive(Debug)]
enum Command {
    Record {
        topic: Arc<str>,
        partitions: u32,
        fixed: Option<u32>,
        record: NewRecord,
        pending: Pending,
        bytes: usize,
    },
    /// Cut every open batch and answer one receiver per partition, resolved when everything
    /// before it is done.
    Flush(oneshot::Sender<Vec<oneshot::Receiver<()>>>),
    /// Flush, then stop every task; answered when they have.
    Close(oneshot::Sender<()>),
}

/// Sends records to a Runnel cluster; see the module docs. Clones share one producer.
///
/// Dropping every clone without [`Producer::close`] still delivers what was sent, in the
/// background, as long as the runtime runs.
#[derive(Debug, Clone)]
pub struct Producer {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Command>,
    closed: Arc<AtomicBool>,
}

impl Producer {
    /// Checks `config`, takes a producer id (with idempotence) and starts the driver task on
    /// the current tokio runtime.
    pub async fn new(config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate()?;
        let router = Arc::new(
            Router::new(config.bootstrap.clone())
                .with_tls(config.tls.clone())
                .with_credentials(config.credentials.clone()),
        );
        let ids =
            if config.idempotence { Some(init_producer_id(&router, &config.bootstrap).await?) } else { None };
        let memory = Arc::new(Semaphore::new(config.buffer_memory));
        let shared = Arc::new(Shared {
            config,
            router,
            ids,
            memory,
            counters: Counters::default(),
            partition_counts: std::sync::Mutex::default(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(shared.clone(), rx));
        Ok(Producer { shared, tx, closed: Arc::new(AtomicBool::new(false)) })
    }

    /// The producer id and epoch (`None` without idempotence). A partition whose batch failed
    /// for good continues under a fresh id of its own.
    pub fn ids(&self) -> Option<ProducerIds> {
        self.shared.ids
    }

    /// The number of partitions of `topic`, from the producer's metadata (waiting briefly for a
    /// topic that was just created).
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        let now = Instant::now();
        {
            let counts =
                self.shared.partition_counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(&(count, at)) = counts.get(topic)
                && now.saturating_duration_since(at) < METADATA_MAX_AGE
            {
                return Ok(count);
            }
        }
        let count = self.shared.router.partition_count(topic).await?;
        let mut counts =
            self.shared.partition_counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.insert(topic.to_owned(), (count, now));
        Ok(count)
    }

    /// What the producer did so far.
    pub fn stats(&self) -> ProducerStats {
        let c = &self.shared.counters;
        ProducerStats {
            batches: c.batches.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
            id_resets: c.id_resets.load(Ordering::Relaxed),
            leader_moves: c.leader_moves.load(Ordering::Relaxed),
        }
    }

    /// Queues `record` (waiting for room in the buffer when it is full) and answers a future
    /// of its delivery. Records sent one after another to one partition are appended, and
    /// acknowledged, in that order. A record that cannot be queued (unknown topic or
    /// partition, bigger than the buffer, closed producer) resolves with the error at once.
    pub async fn send(&self, record: ProducerRecord) -> DeliveryFuture {
        let (tx, rx) = oneshot::channel();
        let topic = record.topic.clone();
        self.enqueue(record, Waiter::Future(tx)).await;
        DeliveryFuture { rx, topic }
    }

    /// As [`Producer::send`], with `callback` called once with the delivery, on a producer
    /// task: it should be quick and must not block.
    pub async fn send_with_callback<F>(&self, record: ProducerRecord, callback: F)
    where
        F: FnOnce(Delivery) + Send + 'static,
    {
        self.enqueue(record, Waiter::Callback(Box::new(callback))).await;
    }

    async fn enqueue(&self, record: ProducerRecord, waiter: Waiter) {
        let fail = |waiter: Waiter, topic: String, error: ClientError| {
            waiter.complete(Err(DeliveryError { topic, partition: record.partition, error }))
        };
        if self.closed.load(Ordering::Acquire) {
            return fail(waiter, record.topic, closed());
        }
        let partitions = match self.partition_count(&record.topic).await {
            Ok(n) => n,
            Err(e) => return fail(waiter, record.topic, e),
        };
        if let Some(p) = record.partition.filter(|&p| p >= partitions) {
            let topic = record.topic.clone();
            return fail(
                waiter,
                topic,
                ClientError::new(
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    "UNKNOWN_TOPIC_OR_PARTITION",
                    format!(
                        "topic {:?} has {partitions} partitions; there is no partition {p}",
                        record.topic
                    ),
                ),
            );
        }
        let timestamp_ms = record.timestamp_ms.unwrap_or_else(now_ms);
        let (topic, fixed) = (record.topic, record.partition);
        let new = NewRecord { key: record.key, value: record.value, headers: record.headers, timestamp_ms };
        let bytes = record_size_max(&new);
        let Some(permits) = u32::try_from(bytes).ok().filter(|_| bytes <= self.shared.config.buffer_memory)
        else {
            let message = format!(
                "a record of up to {bytes} bytes does not fit the producer's buffer of {} bytes",
                self.shared.config.buffer_memory
            );
            return fail(
                waiter,
                topic,
                ClientError::new(code::MESSAGE_TOO_LARGE, "MESSAGE_TOO_LARGE", message),
            );
        };
        match self.shared.memory.acquire_many(permits).await {
            // Given back by the partition task when the record's batch completes.
            Ok(permit) => permit.forget(),
            Err(_) => return fail(waiter, topic, closed()),
        }
        let command = Command::Record {
            topic: Arc::from(topic.as_str()),
            partitions,
            fixed,
            record: new,
            pending: Pending { waiter, timestamp_ms },
            bytes,
        };
        if let Err(mpsc::error::SendError(command)) = self.tx.send(command) {
            self.shared.memory.add_permits(bytes);
            if let Command::Record { pending, .. } = command {
                fail(pending.waiter, topic, closed());
            }
        }
    }

    /// Sends every batch now (without waiting for linger) and waits until every record sent
    /// before the call has been acknowledged or has failed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).is_err() {
            return;
        }
        if let Ok(waits) = rx.await {
            for w in waits {
                let _ = w.await;
            }
        }
    }

    /// Refuses new records, delivers every record sent (or fails it, within the delivery
    /// timeout) and stops the producer's tasks. Every clone is closed.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A partition's inbox.
#[derive(Debug)]
enum ToPartition {
    Batch(Cut<Pending>),
    Flush(oneshot::Sender<()>),
}

/// The driver: owns the accumulator, cuts batches by size and linger, and hands them to one
/// task per partition.
async fn drive(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let limits = BatchLimits {
        bytes_max: shared.config.batch_size,
        records_max: BATCH_RECORDS_MAX,
        linger: shared.config.linger,
        compression: shared.config.compression,
    };
    let mut acc: Accumulator<Pending> = Accumulator::new(limits);
    let mut partitions: HashMap<Tp, mpsc::UnboundedSender<ToPartition>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let sticky_start = rand::random::<u32>();
    let forward = |cuts: Vec<Cut<Pending>>,
                   partitions: &mut HashMap<Tp, mpsc::UnboundedSender<ToPartition>>,
                   tasks: &mut JoinSet<()>| {
        for cut in cuts {
            let inbox = partitions.entry(cut.tp.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tasks.spawn(PartitionSender::new(shared.clone(), cut.tp.clone(), rx).run());
                tx
            });
            // A partition task only ends once its inbox is closed, which happens below.
            if let Err(mpsc::error::SendError(ToPartition::Batch(cut))) = inbox.send(ToPartition::Batch(cut))
            {
                shared.memory.add_permits(cut.bytes);
                for p in cut.waiters {
                    let error = DeliveryError {
                        topic: cut.tp.0.to_string(),
                        partition: Some(cut.tp.1),
                        error: stopped(),
                    };
                    p.waiter.complete(Err(error));
                }
            }
        }
    };
    loop {
        let command = match acc.next_due() {
            // A batch already due (always so without linger): take what is queued first, so
            // records that arrived together go together, then cut, without a trip through
            // the timer wheel (whose tick is a millisecond).
            Some(due) if due <= Instant::now() => match rx.try_recv() {
                Ok(command) => Some(command),
                Err(mpsc::error::TryRecvError::Empty) => {
                    forward(acc.due(Instant::now()), &mut partitions, &mut tasks);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            },
            Some(due) => tokio::select! {
                c = rx.recv() => c,
                () = tokio::time::sleep_until(due) => {
                    forward(acc.due(Instant::now()), &mut partitions, &mut tasks);
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match command {
            Some(Command::Record { topic, partitions: count, fixed, record, pending, bytes }) => {
                let p = acc.partition_of(&topic, count, fixed, record.key.as_deref(), sticky_start);
                let cuts = acc.push((topic, p), record, pending, bytes, Instant::now());
                forward(cuts, &mut partitions, &mut tasks);
            }
            Some(Command::Flush(reply)) => {
                forward(acc.flush(), &mut partitions, &mut tasks);
                let waits = partitions
                    .values()
                    .filter_map(|inbox| {
                        let (tx, rx) = oneshot::channel();
                        inbox.send(ToPartition::Flush(tx)).ok().map(|()| rx)
                    })
                    .collect();
                let _ = reply.send(waits);
            }
            Some(Command::Close(reply)) => {
                forward(acc.flush(), &mut partitions, &mut tasks);
                partitions.clear();
                while tasks.join_next().await.is_some() {}
                let _ = reply.send(());
                return;
            }
            None => {
                // Every handle is gone: deliver what there is, then stop.
                forward(acc.flush(), &mut partitions, &mut tasks);
                partitions.clear();
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// A batch of one partition, from its cut to its answer.
#[derive(Debug)]
struct Batch {
    /// Until its first send.
    builder: Option<BatchBuilder>,
    /// Built at its first send, resent as is.
    encoded: Option<Bytes>,
    /// With idempotence, from its first send.
    base_sequence: Option<i32>,
    waiters: Vec<Pending>,
    bytes: usize,
    /// When its first record was sent: its delivery deadline runs from here.
    created: Instant,
    /// The current attempt: its request id on the stream and when it was sent.
    id: u64,
    sent_at: Instant,
}

/// One ProduceStream to a partition's leader. A task reads the answers, so waiting for one
/// can be abandoned without losing it.
#[derive(Debug)]
struct Conn {
    addr: String,
    tx: mpsc::Sender<pb::ProduceStreamRequest>,
    answers: mpsc::Receiver<Result<Option<pb::ProduceStreamResponse>, tonic::Status>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Sends one partition's batches: see the module docs.
#[derive(Debug)]
struct PartitionSender {
    shared: Arc<Shared>,
    topic: Arc<str>,
    partition: u32,
    inbox: mpsc::UnboundedReceiver<ToPartition>,
    inbox_closed: bool,
    /// Batches not yet acknowledged, in order; the first `sent` are on `conn`.
    pending: VecDeque<Batch>,
    sent: usize,
    conn: Option<Conn>,
    next_id: u64,
    /// With idempotence: this partition's producer id (`None`: take a fresh one first) and
    /// the next batch's base sequence.
    ids: Option<ProducerIds>,
    next_sequence: i32,
    /// No send before this (backing off after a failure).
    not_before: Option<Instant>,
    backoff: Backoff,
    redirects_in_a_row: u32,
    unknown_since: Option<Instant>,
    /// Asking whether leadership moved while the front batch waits ([`LEADER_CHECK_AFTER`]),
    /// and when the last such question was answered.
    leader_check: Option<LeaderCheck>,
    leader_checked_at: Option<Instant>,
    /// Batches received and batches finished (acknowledged or failed), for flushes.
    received: u64,
    finished: u64,
    flushes: Vec<(u64, oneshot::Sender<()>)>,
}

impl PartitionSender {
    fn new(shared: Arc<Shared>, tp: Tp, inbox: mpsc::UnboundedReceiver<ToPartition>) -> Self {
        let ids = shared.ids;
        PartitionSender {
            shared,
            topic: tp.0,
            partition: tp.1,
            inbox,
            inbox_closed: false,
            pending: VecDeque::new(),
            sent: 0,
            conn: None,
            next_id: 0,
            ids,
            next_sequence: 0,
            not_before: None,
            backoff: Backoff::new(),
            redirects_in_a_row: 0,
            unknown_since: None,
            leader_check: None,
            leader_checked_at: None,
            received: 0,
            finished: 0,
            flushes: Vec::new(),
        }
    }

    fn attempt_timeout(&self) -> Duration {
        self.shared.config.request_timeout + ATTEMPT_MARGIN
    }

    async fn run(mut self) {
        loop {
            if self.inbox_closed && self.pending.is_empty() {
                return;
            }
            if self.not_before.is_some_and(|t| t <= Instant::now()) {
                self.not_before = None;
            }
            if self.not_before.is_none() {
                self.fill().await;
                // A failure that retries at once (a first redirect) leaves batches to send and
                // nothing in flight: send them now rather than wait for an unrelated event.
                if self.sent == 0 && !self.pending.is_empty() && self.not_before.is_none() {
                    continue;
                }
            }
            let front_deadline = (self.sent > 0).then(|| self.pending[0].sent_at + self.attempt_timeout());
            let check_at = (self.sent > 0 && self.conn.is_some() && self.leader_check.is_none()).then(|| {
                let due = self.pending[0].sent_at + LEADER_CHECK_AFTER;
                self.leader_checked_at.map_or(due, |at| due.max(at + LEADER_CHECK_INTERVAL))
            });
            let not_before = self.not_before;
            tokio::select! {
                message = self.inbox.recv(), if !self.inbox_closed => match message {
                    Some(ToPartition::Batch(cut)) => {
                        self.received += 1;
                        self.pending.push_back(Batch {
                            builder: Some(cut.builder),
                            encoded: None,
                            base_sequence: None,
                            waiters: cut.waiters,
                            bytes: cut.bytes,
                            created: cut.opened,
                            id: 0,
                            sent_at: cut.opened,
                        });
                    }
                    Some(ToPartition::Flush(done)) => {
                        if self.finished >= self.received {
                            let _ = done.send(());
                        } else {
                            self.flushes.push((self.received, done));
                        }
                    }
                    None => self.inbox_closed = true,
                },
                answer = recv_answer(&mut self.conn), if self.sent > 0 => self.on_answer(answer),
                () = sleep_until_some(front_deadline), if front_deadline.is_some() => {
                    let addr = self.conn.as_ref().map_or("?", |c| c.addr.as_str()).to_owned();
                    let failure = Failure {
                        error: ClientError::new(
                            code::REQUEST_TIMED_OUT,
                            "REQUEST_TIMED_OUT",
                            format!("broker {addr} did not answer within {:?}", self.attempt_timeout()),
                        ),
                        next: Next::Refresh,
                    };
                    self.on_failure(failure);
                }
                () = sleep_until_some(not_before), if not_before.is_some() => self.not_before = None,
                () = sleep_until_some(check_at), if check_at.is_some() => self.start_leader_check(),
                moved = leader_check_answer(&mut self.leader_check), if self.leader_check.is_some() => {
                    self.on_leader_check(moved);
                }
            }
        }
    }

    /// Asks the other brokers whether the partition's leadership moved away from the broker
    /// the front batch waits on.
    fn start_leader_check(&mut self) {
        let Some(conn) = &self.conn else { return };
        let from = conn.addr.clone();
        let router = self.shared.router.clone();
        let (topic, partition, asked) = (self.topic.clone(), self.partition, from.clone());
        let answer = Box::pin(async move { router.moved_from(&topic, partition, &asked).await });
        self.leader_check = Some(LeaderCheck { from, answer });
    }

    /// Leadership moved to `moved` while batches wait on the old leader: resend them there
    /// (with idempotence the new leader answers any it already holds as duplicates).
    fn on_leader_check(&mut self, moved: Option<String>) {
        let Some(check) = self.leader_check.take() else { return };
        self.leader_checked_at = Some(Instant::now());
        let Some(to) = moved else { return };
        let waiting_there = self.sent > 0 && self.conn.as_ref().is_some_and(|c| c.addr == check.from);
        if !waiting_there {
            return;
        }
        self.shared.counters.leader_moves.fetch_add(1, Ordering::Relaxed);
        let error = ClientError::new(
            code::NOT_LEADER_OR_FOLLOWER,
            "NOT_LEADER_OR_FOLLOWER",
            format!(
                "broker {} has not answered for {:?} and the other brokers name {to} the leader of {}-{}",
                check.from,
                self.pending[0].sent_at.elapsed(),
                self.topic,
                self.partition
            ),
        );
        self.on_failure(Failure { error, next: Next::Redirect(to) });
    }

    /// Sends batches until the window is full: retries first (they are at the front), then
    /// new ones. Opens a stream to the leader when there is none.
    async fn fill(&mut self) {
        let window = self.shared.config.max_in_flight;
        while self.sent < self.pending.len() && self.sent < window && self.not_before.is_none() {
            if self.conn.is_none() {
                match open(self.shared.clone(), self.topic.clone(), self.partition).await {
                    Ok(conn) => self.conn = Some(conn),
                    Err(failure) => return self.on_failure(failure),
                }
            }
            let i = self.sent;
            if self.pending[i].encoded.is_none() {
                match self.encode(i).await {
                    Ok(()) => {}
                    Err((failure, retriable)) if retriable => return self.on_failure(failure),
                    Err((failure, _)) => {
                        // Nothing of it was sent and no sequence taken: it fails alone.
                        if let Some(batch) = self.pending.remove(i) {
                            self.finish(batch, Err(failure.error));
                        }
                        continue;
                    }
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            let batch = &mut self.pending[i];
            let request = pb::ProduceStreamRequest {
                id,
                request: Some(pb::ProduceRequest {
                    topic: self.topic.to_string(),
                    partition: self.partition,
                    acks: self.shared.config.acks.to_pb() as i32,
                    timeout_ms: u32::try_from(self.shared.config.request_timeout.as_millis())
                        .unwrap_or(u32::MAX),
                    data: batch.encoded.clone().map(pb::produce_request::Data::Batch),
                    producer: None,
                }),
            };
            batch.id = id;
            batch.sent_at = Instant::now();
            let Some(conn) = &self.conn else { return };
            // The channel holds a whole window, so this only fails when the stream is gone.
            if conn.tx.try_send(request).is_err() {
                let failure = network(&conn.addr, "the produce stream closed");
                return self.on_failure(failure);
            }
            self.sent += 1;
        }
    }

    /// Builds batch `i`'s bytes, giving it the next sequence with idempotence. `Err` with
    /// whether the failure can be retried.
    async fn encode(&mut self, i: usize) -> Result<(), (Failure, bool)> {
        let Some(builder) = self.pending[i].builder.take() else {
            let e = ClientError::new(-1, "UNKNOWN_SERVER_ERROR", "a batch without records");
            return Err((Failure { error: e, next: Next::Fail }, false));
        };
        let records = builder.len();
        let builder = if self.shared.config.idempotence {
            let ids = match self.ids {
                Some(ids) => ids,
                None => {
                    // This partition failed a sequenced batch: start over with a fresh id.
                    let mut addrs = Vec::new();
                    if let Ok(leader) = self.shared.router.leader(&self.topic, self.partition).await {
                        addrs.push(leader);
                    }
                    addrs.extend(self.shared.config.bootstrap.iter().cloned());
                    match init_producer_id_once(&self.shared.router, &addrs).await {
                        Ok(ids) => {
                            self.shared.counters.id_resets.fetch_add(1, Ordering::Relaxed);
                            self.ids = Some(ids);
                            self.next_sequence = 0;
                            ids
                        }
                        Err(failure) => {
                            self.pending[i].builder = Some(builder);
                            let retriable = failure.retriable();
                            return Err((failure, retriable));
                        }
                    }
                }
            };
            self.pending[i].base_sequence = Some(self.next_sequence);
            builder.producer(ids.id, ids.epoch, self.next_sequence)
        } else {
            builder
        };
        match builder.build() {
            Ok(bytes) => {
                self.pending[i].encoded = Some(Bytes::from(bytes));
                if self.shared.config.idempotence {
                    self.next_sequence = next_sequence(self.next_sequence, records);
                }
                Ok(())
            }
            Err(e) => {
                self.pending[i].base_sequence = None;
                let error = ClientError::new(
                    code::INVALID_RECORD,
                    "INVALID_RECORD",
                    format!("cannot build a batch: {e}"),
                );
                Err((Failure { error, next: Next::Fail }, false))
            }
        }
    }

    fn on_answer(&mut self, answer: Option<Result<Option<pb::ProduceStreamResponse>, tonic::Status>>) {
        let addr = self.conn.as_ref().map_or_else(String::new, |c| c.addr.clone());
        let response = match answer {
            Some(Ok(Some(response))) => response,
            None | Some(Ok(None)) => return self.on_failure(network(&addr, "the produce stream ended")),
            Some(Err(status)) => return self.on_failure(Failure::from_status(status, &addr)),
        };
        if self.pending.front().is_none_or(|b| b.id != response.id) {
            // Answers come in request order; anything else breaks the protocol: start over.
            let why = format!("an answer with id {} out of order", response.id);
            return self.on_failure(network(&addr, &why));
        }
        match response.result {
            Some(pb::produce_stream_response::Result::Response(r)) => self.acknowledged(r),
            Some(pb::produce_stream_response::Result::Error(e)) => {
                self.on_failure(Failure::from_pb(&e, &addr))
            }
            None => {
                let error = ClientError::new(
                    -1,
                    "UNKNOWN_SERVER_ERROR",
                    format!("broker {addr}: answer {} carries neither a response nor an error", response.id),
                );
                self.on_failure(Failure { error, next: Next::Refresh })
            }
        }
    }

    /// The front batch was acknowledged.
    fn acknowledged(&mut self, response: pb::ProduceResponse) {
        let Some(batch) = self.pending.pop_front() else { return };
        self.sent = self.sent.saturating_sub(1);
        self.backoff.reset();
        self.redirects_in_a_row = 0;
        self.unknown_since = None;
        let counters = &self.shared.counters;
        counters.batches.fetch_add(1, Ordering::Relaxed);
        if response.duplicate {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        let records = batch.waiters.len();
        let answered = response.last_offset.checked_sub(response.base_offset).and_then(|d| d.checked_add(1));
        if self.shared.config.acks != Acks::None && answered != i64::try_from(records).ok() {
            tracing::warn!(
                topic = &*self.topic,
                partition = self.partition,
                records,
                base_offset = response.base_offset,
                last_offset = response.last_offset,
                "the broker's offsets do not match the batch's record count"
            );
        }
        self.finish(batch, Ok(response.base_offset));
    }

    /// Completes every record of `batch`: at `base_offset` onwards, or with the error.
    fn finish(&mut self, batch: Batch, result: Result<i64, ClientError>) {
        self.shared.memory.add_permits(batch.bytes);
        for (i, p) in batch.waiters.into_iter().enumerate() {
            let delivery = match &result {
                Ok(base) => Ok(RecordMetadata {
                    topic: self.topic.to_string(),
                    partition: self.partition,
                    offset: if *base >= 0 { base + i as i64 } else { -1 },
                    timestamp_ms: p.timestamp_ms,
                }),
                Err(e) => Err(DeliveryError {
                    topic: self.topic.to_string(),
                    partition: Some(self.partition),
                    error: e.clone(),
                }),
            };
            p.waiter.complete(delivery);
        }
        self.finished += 1;
        let finished = self.finished;
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.flushes).into_iter().partition(|(target, _)| *target <= finished);
        self.flushes = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    /// An attempt failed: drop the stream, then retry everything from the front batch on, or
    /// fail it (and, with idempotence, the rest of the partition) for good.
    fn on_failure(&mut self, failure: Failure) {
        self.shared.router.note_failure(&self.topic, self.partition, &failure);
        self.conn = None;
        let was_in_flight = self.sent;
        self.sent = 0;
        let Some(front) = self.pending.front() else { return };
        let now = Instant::now();
        let expired = now.saturating_duration_since(front.created) >= self.shared.config.delivery_timeout;
        let unknown_too_long = failure.next == Next::Unknown
            && now.saturating_duration_since(*self.unknown_since.get_or_insert(now))
                >= UNKNOWN_TOPIC_DEADLINE;
        if failure.retriable() && !expired && !unknown_too_long {
            self.shared.counters.retries.fetch_add(was_in_flight.max(1) as u64, Ordering::Relaxed);
            let delay = if matches!(failure.next, Next::Redirect(_)) && self.redirects_in_a_row == 0 {
                Duration::ZERO
            } else {
                self.backoff.next_delay()
            };
            self.redirects_in_a_row =
                if matches!(failure.next, Next::Redirect(_)) { self.redirects_in_a_row + 1 } else { 0 };
            tracing::debug!(
                topic = &*self.topic,
                partition = self.partition,
                error = %failure.error,
                ?delay,
                batches = was_in_flight,
                "retrying"
            );
            self.not_before = (!delay.is_zero()).then(|| now + delay);
            return;
        }
        let mut error = failure.error;
        if expired {
            error.message = format!(
                "{} (partition {}: not delivered within the delivery timeout of {:?})",
                error.message, self.partition, self.shared.config.delivery_timeout
            );
        }
        self.backoff.reset();
        self.redirects_in_a_row = 0;
        self.unknown_since = None;
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let sequenced = front.base_sequence.is_some();
        let Some(front) = self.pending.pop_front() else { return };
        counters.failed_batches.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(topic = &*self.topic, partition = self.partition, %error, "a batch failed");
        self.finish(front, Err(error.clone()));
        if sequenced {
            // The broker may or may not hold it: later batches could only follow a gap. They
            // fail too, and the partition starts over under a fresh producer id.
            let later = format!("an earlier batch of partition {} failed: {error}", self.partition);
            let later = ClientError { message: later, ..error };
            while let Some(batch) = self.pending.pop_front() {
                counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                self.finish(batch, Err(later.clone()));
            }
            self.ids = None;
            self.next_sequence = 0;
        }
    }
}

/// Opens a ProduceStream to the leader of `topic`/`partition`.
async fn open(shared: Arc<Shared>, topic: Arc<str>, partition: u32) -> Result<Conn, Failure> {
    let addr = shared.router.leader(&topic, partition).await?;
    let mut client = shared.router.client(&addr).map_err(|error| Failure { error, next: Next::Fail })?;
    let (tx, rx) = mpsc::channel(shared.config.max_in_flight + 1);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Ok(id) = shared.config.client_id.parse() {
        request.metadata_mut().insert(CLIENT_ID_KEY, id);
    }
    let opened = tokio::select! {
        opened = tokio::time::timeout(OPEN_TIMEOUT, client.produce_stream(request)) => opened,
        // A stopped leader does not answer the stream's opening either.
        to = moved_while_waiting(&shared.router, &topic, partition, &addr) => {
            shared.counters.leader_moves.fetch_add(1, Ordering::Relaxed);
            let error = ClientError::new(
                code::NOT_LEADER_OR_FOLLOWER,
                "NOT_LEADER_OR_FOLLOWER",
                format!("broker {addr} did not open a produce stream, and the other brokers name {to} the leader of {topic}-{partition}"),
            );
            return Err(Failure { error, next: Next::Redirect(to) });
        }
    };
    match opened {
        Ok(Ok(response)) => {
            let mut responses = response.into_inner();
            let (answer_tx, answers) = mpsc::channel(shared.config.max_in_flight + 1);
            let reader = tokio::spawn(async move {
                loop {
                    let answer = responses.message().await;
                    let last = !matches!(answer, Ok(Some(_)));
                    if answer_tx.send(answer).await.is_err() || last {
                        return;
                    }
                }
            });
            Ok(Conn { addr, tx, answers, reader })
        }
        Ok(Err(status)) => Err(Failure::from_status(status, &addr)),
        Err(_) => Err(Failure {
            error: ClientError::new(
                code::REQUEST_TIMED_OUT,
                "REQUEST_TIMED_OUT",
                format!("broker {addr} did not open a produce stream within {OPEN_TIMEOUT:?}"),
            ),
            next: Next::Refresh,
        }),
    }
}

/// Returns once the other brokers name a leader of `topic`/`partition` other than `from`,
/// asking after [`LEADER_CHECK_AFTER`] and then every [`LEADER_CHECK_INTERVAL`].
async fn moved_while_waiting(router: &Router, topic: &str, partition: u32, from: &str) -> String {
    tokio::time::sleep(LEADER_CHECK_AFTER).await;
    loop {
        if let Some(to) = router.moved_from(topic, partition, from).await {
            return to;
        }
        tokio::time::sleep(LEADER_CHECK_INTERVAL).await;
    }
}

fn network(addr: &str, why: &str) -> Failure {
    Failure {
        error: ClientError::new(
            code::NETWORK_EXCEPTION,
            "NETWORK_EXCEPTION",
            format!("broker {addr}: {why}"),
        ),
        next: Next::Refresh,
    }
}

/// The next answer on `conn` (pending forever without one).
async fn recv_answer(
    conn: &mut Option<Conn>,
) -> Option<Result<Option<pb::ProduceStreamResponse>, tonic::Status>> {
    match conn {
        Some(c) => c.answers.recv().await,
        None => std::future::pending().await,
    }
}

/// A [`Router::moved_from`] call in progress, and the broker it asks about.
struct LeaderCheck {
    from: String,
    answer: Pin<Box<dyn Future<Output = Option<String>> + Send>>,
}

impl std::fmt::Debug for LeaderCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderCheck").field("from", &self.from).finish_non_exhaustive()
    }
}

/// The answer of the leader check in progress (pending forever without one).
async fn leader_check_answer(check: &mut Option<LeaderCheck>) -> Option<String> {
    match check {
        Some(c) => c.answer.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
