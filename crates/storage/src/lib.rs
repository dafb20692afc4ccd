//! Runnel's partition log.
//!
//! A partition is a directory of segments holding Kafka RecordBatch v2 batches, with a sparse
//! offset index and a time index per segment, a leader-epoch checkpoint, and group-committed
//! durability. This crate knows nothing of networking, Raft or sled.

pub mod batch;
pub mod compression;
pub mod error;
pub mod record;

pub use batch::{BatchHeader, Compression};
pub use error::{BatchError, LogError};
pub use record::{BatchBuilder, DecodeLimits, Header, NewRecord, Record, decode_batch};
