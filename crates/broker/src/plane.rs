//! The data plane: produce, fetch, list offsets, metadata and producer ids over the hosted
//! partitions, as plain functions with typed arguments and [`BrokerError`]s that carry
//! Kafka's codes. It knows no transport: the gRPC service ([`crate::service`]) and the Kafka
//! listener (`runnel-kafka`) are thin front-ends over it, so a record produced through one
//! reads back byte-identical through the other.
//!
//! Every batch is validated here, whichever front-end it came through, before it touches a
//! log; stored batches are read back as they are.

use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use bytes::Bytes;
use runnel_storage::record::{BatchBuilder, NewRecord};
use runnel_storage::{Compression, DecodeLimits, ProduceChecks, TopicPartition, check_producer_batch};

use crate::ProducerIds;
use crate::cache::MetadataCache;
use crate::error::{BrokerError, ErrorCode, LeaderHint};
use crate::metrics::{PlaneMetrics, Protocol};
use crate::off_the_workers;
use crate::replica::{Limits, Partition, ReplicaManager, TopicConfigEntry, describe_topic_configs};

/// Most bytes one fetch response carries (`fetch_bytes_max`), beyond one larger batch.
pub const FETCH_BYTES_MAX: usize = 64 << 20;
/// Fetch size when the request gives none.
pub const FETCH_BYTES_DEFAULT: usize = 1 << 20;
/// Longest fetch long-poll.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(60);
/// acks=all timeout when the request gives none.
pub const PRODUCE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Longest acks=all timeout a request may ask for.
pub const PRODUCE_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// Most bytes a produced batch's records may take once decompressed. A client's batch is
/// bounded by `max.message.bytes` as sent; this bounds what decompressing it on the leader
/// may allocate (a compression bomb), whatever the batch claims. Producers batch by
/// uncompressed size (Kafka's `batch.size`, librdkafka's 1 MB), far below it.
pub const PRODUCE_DECOMPRESSED_BYTES_MAX: usize = 32 << 20;

/// How many replicas must have a record before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: no answer is awaited (the front-end may send none).
    None,
    /// acks=1: the leader's log has it.
    Leader,
    /// acks=all: every in-sync replica has it, and the ISR is at least min.insync.replicas.
    All,
}

/// What to append.
#[derive(Debug, Clone)]
pub enum AppendData {
    /// One RecordBatch v2 as a client encoded it (a Kafka producer's batch): checked as
    /// Kafka's log validator does (framing, CRC, size, every record, timestamps), then
    /// stored as it is but for the header's max timestamp, fixed if it disagrees.
    Batch(Vec<u8>),
    /// Records for the broker to encode into one uncompressed batch, with the idempotent
    /// producer's id, epoch and base sequence when given.
    Records {
        /// The records, timestamps already resolved.
        records: Vec<NewRecord>,
        /// Producer id, epoch and base sequence.
        producer: Option<(i64, i16, i32)>,
    },
}

/// One append to one partition.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The durability asked for.
    pub acks: Acks,
    /// How long an acks=all append waits for the ISR, at most [`PRODUCE_TIMEOUT_MAX`].
    pub timeout: Duration,
    /// The records.
    pub data: AppendData,
    /// The front-end it came through (a metrics label).
    pub protocol: Protocol,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The first offset of the batch; -1 under acks=0.
    pub base_offset: i64,
    /// The last offset of the batch; -1 under acks=0.
    pub last_offset: i64,
    /// The partition's log start offset.
    pub log_start_offset: i64,
    /// Whether the batch was an idempotent retry of one already in the log (the offsets are
    /// then the original's).
    pub duplicate: bool,
}

/// An append that went into the leader's log; [`DataPlane::complete`] waits for its acks.
#[derive(Debug)]
pub struct PendingAppend {
    appended: Appended,
    /// Under acks=all: the partition and the offset the HW must reach.
    commit: Option<(Arc<Partition>, u64, Duration)>,
}

/// One partition to read.
#[derive(Debug, Clone)]
pub struct PartitionRead {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The first offset wanted; the batch holding it is returned whole.
    pub offset: i64,
    /// Most bytes from this partition (at least one batch is returned, however large).
    pub max_bytes: usize,
    /// The leader epoch the client believes current (KIP-320), checked against this
    /// leader's: older gets FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH. `None`: no check.
    pub current_leader_epoch: Option<i32>,
    /// The front-end it came through (a metrics label).
    pub protocol: Protocol,
}

/// What one partition read returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadResult {
    /// Whole stored batches, as they are on disk (possibly starting below the offset asked).
    pub batches: Vec<u8>,
    /// The offset to read next.
    pub next_offset: u64,
    /// The high watermark when read.
    pub high_watermark: u64,
    /// The log start offset when read.
    pub log_start_offset: u64,
}

/// Which offset ListOffsets asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    /// The log start offset (Kafka's -2).
    Earliest,
    /// The high watermark (Kafka's -1).
    Latest,
    /// The first offset whose timestamp is at least this one, in ms.
    Timestamp(i64),
}

/// A ListOffsets answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetAnswer {
    /// The offset, or -1 when no record has a timestamp at or after the one asked.
    pub offset: i64,
    /// The record's timestamp for a timestamp query, else -1.
    pub timestamp_ms: i64,
    /// The leader's epoch.
    pub leader_epoch: i32,
}

/// The data plane: the hosted partitions and the metadata they are looked up in.
#[derive(Debug)]
pub struct DataPlane {
    broker_id: u32,
    replicas: Arc<ReplicaManager>,
    cache: Arc<RwLock<MetadataCache>>,
    /// Where InitProducerId gets ids; `None` in tests without a controller.
    producer_ids: Option<Arc<ProducerIds>>,
    /// Request and byte counters (the front-ends count requests, the plane bytes).
    metrics: PlaneMetrics,
    /// Bounds how many compressed batches are inflated for validation at once.
    inflating: Arc<InflateSlots>,
}

impl DataPlane {
    /// A data plane over `replicas`, looking partitions up in `cache`.
    pub fn new(broker_id: u32, replicas: Arc<ReplicaManager>, cache: Arc<RwLock<MetadataCache>>) -> Self {
        DataPlane {
            broker_id,
            replicas,
            cache,
            producer_ids: None,
            metrics: PlaneMetrics::default(),
            inflating: Arc::new(InflateSlots::default()),
        }
    }

    /// The same, answering InitProducerId from `producer_ids`.
    pub fn with_producer_ids(mut self, producer_ids: Arc<ProducerIds>) -> Self {
        self.producer_ids = Some(producer_ids);
        self
    }

    /// This broker's id.
    pub fn broker_id(&self) -> u32 {
        self.broker_id
    }

    /// The data plane's counters, for the front-ends to count requests and a registry.
    pub fn metrics(&self) -> &PlaneMetrics {
        &self.metrics
    }

    /// A producer id and epoch for a new idempotent producer.
    pub async fn init_producer_id(&self) -> Result<(i64, i16), BrokerError> {
        let Some(ids) = &self.producer_ids else {
            return Err(BrokerError::new(
                ErrorCode::UnknownServerError,
                "this data plane runs without a controller and hands out no producer ids",
            ));
        };
        Ok((ids.next().await?, 0))
    }

    fn cache(&self) -> RwLockReadGuard<'_, MetadataCache> {
        self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The metadata cache, once a full image has arrived. Before that this broker knows no
    /// topic, and saying UNKNOWN_TOPIC_OR_PARTITION would send clients away from topics that
    /// exist.
    pub fn metadata(&self) -> Result<RwLockReadGuard<'_, MetadataCache>, BrokerError> {
        let cache = self.cache();
        if cache.loaded {
            Ok(cache)
        } else {
            Err(BrokerError::new(
                ErrorCode::LeaderNotAvailable,
                "this broker has not loaded the cluster metadata yet (it is starting); retry",
            ))
        }
    }

    /// Where `topic`'s partition `partition` is led, from the metadata.
    fn hint(&self, topic: &str, partition: u32) -> LeaderHint {
        let cache = self.cache();
        let id =
            cache.topics.get(topic).and_then(|t| t.partitions.get(partition as usize)).and_then(|p| p.leader);
        LeaderHint { id, address: id.and_then(|id| cache.brokers.get(&id)).map(|b| b.grpc.clone()) }
    }

    /// Fills in the leader's address of a NOT_LEADER_OR_FOLLOWER from the metadata.
    fn enrich(&self, topic: &str, partition: u32, error: BrokerError) -> BrokerError {
        if error.code != ErrorCode::NotLeaderOrFollower {
            return error;
        }
        let hint = self.hint(topic, partition);
        if hint.id == Some(self.broker_id) {
            // The metadata says this broker leads, but the partition has not caught up yet.
            return BrokerError::new(
                ErrorCode::LeaderNotAvailable,
                format!("{topic}-{partition}: this broker is taking over leadership; retry"),
            );
        }
        BrokerError::not_leader(format!("{topic}-{partition}"), hint)
    }

    /// Every config of `topic` with the value in force and whether it is the broker's
    /// default or the topic's override, for Kafka's DescribeConfigs (see
    /// [`crate::replica::describe_topic_configs`]). UNKNOWN_TOPIC_OR_PARTITION if this
    /// broker's metadata has no such topic.
    pub fn describe_topic_configs(&self, topic: &str) -> Result<Vec<TopicConfigEntry>, BrokerError> {
        let cache = self.metadata()?;
        let Some(t) = cache.topics.get(topic) else {
            return Err(BrokerError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("unknown topic {topic:?}"),
            ));
        };
        let replication_factor = t.partitions.first().map_or(1, |p| p.replicas.len());
        Ok(describe_topic_configs(&t.configs, replication_factor, self.replicas.log_defaults()))
    }

    /// The hosted partition that this broker leads, or why there is none.
    fn leader_partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, BrokerError> {
        let tp = TopicPartition::new(topic, partition);
        let (topic_id, leader) = {
            let cache = self.metadata()?;
            let Some(t) = cache.topics.get(topic) else {
                return Err(BrokerError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("unknown topic {topic:?}"),
                ));
            };
            let Some(entry) = t.partitions.get(partition as usize) else {
                return Err(BrokerError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!(
                        "topic {topic:?} has {} partitions; partition {partition} does not exist",
                        t.partitions.len()
                    ),
                ));
            };
            (t.id.clone(), entry.leader)
        };
        match self.replicas.get(&tp) {
            Some(p) if p.topic_id() == topic_id && p.check_leader().is_ok() => Ok(p),
            _ if leader.is_none() => Err(BrokerError::new(
                ErrorCode::LeaderNotAvailable,
                format!("{tp} has no leader now (no in-sync replica is available)"),
            )),
            _ if leader == Some(self.broker_id) => Err(match self.replicas.failure(&tp) {
                Some(why) => BrokerError::new(ErrorCode::KafkaStorageError, format!("{tp}: {why}")),
                None => BrokerError::new(
                    ErrorCode::LeaderNotAvailable,
                    format!("{tp}: this broker is taking over leadership; retry"),
                ),
            }),
            _ => Err(BrokerError::not_leader(&tp, self.hint(topic, partition))),
        }
    }

    /// Validates and appends one batch; the acks=all wait, if any, is [`DataPlane::complete`].
    /// Appends happen in call order, so a caller that appends a connection's batches one at
    /// a time keeps them in order, while their acks=all waits overlap.
    pub fn append(&self, request: AppendRequest) -> Result<PendingAppend, BrokerError> {
        let AppendRequest { topic, partition: index, acks, timeout, data, protocol } = request;
        if timeout > PRODUCE_TIMEOUT_MAX {
            return Err(BrokerError::invalid(format!(
                "the produce timeout of {} ms is over the maximum of {}",
                timeout.as_millis(),
                PRODUCE_TIMEOUT_MAX.as_millis()
            )));
        }
        if topic == crate::group::OFFSETS_TOPIC {
            // Its coordinators would believe a well-formed forged commit record.
            return Err(BrokerError::new(
                ErrorCode::InvalidTopic,
                format!("{topic} is internal: only group coordinators write to it"),
            ));
        }
        let partition = self.leader_partition(&topic, index)?;
        let limits = partition.limits();
        let mut batch = match data {
            AppendData::Records { records, producer } => {
                let checks = produce_checks(&limits);
                let earliest = checks.now_ms.saturating_sub(checks.timestamp_before_max_ms);
                let latest = checks.now_ms.saturating_add(checks.timestamp_after_max_ms);
                if let Some((index, r)) = records
                    .iter()
                    .enumerate()
                    .find(|(_, r)| r.timestamp_ms < earliest || r.timestamp_ms > latest)
                {
                    return Err(BrokerError::from_produce_check(
                        runnel_storage::ProduceBatchError::Timestamp {
                            index,
                            timestamp_ms: r.timestamp_ms,
                            earliest,
                            latest,
                        },
                    ));
                }
                build_batch(records, limits.max_message_bytes, producer)?
            }
            AppendData::Batch(mut bytes) => {
                if is_compressed(&bytes) {
                    // Inflating is CPU and memory: off the async workers (heartbeats and
                    // Raft share them), a few at a time, into buffers kept for it.
                    off_the_workers(|| {
                        let mut slot = self.inflating.acquire();
                        check_client_batch(&mut bytes, &limits, slot.buffer())
                    })?;
                } else {
                    check_client_batch(&mut bytes, &limits, &mut Vec::new())?;
                }
                bytes
            }
        };
        let acks_all = acks == Acks::All;
        // The write (and a wait for room on a slow disk) off the async workers.
        let info = off_the_workers(|| partition.append(&mut batch, acks_all))
            .map_err(|e| self.enrich(&topic, index, e))?;
        if !info.duplicate {
            // From the batch's offsets: nothing is counted per record.
            let records = (info.last_offset + 1).saturating_sub(info.base_offset);
            self.metrics.appended(&topic, protocol, records, batch.len());
        }
        let mut appended = Appended {
            base_offset: info.base_offset as i64,
            last_offset: info.last_offset as i64,
            log_start_offset: partition.log().log_start() as i64,
            duplicate: info.duplicate,
        };
        let commit = match acks {
            Acks::None => {
                appended.base_offset = -1;
                appended.last_offset = -1;
                None
            }
            Acks::Leader => None,
            // A duplicate waits too: its original may not be committed yet.
            Acks::All => Some((partition, info.last_offset + 1, timeout)),
        };
        Ok(PendingAppend { appended, commit })
    }

    /// Waits until an append has the acks it asked for.
    pub async fn complete(&self, pending: PendingAppend) -> Result<Appended, BrokerError> {
        if let Some((partition, end, timeout)) = pending.commit {
            partition.wait_committed(end, timeout).await.map_err(|e| {
                let tp = partition.topic_partition();
                self.enrich(&tp.topic, tp.partition, e)
            })?;
        }
        Ok(pending.appended)
    }

    /// One append, start to end.
    pub async fn produce(&self, request: AppendRequest) -> Result<Appended, BrokerError> {
        let pending = self.append(request)?;
        self.complete(pending).await
    }

    /// Reads committed data from one partition, waiting up to `max_wait` for `min_bytes`.
    pub async fn read(
        &self,
        read: &PartitionRead,
        min_bytes: usize,
        max_wait: Duration,
    ) -> Result<ReadResult, BrokerError> {
        let mut results = self.read_many(std::slice::from_ref(read), min_bytes, max_wait, usize::MAX).await;
        results.pop().expect("one read gives one result")
    }

    /// Reads committed data from several partitions, as one Kafka Fetch does: each partition
    /// is read from its offset up to its own `max_bytes`, the whole answer up to
    /// `total_max_bytes` (the first non-empty partition always gets at least one batch). If
    /// fewer than `min_bytes` came back, it waits up to `max_wait` for any of the partitions
    /// to move and reads again. A partition that fails (unknown, not led here, offset out of
    /// range) has its error in its slot; the others are still served.
    pub async fn read_many(
        &self,
        reads: &[PartitionRead],
        min_bytes: usize,
        max_wait: Duration,
        total_max_bytes: usize,
    ) -> Vec<Result<ReadResult, BrokerError>> {
        let max_wait = max_wait.min(FETCH_WAIT_MAX);
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut last_try = max_wait.is_zero();
        // The partitions are looked up once; a leadership change ends the wait (progress
        // senders drop or the HW moves) and the next round looks again.
        loop {
            let mut watches = Vec::new();
            let mut results = Vec::with_capacity(reads.len());
            let mut total = 0usize;
            let mut any_error = false;
            for read in reads {
                let result = self.read_once(read, total_max_bytes.saturating_sub(total), total == 0);
                match &result {
                    Ok((r, partition)) => {
                        total += r.batches.len();
                        watches.push(partition.subscribe());
                    }
                    Err(_) => any_error = true,
                }
                results.push(result.map(|(r, _)| r));
            }
            // Kafka answers at once when a partition has an error, so the client acts on it.
            if total >= min_bytes.max(1) || last_try || any_error || watches.is_empty() {
                for (read, result) in reads.iter().zip(&results) {
                    if let Ok(r) = result {
                        // The batches come whole: records before the offset asked are
                        // sent but not counted.
                        let from = u64::try_from(read.offset).unwrap_or(0);
                        let records = r.next_offset.saturating_sub(from);
                        self.metrics.read(&read.topic, read.protocol, records, r.batches.len());
                    }
                }
                return results;
            }
            let changed = futures::future::select_all(watches.iter_mut().map(|w| {
                w.borrow_and_update();
                Box::pin(w.changed())
            }));
            match tokio::time::timeout_at(deadline, changed).await {
                Ok(_) => {}
                Err(_) => last_try = true,
            }
        }
    }

    /// One read of one partition, without waiting.
    fn read_once(
        &self,
        read: &PartitionRead,
        budget: usize,
        first: bool,
    ) -> Result<(ReadResult, Arc<Partition>), BrokerError> {
        let partition = self.leader_partition(&read.topic, read.partition)?;
        let leader_epoch =
            partition.check_leader().map_err(|e| self.enrich(&read.topic, read.partition, e))?;
        check_epoch(&read.topic, read.partition, read.current_leader_epoch, leader_epoch)?;
        let offset = partition.check_fetch_offset(read.offset)?;
        let max_bytes = read.max_bytes.min(FETCH_BYTES_MAX).min(budget);
        let mut buf = Vec::new();
        if max_bytes == 0 && !first {
            // The response is full: report the partition's state with no records.
            let hw = partition.high_watermark();
            let result = ReadResult {
                batches: buf,
                next_offset: offset,
                high_watermark: hw,
                log_start_offset: partition.log().log_start(),
            };
            return Ok((result, partition));
        }
        // A read that misses the page cache waits on the disk: off the async workers. A
        // consumer that is caught up (the usual poll of an idle stream) reads nothing, and
        // is answered in place: handing the worker over costs more than that answer.
        let mut read_now = || partition.read_committed(offset, max_bytes.max(1), &mut buf);
        let (info, hw) =
            if offset >= partition.high_watermark() { read_now() } else { off_the_workers(read_now) }?;
        let result = ReadResult {
            batches: buf,
            next_offset: info.next_offset,
            high_watermark: hw,
            log_start_offset: partition.log().log_start(),
        };
        Ok((result, partition))
    }

    /// The offset `query` names in one partition.
    pub fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<OffsetAnswer, BrokerError> {
        let p = self.leader_partition(topic, partition)?;
        let leader_epoch = p.check_leader()?;
        let hw = p.high_watermark();
        let (offset, timestamp_ms) = match query {
            OffsetQuery::Latest => (hw as i64, -1),
            OffsetQuery::Earliest => (p.log().log_start() as i64, -1),
            OffsetQuery::Timestamp(ts) if ts < 0 => {
                return Err(BrokerError::invalid(format!(
                    "timestamp {ts} is negative; use LATEST (-1) or EARLIEST (-2)"
                )));
            }
            OffsetQuery::Timestamp(ts) => match p
                .log()
                .offset_for_timestamp(ts)
                .map_err(|e| BrokerError::from_log(p.topic_partition(), e))?
            {
                Some((offset, ts)) if offset < hw => (offset as i64, ts),
                _ => (-1, -1),
            },
        };
        Ok(OffsetAnswer { offset, timestamp_ms, leader_epoch })
    }

    /// Kafka's OffsetForLeaderEpoch on the leader: the largest epoch at most `epoch` and the
    /// offset where it ended (the log end for the current epoch), so a consumer can tell
    /// whether its position survived a truncation.
    pub fn end_offset_for_epoch(
        &self,
        topic: &str,
        partition: u32,
        epoch: i32,
    ) -> Result<(i32, i64), BrokerError> {
        let p = self.leader_partition(topic, partition)?;
        let leader_epoch = p.check_leader()?;
        if epoch > leader_epoch {
            return Err(BrokerError::new(
                ErrorCode::UnknownLeaderEpoch,
                format!("{topic}-{partition}: epoch {epoch} is newer than the leader's {leader_epoch}"),
            ));
        }
        let hw = p.high_watermark() as i64;
        Ok(match p.log().end_offset_for_epoch(epoch) {
            // The current epoch ends at the log end, but a consumer may only see up to the HW.
            Some((e, end)) => (e, (end as i64).min(hw)),
            None => (-1, -1),
        })
    }
}

/// KIP-320: the client's idea of the leader epoch against the leader's.
fn check_epoch(topic: &str, partition: u32, client: Option<i32>, leader: i32) -> Result<(), BrokerError> {
    match client {
        Some(epoch) if epoch >= 0 && epoch < leader => Err(BrokerError::new(
            ErrorCode::FencedLeaderEpoch,
            format!(
                "{topic}-{partition}: leader epoch {epoch} is older than the leader's {leader}; refresh metadata"
            ),
        )),
        Some(epoch) if epoch > leader => Err(BrokerError::new(
            ErrorCode::UnknownLeaderEpoch,
            format!("{topic}-{partition}: leader epoch {epoch} is newer than this broker's {leader}; retry"),
        )),
        _ => Ok(()),
    }
}

/// Checks a client's batch as Kafka's log validator does (see [`check_producer_batch`]):
/// exactly one RecordBatch v2 within `max.message.bytes`, framing and CRC intact, every
/// record decoded once, offsets numbered from 0 without gaps, create times within the
/// topic's window around now. Fixes the header's max timestamp in place if it disagrees
/// with the records.
fn check_client_batch(bytes: &mut [u8], limits: &Limits, scratch: &mut Vec<u8>) -> Result<(), BrokerError> {
    let max = limits.max_message_bytes;
    if bytes.len() > max {
        return Err(BrokerError::new(
            ErrorCode::MessageTooLarge,
            format!("the batch is {} bytes, over max.message.bytes={max}", bytes.len()),
        ));
    }
    check_producer_batch(bytes, &produce_checks(limits), scratch).map_err(BrokerError::from_produce_check)?;
    Ok(())
}

/// Whether a batch's attributes name a compression codec (a cheap look before the checks).
fn is_compressed(batch: &[u8]) -> bool {
    batch.get(22).is_some_and(|attributes| attributes & 0x07 != 0)
}

/// Most compressed batches inflated for validation at once, node-wide. Each slot keeps its
/// buffer (at most [`PRODUCE_DECOMPRESSED_BYTES_MAX`]) for the next batch, so inflating
/// costs at most 128 MiB however many clients send compression bombs together, and no
/// allocation churn across threads.
pub const INFLATING_MAX: usize = 4;

/// The inflating slots: a pool of [`INFLATING_MAX`] reusable buffers that blocking threads
/// wait for (the validation runs off the async workers).
#[derive(Debug)]
struct InflateSlots {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    returned: std::sync::Condvar,
}

impl Default for InflateSlots {
    fn default() -> Self {
        InflateSlots {
            free: std::sync::Mutex::new((0..INFLATING_MAX).map(|_| Vec::new()).collect()),
            returned: std::sync::Condvar::new(),
        }
    }
}

impl InflateSlots {
    fn acquire(&self) -> InflateSlot<'_> {
        let mut free = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(buffer) = free.pop() {
                return InflateSlot { slots: self, buffer };
            }
            free = self.returned.wait(free).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

struct InflateSlot<'a> {
    slots: &'a InflateSlots,
    buffer: Vec<u8>,
}

impl InflateSlot<'_> {
    /// The slot's buffer, with room for the largest inflated batch reserved once (address
    /// space only: pages count as resident when written), so it never reallocates.
    fn buffer(&mut self) -> &mut Vec<u8> {
        self.buffer.reserve_exact(PRODUCE_DECOMPRESSED_BYTES_MAX.saturating_sub(self.buffer.len()));
        &mut self.buffer
    }
}

impl Drop for InflateSlot<'_> {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        self.slots.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(buffer);
        self.slots.returned.notify_one();
    }
}

/// What a produced batch is checked against now, for a topic with `limits`.
fn produce_checks(limits: &Limits) -> ProduceChecks {
    ProduceChecks {
        limits: DecodeLimits {
            max_decompressed_bytes: PRODUCE_DECOMPRESSED_BYTES_MAX,
            max_batch_bytes: limits.max_message_bytes,
        },
        now_ms: now_ms(),
        timestamp_before_max_ms: limits.timestamp_before_max_ms,
        timestamp_after_max_ms: limits.timestamp_after_max_ms,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Builds one uncompressed batch from records, checking each against the limit, with the
/// idempotent producer's id, epoch and base sequence in its header if given.
fn build_batch(
    records: Vec<NewRecord>,
    max: usize,
    producer: Option<(i64, i16, i32)>,
) -> Result<Vec<u8>, BrokerError> {
    if records.is_empty() {
        return Err(BrokerError::invalid("a produce request needs at least one record"));
    }
    let mut builder = BatchBuilder::new(Compression::None);
    if let Some((producer_id, epoch, base_sequence)) = producer {
        builder = builder.producer(producer_id, epoch, base_sequence);
    }
    for (i, record) in records.into_iter().enumerate() {
        let size = record.key.as_ref().map_or(0, Bytes::len)
            + record.value.as_ref().map_or(0, Bytes::len)
            + record
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
                .sum::<usize>();
        if size > max {
            return Err(BrokerError::new(
                ErrorCode::MessageTooLarge,
                format!("record {i} is {size} bytes, over max.message.bytes={max}"),
            ));
        }
        builder.push(record);
        if builder.estimated_size() > max {
            return Err(BrokerError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "the records make a batch of more than {} bytes, over max.message.bytes={max}",
                    builder.estimated_size()
                ),
            ));
        }
    }
    builder
        .build()
        .map_err(|e| BrokerError::new(ErrorCode::InvalidRecord, format!("cannot encode the records: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_leader_epoch_is_checked_against_the_leaders() {
        assert!(check_epoch("t", 0, None, 5).is_ok());
        assert!(check_epoch("t", 0, Some(-1), 5).is_ok(), "-1: the client does not know");
        assert!(check_epoch("t", 0, Some(5), 5).is_ok());
        assert_eq!(check_epoch("t", 0, Some(4), 5).unwrap_err().code, ErrorCode::FencedLeaderEpoch);
        assert_eq!(check_epoch("t", 0, Some(6), 5).unwrap_err().code, ErrorCode::UnknownLeaderEpoch);
    }

    #[tokio::test]
    async fn a_broker_without_metadata_says_retry_not_unknown_topic() {
        let dir = tempfile::tempdir().unwrap();
        let replicas = Arc::new(ReplicaManager::open(1, dir.path(), Default::default()).unwrap());
        let cache = Arc::new(RwLock::new(MetadataCache::default()));
        let plane = DataPlane::new(1, replicas, Arc::clone(&cache));
        let request = AppendRequest {
            topic: "t".into(),
            partition: 0,
            acks: Acks::All,
            timeout: PRODUCE_TIMEOUT_DEFAULT,
            data: AppendData::Records { records: vec![NewRecord::with_value("v", 0)], producer: None },
            protocol: Protocol::Grpc,
        };
        let e = plane.produce(request.clone()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::LeaderNotAvailable);
        assert_eq!(plane.metadata().unwrap_err().code, ErrorCode::LeaderNotAvailable);

        cache.write().unwrap().loaded = true;
        let e = plane.produce(request).await.unwrap_err();
        assert_eq!(
            e.code,
            ErrorCode::UnknownTopicOrPartition,
            "once loaded, the topic is known not to exist"
        );
    }

    #[test]
    fn topic_configs_are_described_from_the_cache_and_the_brokers_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let defaults = runnel_storage::LogConfig { retention_ms: Some(1234), ..Default::default() };
        let replicas = Arc::new(ReplicaManager::open(1, dir.path(), defaults).unwrap());
        let mut cache = MetadataCache { loaded: true, ..Default::default() };
        let topic = crate::cache::TopicEntry {
            id: vec![7; 16],
            configs: [("max.message.bytes".to_owned(), "2048".to_owned())].into(),
            partitions: Vec::new(),
        };
        cache.topics.insert("t".into(), topic);
        let plane = DataPlane::new(1, replicas, Arc::new(RwLock::new(cache)));
        let described = plane.describe_topic_configs("t").unwrap();
        let find = |name: &str| described.iter().find(|e| e.name == name).unwrap().clone();
        assert_eq!(
            (find("max.message.bytes").value, find("max.message.bytes").is_default),
            ("2048".into(), false)
        );
        assert_eq!((find("retention.ms").value, find("retention.ms").is_default), ("1234".into(), true));
        assert_eq!(
            plane.describe_topic_configs("nope").unwrap_err().code,
            ErrorCode::UnknownTopicOrPartition
        );
    }

    #[tokio::test]
    async fn a_fetch_of_unknown_partitions_answers_each_with_its_error_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let replicas = Arc::new(ReplicaManager::open(1, dir.path(), Default::default()).unwrap());
        let cache = Arc::new(RwLock::new(MetadataCache { loaded: true, ..Default::default() }));
        let plane = DataPlane::new(1, replicas, cache);
        let read = |topic: &str| PartitionRead {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            max_bytes: 1024,
            current_leader_epoch: None,
            protocol: Protocol::Kafka,
        };
        let results = plane.read_many(&[read("a"), read("b")], 1, Duration::from_secs(30), 4096).await;
        assert_eq!(results.len(), 2);
        for r in results {
            assert_eq!(r.unwrap_err().code, ErrorCode::UnknownTopicOrPartition);
        }
    }
}
