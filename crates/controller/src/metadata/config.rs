//! Topic config overrides: the keys Runnel supports, their ranges, their canonical form.
//!
//! The ranges match what the partition log accepts (`runnel-storage`'s `LogConfig`), so a
//! config the controller commits never fails on a broker. This crate does not depend on
//! the storage crate (the controller and the data plane stay apart), so the bounds are
//! restated here and must follow `LogConfig::validate` by hand until a shared model crate
//! (`crates/proto`) can hold them.

use std::collections::BTreeMap;

use super::error::{CommandError, ErrorCode};

/// `retention.ms`: delete segments older than this; -1 keeps them forever.
pub const RETENTION_MS: &str = "retention.ms";
/// `retention.bytes`: delete the oldest segments while the partition is larger; -1 for no
/// limit.
pub const RETENTION_BYTES: &str = "retention.bytes";
/// `segment.bytes`: roll to a new segment past this size.
pub const SEGMENT_BYTES: &str = "segment.bytes";
/// `segment.ms`: roll to a new segment this long after its first append.
pub const SEGMENT_MS: &str = "segment.ms";
/// `min.insync.replicas`: the fewest ISR members an acks=all produce needs.
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
/// `max.message.bytes`: the largest record batch accepted.
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
/// `cleanup.policy`: only `delete` for now (compaction comes later).
pub const CLEANUP_POLICY: &str = "cleanup.policy";
/// `unclean.leader.election.enable`: only `false` (Runnel never elects outside the ISR).
pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";
/// `message.timestamp.before.max.ms`: how far before the leader's clock a record's create
/// time may be.
pub const MESSAGE_TIMESTAMP_BEFORE_MAX_MS: &str = "message.timestamp.before.max.ms";
/// `message.timestamp.after.max.ms`: how far after the leader's clock a record's create
/// time may be.
pub const MESSAGE_TIMESTAMP_AFTER_MAX_MS: &str = "message.timestamp.after.max.ms";
/// `fsync`: Runnel's durability policy, `always`, `never` or `interval:<ms>`.
pub const FSYNC: &str = "fsync";

/// Every supported key.
pub const SUPPORTED_KEYS: [&str; 11] = [
    RETENTION_MS,
    RETENTION_BYTES,
    SEGMENT_BYTES,
    SEGMENT_MS,
    MIN_INSYNC_REPLICAS,
    MAX_MESSAGE_BYTES,
    CLEANUP_POLICY,
    UNCLEAN_LEADER_ELECTION_ENABLE,
    FSYNC,
    MESSAGE_TIMESTAMP_BEFORE_MAX_MS,
    MESSAGE_TIMESTAMP_AFTER_MAX_MS,
];

/// Smallest `segment.bytes` (the log's own floor).
pub const SEGMENT_BYTES_MIN: u64 = 1024;
/// Largest `segment.bytes`: segment positions are 32-bit.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;
/// Smallest `max.message.bytes`: a RecordBatch header.
pub const MAX_MESSAGE_BYTES_MIN: u64 = 61;
/// Largest `max.message.bytes` (the log's hard batch limit).
pub const MAX_MESSAGE_BYTES_MAX: u64 = 256 << 20;
/// Longest config value accepted, before any parsing.
pub const CONFIG_VALUE_LEN_MAX: usize = 64;

fn invalid(key: &str, value: &str, why: &str) -> CommandError {
    CommandError::new(ErrorCode::InvalidConfig, format!("invalid value {value:?} for {key}: {why}"))
}

fn parse_i64(key: &str, value: &str, min: i64, max: i64) -> Result<String, CommandError> {
    match value.parse::<i64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v.to_string()),
        _ => Err(invalid(key, value, &format!("expected an integer in [{min}, {max}]"))),
    }
}

/// Validates one entry for a topic with `replication_factor` replicas and returns the
/// value in canonical form (numbers without sign or leading zeros), so that equal settings
/// compare equal in the image.
pub fn canonical_value(key: &str, value: &str, replication_factor: u16) -> Result<String, CommandError> {
    if value.len() > CONFIG_VALUE_LEN_MAX {
        // Not echoed: it is long, and slicing it could split a character.
        return Err(CommandError::new(
            ErrorCode::InvalidConfig,
            format!("value for {key} is {} bytes, over the limit of {CONFIG_VALUE_LEN_MAX}", value.len()),
        ));
    }
    let max = |m: u64| i64::try_from(m).expect("limits fit in i64");
    match key {
        RETENTION_MS | RETENTION_BYTES => parse_i64(key, value, -1, i64::MAX),
        SEGMENT_BYTES => parse_i64(key, value, max(SEGMENT_BYTES_MIN), max(SEGMENT_BYTES_MAX)),
        SEGMENT_MS => parse_i64(key, value, 1, i64::MAX),
        MESSAGE_TIMESTAMP_BEFORE_MAX_MS | MESSAGE_TIMESTAMP_AFTER_MAX_MS => {
            parse_i64(key, value, 0, i64::MAX)
        }
        MAX_MESSAGE_BYTES => parse_i64(key, value, max(MAX_MESSAGE_BYTES_MIN), max(MAX_MESSAGE_BYTES_MAX)),
        MIN_INSYNC_REPLICAS => parse_i64(key, value, 1, i64::from(replication_factor)).map_err(|_| {
            invalid(key, value, &format!("expected 1 to the replication factor {replication_factor}"))
        }),
        CLEANUP_POLICY => match value {
            "delete" => Ok(value.to_owned()),
            _ => Err(invalid(key, value, "only \"delete\" is supported (compaction is not implemented yet)")),
        },
        UNCLEAN_LEADER_ELECTION_ENABLE => match value {
            "false" => Ok(value.to_owned()),
            _ => Err(invalid(key, value, "Runnel never elects a leader outside the ISR; only \"false\"")),
        },
        FSYNC => match value {
            "always" | "never" => Ok(value.to_owned()),
            _ => match value.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(format!("interval:{ms}")),
                _ => Err(invalid(key, value, "expected always, never or interval:<ms> with ms > 0")),
            },
        },
        _ => Err(CommandError::new(
            ErrorCode::InvalidConfig,
            format!("unknown topic config {key:?}; supported: {}", SUPPORTED_KEYS.join(", ")),
        )),
    }
}

/// Validates a whole set of overrides for a topic with `replication_factor` replicas and
/// returns it in canonical form. Refused with INVALID_CONFIG (40).
pub fn validate_topic_config(
    config: &BTreeMap<String, String>,
    replication_factor: u16,
) -> Result<BTreeMap<String, String>, CommandError> {
    config
        .iter()
        .map(|(key, value)| Ok((key.clone(), canonical_value(key, value, replication_factor)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str, value: &str) -> Result<String, ErrorCode> {
        canonical_value(key, value, 3).map_err(|e| e.code)
    }

    #[test]
    fn accepts_supported_values_in_canonical_form() {
        assert_eq!(check(RETENTION_MS, "-1"), Ok("-1".into()));
        assert_eq!(check(RETENTION_MS, "+0600000"), Ok("600000".into()));
        assert_eq!(check(RETENTION_BYTES, "1073741824"), Ok("1073741824".into()));
        assert_eq!(check(SEGMENT_BYTES, "1024"), Ok("1024".into()));
        assert_eq!(check(SEGMENT_BYTES, "4294967295"), Ok("4294967295".into()));
        assert_eq!(check(SEGMENT_MS, "1"), Ok("1".into()));
        assert_eq!(check(MAX_MESSAGE_BYTES, "1048588"), Ok("1048588".into()));
        assert_eq!(check(MIN_INSYNC_REPLICAS, "3"), Ok("3".into()));
        assert_eq!(check(CLEANUP_POLICY, "delete"), Ok("delete".into()));
        assert_eq!(check(UNCLEAN_LEADER_ELECTION_ENABLE, "false"), Ok("false".into()));
        assert_eq!(check(FSYNC, "always"), Ok("always".into()));
        assert_eq!(check(FSYNC, "never"), Ok("never".into()));
        assert_eq!(check(FSYNC, "interval:0050"), Ok("interval:50".into()));
    }

    #[test]
    fn refuses_unknown_keys_and_out_of_range_values() {
        let bad = [
            ("compression.type", "zstd"),
            (RETENTION_MS, "-2"),
            (RETENTION_MS, "1d"),
            (RETENTION_BYTES, ""),
            (SEGMENT_BYTES, "1023"),
            (SEGMENT_BYTES, "4294967296"),
            (SEGMENT_MS, "0"),
            (MAX_MESSAGE_BYTES, "60"),
            (MAX_MESSAGE_BYTES, "268435457"),
            (MIN_INSYNC_REPLICAS, "0"),
            (MIN_INSYNC_REPLICAS, "4"),
            (CLEANUP_POLICY, "compact"),
            (UNCLEAN_LEADER_ELECTION_ENABLE, "true"),
            (FSYNC, "interval:0"),
            (FSYNC, "sometimes"),
            (RETENTION_MS, "99999999999999999999999999999999999999999999999999999999999999999999"),
            (FSYNC, "ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé"),
        ];
        for (key, value) in bad {
            assert_eq!(check(key, value), Err(ErrorCode::InvalidConfig), "{key}={value}");
        }
    }
}
