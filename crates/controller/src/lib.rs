//! Runnel's metadata controller.
//!
//! - [`raft`]: openraft 0.9 hosted on sled (log, vote and snapshots), generic over the
//!   replicated state machine, with its transport over tonic.

pub mod raft;
