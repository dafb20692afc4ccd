//! `runnel.v1.GroupService` over a [`GroupCoordinator`]: each request is validated into
//! plain values here, at the edge, before it reaches the coordinator.

use std::collections::BTreeSet;
use std::sync::Arc;

use runnel_auth::acl::{CLUSTER_RESOURCE_NAME, Operation, ResourceType};
use runnel_proto::pb::runnel::v1 as pb;
use runnel_proto::pb::runnel::v1::group_service_server::{GroupService, GroupServiceServer};
use runnel_proto::security::{caller, check};
use tonic::{Request, Response, Status};

use super::assign::{Assignor, TpSet};
use super::coordinator::{
    CLIENT_ID_BYTES_MAX, Committer, GroupCoordinator, OffsetEntry, PARTITIONS_PER_REQUEST_MAX,
    SUBSCRIBED_TOPICS_MAX, to_topic_partitions, validate_group_id,
};
use super::error::GroupError;
use super::record::{METADATA_BYTES_MAX, TOPIC_NAME_BYTES_MAX};
use super::state::{Heartbeat, rebalance_timeout_ms, session_timeout_ms};

/// Largest request the service decodes.
pub const GROUP_REQUEST_BYTES_MAX: usize = 16 << 20;

/// The tonic service.
#[derive(Debug, Clone)]
pub struct GroupGrpc {
    coordinator: Arc<GroupCoordinator>,
}

impl GroupGrpc {
    /// The service over `coordinator`.
    pub fn new(coordinator: Arc<GroupCoordinator>) -> Self {
        GroupGrpc { coordinator }
    }

    /// The tonic server, with the request size limit set.
    pub fn into_server(self) -> GroupServiceServer<GroupGrpc> {
        GroupServiceServer::new(self).max_decoding_message_size(GROUP_REQUEST_BYTES_MAX)
    }
}

/// A list of topic partitions as a set; refuses more than `max` partitions.
fn partition_set(list: &[pb::TopicPartitions], what: &str) -> Result<TpSet, GroupError> {
    let total: usize = list.iter().map(|t| t.partitions.len()).sum();
    if total > PARTITIONS_PER_REQUEST_MAX {
        return Err(GroupError::invalid(format!(
            "{what} lists {total} partitions, over the limit of {PARTITIONS_PER_REQUEST_MAX}"
        )));
    }
    let mut set = TpSet::new();
    for t in list {
        check_topic(&t.topic, what)?;
        set.extend(t.partitions.iter().map(|p| (t.topic.clone(), *p)));
    }
    Ok(set)
}

fn check_topic(topic: &str, what: &str) -> Result<(), GroupError> {
    if topic.is_empty() || topic.len() > TOPIC_NAME_BYTES_MAX {
        return Err(GroupError::invalid(format!(
            "{what} names a topic of {} bytes; a topic name is 1 to {TOPIC_NAME_BYTES_MAX} bytes",
            topic.len()
        )));
    }
    Ok(())
}

/// A heartbeat request, validated.
fn heartbeat(r: pb::ConsumerGroupHeartbeatRequest, host: String) -> Result<Heartbeat, GroupError> {
    validate_group_id(&r.group_id)?;
    if r.member_epoch != 0 && r.member_id.is_empty() {
        return Err(GroupError::invalid(format!(
            "member_epoch {} needs the member_id (only a join, epoch 0, may leave it empty)",
            r.member_epoch
        )));
    }
    if r.subscribed_topics.len() > SUBSCRIBED_TOPICS_MAX {
        return Err(GroupError::invalid(format!(
            "{} subscribed topics, over the limit of {SUBSCRIBED_TOPICS_MAX}",
            r.subscribed_topics.len()
        )));
    }
    for topic in &r.subscribed_topics {
        check_topic(topic, "subscribed_topics")?;
    }
    let subscribed: BTreeSet<String> = r.subscribed_topics.into_iter().collect();
    if r.member_epoch == 0 && subscribed.is_empty() {
        return Err(GroupError::invalid("a joining member must subscribe to at least one topic"));
    }
    let assignor: Assignor = r.assignor.parse().map_err(GroupError::invalid)?;
    if r.client_id.len() > CLIENT_ID_BYTES_MAX {
        return Err(GroupError::invalid(format!(
            "client_id is {} bytes, over the limit of {CLIENT_ID_BYTES_MAX}",
            r.client_id.len()
        )));
    }
    Ok(Heartbeat {
        member_id: r.member_id,
        member_epoch: r.member_epoch,
        subscribed,
        assignor,
        session_timeout_ms: session_timeout_ms(r.session_timeout_ms),
        rebalance_timeout_ms: rebalance_timeout_ms(r.rebalance_timeout_ms),
        owned: partition_set(&r.owned_partitions, "owned_partitions")?,
        client_id: r.client_id,
        host,
    })
}

/// The offsets of a commit or reset, validated.
fn offsets(list: Vec<pb::OffsetCommitPartition>) -> Result<Vec<OffsetEntry>, GroupError> {
    list.into_iter()
        .map(|o| {
            check_topic(&o.topic, "offsets")?;
            if o.offset < 0 {
                return Err(GroupError::invalid(format!(
                    "offset {} for {}-{} is negative",
                    o.offset, o.topic, o.partition
                )));
            }
            if o.metadata.len() > METADATA_BYTES_MAX {
                return Err(GroupError::invalid(format!(
                    "metadata for {}-{} is {} bytes, over the limit of {METADATA_BYTES_MAX}",
                    o.topic,
                    o.partition,
                    o.metadata.len()
                )));
            }
            Ok(OffsetEntry { tp: (o.topic, o.partition), offset: o.offset, metadata: o.metadata })
        })
        .collect()
}

/// Checks `operation` on every topic of `topics` for the caller of `request`.
fn check_topics<'a, T>(
    request: &Request<T>,
    operation: Operation,
    topics: impl IntoIterator<Item = &'a String>,
) -> Result<(), Status> {
    topics.into_iter().try_for_each(|t| check(request, operation, ResourceType::Topic, t))
}

#[tonic::async_trait]
impl GroupService for GroupGrpc {
    async fn find_coordinator(
        &self,
        request: Request<pb::FindCoordinatorRequest>,
    ) -> Result<Response<pb::FindCoordinatorResponse>, Status> {
        check(&request, Operation::Describe, ResourceType::Group, &request.get_ref().group_id)?;
        let found = self.coordinator.find_coordinator(&request.get_ref().group_id).await?;
        Ok(Response::new(pb::FindCoordinatorResponse {
            broker_id: found.broker_id,
            address: found.address,
            partition: found.partition,
        }))
    }

    async fn consumer_group_heartbeat(
        &self,
        request: Request<pb::ConsumerGroupHeartbeatRequest>,
    ) -> Result<Response<pb::ConsumerGroupHeartbeatResponse>, Status> {
        check(&request, Operation::Read, ResourceType::Group, &request.get_ref().group_id)?;
        check_topics(&request, Operation::Describe, &request.get_ref().subscribed_topics)?;
        let host = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let r = request.into_inner();
        let group_id = r.group_id.clone();
        let hb = heartbeat(r, host)?;
        let answer = self.coordinator.heartbeat(&group_id, hb).await?;
        Ok(Response::new(pb::ConsumerGroupHeartbeatResponse {
            member_id: answer.member_id,
            member_epoch: answer.member_epoch,
            heartbeat_interval_ms: u32::try_from(answer.heartbeat_interval_ms).unwrap_or(u32::MAX),
            assignment: to_topic_partitions(&answer.assignment),
        }))
    }

    async fn offset_commit(
        &self,
        request: Request<pb::OffsetCommitRequest>,
    ) -> Result<Response<pb::OffsetCommitResponse>, Status> {
        check(&request, Operation::Read, ResourceType::Group, &request.get_ref().group_id)?;
        check_topics(&request, Operation::Read, request.get_ref().offsets.iter().map(|o| &o.topic))?;
        let r = request.into_inner();
        validate_group_id(&r.group_id)?;
        let entries = offsets(r.offsets)?;
        let committer = Committer::Member { id: &r.member_id, epoch: r.member_epoch };
        self.coordinator.commit(&r.group_id, committer, entries).await?;
        Ok(Response::new(pb::OffsetCommitResponse {}))
    }

    async fn offset_fetch(
        &self,
        request: Request<pb::OffsetFetchRequest>,
    ) -> Result<Response<pb::OffsetFetchResponse>, Status> {
        check(&request, Operation::Describe, ResourceType::Group, &request.get_ref().group_id)?;
        check_topics(&request, Operation::Describe, request.get_ref().partitions.iter().map(|p| &p.topic))?;
        let caller = caller(&request).cloned();
        let r = request.into_inner();
        validate_group_id(&r.group_id)?;
        let wanted: Vec<_> = partition_set(&r.partitions, "partitions")?.into_iter().collect();
        let mut offsets = self.coordinator.fetch_offsets(&r.group_id, wanted).await?;
        // Asking for all: only the topics the caller may describe.
        if let Some(c) = &caller {
            offsets.retain(|o| c.allowed(Operation::Describe, ResourceType::Topic, &o.topic));
        }
        Ok(Response::new(pb::OffsetFetchResponse { offsets: offsets.into_iter().map(Into::into).collect() }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let mut listed = self.coordinator.list_groups();
        // As Kafka: DESCRIBE on the cluster lists every group, otherwise those the caller may describe.
        if let Some(c) = caller(&request)
            && !c.allowed(Operation::Describe, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)
        {
            listed.groups.retain(|g| c.allowed(Operation::Describe, ResourceType::Group, &g.group_id));
        }
        Ok(Response::new(listed))
    }

    async fn describe_group(
        &self,
        request: Request<pb::DescribeGroupRequest>,
    ) -> Result<Response<pb::DescribeGroupResponse>, Status> {
        check(&request, Operation::Describe, ResourceType::Group, &request.get_ref().group_id)?;
        let mut described = self.coordinator.describe_group(&request.get_ref().group_id).await?;
        // Committed offsets only of the topics the caller may describe.
        if let Some(c) = caller(&request) {
            described.offsets.retain(|o| c.allowed(Operation::Describe, ResourceType::Topic, &o.topic));
        }
        Ok(Response::new(described))
    }

    async fn reset_offsets(
        &self,
        request: Request<pb::ResetOffsetsRequest>,
    ) -> Result<Response<pb::ResetOffsetsResponse>, Status> {
        check(&request, Operation::Read, ResourceType::Group, &request.get_ref().group_id)?;
        check_topics(&request, Operation::Read, request.get_ref().offsets.iter().map(|o| &o.topic))?;
        let r = request.into_inner();
        validate_group_id(&r.group_id)?;
        let entries = offsets(r.offsets)?;
        self.coordinator.commit(&r.group_id, Committer::Reset, entries).await?;
        Ok(Response::new(pb::ResetOffsetsResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::error::GroupErrorCode;

    fn request() -> pb::ConsumerGroupHeartbeatRequest {
        pb::ConsumerGroupHeartbeatRequest {
            group_id: "g".into(),
            subscribed_topics: vec!["t".into(), "t".into()],
            ..Default::default()
        }
    }

    #[test]
    fn heartbeats_are_validated_at_the_edge() {
        let hb = heartbeat(request(), "h".into()).unwrap();
        assert_eq!(hb.subscribed.len(), 1);
        assert_eq!((hb.session_timeout_ms, hb.rebalance_timeout_ms), (45_000, 300_000));
        let code = |r| heartbeat(r, String::new()).unwrap_err().code;
        assert_eq!(
            code(pb::ConsumerGroupHeartbeatRequest { group_id: String::new(), ..request() }),
            GroupErrorCode::InvalidGroupId
        );
        assert_eq!(
            code(pb::ConsumerGroupHeartbeatRequest { group_id: "x".repeat(256), ..request() }),
            GroupErrorCode::InvalidGroupId
        );
        assert_eq!(
            code(pb::ConsumerGroupHeartbeatRequest { assignor: "sticky".into(), ..request() }),
            GroupErrorCode::InvalidRequest
        );
        assert_eq!(
            code(pb::ConsumerGroupHeartbeatRequest { subscribed_topics: vec![], ..request() }),
            GroupErrorCode::InvalidRequest
        );
        assert_eq!(
            code(pb::ConsumerGroupHeartbeatRequest { member_epoch: 3, ..request() }),
            GroupErrorCode::InvalidRequest
        );
        let owned = vec![pb::TopicPartitions { topic: String::new(), partitions: vec![0] }];
        assert_eq!(
            code(pb::ConsumerGroupHeartbeatRequest { owned_partitions: owned, ..request() }),
            GroupErrorCode::InvalidRequest
        );
    }

    #[test]
    fn offsets_are_validated_at_the_edge() {
        let ok =
            pb::OffsetCommitPartition { topic: "t".into(), partition: 1, offset: 5, metadata: "m".into() };
        assert_eq!(offsets(vec![ok.clone()]).unwrap()[0].tp, ("t".to_owned(), 1));
        let negative = pb::OffsetCommitPartition { offset: -1, ..ok.clone() };
        assert_eq!(offsets(vec![negative]).unwrap_err().code, GroupErrorCode::InvalidRequest);
        let long = pb::OffsetCommitPartition { metadata: "x".repeat(4097), ..ok.clone() };
        assert_eq!(offsets(vec![long]).unwrap_err().code, GroupErrorCode::InvalidRequest);
        let fits = pb::OffsetCommitPartition { metadata: "x".repeat(4096), ..ok };
        assert!(offsets(vec![fits]).is_ok());
    }
}
