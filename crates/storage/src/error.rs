//! Storage errors, by kind: bad input the caller sent (refused, nothing changed), corruption
//! found on disk, and I/O failures (which the node treats as fatal for the partition).

use std::path::PathBuf;

/// A RecordBatch that does not follow the v2 format, or records that do not decode.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("truncated batch: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported record batch magic {magic} (only v2 is supported)")]
    UnsupportedMagic { magic: i8 },
    #[error("bad batch length {length}: {reason}")]
    BadLength { length: i32, reason: &'static str },
    #[error("batch of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported compression codec id {id}")]
    UnsupportedCompression { id: u8 },
    #[error("malformed records: {0}")]
    Malformed(String),
    #[error("decompressed records exceed the limit of {max} bytes")]
    DecompressedTooLarge { max: usize },
}

/// Errors of the partition log and the log manager.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The caller's batch was refused; the log is unchanged.
    #[error("invalid batch: {0}")]
    InvalidBatch(#[source] BatchError),

    /// A stored batch failed validation. It is never served.
    #[error("corrupt batch in {} at byte {position} (offset {offset}): {source}", segment.display())]
    Corrupt {
        segment: PathBuf,
        position: u64,
        /// The offset the reader expected at that position.
        offset: u64,
        #[source]
        source: BatchError,
    },

    /// A file beside the log (index, checkpoint) is unreadable or inconsistent.
    #[error("corrupt file {}: {reason}", path.display())]
    CorruptFile { path: PathBuf, reason: String },

    #[error("offset {requested} is out of range: the log holds [{log_start}, {log_end})")]
    OffsetOutOfRange { requested: u64, log_start: u64, log_end: u64 },

    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("data directory {} is in use by another process (lock file {})", dir.display(), lock.display())]
    Locked { dir: PathBuf, lock: PathBuf },

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("invalid partition directory name {0:?}: expected <topic>-<partition>")]
    BadPartitionDir(String),

    #[error("timed out after {waited_ms} ms waiting for offset {offset} to become durable")]
    DurableTimeout { offset: u64, waited_ms: u64 },

    /// A previous fsync failed; the log refuses further writes (the page cache state is
    /// unknown after a failed fsync, so the only safe course is to stop and recover).
    #[error("log {} is failed after an earlier I/O error: {reason}", dir.display())]
    Failed { dir: PathBuf, reason: String },

    #[error("log {} is closed", dir.display())]
    Closed { dir: PathBuf },
}

impl LogError {
    // For the segment and log modules, which are not written yet.
    #[allow(dead_code)]
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { op, path, source }
    }
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;
