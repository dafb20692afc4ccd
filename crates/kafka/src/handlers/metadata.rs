//! Metadata, with Kafka's topic auto-creation.

use std::collections::BTreeMap;

use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use runnel_broker::MetadataCache;
use runnel_broker::admin::NewTopic;
use runnel_broker::cache::TopicEntry;
use runnel_broker::group::OFFSETS_TOPIC;

use super::{Client, broker_code, code, s};
use crate::{AUTO_CREATE_WAIT, Context, listeners};

/// Kafka's ACL operations (AclOperation codes) as bitfields, answered when a client asks
/// for authorized operations: with no authorizer, every operation of the resource type.
/// Topic: READ 3, WRITE 4, CREATE 5, DELETE 6, ALTER 7, DESCRIBE 8, DESCRIBE_CONFIGS 10,
/// ALTER_CONFIGS 11.
pub(crate) const TOPIC_OPERATIONS: i32 =
    (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 10) | (1 << 11);
/// Cluster: CREATE 5, ALTER 7, DESCRIBE 8, CLUSTER_ACTION 9, DESCRIBE_CONFIGS 10,
/// ALTER_CONFIGS 11, IDEMPOTENT_WRITE 12.
pub(crate) const CLUSTER_OPERATIONS: i32 =
    (1 << 5) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12);
/// Group: READ 3, DELETE 6, DESCRIBE 8.
pub(crate) const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// The most replicas an auto-created topic gets when `default.replication.factor` is unset.
const AUTO_CREATE_REPLICATION_MAX: usize = 3;

/// Topic names Kafka accepts: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(crate) fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A topic id for the wire (16 bytes, or nil).
pub(crate) fn uuid(id: &[u8]) -> uuid::Uuid {
    uuid::Uuid::from_slice(id).unwrap_or(uuid::Uuid::nil())
}

/// The brokers clients of `listener` may connect to: unfenced ones advertising an address
/// for it.
pub(crate) fn live_brokers(cache: &MetadataCache, listener: &str) -> Vec<(u32, String, i32, String)> {
    cache
        .brokers
        .iter()
        .filter(|(_, b)| !b.fenced)
        .filter_map(|(&id, b)| {
            listeners::address_for(&b.kafka, listener).map(|(host, port)| (id, host, port, b.rack.clone()))
        })
        .collect()
}

fn describe_topic(name: &str, topic: &TopicEntry, cache: &MetadataCache) -> MetadataResponseTopic {
    let fenced = |id: &u32| cache.brokers.get(id).is_none_or(|b| b.fenced);
    let partitions = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ids = |v: &[u32]| v.iter().map(|&id| BrokerId(id as i32)).collect::<Vec<_>>();
            let error = if p.leader.is_some() { code::NONE } else { code::LEADER_NOT_AVAILABLE };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(i as i32)
                .with_leader_id(BrokerId(p.leader.map_or(-1, |l| l as i32)))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(ids(&p.isr))
                .with_offline_replicas(
                    p.replicas.iter().copied().filter(fenced).map(|id| BrokerId(id as i32)).collect(),
                )
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(s(name))))
        .with_topic_id(uuid(&topic.id))
        .with_is_internal(name == OFFSETS_TOPIC)
        .with_partitions(partitions)
}

fn topic_error(name: &str, error: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default().with_name(Some(TopicName(s(name)))).with_error_code(error)
}

/// Whether every partition of `name` has a leader in `cache`.
pub(crate) fn has_leaders(cache: &MetadataCache, name: &str) -> bool {
    cache
        .topics
        .get(name)
        .is_some_and(|t| !t.partitions.is_empty() && t.partitions.iter().all(|p| p.leader.is_some()))
}

/// Creates `names` with the auto-creation defaults and waits, bounded, until they have
/// leaders here. Returns each name's error code: NONE once it has leaders,
/// LEADER_NOT_AVAILABLE while it is still being created (the client retries), or why it
/// cannot be created.
pub(crate) async fn auto_create(ctx: &Context, names: &[String]) -> BTreeMap<String, i16> {
    let live = ctx.plane.metadata().map_or(1, |c| c.brokers.values().filter(|b| !b.fenced).count());
    let replication_factor = ctx
        .config
        .default_replication_factor
        .unwrap_or_else(|| AUTO_CREATE_REPLICATION_MAX.min(live).max(1) as u32);
    let mut codes = BTreeMap::new();
    for name in names {
        if !valid_topic_name(name) || name == OFFSETS_TOPIC {
            codes.insert(name.clone(), code::INVALID_TOPIC_EXCEPTION);
            continue;
        }
        let topic = NewTopic {
            name: name.clone(),
            partitions: ctx.config.num_partitions.max(1),
            replication_factor,
            configs: BTreeMap::new(),
        };
        let error = match ctx.admin.create_topic(topic).await {
            Ok(_) => code::NONE,
            Err(e) if e.code == code::TOPIC_ALREADY_EXISTS => code::NONE,
            Err(e) => {
                tracing::info!(topic = %name, "kafka: auto-creating the topic failed: {e}");
                e.code
            }
        };
        if error == code::NONE {
            tracing::info!(topic = %name, partitions = ctx.config.num_partitions, replication_factor, "kafka: auto-created the topic");
        }
        codes.insert(name.clone(), error);
    }
    let created: Vec<&String> = codes.iter().filter(|(_, c)| **c == code::NONE).map(|(n, _)| n).collect();
    if !created.is_empty() {
        let ready = || ctx.plane.metadata().is_ok_and(|c| created.iter().all(|n| has_leaders(&c, n)));
        ctx.admin.wait_for_metadata(AUTO_CREATE_WAIT, ready).await;
    }
    codes
}

/// Metadata: brokers, topics, partitions with leaders and epochs; unknown topics are created
/// when `auto.create.topics.enable` allows and the client asked (always before v4).
pub(crate) async fn metadata(
    ctx: &Context,
    request: MetadataRequest,
    version: i16,
    client: &Client,
) -> MetadataResponse {
    // v0 has no null list: an empty one means every topic. From v10 a topic may be named by
    // its id alone (KIP-848 consumers resolve their assignment's topic ids so).
    let (wanted, by_id): (Option<Vec<String>>, Vec<uuid::Uuid>) = match request.topics {
        None => (None, Vec::new()),
        Some(t) if t.is_empty() && version == 0 => (None, Vec::new()),
        Some(t) => {
            let by_id =
                t.iter().filter(|t| t.name.is_none() && !t.topic_id.is_nil()).map(|t| t.topic_id).collect();
            (Some(t.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect()), by_id)
        }
    };
    let allow_create = ctx.config.auto_create_topics && (version < 4 || request.allow_auto_topic_creation);
    // Asked from v8 (the cluster's only through v10); answered as Kafka without an authorizer.
    let topic_ops = (version >= 8 && request.include_topic_authorized_operations).then_some(TOPIC_OPERATIONS);
    let cluster_ops = ((8..=10).contains(&version) && request.include_cluster_authorized_operations)
        .then_some(CLUSTER_OPERATIONS);
    let mut created = BTreeMap::new();
    if let Some(names) = &wanted
        && allow_create
    {
        let missing: Vec<String> = match ctx.plane.metadata() {
            Ok(cache) => names.iter().filter(|n| !cache.topics.contains_key(*n)).cloned().collect(),
            Err(_) => Vec::new(),
        };
        if !missing.is_empty() {
            created = auto_create(ctx, &missing).await;
        }
    }
    let cache = match ctx.plane.metadata() {
        Ok(cache) => cache,
        Err(e) => {
            // Still starting: no brokers and each topic retriable, so clients try again.
            let topics = wanted.unwrap_or_default().iter().map(|n| topic_error(n, broker_code(&e))).collect();
            return MetadataResponse::default().with_topics(topics);
        }
    };
    let brokers = live_brokers(&cache, &client.listener)
        .into_iter()
        .map(|(id, host, port, rack)| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id as i32))
                .with_host(s(host))
                .with_port(port)
                .with_rack((!rack.is_empty()).then(|| s(rack)))
        })
        .collect();
    let topics = match &wanted {
        None => cache.topics.iter().map(|(name, t)| describe_topic(name, t, &cache)).collect(),
        Some(names) => names
            .iter()
            .map(|name| match cache.topics.get(name) {
                Some(t) if has_leaders(&cache, name) || !created.contains_key(name) => {
                    describe_topic(name, t, &cache)
                }
                // Created by this request but not led yet: Kafka's answer for a new topic.
                Some(_) => topic_error(name, code::LEADER_NOT_AVAILABLE),
                None => match created.get(name) {
                    Some(&code::NONE) => topic_error(name, code::LEADER_NOT_AVAILABLE),
                    Some(&error) => topic_error(name, error),
                    None => topic_error(name, code::UNKNOWN_TOPIC_OR_PARTITION),
                },
            })
            .collect(),
    };
    let mut topics: Vec<MetadataResponseTopic> = topics;
    for id in by_id {
        topics.push(match cache.topics.iter().find(|(_, t)| uuid(&t.id) == id) {
            Some((name, t)) => describe_topic(name, t, &cache),
            None => MetadataResponseTopic::default()
                .with_name(None)
                .with_topic_id(id)
                .with_error_code(code::UNKNOWN_TOPIC_ID),
        });
    }
    if let Some(ops) = topic_ops {
        for t in topics.iter_mut().filter(|t| t.error_code == code::NONE) {
            t.topic_authorized_operations = ops;
        }
    }
    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(ctx.config.cluster_id.clone())))
        // Every broker takes admin requests (it forwards them to the controller quorum), so
        // the controller clients are told of is this one.
        .with_controller_id(BrokerId(ctx.config.broker_id as i32))
        .with_topics(topics);
    if let Some(ops) = cluster_ops {
        response.cluster_authorized_operations = ops;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rule() {
        assert!(valid_topic_name("salary-updates"));
        assert!(valid_topic_name("a.b_c-D9"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("."));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("has space"));
        assert!(!valid_topic_name(&"x".repeat(250)));
        assert!(valid_topic_name(&"x".repeat(249)));
    }
}
