//! Consumer groups (`runnel.v1.GroupService`, `proto/runnel/v1/group.proto`): membership and
//! assignment by KIP-848 heartbeats, and committed offsets kept in the internal, replicated
//! topic `__consumer_offsets`.
//!
//! - [`state`]: the groups of one offsets partition as a pure, deterministic state machine
//!   (membership, epochs, fencing, reconciliation, expiry, commit checks);
//! - [`assign`]: the "uniform" and "range" assignors;
//! - [`record`]: the versioned key/value encoding of committed offsets in the log.

pub mod assign;
pub mod error;
pub mod record;
pub mod state;

pub use error::{GroupError, GroupErrorCode};
