//! The seam between Raft and the application: a deterministic state machine.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A deterministic, replicated state machine hosted by the Raft store.
///
/// Every voter applies the same committed commands in the same order, so `apply` must depend on
/// nothing but `self`, `index` and the command: no clocks, randomness, I/O or iteration over
/// unordered maps whose order could differ between nodes. It must not panic on a bad command:
/// a command the machine rejects is still committed, and the rejection is its response.
///
/// The whole machine is the snapshot: it is serialized with serde (JSON) when openraft asks
/// for a snapshot, shipped to followers that fell behind, and restored on restart, after
/// which the log entries committed since the snapshot are applied again. Keep it small enough
/// to clone and serialize in one piece; the controller's metadata image is.
pub trait Machine: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// A command carried in a Raft log entry.
    type Command: Debug + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What applying a command returns to the client that proposed it. `Default` is the
    /// response to log entries that carry no command (blank and membership entries).
    /// `Clone` because each response is also published to the store's subscribers
    /// ([`super::MachineView::subscribe`]).
    type Response: Debug + Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Applies one committed command. `index` is its Raft log index: strictly increasing across
    /// calls, and usable as the version of the state it produces.
    fn apply(&mut self, index: u64, command: &Self::Command) -> Self::Response;
}
