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
            _ => {
                // A TLS server answering a plaintext HTTP/2 client looks like this to hyper.
                let message = status.message();
                let hint = if message.contains("h2 protocol error") || message == "transport error" {
                    " (if the cluster serves TLS, connect with its CA: `--tls-ca`, or the client's `tls`)"
                } else {
                    ""
                };
                ClientError {
                    name: "UNKNOWN_SERVER_ERROR".into(),
                    code: -1,
                    message: format!("{:?}: {}{hint}", status.code(), status.message()),
                }
            }
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
    /// A fetch offset below the log start or above the high watermark.
    pub const OFFSET_OUT_OF_RANGE: i32 = 1;
    /// A batch whose framing or CRC is wrong.
    pub const CORRUPT_MESSAGE: i32 = 2;
    /// No such topic or partition (yet).
    pub const UNKNOWN_TOPIC_OR_PARTITION: i32 = 3;
    /// The partition has no leader at the moment (retriable).
    pub const LEADER_NOT_AVAILABLE: i32 = 5;
    /// The broker does not lead the partition (it names the leader when it knows it).
    pub const NOT_LEADER_OR_FOLLOWER: i32 = 6;
    /// No answer in time, or an acks=all wait that timed out (retriable).
    pub const REQUEST_TIMED_OUT: i32 = 7;
    /// A record or batch bigger than the limit.
    pub const MESSAGE_TOO_LARGE: i32 = 10;
    /// No answer from a node (the client's code for transport failures).
    pub const NETWORK_EXCEPTION: i32 = 13;
    /// Fewer in-sync replicas than `min.insync.replicas` (retriable).
    pub const NOT_ENOUGH_REPLICAS: i32 = 19;
    /// The ISR shrank below `min.insync.replicas` after the append (retriable).
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i32 = 20;
    /// A malformed request.
    pub const INVALID_REQUEST: i32 = 42;
    /// The broker's log directory failed (full or broken disk); retriable elsewhere.
    pub const KAFKA_STORAGE_ERROR: i32 = 56;
    /// An idempotent batch whose first sequence does not follow the producer's last one.
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i32 = 45;
    /// An idempotent batch with an epoch older than the producer's latest.
    pub const INVALID_PRODUCER_EPOCH: i32 = 47;
    /// A producer id no broker handed out.
    pub const UNKNOWN_PRODUCER_ID: i32 = 59;
    /// A record the broker refuses (for example a bad timestamp).
    pub const INVALID_RECORD: i32 = 87;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_client_of_a_tls_server_is_told_about_tls() {
        for message in ["h2 protocol error: http2 error", "transport error"] {
            let e = ClientError::from(tonic::Status::internal(message));
            assert!(e.message.contains("--tls-ca"), "{e}");
        }
        let refused = ClientError::from(tonic::Status::unavailable("tcp connect error"));
        assert_eq!(refused.name, "NETWORK_EXCEPTION");
        assert!(!refused.message.contains("TLS"), "{refused}");
        let other = ClientError::from(tonic::Status::internal("something else"));
        assert!(!other.message.contains("TLS"), "{other}");
    }
}
