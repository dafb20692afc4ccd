//! The API keys and version ranges this listener serves: ApiVersions answers exactly this
//! table, and [`codec::decode`](crate::codec::decode) refuses anything outside it.
//!
//! Produce and Fetch are advertised from version 0 although only v3+ and v4+ are decoded
//! (RecordBatch v2, Kafka 0.11 and later): librdkafka enables compression codecs only when
//! the advertised ranges include the old versions that introduced them, and a client that
//! really sends an older version gets its connection closed with a log line naming the
//! message format (see docs/kafka-compatibility.md).

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::protocol::VersionRange;

/// Every API served and its version range, in key order.
pub const SERVED: &[(ApiKey, VersionRange)] = &[
    (ApiKey::Produce, VersionRange { min: 0, max: 10 }),
    (ApiKey::Fetch, VersionRange { min: 0, max: 12 }),
    (ApiKey::ListOffsets, VersionRange { min: 1, max: 6 }),
    (ApiKey::Metadata, VersionRange { min: 0, max: 12 }),
    (ApiKey::OffsetCommit, VersionRange { min: 2, max: 9 }),
    (ApiKey::OffsetFetch, VersionRange { min: 1, max: 9 }),
    (ApiKey::FindCoordinator, VersionRange { min: 0, max: 4 }),
    (ApiKey::JoinGroup, VersionRange { min: 0, max: 9 }),
    (ApiKey::Heartbeat, VersionRange { min: 0, max: 4 }),
    (ApiKey::LeaveGroup, VersionRange { min: 0, max: 5 }),
    (ApiKey::SyncGroup, VersionRange { min: 0, max: 5 }),
    (ApiKey::DescribeGroups, VersionRange { min: 0, max: 5 }),
    (ApiKey::ListGroups, VersionRange { min: 0, max: 5 }),
    (ApiKey::SaslHandshake, VersionRange { min: 1, max: 1 }),
    (ApiKey::ApiVersions, VersionRange { min: 0, max: 3 }),
    (ApiKey::CreateTopics, VersionRange { min: 2, max: 7 }),
    (ApiKey::DeleteTopics, VersionRange { min: 1, max: 5 }),
    (ApiKey::InitProducerId, VersionRange { min: 0, max: 4 }),
    (ApiKey::OffsetForLeaderEpoch, VersionRange { min: 2, max: 4 }),
    (ApiKey::DescribeAcls, VersionRange { min: 1, max: 3 }),
    (ApiKey::CreateAcls, VersionRange { min: 1, max: 3 }),
    (ApiKey::DeleteAcls, VersionRange { min: 1, max: 3 }),
    (ApiKey::DescribeConfigs, VersionRange { min: 1, max: 4 }),
    (ApiKey::AlterConfigs, VersionRange { min: 0, max: 2 }),
    (ApiKey::SaslAuthenticate, VersionRange { min: 0, max: 2 }),
    (ApiKey::CreatePartitions, VersionRange { min: 0, max: 3 }),
    (ApiKey::DeleteGroups, VersionRange { min: 0, max: 2 }),
    (ApiKey::IncrementalAlterConfigs, VersionRange { min: 0, max: 1 }),
    (ApiKey::DescribeCluster, VersionRange { min: 0, max: 1 }),
    (ApiKey::ConsumerGroupHeartbeat, VersionRange { min: 0, max: 1 }),
];

/// The range served for `key`, if it is served.
pub fn served(key: ApiKey) -> Option<VersionRange> {
    SERVED.iter().find(|(k, _)| *k == key).map(|(_, r)| *r)
}

/// The ApiVersions answer's list.
pub fn api_versions() -> Vec<ApiVersion> {
    SERVED
        .iter()
        .map(|(key, range)| {
            ApiVersion::default()
                .with_api_key(*key as i16)
                .with_min_version(range.min)
                .with_max_version(range.max)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_range_is_one_the_protocol_crate_can_decode_and_encode() {
        for (key, range) in SERVED {
            let valid = key.valid_versions();
            assert!(
                range.max <= valid.max,
                "{key:?} served up to v{} but the crate knows v{}",
                range.max,
                valid.max
            );
            assert!(range.min <= range.max, "{key:?}");
            // Only Produce and Fetch advertise versions below what is decoded (see the module doc).
            if !matches!(key, ApiKey::Produce | ApiKey::Fetch) {
                assert!(
                    range.min >= valid.min,
                    "{key:?} served from v{} but decodable from v{}",
                    range.min,
                    valid.min
                );
            }
        }
        let keys: Vec<i16> = SERVED.iter().map(|(k, _)| *k as i16).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(keys, sorted, "SERVED is in key order with no repeats");
    }
}
