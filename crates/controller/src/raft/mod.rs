//! The metadata controller's Raft: openraft 0.9 with its log, vote and snapshots in sled, and
//! its transport over tonic.
//!
//! Generic over the replicated state machine: anything implementing [`Machine`] can be hosted.
//! The pieces, wired together by the node:
//!
//! 1. [`SledStore::open`] a data directory: a [`LogStore`] and a [`StateMachineStore`]; keep a
//!    [`StateMachineStore::view`] to read the machine.
//! 2. [`controller_config`] for openraft's timers and snapshot policy.
//! 3. A [`GrpcNetworkFactory`] for the outgoing RPCs.
//! 4. `openraft::Raft::new(id, config, network, log, state_machine)`, giving a [`Raft`].
//! 5. [`RaftGrpcService::new`] on that handle, served by a `tonic::transport::Server` at the
//!    address the cluster knows the node by ([`Node`]).
//!
//! Durability: see [`store`]. Wire format: `proto/runnel/v1/raft.proto`.

pub mod config;
pub mod elector;
pub mod error;
pub mod machine;
pub mod network;
pub mod service;
pub mod store;
pub mod types;

#[cfg(test)]
mod tests;

pub use config::controller_config;
pub use elector::{Contact, ElectorTiming, elector_task};
pub use error::StoreError;
pub use machine::Machine;
pub use network::{GrpcNetwork, GrpcNetworkFactory, NetworkConfig};
pub use service::RaftGrpcService;
pub use store::{
    EVENTS_CAPACITY, LogStore, MachineEvent, MachineEvents, MachineView, SledStore, SnapshotBuilder,
    StateMachineStore,
};
pub use types::{Node, NodeId, Raft, TypeConfig};
