//! Produce, Fetch, ListOffsets, OffsetForLeaderEpoch and InitProducerId.

use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, join_all};
use kafka_protocol::messages::fetch_request::FetchRequest;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
};
use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::list_offsets_request::ListOffsetsRequest;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderEpochRequest;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderEpochResponse, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch as ProduceLeader, PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ProducerId};
use runnel_auth::acl::{CLUSTER_RESOURCE_NAME, Operation, ResourceType};
use runnel_broker::error::Refusal;
use runnel_broker::metrics::Protocol;
use runnel_broker::plane::{
    Acks, AppendData, AppendRequest, Appended, FETCH_BYTES_DEFAULT, OffsetQuery, PRODUCE_TIMEOUT_DEFAULT,
    PRODUCE_TIMEOUT_MAX, PartitionRead, PendingAppend,
};
use runnel_broker::{BrokerError, ErrorCode};

use super::acls::{denied, may_create_topic, unauthorized};
use super::metadata::auto_create;
use super::{Client, broker_code, code, s};
use crate::Context;

/// Kafka's ListOffsets timestamps for the log end and start.
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;

/// The leader and epoch of a partition from the metadata, for NOT_LEADER_OR_FOLLOWER answers.
fn current_leader(ctx: &Context, topic: &str, partition: u32) -> (i32, i32) {
    ctx.plane
        .metadata()
        .ok()
        .and_then(|c| {
            let p = c.topics.get(topic)?.partitions.get(partition as usize)?;
            Some((p.leader.map_or(-1, |l| l as i32), p.leader_epoch))
        })
        .unwrap_or((-1, -1))
}

fn partition_index(index: i32) -> Result<u32, BrokerError> {
    u32::try_from(index).map_err(|_| {
        BrokerError::new(ErrorCode::UnknownTopicOrPartition, format!("partition {index} does not exist"))
    })
}

/// Produce: each partition's batch is validated and appended now, in arrival order; the
/// returned future waits for the acks. `None` for acks=0, which Kafka answers with nothing.
/// Needs WRITE on each topic (TOPIC_AUTHORIZATION_FAILED for its partitions otherwise).
pub(crate) fn produce(
    ctx: &Context,
    request: ProduceRequest,
    version: i16,
    client: &Client,
) -> BoxFuture<'static, Option<ProduceResponse>> {
    let acks = match request.acks {
        -1 => Some(Acks::All),
        1 => Some(Acks::Leader),
        0 => Some(Acks::None),
        _ => None,
    };
    let timeout = match u64::try_from(request.timeout_ms) {
        Ok(0) | Err(_) => PRODUCE_TIMEOUT_DEFAULT,
        Ok(ms) => Duration::from_millis(ms).min(PRODUCE_TIMEOUT_MAX),
    };
    let transactional = request.transactional_id.as_ref().is_some_and(|t| !t.is_empty());
    let mut unknown = Vec::new();
    type Slot = (String, i32, Result<PendingAppend, (i16, String)>);
    let mut slots: Vec<Slot> = Vec::new();
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let may_write = client.allowed(ctx, Operation::Write, ResourceType::Topic, &name);
        let log_refusal = |partition: i64, e: &BrokerError| {
            let who = format_args!("{} ({})", client.addr, client.id);
            Refusal { protocol: Protocol::Kafka, api: "produce", client: &who, topic: &name, partition }
                .log(e);
        };
        for p in topic.partition_data {
            let result = if transactional {
                Err((code::INVALID_REQUEST, "transactions are not supported".to_owned()))
            } else if !may_write {
                let e = unauthorized(client, Operation::Write, ResourceType::Topic, &name);
                log_refusal(i64::from(p.index), &e);
                Err((broker_code(&e), e.message))
            } else if let Some(acks) = acks {
                match (partition_index(p.index), p.records) {
                    (Err(e), _) => Err((broker_code(&e), e.message)),
                    (Ok(_), None) => {
                        Err((code::CORRUPT_MESSAGE, "a produce request needs a record batch".to_owned()))
                    }
                    (Ok(partition), Some(records)) => ctx
                        .plane
                        .append(AppendRequest {
                            topic: name.clone(),
                            partition,
                            acks,
                            timeout,
                            data: AppendData::Batch(records.to_vec()),
                            protocol: Protocol::Kafka,
                        })
                        .map_err(|e| {
                            if e.code == ErrorCode::UnknownTopicOrPartition {
                                unknown.push(name.clone());
                            }
                            log_refusal(i64::from(partition), &e);
                            (broker_code(&e), e.message)
                        }),
                }
            } else {
                Err((code::INVALID_REQUIRED_ACKS, format!("acks={} is not -1, 0 or 1", request.acks)))
            };
            slots.push((name.clone(), p.index, result));
        }
    }
    // Kafka's producers ask Metadata before they produce; a produce to a topic that does not
    // exist still starts its creation, and the client's retry after a refresh finds it.
    // Only topics the metadata lacks: a partition past a topic's count is just unknown. As
    // from Metadata, creating one needs CREATE on the cluster or the topic.
    unknown.sort();
    unknown.dedup();
    match ctx.plane.metadata() {
        Ok(cache) if ctx.config.auto_create_topics => unknown.retain(|t| !cache.topics.contains_key(t)),
        _ => unknown.clear(),
    }
    unknown.retain(|t| may_create_topic(ctx, client, t));
    if !unknown.is_empty() {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            auto_create(&ctx, &unknown).await;
        });
    }
    let plane = std::sync::Arc::clone(&ctx.plane);
    let ctx = ctx.clone();
    async move {
        let done = join_all(slots.into_iter().map(|(topic, index, result)| {
            let plane = std::sync::Arc::clone(&plane);
            async move {
                let result: Result<Appended, (i16, String)> = match result {
                    Ok(pending) => plane.complete(pending).await.map_err(|e| (broker_code(&e), e.message)),
                    Err(e) => Err(e),
                };
                plane.metrics().produced(
                    &topic,
                    Protocol::Kafka,
                    result.as_ref().map_or_else(|e| i32::from(e.0), |_| 0),
                );
                (topic, index, result)
            }
        }))
        .await;
        if acks == Some(Acks::None) {
            return None;
        }
        let mut topics: Vec<TopicProduceResponse> = Vec::new();
        for (topic, index, result) in done {
            let response = match result {
                Ok(a) => PartitionProduceResponse::default()
                    .with_index(index)
                    .with_base_offset(a.base_offset)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(a.log_start_offset),
                Err((error, message)) => {
                    let mut r = PartitionProduceResponse::default()
                        .with_index(index)
                        .with_error_code(error)
                        .with_base_offset(-1)
                        .with_log_append_time_ms(-1)
                        .with_log_start_offset(-1)
                        .with_error_message(Some(s(message)));
                    // The new leader rides along from v10 (KIP-951).
                    if version >= 10
                        && error == broker_code(&BrokerError::new(ErrorCode::NotLeaderOrFollower, ""))
                    {
                        let (leader, epoch) = current_leader(&ctx, &topic, index.max(0) as u32);
                        r = r.with_current_leader(
                            ProduceLeader::default()
                                .with_leader_id(BrokerId(leader))
                                .with_leader_epoch(epoch),
                        );
                    }
                    r
                }
            };
            match topics.last_mut() {
                Some(t) if t.name.0.as_str() == topic => t.partition_responses.push(response),
                _ => topics.push(
                    TopicProduceResponse::default()
                        .with_name(kafka_protocol::messages::TopicName(s(topic)))
                        .with_partition_responses(vec![response]),
                ),
            }
        }
        Some(ProduceResponse::default().with_responses(topics))
    }
    .boxed()
}

/// Fetch: committed batches as stored, with the HW and log start of each partition; waits
/// up to max_wait_ms for min_bytes across the request. Needs READ on each topic
/// (TOPIC_AUTHORIZATION_FAILED for its partitions otherwise, which are not read).
pub(crate) async fn fetch(
    ctx: &Context,
    request: FetchRequest,
    version: i16,
    client: &Client,
) -> FetchResponse {
    let total_max = match usize::try_from(request.max_bytes) {
        Ok(0) | Err(_) => usize::MAX,
        Ok(n) => n,
    };
    let mut reads = Vec::new();
    // Each topic's partitions in request order, with the error of any that was not read.
    type Shape = Vec<(String, Vec<(i32, Option<BrokerError>)>)>;
    let mut shape: Shape = Vec::new();
    for topic in &request.topics {
        let name = topic.topic.0.to_string();
        let mut partitions = Vec::new();
        if !client.allowed(ctx, Operation::Read, ResourceType::Topic, &name) {
            for p in &topic.partitions {
                partitions.push((
                    p.partition,
                    Some(unauthorized(client, Operation::Read, ResourceType::Topic, &name)),
                ));
            }
            shape.push((name, partitions));
            continue;
        }
        for p in &topic.partitions {
            match partition_index(p.partition) {
                Ok(partition) => {
                    reads.push(PartitionRead {
                        topic: name.clone(),
                        partition,
                        offset: p.fetch_offset,
                        max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(FETCH_BYTES_DEFAULT),
                        // Sent from v9 (KIP-320); -1 and older versions: no check.
                        current_leader_epoch: (version >= 9).then_some(p.current_leader_epoch),
                        protocol: Protocol::Kafka,
                    });
                    partitions.push((p.partition, None));
                }
                Err(e) => partitions.push((p.partition, Some(e))),
            }
        }
        shape.push((name, partitions));
    }
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(1);
    let max_wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let mut results = ctx.plane.read_many(&reads, min_bytes, max_wait, total_max).await.into_iter();
    let mut topics = Vec::with_capacity(shape.len());
    for (name, partitions) in shape {
        let mut out = Vec::with_capacity(partitions.len());
        for (index, early) in partitions {
            let result = match early {
                Some(e) => Err(e),
                None => results.next().unwrap_or_else(|| Err(BrokerError::invalid("missing read result"))),
            };
            ctx.plane.metrics().fetched(
                &name,
                Protocol::Kafka,
                result.as_ref().map_or_else(|e| i32::from(broker_code(e)), |_| 0),
            );
            let data = match result {
                Ok(r) => PartitionData::default()
                    .with_partition_index(index)
                    .with_high_watermark(r.high_watermark as i64)
                    // No transactions: everything below the HW is stable.
                    .with_last_stable_offset(r.high_watermark as i64)
                    .with_log_start_offset(r.log_start_offset as i64)
                    .with_records(Some(Bytes::from(r.batches))),
                Err(e) => {
                    let who = format_args!("{} ({})", client.addr, client.id);
                    Refusal {
                        protocol: Protocol::Kafka,
                        api: "fetch",
                        client: &who,
                        topic: &name,
                        partition: i64::from(index),
                    }
                    .log(&e);
                    let (start, hw) = e.range.map_or((-1, -1), |(s, h)| (s as i64, h as i64));
                    let mut d = PartitionData::default()
                        .with_partition_index(index)
                        .with_error_code(broker_code(&e))
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(start)
                        .with_records(Some(Bytes::new()));
                    // The new leader rides along from v12 (KIP-951).
                    if version >= 12 && e.code == ErrorCode::NotLeaderOrFollower {
                        let (leader, epoch) = current_leader(ctx, &name, index.max(0) as u32);
                        d = d.with_current_leader(
                            LeaderIdAndEpoch::default()
                                .with_leader_id(BrokerId(leader))
                                .with_leader_epoch(epoch),
                        );
                    }
                    d
                }
            };
            out.push(data);
        }
        topics.push(
            FetchableTopicResponse::default()
                .with_topic(kafka_protocol::messages::TopicName(s(name)))
                .with_partitions(out),
        );
    }
    // Session id 0: no incremental fetch sessions, so clients send full requests.
    FetchResponse::default().with_session_id(0).with_responses(topics)
}

/// ListOffsets: earliest (-2), latest (-1), or the first offset at or after a timestamp.
/// Needs DESCRIBE on each topic (TOPIC_AUTHORIZATION_FAILED for its partitions otherwise).
pub(crate) fn list_offsets(
    ctx: &Context,
    request: ListOffsetsRequest,
    version: i16,
    client: &Client,
) -> ListOffsetsResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.name.0.to_string();
            let may_describe = client.allowed(ctx, Operation::Describe, ResourceType::Topic, &name);
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let query = match p.timestamp {
                        LATEST_TIMESTAMP => Ok(OffsetQuery::Latest),
                        EARLIEST_TIMESTAMP => Ok(OffsetQuery::Earliest),
                        ts if ts >= 0 => Ok(OffsetQuery::Timestamp(ts)),
                        ts => Err(BrokerError::invalid(format!("timestamp {ts} is not served"))),
                    };
                    let answer = if may_describe {
                        query.and_then(|q| {
                            ctx.plane.list_offsets(&name, partition_index(p.partition_index)?, q)
                        })
                    } else {
                        Err(unauthorized(client, Operation::Describe, ResourceType::Topic, &name))
                    };
                    match answer {
                        Ok(a) => ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_timestamp(a.timestamp_ms)
                            .with_offset(a.offset)
                            // Leader epochs are answered from v4 on.
                            .with_leader_epoch(if version >= 4 { a.leader_epoch } else { -1 }),
                        Err(e) => ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(broker_code(&e))
                            .with_timestamp(-1)
                            .with_offset(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(kafka_protocol::messages::TopicName(s(name)))
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// OffsetForLeaderEpoch from a consumer: where each epoch it asks about ended. Needs
/// DESCRIBE on each topic (TOPIC_AUTHORIZATION_FAILED for its partitions otherwise).
pub(crate) fn offset_for_leader_epoch(
    ctx: &Context,
    request: OffsetForLeaderEpochRequest,
    client: &Client,
) -> OffsetForLeaderEpochResponse {
    let topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.topic.0.to_string();
            let may_describe = client.allowed(ctx, Operation::Describe, ResourceType::Topic, &name);
            let partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let answer = if may_describe {
                        partition_index(p.partition)
                            .and_then(|index| ctx.plane.end_offset_for_epoch(&name, index, p.leader_epoch))
                    } else {
                        Err(unauthorized(client, Operation::Describe, ResourceType::Topic, &name))
                    };
                    match answer {
                        Ok((epoch, end)) => EpochEndOffset::default()
                            .with_partition(p.partition)
                            .with_leader_epoch(epoch)
                            .with_end_offset(end),
                        Err(e) => EpochEndOffset::default()
                            .with_partition(p.partition)
                            .with_error_code(broker_code(&e))
                            .with_leader_epoch(-1)
                            .with_end_offset(-1),
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(kafka_protocol::messages::TopicName(s(name)))
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

/// InitProducerId for an idempotent producer: a fresh id at epoch 0 (also when the client
/// asks to bump the epoch of its old id after an error, KIP-360). Transactional ids are
/// refused: Runnel has no transactions. Needs IDEMPOTENT_WRITE on the cluster or WRITE on
/// some topic (KIP-679), CLUSTER_AUTHORIZATION_FAILED otherwise.
pub(crate) async fn init_producer_id(
    ctx: &Context,
    request: InitProducerIdRequest,
    client: &Client,
) -> InitProducerIdResponse {
    if request.transactional_id.as_ref().is_some_and(|t| !t.is_empty()) {
        return InitProducerIdResponse::default()
            .with_error_code(code::UNSUPPORTED_VERSION)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    if !client.may_produce_idempotently(ctx) {
        let message =
            denied(client, Operation::IdempotentWrite, ResourceType::Cluster, CLUSTER_RESOURCE_NAME);
        tracing::info!(
            client = %client.addr,
            "kafka: InitProducerId refused: {message}, nor WRITE any topic"
        );
        return InitProducerIdResponse::default()
            .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    match ctx.plane.init_producer_id().await {
        Ok((id, epoch)) => {
            InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(epoch)
        }
        Err(e) => InitProducerIdResponse::default()
            .with_error_code(match e.code {
                // The controller could not be reached: a retriable answer.
                ErrorCode::UnknownServerError => code::COORDINATOR_NOT_AVAILABLE,
                _ => broker_code(&e),
            })
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}
