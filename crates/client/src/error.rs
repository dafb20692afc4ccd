//! The one error type of the client: a Kafka error code and name, as the brokers and
//! controllers send them in `runnel-error-code` / `runnel-error-name`, plus a message.

/// A failed call, printed as `<ERROR_NAME> (<code>): <message>`.
///
/// `code` is Kafka's numeric error code (stable, never reused); failures that never reached
/// a broker map to NETWORK_EXCEPTION (13), and answers without a Kafka code to
/// UNKNOWN_SERVER_ERROR (-1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// Kafka's name for the code, for example `NOT_LEADER_OR_FOLLOWER`.
    pub name: String,
    /// Kafka's numeric error code.
    pub code: i32,
    /// For people.
    pub message: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.name, self.code, self.message)
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// An error with a Kafka code and name.
    pub fn new(code: i32, name: &str, message: impl Into<String>) -> Self {
        ClientError { name: name.to_owned(), code, message: message.into() }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let meta = |key: &str| status.metadata().get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
        match (meta("runnel-error-name"), meta("runnel-error-code").and_then(|c| c.parse().ok())) {
            (Some(name), Some(code)) => {
                // The controller's message may already start with the name and code.
                let prefix = format!("{name} ({code}): ");
                let message = status.message();
                let message = message.strip_prefix(&prefix).unwrap_or(message).to_owned();
                ClientError { name, code, message }
            }
            _ if status.code() == tonic::Code::Unavailable => ClientError {
                name: "NETWORK_EXCEPTION".into(),
                code: code::NETWORK_EXCEPTION,
                message: status.message().to_owned(),
            },
            _ => ClientError {
                name: "UNKNOWN_SERVER_ERROR".into(),
                code: -1,
                message: format!("{:?}: {}", status.code(), status.message()),
            },
        }
    }
}

/// Whether the call got no answer from a node (refused, or timed out: a paused node), so
/// another address may answer.
pub fn unreachable(status: &tonic::Status) -> bool {
    use tonic::Code::{Cancelled, DeadlineExceeded, Unavailable};
    status.metadata().get("runnel-error-code").is_none()
        && matches!(status.code(), Unavailable | DeadlineExceeded | Cancelled)
}

/// A `ClientError` with a Kafka code and name.
pub fn error(code: i32, name: &str, message: impl Into<String>) -> ClientError {
    ClientError::new(code, name, message)
}

/// Kafka's error codes, as the brokers send them in `runnel-error-code`.
pub mod code {
    pub const OFFSET_OUT_OF_RANGE: i32 = 1;
    pub const CORRUPT_MESSAGE: i32 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i32 = 3;
    pub const LEADER_NOT_AVAILABLE: i32 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i32 = 6;
    pub const REQUEST_TIMED_OUT: i32 = 7;
    pub const NETWORK_EXCEPTION: i32 = 13;
    pub const NOT_ENOUGH_REPLICAS: i32 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i32 = 20;
    pub const MESSAGE_TOO_LARGE: i32 = 10;
    pub const INVALID_REQUEST: i32 = 42;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i32 = 45;
    pub const INVALID_PRODUCER_EPOCH: i32 = 47;
    pub const UNKNOWN_PRODUCER_ID: i32 = 59;
    pub const INVALID_RECORD: i32 = 87;
}
