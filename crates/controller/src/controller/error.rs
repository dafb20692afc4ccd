//! The controller service's errors and their gRPC form.

use std::time::Duration;

use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::metadata::{CommandError, ErrorCode};

/// gRPC metadata key: Kafka's numeric error code, in decimal.
pub const ERROR_CODE_KEY: &str = "runnel-error-code";
/// gRPC metadata key: Kafka's name for the error code.
pub const ERROR_NAME_KEY: &str = "runnel-error-name";
/// gRPC metadata key: the controller leader's `host:port`, with NOT_CONTROLLER.
pub const LEADER_KEY: &str = "runnel-leader";

/// Why a controller call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    /// The state machine refused the command (committed, and refused on every replica).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The request is malformed or breaks a limit; nothing was proposed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No leader could commit (or confirm a read) within the deadline: the controller has no
    /// quorum. Retriable.
    #[error("no quorum: the controller could not commit within {timeout:?}")]
    NoQuorum {
        /// The deadline that passed.
        timeout: Duration,
    },
    /// This node cannot serve the call and cannot forward it; retry at `leader` if known.
    #[error("not the controller leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotController {
        /// The leader's address, when known.
        leader: Option<String>,
    },
    /// The node is shutting down or its Raft stopped.
    #[error("controller unavailable: {0}")]
    Unavailable(String),
}

impl ControllerError {
    /// The Kafka error code clients see.
    pub fn code(&self) -> ErrorCode {
        match self {
            ControllerError::Command(e) => e.code,
            ControllerError::Invalid(_) => ErrorCode::InvalidRequest,
            ControllerError::NoQuorum { .. } => ErrorCode::RequestTimedOut,
            ControllerError::NotController { .. } => ErrorCode::NotController,
            ControllerError::Unavailable(_) => ErrorCode::UnknownServerError,
        }
    }

    fn grpc_code(&self) -> Code {
        match self {
            ControllerError::Command(e) => match e.code {
                ErrorCode::TopicAlreadyExists => Code::AlreadyExists,
                ErrorCode::UnknownTopicOrPartition
                | ErrorCode::UnknownTopicId
                | ErrorCode::ResourceNotFound => Code::NotFound,
                ErrorCode::UnsupportedSaslMechanism => Code::InvalidArgument,
                ErrorCode::ClusterAuthorizationFailed => Code::PermissionDenied,
                ErrorCode::InvalidTopicException
                | ErrorCode::InvalidPartitions
                | ErrorCode::InvalidReplicationFactor
                | ErrorCode::InvalidReplicaAssignment
                | ErrorCode::InvalidConfig
                | ErrorCode::InvalidRequest => Code::InvalidArgument,
                ErrorCode::NotController | ErrorCode::RequestTimedOut => Code::Unavailable,
                ErrorCode::UnknownServerError => Code::Internal,
                _ => Code::FailedPrecondition,
            },
            ControllerError::Invalid(_) => Code::InvalidArgument,
            ControllerError::NoQuorum { .. }
            | ControllerError::NotController { .. }
            | ControllerError::Unavailable(_) => Code::Unavailable,
        }
    }
}

impl From<ControllerError> for tonic::Status {
    fn from(error: ControllerError) -> tonic::Status {
        let code = error.code();
        let mut status = tonic::Status::new(error.grpc_code(), error.to_string());
        let metadata = status.metadata_mut();
        metadata.insert(ERROR_CODE_KEY, MetadataValue::from(code.code()));
        metadata.insert(ERROR_NAME_KEY, MetadataValue::from_static(code.name()));
        if let ControllerError::NotController { leader: Some(leader) } = &error
            && let Ok(value) = leader.parse()
        {
            metadata.insert(LEADER_KEY, value);
        }
        status
    }
}

/// The Kafka error code a status carries, if it came from a controller.
pub fn status_error_code(status: &tonic::Status) -> Option<ErrorCode> {
    let code = status.metadata().get(ERROR_CODE_KEY)?.to_str().ok()?.parse().ok()?;
    ErrorCode::from_code(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_the_kafka_code_name_and_leader() {
        let status: tonic::Status =
            ControllerError::Command(CommandError::new(ErrorCode::TopicAlreadyExists, "t exists")).into();
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(status.metadata().get(ERROR_CODE_KEY).unwrap(), "36");
        assert_eq!(status.metadata().get(ERROR_NAME_KEY).unwrap(), "TOPIC_ALREADY_EXISTS");
        assert_eq!(status_error_code(&status), Some(ErrorCode::TopicAlreadyExists));

        let status: tonic::Status =
            ControllerError::NotController { leader: Some("10.0.0.1:50051".into()) }.into();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.metadata().get(LEADER_KEY).unwrap(), "10.0.0.1:50051");
        assert_eq!(status_error_code(&status), Some(ErrorCode::NotController));

        let status: tonic::Status = ControllerError::NoQuorum { timeout: Duration::from_secs(5) }.into();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status_error_code(&status), Some(ErrorCode::RequestTimedOut));
        assert!(status.message().contains("no quorum"));
    }
}
