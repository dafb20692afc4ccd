//! The errors of the group calls, with Kafka's codes, as gRPC statuses carrying the same
//! metadata as the BrokerService's (`runnel-error-code`, `runnel-error-name`, and
//! `runnel-leader` with NOT_COORDINATOR when the coordinator is known).

use tonic::Code;

use crate::error::{BrokerError, ErrorCode, kafka_status};

/// Kafka's error codes that the group calls answer (numbers and names are Kafka's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupErrorCode {
    /// -1: an error the broker did not expect.
    UnknownServerError,
    /// 3: an offset for a topic or partition that does not exist.
    UnknownTopicOrPartition,
    /// 7: the commit was not replicated in time.
    RequestTimedOut,
    /// 14: the coordinator is still reading its partition.
    CoordinatorLoadInProgress,
    /// 15: the group's partition has no leader now.
    CoordinatorNotAvailable,
    /// 16: this broker is not the group's coordinator.
    NotCoordinator,
    /// 22: a classic member's generation is not the group's.
    IllegalGeneration,
    /// 23: a member's protocol type or protocols do not fit the group's, or the group id is
    /// in use by members of the other group protocol (classic or KIP-848).
    InconsistentGroupProtocol,
    /// 24: an empty or over-long group id.
    InvalidGroupId,
    /// 25: the member is not in the group.
    UnknownMemberId,
    /// 26: a classic member's session timeout is outside the allowed range.
    InvalidSessionTimeout,
    /// 27: the classic group is rebalancing; the member must join again.
    RebalanceInProgress,
    /// 42: a malformed field.
    InvalidRequest,
    /// 68: ResetOffsets or DeleteGroups on a group that has members.
    NonEmptyGroup,
    /// 69: DeleteGroups of a group the coordinator does not know.
    GroupIdNotFound,
    /// 79: a classic member (JoinGroup v4+) must join again with the member id it is given.
    MemberIdRequired,
    /// 81: the group has as many members as it may have.
    GroupMaxSizeReached,
    /// 82: another member with the same group instance id (KIP-345) has replaced this one.
    FencedInstanceId,
    /// 110: the member's epoch is not the one the coordinator expects.
    FencedMemberEpoch,
    /// 113: an offset commit from an epoch the member has since left.
    StaleMemberEpoch,
}

impl GroupErrorCode {
    /// Kafka's number.
    pub fn code(self) -> i32 {
        match self {
            GroupErrorCode::UnknownServerError => -1,
            GroupErrorCode::UnknownTopicOrPartition => 3,
            GroupErrorCode::RequestTimedOut => 7,
            GroupErrorCode::CoordinatorLoadInProgress => 14,
            GroupErrorCode::CoordinatorNotAvailable => 15,
            GroupErrorCode::NotCoordinator => 16,
            GroupErrorCode::IllegalGeneration => 22,
            GroupErrorCode::InconsistentGroupProtocol => 23,
            GroupErrorCode::InvalidGroupId => 24,
            GroupErrorCode::UnknownMemberId => 25,
            GroupErrorCode::InvalidSessionTimeout => 26,
            GroupErrorCode::RebalanceInProgress => 27,
            GroupErrorCode::InvalidRequest => 42,
            GroupErrorCode::NonEmptyGroup => 68,
            GroupErrorCode::GroupIdNotFound => 69,
            GroupErrorCode::MemberIdRequired => 79,
            GroupErrorCode::GroupMaxSizeReached => 81,
            GroupErrorCode::FencedInstanceId => 82,
            GroupErrorCode::FencedMemberEpoch => 110,
            GroupErrorCode::StaleMemberEpoch => 113,
        }
    }

    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            GroupErrorCode::UnknownServerError => "UNKNOWN_SERVER_ERROR",
            GroupErrorCode::UnknownTopicOrPartition => "UNKNOWN_TOPIC_OR_PARTITION",
            GroupErrorCode::RequestTimedOut => "REQUEST_TIMED_OUT",
            GroupErrorCode::CoordinatorLoadInProgress => "COORDINATOR_LOAD_IN_PROGRESS",
            GroupErrorCode::CoordinatorNotAvailable => "COORDINATOR_NOT_AVAILABLE",
            GroupErrorCode::NotCoordinator => "NOT_COORDINATOR",
            GroupErrorCode::IllegalGeneration => "ILLEGAL_GENERATION",
            GroupErrorCode::InconsistentGroupProtocol => "INCONSISTENT_GROUP_PROTOCOL",
            GroupErrorCode::InvalidGroupId => "INVALID_GROUP_ID",
            GroupErrorCode::UnknownMemberId => "UNKNOWN_MEMBER_ID",
            GroupErrorCode::InvalidSessionTimeout => "INVALID_SESSION_TIMEOUT",
            GroupErrorCode::RebalanceInProgress => "REBALANCE_IN_PROGRESS",
            GroupErrorCode::InvalidRequest => "INVALID_REQUEST",
            GroupErrorCode::NonEmptyGroup => "NON_EMPTY_GROUP",
            GroupErrorCode::GroupIdNotFound => "GROUP_ID_NOT_FOUND",
            GroupErrorCode::MemberIdRequired => "MEMBER_ID_REQUIRED",
            GroupErrorCode::GroupMaxSizeReached => "GROUP_MAX_SIZE_REACHED",
            GroupErrorCode::FencedInstanceId => "FENCED_INSTANCE_ID",
            GroupErrorCode::FencedMemberEpoch => "FENCED_MEMBER_EPOCH",
            GroupErrorCode::StaleMemberEpoch => "STALE_MEMBER_EPOCH",
        }
    }

    /// Whether the same call may succeed later without the client changing anything but
    /// where it sends it.
    pub fn retriable(self) -> bool {
        matches!(
            self,
            GroupErrorCode::RequestTimedOut
                | GroupErrorCode::CoordinatorLoadInProgress
                | GroupErrorCode::CoordinatorNotAvailable
                | GroupErrorCode::NotCoordinator
                | GroupErrorCode::StaleMemberEpoch
        )
    }

    fn grpc(self) -> Code {
        match self {
            GroupErrorCode::UnknownServerError => Code::Internal,
            GroupErrorCode::UnknownTopicOrPartition => Code::NotFound,
            GroupErrorCode::RequestTimedOut => Code::DeadlineExceeded,
            GroupErrorCode::CoordinatorLoadInProgress
            | GroupErrorCode::CoordinatorNotAvailable
            | GroupErrorCode::NotCoordinator => Code::Unavailable,
            GroupErrorCode::InvalidGroupId
            | GroupErrorCode::InvalidRequest
            | GroupErrorCode::InvalidSessionTimeout => Code::InvalidArgument,
            GroupErrorCode::UnknownMemberId
            | GroupErrorCode::NonEmptyGroup
            | GroupErrorCode::FencedMemberEpoch
            | GroupErrorCode::StaleMemberEpoch
            | GroupErrorCode::IllegalGeneration
            | GroupErrorCode::InconsistentGroupProtocol
            | GroupErrorCode::MemberIdRequired
            | GroupErrorCode::FencedInstanceId => Code::FailedPrecondition,
            // The member's next step (join again) is expected, not a failure of the call's
            // preconditions: Aborted is gRPC's "retry at a higher level".
            GroupErrorCode::RebalanceInProgress => Code::Aborted,
            GroupErrorCode::GroupIdNotFound => Code::NotFound,
            GroupErrorCode::GroupMaxSizeReached => Code::ResourceExhausted,
        }
    }
}

/// A failed group call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {message}", code.name(), code.code())]
pub struct GroupError {
    /// Kafka's code.
    pub code: GroupErrorCode,
    /// For people.
    pub message: String,
    /// With NOT_COORDINATOR: the coordinator's broker id and gRPC address, when known.
    pub coordinator: Option<(u32, String)>,
    /// With MEMBER_ID_REQUIRED: the member id the classic member must join again with
    /// (Kafka answers it in JoinGroupResponse.member_id).
    pub member_id: Option<String>,
}

impl GroupError {
    /// An error with `code` and `message`.
    pub fn new(code: GroupErrorCode, message: impl Into<String>) -> Self {
        GroupError { code, message: message.into(), coordinator: None, member_id: None }
    }

    /// Shorthand for INVALID_REQUEST.
    pub fn invalid(message: impl Into<String>) -> Self {
        GroupError::new(GroupErrorCode::InvalidRequest, message)
    }

    /// A failed append or replication wait of a commit, in the terms a group client knows
    /// (Kafka's mapping: leadership lost means "find the coordinator again"; a replication
    /// shortfall means "the coordinator is not available"; both are retriable).
    pub fn from_append(error: BrokerError) -> Self {
        let code = match error.code {
            ErrorCode::NotLeaderOrFollower | ErrorCode::KafkaStorageError => GroupErrorCode::NotCoordinator,
            ErrorCode::NotEnoughReplicas
            | ErrorCode::NotEnoughReplicasAfterAppend
            | ErrorCode::LeaderNotAvailable => GroupErrorCode::CoordinatorNotAvailable,
            ErrorCode::RequestTimedOut => GroupErrorCode::RequestTimedOut,
            ErrorCode::MessageTooLarge => GroupErrorCode::InvalidRequest,
            _ => GroupErrorCode::UnknownServerError,
        };
        GroupError::new(code, format!("writing the commit: {error}"))
    }
}

impl From<GroupError> for tonic::Status {
    fn from(error: GroupError) -> tonic::Status {
        let (address, id) = match &error.coordinator {
            Some((id, address)) => (Some(address.as_str()), Some(i64::from(*id))),
            None => (None, None),
        };
        kafka_status(error.code.grpc(), error.code.code(), error.code.name(), error.to_string(), address, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ERROR_CODE_KEY, ERROR_NAME_KEY, LEADER_ID_KEY, LEADER_KEY};

    #[test]
    fn a_status_carries_the_code_the_name_and_the_coordinator() {
        let mut error = GroupError::new(GroupErrorCode::NotCoordinator, "not here");
        error.coordinator = Some((3, "127.0.0.1:50053".into()));
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), Code::Unavailable);
        let get = |k| status.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(get(ERROR_CODE_KEY).as_deref(), Some("16"));
        assert_eq!(get(ERROR_NAME_KEY).as_deref(), Some("NOT_COORDINATOR"));
        assert_eq!(get(LEADER_KEY).as_deref(), Some("127.0.0.1:50053"));
        assert_eq!(get(LEADER_ID_KEY).as_deref(), Some("3"));
    }

    #[test]
    fn append_failures_become_coordinator_errors() {
        let lost = GroupError::from_append(BrokerError::new(ErrorCode::NotLeaderOrFollower, "x"));
        assert_eq!(lost.code, GroupErrorCode::NotCoordinator);
        let few = GroupError::from_append(BrokerError::new(ErrorCode::NotEnoughReplicas, "x"));
        assert_eq!(few.code, GroupErrorCode::CoordinatorNotAvailable);
        assert!(few.code.retriable());
        assert!(!GroupErrorCode::FencedMemberEpoch.retriable());
    }
}
