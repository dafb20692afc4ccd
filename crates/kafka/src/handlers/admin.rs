//! CreateTopics, DeleteTopics and DescribeCluster, through the controller quorum.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{CreatableTopicResult, CreateTopicsResponse};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{DeletableTopicResult, DeleteTopicsResponse};
use kafka_protocol::messages::describe_cluster_response::{DescribeClusterBroker, DescribeClusterResponse};
use kafka_protocol::messages::{BrokerId, TopicName};
use runnel_auth::acl::{Operation, ResourceType};
use runnel_broker::admin::NewTopic;

use super::acls::{authorize, denied, may_create_topic};
use super::metadata::{has_leaders, live_brokers, uuid, valid_topic_name};
use super::{Client, code, s};
use crate::Context;

/// The longest an admin request waits for its change to reach this broker's metadata.
const ADMIN_WAIT_MAX: Duration = Duration::from_secs(30);

fn wait_bound(timeout_ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)).min(ADMIN_WAIT_MAX)
}

/// CreateTopics: each topic created through the controller; the answer waits (up to the
/// request's timeout) until the new topics are in this broker's metadata, so a client can
/// use them at once. -1 partitions or replication factor take the broker's defaults. Needs
/// CREATE on the cluster or on the topic (TOPIC_AUTHORIZATION_FAILED for that topic
/// otherwise); a topic created without DESCRIBE_CONFIGS on it has its config error set to
/// TOPIC_AUTHORIZATION_FAILED (v5+), as Kafka's.
pub(crate) async fn create_topics(
    ctx: &Context,
    request: CreateTopicsRequest,
    client: &Client,
) -> CreateTopicsResponse {
    let live = ctx.plane.metadata().map_or(1, |c| c.brokers.values().filter(|b| !b.fenced).count());
    let mut results = Vec::with_capacity(request.topics.len());
    let mut created = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let partitions =
            if topic.num_partitions == -1 { ctx.config.num_partitions as i32 } else { topic.num_partitions };
        let replication_factor = if topic.replication_factor == -1 {
            ctx.config.default_replication_factor.map_or_else(|| 3.min(live).max(1) as i16, |rf| rf as i16)
        } else {
            topic.replication_factor
        };
        let result = |error: i16, message: Option<String>| {
            let configs_error = if error == code::NONE
                && !client.allowed(ctx, Operation::DescribeConfigs, ResourceType::Topic, &name)
            {
                code::TOPIC_AUTHORIZATION_FAILED
            } else {
                code::NONE
            };
            CreatableTopicResult::default()
                .with_name(TopicName(s(name.clone())))
                .with_error_code(error)
                .with_error_message(message.map(s))
                .with_num_partitions(if error == code::NONE { partitions } else { -1 })
                .with_replication_factor(if error == code::NONE { replication_factor } else { -1 })
                .with_configs(Some(Vec::new()))
                .with_topic_config_error_code(configs_error)
        };
        let refusal = if !may_create_topic(ctx, client, &name) {
            Some((
                code::TOPIC_AUTHORIZATION_FAILED,
                denied(client, Operation::Create, ResourceType::Topic, &name),
            ))
        } else if !valid_topic_name(&name) {
            Some((code::INVALID_TOPIC_EXCEPTION, format!("{name:?} is not a valid topic name")))
        } else if !topic.assignments.is_empty() {
            Some((
                code::INVALID_REPLICA_ASSIGNMENT,
                "manual replica assignments are not supported".to_owned(),
            ))
        } else if partitions < 1 {
            Some((code::INVALID_PARTITIONS, format!("{partitions} partitions: at least 1 is needed")))
        } else if replication_factor < 1 {
            Some((
                code::INVALID_REPLICATION_FACTOR,
                format!("replication factor {replication_factor}: at least 1"),
            ))
        } else {
            None
        };
        if let Some((error, message)) = refusal {
            results.push(result(error, Some(message)));
            continue;
        }
        if request.validate_only {
            let exists = ctx.plane.metadata().is_ok_and(|c| c.topics.contains_key(&name));
            results.push(if exists {
                result(code::TOPIC_ALREADY_EXISTS, Some(format!("topic {name:?} already exists")))
            } else {
                result(code::NONE, None)
            });
            continue;
        }
        let configs: BTreeMap<String, String> = topic
            .configs
            .into_iter()
            .filter_map(|c| c.value.map(|v| (c.name.to_string(), v.to_string())))
            .collect();
        let new = NewTopic {
            name: name.clone(),
            partitions: partitions as u32,
            replication_factor: replication_factor as u32,
            configs,
        };
        match ctx.admin.create_topic(new).await {
            Ok(_) => {
                created.push(name.clone());
                results.push(result(code::NONE, None));
            }
            Err(e) => results.push(result(e.code, Some(e.message))),
        }
    }
    if !created.is_empty() {
        let ready = || ctx.plane.metadata().is_ok_and(|c| created.iter().all(|n| has_leaders(&c, n)));
        ctx.admin.wait_for_metadata(wait_bound(request.timeout_ms), ready).await;
        if let Ok(cache) = ctx.plane.metadata() {
            for r in &mut results {
                if let Some(t) = cache.topics.get(r.name.0.as_str()) {
                    r.topic_id = uuid(&t.id);
                }
            }
        }
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// DeleteTopics by name; the answer waits (up to the timeout) until the topics are gone from
/// this broker's metadata. Needs DELETE on each topic (TOPIC_AUTHORIZATION_FAILED for that
/// topic otherwise).
pub(crate) async fn delete_topics(
    ctx: &Context,
    request: DeleteTopicsRequest,
    client: &Client,
) -> DeleteTopicsResponse {
    let mut results = Vec::with_capacity(request.topic_names.len());
    let mut deleted = Vec::new();
    for name in request.topic_names {
        let topic = name.0.to_string();
        let outcome = match authorize(ctx, client, Operation::Delete, ResourceType::Topic, &topic) {
            Ok(()) => ctx.admin.delete_topic(&topic).await.map_err(|e| (e.code, e.message)),
            Err(message) => Err((code::TOPIC_AUTHORIZATION_FAILED, message)),
        };
        let (error, message) = match outcome {
            Ok(()) => {
                deleted.push(topic.clone());
                (code::NONE, None)
            }
            Err((error, message)) => (error, Some(message)),
        };
        results.push(
            DeletableTopicResult::default()
                .with_name(Some(name))
                .with_error_code(error)
                .with_error_message(message.map(s)),
        );
    }
    if !deleted.is_empty() {
        let gone = || ctx.plane.metadata().is_ok_and(|c| deleted.iter().all(|n| !c.topics.contains_key(n)));
        ctx.admin.wait_for_metadata(wait_bound(request.timeout_ms), gone).await;
    }
    DeleteTopicsResponse::default().with_responses(results)
}

/// DescribeCluster: the live brokers; this broker stands for the controller (it forwards
/// admin requests to the quorum). Any client may ask, as on Kafka (whose DescribeCluster
/// needs DESCRIBE on the cluster only for the authorized operations it may include).
pub(crate) fn describe_cluster(ctx: &Context, client: &Client) -> DescribeClusterResponse {
    let brokers = match ctx.plane.metadata() {
        Ok(cache) => live_brokers(&cache, &client.listener)
            .into_iter()
            .map(|(id, host, port, rack)| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(id as i32))
                    .with_host(s(host))
                    .with_port(port)
                    .with_rack((!rack.is_empty()).then(|| s(rack)))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    DescribeClusterResponse::default()
        .with_cluster_id(s(ctx.config.cluster_id.clone()))
        .with_controller_id(BrokerId(ctx.config.broker_id as i32))
        .with_brokers(brokers)
}
