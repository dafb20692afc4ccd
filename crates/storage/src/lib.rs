//! Runnel's partition log.
//!
//! A partition is a directory of segments holding Kafka RecordBatch v2 batches, with a sparse
//! offset index and a time index per segment, a leader-epoch checkpoint, and group-committed
//! durability. This crate knows nothing of networking, Raft or sled.
//!
//! - [`batch`]: the RecordBatch v2 header and CRC; [`record`]: building batches from records
//!   and decoding them, with compression.
//! - [`Log`]: one partition's log; [`LogManager`]: every log under a data directory.

pub mod batch;
pub mod compression;
pub mod crashsafe;
pub mod dump;
mod epoch;
pub mod error;
mod index;
mod log;
mod manager;
pub mod record;
mod segment;

pub use batch::{BatchHeader, Compression};
pub use epoch::{EpochEntry, parse_epoch_checkpoint};
pub use error::{BatchError, LogError};
pub use log::{
    AppendInfo, BATCH_BYTES_LIMIT, BatchHeaders, Clock, DurableListener, FsyncPolicy, Log, LogConfig,
    LogOffsets, READ_BYTES_MAX, ReadInfo, RecoveryReport, RetentionOutcome, SEGMENT_BYTES_MAX, SyncObserver,
    SystemClock,
};
pub use manager::{LogManager, TopicPartition, is_valid_topic_name};
pub use record::{
    BatchBuilder, DecodeLimits, Header, NewRecord, ProduceBatchError, ProduceChecks, Record,
    check_producer_batch, decode_batch,
};
pub use segment::{ScanStop, ScannedBatch, Scanner, Truncation};
