//! The controller service: the metadata state machine on Raft, served over gRPC.

mod machine;

pub use machine::{MetadataMachine, MetadataResponse};
