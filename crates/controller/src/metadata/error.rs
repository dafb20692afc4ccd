//! Errors: a refused command carries a Kafka error code, so the gRPC and Kafka front ends
//! pass it to clients unchanged.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The Kafka error codes the metadata state machine answers with. The numbers are Kafka's
/// (`org.apache.kafka.common.protocol.Errors`) and never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(i16)]
pub enum ErrorCode {
    /// -1: a bug in the caller, such as applying a Raft index twice.
    UnknownServerError = -1,
    /// 3: no such topic, or no such partition in it.
    UnknownTopicOrPartition = 3,
    /// 6: the sender is not the partition's leader.
    NotLeaderOrFollower = 6,
    /// 7: the request did not complete in time (the controller has no quorum, or lost it).
    RequestTimedOut = 7,
    /// 17: the topic name breaks the naming rules or collides with an existing name.
    InvalidTopicException = 17,
    /// 31: the caller may not change the cluster this way.
    ClusterAuthorizationFailed = 31,
    /// 33: a SCRAM credential that is not valid for its mechanism (key lengths, iterations).
    UnsupportedSaslMechanism = 33,
    /// 36: a topic with this name exists.
    TopicAlreadyExists = 36,
    /// 37: the partition count is below 1 or above the limit, or a CreatePartitions does not
    /// grow the topic.
    InvalidPartitions = 37,
    /// 38: the replication factor is below 1 or above the number of unfenced brokers.
    InvalidReplicationFactor = 38,
    /// 39: an explicit replica assignment is malformed or names unknown brokers.
    InvalidReplicaAssignment = 39,
    /// 40: an unknown config key, or a value out of range.
    InvalidConfig = 40,
    /// 41: the request is ahead of this controller's image (it carries a newer epoch than
    /// the one committed): retry against the current controller.
    NotController = 41,
    /// 42: a malformed request.
    InvalidRequest = 42,
    /// 44: the request would break a cluster limit (replicas per broker).
    PolicyViolation = 44,
    /// 74: the request carries an older leader epoch than the partition's.
    FencedLeaderEpoch = 74,
    /// 77: the broker epoch in the request is not the broker's current one.
    StaleBrokerEpoch = 77,
    /// 80: the preferred replica is not in the ISR or is fenced.
    PreferredLeaderNotAvailable = 80,
    /// 83: no ISR member is eligible to lead, and unclean election is off.
    EligibleLeadersNotAvailable = 83,
    /// 84: the partition already has the leader the election would choose.
    ElectionNotNeeded = 84,
    /// 95: the partition epoch in an AlterPartition request is stale.
    InvalidUpdateVersion = 95,
    /// 91: the user (or credential) to delete does not exist.
    ResourceNotFound = 91,
    /// 100: the topic id does not name a current topic.
    UnknownTopicId = 100,
    /// 102: no broker is registered with this id.
    BrokerIdNotRegistered = 102,
    /// 107: the new ISR names a broker that may not join it (fenced, or a stale epoch).
    IneligibleReplica = 107,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 25] = [
        ErrorCode::UnknownServerError,
        ErrorCode::UnknownTopicOrPartition,
        ErrorCode::NotLeaderOrFollower,
        ErrorCode::RequestTimedOut,
        ErrorCode::InvalidTopicException,
        ErrorCode::ClusterAuthorizationFailed,
        ErrorCode::UnsupportedSaslMechanism,
        ErrorCode::TopicAlreadyExists,
        ErrorCode::InvalidPartitions,
        ErrorCode::InvalidReplicationFactor,
        ErrorCode::InvalidReplicaAssignment,
        ErrorCode::InvalidConfig,
        ErrorCode::NotController,
        ErrorCode::InvalidRequest,
        ErrorCode::PolicyViolation,
        ErrorCode::FencedLeaderEpoch,
        ErrorCode::StaleBrokerEpoch,
        ErrorCode::PreferredLeaderNotAvailable,
        ErrorCode::EligibleLeadersNotAvailable,
        ErrorCode::ElectionNotNeeded,
        ErrorCode::InvalidUpdateVersion,
        ErrorCode::ResourceNotFound,
        ErrorCode::UnknownTopicId,
        ErrorCode::BrokerIdNotRegistered,
        ErrorCode::IneligibleReplica,
    ];

    /// Kafka's numeric code.
    pub fn code(self) -> i16 {
        self as i16
    }

    /// Kafka's name for the code, as in `STALE_BROKER_EPOCH`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::UnknownServerError => "UNKNOWN_SERVER_ERROR",
            ErrorCode::UnknownTopicOrPartition => "UNKNOWN_TOPIC_OR_PARTITION",
            ErrorCode::NotLeaderOrFollower => "NOT_LEADER_OR_FOLLOWER",
            ErrorCode::RequestTimedOut => "REQUEST_TIMED_OUT",
            ErrorCode::InvalidTopicException => "INVALID_TOPIC_EXCEPTION",
            ErrorCode::ClusterAuthorizationFailed => "CLUSTER_AUTHORIZATION_FAILED",
            ErrorCode::UnsupportedSaslMechanism => "UNSUPPORTED_SASL_MECHANISM",
            ErrorCode::TopicAlreadyExists => "TOPIC_ALREADY_EXISTS",
            ErrorCode::InvalidPartitions => "INVALID_PARTITIONS",
            ErrorCode::InvalidReplicationFactor => "INVALID_REPLICATION_FACTOR",
            ErrorCode::InvalidReplicaAssignment => "INVALID_REPLICA_ASSIGNMENT",
            ErrorCode::InvalidConfig => "INVALID_CONFIG",
            ErrorCode::NotController => "NOT_CONTROLLER",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::PolicyViolation => "POLICY_VIOLATION",
            ErrorCode::FencedLeaderEpoch => "FENCED_LEADER_EPOCH",
            ErrorCode::StaleBrokerEpoch => "STALE_BROKER_EPOCH",
            ErrorCode::PreferredLeaderNotAvailable => "PREFERRED_LEADER_NOT_AVAILABLE",
            ErrorCode::EligibleLeadersNotAvailable => "ELIGIBLE_LEADERS_NOT_AVAILABLE",
            ErrorCode::ElectionNotNeeded => "ELECTION_NOT_NEEDED",
            ErrorCode::InvalidUpdateVersion => "INVALID_UPDATE_VERSION",
            ErrorCode::ResourceNotFound => "RESOURCE_NOT_FOUND",
            ErrorCode::UnknownTopicId => "UNKNOWN_TOPIC_ID",
            ErrorCode::BrokerIdNotRegistered => "BROKER_ID_NOT_REGISTERED",
            ErrorCode::IneligibleReplica => "INELIGIBLE_REPLICA",
        }
    }

    /// The code with Kafka number `code`, if it is one of these.
    pub fn from_code(code: i16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether Kafka marks the error retriable: the same request may succeed later, once
    /// the caller has refreshed its metadata.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::UnknownTopicOrPartition
                | ErrorCode::NotLeaderOrFollower
                | ErrorCode::RequestTimedOut
                | ErrorCode::NotController
                | ErrorCode::FencedLeaderEpoch
                | ErrorCode::PreferredLeaderNotAvailable
                | ErrorCode::EligibleLeadersNotAvailable
                | ErrorCode::ElectionNotNeeded
                | ErrorCode::UnknownTopicId
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// A command the state machine refused. The image is unchanged.
///
/// It is a value, not a failure of the node: it is committed in the Raft log like any
/// command, every replica computes the same refusal, and the caller reports it to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandError {
    /// The Kafka error code.
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
}

impl CommandError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> CommandError {
        CommandError { code, message: message.into() }
    }
}

/// A delta that does not fit the image it is applied to: the watcher's image has diverged
/// from the controller's (a missed update, or a bug), and it must start again from a full
/// image. The image may be partly updated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// Updates must arrive in version order.
    #[error("update at version {version} is not after the image's version {current}")]
    OutOfOrder {
        /// The update's version.
        version: u64,
        /// The image's version.
        current: u64,
    },
    /// The delta names a topic the image does not have, or has under another id.
    #[error("unknown topic {name}")]
    UnknownTopic {
        /// The topic name.
        name: String,
    },
    /// The delta creates a topic the image already has.
    #[error("topic {name} already exists")]
    TopicExists {
        /// The topic name.
        name: String,
    },
    /// The delta names a partition the topic does not have.
    #[error("unknown partition {topic}-{partition}")]
    UnknownPartition {
        /// The topic name.
        topic: String,
        /// The partition index.
        partition: u32,
    },
    /// A producer-id block that does not start at the image's next free id.
    #[error("a producer id block starting at {first_id} does not follow the next free id {next}")]
    ProducerIdsOutOfOrder {
        /// Where the block starts.
        first_id: i64,
        /// The image's next free id.
        next: i64,
    },
}

/// A snapshot that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not JSON of the expected shape.
    #[error("malformed metadata snapshot: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Written by a format this code does not read.
    #[error("unsupported metadata snapshot format {found} (this build reads format {supported})")]
    UnsupportedFormat {
        /// The format in the snapshot.
        found: u32,
        /// The format this build reads.
        supported: u32,
    },
    /// Well-formed, but the image breaks an invariant: it was not written by this state
    /// machine, or it was damaged.
    #[error("inconsistent metadata snapshot: {0}")]
    Inconsistent(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_kafkas_and_round_trip() {
        // Checked against Kafka's Errors.java: INVALID_UPDATE_VERSION is 95 (96 is
        // FEATURE_UPDATE_FAILED).
        assert_eq!(ErrorCode::InvalidUpdateVersion.code(), 95);
        assert_eq!(ErrorCode::IneligibleReplica.code(), 107);
        assert_eq!(ErrorCode::StaleBrokerEpoch.code(), 77);
        assert_eq!(ErrorCode::FencedLeaderEpoch.code(), 74);
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
        }
        assert_eq!(ErrorCode::from_code(0), None);
        assert_eq!(ErrorCode::TopicAlreadyExists.to_string(), "TOPIC_ALREADY_EXISTS (36)");
    }
}
