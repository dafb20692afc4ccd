//! The classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and the group
//! listings (ListGroups, DescribeGroups, DeleteGroups), on the coordinator's classic groups.
//! The broker relays the leader's assignment bytes and never parses them, so the clients'
//! own assignors (range, roundrobin, cooperative-sticky) work as they do on Kafka.

use kafka_protocol::messages::GroupId;
use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::messages::consumer_group_heartbeat_request::ConsumerGroupHeartbeatRequest;
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment, ConsumerGroupHeartbeatResponse, TopicPartitions,
};
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{DeletableGroupResult, DeleteGroupsResponse};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest as KafkaJoin;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest as KafkaSync;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use runnel_broker::group::assign::{Assignor, TpSet};
use runnel_broker::group::state::{Heartbeat, rebalance_timeout_ms, session_timeout_ms};
use runnel_broker::group::{
    ClassicHeartbeat, JoinGroupRequest, JoinProtocol, LeaveMember, SyncAssignment, SyncGroupRequest,
};

use super::groups::group_code;
use super::metadata::{GROUP_OPERATIONS, uuid};
use super::{Client, broker_code, code, s};
use crate::Context;

fn opt(value: Option<String>) -> Option<kafka_protocol::protocol::StrBytes> {
    value.map(s)
}

/// JoinGroup: waits until the join phase completes; the leader gets every member.
pub(crate) async fn join_group(
    ctx: &Context,
    r: KafkaJoin,
    version: i16,
    client: &Client,
) -> JoinGroupResponse {
    let request = JoinGroupRequest {
        member_id: r.member_id.to_string(),
        group_instance_id: r.group_instance_id.as_ref().map(|i| i.to_string()),
        // v4+ clients rejoin with the id the broker hands them (KIP-394).
        require_known_member_id: version >= 4,
        protocol_type: r.protocol_type.to_string(),
        protocols: r
            .protocols
            .into_iter()
            .map(|p| JoinProtocol { name: p.name.to_string(), metadata: p.metadata })
            .collect(),
        session_timeout_ms: r.session_timeout_ms,
        rebalance_timeout_ms: if version == 0 { -1 } else { r.rebalance_timeout_ms },
        client_id: client.id.clone(),
        client_host: client.addr.ip().to_string(),
    };
    let response = match ctx.groups.join_group(&r.group_id.0, request).await {
        Ok(joined) => JoinGroupResponse::default()
            .with_generation_id(joined.generation_id)
            .with_protocol_type(opt(joined.protocol_type))
            .with_protocol_name(opt(joined.protocol_name))
            .with_leader(s(joined.leader))
            .with_member_id(s(joined.member_id))
            .with_members(
                joined
                    .members
                    .into_iter()
                    .map(|m| {
                        JoinGroupResponseMember::default()
                            .with_member_id(s(m.member_id))
                            .with_group_instance_id(opt(m.group_instance_id))
                            .with_metadata(m.metadata)
                    })
                    .collect(),
            ),
        Err(e) => {
            tracing::debug!(client = %client.addr, group = %r.group_id.0.as_str(), "kafka: join answered: {e}");
            JoinGroupResponse::default()
                .with_error_code(group_code(&e))
                .with_generation_id(-1)
                .with_member_id(s(e.member_id.clone().unwrap_or_default()))
        }
    };
    // Before v7 the protocol name may not be null.
    if version < 7 && response.protocol_name.is_none() {
        return response.with_protocol_name(Some(s("")));
    }
    response
}

/// SyncGroup: the leader hands out assignments; every member waits for its own.
pub(crate) async fn sync_group(ctx: &Context, r: KafkaSync) -> SyncGroupResponse {
    let request = SyncGroupRequest {
        member_id: r.member_id.to_string(),
        generation_id: r.generation_id,
        group_instance_id: r.group_instance_id.as_ref().map(|i| i.to_string()),
        protocol_type: r.protocol_type.as_ref().map(|p| p.to_string()),
        protocol_name: r.protocol_name.as_ref().map(|p| p.to_string()),
        assignments: r
            .assignments
            .into_iter()
            .map(|a| SyncAssignment { member_id: a.member_id.to_string(), assignment: a.assignment })
            .collect(),
    };
    match ctx.groups.sync_group(&r.group_id.0, request).await {
        Ok(synced) => SyncGroupResponse::default()
            .with_protocol_type(opt(synced.protocol_type))
            .with_protocol_name(opt(synced.protocol_name))
            .with_assignment(synced.assignment),
        Err(e) => SyncGroupResponse::default().with_error_code(group_code(&e)),
    }
}

/// Heartbeat: NONE, or REBALANCE_IN_PROGRESS and the like to make the member rejoin.
pub(crate) async fn heartbeat(ctx: &Context, r: HeartbeatRequest) -> HeartbeatResponse {
    let hb = ClassicHeartbeat {
        member_id: r.member_id.to_string(),
        generation_id: r.generation_id,
        group_instance_id: r.group_instance_id.as_ref().map(|i| i.to_string()),
    };
    match ctx.groups.classic_heartbeat(&r.group_id.0, hb).await {
        Ok(()) => HeartbeatResponse::default(),
        Err(e) => HeartbeatResponse::default().with_error_code(group_code(&e)),
    }
}

/// LeaveGroup: one member before v3, a list with a result each from v3 on.
pub(crate) async fn leave_group(ctx: &Context, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let members: Vec<LeaveMember> = if version < 3 {
        vec![LeaveMember { member_id: r.member_id.to_string(), group_instance_id: None }]
    } else {
        r.members
            .iter()
            .map(|m| LeaveMember {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
            })
            .collect()
    };
    match ctx.groups.leave_group(&r.group_id.0, members).await {
        Ok(outcomes) if version < 3 => {
            let error = outcomes.first().and_then(|o| o.result.as_ref().err()).map_or(code::NONE, group_code);
            LeaveGroupResponse::default().with_error_code(error)
        }
        Ok(outcomes) => LeaveGroupResponse::default().with_members(
            outcomes
                .into_iter()
                .map(|o| {
                    MemberResponse::default()
                        .with_member_id(s(o.member_id))
                        .with_group_instance_id(opt(o.group_instance_id))
                        .with_error_code(o.result.as_ref().err().map_or(code::NONE, group_code))
                })
                .collect(),
        ),
        Err(e) => LeaveGroupResponse::default().with_error_code(group_code(&e)),
    }
}

/// ListGroups: the groups this broker coordinates, filtered by state (v4) and type (v5).
pub(crate) fn list_groups(ctx: &Context, r: &ListGroupsRequest) -> ListGroupsResponse {
    let wanted_state = |state: &str| {
        r.states_filter.is_empty() || r.states_filter.iter().any(|f| f.eq_ignore_ascii_case(state))
    };
    let wanted_type =
        |kind: &str| r.types_filter.is_empty() || r.types_filter.iter().any(|f| f.eq_ignore_ascii_case(kind));
    let groups = ctx
        .groups
        .group_overviews()
        .into_iter()
        .filter(|g| wanted_state(g.state) && wanted_type(g.kind.name()))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(s(g.group_id)))
                .with_protocol_type(s(g.protocol_type))
                .with_group_state(s(g.state))
                .with_group_type(s(g.kind.name()))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// DescribeGroups: state, protocol and members with their metadata and assignment.
pub(crate) async fn describe_groups(
    ctx: &Context,
    r: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let operations = (version >= 3 && r.include_authorized_operations).then_some(GROUP_OPERATIONS);
    let mut groups = Vec::with_capacity(r.groups.len());
    for id in r.groups {
        let described = match ctx.groups.group_description(&id.0).await {
            Ok(d) => DescribedGroup::default()
                .with_group_id(id)
                .with_group_state(s(d.state))
                .with_protocol_type(s(d.protocol_type))
                .with_protocol_data(s(d.protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(s(m.member_id))
                                .with_group_instance_id(opt(m.group_instance_id))
                                .with_client_id(s(m.client_id))
                                .with_client_host(s(m.client_host))
                                .with_member_metadata(m.metadata)
                                .with_member_assignment(m.assignment)
                        })
                        .collect(),
                )
                .with_authorized_operations(operations.unwrap_or(i32::MIN)),
            Err(e) => DescribedGroup::default()
                .with_group_id(id)
                .with_error_code(group_code(&e))
                .with_error_message(Some(s(e.message))),
        };
        groups.push(described);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

/// DeleteGroups: only groups without members; their committed offsets go too.
pub(crate) async fn delete_groups(ctx: &Context, r: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let ids: Vec<String> = r.groups_names.iter().map(|g| g.0.to_string()).collect();
    let results = ctx
        .groups
        .delete_groups(&ids)
        .await
        .into_iter()
        .map(|(id, result)| {
            DeletableGroupResult::default()
                .with_group_id(GroupId(s(id)))
                .with_error_code(result.as_ref().err().map_or(code::NONE, group_code))
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}

/// Most topics one KIP-848 heartbeat may subscribe to (the gRPC edge's limit too).
const SUBSCRIBED_TOPICS_MAX: usize = 1_000;

/// ConsumerGroupHeartbeat (KIP-848) on the coordinator the gRPC groups use. The Kafka form
/// names partitions by topic id and sends the subscription and owned partitions only when
/// they change (null otherwise), so those are filled in from the coordinator's view of the
/// member; the broker assigns ("uniform" or "range", Kafka's server assignors).
pub(crate) async fn consumer_group_heartbeat(
    ctx: &Context,
    r: ConsumerGroupHeartbeatRequest,
    client: &Client,
) -> ConsumerGroupHeartbeatResponse {
    let refuse = |error: i16, message: String| {
        ConsumerGroupHeartbeatResponse::default().with_error_code(error).with_error_message(Some(s(message)))
    };
    if r.subscribed_topic_regex.as_ref().is_some_and(|re| !re.is_empty()) {
        return refuse(code::INVALID_REQUEST, "subscriptions by regular expression are not supported".into());
    }
    if r.subscribed_topic_names.as_ref().is_some_and(|t| t.len() > SUBSCRIBED_TOPICS_MAX) {
        return refuse(code::INVALID_REQUEST, format!("more than {SUBSCRIBED_TOPICS_MAX} subscribed topics"));
    }
    let assignor: Assignor = match r.server_assignor.as_deref().unwrap_or("").parse() {
        Ok(a) => a,
        Err(e) => return refuse(code::INVALID_REQUEST, e),
    };
    let group_id = r.group_id.0.to_string();
    let member_id = r.member_id.to_string();
    let known = if r.member_epoch > 0 && (r.subscribed_topic_names.is_none() || r.topic_partitions.is_none())
    {
        ctx.groups.member_subscription(&group_id, &member_id).await
    } else {
        None
    };
    let (known_subscribed, known_owned) = known.unwrap_or_default();
    let subscribed: BTreeSet<String> = match r.subscribed_topic_names {
        Some(names) => names.into_iter().map(|n| n.0.to_string()).collect(),
        None => known_subscribed,
    };
    let owned: TpSet = match r.topic_partitions {
        Some(list) => match ctx.plane.metadata() {
            Ok(cache) => {
                let names: BTreeMap<uuid::Uuid, &String> =
                    cache.topics.iter().map(|(name, t)| (uuid(&t.id), name)).collect();
                list.iter()
                    .filter_map(|tp| names.get(&tp.topic_id).map(|name| (*name, &tp.partitions)))
                    .flat_map(|(name, ps)| {
                        ps.iter().filter_map(|&p| u32::try_from(p).ok()).map(move |p| (name.clone(), p))
                    })
                    .collect()
            }
            Err(e) => return refuse(broker_code(&e), e.message),
        },
        None => known_owned,
    };
    let hb = Heartbeat {
        member_id,
        member_epoch: r.member_epoch,
        subscribed,
        assignor,
        // Kafka sets these on the broker (group.consumer.session.timeout.ms): the defaults.
        session_timeout_ms: session_timeout_ms(0),
        rebalance_timeout_ms: rebalance_timeout_ms(u32::try_from(r.rebalance_timeout_ms).unwrap_or(0)),
        owned,
        client_id: client.id.clone(),
        host: client.addr.ip().to_string(),
    };
    match ctx.groups.heartbeat(&group_id, hb).await {
        Ok(answer) => {
            let assignment = match ctx.plane.metadata() {
                Ok(cache) => {
                    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                    for (topic, p) in &answer.assignment {
                        by_topic.entry(topic.as_str()).or_default().push(*p as i32);
                    }
                    by_topic
                        .into_iter()
                        .filter_map(|(topic, partitions)| {
                            let id = uuid(&cache.topics.get(topic)?.id);
                            Some(TopicPartitions::default().with_topic_id(id).with_partitions(partitions))
                        })
                        .collect()
                }
                Err(_) => Vec::new(),
            };
            ConsumerGroupHeartbeatResponse::default()
                .with_member_id(Some(s(answer.member_id)))
                .with_member_epoch(answer.member_epoch)
                .with_heartbeat_interval_ms(i32::try_from(answer.heartbeat_interval_ms).unwrap_or(i32::MAX))
                .with_assignment(
                    (answer.member_epoch >= 0)
                        .then(|| Assignment::default().with_topic_partitions(assignment)),
                )
        }
        Err(e) => refuse(group_code(&e), e.message),
    }
}
