//! Consumer groups (`runnel.v1.GroupService`, `proto/runnel/v1/group.proto`): membership and
//! assignment by KIP-848 heartbeats, and committed offsets kept in the internal, replicated
//! topic `__consumer_offsets`.
//!
//! The coordinator of a group is the leader of the offsets partition its id hashes to
//! ([`coordinator_partition`]). The pieces:
//! - [`state`]: the groups of one offsets partition as a pure, deterministic state machine
//!   (membership, epochs, fencing, reconciliation, expiry, commit checks);
//! - [`classic`]: Kafka's classic protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) over
//!   the same groups, as a pure state machine; a group id has members of one protocol at a
//!   time, and both share the committed offsets;
//! - [`assign`]: the "uniform" and "range" assignors;
//! - [`record`]: the versioned key/value encoding of committed offsets in the log;
//! - [`coordinator`]: the I/O shell (leadership, loading, acks=all commits, topic creation,
//!   the clock);
//! - [`service`]: the gRPC edge, which validates requests into the state machine's types.

pub mod assign;
pub mod classic;
pub mod coordinator;
pub mod error;
pub mod record;
pub mod service;
pub mod state;

pub use classic::{
    ClassicHeartbeat, ClassicState, JoinGroupMember, JoinGroupOutcome, JoinGroupRequest, JoinProtocol,
    LeaveMember, LeaveOutcome, SyncAssignment, SyncGroupOutcome, SyncGroupRequest,
};
pub use coordinator::{
    CommittedOffset, Committer, CoordinatorLocation, GroupConfig, GroupCoordinator, GroupDescription,
    GroupKind, GroupMetrics, GroupOverview, INITIAL_REBALANCE_DELAY_DEFAULT, MemberDescription,
    OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS_DEFAULT, coordinator_partition, java_string_hash,
};
pub use error::{GroupError, GroupErrorCode};
pub use service::GroupGrpc;
