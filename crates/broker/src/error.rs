//! The data plane's errors, with Kafka's codes, and their two wire forms: a gRPC status
//! (unary calls, streams that end) and a `pb::Error` (one failed request on a produce
//! stream, one unknown topic in a Metadata answer).

use runnel_proto::pb::runnel::v1 as pb;
use runnel_storage::{BatchError, LogError};
use tonic::Code;
use tonic::metadata::MetadataValue;

/// gRPC metadata key: Kafka's numeric error code, in decimal.
pub const ERROR_CODE_KEY: &str = "runnel-error-code";
/// gRPC metadata key: Kafka's name for the error code.
pub const ERROR_NAME_KEY: &str = "runnel-error-name";
/// gRPC metadata key: the leader's gRPC `host:port`: the partition leader's with
/// NOT_LEADER_OR_FOLLOWER here, the controller leader's with the controller's NOT_CONTROLLER.
pub const LEADER_KEY: &str = "runnel-leader";
/// gRPC metadata key: the partition leader's broker id, with NOT_LEADER_OR_FOLLOWER.
pub const LEADER_ID_KEY: &str = "runnel-leader-id";
/// gRPC metadata key: the log start offset, with OFFSET_OUT_OF_RANGE.
pub const LOG_START_KEY: &str = "runnel-log-start-offset";
/// gRPC metadata key: the high watermark, with OFFSET_OUT_OF_RANGE.
pub const HIGH_WATERMARK_KEY: &str = "runnel-high-watermark";

/// Kafka's error codes that the data plane uses (numbers and names are Kafka's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// -1: an error the broker did not expect (an I/O failure, a bug).
    UnknownServerError,
    /// 1: the offset is outside the log.
    OffsetOutOfRange,
    /// 2: a batch failed its CRC, length or framing checks.
    CorruptMessage,
    /// 3: no such topic or partition.
    UnknownTopicOrPartition,
    /// 5: the partition has no leader now.
    LeaderNotAvailable,
    /// 6: this broker does not lead the partition.
    NotLeaderOrFollower,
    /// 7: the request's timeout passed.
    RequestTimedOut,
    /// 10: a record, batch or request is over its limit.
    MessageTooLarge,
    /// 17: the topic cannot take this request (a produce to an internal topic).
    InvalidTopic,
    /// 19: the ISR is smaller than min.insync.replicas.
    NotEnoughReplicas,
    /// 20: appended, but the ISR shrank below min.insync.replicas before it was replicated.
    NotEnoughReplicasAfterAppend,
    /// 29: the caller may not do this to the topic (ACLs).
    TopicAuthorizationFailed,
    /// 30: the caller may not do this to the consumer group (ACLs).
    GroupAuthorizationFailed,
    /// 31: the caller may not do this to the cluster (ACLs).
    ClusterAuthorizationFailed,
    /// 32: a record's timestamp is outside `message.timestamp.{before,after}.max.ms` of now.
    InvalidTimestamp,
    /// 42: the request is malformed.
    InvalidRequest,
    /// 45: an idempotent batch whose sequence does not follow the producer's last one.
    OutOfOrderSequenceNumber,
    /// 47: an idempotent batch from an older epoch of its producer.
    InvalidProducerEpoch,
    /// 56: the log cannot be written (a failed disk).
    KafkaStorageError,
    /// 74: the request names a leader epoch older than the leader's (the client's metadata
    /// is stale).
    FencedLeaderEpoch,
    /// 76: the request names a leader epoch newer than this broker knows (its metadata is
    /// behind the client's).
    UnknownLeaderEpoch,
    /// 87: a record the broker refuses.
    InvalidRecord,
}

impl ErrorCode {
    /// Kafka's number.
    pub fn code(self) -> i32 {
        match self {
            ErrorCode::UnknownServerError => -1,
            ErrorCode::OffsetOutOfRange => 1,
            ErrorCode::CorruptMessage => 2,
            ErrorCode::UnknownTopicOrPartition => 3,
            ErrorCode::LeaderNotAvailable => 5,
            ErrorCode::NotLeaderOrFollower => 6,
            ErrorCode::RequestTimedOut => 7,
            ErrorCode::MessageTooLarge => 10,
            ErrorCode::InvalidTopic => 17,
            ErrorCode::NotEnoughReplicas => 19,
            ErrorCode::NotEnoughReplicasAfterAppend => 20,
            ErrorCode::TopicAuthorizationFailed => 29,
            ErrorCode::GroupAuthorizationFailed => 30,
            ErrorCode::ClusterAuthorizationFailed => 31,
            ErrorCode::InvalidTimestamp => 32,
            ErrorCode::InvalidRequest => 42,
            ErrorCode::OutOfOrderSequenceNumber => 45,
            ErrorCode::InvalidProducerEpoch => 47,
            ErrorCode::KafkaStorageError => 56,
            ErrorCode::FencedLeaderEpoch => 74,
            ErrorCode::UnknownLeaderEpoch => 76,
            ErrorCode::InvalidRecord => 87,
        }
    }

    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::UnknownServerError => "UNKNOWN_SERVER_ERROR",
            ErrorCode::OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
            ErrorCode::CorruptMessage => "CORRUPT_MESSAGE",
            ErrorCode::UnknownTopicOrPartition => "UNKNOWN_TOPIC_OR_PARTITION",
            ErrorCode::LeaderNotAvailable => "LEADER_NOT_AVAILABLE",
            ErrorCode::NotLeaderOrFollower => "NOT_LEADER_OR_FOLLOWER",
            ErrorCode::RequestTimedOut => "REQUEST_TIMED_OUT",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::InvalidTopic => "INVALID_TOPIC_EXCEPTION",
            ErrorCode::NotEnoughReplicas => "NOT_ENOUGH_REPLICAS",
            ErrorCode::NotEnoughReplicasAfterAppend => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
            ErrorCode::TopicAuthorizationFailed => "TOPIC_AUTHORIZATION_FAILED",
            ErrorCode::GroupAuthorizationFailed => "GROUP_AUTHORIZATION_FAILED",
            ErrorCode::ClusterAuthorizationFailed => "CLUSTER_AUTHORIZATION_FAILED",
            ErrorCode::InvalidTimestamp => "INVALID_TIMESTAMP",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::OutOfOrderSequenceNumber => "OUT_OF_ORDER_SEQUENCE_NUMBER",
            ErrorCode::InvalidProducerEpoch => "INVALID_PRODUCER_EPOCH",
            ErrorCode::KafkaStorageError => "KAFKA_STORAGE_ERROR",
            ErrorCode::FencedLeaderEpoch => "FENCED_LEADER_EPOCH",
            ErrorCode::UnknownLeaderEpoch => "UNKNOWN_LEADER_EPOCH",
            ErrorCode::InvalidRecord => "INVALID_RECORD",
        }
    }

    /// The gRPC status code that carries it.
    fn grpc(self) -> Code {
        match self {
            ErrorCode::UnknownServerError | ErrorCode::KafkaStorageError => Code::Internal,
            ErrorCode::OffsetOutOfRange => Code::OutOfRange,
            ErrorCode::CorruptMessage
            | ErrorCode::MessageTooLarge
            | ErrorCode::InvalidRequest
            | ErrorCode::InvalidTimestamp
            | ErrorCode::InvalidTopic
            | ErrorCode::InvalidRecord => Code::InvalidArgument,
            ErrorCode::UnknownTopicOrPartition => Code::NotFound,
            ErrorCode::LeaderNotAvailable
            | ErrorCode::NotLeaderOrFollower
            | ErrorCode::NotEnoughReplicas
            | ErrorCode::NotEnoughReplicasAfterAppend
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::UnknownLeaderEpoch => Code::Unavailable,
            ErrorCode::RequestTimedOut => Code::DeadlineExceeded,
            ErrorCode::TopicAuthorizationFailed
            | ErrorCode::GroupAuthorizationFailed
            | ErrorCode::ClusterAuthorizationFailed => Code::PermissionDenied,
            // Retrying the same batch cannot succeed: the producer has to act.
            ErrorCode::OutOfOrderSequenceNumber | ErrorCode::InvalidProducerEpoch => Code::FailedPrecondition,
        }
    }
}

/// One refused partition request, where a front-end answers it.
#[derive(Clone, Copy)]
pub struct Refusal<'a> {
    /// The front-end.
    pub protocol: crate::metrics::Protocol,
    /// The API (`produce`, `fetch`, ...).
    pub api: &'static str,
    /// The client's address, as the front-end knows it.
    pub client: &'a dyn std::fmt::Display,
    /// The topic and partition asked for.
    pub topic: &'a str,
    pub partition: i64,
}

impl std::fmt::Debug for Refusal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusal")
            .field("protocol", &self.protocol)
            .field("api", &self.api)
            .field("client", &format_args!("{}", self.client))
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish()
    }
}

impl Refusal<'_> {
    /// Logs `error` with the fields every request-level error carries: protocol, API,
    /// client address, topic, partition, Kafka's error code and name. What a server fault
    /// causes (a failed disk) is a warning; what a client sent that cannot be taken (a
    /// corrupt or oversized batch, a bad timestamp) is info, so an operator can find the
    /// client; what clients retry as routine (not the leader, an election, a timeout) is
    /// debug.
    pub fn log(&self, error: &BrokerError) {
        let Refusal { protocol, api, client, topic, partition } = *self;
        let (protocol, code, name, message) =
            (protocol.name(), error.code.code(), error.code.name(), &error.message);
        match error.code {
            ErrorCode::UnknownServerError | ErrorCode::KafkaStorageError => tracing::warn!(
                protocol, api, client = %client, topic, partition, error_code = code, error = name,
                "request refused: {message}"
            ),
            ErrorCode::CorruptMessage
            | ErrorCode::MessageTooLarge
            | ErrorCode::InvalidRecord
            | ErrorCode::InvalidTimestamp
            | ErrorCode::InvalidRequest
            | ErrorCode::InvalidTopic
            | ErrorCode::InvalidProducerEpoch
            | ErrorCode::OutOfOrderSequenceNumber
            | ErrorCode::TopicAuthorizationFailed
            | ErrorCode::GroupAuthorizationFailed
            | ErrorCode::ClusterAuthorizationFailed => tracing::info!(
                protocol, api, client = %client, topic, partition, error_code = code, error = name,
                "request refused: {message}"
            ),
            _ => tracing::debug!(
                protocol, api, client = %client, topic, partition, error_code = code, error = name,
                "request refused: {message}"
            ),
        }
    }
}

/// Where the partition's leader is, as far as this broker knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's broker id.
    pub id: Option<u32>,
    /// Its gRPC `host:port`.
    pub address: Option<String>,
}

/// A failed data-plane request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {message}", code.name(), code.code())]
pub struct BrokerError {
    /// Kafka's code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// With NOT_LEADER_OR_FOLLOWER.
    pub leader: Option<LeaderHint>,
    /// With OFFSET_OUT_OF_RANGE: the log start offset and the high watermark.
    pub range: Option<(u64, u64)>,
}

impl BrokerError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        BrokerError { code, message: message.into(), leader: None, range: None }
    }

    /// NOT_LEADER_OR_FOLLOWER for `what`, pointing at `leader`.
    pub fn not_leader(what: impl std::fmt::Display, leader: LeaderHint) -> Self {
        let message = match (&leader.id, &leader.address) {
            (Some(id), Some(addr)) => format!("this broker does not lead {what}; broker {id} at {addr} does"),
            (Some(id), None) => format!("this broker does not lead {what}; broker {id} does"),
            _ => format!("this broker does not lead {what}"),
        };
        BrokerError { leader: Some(leader), ..BrokerError::new(ErrorCode::NotLeaderOrFollower, message) }
    }

    /// OFFSET_OUT_OF_RANGE for `offset`, carrying the fetchable range.
    pub fn offset_out_of_range(offset: i64, log_start: u64, high_watermark: u64) -> Self {
        BrokerError {
            range: Some((log_start, high_watermark)),
            ..BrokerError::new(
                ErrorCode::OffsetOutOfRange,
                format!(
                    "offset {offset} is out of range: the fetchable offsets are [{log_start}, {high_watermark}]"
                ),
            )
        }
    }

    /// Shorthand for INVALID_REQUEST.
    pub fn invalid(message: impl Into<String>) -> Self {
        BrokerError::new(ErrorCode::InvalidRequest, message)
    }

    /// The caller (`principal`) may not do `operation` on the resource: Kafka's
    /// TOPIC_, GROUP_ or CLUSTER_AUTHORIZATION_FAILED.
    pub fn unauthorized(
        principal: &runnel_auth::Principal,
        operation: runnel_auth::acl::Operation,
        resource_type: runnel_auth::acl::ResourceType,
        name: &str,
    ) -> Self {
        use runnel_auth::acl::ResourceType;
        let code = match resource_type {
            ResourceType::Topic => ErrorCode::TopicAuthorizationFailed,
            ResourceType::Group => ErrorCode::GroupAuthorizationFailed,
            ResourceType::Cluster | ResourceType::TransactionalId => ErrorCode::ClusterAuthorizationFailed,
        };
        BrokerError::new(code, format!("{principal} is not authorized to {operation} {resource_type} {name}"))
    }

    /// The error as a `pb::Error`.
    pub fn to_proto(&self) -> pb::Error {
        let leader = self.leader.clone().unwrap_or_default();
        pb::Error {
            code: self.code.code(),
            name: self.code.name().to_owned(),
            message: self.message.clone(),
            leader: leader.address.unwrap_or_default(),
            leader_id: leader.id.map_or(-1, i64::from),
        }
    }

    /// A log error met while serving a request for `what`.
    pub fn from_log(what: impl std::fmt::Display, error: LogError) -> Self {
        match error {
            LogError::InvalidBatch(e) => BrokerError::from_batch(e),
            // Range errors are built by the caller, which knows the high watermark; this is
            // the race where retention moved the log start under a read.
            LogError::OffsetOutOfRange { requested, log_start, log_end } => {
                BrokerError::offset_out_of_range(requested as i64, log_start, log_end)
            }
            LogError::Closed { .. } => {
                BrokerError::new(ErrorCode::NotLeaderOrFollower, format!("{what} is no longer hosted here"))
            }
            LogError::Failed { .. } | LogError::Io { .. } => {
                BrokerError::new(ErrorCode::KafkaStorageError, format!("{what}: {error}"))
            }
            other => BrokerError::new(ErrorCode::UnknownServerError, format!("{what}: {other}")),
        }
    }

    /// An idempotent batch the partition's producer state refuses.
    pub fn from_producer(what: impl std::fmt::Display, error: crate::producer::ProducerError) -> Self {
        use crate::producer::ProducerError;
        let code = match error {
            ProducerError::Invalid { .. } => ErrorCode::InvalidRecord,
            ProducerError::FencedEpoch { .. } => ErrorCode::InvalidProducerEpoch,
            ProducerError::OutOfOrder { .. } => ErrorCode::OutOfOrderSequenceNumber,
        };
        BrokerError::new(code, format!("{what}: {error}"))
    }

    /// A producer's batch the leader's validation refused.
    pub fn from_produce_check(error: runnel_storage::ProduceBatchError) -> Self {
        use runnel_storage::ProduceBatchError;
        match error {
            ProduceBatchError::Batch(e) => BrokerError::from_batch(e),
            ProduceBatchError::InvalidRecord(_) => {
                BrokerError::new(ErrorCode::InvalidRecord, error.to_string())
            }
            ProduceBatchError::Timestamp { .. } => {
                BrokerError::new(ErrorCode::InvalidTimestamp, error.to_string())
            }
        }
    }

    /// A refused batch: its CRC or framing is wrong, or it is too large.
    pub fn from_batch(error: BatchError) -> Self {
        let code = match error {
            BatchError::TooLarge { .. } | BatchError::DecompressedTooLarge { .. } => {
                ErrorCode::MessageTooLarge
            }
            _ => ErrorCode::CorruptMessage,
        };
        BrokerError::new(code, format!("invalid batch: {error}"))
    }
}

fn ascii(value: &str) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    value.parse().ok()
}

/// A status with Kafka's code and name in its metadata and, when given, a leader (or
/// coordinator) to retry at: what every Runnel service answers a refusal with.
pub(crate) fn kafka_status(
    grpc: Code,
    code: i32,
    name: &str,
    message: String,
    leader_address: Option<&str>,
    leader_id: Option<i64>,
) -> tonic::Status {
    let mut status = tonic::Status::new(grpc, message);
    let meta = status.metadata_mut();
    if let Some(v) = ascii(&code.to_string()) {
        meta.insert(ERROR_CODE_KEY, v);
    }
    if let Some(v) = ascii(name) {
        meta.insert(ERROR_NAME_KEY, v);
    }
    if let Some(v) = leader_address.and_then(ascii) {
        meta.insert(LEADER_KEY, v);
    }
    if let Some(v) = leader_id.and_then(|id| ascii(&id.to_string())) {
        meta.insert(LEADER_ID_KEY, v);
    }
    status
}

impl From<BrokerError> for tonic::Status {
    fn from(error: BrokerError) -> tonic::Status {
        let (address, id) = match &error.leader {
            Some(leader) => (leader.address.as_deref(), leader.id.map(i64::from)),
            None => (None, None),
        };
        let mut status = kafka_status(
            error.code.grpc(),
            error.code.code(),
            error.code.name(),
            error.to_string(),
            address,
            id,
        );
        let meta = status.metadata_mut();
        if let Some((start, hw)) = error.range {
            if let Some(v) = ascii(&start.to_string()) {
                meta.insert(LOG_START_KEY, v);
            }
            if let Some(v) = ascii(&hw.to_string()) {
                meta.insert(HIGH_WATERMARK_KEY, v);
            }
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_carries_code_name_and_leader() {
        let error = BrokerError::not_leader(
            "demo-0",
            LeaderHint { id: Some(2), address: Some("127.0.0.1:50052".into()) },
        );
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), Code::Unavailable);
        let get = |k| status.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(get(ERROR_CODE_KEY).as_deref(), Some("6"));
        assert_eq!(get(ERROR_NAME_KEY).as_deref(), Some("NOT_LEADER_OR_FOLLOWER"));
        assert_eq!(get(LEADER_KEY).as_deref(), Some("127.0.0.1:50052"));
        assert_eq!(get(LEADER_ID_KEY).as_deref(), Some("2"));
        assert!(status.message().contains("broker 2 at 127.0.0.1:50052"), "{}", status.message());
    }

    #[test]
    fn out_of_range_carries_the_valid_range() {
        let status = tonic::Status::from(BrokerError::offset_out_of_range(-1, 10, 20));
        assert_eq!(status.code(), Code::OutOfRange);
        let get = |k| status.metadata().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(get(LOG_START_KEY).as_deref(), Some("10"));
        assert_eq!(get(HIGH_WATERMARK_KEY).as_deref(), Some("20"));
        assert_eq!(get(ERROR_CODE_KEY).as_deref(), Some("1"));
    }

    #[test]
    fn batch_errors_map_to_kafka_codes() {
        let crc = BrokerError::from_batch(BatchError::CrcMismatch { stored: 1, computed: 2 });
        assert_eq!(crc.code, ErrorCode::CorruptMessage);
        let big = BrokerError::from_batch(BatchError::TooLarge { size: 10, max: 5 });
        assert_eq!(big.code, ErrorCode::MessageTooLarge);
        assert_eq!(big.to_proto().name, "MESSAGE_TOO_LARGE");
        assert_eq!(BrokerError::invalid("x").to_proto().leader_id, -1);
    }
}
