//! Runnel's Kafka listener: the Kafka wire protocol, decoded and encoded with the
//! `kafka-protocol` crate, served over the broker's transport-free core (the
//! [`DataPlane`](runnel_broker::DataPlane), the group coordinator and the topic admin), the
//! same core the gRPC API serves. A record produced through one protocol reads back
//! byte-identical through the other: both store and serve Kafka's RecordBatch v2 as it is.
//!
//! The pieces:
//! - [`server`]: the listener and one task pair per connection (requests read, decoded and
//!   started in order; answers written in order, so a client may pipeline);
//! - [`codec`]: framing, the request header, size limits and what closes a connection;
//! - [`versions`]: the API keys and versions served (ApiVersions' answer);
//! - [`handlers`]: one module per group of APIs, each a thin mapping onto the core.

pub mod codec;
pub mod handlers;
pub mod listeners;
pub mod sasl;
pub mod server;
pub mod versions;

use std::sync::Arc;
use std::time::Duration;

use runnel_broker::DataPlane;
use runnel_broker::admin::TopicAdmin;
use runnel_broker::group::GroupCoordinator;

pub use server::{Listener as BoundListener, serve};

/// Kafka's `socket.request.max.bytes` default: the largest request frame read.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 100 << 20;
/// Requests of one connection started but not yet answered before the listener stops
/// reading more (`kafka_in_flight_max`); TCP then holds the client back.
pub const IN_FLIGHT_MAX: usize = 64;
/// How long a topic auto-creation waits for the new topic to reach this broker's metadata.
pub const AUTO_CREATE_WAIT: Duration = Duration::from_secs(5);

/// The Kafka listener's settings (Kafka's names where Kafka has one).
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// This broker's id.
    pub broker_id: u32,
    /// The cluster id Metadata and DescribeCluster report.
    pub cluster_id: String,
    /// `auto.create.topics.enable`: Metadata and Produce create unknown topics.
    pub auto_create_topics: bool,
    /// `num.partitions`: partitions of an auto-created topic.
    pub num_partitions: u32,
    /// `default.replication.factor`: replicas of an auto-created topic; `None` means 3, or
    /// the number of live brokers if fewer.
    pub default_replication_factor: Option<u32>,
    /// `socket.request.max.bytes`: the largest request frame read; a larger one closes the
    /// connection.
    pub request_max_bytes: usize,
    /// `max.connections`: Kafka connections open at once per listener; one more is closed at
    /// once (each costs a reader, a writer and up to [`IN_FLIGHT_MAX`] requests).
    pub max_connections: usize,
    /// `connections.max.idle.ms`: a connection with no request for this long, and none
    /// unanswered, is closed.
    pub connections_max_idle: std::time::Duration,
}

/// `max.connections` by default (Kafka's is unlimited; a bound is the point here).
pub const MAX_CONNECTIONS_DEFAULT: usize = 10_000;
/// `connections.max.idle.ms` by default: Kafka's ten minutes.
pub const CONNECTIONS_MAX_IDLE_DEFAULT: std::time::Duration = std::time::Duration::from_secs(600);

impl KafkaConfig {
    /// Kafka's defaults for broker `broker_id`.
    pub fn new(broker_id: u32) -> Self {
        KafkaConfig {
            broker_id,
            cluster_id: "runnel".to_owned(),
            auto_create_topics: true,
            num_partitions: 1,
            default_replication_factor: None,
            request_max_bytes: REQUEST_BYTES_MAX_DEFAULT,
            max_connections: MAX_CONNECTIONS_DEFAULT,
            connections_max_idle: CONNECTIONS_MAX_IDLE_DEFAULT,
        }
    }
}

/// What the handlers serve from: the broker's core and the listener's settings.
#[derive(Debug, Clone)]
pub struct Context {
    /// The listener's settings.
    pub config: KafkaConfig,
    /// Produce, fetch, list offsets, metadata, producer ids.
    pub plane: Arc<DataPlane>,
    /// Consumer groups and committed offsets.
    pub groups: Arc<GroupCoordinator>,
    /// Topic creation and deletion.
    pub admin: TopicAdmin,
    /// With authentication on: the users and ACLs every connection authenticates (SASL) and
    /// every request is authorized against.
    pub auth: Option<Arc<runnel_auth::AuthStore>>,
}
