//! Runnel's metadata controller.
//!
//! For now, [`metadata`]: the pure, deterministic state machine that the Raft log drives.
//! The Raft plumbing (openraft on sled, the network) applies its commands and ships its
//! snapshots; it lives beside it and is the only part that does I/O.

// Brokers, the Raft layer and the front ends all build on these types: each public item
// says what it means.
#![warn(missing_docs)]

pub mod metadata;
