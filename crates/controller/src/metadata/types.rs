//! The values the image is made of: brokers, topics, partitions.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A broker's advertised listeners, each `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// Runnel's gRPC API (clients; replication too unless `internal` is set).
    pub grpc: String,
    /// The Kafka wire protocol listener.
    pub kafka: String,
    /// Health, metrics and the console.
    pub http: String,
    /// Inter-node gRPC (replication) when the broker serves it apart from `grpc`; empty
    /// when `grpc` serves it. Absent from entries written before it existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub internal: String,
}

/// A registered broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    /// The broker id, unique in the cluster and stable across restarts.
    pub id: u32,
    /// The Raft log index of the registration that created this incarnation. It strictly
    /// increases with every registration, so requests carrying an older epoch come from a
    /// previous life of the broker and are refused.
    pub epoch: u64,
    /// Where to reach the broker.
    pub endpoints: Endpoints,
    /// The failure domain the broker lives in, for rack-aware replica placement.
    pub rack: Option<String>,
    /// Identifies the broker process that registered; a registration repeating it is a
    /// retry, not a restart.
    pub incarnation_id: Option<u128>,
    /// A fenced broker leads nothing, joins no ISR and receives no new replicas. A broker is
    /// fenced from registration until it has caught up with the metadata, and again when it
    /// misses its heartbeats.
    pub fenced: bool,
}

/// A topic's 16-byte id. Unlike the name, it is never reused: a topic deleted and created
/// again under the same name gets a new id, so requests about the old one can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicId(pub [u8; 16]);

impl TopicId {
    /// The id of a topic created by the command at Raft log index `index`.
    ///
    /// The high 8 bytes are the index (unique per creation, so ids never repeat); the low
    /// 8 bytes are a hash of the name with the top bit set, which keeps the id clear of the
    /// ids Kafka reserves (all zeros, and zero-then-one). The hash is FNV-1a, fixed here
    /// rather than `std`'s hasher, whose output may change between Rust releases: every
    /// replica must compute the same id.
    pub fn derive(index: u64, name: &str) -> TopicId {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in name.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash |= 1 << 63;
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&index.to_be_bytes());
        bytes[8..].copy_from_slice(&hash.to_be_bytes());
        TopicId(bytes)
    }
}

/// Kafka's text form of a topic id: URL-safe base64 without padding (22 characters).
impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let value = u128::from_be_bytes(self.0);
        // 128 bits make 21 full sextets and 2 bits left over, which base64 pads to a sextet.
        let mut out = String::with_capacity(22);
        for i in 0..22u32 {
            let shift = 128i32 - 6 * (i as i32 + 1);
            let sextet = if shift >= 0 { (value >> shift) & 0x3f } else { (value << -shift) & 0x3f };
            out.push(char::from(ALPHABET[sextet as usize]));
        }
        f.write_str(&out)
    }
}

/// One partition's replication state: who holds it, who is in sync, who leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The brokers holding a replica, in preference order: the first is the preferred leader.
    pub replicas: Vec<u32>,
    /// The in-sync replicas, a non-empty subset of `replicas`, kept in `replicas` order.
    pub isr: Vec<u32>,
    /// The leader, a member of the ISR; `None` when no ISR member is eligible (the partition
    /// is offline until one comes back: unclean election is off).
    pub leader: Option<u32>,
    /// Bumped on every change of leader (including to and from `None`). Replicas fence
    /// requests from older epochs, and every batch records the epoch it was written in.
    pub leader_epoch: i32,
    /// Bumped on every change of this state; AlterPartition compares and swaps on it.
    pub partition_epoch: i32,
}

impl PartitionState {
    /// The preferred leader: the first replica.
    pub fn preferred_leader(&self) -> u32 {
        self.replicas[0]
    }

    /// Whether `broker` holds a replica.
    pub fn is_replica(&self, broker: u32) -> bool {
        self.replicas.contains(&broker)
    }

    /// Whether `broker` is in the ISR.
    pub fn in_isr(&self, broker: u32) -> bool {
        self.isr.contains(&broker)
    }
}

/// A topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// The topic name.
    pub name: String,
    /// The topic id, unique across the cluster's history.
    pub id: TopicId,
    /// Topic-level config overrides (Kafka names), in canonical form; keys not present take
    /// the broker defaults.
    pub config: BTreeMap<String, String>,
    /// Partition `i` is at index `i`.
    pub partitions: Vec<PartitionState>,
}

impl Topic {
    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        u32::try_from(self.partitions.len()).expect("the partition count is bounded by PARTITIONS_MAX")
    }

    /// The replication factor: every partition has the same number of replicas.
    pub fn replication_factor(&self) -> u16 {
        let replicas = self.partitions.first().map_or(0, |p| p.replicas.len());
        u16::try_from(replicas).expect("replica lists are bounded by the broker count")
    }

    /// Partition `partition`, if the topic has it.
    pub fn partition(&self, partition: u32) -> Option<&PartitionState> {
        self.partitions.get(usize::try_from(partition).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_id_is_deterministic_unique_per_index_and_never_reserved() {
        let a = TopicId::derive(7, "orders");
        assert_eq!(a, TopicId::derive(7, "orders"));
        assert_ne!(a, TopicId::derive(8, "orders"));
        assert_ne!(a, TopicId::derive(7, "payments"));
        // Kafka reserves the zero id and the id with only the lowest bit set.
        let zero = TopicId::derive(0, "");
        assert_ne!(zero.0, [0; 16]);
        let mut one = [0u8; 16];
        one[15] = 1;
        assert_ne!(zero.0, one);
    }

    #[test]
    fn topic_id_displays_as_kafka_base64() {
        assert_eq!(TopicId([0; 16]).to_string(), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(TopicId([0xff; 16]).to_string(), "_____________________w");
        let mut one = [0u8; 16];
        one[15] = 1;
        // Kafka's Uuid.ONE_UUID prints as AAAAAAAAAAAAAAAAAAAAAQ.
        assert_eq!(TopicId(one).to_string(), "AAAAAAAAAAAAAAAAAAAAAQ");
    }
}
