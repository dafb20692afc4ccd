//! Runnel's Rust client, over the cluster's gRPC API (`proto/runnel/v1/`).
//!
//! - [`admin`] creates, lists, describes and deletes topics and describes the cluster;
//! - [`producer`] is the batching, idempotent producer;
//! - [`router`] finds partition leaders from `Metadata` and retries requests as leadership
//!   moves;
//! - [`partitioner`] is Kafka's default partitioner (murmur2 for keys, sticky without), so a
//!   key lands in the partition a Kafka producer would pick;
//! - [`consumer`] reads partitions it is given or that its group assigns it
//!   ([`membership`] is the group protocol's state machine, [`coordinator`] its calls);
//! - [`fetch`] reads a partition across leader changes;
//! - [`records`] decodes fetch answers (RecordBatch v2) into records;
//! - [`error`] is the one error type, [`ClientError`], carrying Kafka's error codes.

#![warn(missing_docs)]

pub mod admin;
pub mod consumer;
pub mod coordinator;
pub mod error;
pub mod fetch;
pub mod membership;
pub mod partitioner;
pub mod producer;
pub mod records;
pub mod router;

pub use error::{ClientError, unreachable};
