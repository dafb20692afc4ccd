//! Runnel's metadata controller.
//!
//! - [`metadata`]: the pure, deterministic state machine that the Raft log drives: brokers,
//!   topics, partition assignment, leaders and ISRs (KRaft's metadata image).
//! - [`raft`]: openraft 0.9 hosted on sled (log, vote and snapshots), generic over the
//!   replicated state machine, with its transport over tonic. It is the only part that
//!   does I/O.
//! - [`controller`]: the two joined and served: `runnel.v1.ControllerService` on every
//!   controller node, broker liveness, and the type that starts a node.

// Brokers, the Raft layer and the front ends all build on these types: each public item
// says what it means.
#![warn(missing_docs)]

pub mod controller;
pub mod metadata;
pub mod raft;
