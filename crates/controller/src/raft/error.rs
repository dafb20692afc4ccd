//! Errors of the Raft store and transport.

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use super::types::NodeId;

/// A failure of the sled-backed Raft store.
///
/// Inside openraft's storage traits these become [`StorageError`]s, which openraft treats as
/// fatal: the Raft node stops rather than continue on state it cannot trust. From
/// [`super::store::SledStore::open`] they reach the caller, which should refuse to start.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed to read, write or flush.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value does not decode: the store is corrupt or was written by another format.
    #[error("cannot decode the stored {what}: {source}")]
    Decode {
        /// Which record.
        what: &'static str,
        /// The decoder's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A value does not encode (a `Machine` whose serde impl fails).
    #[error("cannot encode the {what}: {source}")]
    Encode {
        /// Which record.
        what: &'static str,
        /// The encoder's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A log key is not an 8-byte big-endian index.
    #[error("corrupt raft log key of {len} bytes")]
    CorruptLogKey {
        /// The key's length.
        len: usize,
    },
    /// The store was written by a format this build does not read.
    #[error("raft store format version {found} is not supported (this build reads version {supported})")]
    UnsupportedFormat {
        /// The version on disk.
        found: u32,
        /// The version this build writes.
        supported: u32,
    },
    /// The blocking task that flushes sled died (it panicked or the runtime is shutting down).
    #[error("the sled flush task failed: {0}")]
    FlushTask(#[from] tokio::task::JoinError),
    /// A `Machine::apply` panicked earlier, so the in-memory state can no longer be trusted.
    #[error("the state machine lock is poisoned by an earlier panic")]
    Poisoned,
}

impl StoreError {
    /// Wraps this error for openraft, naming what was being done when it happened.
    pub(crate) fn into_storage(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> StorageError<NodeId> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// Shorthands for [`StoreError::into_storage`] at openraft's storage trait boundary.
#[allow(clippy::result_large_err, reason = "openraft's storage traits return StorageError by value")]
pub(crate) trait IntoStorage<T> {
    fn or_storage(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> Result<T, StorageError<NodeId>>;
}

#[allow(clippy::result_large_err, reason = "openraft's storage traits return StorageError by value")]
impl<T> IntoStorage<T> for Result<T, StoreError> {
    fn or_storage(self, subject: ErrorSubject<NodeId>, verb: ErrorVerb) -> Result<T, StorageError<NodeId>> {
        self.map_err(|e| e.into_storage(subject, verb))
    }
}
