//! CreatePartitions, DescribeConfigs, IncrementalAlterConfigs and AlterConfigs, through the
//! controller quorum (topic resources) and this broker's settings (broker resources).

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::alter_configs_request::AlterConfigsRequest;
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse as LegacyAlterResult, AlterConfigsResponse,
};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_request::IncrementalAlterConfigsRequest;
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse, IncrementalAlterConfigsResponse,
};
use runnel_auth::acl::{CLUSTER_RESOURCE_NAME, Operation, ResourceType};
use runnel_broker::admin::AdminError;

use super::acls::authorize;
use super::{Client, broker_code, code, s};
use crate::Context;

/// Kafka's config resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Kafka's config sources.
const SOURCE_TOPIC_CONFIG: i8 = 1;
const SOURCE_STATIC_BROKER_CONFIG: i8 = 4;
const SOURCE_DEFAULT_CONFIG: i8 = 5;
/// Kafka's config types (DescribeConfigs v3+).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
/// The longest a config or partition change waits to reach this broker's metadata.
const CHANGE_WAIT_MAX: Duration = Duration::from_secs(30);
/// How long an alter waits for its change to reach this broker's metadata, so a
/// DescribeConfigs right after it sees it.
const CONFIG_VISIBLE_WAIT: Duration = Duration::from_secs(5);

fn config_type(name: &str) -> i8 {
    match name {
        "retention.ms"
        | "retention.bytes"
        | "segment.ms"
        | "message.timestamp.before.max.ms"
        | "message.timestamp.after.max.ms" => TYPE_LONG,
        "segment.bytes"
        | "max.message.bytes"
        | "min.insync.replicas"
        | "num.partitions"
        | "default.replication.factor"
        | "socket.request.max.bytes" => TYPE_INT,
        "unclean.leader.election.enable" | "auto.create.topics.enable" => TYPE_BOOLEAN,
        "cleanup.policy" => TYPE_LIST,
        _ => TYPE_STRING,
    }
}

/// CreatePartitions: a topic's new total partition count, through the controller; the
/// answer waits (up to the timeout) until this broker's metadata has the new partitions.
/// Needs ALTER on each topic (TOPIC_AUTHORIZATION_FAILED for that topic otherwise).
pub(crate) async fn create_partitions(
    ctx: &Context,
    r: CreatePartitionsRequest,
    client: &Client,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(r.topics.len());
    let mut grown: Vec<(String, usize)> = Vec::new();
    for topic in r.topics {
        let name = topic.name.0.to_string();
        let outcome = if let Err(message) =
            authorize(ctx, client, Operation::Alter, ResourceType::Topic, &name)
        {
            Err((code::TOPIC_AUTHORIZATION_FAILED, message))
        } else if topic.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            Err((code::INVALID_REPLICA_ASSIGNMENT, "manual replica assignments are not supported".to_owned()))
        } else {
            match u32::try_from(topic.count) {
                Ok(count) => ctx
                    .admin
                    .create_partitions(&name, count, r.validate_only)
                    .await
                    .map(|()| count)
                    .map_err(|e: AdminError| (e.code, e.message)),
                Err(_) => Err((code::INVALID_PARTITIONS, format!("{} partitions: at least 1", topic.count))),
            }
        };
        let result = CreatePartitionsTopicResult::default().with_name(topic.name);
        results.push(match outcome {
            Ok(count) => {
                if !r.validate_only {
                    grown.push((name, count as usize));
                }
                result
            }
            Err((error, message)) => result.with_error_code(error).with_error_message(Some(s(message))),
        });
    }
    if !grown.is_empty() {
        let wait = Duration::from_millis(u64::try_from(r.timeout_ms).unwrap_or(0)).min(CHANGE_WAIT_MAX);
        let ready = || {
            ctx.plane.metadata().is_ok_and(|c| {
                grown.iter().all(|(n, count)| c.topics.get(n).is_some_and(|t| t.partitions.len() >= *count))
            })
        };
        ctx.admin.wait_for_metadata(wait, ready).await;
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// This broker's Kafka settings, as a broker resource shows them (static: set by flags).
fn broker_configs(ctx: &Context) -> Vec<(&'static str, String)> {
    let c = &ctx.config;
    vec![
        ("auto.create.topics.enable", c.auto_create_topics.to_string()),
        (
            "default.replication.factor",
            c.default_replication_factor.map_or_else(|| "3".to_owned(), |rf| rf.to_string()),
        ),
        ("num.partitions", c.num_partitions.to_string()),
        ("socket.request.max.bytes", c.request_max_bytes.to_string()),
    ]
}

fn entry(
    name: &str,
    value: String,
    source: i8,
    read_only: bool,
    version: i16,
) -> DescribeConfigsResourceResult {
    DescribeConfigsResourceResult::default()
        .with_name(s(name))
        .with_value(Some(s(value)))
        .with_read_only(read_only)
        .with_config_source(source)
        .with_config_type(if version >= 3 { config_type(name) } else { 0 })
}

/// Whether the client may do `operation` (DESCRIBE_CONFIGS or ALTER_CONFIGS) on a config
/// resource: a topic's needs it on the topic (TOPIC_AUTHORIZATION_FAILED otherwise), a
/// broker's on the cluster (CLUSTER_AUTHORIZATION_FAILED otherwise). Other resource types
/// are refused later as unsupported.
fn may_configure(
    ctx: &Context,
    client: &Client,
    operation: Operation,
    resource_type: i8,
    name: &str,
) -> Result<(), (i16, String)> {
    match resource_type {
        RESOURCE_TOPIC => authorize(ctx, client, operation, ResourceType::Topic, name)
            .map_err(|message| (code::TOPIC_AUTHORIZATION_FAILED, message)),
        RESOURCE_BROKER => authorize(ctx, client, operation, ResourceType::Cluster, CLUSTER_RESOURCE_NAME)
            .map_err(|message| (code::CLUSTER_AUTHORIZATION_FAILED, message)),
        _ => Ok(()),
    }
}

/// DescribeConfigs: a topic's configs (overrides and the defaults in force), or this
/// broker's Kafka settings. Needs DESCRIBE_CONFIGS on the topic, or on the cluster for a
/// broker.
pub(crate) fn describe_configs(
    ctx: &Context,
    r: DescribeConfigsRequest,
    version: i16,
    client: &Client,
) -> DescribeConfigsResponse {
    let results = r
        .resources
        .into_iter()
        .map(|resource| {
            let wanted = |name: &str| {
                resource
                    .configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
            };
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let allowed = may_configure(
                ctx,
                client,
                Operation::DescribeConfigs,
                resource.resource_type,
                &resource.resource_name,
            );
            if let Err((error, message)) = allowed {
                return result.with_error_code(error).with_error_message(Some(s(message)));
            }
            match resource.resource_type {
                RESOURCE_TOPIC => match ctx.plane.describe_topic_configs(&resource.resource_name) {
                    Ok(entries) => result.with_configs(
                        entries
                            .into_iter()
                            .filter(|e| wanted(e.name))
                            .map(|e| {
                                let source =
                                    if e.is_default { SOURCE_DEFAULT_CONFIG } else { SOURCE_TOPIC_CONFIG };
                                entry(e.name, e.value, source, false, version)
                            })
                            .collect(),
                    ),
                    Err(e) => result.with_error_code(broker_code(&e)).with_error_message(Some(s(e.message))),
                },
                RESOURCE_BROKER
                    if resource.resource_name.as_str() == ctx.config.broker_id.to_string()
                        || resource.resource_name.is_empty() =>
                {
                    result.with_configs(
                        broker_configs(ctx)
                            .into_iter()
                            .filter(|(name, _)| wanted(name))
                            .map(|(name, value)| {
                                entry(name, value, SOURCE_STATIC_BROKER_CONFIG, true, version)
                            })
                            .collect(),
                    )
                }
                RESOURCE_BROKER => {
                    result.with_error_code(code::INVALID_REQUEST).with_error_message(Some(s(format!(
                        "broker {} describes its own settings; this is broker {}",
                        resource.resource_name.as_str(),
                        ctx.config.broker_id
                    ))))
                }
                other => result
                    .with_error_code(code::INVALID_REQUEST)
                    .with_error_message(Some(s(format!("config resource type {other} is not supported")))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Waits (bounded) until this broker's metadata shows `topic` with `done` true of its
/// overrides, so a DescribeConfigs after an alter sees the change.
async fn wait_configs(ctx: &Context, topic: &str, mut done: impl FnMut(&BTreeMap<String, String>) -> bool) {
    let ready = || ctx.plane.metadata().is_ok_and(|c| c.topics.get(topic).is_some_and(|t| done(&t.configs)));
    ctx.admin.wait_for_metadata(CONFIG_VISIBLE_WAIT, ready).await;
}

/// One topic's config change through the controller; Ok once it is in this broker's view.
async fn alter_topic(
    ctx: &Context,
    topic: &str,
    set: BTreeMap<String, String>,
    delete: Vec<String>,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    ctx.admin
        .alter_topic_config(topic, set.clone(), delete.clone(), validate_only)
        .await
        .map_err(|e| (e.code, e.message))?;
    if !validate_only {
        wait_configs(ctx, topic, |c| {
            set.iter().all(|(k, v)| c.get(k) == Some(v)) && delete.iter().all(|k| !c.contains_key(k))
        })
        .await;
    }
    Ok(())
}

fn broker_refusal() -> (i16, String) {
    (
        code::INVALID_REQUEST,
        "broker settings are static (node flags); only topic configs can be altered".to_owned(),
    )
}

/// IncrementalAlterConfigs: SET and DELETE of topic configs. Needs ALTER_CONFIGS on the
/// topic, or on the cluster for a broker.
pub(crate) async fn incremental_alter_configs(
    ctx: &Context,
    r: IncrementalAlterConfigsRequest,
    client: &Client,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(r.resources.len());
    for resource in r.resources {
        let allowed = may_configure(
            ctx,
            client,
            Operation::AlterConfigs,
            resource.resource_type,
            &resource.resource_name,
        );
        let outcome = match resource.resource_type {
            _ if allowed.is_err() => allowed,
            RESOURCE_TOPIC => {
                let mut set = BTreeMap::new();
                let mut delete = Vec::new();
                let mut refused = None;
                for c in &resource.configs {
                    match (c.config_operation, &c.value) {
                        (OP_SET, Some(v)) => {
                            set.insert(c.name.to_string(), v.to_string());
                        }
                        (OP_DELETE, _) => delete.push(c.name.to_string()),
                        (OP_SET, None) => {
                            refused = Some((
                                code::INVALID_REQUEST,
                                format!("SET {} needs a value", c.name.as_str()),
                            ))
                        }
                        (op, _) => {
                            refused = Some((
                                code::INVALID_REQUEST,
                                format!(
                                    "operation {op} on {} is not supported (no list-valued topic configs)",
                                    c.name.as_str()
                                ),
                            ))
                        }
                    }
                }
                match refused {
                    Some(e) => Err(e),
                    None => alter_topic(ctx, &resource.resource_name, set, delete, r.validate_only).await,
                }
            }
            RESOURCE_BROKER => Err(broker_refusal()),
            other => Err((code::INVALID_REQUEST, format!("config resource type {other} is not supported"))),
        };
        let response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        responses.push(match outcome {
            Ok(()) => response,
            Err((error, message)) => response.with_error_code(error).with_error_message(Some(s(message))),
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// AlterConfigs (the older, whole-set form): the given configs become the topic's only
/// overrides. Needs ALTER_CONFIGS on the topic, or on the cluster for a broker.
pub(crate) async fn alter_configs(
    ctx: &Context,
    r: AlterConfigsRequest,
    client: &Client,
) -> AlterConfigsResponse {
    let mut responses = Vec::with_capacity(r.resources.len());
    for resource in r.resources {
        let allowed = may_configure(
            ctx,
            client,
            Operation::AlterConfigs,
            resource.resource_type,
            &resource.resource_name,
        );
        let outcome = match resource.resource_type {
            _ if allowed.is_err() => allowed,
            RESOURCE_TOPIC => {
                let set: BTreeMap<String, String> = resource
                    .configs
                    .iter()
                    .filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string())))
                    .collect();
                let current = ctx
                    .plane
                    .metadata()
                    .ok()
                    .and_then(|c| c.topics.get(resource.resource_name.as_str()).map(|t| t.configs.clone()))
                    .unwrap_or_default();
                let delete = current.keys().filter(|k| !set.contains_key(*k)).cloned().collect();
                alter_topic(ctx, &resource.resource_name, set, delete, r.validate_only).await
            }
            RESOURCE_BROKER => Err(broker_refusal()),
            other => Err((code::INVALID_REQUEST, format!("config resource type {other} is not supported"))),
        };
        let response = LegacyAlterResult::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name);
        responses.push(match outcome {
            Ok(()) => response,
            Err((error, message)) => response.with_error_code(error).with_error_message(Some(s(message))),
        });
    }
    AlterConfigsResponse::default().with_responses(responses)
}
