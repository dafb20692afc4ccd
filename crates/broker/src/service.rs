//! The client gRPC API (`BrokerService` of `proto/runnel/v1/broker.proto`): a thin edge over
//! the transport-free [`DataPlane`] (produce, fetch, list offsets, metadata and producer ids).
//!
//! Every request is converted into the data plane's typed values here. Stored batches are
//! served as they are with `RECORD_FORMAT_BATCHES`; only `RECORD_FORMAT_RECORDS` decodes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use runnel_auth::acl::{CLUSTER_RESOURCE_NAME, Operation, ResourceType};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::broker_service_server::{BrokerService, BrokerServiceServer};
use runnel_proto::security::{Caller, caller};
use runnel_storage::BATCH_BYTES_LIMIT;
use runnel_storage::batch::BatchIter;
use runnel_storage::record::{DecodeLimits, Header, NewRecord, decode_batch};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{BrokerError, ErrorCode};
use crate::metrics::Protocol;
pub use crate::plane::{
    Acks, AppendData, AppendRequest, Appended, DataPlane, FETCH_BYTES_DEFAULT, FETCH_BYTES_MAX,
    FETCH_WAIT_MAX, OffsetQuery, PRODUCE_TIMEOUT_DEFAULT, PRODUCE_TIMEOUT_MAX, PartitionRead, ReadResult,
};

/// Largest gRPC message the service decodes (`request_bytes_max`). Larger requests are
/// refused by the transport before they are read into memory.
pub const REQUEST_BYTES_MAX: usize = 64 << 20;
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

/// A gRPC produce request as the data plane's [`AppendRequest`].
fn append_request(request: pb::ProduceRequest) -> Result<AppendRequest, BrokerError> {
    let acks = match pb::Acks::try_from(request.acks) {
        Ok(pb::Acks::None) => Acks::None,
        Ok(pb::Acks::Leader) => Acks::Leader,
        Ok(pb::Acks::All | pb::Acks::Unspecified) => Acks::All,
        Err(_) => return Err(BrokerError::invalid(format!("unknown acks value {}", request.acks))),
    };
    let timeout = match u64::from(request.timeout_ms) {
        0 => PRODUCE_TIMEOUT_DEFAULT,
        ms => Duration::from_millis(ms),
    };
    let producer = request.producer.as_ref().map(validated_producer).transpose()?;
    let data = match request.data {
        None => return Err(BrokerError::invalid("a produce request needs records or a batch")),
        Some(pb::produce_request::Data::Records(list)) => {
            AppendData::Records { records: new_records(list.records)?, producer }
        }
        Some(pb::produce_request::Data::Batch(_)) if producer.is_some() => {
            return Err(BrokerError::invalid(
                "`producer` goes with `records` only: a batch carries its producer id, epoch and \
                 base sequence in its own header",
            ));
        }
        Some(pb::produce_request::Data::Batch(bytes)) => AppendData::Batch(bytes.to_vec()),
    };
    Ok(AppendRequest {
        topic: request.topic,
        partition: request.partition,
        acks,
        timeout,
        data,
        protocol: Protocol::Grpc,
    })
}

/// A request's records, timestamps defaulting to the broker's clock.
fn new_records(records: Vec<pb::Record>) -> Result<Vec<NewRecord>, BrokerError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    records
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
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
            Ok(NewRecord {
                key: record.key,
                value: record.value,
                headers: record.headers.into_iter().map(|h| Header { key: h.key, value: h.value }).collect(),
                timestamp_ms,
            })
        })
        .collect()
}

fn produce_response(appended: Appended) -> pb::ProduceResponse {
    pb::ProduceResponse {
        base_offset: appended.base_offset,
        last_offset: appended.last_offset,
        log_start_offset: appended.log_start_offset,
        duplicate: appended.duplicate,
    }
}

/// A fetch response over one read, in the format asked for.
fn fetch_response(
    read: ReadResult,
    offset: i64,
    format: pb::RecordFormat,
) -> Result<pb::FetchResponse, BrokerError> {
    let mut response = pb::FetchResponse {
        high_watermark: read.high_watermark as i64,
        log_start_offset: read.log_start_offset as i64,
        next_offset: read.next_offset as i64,
        records: Vec::new(),
        batches: Bytes::new(),
    };
    match format {
        pb::RecordFormat::Batches => response.batches = Bytes::from(read.batches),
        pb::RecordFormat::Records => {
            let limits =
                DecodeLimits { max_decompressed_bytes: FETCH_BYTES_MAX, max_batch_bytes: BATCH_BYTES_LIMIT };
            for batch in BatchIter::new(&read.batches, BATCH_BYTES_LIMIT) {
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
                response.records.extend(records.into_iter().filter(|r| r.offset >= offset).map(|r| {
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

/// A gRPC client's address, for the logs ("unknown" when the transport does not say).
#[derive(Debug, Clone, Copy)]
struct Client(Option<std::net::SocketAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

impl Client {
    fn of<T>(request: &Request<T>) -> Self {
        Client(request.remote_addr())
    }

    fn refused(&self, api: &'static str, topic: &str, partition: u32, error: &BrokerError) {
        crate::error::Refusal {
            protocol: Protocol::Grpc,
            api,
            client: self,
            topic,
            partition: i64::from(partition),
        }
        .log(error);
    }
}

/// One gRPC fetch: a read of one partition, answered in `format`.
async fn fetch(
    plane: &DataPlane,
    read: &PartitionRead,
    min_bytes: usize,
    max_wait: Duration,
    format: pb::RecordFormat,
    client: &Client,
) -> Result<pb::FetchResponse, BrokerError> {
    let started = Instant::now();
    let result = plane.read(read, min_bytes, max_wait).await;
    let metrics = plane.metrics();
    metrics.fetched(&read.topic, Protocol::Grpc, result.as_ref().map_or_else(|e| e.code.code(), |_| 0));
    if let Err(e) = &result {
        client.refused("fetch", &read.topic, read.partition, e);
    }
    let response = fetch_response(result?, read.offset, format);
    metrics.request_took(Protocol::Grpc, "fetch", started.elapsed());
    response
}

fn list_offsets(
    plane: &DataPlane,
    request: &pb::ListOffsetsRequest,
) -> Result<pb::ListOffsetsResponse, BrokerError> {
    let query = match pb::OffsetSpec::try_from(request.spec) {
        Ok(pb::OffsetSpec::Latest) => OffsetQuery::Latest,
        Ok(pb::OffsetSpec::Earliest) => OffsetQuery::Earliest,
        Ok(pb::OffsetSpec::Timestamp) if request.timestamp_ms < 0 => {
            return Err(BrokerError::invalid(format!(
                "timestamp_ms {} is negative; use OFFSET_SPEC_LATEST or OFFSET_SPEC_EARLIEST \
                 for Kafka's -1 and -2",
                request.timestamp_ms
            )));
        }
        Ok(pb::OffsetSpec::Timestamp) => OffsetQuery::Timestamp(request.timestamp_ms),
        _ => return Err(BrokerError::invalid(format!("unknown offset spec {}", request.spec))),
    };
    let answer = plane.list_offsets(&request.topic, request.partition, query)?;
    Ok(pb::ListOffsetsResponse {
        offset: answer.offset,
        timestamp_ms: answer.timestamp_ms,
        leader_epoch: answer.leader_epoch,
    })
}

fn metadata(plane: &DataPlane, request: &pb::MetadataRequest) -> Result<pb::MetadataResponse, BrokerError> {
    let cache = plane.metadata()?;
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
        answered_by: plane.broker_id(),
    })
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

/// Ok unless authentication is on where the call came in and `caller` may not do
/// `operation` on the resource.
pub fn authorized(
    caller: Option<&Caller>,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> Result<(), BrokerError> {
    match caller {
        Some(c) if !c.allowed(operation, resource_type, name) => {
            Err(BrokerError::unauthorized(&c.principal, operation, resource_type, name))
        }
        _ => Ok(()),
    }
}

type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl BrokerService for BrokerGrpc {
    async fn produce(
        &self,
        request: Request<pb::ProduceRequest>,
    ) -> Result<Response<pb::ProduceResponse>, Status> {
        let started = Instant::now();
        let client = Client::of(&request);
        let allowed =
            authorized(caller(&request), Operation::Write, ResourceType::Topic, &request.get_ref().topic);
        let request = request.into_inner();
        let (topic, partition) = (request.topic.clone(), request.partition);
        let result = match allowed.and_then(|()| append_request(request)) {
            Ok(request) => self.plane.produce(request).await,
            Err(e) => Err(e),
        };
        let metrics = self.plane.metrics();
        metrics.produced(&topic, Protocol::Grpc, result.as_ref().map_or_else(|e| e.code.code(), |_| 0));
        if let Err(e) = &result {
            client.refused("produce", &topic, partition, e);
        }
        metrics.request_took(Protocol::Grpc, "produce", started.elapsed());
        Ok(Response::new(produce_response(result?)))
    }

    type ProduceStreamStream = BoxStream<pb::ProduceStreamResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<pb::ProduceStreamRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let client = Client::of(&request);
        let caller = caller(&request).cloned();
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
                                let started = Instant::now();
                                let id = message.id;
                                let (topic, partition) =
                                    message.request.as_ref().map_or_else(|| (String::new(), 0), |r| (r.topic.clone(), r.partition));
                                let appended = match message.request {
                                    Some(request) => authorized(caller.as_ref(), Operation::Write, ResourceType::Topic, &topic)
                                        .and_then(|()| append_request(request))
                                        .and_then(|r| plane.append(r)),
                                    None => Err(BrokerError::invalid("a stream request needs a request")),
                                };
                                let plane = Arc::clone(&plane);
                                pending.push_back(async move {
                                    let result = match appended {
                                        Ok(appended) => plane.complete(appended).await.map(produce_response),
                                        Err(e) => Err(e),
                                    };
                                    let metrics = plane.metrics();
                                    metrics.produced(
                                        &topic,
                                        Protocol::Grpc,
                                        result.as_ref().map_or_else(|e| e.code.code(), |_| 0),
                                    );
                                    if let Err(e) = &result {
                                        client.refused("produce", &topic, partition, e);
                                    }
                                    metrics.request_took(Protocol::Grpc, "produce", started.elapsed());
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
        let client = Client::of(&request);
        authorized(caller(&request), Operation::Read, ResourceType::Topic, &request.get_ref().topic)?;
        let r = request.into_inner();
        let (max_bytes, max_wait, format) = validated_fetch(r.max_bytes, r.max_wait_ms, r.format)?;
        let read = PartitionRead {
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
            max_bytes,
            current_leader_epoch: None,
            protocol: Protocol::Grpc,
        };
        let response = fetch(&self.plane, &read, r.min_bytes as usize, max_wait, format, &client).await?;
        Ok(Response::new(response))
    }

    type FetchStreamStream = BoxStream<pb::FetchResponse>;

    async fn fetch_stream(
        &self,
        request: Request<pb::FetchStreamRequest>,
    ) -> Result<Response<Self::FetchStreamStream>, Status> {
        let client = Client::of(&request);
        authorized(caller(&request), Operation::Read, ResourceType::Topic, &request.get_ref().topic)?;
        let caller = caller(&request).cloned();
        let r = request.into_inner();
        let (max_bytes, _, format) = validated_fetch(r.max_bytes, 0, r.format)?;
        // The first read answers errors (unknown topic, bad offset) as the call's status.
        let mut read = PartitionRead {
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
            max_bytes,
            current_leader_epoch: None,
            protocol: Protocol::Grpc,
        };
        let first = fetch(&self.plane, &read, 1, Duration::ZERO, format, &client).await?;
        let (tx, rx) = mpsc::channel(FETCH_STREAM_BUFFER);
        let plane = Arc::clone(&self.plane);
        tokio::spawn(async move {
            read.offset = first.next_offset;
            let mut next = Some(first);
            loop {
                if let Some(response) = next.take()
                    && (!response.records.is_empty() || !response.batches.is_empty())
                    && tx.send(Ok(response)).await.is_err()
                {
                    return;
                }
                // Each read is authorized again: an ACL removed (or a user deleted) ends the
                // stream, rather than leaving it open for good.
                let result = match caller
                    .as_ref()
                    .map(|c| c.recheck(Operation::Read, ResourceType::Topic, &read.topic))
                {
                    Some(Err(status)) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    _ => tokio::select! {
                        _ = tx.closed() => return,
                        result = fetch(&plane, &read, 1, FETCH_STREAM_POLL, format, &client) => result,
                    },
                };
                match result {
                    Ok(response) => {
                        read.offset = response.next_offset;
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
        authorized(caller(&request), Operation::Describe, ResourceType::Topic, &request.get_ref().topic)?;
        Ok(Response::new(list_offsets(&self.plane, request.get_ref())?))
    }

    async fn init_producer_id(
        &self,
        request: Request<pb::InitProducerIdRequest>,
    ) -> Result<Response<pb::InitProducerIdResponse>, Status> {
        // As Kafka since 3.0 (KIP-679): IDEMPOTENT_WRITE on the cluster, or WRITE on some topic.
        if let Some(c) = caller(&request)
            && !c.may_produce_idempotently()
        {
            return Err(BrokerError::unauthorized(
                &c.principal,
                Operation::IdempotentWrite,
                ResourceType::Cluster,
                CLUSTER_RESOURCE_NAME,
            )
            .into());
        }
        let (producer_id, producer_epoch) = self.plane.init_producer_id().await?;
        Ok(Response::new(pb::InitProducerIdResponse {
            producer_id,
            producer_epoch: i32::from(producer_epoch),
        }))
    }

    async fn metadata(
        &self,
        request: Request<pb::MetadataRequest>,
    ) -> Result<Response<pb::MetadataResponse>, Status> {
        let mut response = metadata(&self.plane, request.get_ref())?;
        if let Some(c) = caller(&request) {
            // As Kafka: listing shows only the topics the caller may describe; a topic asked
            // for by name that it may not is TOPIC_AUTHORIZATION_FAILED.
            let listing = request.get_ref().topics.is_empty();
            response.topics = std::mem::take(&mut response.topics)
                .into_iter()
                .filter_map(|t| {
                    match authorized(Some(c), Operation::Describe, ResourceType::Topic, &t.name) {
                        Ok(()) => Some(t),
                        Err(_) if listing => None,
                        Err(e) => Some(pb::TopicMetadata {
                            name: t.name,
                            error: Some(e.to_proto()),
                            ..Default::default()
                        }),
                    }
                })
                .collect();
        }
        Ok(Response::new(response))
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
