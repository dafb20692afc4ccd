//! openraft settings for the metadata controller.

use openraft::{Config, ConfigError, SnapshotPolicy};

/// Leader heartbeat period. openraft also uses it as the deadline of every AppendEntries RPC,
/// so it must cover a follower's fsync of a batch of entries, not only a network round trip.
pub const HEARTBEAT_INTERVAL_MS: u64 = 200;

/// A follower that hears nothing from a leader for a random time in
/// `[ELECTION_TIMEOUT_MIN_MS, ELECTION_TIMEOUT_MAX_MS)` starts an election. Several heartbeats
/// fit in the minimum, so one late or lost heartbeat does not depose a healthy leader; the
/// maximum bounds how long the controller is leaderless after its leader dies.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 1_000;
/// See [`ELECTION_TIMEOUT_MIN_MS`].
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 2_000;

/// A snapshot is built once this many entries have been applied since the last one. Metadata
/// commands are small, so this keeps the log at most a few hundred KiB beyond the snapshot.
pub const SNAPSHOT_LOGS_SINCE_LAST: u64 = 1_000;

/// Entries already covered by a snapshot that are kept anyway, so a follower slightly behind
/// catches up from the log instead of receiving the whole snapshot. Older ones are purged.
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 500;

/// Largest snapshot chunk per InstallSnapshot RPC, in bytes; well below the transport's
/// message limit ([`super::network::MESSAGE_BYTES_MAX`]).
pub const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 1024 * 1024;

/// Deadline for sending and installing one snapshot chunk, in milliseconds.
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 5_000;

/// Most entries per AppendEntries RPC. The transport halves a batch that would exceed its
/// message limit, so this bounds latency rather than memory.
pub const APPEND_ENTRIES_MAX: u64 = 300;

/// The controller's openraft configuration, validated.
///
/// `cluster_name` labels the cluster in openraft's logs and metrics. Tests shorten the timers
/// by editing the returned value and calling [`Config::validate`] again.
#[allow(clippy::result_large_err, reason = "openraft's error type; returned once, at startup")]
pub fn controller_config(cluster_name: impl Into<String>) -> Result<Config, ConfigError> {
    Config {
        cluster_name: cluster_name.into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        max_payload_entries: APPEND_ENTRIES_MAX,
        // Followers further behind than this get a snapshot instead of the log; it must exceed
        // the snapshot interval, or a fresh snapshot would not be enough to catch them up.
        replication_lag_threshold: SNAPSHOT_LOGS_SINCE_LAST * 5,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_LOGS_SINCE_LAST),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX,
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT,
        // Purge in batches: each purge costs a sled flush (an fsync).
        purge_batch_size: 64,
        ..Config::default()
    }
    .validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_config_is_valid_and_purges_after_snapshots() {
        let config = controller_config("test").expect("valid");
        assert_eq!(config.snapshot_policy, SnapshotPolicy::LogsSinceLast(SNAPSHOT_LOGS_SINCE_LAST));
        assert!(config.replication_lag_threshold > SNAPSHOT_LOGS_SINCE_LAST);
        assert!(config.heartbeat_interval * 3 <= config.election_timeout_min);
    }
}
