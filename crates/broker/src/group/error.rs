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
    /// 24: an empty or over-long group id.
    InvalidGroupId,
    /// 25: the member is not in the group.
    UnknownMemberId,
    /// 42: a malformed field.
    InvalidRequest,
    /// 68: ResetOffsets on a group that has members.
    NonEmptyGroup,
    /// 81: the group has as many members as it may have.
    GroupMaxSizeReached,
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
            GroupErrorCode::InvalidGroupId => 24,
            GroupErrorCode::UnknownMemberId => 25,
            GroupErrorCode::InvalidRequest => 42,
            GroupErrorCode::NonEmptyGroup => 68,
            GroupErrorCode::GroupMaxSizeReached => 81,
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
            GroupErrorCode::InvalidGroupId => "INVALID_GROUP_ID",
            GroupErrorCode::UnknownMemberId => "UNKNOWN_MEMBER_ID",
            GroupErrorCode::InvalidRequest => "INVALID_REQUEST",
            GroupErrorCode::NonEmptyGroup => "NON_EMPTY_GROUP",
            GroupErrorCode::GroupMaxSizeReached => "GROUP_MAX_SIZE_REACHED",
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
            GroupErrorCode::InvalidGroupId | GroupErrorCode::InvalidRequest => Code::InvalidArgument,
            GroupErrorCode::UnknownMemberId
            | GroupErrorCode::NonEmptyGroup
            | GroupErrorCode::FencedMemberEpoch
            | GroupErrorCode::StaleMemberEpoch => Code::FailedPrecondition,
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
}

impl GroupError {
    /// An error with `code` and `message`.
    pub fn new(code: GroupErrorCode, message: impl Into<String>) -> Self {
        GroupError { code, message: message.into(), coordinator: None }
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
