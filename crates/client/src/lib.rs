//! Runnel's Rust client, over the cluster's gRPC API (`proto/runnel/v1/`).
//!
//! - [`router`] finds partition leaders from `Metadata` and retries requests as leadership
//!   moves;
//! - [`partitioner`] is Kafka's default partitioner (murmur2 for keys, sticky without), so a
//!   key lands in the partition a Kafka producer would pick;
//! - [`consumer`] reads partitions it is given or that its group assigns it
//!   ([`membership`] is the group protocol's state machine, [`coordinator`] its calls);
//! - [`fetch`] reads a partition across leader changes;
//! - [`records`] decodes fetch answers (RecordBatch v2) into records;
//! - [`error`] is the one error type, [`ClientError`], carrying Kafka's error codes.

pub mod consumer;
pub mod coordinator;
pub mod error;
pub mod fetch;
pub mod membership;
pub mod partitioner;
pub mod records;
pub mod router;

pub use error::{ClientError, unreachable};
