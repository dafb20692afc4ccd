//! The classic group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and the group
//! listings (ListGroups, DescribeGroups, DeleteGroups), on the coordinator's classic groups.
//! The broker relays the leader's assignment bytes and never parses them, so the clients'
//! own assignors (range, roundrobin, cooperative-sticky) work as they do on Kafka.

use kafka_protocol::messages::GroupId;
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
use runnel_broker::group::{
    ClassicHeartbeat, JoinGroupRequest, JoinProtocol, LeaveMember, SyncAssignment, SyncGroupRequest,
};

use super::groups::group_code;
use super::{Client, code, s};
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
pub(crate) async fn describe_groups(ctx: &Context, r: DescribeGroupsRequest) -> DescribeGroupsResponse {
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
                ),
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
