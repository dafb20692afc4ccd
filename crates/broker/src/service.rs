//! The client gRPC API (`BrokerService` of `proto/runnel/v1/broker.proto`): produce, fetch,
//! list offsets, metadata and producer ids, over the hosted partitions.
//!
//! Every request is validated into plain values before it touches a log. Stored batches are
//! served as they are with `RECORD_FORMAT_BATCHES`; only `RECORD_FORMAT_RECORDS` decodes.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::broker_service_server::{BrokerService, BrokerServiceServer};
use runnel_storage::batch::{BatchIter, check_batch};
use runnel_storage::record::{BatchBuilder, DecodeLimits, Header, NewRecord, decode_batch};
use runnel_storage::{BATCH_BYTES_LIMIT, Compression, TopicPartition};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::ProducerIds;
use crate::cache::MetadataCache;
use crate::error::{BrokerError, ErrorCode, LeaderHint};
use crate::replica::{Partition, ReplicaManager};

/// Largest gRPC message the service decodes (`request_bytes_max`). Larger requests are
/// refused by the transport before they are read into memory.
pub const REQUEST_BYTES_MAX: usize = 64 << 20;
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
/// Requests a produce stream may have in flight before the broker stops reading more
/// (`produce_stream_in_flight_max`); HTTP/2 flow control then holds the client back.
pub const PRODUCE_STREAM_IN_FLIGHT_MAX: usize = 256;
/// HTTP/2 flow-control window of one stream, for servers and clients of this service.
/// hyper's defaults (1 MiB on a server, 2 MiB on a client) are smaller than one default
/// fetch response, so a sender stalls for a window update in the middle of every message.
pub const HTTP2_STREAM_WINDOW: u32 = 8 << 20;
/// HTTP/2 flow-control window of a whole connection (several streams share it).
pub const HTTP2_CONNECTION_WINDOW: u32 = 32 << 20;
/// Responses a fetch stream buffers ahead of the client.
const FETCH_STREAM_BUFFER: usize = 2;
/// How long one wait of a fetch stream lasts before it checks again that it still leads.
const FETCH_STREAM_POLL: Duration = Duration::from_secs(5);

/// The data plane: the hosted partitions and the metadata they are looked up in.
#[derive(Debug)]
pub struct DataPlane {
    broker_id: u32,
    replicas: Arc<ReplicaManager>,
    cache: Arc<RwLock<MetadataCache>>,
    /// Where InitProducerId gets ids; `None` in tests without a controller.
    producer_ids: Option<Arc<ProducerIds>>,
}

/// The idempotence fields of a `records` produce request: producer id, epoch, base sequence.
fn validated_producer(producer: &pb::ProducerBatch) -> Result<(i64, i16, i32), BrokerError> {
    let epoch = i16::try_from(producer.producer_epoch).ok().filter(|e| *e >= 0);
    match epoch {
        Some(epoch) if producer.producer_id >= 0 && producer.base_sequence >= 0 => {
            Ok((producer.producer_id, epoch, producer.base_sequence))
        }
        _ => Err(BrokerError::invalid(format!(
            "producer id {}, epoch {} and base sequence {} must be >= 0, and the epoch at most {}",
            producer.producer_id,
            producer.producer_epoch,
            producer.base_sequence,
            i16::MAX
        ))),
    }
}

fn validated_acks(acks: i32) -> Result<pb::Acks, BrokerError> {
    pb::Acks::try_from(acks).map_err(|_| BrokerError::invalid(format!("unknown acks value {acks}")))
}

/// One read: where, how much, how long to wait.
#[derive(Debug, Clone, Copy)]
struct ReadSpec<'a> {
    topic: &'a str,
    partition: u32,
    offset: i64,
    max_bytes: usize,
    min_bytes: usize,
    max_wait: Duration,
    format: pb::RecordFormat,
}

/// What happens after the append: nothing, or a wait for the HW.
enum AfterAppend {
    Done(pb::ProduceResponse),
    Commit { partition: Arc<Partition>, end: u64, timeout: Duration, response: pb::ProduceResponse },
}

impl DataPlane {
    /// A data plane over `replicas`, looking partitions up in `cache`.
    pub fn new(broker_id: u32, replicas: Arc<ReplicaManager>, cache: Arc<RwLock<MetadataCache>>) -> Self {
        DataPlane { broker_id, replicas, cache, producer_ids: None }
    }

    /// The same, answering InitProducerId from `producer_ids`.
    pub fn with_producer_ids(mut self, producer_ids: Arc<ProducerIds>) -> Self {
        self.producer_ids = Some(producer_ids);
        self
    }

    /// A producer id and epoch for a new idempotent producer.
    pub async fn init_producer_id(&self) -> Result<pb::InitProducerIdResponse, BrokerError> {
        let Some(ids) = &self.producer_ids else {
            return Err(BrokerError::new(
                ErrorCode::UnknownServerError,
                "this data plane runs without a controller and hands out no producer ids",
            ));
        };
        Ok(pb::InitProducerIdResponse { producer_id: ids.next().await?, producer_epoch: 0 })
    }

    fn cache(&self) -> std::sync::RwLockReadGuard<'_, MetadataCache> {
        self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cache, once a full image has arrived. Before that this broker knows no topic,
    /// and saying UNKNOWN_TOPIC_OR_PARTITION would send clients away from topics that exist.
    fn loaded_cache(&self) -> Result<std::sync::RwLockReadGuard<'_, MetadataCache>, BrokerError> {
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

    /// The hosted partition that this broker leads, or why there is none.
    fn leader_partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, BrokerError> {
        let tp = TopicPartition::new(topic, partition);
        let (topic_id, leader) = {
            let cache = self.loaded_cache()?;
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

    /// Validates and appends a produce request; the acks=all wait, if any, comes after.
    fn append(&self, request: pb::ProduceRequest) -> Result<AfterAppend, BrokerError> {
        let acks = validated_acks(request.acks)?;
        let timeout = match u64::from(request.timeout_ms) {
            0 => PRODUCE_TIMEOUT_DEFAULT,
            ms if Duration::from_millis(ms) > PRODUCE_TIMEOUT_MAX => {
                return Err(BrokerError::invalid(format!(
                    "timeout_ms {ms} is over the maximum of {}",
                    PRODUCE_TIMEOUT_MAX.as_millis()
                )));
            }
            ms => Duration::from_millis(ms),
        };
        let producer = request.producer.as_ref().map(validated_producer).transpose()?;
        if request.topic == crate::group::OFFSETS_TOPIC {
            // Its coordinators would believe a well-formed forged commit record.
            return Err(BrokerError::new(
                ErrorCode::InvalidTopic,
                format!("{} is internal: only group coordinators write to it", request.topic),
            ));
        }
        let partition = self.leader_partition(&request.topic, request.partition)?;
        let max = partition.limits().max_message_bytes;
        let mut batch = match request.data {
            None => return Err(BrokerError::invalid("a produce request needs records or a batch")),
            Some(pb::produce_request::Data::Records(list)) => build_batch(list.records, max, producer)?,
            Some(pb::produce_request::Data::Batch(_)) if producer.is_some() => {
                return Err(BrokerError::invalid(
                    "`producer` goes with `records` only: a batch carries its producer id, epoch and \
                     base sequence in its own header",
                ));
            }
            Some(pb::produce_request::Data::Batch(bytes)) => {
                if bytes.len() > max {
                    return Err(BrokerError::new(
                        ErrorCode::MessageTooLarge,
                        format!("the batch is {} bytes, over max.message.bytes={max}", bytes.len()),
                    ));
                }
                let header = check_batch(&bytes, max).map_err(BrokerError::from_batch)?;
                if header.total_len() != bytes.len() {
                    return Err(BrokerError::new(
                        ErrorCode::CorruptMessage,
                        format!(
                            "invalid batch: {} bytes follow the {}-byte batch; send exactly one batch",
                            bytes.len() - header.total_len(),
                            header.total_len()
                        ),
                    ));
                }
                bytes.to_vec()
            }
        };
        let acks_all = matches!(acks, pb::Acks::All | pb::Acks::Unspecified);
        let info = partition
            .append(&mut batch, acks_all)
            .map_err(|e| self.enrich(&request.topic, request.partition, e))?;
        let log_start_offset = partition.log().log_start() as i64;
        let duplicate = info.duplicate;
        Ok(match acks {
            pb::Acks::None => AfterAppend::Done(pb::ProduceResponse {
                base_offset: -1,
                last_offset: -1,
                log_start_offset,
                duplicate,
            }),
            pb::Acks::Leader => AfterAppend::Done(pb::ProduceResponse {
                base_offset: info.base_offset as i64,
                last_offset: info.last_offset as i64,
                log_start_offset,
                duplicate,
            }),
            // A duplicate waits too: its original may not be committed yet.
            pb::Acks::All | pb::Acks::Unspecified => AfterAppend::Commit {
                partition,
                end: info.last_offset + 1,
                timeout,
                response: pb::ProduceResponse {
                    base_offset: info.base_offset as i64,
                    last_offset: info.last_offset as i64,
                    log_start_offset,
                    duplicate,
                },
            },
        })
    }

    async fn finish(&self, after: AfterAppend) -> Result<pb::ProduceResponse, BrokerError> {
        match after {
            AfterAppend::Done(response) => Ok(response),
            AfterAppend::Commit { partition, end, timeout, response } => {
                partition.wait_committed(end, timeout).await.map_err(|e| {
                    let tp = partition.topic_partition();
                    self.enrich(&tp.topic, tp.partition, e)
                })?;
                Ok(response)
            }
        }
    }

    /// One produce request, start to end.
    pub async fn produce(&self, request: pb::ProduceRequest) -> Result<pb::ProduceResponse, BrokerError> {
        let after = self.append(request)?;
        self.finish(after).await
    }

    /// Reads committed data from `offset`, waiting up to `max_wait` for `min_bytes`.
    async fn read(&self, spec: &ReadSpec<'_>) -> Result<pb::FetchResponse, BrokerError> {
        let ReadSpec { topic, partition: partition_index, offset, max_bytes, min_bytes, max_wait, format } =
            *spec;
        let partition = self.leader_partition(topic, partition_index)?;
        let offset = partition.check_fetch_offset(offset)?;
        let mut progress = partition.subscribe();
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut last_try = max_wait.is_zero();
        loop {
            progress.borrow_and_update();
            partition.check_leader().map_err(|e| self.enrich(topic, partition_index, e))?;
            let mut buf = Vec::new();
            let (info, hw) = partition.read_committed(offset, max_bytes, &mut buf)?;
            if buf.len() >= min_bytes.max(1) || last_try {
                return response(buf, offset, info.next_offset, hw, partition.log().log_start(), format);
            }
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(self.enrich(
                        topic,
                        partition_index,
                        BrokerError::not_leader(topic, LeaderHint::default()),
                    ));
                }
                Err(_) => last_try = true,
            }
        }
    }

    /// The offset `spec` names.
    fn list_offsets(&self, request: &pb::ListOffsetsRequest) -> Result<pb::ListOffsetsResponse, BrokerError> {
        let spec = pb::OffsetSpec::try_from(request.spec)
            .map_err(|_| BrokerError::invalid(format!("unknown offset spec {}", request.spec)))?;
        let partition = self.leader_partition(&request.topic, request.partition)?;
        let leader_epoch = partition.check_leader()?;
        let hw = partition.high_watermark();
        let (offset, timestamp_ms) = match spec {
            pb::OffsetSpec::Latest => (hw as i64, -1),
            pb::OffsetSpec::Earliest => (partition.log().log_start() as i64, -1),
            pb::OffsetSpec::Timestamp if request.timestamp_ms < 0 => {
                return Err(BrokerError::invalid(format!(
                    "timestamp_ms {} is negative; use OFFSET_SPEC_LATEST or OFFSET_SPEC_EARLIEST \
                     for Kafka's -1 and -2",
                    request.timestamp_ms
                )));
            }
            pb::OffsetSpec::Timestamp => {
                match partition
                    .log()
                    .offset_for_timestamp(request.timestamp_ms)
                    .map_err(|e| BrokerError::from_log(partition.topic_partition(), e))?
                {
                    Some((offset, ts)) if offset < hw => (offset as i64, ts),
                    _ => (-1, -1),
                }
            }
        };
        Ok(pb::ListOffsetsResponse { offset, timestamp_ms, leader_epoch })
    }

    fn metadata(&self, request: &pb::MetadataRequest) -> Result<pb::MetadataResponse, BrokerError> {
        let cache = self.loaded_cache()?;
        let brokers = cache
            .brokers
            .iter()
            .map(|(&id, b)| pb::BrokerMetadata {
                broker_id: id,
                grpc: b.grpc.clone(),
                kafka: b.kafka.clone(),
                rack: b.rack.clone(),
                fenced: b.fenced,
            })
            .collect();
        let describe = |name: &str| match cache.topics.get(name) {
            Some(t) => pb::TopicMetadata {
                name: name.to_owned(),
                topic_id: t.id.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(i, p)| pb::PartitionMetadata {
                        partition: i as u32,
                        leader: p.leader.map_or(-1, i64::from),
                        leader_epoch: p.leader_epoch,
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                    })
                    .collect(),
                error: None,
            },
            None => pb::TopicMetadata {
                name: name.to_owned(),
                topic_id: Vec::new(),
                partitions: Vec::new(),
                error: Some(
                    BrokerError::new(ErrorCode::UnknownTopicOrPartition, format!("unknown topic {name:?}"))
                        .to_proto(),
                ),
            },
        };
        let topics = if request.topics.is_empty() {
            cache.topics.keys().map(|name| describe(name)).collect()
        } else {
            request.topics.iter().map(|name| describe(name)).collect()
        };
        Ok(pb::MetadataResponse {
            brokers,
            topics,
            metadata_version: cache.version,
            answered_by: self.broker_id,
        })
    }
}

/// Builds one uncompressed batch from a request's records, checking each against the limit,
/// with the idempotent producer's id, epoch and base sequence in its header if given.
fn build_batch(
    records: Vec<pb::Record>,
    max: usize,
    producer: Option<(i64, i16, i32)>,
) -> Result<Vec<u8>, BrokerError> {
    if records.is_empty() {
        return Err(BrokerError::invalid("a produce request needs at least one record"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut builder = BatchBuilder::new(Compression::None);
    if let Some((producer_id, epoch, base_sequence)) = producer {
        builder = builder.producer(producer_id, epoch, base_sequence);
    }
    for (i, record) in records.into_iter().enumerate() {
        let timestamp_ms = match record.timestamp_ms {
            None => now,
            Some(ts) if ts >= 0 => ts,
            Some(ts) => {
                return Err(BrokerError::new(
                    ErrorCode::InvalidRecord,
                    format!(
                        "record {i} has the negative timestamp {ts}; leave it unset for the broker's clock"
                    ),
                ));
            }
        };
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
        builder.push(NewRecord {
            key: record.key,
            value: record.value,
            headers: record.headers.into_iter().map(|h| Header { key: h.key, value: h.value }).collect(),
            timestamp_ms,
        });
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

/// A fetch response over `buf` (whole batches read from the log).
fn response(
    buf: Vec<u8>,
    offset: u64,
    next_offset: u64,
    hw: u64,
    log_start: u64,
    format: pb::RecordFormat,
) -> Result<pb::FetchResponse, BrokerError> {
    let mut response = pb::FetchResponse {
        high_watermark: hw as i64,
        log_start_offset: log_start as i64,
        next_offset: next_offset as i64,
        records: Vec::new(),
        batches: Bytes::new(),
    };
    match format {
        pb::RecordFormat::Batches => response.batches = Bytes::from(buf),
        pb::RecordFormat::Records => {
            let limits =
                DecodeLimits { max_decompressed_bytes: FETCH_BYTES_MAX, max_batch_bytes: BATCH_BYTES_LIMIT };
            for batch in BatchIter::new(&buf, BATCH_BYTES_LIMIT) {
                let (header, bytes) = batch.map_err(|e| {
                    BrokerError::new(
                        ErrorCode::UnknownServerError,
                        format!("a stored batch failed to parse: {e}"),
                    )
                })?;
                if header.is_control() {
                    continue;
                }
                let (_, records) = decode_batch(bytes, &limits).map_err(|e| {
                    BrokerError::new(
                        ErrorCode::UnknownServerError,
                        format!("a stored batch failed to decode: {e}"),
                    )
                })?;
                response.records.extend(records.into_iter().filter(|r| r.offset >= offset as i64).map(|r| {
                    pb::Record {
                        key: r.key,
                        value: r.value,
                        headers: r
                            .headers
                            .into_iter()
                            .map(|h| pb::RecordHeader { key: h.key, value: h.value })
                            .collect(),
                        timestamp_ms: Some(r.timestamp_ms),
                        offset: r.offset,
                    }
                }));
            }
        }
    }
    Ok(response)
}

fn validated_fetch(
    max_bytes: u32,
    max_wait_ms: u32,
    format: i32,
) -> Result<(usize, Duration, pb::RecordFormat), BrokerError> {
    let format = pb::RecordFormat::try_from(format)
        .map_err(|_| BrokerError::invalid(format!("unknown record format {format}")))?;
    let max_bytes = match max_bytes as usize {
        0 => FETCH_BYTES_DEFAULT,
        n => n.min(FETCH_BYTES_MAX),
    };
    let max_wait = Duration::from_millis(u64::from(max_wait_ms));
    if max_wait > FETCH_WAIT_MAX {
        return Err(BrokerError::invalid(format!(
            "max_wait_ms {max_wait_ms} is over the maximum of {}",
            FETCH_WAIT_MAX.as_millis()
        )));
    }
    Ok((max_bytes, max_wait, format))
}

/// The tonic service over a [`DataPlane`].
#[derive(Debug, Clone)]
pub struct BrokerGrpc {
    plane: Arc<DataPlane>,
}

impl BrokerGrpc {
    /// The service over `plane`.
    pub fn new(plane: Arc<DataPlane>) -> Self {
        BrokerGrpc { plane }
    }

    /// The tonic server, with the request size limit set.
    pub fn into_server(self) -> BrokerServiceServer<BrokerGrpc> {
        BrokerServiceServer::new(self)
            .max_decoding_message_size(REQUEST_BYTES_MAX)
            .max_encoding_message_size(FETCH_BYTES_MAX + (1 << 20))
    }
}

type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl BrokerService for BrokerGrpc {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        Ok(Response::new(self.plane.produce(request.into_inner()).await?))
    }

    type ProduceStreamStream = BoxStream<pb::ProduceStreamResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(PRODUCE_STREAM_IN_FLIGHT_MAX);
        let plane = Arc::clone(&self.plane);
        tokio::spawn(async move {
            let mut pending = FuturesOrdered::new();
            let mut reading = true;
            loop {
                tokio::select! {
                    // Appends happen here, one at a time in arrival order; only the acks=all
                    // waits overlap. So a stream's batches to one partition keep their order.
                    message = inbound.message(), if reading && pending.len() < PRODUCE_STREAM_IN_FLIGHT_MAX => {
                        match message {
                            Ok(Some(message)) => {
                                let id = message.id;
                                let after = match message.request {
                                    Some(request) => plane.append(request),
                                    None => Err(BrokerError::invalid("a stream request needs a request")),
                                };
                                let plane = Arc::clone(&plane);
                                pending.push_back(async move {
                                    let result = match after {
                                        Ok(after) => plane.finish(after).await,
                                        Err(e) => Err(e),
                                    };
                                    stream_response(id, result)
                                });
                            }
                            Ok(None) => reading = false,
                            Err(status) => {
                                tracing::debug!("produce stream ended by the client: {status}");
                                reading = false;
                            }
                        }
                    }
                    Some(answer) = pending.next(), if !pending.is_empty() => {
                        if tx.send(Ok(answer)).await.is_err() {
                            return;
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn fetch(&self, request: Request<pb::FetchRequest>) -> Result<Response<pb::FetchResponse>, Status> {
        let r = request.into_inner();
        let (max_bytes, max_wait, format) = validated_fetch(r.max_bytes, r.max_wait_ms, r.format)?;
        let spec = ReadSpec {
            topic: &r.topic,
            partition: r.partition,
            offset: r.offset,
            max_bytes,
            min_bytes: r.min_bytes as usize,
            max_wait,
            format,
        };
        let response = self.plane.read(&spec).await?;
        Ok(Response::new(response))
    }

    type FetchStreamStream = BoxStream<pb::FetchResponse>;

    async fn fetch_stream(
        &self,
        request: Request<pb::FetchStreamRequest>,
    ) -> Result<Response<Self::FetchStreamStream>, Status> {
        let r = request.into_inner();
        let (max_bytes, _, format) = validated_fetch(r.max_bytes, 0, r.format)?;
        // The first read answers errors (unknown topic, bad offset) as the call's status.
        let spec = ReadSpec {
            topic: &r.topic,
            partition: r.partition,
            offset: r.offset,
            max_bytes,
            min_bytes: 1,
            max_wait: Duration::ZERO,
            format,
        };
        let first = self.plane.read(&spec).await?;
        let (tx, rx) = mpsc::channel(FETCH_STREAM_BUFFER);
        let plane = Arc::clone(&self.plane);
        let (partition, format) = (r.partition, format);
        tokio::spawn(async move {
            let spec_template = ReadSpec {
                topic: "",
                partition,
                offset: 0,
                max_bytes,
                min_bytes: 1,
                max_wait: Duration::ZERO,
                format,
            };
            let mut offset = first.next_offset;
            let mut next = Some(first);
            loop {
                if let Some(response) = next.take()
                    && (!response.records.is_empty() || !response.batches.is_empty())
                    && tx.send(Ok(response)).await.is_err()
                {
                    return;
                }
                let spec = ReadSpec { offset, max_wait: FETCH_STREAM_POLL, topic: &r.topic, ..spec_template };
                let read = plane.read(&spec);
                let result = tokio::select! {
                    _ = tx.closed() => return,
                    result = read => result,
                };
                match result {
                    Ok(response) => {
                        offset = response.next_offset;
                        next = Some(response);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_offsets(
        &self,
        request: Request<pb::ListOffsetsRequest>,
    ) -> Result<Response<pb::ListOffsetsResponse>, Status> {
        Ok(Response::new(self.plane.list_offsets(request.get_ref())?))
    }

    async fn init_producer_id(
        &self,
        _request: Request<pb::InitProducerIdRequest>,
    ) -> Result<Response<pb::InitProducerIdResponse>, Status> {
        Ok(Response::new(self.plane.init_producer_id().await?))
    }

    async fn metadata(
        &self,
        request: Request<pb::MetadataRequest>,
    ) -> Result<Response<pb::MetadataResponse>, Status> {
        Ok(Response::new(self.plane.metadata(request.get_ref())?))
    }
}

fn stream_response(id: u64, result: Result<pb::ProduceResponse, BrokerError>) -> pb::ProduceStreamResponse {
    use pb::produce_stream_response::Result as R;
    pb::ProduceStreamResponse {
        id,
        result: Some(match result {
            Ok(response) => R::Response(response),
            Err(e) => R::Error(e.to_proto()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broker_without_metadata_says_retry_not_unknown_topic() {
        let dir = tempfile::tempdir().unwrap();
        let replicas = Arc::new(ReplicaManager::open(1, dir.path(), Default::default()).unwrap());
        let cache = Arc::new(RwLock::new(MetadataCache::default()));
        let plane = DataPlane::new(1, replicas, Arc::clone(&cache));
        let request = pb::ProduceRequest {
            topic: "t".into(),
            partition: 0,
            acks: pb::Acks::All as i32,
            timeout_ms: 0,
            data: Some(pb::produce_request::Data::Records(pb::RecordList {
                records: vec![pb::Record { value: Some(Bytes::from_static(b"v")), ..Default::default() }],
            })),
            producer: None,
        };
        let e = plane.produce(request.clone()).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::LeaderNotAvailable);
        assert_eq!(
            plane.metadata(&pb::MetadataRequest::default()).unwrap_err().code,
            ErrorCode::LeaderNotAvailable
        );

        cache.write().unwrap().loaded = true;
        let e = plane.produce(request).await.unwrap_err();
        assert_eq!(
            e.code,
            ErrorCode::UnknownTopicOrPartition,
            "once loaded, the topic is known not to exist"
        );
    }
}
