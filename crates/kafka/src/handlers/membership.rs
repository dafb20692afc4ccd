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
use runnel_auth::acl::{CLUSTER_RESOURCE_NAME, Operation, ResourceType};
use runnel_broker::group::assign::{Assignor, TpSet};
use runnel_broker::group::state::{Heartbeat, rebalance_timeout_ms, session_timeout_ms};
use runnel_broker::group::{
    ClassicHeartbeat, JoinGroupRequest, JoinProtocol, LeaveMember, SyncAssignment, SyncGroupRequest,
};

use super::acls::{authorize, authorized_operations};
use super::groups::group_code;
use super::metadata::uuid;
use super::{Client, broker_code, code, s};
use crate::Context;

fn opt(value: Option<String>) -> Option<kafka_protocol::protocol::StrBytes> {
    value.map(s)
}

/// READ on the group, which the classic protocol's requests need: GROUP_AUTHORIZATION_FAILED
/// and the message otherwise.
fn may_read_group(ctx: &Context, client: &Client, group: &str) -> Result<(), (i16, String)> {
    authorize(ctx, client, Operation::Read, ResourceType::Group, group).map_err(|message| {
        tracing::debug!(client = %client.addr, "kafka: group request refused: {message}");
        (code::GROUP_AUTHORIZATION_FAILED, message)
    })
}

/// JoinGroup: waits until the join phase completes; the leader gets every member. Needs
/// READ on the group.
pub(crate) async fn join_group(
    ctx: &Context,
    r: KafkaJoin,
    version: i16,
    client: &Client,
) -> JoinGroupResponse {
    if let Err((error, _)) = may_read_group(ctx, client, &r.group_id.0) {
        let response = JoinGroupResponse::default()
            .with_error_code(error)
            .with_generation_id(-1)
            .with_member_id(r.member_id.clone());
        // Before v7 the protocol name may not be null.
        return if version < 7 { response.with_protocol_name(Some(s(""))) } else { response };
    }
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

/// SyncGroup: the leader hands out assignments; every member waits for its own. Needs READ
/// on the group.
pub(crate) async fn sync_group(ctx: &Context, r: KafkaSync, client: &Client) -> SyncGroupResponse {
    if let Err((error, _)) = may_read_group(ctx, client, &r.group_id.0) {
        return SyncGroupResponse::default().with_error_code(error);
    }
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

/// Heartbeat: NONE, or REBALANCE_IN_PROGRESS and the like to make the member rejoin. Needs
/// READ on the group.
pub(crate) async fn heartbeat(ctx: &Context, r: HeartbeatRequest, client: &Client) -> HeartbeatResponse {
    if let Err((error, _)) = may_read_group(ctx, client, &r.group_id.0) {
        return HeartbeatResponse::default().with_error_code(error);
    }
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

/// LeaveGroup: one member before v3, a list with a result each from v3 on. Needs READ on
/// the group (the refusal is the top-level error, as Kafka's).
pub(crate) async fn leave_group(
    ctx: &Context,
    r: LeaveGroupRequest,
    version: i16,
    client: &Client,
) -> LeaveGroupResponse {
    if let Err((error, _)) = may_read_group(ctx, client, &r.group_id.0) {
        return LeaveGroupResponse::default().with_error_code(error);
    }
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
/// With DESCRIBE on the cluster every group is listed, otherwise those the client may
/// DESCRIBE.
pub(crate) fn list_groups(ctx: &Context, r: &ListGroupsRequest, client: &Client) -> ListGroupsResponse {
    let all = client.allowed(ctx, Operation::Describe, ResourceType::Cluster, CLUSTER_RESOURCE_NAME);
    let may_describe =
        |group: &str| all || client.allowed(ctx, Operation::Describe, ResourceType::Group, group);
    let wanted_state = |state: &str| {
        r.states_filter.is_empty() || r.states_filter.iter().any(|f| f.eq_ignore_ascii_case(state))
    };
    let wanted_type =
        |kind: &str| r.types_filter.is_empty() || r.types_filter.iter().any(|f| f.eq_ignore_ascii_case(kind));
    let groups = ctx
        .groups
        .group_overviews()
        .into_iter()
        .filter(|g| wanted_state(g.state) && wanted_type(g.kind.name()) && may_describe(&g.group_id))
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

/// DescribeGroups: state, protocol and members with their metadata and assignment. Needs
/// DESCRIBE on each group (GROUP_AUTHORIZATION_FAILED for that group otherwise).
pub(crate) async fn describe_groups(
    ctx: &Context,
    r: DescribeGroupsRequest,
    version: i16,
    client: &Client,
) -> DescribeGroupsResponse {
    let with_operations = version >= 3 && r.include_authorized_operations;
    // A group's error message exists from v6 (the encoder refuses it before).
    let message_field = |message: String| (version >= 6).then(|| s(message));
    let mut groups = Vec::with_capacity(r.groups.len());
    for id in r.groups {
        if let Err(message) = authorize(ctx, client, Operation::Describe, ResourceType::Group, &id.0) {
            groups.push(
                DescribedGroup::default()
                    .with_group_id(id)
                    .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
                    .with_error_message(message_field(message)),
            );
            continue;
        }
        let operations =
            with_operations.then(|| authorized_operations(ctx, client, ResourceType::Group, &id.0));
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
                .with_error_message(message_field(e.message)),
        };
        groups.push(described);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

/// DeleteGroups: only groups without members; their committed offsets go too. Needs DELETE
/// on each group (GROUP_AUTHORIZATION_FAILED for that group otherwise).
pub(crate) async fn delete_groups(
    ctx: &Context,
    r: DeleteGroupsRequest,
    client: &Client,
) -> DeleteGroupsResponse {
    let (ids, refused): (Vec<String>, Vec<String>) = r
        .groups_names
        .iter()
        .map(|g| g.0.to_string())
        .partition(|id| client.allowed(ctx, Operation::Delete, ResourceType::Group, id));
    let deleted = if ids.is_empty() { Vec::new() } else { ctx.groups.delete_groups(&ids).await };
    let results = deleted
        .into_iter()
        .map(|(id, result)| {
            DeletableGroupResult::default()
                .with_group_id(GroupId(s(id)))
                .with_error_code(result.as_ref().err().map_or(code::NONE, group_code))
        })
        .chain(refused.into_iter().map(|id| {
            DeletableGroupResult::default()
                .with_group_id(GroupId(s(id)))
                .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
        }))
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}

/// Most topics one KIP-848 heartbeat may subscribe to (the gRPC edge's limit too).
const SUBSCRIBED_TOPICS_MAX: usize = 1_000;

/// ConsumerGroupHeartbeat (KIP-848) on the coordinator the gRPC groups use. The Kafka form
/// names partitions by topic id and sends the subscription and owned partitions only when
/// they change (null otherwise), so those are filled in from the coordinator's view of the
/// member; the broker assigns ("uniform" or "range", Kafka's server assignors). Needs READ on
/// the group, and DESCRIBE on each topic the request subscribes to (TOPIC_AUTHORIZATION_FAILED
/// otherwise, as Kafka).
pub(crate) async fn consumer_group_heartbeat(
    ctx: &Context,
    r: ConsumerGroupHeartbeatRequest,
    client: &Client,
) -> ConsumerGroupHeartbeatResponse {
    let refuse = |error: i16, message: String| {
        ConsumerGroupHeartbeatResponse::default().with_error_code(error).with_error_message(Some(s(message)))
    };
    if let Err((error, message)) = may_read_group(ctx, client, &r.group_id.0) {
        return refuse(error, message);
    }
    for topic in r.subscribed_topic_names.iter().flatten() {
        if let Err(message) = authorize(ctx, client, Operation::Describe, ResourceType::Topic, &topic.0) {
            return refuse(code::TOPIC_AUTHORIZATION_FAILED, message);
        }
    }
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
