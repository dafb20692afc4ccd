//! Metadata, with Kafka's topic auto-creation.

use std::collections::{BTreeMap, BTreeSet};

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

use runnel_auth::acl::{CLUSTER_RESOURCE_NAME, Operation, ResourceType};

use super::acls::{authorized_operations, may_create_topic};
use super::{Client, broker_code, code, s};
use crate::{AUTO_CREATE_WAIT, Context, listeners};

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
///
/// Authorization as Kafka's: a listing of every topic leaves out those the client may not
/// DESCRIBE; a topic asked for by name (or id) without DESCRIBE is TOPIC_AUTHORIZATION_FAILED
/// with no partitions; creating a missing topic needs CREATE on the cluster or the topic,
/// and a topic that would be created without it is TOPIC_AUTHORIZATION_FAILED too.
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
    // Asked from v8 (the cluster's only through v10).
    let topic_ops = version >= 8 && request.include_topic_authorized_operations;
    let cluster_ops = (8..=10).contains(&version) && request.include_cluster_authorized_operations;
    let may_describe = |name: &str| client.allowed(ctx, Operation::Describe, ResourceType::Topic, name);
    // Topics asked for by name that are answered TOPIC_AUTHORIZATION_FAILED: those the client
    // may not describe, and (as Kafka) those it may describe but that are missing and would be
    // auto-created without its having CREATE.
    let mut refused: BTreeSet<&str> = BTreeSet::new();
    if let Some(names) = &wanted {
        refused.extend(names.iter().map(String::as_str).filter(|n| !may_describe(n)));
    }
    let mut created = BTreeMap::new();
    if let Some(names) = &wanted
        && allow_create
    {
        let missing: Vec<&String> = match ctx.plane.metadata() {
            Ok(cache) => names
                .iter()
                .filter(|n| !refused.contains(n.as_str()) && !cache.topics.contains_key(*n))
                .collect(),
            Err(_) => Vec::new(),
        };
        let (creatable, uncreatable): (Vec<&String>, Vec<&String>) =
            missing.into_iter().partition(|n| may_create_topic(ctx, client, n));
        refused.extend(uncreatable.into_iter().map(String::as_str));
        if !creatable.is_empty() {
            let creatable: Vec<String> = creatable.into_iter().cloned().collect();
            created = auto_create(ctx, &creatable).await;
        }
    }
    let cache = match ctx.plane.metadata() {
        Ok(cache) => cache,
        Err(e) => {
            // Still starting: no brokers and each topic retriable, so clients try again.
            let topics = wanted
                .iter()
                .flatten()
                .map(|n| {
                    let error = if refused.contains(n.as_str()) {
                        code::TOPIC_AUTHORIZATION_FAILED
                    } else {
                        broker_code(&e)
                    };
                    topic_error(n, error)
                })
                .collect();
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
        None => cache
            .topics
            .iter()
            .filter(|(name, _)| may_describe(name))
            .map(|(name, t)| describe_topic(name, t, &cache))
            .collect(),
        Some(names) => names
            .iter()
            .map(|name| match cache.topics.get(name) {
                _ if refused.contains(name.as_str()) => topic_error(name, code::TOPIC_AUTHORIZATION_FAILED),
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
            // Kafka does not count ids as secret: the refusal carries the id, not the name.
            Some((name, _)) if !may_describe(name) => MetadataResponseTopic::default()
                .with_name(None)
                .with_topic_id(id)
                .with_error_code(code::TOPIC_AUTHORIZATION_FAILED),
            Some((name, t)) => describe_topic(name, t, &cache),
            None => MetadataResponseTopic::default()
                .with_name(None)
                .with_topic_id(id)
                .with_error_code(code::UNKNOWN_TOPIC_ID),
        });
    }
    if topic_ops {
        for t in topics.iter_mut().filter(|t| t.error_code == code::NONE) {
            if let Some(name) = &t.name {
                t.topic_authorized_operations = authorized_operations(ctx, client, ResourceType::Topic, name);
            }
        }
    }
    let mut response = MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(ctx.config.cluster_id.clone())))
        // Every broker takes admin requests (it forwards them to the controller quorum), so
        // the controller clients are told of is this one.
        .with_controller_id(BrokerId(ctx.config.broker_id as i32))
        .with_topics(topics);
    if cluster_ops {
        // As Kafka: nothing at all without DESCRIBE on the cluster.
        response.cluster_authorized_operations =
            if client.allowed(ctx, Operation::Describe, ResourceType::Cluster, CLUSTER_RESOURCE_NAME) {
                authorized_operations(ctx, client, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)
            } else {
                0
            };
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
