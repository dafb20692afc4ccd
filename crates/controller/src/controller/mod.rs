//! The controller service: the metadata state machine on Raft, served over gRPC.
//!
//! - [`MetadataMachine`]: [`crate::metadata::ClusterMetadata`] as a Raft machine.
//! - [`ControllerGrpcService`]: `runnel.v1.ControllerService` (forwarding, timeouts,
//!   liveness, watches); see [`service`] for the rules.
//! - [`Controller`]: starts one node from a [`ControllerConfig`].

mod convert;
pub mod error;
pub mod incoming;
mod machine;
mod metrics;
mod node;
pub mod planes;
pub mod service;

#[cfg(test)]
mod tests;

pub use convert::{
    CONFIG_KEY_LEN_MAX, CONFIGS_MAX, ISR_MEMBERS_MAX, REPLICATION_FACTOR_MAX, REQUEST_BYTES_MAX,
    RESPONSE_BYTES_MAX,
};
pub use error::{ControllerError, ERROR_CODE_KEY, ERROR_NAME_KEY, LEADER_KEY, status_error_code};
pub use machine::{MetadataMachine, MetadataResponse};
pub use metrics::ControllerMetrics;
pub use node::{
    Controller, ControllerConfig, GRPC_HEADER_LIST_BYTES_MAX, GRPC_KEEPALIVE_INTERVAL,
    GRPC_KEEPALIVE_TIMEOUT, GRPC_STREAMS_PER_CONNECTION_MAX, StartError, Voter, grpc_server, grpc_server_tls,
    parse_voters, serve,
};
pub use service::{ControllerGrpcService, ServiceConfig};
