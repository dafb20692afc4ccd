//! FindCoordinator and committed offsets (OffsetCommit, OffsetFetch) on the group
//! coordinator the gRPC groups use, over the same `__consumer_offsets`.

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{BrokerId, GroupId, TopicName};
use runnel_auth::acl::{Operation, ResourceType};
use runnel_broker::group::GroupError;
use runnel_broker::group::coordinator::{Committer, OffsetEntry};

use super::acls::{authorize, denied};
use super::{Client, code, s};
use crate::{Context, listeners};

/// FindCoordinator's key type for consumer groups (1 is transactions, not served).
const KEY_TYPE_GROUP: i8 = 0;

/// A group error's Kafka code, as the wire carries it.
pub(crate) fn group_code(e: &GroupError) -> i16 {
    i16::try_from(e.code.code()).unwrap_or(-1)
}

/// The coordinator of one key: (error, message, node id, host, port). A group's needs
/// DESCRIBE on the group.
async fn coordinator(
    ctx: &Context,
    key: &str,
    key_type: i8,
    client: &Client,
) -> (i16, Option<String>, i32, String, i32) {
    if key_type == KEY_TYPE_GROUP
        && let Err(message) = authorize(ctx, client, Operation::Describe, ResourceType::Group, key)
    {
        return (code::GROUP_AUTHORIZATION_FAILED, Some(message), -1, String::new(), -1);
    }
    let listener = client.listener.as_ref();
    if key_type != KEY_TYPE_GROUP {
        return (
            code::INVALID_REQUEST,
            Some("only consumer-group coordinators are served: Runnel has no transactions".to_owned()),
            -1,
            String::new(),
            -1,
        );
    }
    match ctx.groups.find_coordinator(key).await {
        Ok(found) => {
            let address = ctx
                .plane
                .metadata()
                .ok()
                .and_then(|c| c.brokers.get(&found.broker_id).map(|b| b.kafka.clone()));
            match address.and_then(|a| listeners::address_for(&a, listener)) {
                Some((host, port)) => (code::NONE, None, found.broker_id as i32, host, port),
                None => (
                    code::COORDINATOR_NOT_AVAILABLE,
                    Some(format!("broker {} has no Kafka address yet; retry", found.broker_id)),
                    -1,
                    String::new(),
                    -1,
                ),
            }
        }
        Err(e) => (group_code(&e), Some(e.message), -1, String::new(), -1),
    }
}

/// FindCoordinator: one key before v4, a list from v4 on.
pub(crate) async fn find_coordinator(
    ctx: &Context,
    request: FindCoordinatorRequest,
    version: i16,
    client: &Client,
) -> FindCoordinatorResponse {
    if version < 4 {
        let (error, message, node, host, port) =
            coordinator(ctx, &request.key, request.key_type, client).await;
        return FindCoordinatorResponse::default()
            .with_error_code(error)
            .with_error_message(message.map(s))
            .with_node_id(BrokerId(node))
            .with_host(s(host))
            .with_port(port);
    }
    let mut coordinators = Vec::with_capacity(request.coordinator_keys.len());
    for key in &request.coordinator_keys {
        let (error, message, node, host, port) = coordinator(ctx, key, request.key_type, client).await;
        coordinators.push(
            Coordinator::default()
                .with_key(key.clone())
                .with_error_code(error)
                .with_error_message(message.map(s))
                .with_node_id(BrokerId(node))
                .with_host(s(host))
                .with_port(port),
        );
    }
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}

/// OffsetCommit: every partition gets the commit's outcome (a commit is one batch, so it
/// succeeds or fails whole). Needs READ on the group (GROUP_AUTHORIZATION_FAILED for every
/// partition otherwise) and on each topic (TOPIC_AUTHORIZATION_FAILED for its partitions
/// otherwise; the other topics' offsets are committed).
pub(crate) async fn offset_commit(
    ctx: &Context,
    request: OffsetCommitRequest,
    client: &Client,
) -> OffsetCommitResponse {
    let group = request.group_id.0.as_str();
    let group_allowed = client.allowed(ctx, Operation::Read, ResourceType::Group, group);
    // The topics the client may not read from, when it may use the group at all.
    let refused: Vec<bool> = request
        .topics
        .iter()
        .map(|t| {
            group_allowed && !client.allowed(ctx, Operation::Read, ResourceType::Topic, t.name.0.as_str())
        })
        .collect();
    let mut offsets = Vec::new();
    let mut invalid: Option<i16> = None;
    for (topic, _) in request.topics.iter().zip(&refused).filter(|(_, refused)| !**refused) {
        for p in &topic.partitions {
            match u32::try_from(p.partition_index) {
                Ok(partition) => offsets.push(OffsetEntry {
                    tp: (topic.name.0.to_string(), partition),
                    offset: p.committed_offset,
                    metadata: p.committed_metadata.as_ref().map_or_else(String::new, |m| m.to_string()),
                }),
                Err(_) => invalid = Some(code::UNKNOWN_TOPIC_OR_PARTITION),
            }
        }
    }
    let error = match invalid {
        _ if !group_allowed => {
            let message = denied(client, Operation::Read, ResourceType::Group, group);
            tracing::debug!(client = %client.addr, "kafka: commit refused: {message}");
            code::GROUP_AUTHORIZATION_FAILED
        }
        Some(error) => error,
        // Every topic refused: nothing to commit (Kafka does not ask the coordinator then).
        None if !request.topics.is_empty() && refused.iter().all(|r| *r) => code::NONE,
        None => {
            // Checked against the group's kind: a classic group's generation, or (v9) a
            // KIP-848 member's epoch.
            let committer = Committer::Classic {
                member_id: &request.member_id,
                generation_id: request.generation_id_or_member_epoch,
                group_instance_id: request.group_instance_id.as_deref(),
            };
            match ctx.groups.commit(&request.group_id.0, committer, offsets).await {
                Ok(()) => code::NONE,
                Err(e) => {
                    tracing::debug!(group = %request.group_id.0.as_str(), "kafka: commit refused: {e}");
                    group_code(&e)
                }
            }
        }
    };
    let topics = request
        .topics
        .iter()
        .zip(&refused)
        .map(|(t, refused)| {
            let error = if *refused { code::TOPIC_AUTHORIZATION_FAILED } else { error };
            OffsetCommitResponseTopic::default().with_name(t.name.clone()).with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        OffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(error)
                    })
                    .collect(),
            )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// Committed offsets by topic: (partition, offset, metadata), in the order found.
type TopicOffsets = Vec<(String, Vec<(i32, i64, String)>)>;

/// One group's committed offsets: all of them (`topics` None) or those named.
async fn fetch_group(
    ctx: &Context,
    group_id: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<TopicOffsets, GroupError> {
    let wanted: Vec<(String, u32)> = topics
        .iter()
        .flatten()
        .flat_map(|(t, ps)| ps.iter().filter_map(|&p| u32::try_from(p).ok()).map(move |p| (t.clone(), p)))
        .collect();
    if topics.as_ref().is_some_and(|t| !t.is_empty()) && wanted.is_empty() {
        return Ok(Vec::new());
    }
    let committed = ctx.groups.fetch_offsets(group_id, wanted).await?;
    let mut out: TopicOffsets = Vec::new();
    for c in committed {
        let entry = (c.partition as i32, c.offset, c.metadata);
        match out.iter_mut().find(|(t, _)| *t == c.topic) {
            Some((_, ps)) => ps.push(entry),
            None => out.push((c.topic, vec![entry])),
        }
    }
    Ok(out)
}

/// An OffsetFetch answer's topics, in either of its shapes (one group before v8,
/// `OffsetFetchResponseTopic`; a list of groups from v8, `OffsetFetchResponseTopics`, with
/// the same fields): the committed offsets `found`, then the `refused` topics' partitions,
/// each TOPIC_AUTHORIZATION_FAILED.
macro_rules! offset_topics {
    ($topic:ident, $partition:ident, $found:expr, $refused:expr) => {{
        let found = $found.into_iter().map(|(topic, ps)| {
            $topic::default().with_name(TopicName(s(topic))).with_partitions(
                ps.into_iter()
                    .map(|(p, offset, metadata)| {
                        $partition::default()
                            .with_partition_index(p)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(-1)
                            .with_metadata(Some(s(metadata)))
                    })
                    .collect(),
            )
        });
        let refused = $refused.into_iter().map(|(topic, ps)| {
            $topic::default().with_name(TopicName(s(topic))).with_partitions(
                ps.into_iter()
                    .map(|p| {
                        $partition::default()
                            .with_partition_index(p)
                            .with_committed_offset(-1)
                            .with_committed_leader_epoch(-1)
                            .with_metadata(Some(s("")))
                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                    })
                    .collect(),
            )
        });
        found.chain(refused).collect::<Vec<$topic>>()
    }};
}

/// The topics an OffsetFetch asks for, each with its partitions; `None` for all of them.
type Requested = Option<Vec<(String, Vec<i32>)>>;

/// One group's committed offsets that the client may see: those of the topics it may
/// DESCRIBE (the others are left out of an all-topics answer), and the requested topics it
/// may not describe, to be answered TOPIC_AUTHORIZATION_FAILED.
async fn fetch_authorized(
    ctx: &Context,
    client: &Client,
    group_id: &str,
    topics: Requested,
) -> Result<(TopicOffsets, Vec<(String, Vec<i32>)>), GroupError> {
    let may_describe = |topic: &str| client.allowed(ctx, Operation::Describe, ResourceType::Topic, topic);
    let Some(topics) = topics else {
        let mut found = fetch_group(ctx, group_id, None).await?;
        found.retain(|(topic, _)| may_describe(topic));
        return Ok((found, Vec::new()));
    };
    let (allowed, refused): (Vec<_>, Vec<_>) = topics.into_iter().partition(|(topic, _)| may_describe(topic));
    // No topic asked for (an empty list, as Kafka: none) or every one refused: nothing to
    // ask, since an empty list would ask the coordinator for all.
    if allowed.is_empty() {
        return Ok((Vec::new(), refused));
    }
    let mut found = fetch_group(ctx, group_id, Some(allowed)).await?;
    found.retain(|(topic, _)| may_describe(topic));
    Ok((found, refused))
}

/// OffsetFetch: one group before v8, a list from v8 on; -1 where nothing is committed.
/// Needs DESCRIBE on the group (GROUP_AUTHORIZATION_FAILED otherwise) and on each topic
/// (TOPIC_AUTHORIZATION_FAILED for the partitions of a topic asked for, left out of an
/// all-topics answer).
pub(crate) async fn offset_fetch(
    ctx: &Context,
    request: OffsetFetchRequest,
    version: i16,
    client: &Client,
) -> OffsetFetchResponse {
    let may_describe_group =
        |group: &str| client.allowed(ctx, Operation::Describe, ResourceType::Group, group);
    if version < 8 {
        let topics: Requested = request
            .topics
            .map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
        let request_topics = topics.clone();
        let group_id = request.group_id.0.as_str();
        let fetched = if may_describe_group(group_id) {
            fetch_authorized(ctx, client, group_id, topics).await.map_err(|e| group_code(&e))
        } else {
            Err(code::GROUP_AUTHORIZATION_FAILED)
        };
        return match fetched {
            Ok((found, refused)) => OffsetFetchResponse::default().with_topics(offset_topics!(
                OffsetFetchResponseTopic,
                OffsetFetchResponsePartition,
                found,
                refused
            )),
            // The group-level error code exists from v2; v1 carries it per partition.
            Err(error) if version >= 2 => OffsetFetchResponse::default().with_error_code(error),
            Err(error) => OffsetFetchResponse::default().with_topics(
                request_topics
                    .into_iter()
                    .flatten()
                    .map(|(topic, ps)| {
                        OffsetFetchResponseTopic::default().with_name(TopicName(s(topic))).with_partitions(
                            ps.into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_error_code(error)
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            ),
        };
    }
    let mut groups = Vec::with_capacity(request.groups.len());
    for g in request.groups {
        if !may_describe_group(g.group_id.0.as_str()) {
            groups.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id)
                    .with_error_code(code::GROUP_AUTHORIZATION_FAILED),
            );
            continue;
        }
        let topics: Requested =
            g.topics.map(|ts| ts.into_iter().map(|t| (t.name.0.to_string(), t.partition_indexes)).collect());
        let group = match fetch_authorized(ctx, client, &g.group_id.0, topics).await {
            Ok((found, refused)) => {
                OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone()).with_topics(
                    offset_topics!(OffsetFetchResponseTopics, OffsetFetchResponsePartitions, found, refused),
                )
            }
            Err(e) => OffsetFetchResponseGroup::default()
                .with_group_id(GroupId(g.group_id.0))
                .with_error_code(group_code(&e)),
        };
        groups.push(group);
    }
    OffsetFetchResponse::default().with_groups(groups)
}
