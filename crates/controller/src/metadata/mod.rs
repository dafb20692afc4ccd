//! The cluster metadata state machine: Runnel's counterpart of KRaft's metadata image.
//!
//! [`ClusterMetadata`] holds the brokers, the topics and every partition's replicas, ISR,
//! leader and epochs. Commands ([`Command`]) come out of the Raft log and are applied with
//! [`ClusterMetadata::apply`] at their log index. Applying is pure and deterministic: no
//! clock, no randomness, no I/O, and every map is ordered, so each controller computes the
//! same image, the same outcome and the same [`MetadataDelta`]s from the same log.
//!
//! - A refused command leaves the image untouched and yields a [`CommandError`] with a
//!   Kafka error code.
//! - The image's [`version`](ClusterMetadata::version) is the Raft index of the last command
//!   that changed it. Brokers watch the image: a full copy, then each command's deltas
//!   tagged with the version, applied with [`ClusterMetadata::apply_deltas`].
//! - Snapshots are the image as versioned JSON ([`encode_snapshot`], [`decode_snapshot`]).
//! - New topics' replicas, and those of partitions added to a topic, are placed by
//!   [`placement::place_replicas`].

mod command;
pub mod config;
mod error;
mod image;
pub mod placement;
mod security;
mod snapshot;
mod types;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use command::{
    Applied, Command, CommandResult, ElectionResult, IsrMember, MetadataDelta, Outcome, PartitionRef,
};
pub use error::{CommandError, DeltaError, ErrorCode, SnapshotError};
pub use image::{
    ClusterMetadata, ELECTION_PARTITIONS_MAX, ENDPOINT_LEN_MAX, PARTITIONS_MAX, PRODUCER_ID_BLOCK_SIZE,
    RACK_LEN_MAX, REPLICAS_PER_BROKER_MAX, TOPIC_NAME_LEN_MAX, is_valid_topic_name,
};
pub use security::{ACLS_MAX, USER_NAME_LEN_MAX, USERS_MAX, check_user_name};
pub use snapshot::{SNAPSHOT_FORMAT, decode_snapshot, encode_snapshot};
pub use types::{Broker, Endpoints, PartitionState, Topic, TopicId};
